"""The three parts of a cached run on their own: when (planner, uniform, adaptive), what (reuse), which branches."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from comfyui_magcache.cache import estimators, reuse
from comfyui_magcache.cache.adaptive import AdaptiveSchedule
from comfyui_magcache.cache.branches import CfgCache
from comfyui_magcache.cache.config import Reuse
from comfyui_magcache.cache.planner import (
    ErrorModel,
    Objective,
    PlannedSchedule,
    computed_budget,
    forced_calls,
    forecast_error,
    pictures,
    plan_for_speed,
    reuse_error,
    uniform_skips,
)
from comfyui_magcache.cache.policy import SkipSettings, simulate
from comfyui_magcache.cache.reuse import PlainReuse
from comfyui_magcache.cache.taylor import SigmaPolynomial
from comfyui_magcache.calibration.curve import MagnitudeCurve, RoleCurve, Trajectory
from comfyui_magcache.hooks import hidden


def law(n: int = 12, cosine: bool = False) -> MagnitudeCurve:
    """Ratios near 1 early, falling late: the magnitude law's shape."""
    sig = tuple(float(s) for s in np.linspace(1.0, 0.02, n + 1))
    ratio = tuple(float(r) for r in np.linspace(0.995, 0.8, n))
    cd = tuple(float(c) for c in np.linspace(0.001, 0.05, n)) if cosine else None
    rc = RoleCurve(sig, ratio, cosine_distance=cd)
    return MagnitudeCurve(name="law", roles={"cond": rc, "uncond": rc})


def window(k: int = 3, skip_below: float = 2.0, compute_below: float = 0.0) -> SkipSettings:
    return SkipSettings(threshold=0.0, max_skips=k, skip_below_sigma=skip_below, compute_below_sigma=compute_below)


def total_error(curve: MagnitudeCurve, model: ErrorModel, sigmas: list[float], skips: tuple[bool, ...],
                estimator=None, objective: Objective = Objective.SUM) -> float:
    """The planner's objective for one plan, summed segment by segment (the brute force's reference)."""
    calls = sigmas[:-1]
    steps = [abs(sigmas[i] - sigmas[i + 1]) for i in range(len(calls))]
    mean = sum(steps) / len(steps)
    power = 5.0 if objective is Objective.PEAK else 1.0
    computed = [j for j, skip in enumerate(skips) if not skip]
    picture = pictures(curve, (0, 1), calls)[0]
    total = 0.0
    for i, c in enumerate(computed):
        end = computed[i + 1] if i + 1 < len(computed) else len(calls)
        history = (computed[i - 1], c) if i > 0 else (c,)
        seg = 0.0
        for j in range(c + 1, end):
            if model is ErrorModel.FORECAST:
                progress = (sigmas[0] - calls[j]) / (sigmas[0] - sigmas[-1])
                seg += forecast_error(estimator or PlainReuse(), picture, history, calls, j, progress,
                                      steps[j] / mean)
            else:
                seg += reuse_error(curve, model, (0, 1), calls[c], calls[j], steps[j], mean)
        total += seg**power
    return total


def feasible(skips: tuple[bool, ...], forced: list[bool], k: int) -> bool:
    if any(s and f for s, f in zip(skips, forced)):
        return False
    run = 0
    for s in skips:
        run = run + 1 if s else 0
        if run > k:
            return False
    return True


PLANNER_CASES = [(m, None, Objective.SUM) for m in ErrorModel] + [
    (ErrorModel.FORECAST, SigmaPolynomial(1), Objective.SUM),
    (ErrorModel.FORECAST, SigmaPolynomial(1), Objective.PEAK),
    (ErrorModel.DIRECTION, None, Objective.PEAK),
]


