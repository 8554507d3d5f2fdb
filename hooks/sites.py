"""Where a run acts on the model: the block stack or the model's output, with the checks that keep it honest.

A *method* (MagCache's cache in ``cache/``, the calibration recorder in
``calibration/``) never touches ComfyUI. It implements :class:`Method`: per
batch that enters the diffusion model it is asked whether to replace the stack
(``begin_batch`` sets ``batch.skip``), for the residual to reuse (``cached``), and
handed the residual of every computed call (``store``). :class:`RunHooks` puts
those calls in the right place for the model's :class:`~.families.Family`:

* block level: ``patches_replace["dit"]`` entries in the run's own copy of the
  model options, chained to any patch another node set on the same block. On a
  computed call the first block notes the stack's input and the last block
  hands over ``blocks(x) - x`` cut to the image tokens; on a skipped call the
  first block returns ``x + r`` and every other block passes its input through;
* output level: a ``WrappersMP.DIFFUSION_MODEL`` wrapper in the same copy; a
  skipped call returns a copy of the cached output.

A block-level run installs the output wrapper too, as a witness: when the
model is reached through it but the block patches are not (a patcher that
calls its blocks directly, a forward that drops ``patches_replace``), the run
moves to the output level if its method can (:meth:`Method.serve_output_level`:
a block curve is not used there), and stands aside otherwise. A skip is only
ever counted where the cache really replaced the stack or the model
(``Batch.skipping``).

What the family table assumes is checked against the tensors of the run's
first computed call, and found from them where it can be (which end of a
single-stream sequence holds the image tokens). A failed check switches
skipping off for the run with one log line naming the model, the assumption
and the ComfyUI version; the output is then the plain model's. Checks read
shapes, plus one exact comparison of a slice once per run: never a host
synchronisation per block.

The batch inside the model is kept per thread, so ComfyUI's MultiGPU CFG split
(cond and uncond batches in threads at once) never mixes two batches.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from . import hidden
from .families import Family, Level, Stack, Tokens, blocks_of
from .host import host_version

log = logging.getLogger("comfyui-magcache")

#: ``transformer_options["patches"]`` entries that run inside a block (or before
#: the stack), so that a skipped stack skips them consistently. Any other patch
#: ComfyUI applies between or after blocks, where a skipped call would run it on
#: passed-through tensors: skipping is switched off for that run.
PATCHES_INSIDE_BLOCKS = frozenset(
    {"attn1_patch", "attn2_patch", "attn1_output_patch", "attn2_output_patch", "post_input"}
)


@dataclass
class Batch:
    """One batch inside the diffusion model: which conditionings, at which sigma, and what happened."""

    uuids: tuple[Any, ...]
    roles: tuple[int, ...]
    sigma: torch.Tensor  # one element, on the device
    observe: bool = True  # False: the method wants this batch left alone (computed, not cached, not checked)
    skip: bool = False  # the method asks to replace the stack on this batch
    skipping: bool = False  # the stack is being replaced on this call
    entered: bool = False  # the stack (or the model, at output level) was reached
    reached_model: bool = False  # the diffusion-model wrapper was reached (at either level)
    stored: bool = False  # a residual was handed to the method
    #: The stack's input: a copy on a computed call, until its residual has been stored; the live input on a
    #: skipped call, while the method is asked what to add (a forecast of the output itself subtracts it).
    x_in: hidden.Hidden | None = None
    boundary: torch.Tensor | None = None  # image tokens leaving the stack before a joint one


class Method(Protocol):
    """What a cached or recorded run does at the points the hooks give it."""

    def begin_batch(self, batch: Batch) -> None:
        """Decide ``batch.skip`` for a batch about to enter the model."""

    def cached(
        self, batch: Batch, shape: tuple[tuple[int, ...], ...], device: torch.device
    ) -> list[tuple[float, hidden.Hidden]] | None:
        """What a skipped batch adds (terms of ``shape``, on ``device``, see ``hidden.combine``), or None when
        nothing cached fits it."""

    def store(self, batch: Batch, residual: hidden.Hidden) -> None:
        """The residual of a computed batch (a tensor the method may keep)."""

    def end_batch(self, batch: Batch) -> None:
        """The batch has left the model (``batch.skipping`` tells whether its stack was replaced)."""

    def disable(self, reason: str) -> None:
        """Skipping must stop for the rest of the run."""

    def serve_output_level(self, reason: str) -> bool:
        """The block patches are bypassed but the model's output is reached: go on at the output level?

        True when the method now works at the output level (it re-plans with an
        output-level curve); False to stand aside for the rest of the run.
        """


class RunHooks:
    """The hooks of one sampling run: installs them, keeps each thread's batch, runs the checks.

    ``level``: where to act (a block-level family can also be served at the
    output level, with a curve recorded there). ``all_blocks``: patch every block (a cache must pass skipped blocks
    through) or only the ones a recorder needs to look at.
    """

    def __init__(self, method: Method, family: Family, level: Level, all_blocks: bool = True) -> None:
        self.method = method
        self.family = family
        self.level = level
        self.all_blocks = all_blocks
        self._local = threading.local()
        self._lock = threading.Lock()
        #: Where the last stack holds the image tokens, once known for this run.
        self.tokens: Tokens | None = None
        #: Output level: the channels of the model's output, once seen.
        self.out_channels: int | None = None
        #: Why a check failed, if one did: the run's measurements cannot be trusted.
        self.broken: str | None = None
        #: Why a block-level run moved to the output level, if it did.
        self.fell_back: str | None = None
        #: The family's stacks that hold blocks on this model, and the model's class and block counts,
        #: set when the hooks are installed.
        self.stacks: tuple[Stack, ...] = family.stacks
        self.layout: tuple[Any, ...] | None = None
        self._foreign_seen = False

    def accepts(self, diffusion_model: Any) -> bool:
        """Whether a batch runs on the model the hooks were installed for.

        A guider may send some batches through another model with the same
        options (ComfyUI's DualModel guider runs the uncond on a second model):
        those are computed plainly and never touch the cache.
        """
        if self.layout is None or _layout(diffusion_model, self.family) == self.layout:
            return True
        if not self._foreign_seen:
            self._foreign_seen = True
            log.info(
                "MagCache: some batches run on another model (%s); they are computed in full",
                type(diffusion_model).__name__,
            )
        return False

    # -- the batch of this thread ---------------------------------------------
    @property
    def batch(self) -> Batch | None:
        return getattr(self._local, "batch", None)

    def run_batch(self, batch: Batch, run: Callable[[], Any]) -> Any:
        """Run one ``apply_model`` call with ``batch`` as this thread's batch, then check what happened."""
        self.method.begin_batch(batch)
        if not batch.observe:
            return run()
        self._local.batch = batch
        try:
            out = run()
        finally:
            self._local.batch = None
        self.method.end_batch(batch)
        if not batch.entered:
            if self.level is Level.BLOCK and batch.reached_model and self.broken is None:
                self.fall_back("the model was reached but its block patches were not (they are bypassed)")
            else:
                where = "block patches" if self.level is Level.BLOCK else "diffusion-model wrapper"
                self.fail(f"ComfyUI did not call the {where} this family is known to have")
        elif not batch.skipping and not batch.stored and self.broken is None:
            self.fail("the stack's last block did not run (a block list of another length than the model runs)")
        return out

    def fall_back(self, why: str) -> None:
        """Block patches bypassed, model output reached: go on at the output level, or stand aside."""
        with self._lock:
            if self.level is Level.OUTPUT or self.broken is not None:
                return
            serve = getattr(self.method, "serve_output_level", None)
            moved = serve is not None and serve(why)
            if moved:
                self.level = Level.OUTPUT
                self.fell_back = why
        if not moved:
            self.fail(why)  # takes the lock itself
            return
        log.warning(
            "MagCache: %s on ComfyUI %s: %s; this run goes on at the model's output (with an output-level curve)",
            self.family.name,
            host_version(),
            why,
        )

    def fail(self, assumption: str) -> None:
        """A check failed: skipping off for this run, one log line naming model, assumption and host."""
        with self._lock:
            first = self.broken is None
            if first:
                self.broken = assumption
        if first:
            log.warning(
                "MagCache: %s on ComfyUI %s: %s; skipping switched off for this run",
                self.family.name,
                host_version(),
                assumption,
            )
        self.method.disable(f"check failed: {assumption}")

    # -- installation -----------------------------------------------------------
    def install(self, model_options: dict[str, Any], diffusion_model: Any, model_class: type | None = None
                ) -> dict[str, Any]:
        """Put this run's hooks in ``model_options`` (the run's own copy) and return it.

        ``model_class``: the class the run will sample (``families.sampled_class``), where the live object
        may still wear a class another patcher swapped in; the batches' model is checked against it.
        """
        import comfy.patcher_extension

        # At the output level it acts; at the block level it witnesses (see the module doc).
        comfy.patcher_extension.add_wrapper_with_key(
            comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
            "magcache-run",
            self._output_wrapper,
            model_options,
            is_model_options=True,
        )
        if self.level is Level.OUTPUT:
            return model_options
        # Stacks this instance really runs (HunyuanVideo 1.5 has an empty single-stream list).
        self.stacks = tuple(st for st in self.family.stacks if len(blocks_of(diffusion_model, st.attr)) > 0)
        self.layout = _layout(diffusion_model, self.family, model_class)
        return install_block_patches(model_options, diffusion_model, self.stacks, self._make_patch)

    def _make_patch(self, stacks: tuple[Stack, ...], s: int, i: int, n: int, previous: Any) -> Any:
        first = s == 0 and i == 0
        last = s == len(stacks) - 1 and i == n - 1
        # The last block before a joint last stack shows which tokens are the image's.
        before_joint = s == len(stacks) - 2 and i == n - 1 and stacks[-1].tokens is Tokens.FIND
        first_of_joint = s == len(stacks) - 1 and i == 0 and s > 0 and stacks[-1].tokens is Tokens.FIND
        if not (self.all_blocks or first or last or before_joint or first_of_joint):
            return None
        return _BlockPatch(self, stacks[s], first, last, before_joint, first_of_joint, previous)

    # -- checks -----------------------------------------------------------------
    def find_tokens(self, joint_in: torch.Tensor, image: torch.Tensor) -> None:
        """Find which end of the joint stack's input holds the image tokens (once per run: one host sync)."""
        n = image.shape[1]
        if joint_in.shape[0] != image.shape[0] or joint_in.shape[2:] != image.shape[2:] or joint_in.shape[1] < n:
            self.fail(
                f"the single-stream blocks' input {tuple(joint_in.shape)} cannot hold the image tokens "
                f"{tuple(image.shape)}"
            )
            return
        if torch.equal(joint_in[:, :n], image):
            self.tokens = Tokens.HEAD
        elif torch.equal(joint_in[:, joint_in.shape[1] - n :], image):
            self.tokens = Tokens.TAIL
        else:
            self.fail(
                "the image tokens leaving the double-stream blocks are at neither end of the "
                "single-stream blocks' input"
            )

    def residual(self, x_in: hidden.Hidden, y: hidden.Hidden) -> hidden.Hidden | None:
        """What the stack added to the image tokens, ``y - x_in``; None (and the run stopped) if they do not line up."""
        if not isinstance(y, tuple):  # a joint stack's tensor is cut to the image tokens first
            tokens = self.stacks[-1].tokens
            if tokens is Tokens.FIND:
                tokens = self.tokens if len(self.stacks) > 1 else None
                if tokens is None:
                    if self.broken is None:
                        self.fail("the position of the image tokens in the single-stream blocks was not found")
                    return None
            n = hidden.primary(x_in).shape[1]
            if tokens is Tokens.HEAD:
                y = y[:, :n]
            elif tokens is Tokens.TAIL:
                y = y[:, y.shape[1] - n :]
        if hidden.shape(y) != hidden.shape(x_in):
            self.fail(
                f"the block stack's output {hidden.shape(y)} does not line up with its input {hidden.shape(x_in)}"
            )
            return None
        return hidden.sub(y, x_in)

    # -- output level -------------------------------------------------------------
    def _output_wrapper(self, executor: Any, *args: Any, **kwargs: Any) -> Any:
        """``WrappersMP.DIFFUSION_MODEL``: replace the whole model on a skipped call.

        Here the cached "residual" is the model's output itself: a flow model
        predicts a velocity that changes slowly along the path, and its
        magnitude follows the law (measured on the embedded model: the first
        24 of 49 ratios within 1% of 1), while the output minus the input does
        not (every ratio 5-10% above 1). The output must have the input's batch
        and spatial shape; its channels may be fewer (an image-to-video model
        takes its reference as extra input channels).
        """
        batch = self.batch
        if batch is None:
            return executor(*args, **kwargs)
        batch.reached_model = True
        if self.level is not Level.OUTPUT:
            return executor(*args, **kwargs)
        x = args[0]
        batch.entered = True
        if batch.skip and self.out_channels is not None:
            terms = self.method.cached(batch, ((x.shape[0], self.out_channels, *x.shape[2:]),), x.device)
            if terms is not None:
                batch.skipping = True
                return hidden.combine(None, terms)  # the one allocation: the sampler owns what the model returns
        y = executor(*args, **kwargs)
        if self.broken is not None:
            return y
        if (
            not isinstance(y, torch.Tensor)
            or y.ndim != x.ndim
            or y.shape[0] != x.shape[0]
            or y.shape[2:] != x.shape[2:]
            or y.shape[1] > x.shape[1]
        ):
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            self.fail(f"the model's output {shape} does not line up with its input {tuple(x.shape)}")
            return y
        self.out_channels = y.shape[1]
        self.method.store(batch, y.clone())
        batch.stored = True
        return y


class _BlockPatch:
    """A ``patches_replace["dit"]`` entry for one block of the stack.

    Chains to ``previous`` (a patch another node set on the same block) when
    the block is computed, so both take effect.
    """

    def __init__(
        self,
        hooks: RunHooks,
        stack: Stack,
        first: bool,
        last: bool,
        before_joint: bool,
        first_of_joint: bool,
        previous: Callable[..., Any] | None,
    ) -> None:
        self.hooks = hooks
        self.stack = stack
        self.first = first
        self.last = last
        self.before_joint = before_joint
        self.first_of_joint = first_of_joint
        self.previous = previous

    def _compute(self, args: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        if self.previous is not None:
            return self.previous(args, extra)
        return extra["original_block"](args)

    def __call__(self, args: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        hooks = self.hooks
        batch = hooks.batch
        if batch is None or hooks.level is Level.OUTPUT:  # outside a run we prepared, or the run moved to the output
            return self._compute(args, extra)
        key = self.stack.key
        if self.first:
            batch.entered = True
            batch.skipping = False
            if batch.skip:
                x = batch.x_in = args[key]
                terms = hooks.method.cached(batch, hidden.shape(x), hidden.device(x))
                batch.x_in = None
                if terms is not None:
                    batch.skipping = True
                    return {**args, key: hidden.combine(x, terms)}
            # A copy: several families' blocks update their input in place.
            batch.x_in = hidden.clone(args[key])
        if batch.skipping:
            return args
        if self.first_of_joint and batch.boundary is not None:
            hooks.find_tokens(args[key], batch.boundary)
            batch.boundary = None
        out = self._compute(args, extra)
        if self.before_joint and hooks.tokens is None and hooks.broken is None:
            batch.boundary = out[key].clone()
        if self.last and batch.x_in is not None:
            r = hooks.residual(batch.x_in, out[key])
            if r is not None:
                hooks.method.store(batch, r)
                batch.stored = True
            batch.x_in = None
        return out


#: Builds the patch of block ``i`` of ``stacks[s]`` (``n`` blocks), chaining to
#: ``previous``; None leaves that block as it is.
PatchFactory = Callable[[tuple[Stack, ...], int, int, int, Any], Any]


def install_block_patches(
    model_options: dict[str, Any], diffusion_model: Any, stacks: tuple[Stack, ...], make_patch: PatchFactory
) -> dict[str, Any]:
    """Patch the blocks of ``stacks`` in ``model_options`` (a per-run copy), chaining to patches already there."""
    import comfy.model_patcher

    existing = model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    for s, stack in enumerate(stacks):
        n = len(blocks_of(diffusion_model, stack.attr))
        for i in range(n):
            patch = make_patch(stacks, s, i, n, existing.get((stack.patch_name, i)))
            if patch is not None:
                model_options = comfy.model_patcher.set_model_options_patch_replace(
                    model_options, patch, "dit", stack.patch_name, i
                )
    return model_options


def _layout(diffusion_model: Any, family: Family, model_class: type | None = None) -> tuple[Any, ...]:
    """A model's class and block counts: what must match for a batch to use this run's cache."""
    cls = model_class if model_class is not None else type(diffusion_model)
    return (cls, *(len(blocks_of(diffusion_model, st.attr)) for st in family.stacks))


def between_block_patches(transformer_options: dict[str, Any]) -> list[str]:
    """Names of ``transformer_options["patches"]`` entries that ComfyUI applies between or after blocks."""
    patches = transformer_options.get("patches") or {}
    return sorted(name for name, fns in patches.items() if fns and name not in PATCHES_INSIDE_BLOCKS)
