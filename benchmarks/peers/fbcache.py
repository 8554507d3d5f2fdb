"""First Block Cache (ParaAttention's FBCache, 2025), written here from its description.

Every call runs the first block. When the first block's residual (its output
minus its input) has changed, relative to the last call that ran the whole
stack, by less than a threshold (mean absolute difference over mean absolute
value), the other blocks are skipped and the residual they added on that
last computed call is added to the first block's output. The threshold is the
only knob; the benchmark tunes it to each speed. The test of change is read on
the host once per call (a peer of the benchmark, not the pack's hot path).

It runs on ComfyUI's block patches, installed with the pack's hooking layer
(``hooks.sites.install_block_patches``, chained to any patch already there), on
the families whose blocks pass one hidden-state tensor; a joint last stack
(text and image tokens in one sequence) is cut to the image tokens, found once
per run at its first block.
"""

from __future__ import annotations

from typing import Any

import torch

from comfyui_magcache.benchmarks.peers.common import Context, Line
from comfyui_magcache.hooks.families import Tokens, blocks_of, family_of, sampled_class
from comfyui_magcache.hooks.sites import install_block_patches


def relative_change(now: torch.Tensor, before: torch.Tensor) -> float:
    """FBCache's test: mean |now - before| / mean |before|."""
    return float((now - before).abs().mean() / before.abs().mean().clamp_min(1e-12))


class FirstBlockRun:
    """One sampling run's state, made fresh by the run's wrapper: what the last computed call left, per shape."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.reference: dict[Any, torch.Tensor] = {}  # first block's residual at the last computed call
        self.rest: dict[Any, torch.Tensor] = {}  # what the other blocks added to the image tokens then
        self.skipping = False
        self.first_out: torch.Tensor | None = None
        self.boundary: torch.Tensor | None = None
        self.tokens: Tokens | None = None
        self.calls = 0
        self.computed = 0

    def first(self, args: dict[str, Any], compute: Any, key: str) -> dict[str, Any]:
        x = args[key].clone()  # blocks may update their input in place
        out = compute(args)
        r0 = out[key] - x
        k = tuple(r0.shape)
        self.calls += 1
        before = self.reference.get(k)
        self.skipping = before is not None and k in self.rest and relative_change(r0, before) < self.threshold
        if self.skipping:
            return {**out, key: out[key] + self.rest[k]}
        self.computed += 1
        self.reference[k] = r0
        self.first_out = out[key].clone()
        return out

    def last(self, y: torch.Tensor) -> None:
        x1 = self.first_out
        if x1 is None:
            return
        if y.shape != x1.shape:  # a joint stack: cut to the image tokens
            n = x1.shape[1]
            y = y[:, :n] if self.tokens is Tokens.HEAD else y[:, y.shape[1] - n :]
        self.rest[tuple(x1.shape)] = y - x1
        self.first_out = None


class _Patch:
    def __init__(self, run_ref: list[FirstBlockRun | None], stack: Any, role: str, previous: Any) -> None:
        self.run_ref, self.stack, self.role, self.previous = run_ref, stack, role, previous

    def compute(self, args: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        return self.previous(args, extra) if self.previous is not None else extra["original_block"](args)

    def __call__(self, args: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        run = self.run_ref[0]
        key = self.stack.key
        if run is None:
            return self.compute(args, extra)
        if self.role == "first":
            return run.first(args, lambda a: self.compute(a, extra), key)
        if run.skipping:
            return args
        if self.role == "first_of_joint" and run.boundary is not None:
            n = run.boundary.shape[1]
            run.tokens = Tokens.HEAD if torch.equal(args[key][:, :n], run.boundary) else Tokens.TAIL
            run.boundary = None
        out = self.compute(args, extra)
        if self.role == "before_joint" and run.tokens is None:
            run.boundary = out[key].clone()
        if self.role == "last":
            run.last(out[key])
        return out


def attach(patcher: Any, threshold: float) -> Any:
    """A clone of ``patcher`` running FBCache at ``threshold`` (fresh state per sampling run)."""
    import comfy.patcher_extension as ext

    model = patcher.clone()
    family = family_of(patcher.model.diffusion_model, patcher.model.model_config, sampled_class(patcher))
    dm = patcher.model.diffusion_model
    stacks = tuple(st for st in family.stacks if len(blocks_of(dm, st.attr)) > 0)
    run_ref: list[FirstBlockRun | None] = [None]

    def make_patch(stacks_: tuple[Any, ...], s: int, i: int, n: int, previous: Any) -> Any:
        last_stack = len(stacks_) - 1
        joint = stacks_[-1].tokens is Tokens.FIND and last_stack > 0
        role = "middle"
        if s == 0 and i == 0:
            role = "first"
        elif s == last_stack and i == n - 1:
            role = "last"
        elif joint and s == last_stack - 1 and i == n - 1:
            role = "before_joint"
        elif joint and s == last_stack and i == 0:
            role = "first_of_joint"
        return _Patch(run_ref, stacks_[s], role, previous)

    model.model_options = install_block_patches(model.model_options, dm, stacks, make_patch)

    def outer(executor: Any, *args: Any, **kwargs: Any) -> Any:
        run_ref[0] = FirstBlockRun(threshold)
        try:
            return executor(*args, **kwargs)
        finally:
            run_ref[0] = None

    model.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, "peer_fbcache", outer)
    return model


def lines(context: Context) -> list[Line]:
    return [Line("First Block Cache", attach, tuned=True, high=2.0)]