@pytest.mark.parametrize(("model", "estimator", "objective"), PLANNER_CASES, ids=str)
@pytest.mark.parametrize("budget", [5, 6, 7])
@pytest.mark.parametrize("k", [2, 3])
def test_planner_finds_the_least_predicted_error_among_all_plans(model, estimator, objective, budget, k) -> None:
    curve = law(cosine=True)
    sigmas = [float(s) for s in np.linspace(1.0, 0.0, 11) ** 1.5]
    settings = window(k=k, skip_below=sigmas[2])
    forced = forced_calls(sigmas[:-1], settings)
    skips = plan_for_speed(curve, settings, sigmas, (0, 1), budget, model, estimator, objective)
    assert sum(not s for s in skips) == budget
    assert feasible(skips, forced, k)
    best = min(
        total_error(curve, model, sigmas, cand, estimator, objective)
        for computed in itertools.combinations(range(10), budget)
        if 0 in computed
        for cand in [tuple(i not in computed for i in range(10))]
        if feasible(cand, forced, k)
    )
    got = total_error(curve, model, sigmas, skips, estimator, objective)
    assert got == pytest.approx(best, rel=1e-9, abs=1e-12)


def test_forecast_error_of_plain_reuse_is_the_vector_error() -> None:
    """The plane picture agrees with the closed form of the vector error for plain reuse."""
    curve = law(cosine=True)
    for s_c, s_j in [(0.9, 0.7), (0.6, 0.2), (0.3, 0.05)]:
        direct = reuse_error(curve, ErrorModel.DIRECTION, (0, 1), s_c, s_j, 1.0, 1.0)
        calls = [1.0, s_c, s_j]
        planar = forecast_error(PlainReuse(), pictures(curve, (0, 1), calls)[0], (1,), calls, 2, 0.5, 1.0)
        assert planar == pytest.approx(direct, rel=1e-9)


def test_forecast_error_of_the_line_is_small_where_the_residual_moves_steadily() -> None:
    """Where magnitude and angle change at a constant rate the line predicts far better than plain reuse."""
    sig = tuple(float(x) for x in np.linspace(1.0, 0.0, 21))
    rc = RoleCurve(sig, (0.97,) * 20, cosine_distance=(0.002,) * 20)
    curve = MagnitudeCurve(name="steady", roles={"cond": rc, "uncond": rc})
    calls = [1.0, 0.6, 0.5, 0.4]
    picture, measured = pictures(curve, (0,), calls)
    assert not measured
    plain = forecast_error(PlainReuse(), picture, (2,), calls, 3, 0.5, 1.0)
    line = forecast_error(SigmaPolynomial(1), picture, (1, 2), calls, 3, 0.5, 1.0)
    assert line < plain / 5


def test_a_recorded_trajectory_is_what_the_planner_measures_on() -> None:
    """With a trajectory the error is the forecast's on the recorded sample: exact where the sample is a line."""
    sig = tuple(float(x) for x in np.linspace(1.0, 0.0, 11))
    direction = np.linspace(-1.0, 1.0, 64)
    values = np.stack([np.cos(3 * s) * np.ones(64) + s * direction for s in sig]).astype(np.float32)
    rc = RoleCurve(sig, (0.97,) * 10)
    curve = MagnitudeCurve(name="t", roles={"cond": rc}, trajectories={"cond": Trajectory(sig, values)})
    calls = [1.0, 0.9, 0.8, 0.7]
    picture, measured = pictures(curve, (0, 1), calls)
    assert measured and len(picture) == 2  # the uncond role reads the cond's trajectory
    np.testing.assert_allclose(picture[0][2], values[2], rtol=1e-6)
    plain = forecast_error(PlainReuse(), picture, (2,), calls, 3, 0.5, 1.0)
    expected = np.linalg.norm(values[2].astype(np.float64) - values[3]) / np.linalg.norm(values[3].astype(np.float64))
    assert plain == pytest.approx(expected, rel=1e-5)
    # Halfway between recorded calls the sample is read linearly.
    np.testing.assert_allclose(curve.trajectory(0).at(0.85), (values[1] + values[2]) / 2, rtol=1e-5)


def test_planner_raises_k_just_enough_to_reach_the_speed() -> None:
    sigmas = [float(s) for s in np.linspace(1.0, 0.0, 11)]
    skips = plan_for_speed(law(), window(k=1), sigmas, (0,), budget=3)
    assert sum(not s for s in skips) == 3
    runs = "".join("s" if s else "c" for s in skips).split("c")
    assert max(len(r) for r in runs) == 3  # 7 skips between 3 computed calls: runs of 3 at least, no longer


