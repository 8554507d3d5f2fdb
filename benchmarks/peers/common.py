"""What every peer file shares: the benchmark's line, and attaching a peer method for one sampling run.

A peer *method* implements the hooking layer's ``Method`` (``hooks/sites.py``);
:func:`attach_method` gives each sampling run a fresh one (made from the run's
sigmas), installed through the same wrappers MagCache uses
(``hooks/wrappers.py``), and drops it when the run ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from comfyui_magcache.cache.config import MagCacheConfig
from comfyui_magcache.hooks.families import Level, family_of, sampled_class
from comfyui_magcache.hooks.host import arg
from comfyui_magcache.hooks.sites import RunHooks
from comfyui_magcache.hooks.wrappers import apply_model_wrapper, attach, run_scope

#: Makes a model to sample from the loaded one: ``(patcher, knob) -> model``; the knob is the speed asked
#: for, or (``tuned``) a threshold the benchmark tunes to each speed.
Make = Callable[[Any, float], Any]


@dataclass(frozen=True)
class Line:
    """One line of the benchmark's matrix."""

    name: str
    make: Make
    tuned: bool = False  # the knob is a threshold: bisected to each speed on probe pairs
    high: float = 1.0  # tuned: a threshold at which the method skips at least as much as any speed asked
    needs_cfg: bool = False  # only meaningful with two branches (CFG-Cache)


@dataclass(frozen=True)
class Context:
    """What lines are built from: the calibration curve of the testbed and its family."""

    curve: Any
    family: Any


@dataclass(frozen=True)
class Engine:
    """A line run by the pack's engine with ``config`` at the speed asked for (a :data:`Make`)."""

    config: MagCacheConfig

    def __call__(self, patcher: Any, speed: float) -> Any:
        from dataclasses import replace

        from comfyui_magcache.cache import magcache

        model = patcher.clone()
        magcache.attach(model, replace(self.config, speed=speed))
        return model


class PeerRun:
    """One sampling run of a peer: its hooks (as ``apply_model_wrapper`` expects) and its method."""

    def __init__(self, method: Any, hooks: RunHooks) -> None:
        self.method = method
        self.hooks = hooks


def attach_method(model: Any, key: str, make_method: Callable[[list[float]], Any]) -> None:
    """Attach a peer: each sampling run gets ``make_method(sigmas)`` on the block stack's hooks."""
    import comfy.patcher_extension as ext

    def outer(executor: Any, *args: Any, **kwargs: Any) -> Any:
        guider = executor.class_obj
        patcher = guider.model_patcher
        sigmas = [float(s) for s in arg("outer_sample", "sigmas", args, kwargs).flatten().tolist()]
        family = family_of(patcher.model.diffusion_model, patcher.model.model_config, sampled_class(patcher))
        method = make_method(sigmas)
        hooks = RunHooks(method, family, Level.BLOCK)
        with run_scope(guider, key, hooks, PeerRun(method, hooks)):
            return executor(*args, **kwargs)

    wrappers = {ext.WrappersMP.OUTER_SAMPLE: outer, ext.WrappersMP.APPLY_MODEL: partial(apply_model_wrapper, key)}
    attach(model, key, wrappers, None)


def call_index(calls: list[float], sigma: float) -> int:
    """The run's call nearest to ``sigma`` (a sampler that evaluates twice per step maps both to one call)."""
    return min(range(len(calls)), key=lambda i: abs(calls[i] - sigma))
