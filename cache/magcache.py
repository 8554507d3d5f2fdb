"""The engine: hooks MagCache into a ComfyUI model through its public extension points.

Pieces, in the order a sampling run meets them:

* ``outer_sample_wrapper`` (``WrappersMP.OUTER_SAMPLE``): when sampling starts,
  turns the node's :class:`MagCacheConfig` into a fresh :class:`RunState` in the
  run's own copy of the model options, installs the block patches there
  (chaining to any patch another node set), logs the plan; when sampling ends,
  for any reason, logs the summary and drops every cached tensor.
* ``calc_cond_batch_wrapper`` (``WrappersMP.CALC_COND_BATCH``): once per model
  evaluation, asks the pure :class:`~.policy.SkipPolicy` whether this call may
  skip the block stack.
* ``apply_model_wrapper`` (``WrappersMP.APPLY_MODEL``): once per batch that
  ComfyUI sends through the model, tells the block patches which conditionings
  (by uuid) the batch holds, and switches skipping off for the run when inputs
  that act between blocks (ControlNet, VACE) are present.
* :class:`BlockPatch` (``patches_replace["dit"]``): on a computed call, the first
  block notes the stack's input and the last block stores the residual per
  conditioning; on a skipped call, the first block returns ``x + r`` and every
  other block passes its input through.

Nothing is stored on the model object or the node's model: the run state lives
in the per-run options ComfyUI discards when sampling ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from ..calibration.curve import MagnitudeCurve
from .architectures import Architecture, Stack, Tokens
from .policy import Plan, SkipPolicy, SkipSettings, plan_run

log = logging.getLogger("comfyui-magcache")

#: Key of our wrappers and of our entry in ``transformer_options``.
KEY = "magcache"
#: Schedules shorter than this are left alone: few-step (distilled) models are
#: ruined by skipping, and there is nothing to gain.
MIN_STEPS = 10


@dataclass(frozen=True)
class MagCacheConfig:
    """What the node decided; immutable, shared by every run of the patched model."""

    curve: MagnitudeCurve
    architecture: Architecture
    threshold: float
    max_skips: int
    retention: float
    start: float = 0.0
    end: float = 1.0
    offload_cache: bool = False

    def settings_for(self, model_sampling: Any) -> SkipSettings:
        """Resolve schedule fractions to sigmas of this model's sampling."""
        first_skippable = max(self.retention, self.start)
        return SkipSettings(
            threshold=self.threshold,
            max_skips=self.max_skips,
            skip_below_sigma=float(model_sampling.percent_to_sigma(first_skippable)),
            compute_below_sigma=float(model_sampling.percent_to_sigma(self.end)) if self.end < 1.0 else 0.0,
        )


@dataclass
class _Batch:
    """The batch currently inside the diffusion model."""

    uuids: tuple[Any, ...]
    skip: bool
    # Set by the first block: whether this forward replaces the stack.
    skipping: bool = False
    x_in: torch.Tensor | None = None