def test_planner_computes_the_forced_calls_when_the_budget_is_below_them() -> None:
    sigmas = [float(s) for s in np.linspace(1.0, 0.0, 11)]
    skips = plan_for_speed(law(), window(k=3, skip_below=sigmas[5]), sigmas, (0,), budget=2)
    assert skips[:5] == (False,) * 5 and all(skips[5:])


def test_budget_of_a_speed() -> None:
    assert computed_budget(50, 2.0) == 25
    assert computed_budget(50, 2.5) == 20
    assert computed_budget(50, 3.0) == 17
    assert computed_budget(50, 1.0) == 50
    assert computed_budget(50, math.nan) == 50


def test_uniform_spreads_the_budget_over_the_free_calls() -> None:
    forced = [True, True] + [False] * 8
    skips = uniform_skips(10, 6, forced)
    assert sum(not s for s in skips) == 6
    assert skips[:2] == (False, False)
    assert [i for i, s in enumerate(skips) if not s] == [0, 1, 2, 4, 6, 8]


def test_planned_schedule_matches_calls_by_sigma_so_a_second_call_at_a_sigma_follows_the_plan() -> None:
    calls = (1.0, 0.8, 0.6, 0.4)
    sched = PlannedSchedule(calls, (False, True, False, True))
    assert [sched.decide(s, (0,)) for s in (1.0, 0.8, 0.8, 0.6000001, 0.4, 0.39)] == [
        False, True, True, False, True, True,
    ]


def test_window_bound_holds_a_float32_sigma_on_it() -> None:
    bound = 0.7071067811865476
    settings = window(skip_below=bound)
    assert settings.in_window(float(np.float32(bound)))
    assert not settings.in_window(bound * 1.001)


def test_adaptive_reuses_longer_where_the_residual_changes_less() -> None:
    calls = tuple(float(s) for s in np.linspace(1.0, 0.02, 40))

    def run(change_of: dict[int, float]) -> list[bool]:
        sched = AdaptiveSchedule(window(k=6), calls, budget=20)
        out = []
        for i, s in enumerate(calls):
            skip = sched.decide(s, (0, 1))
            out.append(skip)
            if not skip:
                sched.observe(change_of.get(i, 0.1) if i < 20 else 1.0, 0.0)
        return out

    skips = run({})
    assert not skips[0]
    early = sum(skips[:20]) / 20
    late = sum(skips[20:]) / 20
    assert early > late  # small change early (0.1) against large late (1.0): longer reuse early
    runs = "".join("s" if s else "c" for s in skips).split("c")
    assert max(len(r) for r in runs) <= 6


def test_adaptive_lands_near_its_budget_when_the_change_is_steady() -> None:
    calls = tuple(float(s) for s in np.linspace(1.0, 0.02, 50))
    sched = AdaptiveSchedule(window(k=5), calls, budget=25)
    computed = 0
    for s in calls:
        if not sched.decide(s, (0,)):
            computed += 1
            sched.observe(0.2, 0.0)
    assert 24 <= computed <= 27
    plan = simulate(AdaptiveSchedule(window(k=5), calls, budget=25), [*calls, 0.0], (0,))
    assert 24 <= plan.computed <= 27


def test_adaptive_moreg_spends_more_where_the_latent_moves_more() -> None:
    calls = tuple(float(s) for s in np.linspace(1.0, 0.02, 40))

    def computed_in(motion_of: float) -> int:
        sched = AdaptiveSchedule(window(k=6), calls, budget=20)
        n = 0
        for i, s in enumerate(calls):
            if not sched.decide(s, (0,)):
                n += i >= 20
                sched.observe(0.2, motion_of if i >= 20 else 0.1)
        return n

    assert computed_in(0.4) > computed_in(0.1)


