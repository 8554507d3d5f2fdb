"""Bad input gets a clear error naming the input and the fix; nothing is lost (Compatibility 13).

Numeric inputs go through ComfyUI's own prompt validation (what the server's
``/prompt`` runs), so out-of-range values are refused before anything executes;
threshold, K and retention are checked by the node's ``validate_inputs``
(an old prompt's -1 still means "the curve's value"). NaN slips through
ComfyUI's min/max comparison, so every number is checked again when the node
runs. Curves are checked when the node runs: a curve recorded on another
family, or a damaged or deleted curve file, is refused with the input and the
file named; a replaced curve file changes the node's fingerprint, so the next
run picks it up.
"""

from __future__ import annotations

import asyncio
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny_models
from comfy_host import ROOT, comfyui_version

from comfyui_magcache.cache.config import DEFAULT_SPEED, DEFAULT_WHEN, When
from comfyui_magcache.calibration import catalog
from comfyui_magcache.calibration.curve import CurveError, MagnitudeCurve, RoleCurve
from comfyui_magcache.calibration.curve_file import save_curve
from comfyui_magcache.hooks.wrappers import MAGCACHE_KEY
from comfyui_magcache.nodes.demo_nodes import MagCacheDemoDecode
from comfyui_magcache.nodes.magcache_node import BY_CURVE, CUSTOM, MagCacheApply


class _Source:
    """Stands in for a model loader in a prompt that is only validated."""

    RETURN_TYPES = ("MODEL", "LATENT")
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802
        return {"required": {}}


class _Sink:
    """An output node that takes a MODEL, so validation walks up to MagCache."""

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802
        return {"required": {"value": ("*",)}}


#: What a new node in the page sends: every input, at the page's defaults.
GOOD = {
    "speed": DEFAULT_SPEED,
    "schedule": DEFAULT_WHEN.value,
    "reuse": "plain",
    "cfg_cache": False,
    "curve": "auto",
    "settings": BY_CURVE,
    "threshold": 0.12,
    "max_consecutive_skips": 3,
    "retention_ratio": 0.2,
    "start": 0.0,
    "end": 1.0,
    "cache_device": "compute",
}
#: What the first version of the node sent (an API prompt saved before the new inputs existed).
OLD_PROMPT = {
    "curve": "auto",
    "threshold": -1,
    "max_consecutive_skips": -1,
    "retention_ratio": -1,
    "start": 0.0,
    "end": 1.0,
    "cache_device": "compute",
}
NUMBERS = ("speed", "threshold", "max_consecutive_skips", "retention_ratio", "start", "end")


def validate(monkeypatch: pytest.MonkeyPatch, inputs: dict[str, Any], node: str = "MagCacheApply") -> list[dict]:
    """ComfyUI's prompt validation of one node fed by a stand-in source; the node's errors."""
    import execution
    import nodes

    classes = (("MagCacheApply", MagCacheApply), ("MagCacheDemoDecode", MagCacheDemoDecode))
    for name, cls in (*classes, ("_TestSource", _Source), ("_TestSink", _Sink)):
        monkeypatch.setitem(nodes.NODE_CLASS_MAPPINGS, name, cls)
    link = {"MagCacheApply": {"model": ["1", 0]}, "MagCacheDemoDecode": {"samples": ["1", 1]}}[node]
    prompt = {
        "1": {"class_type": "_TestSource", "inputs": {}},
        "2": {"class_type": node, "inputs": {**link, **inputs}},
        "3": {"class_type": "_TestSink", "inputs": {"value": ["2", 0]}},
    }
    result = asyncio.run(execution.validate_prompt("test", prompt, None))
    node_errors = result[3]
    return node_errors.get("2", {}).get("errors", [])


def run_node(model: Any, **inputs: Any) -> Any:
    """The node's output model, called as ComfyUI's executor calls a V3 node's execute."""
    return MagCacheApply.execute(model, **inputs).result[0]


def config_of(model: Any) -> Any:
    return model.model_options["transformer_options"][MAGCACHE_KEY]


