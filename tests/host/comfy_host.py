"""Find a ComfyUI checkout and make it importable as a library, on the CPU.

The host tests need ComfyUI's own classes. ComfyUI is not a package on the
registries, so we look where users keep it: ``$COMFYUI_PATH``, ``~/ComfyUI``,
or the ComfyUI whose ``custom_nodes/`` folder holds this pack.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[2]


def find_comfyui() -> Path | None:
    """Return the ComfyUI root to test against, or None when there is none."""
    candidates: list[Path] = []
    if os.environ.get("COMFYUI_PATH"):
        candidates.append(Path(os.environ["COMFYUI_PATH"]).expanduser())
    candidates.append(Path.home() / "ComfyUI")
    if PACK_ROOT.parent.name == "custom_nodes":
        candidates.append(PACK_ROOT.parent.parent)
    for path in candidates:
        if (path / "comfy" / "model_patcher.py").is_file():
            return path.resolve()
    return None


def import_comfyui(root: Path) -> None:
    """Put ``root`` on ``sys.path`` and configure ComfyUI for a CPU-only run.

    ``comfy.model_management`` asserts on CUDA unless ``--cpu`` is set before
    it is first imported, so the flag goes in here, once.
    """
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management


def comfyui_version(root: Path) -> str:
    """The ``version`` field of the checkout's pyproject.toml."""
    for line in (root / "pyproject.toml").read_text().splitlines():
        if line.startswith("version"):
            return line.split("=", 1)[1].strip().strip('"')
    return "unknown"


#: The checkout this test session uses, found once.
ROOT = find_comfyui()
NO_HOST = (
    "no ComfyUI checkout found: set COMFYUI_PATH or clone ComfyUI into ~/ComfyUI "
    "(see README, 'Running the tests'); host tests skipped"
)
