"""Where curves come from: the shipped presets and the user's saved calibrations.

Presets live in ``calibration/presets/`` inside the pack. Saved calibrations live
in ComfyUI's models folder under ``magcache/`` (registered with ``folder_paths``,
so ``extra_model_paths.yaml`` can add more places). Names typed by users are
only ever looked up in these lists; they never become paths of their own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ..hooks.families import Family, Level
from .curve import CurveError, MagnitudeCurve
from .curve_file import SUFFIX, load_curve

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
#: ``folder_paths`` name of the saved-curves folder.
FOLDER = "magcache"
AUTO = "auto"


@dataclass(frozen=True)
class Recommended:
    """Settings a curve's author recommends; the node's -1 inputs resolve to these."""

    threshold: float = 0.12
    max_skips: int = 3
    retention: float = 0.2

    @classmethod
    def of(cls, curve: MagnitudeCurve) -> Recommended:
        rec: dict[str, Any] = curve.metadata.get("recommended") or {}
        d = cls()
        return cls(
            threshold=float(rec.get("threshold", d.threshold)),
            max_skips=int(rec.get("max_skips", d.max_skips)),
            retention=float(rec.get("retention", d.retention)),
        )


def preset_names() -> list[str]:
    """Names of the shipped presets, sorted."""
    return sorted(p.stem for p in PRESETS_DIR.glob(f"*{SUFFIX}"))


@cache
def load_preset(name: str) -> MagnitudeCurve:
    """A shipped preset by name (cached: presets never change at run time)."""
    if name not in preset_names():
        raise CurveError(f"unknown preset '{name}'; the presets are: {', '.join(preset_names())}")
    return load_curve(PRESETS_DIR / f"{name}{SUFFIX}", name=name)


def register_folder() -> None:
    """Register ``models/magcache`` with ComfyUI's ``folder_paths`` (idempotent)."""
    import folder_paths

    default = str(Path(folder_paths.models_dir) / FOLDER)
    paths, exts = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    if default not in paths:
        paths = [*paths, default]
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(exts) | {SUFFIX})


def saved_curve_names() -> list[str]:
    """File names of the user's saved curves, as ComfyUI lists them."""
    import folder_paths

    register_folder()
    return sorted(n for n in folder_paths.get_filename_list(FOLDER) if n.endswith(SUFFIX))


def saved_curve_path(name: str) -> Path:
    """The file of a saved curve, refusing anything outside the curve folders."""
    import folder_paths

    if name not in saved_curve_names():
        raise CurveError(
            f"no saved curve named '{name}': pick an entry of the curve list, or run "
            f"MagCache Calibrate to create it (saved curves live in models/{FOLDER}/)"
        )
    full = folder_paths.get_full_path(FOLDER, name)
    if full is None:
        raise CurveError(f"saved curve '{name}' disappeared from models/{FOLDER}/")
    path = Path(full).resolve()
    roots = [Path(p).resolve() for p in folder_paths.get_folder_paths(FOLDER)]
    if not any(path.is_relative_to(root) for root in roots):
        raise CurveError(f"saved curve '{name}' resolves outside the curve folders; refused")
    return path


def saved_curve_target(file_name: str) -> Path:
    """The file a calibration named ``file_name`` (from :func:`clean_curve_name`) is written to.

    A saved curve of that name is updated where it is, in whichever curve folder
    holds it; a new one goes to the first curve folder ComfyUI lists
    (``models/magcache`` unless ``extra_model_paths.yaml`` puts another first).
    """
    import folder_paths

    if file_name != clean_curve_name(file_name):
        raise CurveError(f"curve file name {file_name!r} is not a clean name; use clean_curve_name() first")
    register_folder()
    roots = [Path(p).resolve() for p in folder_paths.get_folder_paths(FOLDER)]
    full = folder_paths.get_full_path(FOLDER, file_name)
    path = Path(full).resolve() if full is not None else roots[0] / file_name
    if not any(path.is_relative_to(root) for root in roots):
        raise CurveError(f"saved curve '{file_name}' resolves outside the curve folders; refused")
    return path


def curve_choices() -> list[str]:
    """The node's curve dropdown: auto, every preset, every saved curve."""
    return [AUTO, *preset_names(), *saved_curve_names()]


def load_named_curve(name: str) -> MagnitudeCurve:
    """A preset or a saved curve by its dropdown name."""
    if name in preset_names():
        return load_preset(name)
    return load_curve(saved_curve_path(name), name=name)


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def clean_curve_name(name: str) -> str:
    """Turn a typed name into a safe file name inside the curve folder.

    Path separators, ``..`` and every character outside ``A-Z a-z 0-9 . _ -``
    are refused by being replaced with ``_``; leading dots are dropped so the
    result is never hidden, relative or absolute. Raises on an empty result.
    """
    stem = name.strip()
    if stem.endswith(SUFFIX):
        stem = stem[: -len(SUFFIX)]
    stem = _SAFE_NAME.sub("_", stem).replace("..", "_").lstrip(".")
    if not stem.strip("_"):
        raise CurveError(f"curve name {name!r} has no usable characters; use letters, digits, '.', '_' or '-'")
    return stem[:100] + SUFFIX


# -- fit to a model -------------------------------------------------------------


def checked_for(curve: MagnitudeCurve, family: Family) -> MagnitudeCurve:
    """``curve`` if it may drive a model of ``family``; raise naming the curve and the fix if not.

    A curve is measured on one layout (metadata ``architecture``) at one level:
    it is refused on another layout, and a block-stack curve is refused on a
    family that can only be cached at the model's output.
    """
    recorded_on = curve.metadata.get("architecture")
    # An output-level stand-in preset is meant for any family served at the output.
    any_layout = bool(curve.metadata.get("stand_in")) and curve.level == Level.OUTPUT.value
    if recorded_on and recorded_on != family.key and not any_layout:
        raise CurveError(
            f"curve '{curve.name}' was calibrated on {recorded_on}, but this model is {family.name} ({family.key}): "
            "pick a curve of this model's family, or 'auto'"
        )
    if curve.level not in (Level.BLOCK.value, Level.OUTPUT.value):
        raise CurveError(f"curve '{curve.name}' names an unknown level {curve.level!r}; recalibrate it")
    if curve.level == Level.BLOCK.value and family.level is Level.OUTPUT:
        raise CurveError(
            f"curve '{curve.name}' was recorded on the block stack, but {family.name} can only be cached at the "
            "model's output: calibrate it with MagCache Calibrate and pick that curve"
        )
    return curve