def test_reuse_estimators() -> None:
    curve = law()
    r1, r0 = torch.full((2, 3), 2.0), torch.full((2, 3), 3.0)
    entry = reuse.Entry(((0.7, r0), (0.5, r1)))
    assert estimators.make(Reuse.PLAIN, curve, SIGMAS).terms(entry, 0.4, 0.5) == [(1.0, r1)]
    (c, t), = estimators.make(Reuse.SCALED, curve, SIGMAS).terms(entry, 0.4, 0.5)
    assert t is r1 and c == pytest.approx(curve.role(0).transition_ratio(0.5, 0.4))
    # FasterCache's line: linear in sigma (r = 5 sigma - 0.5) continued exactly at progress 1, half as far at 0.5.
    terms = estimators.make(Reuse.EXTRAPOLATED, curve, SIGMAS).terms(entry, 0.3, 1.0)
    assert torch.allclose(hidden.combine(None, terms), torch.full((2, 3), 1.0))
    terms = estimators.make(Reuse.EXTRAPOLATED, curve, SIGMAS).terms(entry, 0.3, 0.5)
    assert torch.allclose(hidden.combine(None, terms), torch.full((2, 3), 1.5))
    # The undamped line continues it exactly whatever the progress.
    terms = estimators.make(Reuse.LINEAR, curve, SIGMAS).terms(entry, 0.3, 0.1)
    assert torch.allclose(hidden.combine(None, terms), torch.full((2, 3), 1.0))
    # Without a previous residual every estimator reuses the last one.
    for r in Reuse:
        if r is not Reuse.SCALED:
            assert estimators.make(r, curve, SIGMAS).terms(reuse.entry(r1, 0.5), 0.3, 1.0) == [(1.0, r1)]


SIGMAS = [1.0, 0.9, 0.7, 0.5, 0.3, 0.1, 0.0]


def _history(f, sigmas: list[float], keep: int) -> reuse.Entry:
    """An entry built as a run builds it: one computed residual pushed at a time."""
    e = reuse.entry(torch.full((3,), f(sigmas[0])), sigmas[0])
    for s in sigmas[1:]:
        e = e.push(torch.full((3,), f(s)), s, keep)
    return e


@pytest.mark.parametrize("reuse_kind, exact_degree", [(Reuse.LINEAR, 1), (Reuse.QUADRATIC, 2)])
def test_polynomial_forecasts_are_exact_on_polynomials_of_their_order_and_not_above(reuse_kind, exact_degree):
    est = estimators.make(reuse_kind, law(), SIGMAS)
    assert est.keeps == exact_degree + 1
    for degree in (0, 1, 2, 3):
        f = lambda s, d=degree: 1.0 + sum((2.0 * s) ** k for k in range(1, d + 1))  # noqa: E731
        entry = _history(f, [0.9, 0.8, 0.6, 0.5], est.keeps)
        assert len(entry.points) == est.keeps  # the history is bounded by what the forecast needs
        got = float(hidden.combine(None, est.terms(entry, 0.35, 0.5))[0])
        assert (got == pytest.approx(f(0.35), rel=1e-6)) == (degree <= exact_degree)


def test_history_restarts_at_a_repeated_sigma_or_a_new_shape() -> None:
    e = _history(lambda s: s, [0.9, 0.8, 0.6], 3)
    assert e.sigmas() == [0.9, 0.8, 0.6]
    assert e.push(torch.zeros(3), 0.6, 3).sigmas() == [0.6]  # heun's second call at the same sigma
    assert e.push(torch.zeros(4), 0.5, 3).sigmas() == [0.5]  # another resolution


