"""The decision rule and the plan, on hand-made curves."""

from __future__ import annotations

import numpy as np
import pytest

from comfyui_magcache.cache.policy import SkipPolicy, SkipSettings, plan_run
from comfyui_magcache.calibration.curve import MagnitudeCurve, RoleCurve

SIGMAS = list(np.linspace(1.0, 0.0, 21))


def flat_then_drop(n: int = 20, flat: float = 0.99, drop: float = 0.7) -> MagnitudeCurve:
    sig = tuple(float(s) for s in np.linspace(1.0, 0.05, n + 1))
    ratio = tuple([flat] * (n - 3) + [drop] * 3)
    return MagnitudeCurve(name="law", roles={"cond": RoleCurve(sig, ratio), "uncond": RoleCurve(sig, ratio)})


def settings(threshold: float = 0.1, k: int = 3, skip_below: float = 1.0, compute_below: float = 0.0) -> SkipSettings:
    return SkipSettings(threshold, k, skip_below, compute_below)


def reference_rule(ratios: list[float], threshold: float, k: int, retained: int) -> list[bool]:
    """The method as the paper states it, on a step-indexed ratio list."""
    skips, err, prod, run = [], 0.0, 1.0, 0
    for t, g in enumerate(ratios):
        if t < retained or t == 0:
            skips.append(False)
            err, prod, run = 0.0, 1.0, 0
            continue
        prod *= g
        err += abs(1 - prod)
        run += 1
        if err < threshold and run <= k:
            skips.append(True)
        else:
            skips.append(False)
            err, prod, run = 0.0, 1.0, 0
    return skips


@pytest.mark.parametrize("threshold", [0.02, 0.05, 0.1, 0.3])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_plan_matches_the_step_indexed_rule_on_the_calibration_grid(threshold: float, k: int) -> None:
    curve = flat_then_drop()
    sig = list(curve.roles["cond"].sigma)
    ratios = [1.0, *curve.roles["cond"].ratio]
    plan = plan_run(curve, settings(threshold, k, skip_below=sig[4]), [*sig, 0.0], (0, 1))
    assert list(plan.skips) == reference_rule(ratios, threshold, k, retained=4)


def test_threshold_zero_never_skips() -> None:
    plan = plan_run(flat_then_drop(flat=1.0), settings(0.0, 10), SIGMAS, (0, 1))
    assert plan.computed == plan.total == 20


def test_k_bounds_consecutive_skips() -> None:
    plan = plan_run(flat_then_drop(flat=1.0), settings(10.0, 2), SIGMAS, (0,))
    run = longest = 0
    for s in plan.skips:
        run = run + 1 if s else 0
        longest = max(longest, run)
    assert longest == 2


def test_retention_and_end_windows_are_always_computed() -> None:
    plan = plan_run(flat_then_drop(flat=1.0), settings(10.0, 5, skip_below=0.7, compute_below=0.2), SIGMAS, (0,))
    for sigma, skip in zip(plan.sigmas, plan.skips):
        if sigma > 0.7 or sigma < 0.2:
            assert not skip


def test_each_role_keeps_its_own_error() -> None:
    sig = tuple(float(s) for s in np.linspace(1.0, 0.05, 21))
    calm = RoleCurve(sig, tuple([1.0] * 20))
    wild = RoleCurve(sig, tuple([0.8] * 20))
    curve = MagnitudeCurve(name="two", roles={"cond": calm, "uncond": wild})
    only_cond = plan_run(curve, settings(0.1, 5), [*sig, 0.0], (0,))
    both = plan_run(curve, settings(0.1, 5), [*sig, 0.0], (0, 1))
    assert only_cond.computed < both.computed
    assert both.computed == both.total  # the uncond role never fits the budget


def test_odd_sigmas_do_not_break_the_rule() -> None:
    curve = flat_then_drop()
    for sigmas in ([0.0, 0.0, 0.0], [1.0, 1.0, 0.5, 0.5, 0.0], [5.0, 2.0, 0.0], [1.0], []):
        plan = plan_run(curve, settings(0.2, 3), sigmas, (0, 1))
        assert plan.total == max(len(sigmas) - 1, 0)
        assert plan.speedup >= 1.0


def test_policy_decisions_follow_curve_for_repeated_calls_at_one_sigma() -> None:
    """Second-order samplers call the model twice near one sigma: zero extra error, but K still counts."""
    policy = SkipPolicy(flat_then_drop(flat=1.0), settings(0.5, 2))
    decisions = [policy.decide(s, (0,)) for s in (0.9, 0.9, 0.9, 0.9)]
    assert decisions == [False, True, True, False]


def test_speedup_of_the_published_wan_curve_with_recommended_settings() -> None:
    """Sanity anchor against the authors' own figure (2.2x for Wan 2.1 1.3B T2V)."""
    from comfyui_magcache.calibration import catalog

    curve = catalog.load_preset("wan2.1_t2v_1.3B")
    rec = catalog.Recommended.of(curve)
    sig = list(curve.metadata["sigmas"])
    plan = plan_run(curve, settings(rec.threshold, rec.max_skips, skip_below=sig[10]), [*sig, 0.0], (0, 1))
    assert 2.0 <= plan.speedup <= 2.6
