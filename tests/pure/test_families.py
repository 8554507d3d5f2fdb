"""The family table, without ComfyUI: matching by class and base class, curves, levels."""

from __future__ import annotations

import pytest

from comfyui_magcache.calibration import catalog
from comfyui_magcache.calibration.curve import CurveError, MagnitudeCurve, RoleCurve
from comfyui_magcache.hooks.families import FAMILIES, Level, family_by_key, family_of


def _with(cls: type, attrs: dict[str, object]) -> object:
    """An instance of ``cls`` with ``attrs`` set."""
    obj = cls()
    for k, v in attrs.items():
        setattr(obj, k, v)
    return obj


WanModel = type("WanModel", (), {})
WAN21_T2V = type("WAN21_T2V", (), {})
WAN21_I2V = type("WAN21_I2V", (WAN21_T2V,), {})


def test_subclasses_of_a_known_model_find_its_family() -> None:
    camera = _with(type("CameraWanModel", (WanModel,), {}), {"blocks": [1, 2]})
    family = family_of(camera, WAN21_T2V())
    assert family is not None and family.name == "Wan 2.1 / 2.2 T2V"
    # The config narrows the curve: an I2V config (a subclass of T2V's) picks the I2V entry.
    family = family_of(camera, type("WAN21_FunControl2V", (WAN21_I2V,), {})())
    assert family is not None and family.curve == "wan2.1_i2v_480p_14B"


def test_a_renamed_block_list_is_not_patched() -> None:
    assert family_of(_with(type("WanModel", (), {}), {"layers": []}), WAN21_T2V()) is None


def test_unknown_models_have_no_family() -> None:
    assert family_of(_with(type("SomethingNew", (), {}), {}), None) is None


def test_size_picks_the_published_curve_of_that_size() -> None:
    wan = _with(WanModel, {"blocks": []})
    family = family_of(wan, WAN21_T2V())
    assert family is not None
    assert family.auto_curve(1536) == "wan2.1_t2v_1.3B"
    assert family.auto_curve(5120) == "wan2.1_t2v_14B"


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_every_family_names_a_shipped_curve_or_says_why_not(family) -> None:
    for name in (family.curve, family.wide_curve):
        if name is not None:
            assert name in catalog.preset_names(), f"{family.name}: preset '{name}' is not shipped"
    if family.unsupported is not None:
        assert family.curve is None and not family.stacks
    if family.curve is not None and not family.stand_in:
        preset = catalog.load_preset(family.curve)
        assert preset.metadata.get("architecture") == family.key
        assert preset.level == family.level.value


def test_family_by_key_finds_the_layout_a_curve_records() -> None:
    assert family_by_key("WanModel") is not None
    assert family_by_key("NoSuchLayout") is None


def curve(level: str | None, architecture: str) -> MagnitudeCurve:
    role = RoleCurve((1.0, 0.5, 0.1), (0.99, 0.95))
    meta = {"architecture": architecture, **({"level": level} if level else {})}
    return MagnitudeCurve(name="c", roles={"cond": role}, metadata=meta)


def test_curves_are_refused_on_another_layout_or_level() -> None:
    wan = next(f for f in FAMILIES if f.key == "WanModel")
    assert catalog.checked_for(curve(None, "WanModel"), wan).level == "block"
    assert catalog.checked_for(curve("output", "WanModel"), wan).level == "output"
    with pytest.raises(CurveError, match="calibrated on Flux"):
        catalog.checked_for(curve(None, "Flux"), wan)
    output_only = next((f for f in FAMILIES if f.level is Level.OUTPUT), None)
    if output_only is not None:
        with pytest.raises(CurveError, match="only be cached at the model's output"):
            catalog.checked_for(curve("block", output_only.key), output_only)