@dataclass
class RunState:
    """Everything one sampling run knows; created at its start, dropped at its end."""

    config: MagCacheConfig
    policy: SkipPolicy
    plan: Plan
    cache_device: torch.device | None
    disabled: str | None = None  # why skipping is off for this run, if it is
    evaluation_skip: bool = False
    batch: _Batch | None = None
    residuals: dict[Any, torch.Tensor] = field(default_factory=dict)
    batch_residual: tuple[tuple[Any, ...], torch.Tensor] | None = None
    evaluations: int = 0
    skipped_evaluations: int = 0
    stack_runs: int = 0
    forced: int = 0
    # Whether the evaluation in progress has run the block stack on some batch.
    evaluation_computed: bool = True

    # -- per model evaluation -------------------------------------------------
    def begin_evaluation(self, sigma: float, roles: tuple[int, ...]) -> None:
        self._close_evaluation()
        self.evaluations += 1
        skip = self.policy.decide(sigma, roles)
        self.evaluation_skip = skip and self.disabled is None
        self.evaluation_computed = False

    def _close_evaluation(self) -> None:
        if not self.evaluation_computed:
            self.skipped_evaluations += 1
            self.evaluation_computed = True

    def disable(self, reason: str) -> None:
        if self.disabled is None:
            self.disabled = reason
            log.info("MagCache: skipping switched off for this run: %s", reason)
        self.evaluation_skip = False

    # -- residual cache -------------------------------------------------------
    def cached_residual_for(self, x: torch.Tensor, uuids: tuple[Any, ...]) -> torch.Tensor | None:
        """``x + r`` for the batch, or None when some conditioning has no usable residual."""
        if self.batch_residual is not None and self.batch_residual[0] == uuids:
            r = self.batch_residual[1]
            if r.shape == x.shape:
                return x + r.to(x.device, non_blocking=True) if self.cache_device is not None else x + r
            return None
        n = len(uuids)
        if n == 0 or x.shape[0] % n:
            return None
        chunk = x.shape[0] // n
        parts = [self.residuals.get(u) for u in uuids]
        want = (chunk, *x.shape[1:])
        if any(p is None or p.shape != want for p in parts):
            return None
        out = torch.empty_like(x)
        for i, p in enumerate(parts):
            torch.add(
                x[i * chunk : (i + 1) * chunk], p.to(x.device, non_blocking=True), out=out[i * chunk : (i + 1) * chunk]
            )
        return out

    def store_residual(self, r: torch.Tensor, uuids: tuple[Any, ...]) -> None:
        if self.cache_device is not None:
            r = r.to(self.cache_device, non_blocking=True)
        self.batch_residual = (uuids, r)
        if uuids and r.shape[0] % len(uuids) == 0:
            for u, part in zip(uuids, r.chunk(len(uuids))):
                self.residuals[u] = part

    def free(self) -> None:
        self.residuals.clear()
        self.batch_residual = None
        self.batch = None

    def summary(self) -> str:
        self._close_evaluation()
        computed = self.evaluations - self.skipped_evaluations
        speed = self.evaluations / computed if computed else 1.0
        text = (
            f"MagCache: skipped the block stack on {self.skipped_evaluations} of {self.evaluations} model calls "
            f"(plan: {self.plan.total - self.plan.computed} of {self.plan.total}), ~{speed:.2f}x on the blocks"
        )
        if self.forced:
            text += f"; {self.forced} batch(es) computed off-plan for lack of a matching cached residual"
        return text


