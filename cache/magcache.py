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
  evaluation may skip. An evaluation that computes something else than the
  run's own (a guidance method calling the model again with layers skipped
  or patches changed, see :mod:`.variants`) is computed in full and never
  shares the cache; a sampler's per-call bookkeeping in the options is not
  such a change.
* the shared ``APPLY_MODEL`` wrapper and block patches / output wrapper
  (``hooks``) call :meth:`RunState.begin_batch`, :meth:`RunState.cached`
  and :meth:`RunState.store`.

Nothing is stored on the model object or the node's model: the run state lives
in the per-run options ComfyUI discards when sampling ends.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from ..hooks import hidden
from ..hooks.families import OUTPUT_STAND_IN, Level, describe_unsupported, family_of, sampled_class
from ..hooks.host import arg, show_text, with_arg
from ..hooks.sites import Batch, RunHooks
from ..hooks.wrappers import MAGCACHE_KEY, apply_model_wrapper, run_scope
from ..hooks.wrappers import attach as attach_wrappers
from . import estimators, reuse, variants
from .adaptive import AdaptiveSchedule
from .branches import CfgCache
from .config import MagCacheConfig, When
from .planner import ErrorModel, PlannedSchedule, computed_budget, forced_calls, plan_for_speed, uniform_skips
from .policy import Plan, Schedule, SkipPolicy, SkipSettings, simulate

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


@dataclass
class _Evaluation:
    """One model evaluation (a call of ``calc_cond_batch``)."""

    skip: bool
    variant: bool
    sigma: float = 0.0
    progress: float = 0.0  # 0..1 through the run's schedule
    roles: tuple[int, ...] = ()
    computed: bool = False  # a batch ran the stack (or the model)
    replaced: bool = False  # a batch's stack (or model) was really replaced by the cache
    cond_only: bool = False  # CFG-Cache ran only the conditional branch
    change: torch.Tensor | None = None  # the residual's relative change, for an adaptive schedule


