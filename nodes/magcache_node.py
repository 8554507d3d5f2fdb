"""The MagCache node: validate inputs, build a config, attach the engine to a clone."""

from __future__ import annotations

import logging
from typing import Any

from ..calibration import catalog
from ..calibration.curve import CurveError, MagnitudeCurve
from . import engine
from .architectures import architecture_of, describe_unsupported, model_width

log = logging.getLogger("comfyui-magcache")

RECOMMENDED = -1  # numeric inputs at this value take the curve's recommended setting
CACHE_DEVICES = ("compute", "offload")


class MagCacheApply:
    """Makes sampling faster by reusing the transformer's residual on steps where it barely changes."""

    DESCRIPTION = (
        "MagCache: skips the transformer blocks on sampling steps where the magnitude of their "
        "residual barely changes, reusing the last one. Put it between the model loader (or LoRA) "
        "and the sampler; every input works at its default."
    )
    CATEGORY = "sampling/magcache"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with MagCache attached (the input model is left unchanged).",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802 (ComfyUI's name)
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model to speed up."}),
                "curve": (
                    catalog.curve_choices(),
                    {
                        "default": catalog.AUTO,
                        "tooltip": "Magnitude curve. 'auto' picks the preset of the loaded model's family; "
                        "saved calibrations (models/magcache) are listed after the presets.",
                    },
                ),
                "threshold": (
                    "FLOAT",
                    {
                        "default": RECOMMENDED,
                        "min": RECOMMENDED,
                        "max": 2.0,
                        "step": 0.01,
                        "tooltip": "Error budget per run of skips: higher skips more, at some cost in fidelity. "
                        "0 never skips; -1 uses the curve's recommended value.",
                    },
                ),
                "max_consecutive_skips": (
                    "INT",
                    {
                        "default": RECOMMENDED,
                        "min": RECOMMENDED,
                        "max": 20,
                        "tooltip": "K: at most this many model calls in a row reuse the cached residual. "
                        "-1 uses the curve's recommended value.",
                    },
                ),
                "retention_ratio": (
                    "FLOAT",
                    {
                        "default": RECOMMENDED,
                        "min": RECOMMENDED,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "The first fraction of the noise schedule is always computed: it sets the "
                        "layout of the picture. -1 uses the curve's recommended value.",
                    },
                ),
                "start": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "Fraction of the schedule before which nothing is skipped.",
                    },
                ),
                "end": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "Fraction of the schedule after which nothing is skipped.",
                    },
                ),
                "cache_device": (
                    list(CACHE_DEVICES),
                    {
                        "default": CACHE_DEVICES[0],
                        "tooltip": "Where the cached residual lives: the compute device (fastest) or the "
                        "offload device (saves VRAM, costs a copy per step).",
                    },
                ),
            }
        }

    def apply(
        self,
        model: Any,
        curve: str,
        threshold: float,
        max_consecutive_skips: int,
        retention_ratio: float,
        start: float,
        end: float,
        cache_device: str,
    ) -> tuple[Any]:
        diffusion_model = model.model.diffusion_model
        arch = architecture_of(diffusion_model)
        if arch is None:
            log.warning(
                "MagCache: %s has no block patches in ComfyUI; the model is left unchanged.",
                describe_unsupported(diffusion_model),
            )
            return (model,)
        chosen = self._curve(model, curve, arch.name)
        if chosen is None:
            return (model,)
        rec = catalog.Recommended.of(chosen)
        config = engine.MagCacheConfig(
            curve=chosen,
            architecture=arch,
            threshold=rec.threshold if threshold == RECOMMENDED else threshold,
            max_skips=rec.max_skips if max_consecutive_skips == RECOMMENDED else max_consecutive_skips,
            retention=rec.retention if retention_ratio == RECOMMENDED else retention_ratio,
            start=start,
            end=end,
            offload_cache=cache_device == "offload",
        )
        _validate(config, cache_device)
        patched = model.clone()
        engine.attach(patched, config)
        return (patched,)

    @staticmethod
    def _curve(model: Any, curve: str, arch_name: str) -> MagnitudeCurve | None:
        if curve == catalog.AUTO:
            config_name = type(model.model.model_config).__name__
            name, note = catalog.auto_curve(config_name, model_width(model.model.diffusion_model))
            if name is None:
                log.warning("MagCache: %s; the model is left unchanged.", note)
                return None
            log.info("MagCache: curve '%s' (%s)", name, note)
            return catalog.load_preset(name)
        chosen = catalog.load_named_curve(curve)
        recorded_on = chosen.metadata.get("architecture")
        if recorded_on and recorded_on != arch_name:
            raise CurveError(
                f"curve '{curve}' was calibrated on {recorded_on}, but this model is {arch_name}: "
                "pick a curve of this model's family, or 'auto'"
            )
        return chosen


def _validate(config: engine.MagCacheConfig, cache_device: str) -> None:
    """Refuse settings the rule cannot honour, naming the input and the fix."""
    if config.threshold < 0:
        raise ValueError(f"threshold must be >= 0 (or -1 for the recommended value), got {config.threshold}")
    if config.max_skips < 1:
        raise ValueError(
            f"max_consecutive_skips must be >= 1 (or -1 for the recommended value), got {config.max_skips}"
        )
    if not 0.0 <= config.retention <= 1.0:
        raise ValueError(
            f"retention_ratio must be within 0..1 (or -1 for the recommended value), got {config.retention}"
        )
    if not 0.0 <= config.start < config.end <= 1.0:
        raise ValueError(f"start ({config.start}) must be below end ({config.end}), both within 0..1")
    if cache_device not in CACHE_DEVICES:
        raise ValueError(f"cache_device must be one of {CACHE_DEVICES}, got {cache_device!r}")
