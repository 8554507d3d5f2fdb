"""Start-up shared by the embedded default's scripts (train, demo, benchmark).

The scripts run as ``python embedded/<script>.py`` or ``python benchmarks/bench.py``,
never with the pack root on ``sys.path``: the pack's ``nodes/`` folder would
shadow ComfyUI's own ``nodes`` module. So this module

* finds and imports ComfyUI on the CPU (or the device it finds) with the host
  tests' own logic (``tests/host/comfy_host.py``), so there is one place that
  knows where checkouts live;
* registers the pack as the package ``comfyui_magcache`` without executing its
  top-level ``__init__``, so the scripts import ``comfyui_magcache.nodes...``
  exactly as the host tests do.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "comfyui_magcache"


def register_pack() -> None:
    """Make the pack importable as ``comfyui_magcache`` (idempotent)."""
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(PACK_ROOT)]  # type: ignore[attr-defined]
        sys.modules[PACKAGE] = package


def boot(cpu: bool = True) -> Path:
    """Import ComfyUI (``cpu=False`` lets it pick the GPU) and the pack; return ComfyUI's root.

    Exits with the host tests' one-line explanation when no checkout is found.
    """
    host_dir = str(PACK_ROOT / "tests" / "host")
    if host_dir not in sys.path:
        sys.path.insert(0, host_dir)
    import comfy_host

    root = comfy_host.find_comfyui()
    if root is None:
        raise SystemExit(comfy_host.NO_HOST.replace("host tests skipped", "nothing to run"))
    if cpu:
        comfy_host.import_comfyui(root)
    else:
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        import comfy.model_management  # noqa: F401 (selects the device)
    register_pack()
    return root