def test_defaults_pass_validation(monkeypatch) -> None:
    assert validate(monkeypatch, GOOD) == []


def test_an_old_api_prompt_passes_validation_and_keeps_its_meaning(monkeypatch) -> None:
    """A prompt from before speed/schedule/settings: valid, runs the paper's rule with the curve's settings."""
    assert validate(monkeypatch, OLD_PROMPT) == []
    wan = tiny_models.build("wan21_t2v")
    config = config_of(run_node(wan.patcher, **OLD_PROMPT))
    rec = catalog.Recommended.of(config.curve)
    assert config.when is When.RULE
    assert (config.threshold, config.max_skips, config.retention) == (rec.threshold, rec.max_skips, rec.retention)


def test_an_old_prompt_mixing_minus_one_and_numbers_keeps_each_value() -> None:
    wan = tiny_models.build("wan21_t2v")
    config = config_of(run_node(wan.patcher, **{**OLD_PROMPT, "threshold": 0.3}))
    rec = catalog.Recommended.of(config.curve)
    assert (config.threshold, config.max_skips, config.retention) == (0.3, rec.max_skips, rec.retention)


def test_settings_choose_between_the_curves_values_and_the_numbers() -> None:
    wan = tiny_models.build("wan21_t2v")
    custom = {**GOOD, "settings": CUSTOM, "threshold": 0.5, "max_consecutive_skips": 7, "retention_ratio": 0.4}
    by_curve = config_of(run_node(wan.patcher, **{**custom, "settings": BY_CURVE}))
    rec = catalog.Recommended.of(by_curve.curve)
    # The curve's retention is the rule's, and the speed schedules' with a curve that records no trajectory
    # (this preset); with a measured trajectory they place every computed call themselves.
    assert by_curve.curve.trajectory(0) is None
    expected_retention = rec.retention
    assert (by_curve.threshold, by_curve.max_skips, by_curve.retention) == (
        rec.threshold, rec.max_skips, expected_retention,
    )
    rule = config_of(run_node(wan.patcher, **{**custom, "settings": BY_CURVE, "schedule": When.RULE.value}))
    assert rule.retention == rec.retention
    mine = config_of(run_node(wan.patcher, **custom))
    assert (mine.threshold, mine.max_skips, mine.retention) == (0.5, 7, 0.4)
    assert (mine.when.value, mine.speed, mine.node_id) == (GOOD["schedule"], GOOD["speed"], None)


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("speed", 6.5, "value_bigger_than_max"),
        ("speed", 0.5, "value_smaller_than_min"),
        ("start", -0.1, "value_smaller_than_min"),
        ("end", 1.01, "value_bigger_than_max"),
        ("cache_device", "gpu", "value_not_in_list"),
        ("schedule", "sometimes", "value_not_in_list"),
        ("reuse", "everything", "value_not_in_list"),
        ("settings", "whatever", "value_not_in_list"),
        ("curve", "../../secrets.safetensors", "value_not_in_list"),
    ],
)
def test_out_of_range_inputs_are_refused_by_comfyui_validation(monkeypatch, name: str, value: Any, error: str) -> None:
    errors = validate(monkeypatch, {**GOOD, name: value})
    if not errors and error == "value_not_in_list" and comfyui_version(ROOT).startswith("0.3."):
        # ComfyUI 0.3.64 checks the choices of old-style combos only, not a V3 node's: the node refuses when it runs.
        wan = tiny_models.build("wan21_t2v")
        with pytest.raises((ValueError, CurveError), match=name):
            run_node(wan.patcher, **{**GOOD, name: value})
        return
    assert [e["type"] for e in errors] == [error]
    assert errors[0]["extra_info"]["input_name"] == name


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("threshold", 2.5),
        ("threshold", -2.0),
        ("max_consecutive_skips", 21),
        ("max_consecutive_skips", -5),
        ("max_consecutive_skips", 0),
        ("retention_ratio", 1.5),
        ("retention_ratio", -0.5),
    ],
)
def test_rule_settings_out_of_range_are_refused_naming_the_input(monkeypatch, name: str, value: Any) -> None:
    errors = validate(monkeypatch, {**GOOD, name: value})
    assert errors, f"{name}={value} passed validation"
    assert {e["type"] for e in errors} == {"custom_validation_failed"}
    assert all(f"{name} must be within" in e["details"] for e in errors)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("threshold", 2.0),
        ("max_consecutive_skips", 20),
        ("end", 1.0),
        ("speed", 6.0),
        ("speed", 1.0),
        ("threshold", -1),
        ("max_consecutive_skips", -1),
        ("retention_ratio", -1),
    ],
)
def test_values_at_the_bounds_and_the_old_minus_one_pass(monkeypatch, name: str, value: Any) -> None:
    assert validate(monkeypatch, {**GOOD, name: value}) == []


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", NUMBERS)
def test_nan_and_inf_are_refused_for_every_number_naming_it(monkeypatch, name: str, value: float) -> None:
    """Refused by validation where ComfyUI or the node can see it; NaN that passes ComfyUI's check, at run time."""
    errors = validate(monkeypatch, {**GOOD, "settings": CUSTOM, name: value})
    if errors:
        assert all(name in e["details"] or e["extra_info"].get("input_name") == name for e in errors), errors
        return
    assert math.isnan(value) and name in ("speed", "start", "end"), f"{name}={value} passed validation"
    wan = tiny_models.build("wan21_t2v")
    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        run_node(wan.patcher, **{**GOOD, name: value})
    assert MAGCACHE_KEY not in wan.patcher.model_options.get("transformer_options", {})


