"""The three parts of a cached run on their own: when (planner, uniform, adaptive), what (reuse), which branches."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from comfyui_magcache.cache import reuse
from comfyui_magcache.cache.adaptive import AdaptiveSchedule
from comfyui_magcache.cache.branches import CfgCache
from comfyui_magcache.cache.config import Reuse
from comfyui_magcache.cache.planner import (
    ErrorModel,
    PlannedSchedule,
    computed_budget,
    forced_calls,
    plan_for_speed,
    reuse_error,
    uniform_skips,
)
from comfyui_magcache.cache.policy import SkipSettings, simulate
from comfyui_magcache.calibration.curve import MagnitudeCurve, RoleCurve
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


def total_error(curve: MagnitudeCurve, model: ErrorModel, sigmas: list[float], skips: tuple[bool, ...]) -> float:
    calls = sigmas[:-1]
    steps = [abs(sigmas[i] - sigmas[i + 1]) for i in range(len(calls))]
    mean = sum(steps) / len(steps)
    err, last = 0.0, 0
    for j, skip in enumerate(skips):
        if skip:
            err += reuse_error(curve, model, (0, 1), calls[last], calls[j], steps[j], mean)
        else:
            last = j
    return err


def feasible(skips: tuple[bool, ...], forced: list[bool], k: int) -> bool:
    if any(s and f for s, f in zip(skips, forced)):
        return False
    run = 0
    for s in skips:
        run = run + 1 if s else 0
        if run > k:
            return False
    return True


@pytest.mark.parametrize("model", list(ErrorModel))
@pytest.mark.parametrize("budget", [5, 6, 7])
@pytest.mark.parametrize("k", [2, 3])
def test_planner_finds_the_least_predicted_error_among_all_plans(model: ErrorModel, budget: int, k: int) -> None:
    curve = law(cosine=True)
    sigmas = [float(s) for s in np.linspace(1.0, 0.0, 11) ** 1.5]
    settings = window(k=k, skip_below=sigmas[2])
    forced = forced_calls(sigmas[:-1], settings)
    skips = plan_for_speed(curve, settings, sigmas, (0, 1), budget, model)
    assert sum(not s for s in skips) == budget
    assert feasible(skips, forced, k)
    best = min(
        total_error(curve, model, sigmas, cand)
        for computed in itertools.combinations(range(10), budget)
        if 0 in computed
        for cand in [tuple(i not in computed for i in range(10))]
        if feasible(cand, forced, k)
    )
    assert total_error(curve, model, sigmas, skips) == pytest.approx(best, rel=1e-9, abs=1e-12)


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
    entry = reuse.Entry(r1, 0.5, r0, 0.7)
    assert reuse.make(Reuse.PLAIN, curve).terms(entry, 0.4, 0.5) == [(1.0, r1)]
    (c, t), = reuse.make(Reuse.SCALED, curve).terms(entry, 0.4, 0.5)
    assert t is r1 and c == pytest.approx(curve.role(0).transition_ratio(0.5, 0.4))
    # Linear in sigma (r = 5 sigma - 0.5) is continued exactly at progress 1, half as far at progress 0.5.
    terms = reuse.make(Reuse.EXTRAPOLATED, curve).terms(entry, 0.3, 1.0)
    assert torch.allclose(hidden.combine(None, terms), torch.full((2, 3), 1.0))
    terms = reuse.make(Reuse.EXTRAPOLATED, curve).terms(entry, 0.3, 0.5)
    assert torch.allclose(hidden.combine(None, terms), torch.full((2, 3), 1.5))
    # Without a previous residual it reuses the last one.
    assert reuse.make(Reuse.EXTRAPOLATED, curve).terms(reuse.Entry(r1, 0.5), 0.3, 1.0) == [(1.0, r1)]


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
