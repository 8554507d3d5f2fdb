"""MagCache as a method on the shared hooks: the run state, its wrappers, and how it attaches.

Pieces, in the order a sampling run meets them:

* :func:`outer_sample_wrapper` (``WrappersMP.OUTER_SAMPLE``): when sampling
  starts, turns the node's :class:`MagCacheConfig` into a fresh
  :class:`RunState` and installs the run's hooks (``hooks.sites``) in its own
  copy of the model options; when sampling ends, for any reason, logs the
  summary and drops every cached tensor.
* :func:`calc_cond_batch_wrapper` (``WrappersMP.CALC_COND_BATCH``): at the
  run's first model evaluation, plans the whole run from the curve and the
  sigmas on the model as loaded for it and logs the plan; then, once per
  model evaluation, asks the pure :class:`~.policy.SkipPolicy` whether this
  evaluation may skip. An evaluation whose options differ from the run's own
  (a guidance method calling the model again with layers skipped or patches
  changed) is computed in full and never shares the cache.
* the shared ``APPLY_MODEL`` wrapper and block patches / output wrapper
  (``hooks``) call :meth:`RunState.begin_batch`, :meth:`RunState.cached`
  and :meth:`RunState.store`.

Nothing is stored on the model object or the node's model: the run state lives
in the per-run options ComfyUI discards when sampling ends.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from ..hooks import hidden
from ..hooks.families import Level
from ..hooks.host import arg, show_text
from ..hooks.sites import Batch, RunHooks
from ..hooks.wrappers import MAGCACHE_KEY, apply_model_wrapper, run_scope
from ..hooks.wrappers import attach as attach_wrappers
from .config import MagCacheConfig
from .policy import Plan, SkipPolicy, plan_run

log = logging.getLogger("comfyui-magcache")

KEY = MAGCACHE_KEY
#: Schedules shorter than this are left alone: few-step (distilled) models are
#: ruined by skipping, and there is nothing to gain.
MIN_STEPS = 10
#: Model or transformer options under which a cached residual would be reused wrongly, and why.
_RUN_BREAKERS = {
    # one evaluation per context window, each on another slice of the latent, under the same uuids
    "context_handler": "context windows run the model on a different slice of the latent in each call",
    # Causal Wan's autoregressive sampler calls the blocks directly, past every patch
    "ar_state": "the autoregressive sampler bypasses the block patches",
}
#: ``transformer_options`` entries that legitimately differ between the
#: evaluations of one run, and so do not make an evaluation a variant.
_PER_CALL_OPTIONS = frozenset({"sample_sigmas", KEY})


@dataclass
class _Evaluation:
    """One model evaluation (a call of ``calc_cond_batch``)."""

    skip: bool
    variant: bool
    computed: bool = False


def _signature(options: Any, path: tuple[Any, ...] = ()) -> frozenset[tuple[Any, ...]]:
    """The leaves of a nested options dict, by identity: cheap, and blind to the copies ComfyUI makes."""
    if isinstance(options, dict):
        items: set[tuple[Any, ...]] = set()
        for k, v in options.items():
            if not path and k in _PER_CALL_OPTIONS:
                continue
            items |= _signature(v, (*path, k))
        return frozenset(items)
    if isinstance(options, (list, tuple)):
        return frozenset((*path, i, id(v)) for i, v in enumerate(options))
    return frozenset({(*path, id(options))})


@dataclass
class RunState:
    """Everything one sampling run knows; created at its start, dropped at its end."""

    config: MagCacheConfig
    sigmas: list[float]  # the sampler's schedule for this run
    roles: tuple[int, ...]  # conditioning roles the plan assumes (cond, and uncond under CFG)
    cache_device: torch.device | None
    hooks: RunHooks = field(init=False)
    #: Made at the run's first model evaluation, when ComfyUI has loaded the model with this
    #: run's patches: a noise schedule another node set (an object patch) is then in place.
    started: bool = False
    policy: SkipPolicy | None = None
    plan: Plan | None = None  # None after the start too when the schedule is few-step
    disabled: str | None = None  # why skipping is off for this run, if it is
    evaluation: _Evaluation | None = None
    reference: frozenset[tuple[Any, ...]] | None = None  # the run's own options, seen at its first evaluation
    #: Cached residual per conditioning uuid, and per whole batch (by its uuids) for the one-add path.
    residuals: dict[Any, hidden.Hidden] = field(default_factory=dict)
    by_batch: dict[tuple[Any, ...], hidden.Hidden] = field(default_factory=dict)
    evaluations: int = 0
    skipped_evaluations: int = 0
    variants: int = 0
    forced: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    # -- per model evaluation (main thread) -------------------------------------
    def start(self, model_sampling: Any) -> None:
        """Plan the run on the schedule of the model as loaded for it; log the plan (or why nothing is skipped)."""
        self.started = True
        config = self.config
        steps = max(len(self.sigmas) - 1, 0)
        if steps and equivalent_steps(model_sampling, self.sigmas) < MIN_STEPS:
            log.info(
                "MagCache: %d-step schedule is too short to skip safely (few-step and distilled models); "
                "computing every step.",
                steps,
            )
            self.disabled = "few-step schedule"
            return
        settings = config.settings_for(model_sampling)
        self.policy = SkipPolicy(config.curve, settings)
        self.plan = plan_run(config.curve, settings, self.sigmas, self.roles)
        text = (
            f"MagCache: computing {self.plan.computed} of {self.plan.total} steps, ~{self.plan.speedup:.2f}x "
            f"(curve '{config.curve.name}', threshold {config.threshold:g}, K {config.max_skips}, "
            f"retention {config.retention:g})"
        )
        log.info(text)
        show_text(config.node_id, text)

    def begin_evaluation(self, sigma: float, roles: tuple[int, ...], options: dict[str, Any]) -> None:
        """Decide one model evaluation.

        An evaluation is a *variant*, computed in full and never sharing the
        cache, when its options differ from the run's own: guidance that skips
        layers or changes attention (SkipLayerGuidance replaces block patches,
        LTX's STG and modality guidance set flags). A repeated sigma alone does
        not make a variant: heun and dpm_2 call the model twice at one sigma.
        """
        self.end_evaluation()
        signature = _signature(options)
        if self.reference is None:
            self.reference = signature
        if signature != self.reference:
            self.variants += 1
            self.evaluation = _Evaluation(skip=False, variant=True)
            return
        self.evaluations += 1
        skip = self.policy is not None and self.policy.decide(sigma, roles)
        self.evaluation = _Evaluation(skip=skip and self.disabled is None, variant=False)

    def end_evaluation(self) -> None:
        ev = self.evaluation
        if ev is not None and not ev.variant and not ev.computed:
            self.skipped_evaluations += 1
        self.evaluation = None

    def disable(self, reason: str) -> None:
        with self.lock:
            if self.disabled is None:
                self.disabled = reason
                log.info("MagCache: skipping switched off for this run: %s", reason)
        if self.evaluation is not None:
            self.evaluation.skip = False

    # -- the hooks' method (any thread) -------------------------------------------
    def begin_batch(self, batch: Batch) -> None:
        ev = self.evaluation
        if ev is None or ev.variant:
            batch.observe = False  # computed in full, never shares the cache
            return
        batch.skip = ev.skip and self.disabled is None

    def end_batch(self, batch: Batch) -> None:
        ev = self.evaluation
        if ev is not None and not batch.skipping:
            ev.computed = True

    def cached(self, batch: Batch, shape: tuple[tuple[int, ...], ...], device: torch.device) -> hidden.Hidden | None:
        """The residual of the batch's conditionings, or None when one of them has none that fits.

        It is moved to ``device``: a no-op unless it was kept on the offload
        device or another GPU computed it (MultiGPU CFG split).
        """
        r = self.by_batch.get(batch.uuids)
        if r is None and len(batch.uuids) == 1:
            r = self.residuals.get(batch.uuids[0])
        if r is None or hidden.shape(r) != shape:
            r = self._assemble(batch.uuids, shape, device)
        if r is None:
            with self.lock:
                self.forced += 1
            return None
        return hidden.to(r, device)

    def _assemble(
        self, uuids: tuple[Any, ...], shape: tuple[tuple[int, ...], ...], device: torch.device
    ) -> torch.Tensor | None:
        """A batch's residual from per-conditioning ones, for a batch put together differently than when cached.

        The pieces may live on different GPUs (MultiGPU CFG split): each is moved to ``device`` first.
        """
        n = len(uuids)
        if n == 0 or len(shape) != 1 or not shape[0] or shape[0][0] % n:
            return None
        want = (shape[0][0] // n, *shape[0][1:])
        parts = [self.residuals.get(u) for u in uuids]
        if any(not isinstance(p, torch.Tensor) or tuple(p.shape) != want for p in parts):
            return None
        return torch.cat([p.to(device, non_blocking=True) for p in parts])  # type: ignore[union-attr]

    def store(self, batch: Batch, residual: hidden.Hidden) -> None:
        if self.cache_device is not None:
            residual = hidden.to(residual, self.cache_device)
        uuids = batch.uuids
        pieces = hidden.chunk(residual, len(uuids)) if uuids else None
        with self.lock:
            # A batch of another make-up holding one of these conds now holds an older residual.
            for other in [k for k in self.by_batch if k != uuids and set(k) & set(uuids)]:
                del self.by_batch[other]
            self.by_batch[uuids] = residual
            if pieces is not None:
                for u, piece in zip(uuids, pieces):
                    self.residuals[u] = piece

    def free(self) -> None:
        self.residuals.clear()
        self.by_batch.clear()
        self.evaluation = None

    def summary(self) -> str:
        assert self.plan is not None
        self.end_evaluation()
        computed = self.evaluations - self.skipped_evaluations
        speed = self.evaluations / computed if computed else 1.0
        what = "block stack" if self.config.level is Level.BLOCK else "whole model"
        text = (
            f"MagCache: skipped the {what} on {self.skipped_evaluations} of {self.evaluations} model calls "
            f"(plan: {self.plan.total - self.plan.computed} of {self.plan.total}), ~{speed:.2f}x on the "
            f"{'blocks' if what == 'block stack' else 'model'}"
        )
        if self.forced:
            text += f"; {self.forced} batch(es) computed off-plan for lack of a matching cached residual"
        if self.variants:
            text += f"; {self.variants} extra evaluation(s) with changed options (guidance) computed in full"
        return text


# -- wrappers ------------------------------------------------------------------


def sigma_to_percent(model_sampling: Any, sigma: float) -> float:
    """Where ``sigma`` sits on the model's schedule, 0 (pure noise) to 1 (clean).

    The inverse of ComfyUI's ``percent_to_sigma``, found by bisection: it is
    monotonic for every model sampling ComfyUI has, and this runs once per run.
    """
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if float(model_sampling.percent_to_sigma(mid)) > sigma:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def equivalent_steps(model_sampling: Any, sigmas: list[float]) -> float:
    """Steps this schedule would have over the whole noise range.

    A sampler run that covers only part of the schedule (KSamplerAdvanced
    start/end, one of Wan 2.2's experts, a denoise < 1 pass) is as dense as
    the full schedule it was cut from; only a genuinely few-step schedule is
    sparse everywhere.
    """
    steps = len(sigmas) - 1
    coverage = sigma_to_percent(model_sampling, sigmas[-1]) - sigma_to_percent(model_sampling, sigmas[0])
    return steps / coverage if coverage > 1e-6 else float("inf")


def outer_sample_wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
    """Set up a fresh run state for this sampling run and tear it down after."""
    guider = executor.class_obj
    config = guider.model_options.get("transformer_options", {}).get(KEY)
    if not isinstance(config, MagCacheConfig):
        return executor(*args, **kwargs)
    sigmas = [float(s) for s in arg("outer_sample", "sigmas", args, kwargs).detach().flatten().cpu().tolist()]
    patcher = guider.model_patcher
    roles = (0, 1) if float(getattr(guider, "cfg", 1.0)) != 1.0 else (0,)
    cache_device = torch.device(patcher.offload_device) if config.offload_cache else None
    run = RunState(config=config, sigmas=sigmas, roles=roles, cache_device=cache_device)
    run.hooks = RunHooks(run, config.family, config.level)
    try:
        with run_scope(guider, KEY, run.hooks, run):
            return executor(*args, **kwargs)
    finally:
        if run.plan is not None:
            summary = run.summary()
            log.info(summary)
            show_text(config.node_id, summary)
        run.free()


def calc_cond_batch_wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
    """One decision per model evaluation, shared by every batch it is split into."""
    model_options = arg("calc_cond_batch", "model_options", args, kwargs) or {}
    transformer_options = model_options.get("transformer_options", {})
    run = transformer_options.get(KEY)
    if not isinstance(run, RunState):
        return executor(*args, **kwargs)
    for option, why in _RUN_BREAKERS.items():
        if model_options.get(option) is not None or transformer_options.get(option) is not None:
            run.disable(why)
    # One scalar read per model evaluation (not per block): the sampler
    # itself reads its sigmas on the host at every step.
    sigma = float(arg("calc_cond_batch", "timestep", args, kwargs).reshape(-1)[0])
    conds = arg("calc_cond_batch", "conds", args, kwargs)
    roles = tuple(i for i, c in enumerate(conds) if c is not None)
    if not run.started:
        run.start(arg("calc_cond_batch", "model", args, kwargs).model_sampling)
    run.begin_evaluation(sigma, roles, transformer_options)
    try:
        return executor(*args, **kwargs)
    finally:
        run.end_evaluation()


def attach(model: Any, config: MagCacheConfig) -> None:
    """Attach MagCache to ``model`` (a clone the caller owns) through official wrappers.

    A MagCache attached earlier in the chain is replaced, not stacked.
    """
    import comfy.patcher_extension as ext

    if KEY in model.model_options.get("transformer_options", {}):
        log.info("MagCache: replacing the MagCache settings attached earlier in this model chain")
    attach_wrappers(
        model,
        KEY,
        {
            ext.WrappersMP.OUTER_SAMPLE: outer_sample_wrapper,
            ext.WrappersMP.CALC_COND_BATCH: calc_cond_batch_wrapper,
            ext.WrappersMP.APPLY_MODEL: partial(apply_model_wrapper, KEY),
        },
        config,
    )
