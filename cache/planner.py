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
  distance, where the curve has one), weighted by the step;
* ``FORECAST``: the same vector error, of the forecast the run will actually
  use (a line, a parabola, a Chebyshev fit) instead of plain reuse, applied
  to the planner's picture of the residual (:func:`pictures`). *Measured*
  where the curve carries a trajectory (MagCache Calibrate records a fixed
  sample of the residual's elements at every call): the forecast's error on
  the calibration sample itself. *Predicted* otherwise: the curve read as a
  residual turning in a plane, ``z(sigma) = m(sigma) e^{i theta(sigma)}``
  (magnitude from the ratios, angle from the recorded direction changes).
  The cost of reusing after computed call ``c`` then depends on the computed
  call before ``c`` as well (after DPCache), so the programme's state carries
  it. Estimators that use more than two computed calls are costed on the last
  two (an approximation: the programme's state would grow with each).

What is minimised (:class:`Objective`): the sum of the segments' errors, or
the sum of their fifth powers, which penalises the worst segment (after
MeanCache's peak-suppressed path; LeMiCa's lexicographic minimax has the same
aim). The benchmark compares them.

Pure arithmetic on the curve and the sigmas, like the rule.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass
from enum import Enum

import numpy as np

from ..calibration.curve import MagnitudeCurve, RoleCurve
from .policy import SkipSettings
from .reuse import Entry, Estimator, PlainReuse


class ErrorModel(str, Enum):
    """How the planner predicts the error of a reused residual (see the module docstring)."""

    MAGNITUDE = "magnitude"
    STEP = "magnitude x step"
    DIRECTION = "vector x step"
    FORECAST = "forecast x step"


class Objective(str, Enum):
    """What the planner minimises over the run's reuse segments."""

    SUM = "sum"  # the total predicted error
    PEAK = "peak"  # the sum of fifth powers: the worst segment dominates


#: The exponent of each objective.
_POWER = {Objective.SUM: 1.0, Objective.PEAK: 5.0}


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


def _phasor(role: RoleCurve, origin: float, sigma: float) -> complex:
    """The residual at ``sigma`` as a point in the plane, relative to the one at ``origin`` (the run's first call)."""
    return role.transition_ratio(origin, sigma) * complex(math.cos(a := _angle(role, origin, sigma)), math.sin(a))


Picture = list[complex] | list[np.ndarray]


def pictures(curve: MagnitudeCurve, roles: tuple[int, ...], calls: list[float]) -> tuple[list[Picture], bool]:
    """Per role, the residual at each call as the planner sees it, and whether it was measured.

    Measured: the residual sample MagCache Calibrate recorded along its run
    (``Trajectory``), read at each call's sigma. Predicted (curves without one:
    the published presets, older calibrations): the plane picture of the ratios
    and direction changes (:func:`_phasor`).
    """
    out: list[Picture] = []
    measured = True
    for role in roles or (0,):
        tr = curve.trajectory(role)
        if tr is None:
            measured = False
            out.append([_phasor(curve.role(role), calls[0], s) for s in calls])
        else:
            out.append([tr.at(s) for s in calls])
    return out, measured


def forecast_error(estimator: Estimator, picture: list[Picture], history: tuple[int, ...], calls: list[float],
                   j: int, progress: float, weight: float) -> float:
    """Relative error of ``estimator``'s forecast at call ``j`` from the computed calls ``history`` (worst role).

    The estimator only weighs what it is given, so it is applied to the
    planner's picture of the residual as it is to tensors; ``weight`` scales
    the error (the sampler's step at ``j`` relative to the mean step).
    """
    worst = 0.0
    for z in picture:
        entry = Entry(tuple((calls[h], z[h]) for h in history))
        guess = sum(c * v for c, v in estimator.terms(entry, calls[j], progress))  # type: ignore[operator]
        worst = max(worst, float(np.linalg.norm(guess - z[j])) / max(float(np.linalg.norm(z[j])), 1e-12))
    return worst * weight


def plan_for_speed(
    curve: MagnitudeCurve,
    settings: SkipSettings,
    sigmas: list[float],
    roles: tuple[int, ...],
    budget: int,
    model: ErrorModel = ErrorModel.STEP,
    estimator: Estimator | None = None,
    objective: Objective = Objective.SUM,
) -> tuple[bool, ...]:
    """Skip decisions, one per call of ``sigmas[:-1]``, computing ``budget`` calls with the least predicted error.

    ``estimator``: what the run fills skipped calls with (``FORECAST`` costs
    its error; plain reuse when None).

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
        skips = _plan(curve, settings, sigmas, roles, budget, model, k, estimator or PlainReuse(), objective)
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
    estimator: Estimator,
    objective: Objective,
) -> tuple[bool, ...] | None:
    """The least-error plan with runs of at most ``k`` skips, or None if none computes only ``budget`` calls.

    A dynamic programme over (calls computed, last computed call, the computed
    call before it); the last is -1 where the error does not depend on it.
    """
    calls = [float(s) for s in sigmas[:-1]]
    n = len(calls)
    forced = forced_calls(calls, settings)
    steps = [abs(float(sigmas[i]) - float(sigmas[i + 1])) for i in range(n)]
    mean_step = sum(steps) / n
    budget = max(budget, sum(forced))
    if budget >= n:
        return tuple(False for _ in range(n))
    first, final = float(sigmas[0]), float(sigmas[-1])
    span = first - final
    with_history = model is ErrorModel.FORECAST and estimator.keeps > 1
    power = _POWER[objective]
    picture = pictures(curve, roles, calls)[0] if model is ErrorModel.FORECAST else []

    def error(p: int, c: int, j: int) -> float:
        if model is ErrorModel.FORECAST:
            progress = (first - calls[j]) / span if span > 0 else 0.0
            weight = steps[j] / mean_step if mean_step > 0 else 1.0
            return forecast_error(estimator, picture, (p, c) if p >= 0 else (c,), calls, j, progress, weight)
        return reuse_error(curve, model, roles, calls[c], calls[j], steps[j], mean_step)

    seg: dict[tuple[int, int, int], float] = {}

    def segment(p: int, c: int, end: int) -> float | None:
        """Predicted cost of the calls after ``c`` up to ``end`` (exclusive) reusing ``c`` (``p`` before it)."""
        key = (p if with_history else -1, c, end)
        if key not in seg:
            if end > n or end - c - 1 > k or any(forced[j] for j in range(c + 1, end)):
                return None
            seg[key] = sum(error(key[0], c, j) for j in range(c + 1, end)) ** power
        return seg[key]

    inf = math.inf
    # best[m][(c, p)]: least cost of calls 0..c with m calls computed, c the last and p the one before.
    best: list[dict[tuple[int, int], float]] = [{} for _ in range(budget + 1)]
    back: list[dict[tuple[int, int], tuple[int, int]]] = [{} for _ in range(budget + 1)]
    best[1][(0, -1)] = 0.0
    for m in range(1, budget):
        for (c, p), total in sorted(best[m].items()):
            for nxt in range(c + 1, min(n, c + k + 2)):
                cost = segment(p, c, nxt)
                if cost is None:
                    break
                state = (nxt, c if with_history else -1)
                if total + cost < best[m + 1].get(state, inf):
                    best[m + 1][state] = total + cost
                    back[m + 1][state] = (c, p)
    # The last computed call reuses for the rest of the run.
    end_cost = {}
    for state, total in best[budget].items():
        tail = segment(state[1], state[0], n)
        if tail is not None:  # an empty tail (the last call computed) costs 0.0, which is a cost
            end_cost[state] = total + tail
    if not end_cost:  # K and the forced calls need more than the budget
        return None
    state = min(end_cost, key=lambda st: (end_cost[st], st))
    computed = set()
    m = budget
    while m >= 1:
        computed.add(state[0])
        if m == 1:
            break
        state, m = back[m][state], m - 1
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
