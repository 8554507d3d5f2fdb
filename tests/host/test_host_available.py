"""The one line that says whether the host tests ran against a real ComfyUI."""

from __future__ import annotations

import pytest
from comfy_host import NO_HOST, ROOT


def test_comfyui_checkout_is_present() -> None:
    if ROOT is None:
        pytest.skip(NO_HOST)
    assert (ROOT / "comfy" / "model_patcher.py").is_file()