def test_chebyshev_fit_blends_a_ridge_fit_with_the_line_and_keeps_a_constant() -> None:
    from comfyui_magcache.cache import spectrum

    est = estimators.make(Reuse.SPECTRAL, law(), SIGMAS)
    assert est.keeps == spectrum.HISTORY and (est.lo, est.hi) == (0.0, 1.0)
    pts = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    # A constant residual is forecast exactly (the constant term is not shrunk by the ridge).
    const = _history(lambda s: 2.5, pts, est.keeps)
    assert float(hidden.combine(None, est.terms(const, 0.3, 0.5))[0]) == pytest.approx(2.5, rel=1e-9)
    # On a smooth curve the ridge fit alone is the least-squares-with-penalty solution, solved directly.
    f = lambda s: math.sin(3.0 * s) + s * s  # noqa: E731
    entry = _history(f, pts, est.keeps)
    x = [2 * s - 1 for s in pts]
    basis = torch.tensor([[math.cos(k * math.acos(v)) for k in range(5)] for v in x], dtype=torch.float64)
    penalty = torch.diag(torch.tensor([0.0, 0.1, 0.1, 0.1, 0.1], dtype=torch.float64))
    values = torch.tensor([f(s) for s in pts], dtype=torch.float64)
    coef = torch.linalg.solve(basis.T @ basis + penalty, basis.T @ values)
    at = 2 * 0.3 - 1
    fit = float(sum(coef[k] * math.cos(k * math.acos(at)) for k in range(5)))
    line = f(0.4) + (f(0.4) - f(0.5)) * (0.4 - 0.3) / 0.1
    got = float(hidden.combine(None, est.terms(entry, 0.3, 0.5))[0])
    assert got == pytest.approx(spectrum.BLEND * fit + (1 - spectrum.BLEND) * line, rel=1e-6)
    # A skipped call's terms are floats and the cached tensors themselves: nothing computed on the device.
    terms = est.terms(entry, 0.3, 0.5)
    assert all(isinstance(c, float) for c, _ in terms)
    assert {id(t) for _, t in terms} <= {id(t) for _, t in entry.points}


def test_combine_is_bit_identical_to_one_add_for_plain_reuse_and_makes_one_new_tensor() -> None:
    x, r = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    out = hidden.combine(x, [(1.0, r)])
    assert torch.equal(out, x + r)
    two = hidden.combine(x, [(1.5, r), (-0.5, x)])
    assert torch.allclose(two, x + 1.5 * r - 0.5 * x)
    assert out.data_ptr() not in (x.data_ptr(), r.data_ptr())
    pair = hidden.combine((x, r), [(1.0, (r, x))])
    assert torch.equal(pair[0], x + r) and torch.equal(pair[1], r + x)


def test_cfg_cache_alternates_and_rebuilds_the_unconditional_output() -> None:
    torch.manual_seed(0)
    cfg = CfgCache()
    cond, delta = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 16, 16)
    assert not cfg.cond_only(True)  # nothing cached yet
    cfg.store(cond, cond + delta, 0.9)
    assert [cfg.cond_only(True) for _ in range(4)] == [False, True, False, True]
    assert not cfg.cond_only(False)
    # One full call cached: the difference is reused as it is.
    assert torch.allclose(cfg.rebuild(cond, 0.8), cond + delta, atol=1e-5)


def test_cfg_cache_continues_low_and_high_frequencies_at_their_own_rates() -> None:
    torch.manual_seed(0)
    h = w = 32
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    low = torch.cos(2 * math.pi * xx / w).expand(1, 1, h, w).float()  # 1 cycle: low frequency
    high = torch.cos(2 * math.pi * 12 * yy / h).expand(1, 1, h, w).float()  # 12 cycles: high
    cond = torch.zeros(1, 1, h, w)
    cfg = CfgCache()
    cfg.store(cond, low + high, 0.9)
    cfg.store(cond, 2 * low + 0.5 * high, 0.8)  # low doubled, high halved over one gap
    rebuilt = cfg.rebuild(cond, 0.7)  # one more gap of the same size
    assert torch.allclose(rebuilt, 4 * low + 0.25 * high, atol=1e-4)


@pytest.mark.parametrize("model", list(ErrorModel))
def test_planner_may_compute_the_last_call(model: ErrorModel) -> None:
    """Where reusing at the last call costs most, the plan computes it (an empty tail costs 0, not infinity)."""
    sig = (1.0, 0.7, 0.4, 0.1)
    rc = RoleCurve(sig, (0.999, 0.998, 0.5), cosine_distance=(0.001, 0.001, 0.3))
    curve = MagnitudeCurve(name="late drop", roles={"cond": rc})
    sigmas = [1.0, 0.7, 0.4, 0.1, 0.0]
    skips = plan_for_speed(curve, window(k=1), sigmas, (0,), budget=3, model=model,
                           estimator=SigmaPolynomial(1) if model is ErrorModel.FORECAST else None)
    assert sum(not x for x in skips) == 3 and not skips[-1]
