"""The calibration nodes: MagCache Calibrate records a curve, MagCache Curve Plot shows it.

Why two nodes: a curve exists only once sampling has run, but the recorder must
be attached to the model before the sampler. So MagCache Calibrate sits where
MagCache would (after the loader) and returns the model with the recorder
attached plus the curve's name; MagCache Curve Plot takes that name and the
sampler's LATENT, which makes ComfyUI run it after the sampler, when the curve
has been saved, and draws it as an IMAGE.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..calibration import catalog, recorder
from ..calibration.curve import CurveError, MagnitudeCurve
from ..calibration.plot import render_curve
from ..calibration.runs import SOURCE, runs_of
from ..hooks.families import Family, Level, blocks_of, describe_unsupported, family_by_key, family_of, model_width

log = logging.getLogger("comfyui-magcache")

IF_EXISTS = ("combine", "replace")
#: Where to measure: "auto" is the block stack where the model has block patches, else the model's output.
LEVELS = ("auto", "output")


def model_identity(model: Any, family: Family, level: Level) -> dict[str, Any]:
    """What a calibration records about its model: family and sizes, cheap to compute (no weight hash).

    Only JSON-native values, so the identity compares equal after a round trip through a file.
    """
    dm = model.model.diffusion_model
    return {
        "architecture": family.key,
        "level": level.value,
        "model_config": type(model.model.model_config).__name__,
        "fingerprint": {
            "blocks": {stack.attr: len(blocks_of(dm, stack.attr)) for stack in family.stacks},
            "width": model_width(dm),
            "parameters": int(sum(p.numel() for p in dm.parameters())),
        },
    }


class MagCacheCalibrate:
    """Records the magnitude curve of the model it is given while a generation runs normally."""

    DESCRIPTION = (
        "Records a MagCache curve for this model. Put it after the model loader (instead of MagCache), run one "
        "generation as usual: the output is unchanged, and the curve is saved to models/magcache/<name>.safetensors, "
        "where the MagCache node's curve list finds it. More runs into the same name (other prompts or seeds) are "
        "combined. Connect curve_name and the sampler's LATENT to MagCache Curve Plot to see the curve."
    )
    CATEGORY = "sampling/magcache"
    RETURN_TYPES = ("MODEL", "STRING")
    RETURN_NAMES = ("model", "curve_name")
    OUTPUT_TOOLTIPS = (
        "The model with the recorder attached (sampling is unchanged; the input model is left as it was).",
        "The saved curve's file name, as the MagCache node's curve list shows it.",
    )
    FUNCTION = "calibrate"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802 (ComfyUI's name)
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model to calibrate."}),
                "name": (
                    "STRING",
                    {
                        "default": "my_model",
                        "tooltip": "Name of the curve file in models/magcache. Letters, digits, '.', '_' and '-'; "
                        "anything else (path separators included) becomes '_'.",
                    },
                ),
                "if_exists": (
                    list(IF_EXISTS),
                    {
                        "default": IF_EXISTS[0],
                        "tooltip": "combine: add each run to the saved curve of this name (its spread shows how "
                        "much prompts and seeds matter). replace: each run starts the curve over.",
                    },
                ),
            },
            "optional": {
                "level": (
                    list(LEVELS),
                    {
                        "default": LEVELS[0],
                        "tooltip": "Where to measure. auto: the transformer's block stack where the model allows it "
                        "(only the blocks are skipped later), else the whole model's output. output: the whole "
                        "model's output, for any model; MagCache then skips the whole model with this curve.",
                    },
                ),
            },
        }

    def calibrate(self, model: Any, name: str, if_exists: str, level: str = "auto") -> tuple[Any, str]:
        if if_exists not in IF_EXISTS:
            raise ValueError(f"if_exists must be one of {IF_EXISTS}, got {if_exists!r}")
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
        file_name = catalog.clean_curve_name(name)
        if file_name != name and file_name != f"{name}{catalog.SUFFIX}":
            log.info("MagCache Calibrate: curve name %r is saved as '%s'", name, file_name)
        family = family_of(model.model.diffusion_model, model.model.model_config)
        if family is None or family.unsupported:
            raise ValueError(
                f"MagCache Calibrate: {describe_unsupported(model, family)}, so MagCache can neither calibrate "
                "nor speed it up"
            )
        chosen = family.level if level == LEVELS[0] else Level.OUTPUT
        target = recorder.CalibrationTarget(
            file_name=file_name,
            family=family,
            level=chosen,
            model=model_identity(model, family, chosen),
            combine=if_exists == "combine",
        )
        patched = model.clone()
        recorder.attach(patched, target)
        return (patched, file_name)


class MagCacheCurvePlot:
    """Draws a saved MagCache curve (or a preset) as an image."""

    DESCRIPTION = (
        "Plots a MagCache curve: the recorded magnitude ratio against sigma for cond and uncond, its spread, every "
        "run it was combined from, and the preset of the same family when there is one. Connect curve_name from "
        "MagCache Calibrate and the sampler's LATENT to 'samples' so the plot is drawn after the calibration run."
    )
    CATEGORY = "sampling/magcache"
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The plot, for Preview Image or Save Image.",)
    FUNCTION = "plot"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802 (ComfyUI's name)
        return {
            "required": {
                "curve_name": (
                    "STRING",
                    {"forceInput": True, "tooltip": "A saved curve's name (from MagCache Calibrate) or a preset's."},
                ),
            },
            "optional": {
                "samples": (
                    "LATENT",
                    {"tooltip": "The sampler's output: only orders the plot after the calibration run."},
                ),
            },
        }

    def plot(self, curve_name: str, samples: Any = None) -> tuple[torch.Tensor]:
        curve = _load(curve_name, waited=samples is not None)
        runs = [run.roles for run in runs_of(curve)] if curve.metadata.get("source") == SOURCE else []
        reference = _family_preset(curve)
        image = render_curve(curve, runs, reference, subtitle=_subtitle(curve, len(runs)))
        return (torch.from_numpy(image)[None],)


def _load(curve_name: str, waited: bool) -> MagnitudeCurve:
    if curve_name in catalog.preset_names():
        return catalog.load_preset(curve_name)
    try:
        return catalog.load_named_curve(catalog.clean_curve_name(curve_name))
    except CurveError as exc:
        if waited:
            raise
        raise CurveError(
            f"{exc}. If MagCache Calibrate is recording it in this workflow, connect the sampler's LATENT to "
            "'samples' so the plot waits for the run"
        ) from None


def _family_preset(curve: MagnitudeCurve) -> MagnitudeCurve | None:
    """The preset of the curve's own family (a stand-in of another family is not drawn)."""
    if curve.name in catalog.preset_names():
        return None
    family = family_by_key(str(curve.metadata.get("architecture")))
    width = (curve.metadata.get("fingerprint") or {}).get("width")
    name = family.auto_curve(width if isinstance(width, int) else None) if family is not None else None
    if name is None or family is None or family.stand_in:
        return None
    preset = catalog.load_preset(name)
    same = preset.metadata.get("architecture") == curve.metadata.get("architecture") and preset.level == curve.level
    return preset if same else None


def _subtitle(curve: MagnitudeCurve, runs: int) -> str:
    meta = curve.metadata
    parts = [str(meta.get("architecture") or "?")]
    if meta.get("model_config"):
        parts[0] += f" ({meta['model_config']})"
    if runs:
        last = meta["runs"][-1]
        cfg = last.get("cfg")
        parts.append(f"{runs} run(s), last: {last.get('steps')} steps, {last.get('sampler')}/{last.get('scheduler')}")
        if cfg is not None:
            parts.append(f"cfg {cfg:g}")
        parts.append(str(last.get("date", "")))
    else:
        parts.append(f"{curve.steps} sigmas")
    return ", ".join(p for p in parts if p)