@pytest.mark.parametrize("name", NUMBERS)
def test_nan_is_refused_when_the_node_runs_whatever_the_caller(name: str) -> None:
    wan = tiny_models.build("wan21_t2v")
    with pytest.raises(ValueError, match=f"{name} must be a finite number, got nan"):
        run_node(wan.patcher, **{**GOOD, name: math.nan})


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
def test_nan_and_inf_are_refused_for_the_demo_decoders_scale(monkeypatch, value: float) -> None:
    errors = validate(monkeypatch, {"scale": value}, node="MagCacheDemoDecode")
    assert [e["type"] for e in errors] == ["invalid_input_type"]
    assert errors[0]["extra_info"]["input_name"] == "scale"


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"start": 0.6, "end": 0.4}, "start (0.6) must be below end (0.4)"),
        ({"schedule": "sometimes"}, "schedule must be one of"),
        ({"settings": "whatever"}, "settings must be one of"),
    ],
)
def test_values_the_rule_cannot_honour_are_refused_when_the_node_runs(inputs: dict, message: str) -> None:
    wan = tiny_models.build("wan21_t2v")
    with pytest.raises(ValueError, match=re.escape(message)):
        run_node(wan.patcher, **{**GOOD, **inputs})


def test_a_curve_of_another_family_is_refused() -> None:
    wan = tiny_models.build("wan21_t2v")
    with pytest.raises(
        CurveError, match=r"curve 'flux' was calibrated on Flux, but this model is Wan 2.1 / 2.2 T2V \(WanModel\)"
    ):
        run_node(wan.patcher, **{**GOOD, "curve": "flux"})