class BlockPatch:
    """A ``patches_replace["dit"]`` entry for one block of the stack.

    Chains to ``previous`` (a patch another node set on the same block) when
    the block is computed, so both patches take effect.
    """

    def __init__(
        self, run: RunState, stack: Stack, first: bool, last: bool, previous: Callable[..., Any] | None
    ) -> None:
        self.run = run
        self.stack = stack
        self.first = first
        self.last = last
        self.previous = previous

    def _compute(self, args: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        if self.previous is not None:
            return self.previous(args, extra)
        return extra["original_block"](args)

    def __call__(self, args: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        batch = self.run.batch
        if batch is None:  # called outside a sampling run we prepared
            return self._compute(args, extra)
        key = self.stack.key
        if self.first:
            batch.skipping = False
            batch.x_in = None
            if batch.skip:
                x = args[key]
                out = self.run.cached_residual_for(x, batch.uuids)
                if out is not None:
                    batch.skipping = True
                    return {**args, key: out}
                self.run.forced += 1
            batch.x_in = stack_input(self.stack, args)
            self.run.stack_runs += 1
            self.run.evaluation_computed = True
        if batch.skipping:
            return args
        out = self._compute(args, extra)
        if self.last and batch.x_in is not None:
            self.run.store_residual(stack_residual(self.stack, batch.x_in, out[key]), batch.uuids)
            batch.x_in = None
        return out


def stack_input(stack: Stack, args: dict[str, Any]) -> torch.Tensor:
    """A copy of the hidden states entering the stack's first block, from the patch's ``args``.

    A copy, because several families' blocks update their input in place
    (Flux, HunyuanVideo, Chroma, LTX-Video), which would zero the residual.
    """
    return args[stack.key].clone()


def stack_residual(stack: Stack, x_in: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """What the block stack added to the image tokens: ``y - x_in``.

    ``x_in`` is what entered the first block (image tokens only); ``y`` is what
    left the last block, which belongs to ``stack``. Single-stream stacks run on text and image
    tokens concatenated, so ``y`` is first cut down to the image tokens.
    """
    n = x_in.shape[1]
    if stack.tokens is Tokens.HEAD:
        y = y[:, :n]
    elif stack.tokens is Tokens.TAIL:
        y = y[:, y.shape[1] - n :]
    return y - x_in


#: Builds the patch of one block: ``make_patch(stack, first=..., last=..., previous=...)``;
#: None leaves that block as it is.
PatchFactory = Callable[..., Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] | None]


def install_block_patches(
    model_options: dict[str, Any], diffusion_model: Any, arch: Architecture, make_patch: PatchFactory
) -> dict[str, Any]:
    """Patch every block of ``arch``'s stacks in ``model_options`` (a per-run copy).

    ``first`` and ``last`` mark the ends of the whole stack; ``previous`` is the
    patch another node set on that block, which the new patch must chain to.
    Shared by MagCache and the calibration recorder.
    """
    import comfy.model_patcher

    blocks = [(stack, i) for stack in arch.stacks for i in range(len(getattr(diffusion_model, stack.attr)))]
    existing = model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    for n, (stack, i) in enumerate(blocks):
        previous = existing.get((stack.patch_name, i))
        patch = make_patch(stack, first=n == 0, last=n == len(blocks) - 1, previous=previous)
        if patch is None:
            continue
        model_options = comfy.model_patcher.set_model_options_patch_replace(
            model_options, patch, "dit", stack.patch_name, i
        )
    return model_options


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
    config: MagCacheConfig | None = guider.model_options.get("transformer_options", {}).get(KEY)
    if not isinstance(config, MagCacheConfig):
        return executor(*args, **kwargs)
    sigmas = [float(s) for s in args[3].detach().flatten().cpu().tolist()]
    patcher = guider.model_patcher
    model = patcher.model
    steps = max(len(sigmas) - 1, 0)
    if steps and equivalent_steps(model.model_sampling, sigmas) < MIN_STEPS:
        log.info(
            "MagCache: %d-step schedule is too short to skip safely (few-step and distilled models); "
            "computing every step.",
            steps,
        )
        return executor(*args, **kwargs)
    settings = config.settings_for(model.model_sampling)
    roles = (0, 1) if float(getattr(guider, "cfg", 1.0)) != 1.0 else (0,)
    plan = plan_run(config.curve, settings, sigmas, roles)
    cache_device = torch.device(patcher.offload_device) if config.offload_cache else None
    run = RunState(config=config, policy=SkipPolicy(config.curve, settings), plan=plan, cache_device=cache_device)
    orig_options = guider.model_options
    import comfy.model_patcher

    options = comfy.model_patcher.create_model_options_clone(orig_options)
    options = install_block_patches(options, model.diffusion_model, config.architecture, partial(BlockPatch, run))
    options["transformer_options"][KEY] = run
    log.info(
        "MagCache: computing %d of %d steps, ~%.2fx (curve '%s', threshold %g, K %d, retention %g)",
        plan.computed,
        plan.total,
        plan.speedup,
        config.curve.name,
        config.threshold,
        config.max_skips,
        config.retention,
    )
    guider.model_options = options
    try:
        return executor(*args, **kwargs)
    finally:
        guider.model_options = orig_options
        log.info(run.summary())
        run.free()


def calc_cond_batch_wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
    """One decision per model evaluation, shared by every batch it is split into.

    Arguments are ComfyUI's ``calc_cond_batch(model, conds, x_in, timestep, model_options)``.
    """
    conds, timestep, model_options = args[1], args[3], args[4]
    run = model_options.get("transformer_options", {}).get(KEY)
    if isinstance(run, RunState):
        # One scalar read per model evaluation (not per block): the sampler
        # itself reads its sigmas on the host at every step.
        sigma = float(timestep.reshape(-1)[0])
        roles = tuple(i for i, c in enumerate(conds) if c is not None)
        run.begin_evaluation(sigma, roles)
    return executor(*args, **kwargs)


def apply_model_wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
    """Tell the block patches which conditionings this batch holds."""
    transformer_options = args[5] if len(args) > 5 else kwargs.get("transformer_options", {})
    run = transformer_options.get(KEY)
    if not isinstance(run, RunState):
        return executor(*args, **kwargs)
    control = args[4] if len(args) > 4 else kwargs.get("control")
    if control is not None:
        run.disable("ControlNet inputs add features between blocks")
    for name in run.config.architecture.between_block_inputs:
        if kwargs.get(name) is not None:
            run.disable(f"'{name}' inputs add features between blocks")
    uuids = tuple(transformer_options.get("uuids") or ())
    run.batch = _Batch(uuids=uuids, skip=run.evaluation_skip)
    try:
        return executor(*args, **kwargs)
    finally:
        run.batch = None


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
            ext.WrappersMP.APPLY_MODEL: apply_model_wrapper,
        },
        config,
    )


def attach_wrappers(model: Any, key: str, wrappers: dict[str, Callable[..., Any]], value: Any) -> None:
    """Put ``wrappers`` and ``value`` on ``model`` under ``key``, replacing earlier ones of that key.

    ``value`` goes in ``transformer_options[key]``: the wrappers find it there
    when sampling starts. Shared by MagCache and the calibration recorder.
    """
    for kind, fn in wrappers.items():
        model.remove_wrappers_with_key(kind, key)
        model.add_wrapper_with_key(kind, key, fn)
    model.model_options.setdefault("transformer_options", {})[key] = value
