"""The MagCache node: validate inputs, build a config, attach the engine to a clone."""

from __future__ import annotations

import logging
from typing import Any

from ..cache.config import MagCacheConfig
from ..cache.magcache import attach
from ..calibration import catalog
from ..calibration.curve import MagnitudeCurve
from ..hooks.families import Family, Level, describe_unsupported, family_of, model_width

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
        family = family_of(model.model.diffusion_model, model.model.model_config)
        if family is None or family.unsupported:
            log.warning("MagCache: %s; the model is left unchanged.", describe_unsupported(model, family))
            return (model,)
        chosen = self._curve(model, curve, family)
        if chosen is None:
            return (model,)
        rec = catalog.Recommended.of(chosen)
        config = MagCacheConfig(
            curve=chosen,
            family=family,
            threshold=rec.threshold if threshold == RECOMMENDED else threshold,
            max_skips=rec.max_skips if max_consecutive_skips == RECOMMENDED else max_consecutive_skips,
            retention=rec.retention if retention_ratio == RECOMMENDED else retention_ratio,
            start=start,
            end=end,
            offload_cache=cache_device == "offload",
            level=Level(chosen.level),
        )
        _validate(config, cache_device)
        patched = model.clone()
        attach(patched, config)
        return (patched,)

    @staticmethod
    def _curve(model: Any, curve: str, family: Family) -> MagnitudeCurve | None:
        if curve == catalog.AUTO:
            name = family.auto_curve(model_width(model.model.diffusion_model))
            if name is None:
                log.warning(
                    "MagCache: no curve for %s yet; run MagCache Calibrate once and pick the saved curve. "
                    "The model is left unchanged.",
                    family.name,
                )
                return None
            if family.stand_in:
                log.info(
                    "MagCache: curve '%s' stands in for %s, which has no published curve; a calibration of this "
                    "model (MagCache Calibrate, one generation) will be better",
                    name,
                    family.name,
                )
            else:
                log.info("MagCache: curve '%s' (auto-selected for %s)", name, family.name)
            return catalog.load_preset(name)
        return catalog.checked_for(catalog.load_named_curve(curve), family)


def _validate(config: MagCacheConfig, cache_device: str) -> None:
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