@pytest.fixture
def curve_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private models/magcache folder, so tests never touch the real one."""
    import folder_paths

    monkeypatch.setitem(folder_paths.folder_names_and_paths, catalog.FOLDER, ([str(tmp_path)], {".safetensors"}))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {}, raising=False)
    return tmp_path


def _good_curve() -> MagnitudeCurve:
    sig = tuple(float(s) for s in np.linspace(1.0, 0.05, 11))
    return MagnitudeCurve("mine", {"cond": RoleCurve(sig, tuple([0.98] * 10))}, {"architecture": "WanModel"})


def _damage(path: Path, how: str) -> None:
    from safetensors.numpy import save_file

    good = path.read_bytes()
    meta = {"format": "comfyui-magcache/curve", "format_version": "1", "metadata": "{}"}
    sig = np.linspace(1.0, 0.1, 4)
    if how == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif how == "not_safetensors":
        path.write_bytes(b"PK\x03\x04 this is a zip, or a pickle, or anything else")
    else:
        ratio = {"nan": [0.9, np.nan, 0.9], "negative": [0.9, -0.9, 0.9], "zero": [0.9, 0.0, 0.9]}[how]
        save_file({"cond.sigma": sig, "cond.ratio": np.array(ratio)}, str(path), metadata=meta)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("truncated", "not a readable safetensors file"),
        ("not_safetensors", "not a readable safetensors file"),
        ("nan", "NaN"),
        ("negative", "ratios must be positive"),
        ("zero", "ratios must be positive"),
    ],
)
def test_damaged_curve_files_are_refused_naming_the_file(curve_folder: Path, how: str, message: str) -> None:
    path = save_curve(_good_curve(), curve_folder / f"{how}.safetensors")
    wan = tiny_models.build("wan21_t2v")
    # The intact file works ...
    patched = run_node(wan.patcher, **{**GOOD, "curve": path.name})
    assert patched is not wan.patcher
    # ... the damaged one is refused, naming the file and the problem; the input model is untouched.
    _damage(path, how)
    with pytest.raises(CurveError, match=message) as err:
        run_node(wan.patcher, **{**GOOD, "curve": path.name})
    assert path.name in str(err.value) and "input 'curve'" in str(err.value)
    assert "magcache" not in wan.patcher.model_options.get("transformer_options", {})


def test_a_curve_name_that_is_not_listed_is_refused(curve_folder: Path) -> None:
    wan = tiny_models.build("wan21_t2v")
    (curve_folder.parent / "outside.safetensors").write_bytes(b"")
    with pytest.raises(CurveError, match=re.escape("no saved curve named '../outside.safetensors'")):
        run_node(wan.patcher, **{**GOOD, "curve": "../outside.safetensors"})


def _other_curve() -> MagnitudeCurve:
    sig = tuple(float(s) for s in np.linspace(1.0, 0.05, 11))
    return MagnitudeCurve("mine", {"cond": RoleCurve(sig, tuple([0.9] * 10))}, {"architecture": "WanModel"})


def test_a_replaced_curve_changes_the_fingerprint_and_is_used(curve_folder: Path) -> None:
    """Recalibrated or copied over under the same name: the node's fingerprint changes, the next run uses it."""
    path = save_curve(_good_curve(), curve_folder / "mine.safetensors")
    first = MagCacheApply.fingerprint_inputs(curve=path.name)
    assert MagCacheApply.fingerprint_inputs(curve=path.name) == first  # unchanged file, same fingerprint
    save_curve(_other_curve(), path)
    second = MagCacheApply.fingerprint_inputs(curve=path.name)
    assert second != first
    wan = tiny_models.build("wan21_t2v")
    curve = config_of(run_node(wan.patcher, **{**GOOD, "curve": path.name})).curve
    assert curve.roles["cond"].ratio[0] == pytest.approx(0.9)


def test_a_deleted_curve_changes_the_fingerprint_and_is_refused_naming_the_input(curve_folder: Path) -> None:
    import folder_paths

    path = save_curve(_good_curve(), curve_folder / "gone.safetensors")
    before = MagCacheApply.fingerprint_inputs(curve=path.name)
    path.unlink()
    folder_paths.filename_list_cache.clear()
    after = MagCacheApply.fingerprint_inputs(curve=path.name)
    assert after != before and "unavailable" in after
    wan = tiny_models.build("wan21_t2v")
    with pytest.raises(CurveError, match=re.escape("MagCache input 'curve': no saved curve named 'gone.safetensors'")):
        run_node(wan.patcher, **{**GOOD, "curve": path.name})


def test_presets_and_auto_have_a_constant_fingerprint() -> None:
    assert MagCacheApply.fingerprint_inputs(curve="auto") == "auto"
    preset = catalog.preset_names()[0]
    assert MagCacheApply.fingerprint_inputs(curve=preset) == preset
