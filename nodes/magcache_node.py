"""The MagCache node: validate inputs, build a config, attach the engine to a clone.

Saved work keeps loading. Every input after ``model`` is optional on the
server side, so an API prompt written for the first version of the node (no
``speed``, ``schedule``, ``reuse``, ``cfg_cache`` or ``settings``; ``-1`` for
"the curve's value") still validates and keeps its meaning: an absent input
takes its *legacy* value below, not the page's default. The page's saved
workflows store widget values by position; ``nodes/web/magcache.js`` moves
the values of a workflow saved with the old seven widgets into the new order.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path
from typing import Any

from comfy_api.latest import io

from ..cache.config import (
    DEFAULT_CFG_CACHE,
    DEFAULT_REUSE,
    DEFAULT_SPEED,
    DEFAULT_WHEN,
    MagCacheConfig,
    Reuse,
    When,
    recommended_retention,
)
from ..cache.magcache import attach
from ..calibration import catalog
from ..calibration.curve import CurveError, MagnitudeCurve
from ..hooks.families import Family, Level, describe_unsupported, family_of, model_width, sampled_class
from ..hooks.host import show_text

log = logging.getLogger("comfyui-magcache")

#: Old prompts' way of saying "the curve's recommended value"; still accepted from the API.
RECOMMENDED = -1
#: The ``settings`` choices: the curve's recommended rule settings, or the three numbers below it.
BY_CURVE, CUSTOM = "recommended by the curve", "custom"
SETTINGS = (BY_CURVE, CUSTOM)
CACHE_DEVICES = ("compute", "offload")
SCHEDULES = tuple(w.value for w in When)
REUSES = tuple(r.value for r in Reuse)
SPEED_RANGE = (1.0, 6.0)
#: What the widgets show before the user picks numbers: the recommendation a curve without one gets.
SHOWN = catalog.Recommended()

#: Values an input absent from an API prompt takes: the first node's behaviour (the paper's rule, the
#: curve's settings), so a prompt written before these inputs existed runs as it did.
LEGACY: dict[str, Any] = {
    "speed": DEFAULT_SPEED,
    "schedule": When.RULE.value,
    "reuse": Reuse.PLAIN.value,
    "cfg_cache": False,
    "curve": catalog.AUTO,
    "settings": CUSTOM,
    "threshold": RECOMMENDED,
    "max_consecutive_skips": RECOMMENDED,
    "retention_ratio": RECOMMENDED,
    "start": 0.0,
    "end": 1.0,
    "cache_device": CACHE_DEVICES[0],
}

_SCHEDULES_BY_SPEED = ", ".join(f"'{w.value}'" for w in When if w is not When.RULE)


#: Words users type into the node search for a caching node (frontend 1.49+ searches aliases).
SEARCH_ALIASES = ["teacache", "cache", "speed up", "faster", "magcache"]


def search_aliases(aliases: list[str]) -> dict[str, Any]:
    """``search_aliases`` for ``io.Schema`` where this ComfyUI's schema has the field (0.33), else nothing."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(io.Schema)} if dataclasses.is_dataclass(io.Schema) else set()
    return {"search_aliases": aliases} if "search_aliases" in fields else {}


def short(text: str, limit: int = 48) -> str:
    """``text`` trimmed in the middle to ``limit`` characters, so long curve names keep log lines readable."""
    if len(text) <= limit:
        return text
    keep = (limit - 3) // 2
    return f"{text[:keep]}...{text[-(limit - 3 - keep) :]}"


