"""Bad input gets a clear error naming the input and the fix; nothing is lost (Compatibility 13).

Numeric inputs go through ComfyUI's own prompt validation (what the server's
``/prompt`` runs), so out-of-range values are refused before anything executes.
Curves are checked when the node runs: a curve recorded on another family, or
a damaged curve file, is refused with the file and the problem named.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny_models

from comfyui_magcache.calibration import catalog
from comfyui_magcache.calibration.curve import CurveError, MagnitudeCurve, RoleCurve
from comfyui_magcache.calibration.curve_file import save_curve
from comfyui_magcache.nodes.magcache_node import MagCacheApply


class _Source:
    """Stands in for a model loader in a prompt that is only validated."""

    RETURN_TYPES = ("MODEL",)
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
        return {"required": {"model": ("MODEL",)}}


GOOD = {
    "curve": "auto",
    "threshold": -1,
    "max_consecutive_skips": -1,
    "retention_ratio": -1,
    "start": 0.0,
    "end": 1.0,
    "cache_device": "compute",
}


def validate(monkeypatch: pytest.MonkeyPatch, inputs: dict[str, Any]) -> list[dict]:
    import execution
    import nodes

    for name, cls in (("MagCacheApply", MagCacheApply), ("_TestSource", _Source), ("_TestSink", _Sink)):
        monkeypatch.setitem(nodes.NODE_CLASS_MAPPINGS, name, cls)
    prompt = {
        "1": {"class_type": "_TestSource", "inputs": {}},
        "2": {"class_type": "MagCacheApply", "inputs": {"model": ["1", 0], **inputs}},
        "3": {"class_type": "_TestSink", "inputs": {"model": ["2", 0]}},
    }
    result = asyncio.run(execution.validate_prompt("test", prompt, None))
    node_errors = result[3]
    return node_errors.get("2", {}).get("errors", [])


def test_defaults_pass_validation(monkeypatch) -> None:
    assert validate(monkeypatch, GOOD) == []


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("threshold", 2.5, "value_bigger_than_max"),
        ("threshold", -2.0, "value_smaller_than_min"),
        ("max_consecutive_skips", 21, "value_bigger_than_max"),
        ("max_consecutive_skips", -5, "value_smaller_than_min"),
        ("retention_ratio", 1.5, "value_bigger_than_max"),
        ("start", -0.1, "value_smaller_than_min"),
        ("end", 1.01, "value_bigger_than_max"),
        ("cache_device", "gpu", "value_not_in_list"),
        ("curve", "../../secrets.safetensors", "value_not_in_list"),
    ],
)
def test_out_of_range_inputs_are_refused_by_comfyui_validation(monkeypatch, name: str, value: Any, error: str) -> None:
    errors = validate(monkeypatch, {**GOOD, name: value})
    assert [e["type"] for e in errors] == [error]
    assert errors[0]["extra_info"]["input_name"] == name


@pytest.mark.parametrize(("name", "value"), [("threshold", 2.0), ("max_consecutive_skips", 20), ("end", 1.0)])
def test_values_at_the_bounds_pass(monkeypatch, name: str, value: Any) -> None:
    assert validate(monkeypatch, {**GOOD, name: value}) == []


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"threshold": -0.5}, "threshold must be >= 0"),
        ({"max_consecutive_skips": 0}, "max_consecutive_skips must be >= 1"),
        ({"start": 0.6, "end": 0.4}, "start (0.6) must be below end (0.4)"),
    ],
)
def test_values_the_rule_cannot_honour_are_refused_when_the_node_runs(inputs: dict, message: str) -> None:
    wan = tiny_models.build("wan21_t2v")
    args = {**GOOD, **inputs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MagCacheApply().apply(wan.patcher, **args)


def test_a_curve_of_another_family_is_refused() -> None:
    wan = tiny_models.build("wan21_t2v")
    with pytest.raises(
        CurveError, match=r"curve 'flux' was calibrated on Flux, but this model is Wan 2.1 / 2.2 T2V \(WanModel\)"
    ):
        MagCacheApply().apply(wan.patcher, **{**GOOD, "curve": "flux"})


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
    (patched,) = MagCacheApply().apply(wan.patcher, **{**GOOD, "curve": path.name})
    assert patched is not wan.patcher
    # ... the damaged one is refused, naming the file and the problem; the input model is untouched.
    _damage(path, how)
    with pytest.raises(CurveError, match=message) as err:
        MagCacheApply().apply(wan.patcher, **{**GOOD, "curve": path.name})
    assert path.name in str(err.value)
    assert "magcache" not in wan.patcher.model_options.get("transformer_options", {})


def test_a_curve_name_that_is_not_listed_is_refused(curve_folder: Path) -> None:
    wan = tiny_models.build("wan21_t2v")
    (curve_folder.parent / "outside.safetensors").write_bytes(b"")
    with pytest.raises(CurveError, match=re.escape("no saved curve named '../outside.safetensors'")):
        MagCacheApply().apply(wan.patcher, **{**GOOD, "curve": "../outside.safetensors"})
