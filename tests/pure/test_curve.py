"""The sigma-indexed curve: profile arithmetic, validation, files."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from comfyui_magcache.calibration.curve import CurveError, MagnitudeCurve, RoleCurve, Trajectory, role_curve_from_ratios
from comfyui_magcache.calibration.curve_file import load_curve, save_curve


def make_curve(ratios: list[float], sigmas: list[float] | None = None, name: str = "t") -> MagnitudeCurve:
    sigmas = sigmas or list(np.linspace(1.0, 0.05, len(ratios) + 1))
    return MagnitudeCurve(name=name, roles={"cond": RoleCurve(sigma=tuple(sigmas), ratio=tuple(ratios))})


def test_transition_ratio_is_product_of_ratios_between_calibrated_sigmas() -> None:
    c = make_curve([0.9, 0.8, 0.5], sigmas=[1.0, 0.75, 0.5, 0.25]).roles["cond"]
    assert c.transition_ratio(1.0, 0.75) == pytest.approx(0.9)
    assert c.transition_ratio(1.0, 0.25) == pytest.approx(0.9 * 0.8 * 0.5)
    assert c.transition_ratio(0.75, 0.25) == pytest.approx(0.8 * 0.5)
    assert c.transition_ratio(0.5, 0.5) == 1.0


def test_profile_interpolates_linearly_and_extends_end_slopes() -> None:
    c = make_curve([0.9, 0.5], sigmas=[1.0, 0.5, 0.25]).roles["cond"]
    # Half way between 1.0 and 0.5 the log magnitude is half of log 0.9.
    assert c.log_magnitude(0.75) == pytest.approx(0.5 * math.log(0.9))
    # Below the lowest sigma the steep last segment continues.
    slope = math.log(0.5) / (0.25 - 0.5)
    assert c.log_magnitude(0.0) == pytest.approx(math.log(0.9) + math.log(0.5) + slope * (0.0 - 0.25))


def test_same_curve_serves_any_step_count() -> None:
    """Transitions over a coarser grid equal the product of the finer ones."""
    fine = np.linspace(1.0, 0.1, 41)
    ratios = list(0.99 - 0.2 * np.linspace(0, 1, 40) ** 4)
    c = make_curve(ratios, sigmas=list(fine)).roles["cond"]
    coarse = fine[::4]
    for a, b in itertools.pairwise(coarse):
        i, j = list(fine).index(a), list(fine).index(b)
        assert c.transition_ratio(a, b) == pytest.approx(float(np.prod(ratios[i:j])))


@pytest.mark.parametrize(
    ("sigmas", "ratios", "message"),
    [
        ([1.0], [], "at least 2 sigmas"),
        ([1.0, 0.5], [0.9, 0.9], "expected 1"),
        ([0.5, 1.0], [0.9], "strictly decreasing"),
        ([1.0, 1.0], [0.9], "strictly decreasing"),
        ([1.0, 0.5], [float("nan")], "NaN"),
        ([1.0, 0.5], [0.0], "positive"),
        ([1.0, 0.5], [-0.5], "positive"),
        ([1.0, float("inf")], [0.9], "finite"),
    ],
)
def test_bad_curves_are_refused_with_the_problem_named(sigmas: list[float], ratios: list[float], message: str) -> None:
    with pytest.raises(CurveError, match=message) as err:
        make_curve(ratios, sigmas=sigmas, name="broken")
    assert "broken" in str(err.value)


def test_from_ratios_drops_first_and_folds_repeated_sigmas() -> None:
    rc = role_curve_from_ratios([1.0, 0.8, 0.8, 0.6], [1.0, 0.9, 0.95, 0.7])
    assert rc.sigma == (1.0, 0.8, 0.6)
    assert rc.ratio == pytest.approx((0.9 * 0.95, 0.7))


def test_uncond_falls_back_to_cond() -> None:
    c = make_curve([0.9, 0.9])
    assert c.role(1) is c.roles["cond"]


def test_file_round_trip(tmp_path) -> None:
    cond = RoleCurve(sigma=(1.0, 0.6, 0.2), ratio=(0.97, 0.8), ratio_std=(0.01, 0.02), cosine_distance=(0.001, 0.01))
    uncond = RoleCurve(sigma=(1.0, 0.6, 0.2), ratio=(0.96, 0.7))
    curve = MagnitudeCurve(name="rt", roles={"cond": cond, "uncond": uncond}, metadata={"architecture": "WanModel"})
    path = save_curve(curve, tmp_path / "rt.safetensors")
    back = load_curve(path)
    assert back.roles == curve.roles
    assert back.metadata == curve.metadata
    assert back.name == "rt"
    assert back.trajectories == {}


def test_file_round_trip_keeps_the_trajectory(tmp_path) -> None:
    cond = RoleCurve(sigma=(1.0, 0.6, 0.2), ratio=(0.97, 0.8))
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    curve = MagnitudeCurve(name="rt", roles={"cond": cond}, trajectories={"cond": Trajectory((1.0, 0.6, 0.2), values)})
    back = load_curve(save_curve(curve, tmp_path / "rt.safetensors"))
    assert back.trajectories["cond"].sigma == (1.0, 0.6, 0.2)
    np.testing.assert_array_equal(back.trajectories["cond"].values, values)
    assert back.trajectory(1) is back.trajectories["cond"]  # the uncond role reads the cond's


def _write_raw(path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, str(path), metadata=metadata)


ONE = {"cond.sigma": np.array([1.0, 0.5]), "cond.ratio": np.array([0.9])}
GOOD_META = {"format": "comfyui-magcache/curve", "format_version": "1", "metadata": json.dumps({})}


@pytest.mark.parametrize(
    ("tensors", "meta", "message"),
    [
        ({"cond.sigma": np.array([1.0, 0.5]), "cond.ratio": np.array([np.nan])}, GOOD_META, "NaN"),
        ({"cond.sigma": np.array([1.0, 0.5]), "cond.ratio": np.array([-1.0])}, GOOD_META, "positive"),
        ({"cond.sigma": np.array([1.0, 0.5]), "cond.ratio": np.array([0.0])}, GOOD_META, "positive"),
        ({"cond.sigma": np.array([1.0, 0.5])}, GOOD_META, "lacks the tensor 'cond.ratio'"),
        ({"uncond.sigma": np.array([1.0, 0.5]), "uncond.ratio": np.array([0.9])}, GOOD_META, "no 'cond' role"),
        ({"cond.sigma": np.array([1.0, 0.5]), "cond.ratio": np.array([0.9])}, {"format": "x"}, "not a MagCache curve"),
        (
            {"cond.sigma": np.array([1.0, 0.5]), "cond.ratio": np.array([0.9])},
            {**GOOD_META, "format_version": "9"},
            "format version",
        ),
        (
            {"cond.sigma": np.array([1.0, 0.5]), "cond.ratio": np.array([0.9]), "evil": np.array([1.0])},
            GOOD_META,
            "unexpected tensors",
        ),
        (
            {**ONE, "cond.trajectory": np.zeros((2, 3), np.float32)},
            GOOD_META,
            "needs both 'cond.trajectory_sigma'",
        ),
        (
            {**ONE, "cond.trajectory_sigma": np.array([1.0, 0.5]), "cond.trajectory": np.zeros((3, 3), np.float32)},
            GOOD_META,
            "one row per sigma",
        ),
        (
            {**ONE, "cond.trajectory_sigma": np.array([1.0, 0.5]),
             "cond.trajectory": np.array([[0.0, np.inf], [0.0, 1.0]], np.float32)},
            GOOD_META,
            "NaN or infinite",
        ),
        (
            {**ONE, "cond.trajectory_sigma": np.array([0.5, 1.0]), "cond.trajectory": np.zeros((2, 3), np.float32)},
            GOOD_META,
            "strictly decreasing",
        ),
    ],
)
def test_bad_files_are_refused_naming_the_file(tmp_path, tensors, meta, message) -> None:
    path = tmp_path / "bad.safetensors"
    _write_raw(path, tensors, meta)
    with pytest.raises(CurveError, match=message) as err:
        load_curve(path)
    assert str(path) in str(err.value)


def test_truncated_and_non_safetensors_files_are_refused(tmp_path) -> None:
    curve = make_curve([0.9, 0.8])
    good = save_curve(curve, tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-10])
    pickle_like = tmp_path / "pickle.safetensors"
    pickle_like.write_bytes(b"\x80\x04\x95 not a safetensors file")
    for path in (truncated, pickle_like):
        with pytest.raises(CurveError, match="not a readable safetensors file") as err:
            load_curve(path)
        assert str(path) in str(err.value)
    with pytest.raises(CurveError, match="no such file"):
        load_curve(tmp_path / "missing.safetensors")