class MagCacheApply(io.ComfyNode):
    """Makes sampling faster by reusing the transformer's residual on steps where it barely changes."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """The inputs, first to last as the node shows them; all but ``model`` optional (see the module doc)."""
        return io.Schema(
            node_id="MagCacheApply",
            display_name="MagCache",
            category="sampling/magcache",
            description=(
                "MagCache: skips the transformer blocks on sampling steps where the magnitude of their residual "
                "barely changes, reusing the last one. Put it between the model loader (or LoRA) and the "
                "sampler; every input works at its default. After a run the node shows which steps it computed "
                "and how much time it saved."
            ),
            **search_aliases(SEARCH_ALIASES),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to speed up."),
                io.Float.Input(
                    "speed",
                    default=DEFAULT_SPEED,
                    min=SPEED_RANGE[0],
                    max=SPEED_RANGE[1],
                    step=0.1,
                    optional=True,
                    tooltip="How many times faster: 2 = half the model calls; 1 = never skip. Used by the "
                    f"schedules {_SCHEDULES_BY_SPEED}; 'MagCache rule' uses the threshold instead.",
                ),
                io.Combo.Input(
                    "schedule",
                    options=list(SCHEDULES),
                    default=DEFAULT_WHEN.value,
                    optional=True,
                    tooltip="How the steps to compute are chosen. 'speed target': reach the speed, computing the "
                    "steps the curve says matter most. 'MagCache rule': the paper's rule (threshold and K). "
                    "'adaptive (AdaCache)': follows how much each generation changes, around the speed. "
                    "'uniform': every n-th step.",
                ),
                io.Combo.Input(
                    "reuse",
                    options=list(REUSES),
                    default=DEFAULT_REUSE.value,
                    optional=True,
                    tooltip="What a skipped step uses in place of the transformer blocks. 'forecast: line' "
                    "(default): the change continued along the line through the last two computed steps; it kept "
                    "the picture best in our benchmark. 'forecast: parabola': through the last three (better at "
                    "low speeds, unstable at 4x). 'forecast: Chebyshev fit (Spectrum)': a smooth fit over the "
                    "last six. 'plain': the last computed change as it is (the paper). 'scaled': resized as the "
                    "curve predicts. 'extrapolated (FasterCache)': the line, damped early in the run (older "
                    "workflows). Forecasts keep 2, 3 or 6 changes per prompt in memory. Every schedule.",
                ),
                io.Boolean.Input(
                    "cfg_cache",
                    default=DEFAULT_CFG_CACHE,
                    optional=True,
                    tooltip="With CFG, compute only the positive prompt on every other computed step and rebuild "
                    "the negative from the last difference between them (FasterCache's CFG cache). Every "
                    "schedule; no effect at cfg 1.",
                ),
                io.Combo.Input(
                    "curve",
                    options=catalog.curve_choices(),
                    default=catalog.AUTO,
                    optional=True,
                    tooltip="How the model's change per step evolves, measured once. 'auto' picks the preset of "
                    "the loaded model's family; your own calibrations (models/magcache, from MagCache Calibrate) "
                    "are listed after the presets.",
                ),
                io.Combo.Input(
                    "settings",
                    options=list(SETTINGS),
                    default=BY_CURVE,
                    optional=True,
                    tooltip="Where threshold, K and retention come from: the values recommended with the curve "
                    "(the three numbers below are then not used), or 'custom': the three numbers below.",
                ),
                io.Float.Input(
                    "threshold",
                    default=SHOWN.threshold,
                    min=0.0,
                    max=2.0,
                    step=0.01,
                    optional=True,
                    tooltip="Only for the schedule 'MagCache rule', with settings 'custom': how much estimated "
                    "error a run of skipped steps may add up. Higher skips more, at some cost in detail; "
                    "0 never skips.",
                ),
                io.Int.Input(
                    "max_consecutive_skips",
                    default=SHOWN.max_skips,
                    min=1,
                    max=20,
                    optional=True,
                    tooltip="K, with settings 'custom', for every schedule: at most this many steps in a row are "
                    "skipped before one is computed again.",
                ),
                io.Float.Input(
                    "retention_ratio",
                    default=SHOWN.retention,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    optional=True,
                    tooltip="With settings 'custom', for every schedule: the first part of the generation (this "
                    "fraction of the noise schedule) is always computed, because it sets the picture's layout.",
                ),
                io.Float.Input(
                    "start",
                    default=0.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    optional=True,
                    tooltip="Every schedule: nothing is skipped before this fraction of the noise schedule.",
                ),
                io.Float.Input(
                    "end",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    optional=True,
                    tooltip="Every schedule: nothing is skipped after this fraction of the noise schedule.",
                ),
                io.Combo.Input(
                    "cache_device",
                    options=list(CACHE_DEVICES),
                    default=CACHE_DEVICES[0],
                    optional=True,
                    tooltip="Where the reused data is kept: the GPU (fastest) or the offload device (saves VRAM, "
                    "costs a copy per step).",
                ),
            ],
            outputs=[io.Model.Output(tooltip="The model with MagCache attached (the input model is left unchanged).")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(
        cls,
        threshold: float | None = None,
        max_consecutive_skips: int | None = None,
        retention_ratio: float | None = None,
    ) -> bool | str:
        """Check the three inputs that old prompts may set to -1 (ComfyUI's own range check would refuse it).

        Only these three are named, because ComfyUI skips its min/max check for
        exactly the inputs named here; every other number keeps ComfyUI's check
        (which refuses ±inf) and is checked for NaN when the node runs.
        """
        given = {"threshold": threshold, "max_consecutive_skips": max_consecutive_skips}
        given["retention_ratio"] = retention_ratio
        problem = _number_problem({k: v for k, v in given.items() if v is not None})
        return problem or True

    @classmethod
    def fingerprint_inputs(cls, curve: str | None = None, **_: Any) -> str:
        """Changes when the chosen curve's file changes, so a replaced or recalibrated curve is picked up."""
        return curve_fingerprint(curve if curve is not None else LEGACY["curve"])

    @classmethod
    def execute(cls, model: Any, **inputs: Any) -> io.NodeOutput:
        """Resolve the inputs (absent ones take their legacy value), attach MagCache to a clone."""
        values = {**LEGACY, **inputs}
        problem = _number_problem({k: values[k] for k in _NUMBERS})
        if problem:
            raise ValueError(f"MagCache: {problem}")
        node_id = getattr(cls.hidden, "unique_id", None) if cls.hidden is not None else None
        # The class this model's runs will sample, not what another node's patch left on the shared live model.
        model_class = sampled_class(model)
        family = family_of(model.model.diffusion_model, model.model.model_config, model_class)
        if family is None or family.unsupported:
            message = f"{describe_unsupported(model, family, model_class)}; the model is left unchanged."
            log.warning("MagCache: %s", message)
            show_text(node_id, message)
            return io.NodeOutput(model)
        chosen, why = _curve(model, values["curve"], family)
        if chosen is None:
            log.warning("MagCache: %s", why)
            show_text(node_id, why)
            return io.NodeOutput(model)
        config = build_config(values, chosen, family, None if node_id is None else str(node_id))
        log.info("MagCache: %s", why)
        show_text(node_id, why)
        patched = model.clone()
        attach(patched, config)
        return io.NodeOutput(patched)


#: The numeric inputs and their ranges; ``None`` for an end that has none.
_NUMBERS: dict[str, tuple[float, float]] = {
    "speed": SPEED_RANGE,
    "threshold": (0.0, 2.0),
    "max_consecutive_skips": (1, 20),
    "retention_ratio": (0.0, 1.0),
    "start": (0.0, 1.0),
    "end": (0.0, 1.0),
}
_MAY_BE_RECOMMENDED = {"threshold", "max_consecutive_skips", "retention_ratio"}


def _number_problem(values: dict[str, Any]) -> str | None:
    """The first numeric input that is not a finite number in range, in words that name it; None if all are."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{name} must be a number, got {value!r}"
        if not math.isfinite(value):
            return f"{name} must be a finite number, got {value}"
        low, high = _NUMBERS[name]
        if name in _MAY_BE_RECOMMENDED and value == RECOMMENDED:
            continue
        if not low <= value <= high:
            return f"{name} must be within {low}..{high}, got {value}"
    return None


def build_config(values: dict[str, Any], curve: MagnitudeCurve, family: Family, node_id: str | None) -> MagCacheConfig:
    """The engine's config from the node's resolved inputs; raise naming an input the engine cannot honour."""
    rec = catalog.Recommended.of(curve)
    by_curve = values["settings"] == BY_CURVE
    if values["settings"] not in SETTINGS:
        raise ValueError(f"settings must be one of {list(SETTINGS)}, got {values['settings']!r}")

    def pick(name: str, recommended: float) -> float:
        value = values[name]
        return recommended if by_curve or value == RECOMMENDED else value

    if values["schedule"] not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {values['schedule']!r}")
    if values["reuse"] not in REUSES:
        raise ValueError(f"reuse must be one of {list(REUSES)}, got {values['reuse']!r}")
    if values["cache_device"] not in CACHE_DEVICES:
        raise ValueError(f"cache_device must be one of {list(CACHE_DEVICES)}, got {values['cache_device']!r}")
    start, end = float(values["start"]), float(values["end"])
    if not start < end:
        raise ValueError(f"start ({start}) must be below end ({end}), both within 0..1")
    return MagCacheConfig(
        curve=curve,
        family=family,
        threshold=float(pick("threshold", rec.threshold)),
        max_skips=int(pick("max_consecutive_skips", rec.max_skips)),
        retention=float(pick("retention_ratio", recommended_retention(
            When(values["schedule"]), rec.retention, curve.trajectory(0) is not None))),
        start=start,
        end=end,
        offload_cache=values["cache_device"] == "offload",
        level=Level(curve.level),
        when=When(values["schedule"]),
        speed=float(values["speed"]),
        reuse=Reuse(values["reuse"]),
        cfg_cache=bool(values["cfg_cache"]),
        node_id=node_id,
    )


def _curve(model: Any, curve: str, family: Family) -> tuple[MagnitudeCurve | None, str]:
    """The curve to use and a line saying which one and why (or, without a curve, why not)."""
    if curve == catalog.AUTO:
        name = family.auto_curve(model_width(model.model.diffusion_model))
        if name is None:
            return None, (
                f"no curve for {family.name} yet; run MagCache Calibrate once and pick the saved curve. "
                "The model is left unchanged."
            )
        if family.stand_in:
            why = (
                f"curve '{short(name)}' stands in for {family.name}, which has no published curve; a calibration "
                "of this model (MagCache Calibrate, one generation) will be better"
            )
        else:
            why = f"curve '{short(name)}' (auto-selected for {family.name})"
        return catalog.load_preset(name), why
    try:
        loaded = catalog.load_named_curve(curve)
    except (CurveError, OSError) as exc:
        raise CurveError(f"MagCache input 'curve': {exc}") from None
    return catalog.checked_for(loaded, family), f"curve '{short(curve)}' (chosen in the node)"


def curve_fingerprint(curve: str) -> str:
    """Name, size, modification time and content hash of a saved curve's file; the name alone for presets.

    Never raises (ComfyUI would only log it): a missing or unreadable file gets
    a fingerprint of its own, so the node runs again and reports the problem.
    """
    if curve == catalog.AUTO or curve in catalog.preset_names():
        return curve
    try:
        path = catalog.saved_curve_path(curve)
        stat = path.stat()
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except (CurveError, OSError) as exc:
        return f"{curve}: unavailable ({exc})"
    return f"{curve}: {stat.st_size} bytes, mtime {stat.st_mtime_ns}, sha256 {digest}"
