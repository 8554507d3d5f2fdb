"""Presets and names: what ships, and what a typed name may become."""

from __future__ import annotations

import pytest

from comfyui_magcache.calibration import catalog
from comfyui_magcache.calibration.curve import CurveError

PUBLISHED = [
    "chroma",
    "flux",
    "flux_kontext",
    "hunyuan_video",
    "hunyuan_video1.5",
    "hunyuan_video1.5_40steps",
    "qwen_image",
    "wan2.1_i2v_480p_14B",
    "wan2.1_i2v_720p_14B",
    "wan2.1_t2v_1.3B",
    "wan2.1_t2v_14B",
    "wan2.1_vace_1.3B",
    "wan2.1_vace_14B",
    "wan2.2_i2v_14B",
    "wan2.2_t2v_14B",
    "wan2.2_ti2v_5B",
]


#: Presets the pack recorded itself (calibration/presets/PROVENANCE.md).
OURS = ("tiny_wan_output",)


def test_every_published_curve_ships_as_a_valid_preset_with_provenance() -> None:
    assert catalog.preset_names() == sorted([*PUBLISHED, *OURS])
    for name in PUBLISHED:
        curve = catalog.load_preset(name)
        assert "Zehong-Ma/ComfyUI-MagCache" in curve.metadata["source"]
        assert "simple" in curve.metadata["conversion"]
        assert curve.metadata["architecture"]
        assert curve.steps == curve.metadata["steps"]


def test_our_output_level_stand_in_says_what_it_is() -> None:
    curve = catalog.load_preset("tiny_wan_output")
    assert curve.level == "output" and curve.metadata["stand_in"] is True
    assert "embedded tiny Wan" in curve.metadata["source"]
    assert curve.steps == 50 and set(curve.roles) == {"cond", "uncond"}


@pytest.mark.parametrize(
    ("typed", "saved_as"),
    [
        ("my curve", "my_curve.safetensors"),
        ("../../etc/passwd", "____etc_passwd.safetensors"),
        ("/abs/path", "_abs_path.safetensors"),
        ("..hidden", "_hidden.safetensors"),
        ("wan-1.3B_30steps.safetensors", "wan-1.3B_30steps.safetensors"),
        ("C:\\Windows\\x", "C_Windows_x.safetensors"),
    ],
)
def test_typed_names_stay_inside_the_curve_folder(typed: str, saved_as: str) -> None:
    cleaned = catalog.clean_curve_name(typed)
    assert cleaned == saved_as
    assert "/" not in cleaned and "\\" not in cleaned and not cleaned.startswith(".")


@pytest.mark.parametrize("typed", ["", "   ", "../..", "///"])
def test_names_with_nothing_usable_are_refused(typed: str) -> None:
    with pytest.raises(CurveError, match="no usable characters"):
        catalog.clean_curve_name(typed)
