"""Host tests: run the pack inside a real ComfyUI checkout, on the CPU.

When no checkout is found the host test modules are not collected at all
(they import ComfyUI), and ``test_host_available.py`` reports one skip whose
reason says why and how to point the tests at a checkout.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from comfy_host import NO_HOST, ROOT, comfyui_version, import_comfyui

if ROOT is None:
    collect_ignore_glob = ["test_[!h]*.py"]
else:
    import_comfyui(ROOT)
    torch.set_num_threads(2)


def pytest_report_header(config: pytest.Config) -> str:
    if ROOT is None:
        return f"ComfyUI host: NONE. {NO_HOST}"
    return f"ComfyUI host: {ROOT} (version {comfyui_version(ROOT)})"


class BlockCounter:
    """Counts forward calls of chosen modules, without touching how they run."""

    def __init__(self, modules: list[torch.nn.Module]) -> None:
        self.calls = 0
        self._handles = [m.register_forward_pre_hook(self._hook) for m in modules]

    def _hook(self, *_: Any) -> None:
        self.calls += 1

    def close(self) -> None:
        for h in self._handles:
            h.remove()


@pytest.fixture(scope="session")
def comfy_server() -> Iterator[Any]:
    """One real ComfyUI server with the pack and the embedded tiny model, shared by the server and browser tests.

    Started on first use (about 15-25 s on 2 cores), stopped at the end of the
    session; stopping raises, and so fails the run, if any process of the
    server is left behind. Without the tiny model file the server starts all
    the same (the tests that run it skip; see ``comfy_server.NO_TINY_MODEL``).
    """
    from comfy_server import TINY_MODEL, ComfyServer

    assert ROOT is not None
    models = {f"diffusion_models/{TINY_MODEL.name}": TINY_MODEL} if TINY_MODEL.is_file() else {}
    server = ComfyServer(ROOT, models).start()
    yield server
    server.stop()


@pytest.fixture
def magcache_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture the pack's log lines (plan, summary, notices)."""
    with caplog.at_level(logging.INFO, logger="comfyui-magcache"):
        yield caplog
