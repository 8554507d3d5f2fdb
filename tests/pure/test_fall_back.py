"""The hooks' choice when a block-level run's block patches are bypassed (hooks/sites.py, no ComfyUI needed)."""

from __future__ import annotations

import threading
from typing import Any

import torch

from comfyui_magcache.hooks.families import Family, Level, Stack
from comfyui_magcache.hooks.sites import Batch, RunHooks

FAMILY = Family("Test", ("TestModel",), (Stack("blocks", "double_block"),))


class Method:
    """A method that records what the hooks tell it; ``serves`` says whether it can go on at the output."""

    def __init__(self, serves: bool | None) -> None:
        self.disabled: list[str] = []
        self.served: list[str] = []
        if serves is not None:
            self.serve_output_level = lambda why: self.served.append(why) or serves

    def begin_batch(self, batch: Batch) -> None:
        batch.skip = False

    def end_batch(self, batch: Batch) -> None:
        pass

    def disable(self, reason: str) -> None:
        self.disabled.append(reason)


def run_bypassed_batch(hooks: RunHooks, reached_model: bool) -> None:
    """One batch whose model ran without calling the block patches, in a thread that must not hang."""
    batch = Batch(uuids=("a",), roles=(0,), sigma=torch.ones(1))

    def model() -> Any:
        batch.reached_model = reached_model
        return torch.zeros(1)

    worker = threading.Thread(target=hooks.run_batch, args=(batch, model), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "the hooks deadlocked"


def test_model_reached_and_method_serves_the_output_level() -> None:
    method = Method(serves=True)
    hooks = RunHooks(method, FAMILY, Level.BLOCK)
    run_bypassed_batch(hooks, reached_model=True)
    assert hooks.level is Level.OUTPUT and hooks.fell_back and hooks.broken is None
    assert len(method.served) == 1 and not method.disabled


def test_model_reached_but_method_cannot_serve_it_stands_aside() -> None:
    for method in (Method(serves=False), Method(serves=None)):
        hooks = RunHooks(method, FAMILY, Level.BLOCK)
        run_bypassed_batch(hooks, reached_model=True)
        assert hooks.level is Level.BLOCK and hooks.broken is not None
        assert method.disabled and "block patches were not" in method.disabled[0]


def test_model_not_reached_stands_aside_without_asking() -> None:
    method = Method(serves=True)
    hooks = RunHooks(method, FAMILY, Level.BLOCK)
    run_bypassed_batch(hooks, reached_model=False)
    assert hooks.level is Level.BLOCK and not method.served
    assert method.disabled and "did not call the block patches" in method.disabled[0]