def make_schedule(config: MagCacheConfig, settings: SkipSettings, sigmas: list[float],
                  roles: tuple[int, ...], estimator: reuse.Estimator) -> Callable[[], Schedule]:
    """A factory of fresh schedules of the kind the config names (one for the plan, one for the run).

    ``estimator`` is what the run fills skipped calls with: the speed target's planner costs its error.
    """
    if config.when is When.RULE:
        return partial(SkipPolicy, config.curve, settings)
    calls = tuple(float(s) for s in sigmas[:-1])
    forced = forced_calls(list(calls), settings)
    budget = computed_budget(len(calls), config.speed)
    if config.cfg_cache and len(roles) > 1:
        # Counted in branch runs: forced calls run both branches, the others alternate full and cond-only.
        units = len(calls) * len(roles) / max(config.speed, 1.0)
        n_forced = sum(forced)
        free = max(0.0, units - n_forced * len(roles)) / ((len(roles) + 1) / 2)
        budget = min(len(calls), n_forced + int(free + 1e-9))
    if config.when is When.ADAPTIVE:
        return partial(AdaptiveSchedule, settings, calls, budget)
    if config.when is When.UNIFORM:
        skips = uniform_skips(len(calls), budget, forced)
    else:
        skips = plan_for_speed(config.curve, settings, sigmas, roles, budget, config.error_model, estimator,
                               config.objective)
    return partial(PlannedSchedule, calls, skips)


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
    schedule: Schedule | None = None
    settings: SkipSettings | None = None
    estimator: reuse.Estimator = field(default_factory=reuse.PlainReuse)
    cfg: CfgCache | None = None
    plan: Plan | None = None  # None after the start too when the schedule is few-step
    disabled: str | None = None  # why skipping is off for this run, if it is
    evaluation: _Evaluation | None = None
    reference: frozenset[variants.Leaf] | None = None  # what the run's own evaluations compute (variants.signature)
    #: The run's guider: its named conds tell each cond's role (variants.named_roles), read per evaluation.
    guider: Any = None
    changed: list[str] = field(default_factory=list)  # option names that made the first variant one
    #: Cached residual per conditioning uuid, and per whole batch (by its uuids) for the one-add path.
    residuals: dict[Any, reuse.Entry] = field(default_factory=dict)
    by_batch: dict[tuple[Any, ...], reuse.Entry] = field(default_factory=dict)
    #: The most the cache held at once in this run, in bytes (``held_bytes`` after each store).
    peak_bytes: int = 0
    evaluations: int = 0
    skipped_evaluations: int = 0
    branch_runs: int = 0  # branches computed (a full call under CFG counts 2, a cond-only call 1)
    branch_total: int = 0  # branches an uncached run computes
    variants: int = 0
    forced: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    model_sampling: Any = None  # the schedule the run was planned on

    # -- per model evaluation (main thread) -------------------------------------
    def start(self, model_sampling: Any) -> None:
        """Plan the run on the schedule of the model as loaded for it; log the plan (or why nothing is skipped)."""
        self.started = True
        self.model_sampling = model_sampling
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
        self.settings = settings = config.settings_for(model_sampling)
        self.estimator = estimators.make(config.reuse, config.curve, self.sigmas)
        fresh = make_schedule(config, settings, self.sigmas, self.roles, self.estimator)
        self.schedule = fresh()
        self.plan = simulate(fresh(), self.sigmas, self.roles)
        # Only where the run is asked to save anything: threshold 0 or speed 1 stays bit-identical.
        saves = config.threshold > 0 if config.when is When.RULE else config.speed > 1.0
        if config.cfg_cache and len(self.roles) > 1 and saves:
            self.cfg = CfgCache()
        if config.when is When.RULE:
            how = f"threshold {config.threshold:g}"
        else:
            how = f"{config.when.value} {config.speed:g}x"
        if config.when is When.TARGET:
            measured = config.error_model is ErrorModel.FORECAST and config.curve.trajectory(0) is not None
            cost = f"{'measured' if measured else 'predicted'} {config.error_model.value}"
            how += f", {config.objective.value} of {cost}"
        text = (
            f"MagCache: computing {self.plan.computed} of {self.plan.total} steps, ~{self.plan.speedup:.2f}x "
            f"({how}, reuse {config.reuse.value}{', CFG-Cache' if self.cfg else ''}, K {config.max_skips}, "
            f"retention {config.retention:g}, curve '{config.curve.name}'); computed: {self.plan.pattern()}"
        )
        log.info(text)
        show_text(config.node_id, text)

    def begin_evaluation(self, sigma: float, roles: tuple[int, ...], options: dict[str, Any]) -> None:
        """Decide one model evaluation.

        An evaluation is a *variant*, computed in full and never sharing the
        cache, when it computes something else than the run's own: guidance
        that skips layers or changes attention (SkipLayerGuidance replaces
        block patches, LTX's STG and modality guidance set flags). Neither a
        repeated sigma (heun and dpm_2 call the model twice at one sigma) nor
        the bookkeeping a sampler writes into the options before each call
        (RES4LYF's multi-stage samplers) makes a variant: see :mod:`.variants`.
        """
        self.end_evaluation()
        signature = variants.signature(options, ignore=(KEY,))
        if self.reference is None:
            self.reference = signature
        if signature != self.reference:
            self.variants += 1
            if not self.changed:
                self.changed = variants.changed_keys(signature, self.reference)
            self.evaluation = _Evaluation(skip=False, variant=True)
            return
        self.evaluations += 1
        self.branch_total += len(roles)
        skip = self.schedule is not None and self.schedule.decide(sigma, roles)
        first, last = self.sigmas[0], self.sigmas[-1]
        progress = (first - sigma) / (first - last) if first != last else 0.0
        self.evaluation = _Evaluation(skip=skip and self.disabled is None, variant=False, sigma=sigma,
                                      progress=min(max(progress, 0.0), 1.0), roles=roles)

    def end_evaluation(self, motion: torch.Tensor | None = None) -> None:
        """Count the evaluation; after a computed one, hand an adaptive schedule its two measurements."""
        ev = self.evaluation
        self.evaluation = None
        if ev is None or ev.variant:
            return
        # Counted as skipped only where the cache really replaced the stack: an evaluation whose
        # batches never reached the hooks (a model that bypasses them) was computed by the model itself.
        if ev.replaced and not ev.computed:
            self.skipped_evaluations += 1
            return
        self.branch_runs += len(ev.roles) - 1 if ev.cond_only else len(ev.roles)
        if self.schedule is not None and self.schedule.measures and ev.change is not None:
            m = motion if motion is not None else torch.zeros((), device=ev.change.device)
            # The one read from the device per computed evaluation (never per block).
            change, moved = torch.stack((ev.change.float(), m.to(ev.change.device).float())).tolist()
            self.schedule.observe(change, moved)

    def disable(self, reason: str) -> None:
        with self.lock:
            if self.disabled is None:
                self.disabled = reason
                log.info("MagCache: skipping switched off for this run: %s", reason)
        if self.evaluation is not None:
            self.evaluation.skip = False

    def serve_output_level(self, reason: str) -> bool:
        """Go on at the model's output, re-planned with the output-level stand-in curve (called under the
        hooks' lock, once). The block curve is not used there: it describes another residual."""
        from ..calibration import catalog

        if self.model_sampling is None or self.disabled is not None:
            return False
        try:
            curve = catalog.load_preset(OUTPUT_STAND_IN)
        except Exception as exc:
            log.warning("MagCache: the output-level curve could not be loaded (%s)", exc)
            return False
        log.info(
            "MagCache: %s; curve '%s' (block stack) is not used at the model's output, the output-level "
            "stand-in '%s' plans the rest of this run",
            reason,
            self.config.curve.name,
            curve.name,
        )
        self.config = dataclasses.replace(self.config, curve=curve, level=Level.OUTPUT)
        self.residuals.clear()
        self.by_batch.clear()
        self.start(self.model_sampling)
        return True

    # -- the hooks' method (any thread) -------------------------------------------
    def begin_batch(self, batch: Batch) -> None:
        ev = self.evaluation
        if ev is None or ev.variant:
            batch.observe = False  # computed in full, never shares the cache
            return
        batch.skip = ev.skip and self.disabled is None

    def end_batch(self, batch: Batch) -> None:
        ev = self.evaluation
        if ev is None:
            return
        if batch.skipping:
            ev.replaced = True
        else:
            ev.computed = True

    def cached(
        self, batch: Batch, shape: tuple[tuple[int, ...], ...], device: torch.device
    ) -> reuse.Terms | None:
        """What the batch's conditionings add, from their cached residuals, or None when one has none that fits.

        The residuals are moved to ``device``: a no-op unless they were kept on
        the offload device or another GPU computed them (MultiGPU CFG split).
        """
        entry = self.by_batch.get(batch.uuids)
        if entry is None and len(batch.uuids) == 1:
            entry = self.residuals.get(batch.uuids[0])
        if entry is None or hidden.shape(entry.last) != shape:
            entry = self._assemble(batch.uuids, shape, device)
        ev = self.evaluation
        if entry is None or ev is None:
            with self.lock:
                self.forced += 1
            return None
        return [(c, hidden.to(t, device)) for c, t in self.estimator.terms(entry, ev.sigma, ev.progress)]

    def _assemble(
        self, uuids: tuple[Any, ...], shape: tuple[tuple[int, ...], ...], device: torch.device
    ) -> reuse.Entry | None:
        """A batch's entry from per-conditioning ones, for a batch put together differently than when cached.

        The pieces may live on different GPUs (MultiGPU CFG split): each is moved to ``device`` first. Pieces
        computed at different sigmas (CFG-Cache ran one branch since) are reused as they are.
        """
        n = len(uuids)
        if n == 0 or len(shape) != 1 or not shape[0] or shape[0][0] % n:
            return None
        want = (shape[0][0] // n, *shape[0][1:])
        parts = [self.residuals.get(u) for u in uuids]
        if any(p is None or not isinstance(p.last, torch.Tensor) or tuple(p.last.shape) != want for p in parts):
            return None
        entries: list[reuse.Entry] = parts  # type: ignore[assignment]
        # The histories joined point by point where every piece was computed at the same sigmas; else the
        # last residuals alone (CFG-Cache ran one branch since), at the earliest of their sigmas.
        common = min(len(p.points) for p in entries)
        while common > 1 and len({tuple(p.sigmas()[-common:]) for p in entries}) > 1:
            common -= 1
        if common == 1 and len({p.sigma for p in entries}) > 1:
            last = torch.cat([p.last.to(device, non_blocking=True) for p in entries])  # type: ignore[union-attr]
            return reuse.entry(last, min(p.sigma for p in entries))
        points = tuple(
            (entries[0].points[i][0], torch.cat([p.points[i][1].to(device, non_blocking=True) for p in entries]))
            for i in range(-common, 0)
        )
        return reuse.Entry(points)

    def store(self, batch: Batch, residual: hidden.Hidden) -> None:
        ev = self.evaluation
        sigma = ev.sigma if ev is not None else 0.0
        if self.cache_device is not None:
            residual = hidden.to(residual, self.cache_device)
        uuids = batch.uuids
        pieces = hidden.chunk(residual, len(uuids)) if uuids else None
        keep = self.estimator.keeps
        with self.lock:
            before = self.by_batch.get(uuids)
            # A batch of another make-up holding one of these conds now holds an older residual.
            for other in [k for k in self.by_batch if k != uuids and set(k) & set(uuids)]:
                del self.by_batch[other]
            self.by_batch[uuids] = _entry(residual, sigma, before, keep)
            if pieces is not None:
                for u, piece in zip(uuids, pieces):
                    self.residuals[u] = _entry(piece, sigma, self.residuals.get(u), keep)
            self.peak_bytes = max(self.peak_bytes, self.held_bytes())
        if ev is not None and self.schedule is not None and self.schedule.measures and before is not None:
            new, old = hidden.primary(residual), hidden.primary(before.last)
            if new.shape == old.shape:
                # Relative L1 change since the last computed call, left on the device until the evaluation ends.
                ev.change = (new - old.to(new.device)).abs().mean() / old.abs().mean().clamp_min(1e-12)

    def held_bytes(self) -> int:
        """Bytes of the tensors the cache holds now, each storage counted once (a batch's pieces are views).

        Reads sizes and addresses only, never values: no device synchronisation.
        """
        seen: dict[tuple[str, int], int] = {}
        tensors = [t for e in (*self.residuals.values(), *self.by_batch.values()) for _, h in e.points
                   for t in hidden.parts(h)]
        if self.cfg is not None:
            tensors += [d.value for d in (self.cfg.last, self.cfg.before) if d is not None]
            tensors += [d.spectrum for d in (self.cfg.last, self.cfg.before) if d is not None]
        for t in tensors:
            storage = t.untyped_storage()
            seen[(str(t.device), storage.data_ptr())] = storage.nbytes()
        return sum(seen.values())

    def free(self) -> None:
        self.residuals.clear()
        self.by_batch.clear()
        self.evaluation = None
        self.cfg = None
        self.guider = None


    def summary(self) -> str:
        assert self.plan is not None
        self.end_evaluation()
        computed = self.evaluations - self.skipped_evaluations
        speed = self.evaluations / computed if computed else 1.0
        level = self.hooks.level if getattr(self, "hooks", None) is not None else self.config.level
        what = "block stack" if level is Level.BLOCK else "whole model"
        text = (
            f"MagCache: skipped the {what} on {self.skipped_evaluations} of {self.evaluations} model calls "
            f"(plan: {self.plan.total - self.plan.computed} of {self.plan.total}), ~{speed:.2f}x on the "
            f"{'blocks' if what == 'block stack' else 'model'}"
        )
        if self.cfg is not None:
            branches = self.branch_total / self.branch_runs if self.branch_runs else 1.0
            text += (
                f"; CFG-Cache ran only the conditional branch on {self.cfg.cond_only_calls} call(s): "
                f"{self.branch_runs} of {self.branch_total} branch runs, ~{branches:.2f}x in all"
            )
        if self.forced:
            text += f"; {self.forced} batch(es) computed off-plan for lack of a matching cached residual"
        if self.variants:
            text += (
                f"; {self.variants} extra evaluation(s) with changed options (guidance: "
                f"{', '.join(self.changed) or 'options'}) computed in full"
            )
        if self.peak_bytes:
            where = f" on {self.cache_device}" if self.cache_device is not None else ""
            text += f"; the cache held up to {_size(self.peak_bytes)}{where}"
        if self.disabled is not None:
            text += f"; skipping was switched off ({self.disabled})"
        return text


def _size(n: int) -> str:
    """A byte count as people read it: KiB below a MiB, then MiB, then GiB."""
    if n < 2**20:
        return f"{n / 2**10:.1f} KiB"
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def _entry(residual: hidden.Hidden, sigma: float, before: reuse.Entry | None, keep: int) -> reuse.Entry:
    """The new cache entry: the one it replaces with ``residual`` appended, as many kept as the estimator needs."""
    if before is None:
        return reuse.entry(residual, sigma)
    return before.push(residual, sigma, keep)


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
    # The family of the model this run samples, resolved now: the node may have met the shared live model
    # wearing a class another node swapped in (or this chain may swap it in after the node).
    model_class = sampled_class(patcher)
    family = family_of(patcher.model.diffusion_model, patcher.model.model_config, model_class)
    if family is None or family.unsupported or family.key != config.family.key:
        why = describe_unsupported(patcher, family, model_class) if family is None or family.unsupported else (
            f"this run samples {family.name} ({model_class.__name__}), not the {config.family.name} the node "
            "was set up for"
        )
        text = f"MagCache: {why}; this run computes every step (nothing is skipped)"
        log.warning(text)
        show_text(config.node_id, text)
        return executor(*args, **kwargs)
    cache_device = torch.device(patcher.offload_device) if config.offload_cache else None
    run = RunState(config=config, sigmas=sigmas, roles=planned_roles(guider), cache_device=cache_device)
    run.guider = guider
    # The node's family (a curve was chosen for it); the run's was only checked to be of the same layout.
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


def planned_roles(guider: Any) -> tuple[int, ...]:
    """The conditioning roles the plan assumes: CFGGuider's cond (and uncond unless cfg is 1, where ComfyUI drops
    it), or every cond a guider of its own names (DualCFGGuider, PerpNegGuider), by what it is."""
    import comfy.samplers

    standard = getattr(type(guider), "predict_noise", None) is comfy.samplers.CFGGuider.predict_noise
    if standard or not hasattr(guider, "conds"):
        cfg = float(getattr(guider, "cfg", 1.0))
        return (variants.POSITIVE, variants.NEGATIVE) if cfg != 1.0 else (variants.POSITIVE,)
    named = getattr(guider, "conds", None) or getattr(guider, "original_conds", None) or {}
    roles = tuple(sorted(set(variants.named_roles(named).values())))
    return roles or (variants.POSITIVE, variants.NEGATIVE)


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
    # By what each cond is (the guider's named conds), not by its place: DualCFGGuider passes the negative first.
    roles = variants.roles_of(conds, variants.named_roles(getattr(run.guider, "conds", None)))
    present = [i for i, c in enumerate(conds) if c is not None]
    positive = present[roles.index(variants.POSITIVE)] if variants.POSITIVE in roles else None
    negative = present[roles.index(variants.NEGATIVE)] if variants.NEGATIVE in roles else None
    if not run.started:
        run.start(arg("calc_cond_batch", "model", args, kwargs).model_sampling)
    run.begin_evaluation(sigma, roles, transformer_options)
    motion = None
    try:
        ev, cfg = run.evaluation, run.cfg
        if cfg is None or ev is None or ev.variant or ev.skip or run.disabled is not None or positive is None \
                or negative is None:
            out = executor(*args, **kwargs)
        elif run.settings is not None and cfg.cond_only(run.settings.in_window(sigma)):
            ev.cond_only = True
            only_cond = [None if i == negative else c for i, c in enumerate(conds)]
            out = executor(*with_arg("calc_cond_batch", "conds", only_cond, args, kwargs))
            out[negative] = cfg.rebuild(out[positive], sigma)
        else:
            out = executor(*args, **kwargs)
            if ev.computed:
                cfg.store(out[positive], out[negative], sigma)
        if run.evaluation is not None and run.evaluation.computed and run.schedule is not None \
                and run.schedule.measures:
            motion = latent_motion(arg("calc_cond_batch", "x_in", args, kwargs))
        return out
    finally:
        run.end_evaluation(motion)


def latent_motion(x: torch.Tensor) -> torch.Tensor | None:
    """How much a video latent moves: mean frame-to-frame difference relative to its mean size (None for images).

    AdaCache's motion regularisation; a device scalar, read with the residual's change.
    """
    if x.ndim != 5 or x.shape[2] < 2:
        return None
    return (x[:, :, 1:] - x[:, :, :-1]).abs().mean() / x.abs().mean().clamp_min(1e-12)


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
