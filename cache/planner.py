"""Schedules known before sampling starts: a speed target placed by the curve, and a uniform one.

The threshold rule (``policy.py``) decides greedily, call by call, and its
speed follows from the threshold. A user thinks the other way round: "twice as
fast". Since the whole schedule is known when sampling starts, the calls to
compute can be chosen at once: exactly as many as the speed allows, placed so
that the error the curve predicts over the whole run is least. A dynamic
programme over (calls computed so far, last computed call) finds that choice
exactly, under the same constraints as the rule: the first call and every call
outside the skippable window are computed, and at most K calls in a row reuse.

The predicted error of reusing the residual of computed call ``c`` at call
``j`` comes in three :class:`ErrorModel` s, which the quality benchmark
compares (the one that keeps the picture best is the default):

* ``MAGNITUDE``: ``|1 - prod(g)|``, the paper's estimate, every call alike;
* ``STEP``: the same, weighted by the sampler's step at ``j`` (the error of a
  reused residual enters the latent through that step, so a reuse before a
  large step costs more than one before a small step);
* ``DIRECTION``: the relative error of the whole vector, from the magnitude
  ratio and the direction change the calibration recorded (its cosine
  distance, where the curve has one), weighted by the step.

Pure arithmetic on the curve and the sigmas, like the rule.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass
from enum import Enum

from ..calibration.curve import MagnitudeCurve, RoleCurve
from .policy import SkipSettings


class ErrorModel(str, Enum):
    """How the planner predicts the error of a reused residual (see the module docstring)."""

    MAGNITUDE = "magnitude"
    STEP = "magnitude x step"
    DIRECTION = "vector x step"


def computed_budget(calls: int, speed: float) -> int:
    """Calls to compute for ``speed`` times fewer: never fewer than one, never more than all."""
    if not math.isfinite(speed) or speed <= 1.0:
        return calls
    return max(1, min(calls, math.ceil(calls / speed - 1e-9)))


def forced_calls(calls: list[float], settings: SkipSettings) -> list[bool]:
    """Calls that must be computed: the first, and those outside the skippable window."""
    return [i == 0 or not settings.in_window(s) for i, s in enumerate(calls)]


def _angle(role: RoleCurve, a: float, b: float) -> float:
    """Direction change of the residual between sigmas ``a > b``, summed over the curve's transitions.

    The calibration records the mean cosine distance ``d`` of each transition;
    the angle of a transition is ``acos(1 - d)`` and the angles of consecutive
    transitions add at most, which is what is assumed (a residual that keeps
    turning one way).
    """
    if role.cosine_distance is None:
        return 0.0
    total = 0.0
    for i, d in enumerate(role.cosine_distance):
        hi, lo = role.sigma[i], role.sigma[i + 1]
        overlap = min(hi, a) - max(lo, b)
        if overlap > 0 and hi > lo:
            total += math.acos(max(-1.0, 1.0 - d)) * overlap / (hi - lo)
    return total


def reuse_error(curve: MagnitudeCurve, model: ErrorModel, roles: tuple[int, ...], s_c: float, s_j: float,
                step: float, mean_step: float) -> float:
    """Predicted error of reusing the residual computed at ``s_c`` for the call at ``s_j`` (worst role)."""
    worst = 0.0
    for role in roles or (0,):
        rc = curve.role(role)
        g = rc.transition_ratio(s_c, s_j)  # ||r_j|| / ||r_c||
        if model is ErrorModel.DIRECTION:
            rho = 1.0 / g  # the reused residual relative to the true one
            theta = _angle(rc, s_c, s_j)
            e = math.sqrt(max(0.0, 1.0 + rho * rho - 2.0 * rho * math.cos(theta)))
        else:
            e = abs(1.0 - g)
        worst = max(worst, e)
    if model is not ErrorModel.MAGNITUDE and mean_step > 0:
        worst *= step / mean_step
    return worst


def plan_for_speed(
    curve: MagnitudeCurve,
    settings: SkipSettings,
    sigmas: list[float],
    roles: tuple[int, ...],
    budget: int,
    model: ErrorModel = ErrorModel.STEP,
) -> tuple[bool, ...]:
    """Skip decisions, one per call of ``sigmas[:-1]``, computing ``budget`` calls with the least predicted error.

    Computes more than ``budget`` only where the forced calls leave no other
    choice. K is kept where the budget allows; where it does not (3x with the
    first 20% computed needs runs of 5), it is raised to the least value that
    reaches the budget: the speed is what the user asked for.
    """
    calls = [float(s) for s in sigmas[:-1]]
    if not calls:
        return ()
    k = max(1, settings.max_skips)
    while True:
        skips = _plan(curve, settings, sigmas, roles, budget, model, k)
        if skips is not None or k >= len(calls):
            return skips if skips is not None else tuple(False for _ in calls)
        k += 1


def _plan(
    curve: MagnitudeCurve,
    settings: SkipSettings,
    sigmas: list[float],
    roles: tuple[int, ...],
    budget: int,
    model: ErrorModel,
    k: int,
) -> tuple[bool, ...] | None:
    """The least-error plan with runs of at most ``k`` skips, or None if none computes only ``budget`` calls."""
    calls = [float(s) for s in sigmas[:-1]]
    n = len(calls)
    forced = forced_calls(calls, settings)
    steps = [abs(float(sigmas[i]) - float(sigmas[i + 1])) for i in range(n)]
    mean_step = sum(steps) / n
    budget = max(budget, sum(forced))
    if budget >= n:
        return tuple(False for _ in range(n))

    def segment(c: int, end: int) -> float:
        """Predicted error of the calls after ``c`` up to ``end`` (exclusive), all reusing ``c``."""
        return sum(reuse_error(curve, model, roles, calls[c], calls[j], steps[j], mean_step) for j in range(c + 1, end))

    seg: dict[tuple[int, int], float] = {}
    for c in range(n):
        for end in range(c + 1, min(n, c + k + 1) + 1):
            if all(not forced[j] for j in range(c + 1, end)):
                seg[(c, end)] = segment(c, end)
    inf = math.inf
    # best[m][c]: least error of calls 0..c with m calls computed, c the last of them.
    best = [[inf] * n for _ in range(budget + 1)]
    back: list[list[int]] = [[-1] * n for _ in range(budget + 1)]
    best[1][0] = 0.0
    for m in range(1, budget):
        for c in range(n):
            if best[m][c] == inf:
                continue
            for nxt in range(c + 1, min(n, c + k + 2)):
                cost = seg.get((c, nxt))
                if cost is None:
                    break
                total = best[m][c] + cost
                if total < best[m + 1][nxt]:
                    best[m + 1][nxt] = total
                    back[m + 1][nxt] = c
    # The last computed call reuses for the rest of the run.
    end_cost = [best[budget][c] + seg.get((c, n), inf) for c in range(n)]
    last = min(range(n), key=end_cost.__getitem__)
    if end_cost[last] == inf:  # K and the forced calls need more than the budget
        return None
    computed = set()
    m, c = budget, last
    while c >= 0:
        computed.add(c)
        c, m = back[m][c], m - 1
    return tuple(i not in computed for i in range(n))


def uniform_skips(calls: int, budget: int, forced: list[bool]) -> tuple[bool, ...]:
    """Compute the forced calls and evenly spaced ones among the rest, ``budget`` in all."""
    free = [i for i in range(calls) if not forced[i]]
    extra = max(0, budget - (calls - len(free)))
    chosen = {free[round(i * len(free) / extra)] for i in range(extra)} if extra and free else set()
    return tuple(not forced[i] and i not in chosen for i in range(calls))


@dataclass
class PlannedSchedule:
    """Follows decisions made before sampling, matching each evaluation to the nearest planned call by sigma.

    Matching by sigma, not by count, keeps a sampler that calls the model
    twice per step (heun) on the plan: both calls near one sigma take its
    decision.
    """

    calls: tuple[float, ...]
    skips: tuple[bool, ...]
    measures: bool = False

    def __post_init__(self) -> None:
        self._ascending = tuple(reversed(self.calls))

    def decide(self, sigma: float, roles: tuple[int, ...]) -> bool:
        if not self.calls:
            return False
        asc = self._ascending
        i = bisect_left(asc, sigma)
        nearest = min((j for j in (i - 1, i) if 0 <= j < len(asc)), key=lambda j: abs(asc[j] - sigma))
        return self.skips[len(asc) - 1 - nearest]

    def observe(self, change: float, motion: float) -> None:
        """A planned schedule does not adapt."""
