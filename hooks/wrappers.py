"""ComfyUI's model wrappers, as MagCache and the calibration recorder both use them.

* :func:`attach` puts a method's wrappers and its configuration on a model
  clone under one key (replacing what that key held before).
* :func:`run_scope` is the body of an ``OUTER_SAMPLE`` wrapper: it gives the
  sampling run its own copy of the model options with the run's hooks
  installed, and restores the guider's options when the run ends for any
  reason (an exception or a cancel included), so nothing outlives the run.
* :func:`apply_model_wrapper` (``APPLY_MODEL``) tells the hooks which
  conditionings a batch holds and at which sigma, and switches skipping off
  for a run whose inputs add features between blocks.

Arguments of ComfyUI's functions are read by name (:func:`~.host.arg`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .families import Level, sampled_class
from .host import arg
from .sites import Batch, RunHooks, between_block_patches

#: Our entries in ``transformer_options`` (and the keys of our wrappers): MagCache's, and the recorder's.
MAGCACHE_KEY = "magcache"
CALIBRATE_KEY = "magcache_calibrate"


def attach(model: Any, key: str, wrappers: dict[str, Callable[..., Any]], value: Any) -> None:
    """Put ``wrappers`` and ``value`` on ``model`` (a clone the caller owns) under ``key``.

    ``value`` goes in ``transformer_options[key]``, where the wrappers find it
    when sampling starts. Wrappers attached earlier under ``key`` are replaced.
    """
    for kind, fn in wrappers.items():
        model.remove_wrappers_with_key(kind, key)
        model.add_wrapper_with_key(kind, key, fn)
    model.model_options.setdefault("transformer_options", {})[key] = value


@contextmanager
def run_scope(guider: Any, key: str, hooks: RunHooks, state: Any) -> Iterator[dict[str, Any]]:
    """Give one sampling run its own model options, with ``hooks`` installed and ``state`` under ``key``."""
    import comfy.model_patcher

    original = guider.model_options
    options = comfy.model_patcher.create_model_options_clone(original)
    patcher = guider.model_patcher
    options = hooks.install(options, patcher.model.diffusion_model, sampled_class(patcher))
    options["transformer_options"][key] = state
    guider.model_options = options
    try:
        yield options
    finally:
        guider.model_options = original


def apply_model_wrapper(key: str, executor: Any, *args: Any, **kwargs: Any) -> Any:
    """``APPLY_MODEL``: run the batch with the hooks of the run stored under ``key``.

    Bind ``key`` with ``functools.partial``. The run's state must have a
    ``hooks`` attribute (:class:`~.sites.RunHooks`).
    """
    transformer_options = arg("apply_model", "transformer_options", args, kwargs) or {}
    state = transformer_options.get(key)
    hooks = getattr(state, "hooks", None)
    if hooks is None or not hooks.accepts(executor.class_obj.diffusion_model):
        return executor(*args, **kwargs)
    if arg("apply_model", "control", args, kwargs) is not None:
        hooks.method.disable("ControlNet inputs add features between blocks")
    for name in hooks.family.between_block_inputs:
        if kwargs.get(name) is not None:
            hooks.method.disable(f"'{name}' inputs add features between blocks")
    outside = between_block_patches(transformer_options)
    if outside and hooks.level is Level.BLOCK:
        hooks.method.disable(f"model patches applied between blocks ({', '.join(outside)})")
    t = arg("apply_model", "t", args, kwargs)
    batch = Batch(
        uuids=tuple(transformer_options.get("uuids") or ()),
        roles=tuple(transformer_options.get("cond_or_uncond") or ()),
        sigma=t.detach().reshape(-1)[:1],
    )
    return hooks.run_batch(batch, lambda: executor(*args, **kwargs))
