"""Calibration runs without the host: combining runs, storing them, and the plot."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from comfyui_magcache.calibration.curve import CurveError, MagnitudeCurve, RoleCurve
from comfyui_magcache.calibration.curve_file import load_curve, save_curve
from comfyui_magcache.calibration.plot import render_curve
from comfyui_magcache.calibration.runs import (
    SOURCE,
    CalibrationRun,
    combine_role_curves,
    combine_roles,
    curve_from_runs,
    model_mismatch,
    runs_of,
    summary,
)

MODEL = {
    "architecture": "WanModel",
    "level": "block",
    "model_config": "WAN21_T2V",
    "fingerprint": {"blocks": {"blocks": 4}, "width": 256},
}


def law(sigma: np.ndarray) -> np.ndarray:
    """A smooth log-magnitude profile: flat at high noise, falling fast near the end."""
    return -0.8 * (1.0 - sigma) ** 4


def measured(sigmas: list[float], std: float = 0.01, cos: float = 0.02, scale: float = 1.0) -> RoleCurve:
    """A role curve sampled from :func:`law` on ``sigmas``."""
    s = np.asarray(sigmas)
    ratio = np.exp(np.diff(law(s))) * scale
    n = len(sigmas) - 1
    return RoleCurve(tuple(sigmas), tuple(ratio), (std,) * n, (cos,) * n)


def grid(steps: int, lo: float = 0.05) -> list[float]:
    return [float(v) for v in np.linspace(1.0, lo, steps)]


def test_one_measurement_is_kept_exactly() -> None:
    m = measured(grid(10))
    assert combine_role_curves([m]) == m


def test_runs_on_one_grid_average_and_pool_their_spread() -> None:
    a, b = measured(grid(8), std=0.01, scale=0.98), measured(grid(8), std=0.03, scale=1.02)
    out = combine_role_curves([a, b])
    assert out.sigma == a.sigma
    np.testing.assert_allclose(out.ratio, (np.asarray(a.ratio) + np.asarray(b.ratio)) / 2)
    # Spread of the per-token ratio over both runs: token spreads plus the spread of the run means.
    between = ((np.asarray(a.ratio) - np.asarray(b.ratio)) / 2) ** 2
    np.testing.assert_allclose(out.ratio_std, np.sqrt((0.01**2 + 0.03**2) / 2 + between))
    np.testing.assert_allclose(out.cosine_distance, 0.02)


def test_runs_with_different_step_counts_combine_on_the_sigma_axis() -> None:
    coarse, fine = measured(grid(31, lo=0.04)), measured(grid(51, lo=0.02))
    out = combine_role_curves([coarse, fine])
    # The finer, wider run sets the grid; the coarse run is read off its profile there.
    assert out.sigma == fine.sigma
    covered = np.asarray(out.sigma[1:]) >= 0.04
    expected = np.exp(np.diff(law(np.asarray(out.sigma))))
    np.testing.assert_allclose(np.asarray(out.ratio)[covered], expected[covered], rtol=2e-3)
    # Below the coarse run's range only the fine run counts.
    np.testing.assert_allclose(np.asarray(out.ratio)[~covered], np.asarray(fine.ratio)[~covered])


def test_runs_that_share_no_part_of_the_schedule_are_refused() -> None:
    high, low = measured(grid(10, lo=0.6)), measured([0.5, 0.3, 0.1])
    with pytest.raises(CurveError, match="no measurement covers the transition"):
        combine_role_curves([high, low], grid=(1.0, 0.6, 0.1))


def test_uncond_is_put_on_the_cond_grid() -> None:
    roles = combine_roles({"cond": [measured(grid(12))], "uncond": [measured(grid(9))]})
    assert roles["uncond"].sigma == roles["cond"].sigma
    with pytest.raises(CurveError, match="'cond'"):
        combine_roles({"uncond": [measured(grid(9))]})


def test_roles_on_different_grids_make_an_invalid_curve() -> None:
    with pytest.raises(CurveError, match="share one sigma grid"):
        MagnitudeCurve("x", {"cond": measured(grid(10)), "uncond": measured(grid(9))})


def test_a_file_whose_roles_disagree_is_refused_naming_the_file(tmp_path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "layout.safetensors"
    tensors = {
        "cond.sigma": np.array([1.0, 0.5, 0.1]),
        "cond.ratio": np.array([0.99, 0.9]),
        "uncond.sigma": np.array([1.0, 0.1]),
        "uncond.ratio": np.array([0.9]),
    }
    save_file(
        tensors, str(path), metadata={"format": "comfyui-magcache/curve", "format_version": "1", "metadata": "{}"}
    )
    with pytest.raises(CurveError, match="share one sigma grid") as err:
        load_curve(path)
    assert str(path) in str(err.value)


def run(seed: int, steps: int = 10) -> CalibrationRun:
    scale = 1.0 + 0.01 * seed
    settings = {
        "date": f"2026-01-0{seed + 1}T00:00:00+00:00",
        "sampler": "euler",
        "scheduler": "simple",
        "steps": steps,
        "cfg": 5.0,
        "seed": seed,
        "sigmas": [*grid(steps), 0.0],
    }
    return CalibrationRun({"cond": measured(grid(steps), scale=scale), "uncond": measured(grid(steps))}, settings)


def test_a_saved_calibration_keeps_every_run_and_round_trips(tmp_path) -> None:
    curve = curve_from_runs("mine", [run(0), run(1)], MODEL)
    assert curve.metadata["source"] == SOURCE
    assert curve.metadata["date"] == "2026-01-02T00:00:00+00:00"
    assert {k: curve.metadata[k] for k in MODEL} == MODEL
    back = load_curve(save_curve(curve, tmp_path / "mine.safetensors"))
    assert back.roles == curve.roles
    assert [r.roles for r in runs_of(back)] == [run(0).roles, run(1).roles]
    assert runs_of(back)[1].settings["seed"] == 1
    assert model_mismatch(back, MODEL) is None
    other = {**MODEL, "fingerprint": {"blocks": {"blocks": 30}, "width": 1536}}
    assert "fingerprint" in (model_mismatch(back, other) or "")
    line = summary(back)
    assert "2 run(s)" in line and "cond: ratio" in line and "uncond: ratio" in line


def test_curves_without_runs_cannot_take_more_runs() -> None:
    preset_like = MagnitudeCurve("flux", {"cond": measured(grid(5))}, {"source": "published"})
    with pytest.raises(CurveError, match="keeps no calibration runs"):
        runs_of(preset_like)


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        ({"sampler": "euler"}, "must be an object with 'roles'"),
        ({"roles": {"sideways": {}}}, "unknown role"),
        ({"roles": {"cond": {"sigma": [1.0, 0.5], "ratio": [0.9]}}}, "lacks"),
        (
            {"roles": {"cond": {"sigma": [1.0, 0.5], "ratio": [-1.0], "ratio_std": [0.0], "cosine_distance": [0.0]}}},
            "positive",
        ),
        (
            {"roles": {"cond": {"sigma": [1.0, 0.5], "ratio": ["x"], "ratio_std": [0.0], "cosine_distance": [0.0]}}},
            "not numbers",
        ),
    ],
)
def test_damaged_stored_runs_are_refused(stored: dict, message: str) -> None:
    curve = MagnitudeCurve("damaged", {"cond": measured(grid(5))}, {"runs": [json.loads(json.dumps(stored))]})
    with pytest.raises(CurveError, match=message) as err:
        runs_of(curve)
    assert "damaged" in str(err.value)


def test_plot_is_an_rgb_image_with_both_roles_and_the_reference() -> None:
    curve = curve_from_runs("plot", [run(0), run(1), run(2)], MODEL)
    reference = MagnitudeCurve("preset", {"cond": measured(grid(50, lo=0.01), scale=0.97)})
    image = render_curve(curve, [r.roles for r in runs_of(curve)], reference, subtitle="tiny")
    assert image.shape == (540, 960, 3) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    pixels = (image * 255).round().astype(int).reshape(-1, 3)

    def share(color: tuple[int, int, int]) -> float:
        return float(np.mean(np.all(np.abs(pixels - color) <= 12, axis=1)))

    assert share((31, 119, 180)) > 1e-3  # cond
    assert share((230, 115, 0)) > 1e-3  # uncond
    assert math.isclose(share((255, 255, 255)), 0.75, abs_tol=0.2)  # mostly background


def test_plot_of_a_single_role_curve_without_extras() -> None:
    image = render_curve(MagnitudeCurve("bare", {"cond": RoleCurve((1.0, 0.5), (0.9,))}), size=(320, 200))
    assert image.shape == (200, 320, 3)
