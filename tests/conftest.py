"""Make the pack importable as the package ``comfyui_magcache`` without running it.

The pack's folder name depends on how it was cloned, and its top-level
``__init__`` imports the nodes (and so ComfyUI). The pure tests need neither:
they load submodules such as ``comfyui_magcache.cache.policy`` directly.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "comfyui_magcache"

if PACKAGE not in sys.modules:
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(PACK_ROOT)]  # type: ignore[attr-defined]
    sys.modules[PACKAGE] = package
