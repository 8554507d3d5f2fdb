"""Forecast a skipped call's residual by the polynomial through the last computed ones, in sigma.

Order 1 is the line through the last two computed residuals, order 2 the
parabola through the last three (TaylorSeer's finite-difference expansion of
order 1-2, written in sigma rather than in step count, so that uneven
schedules and multi-call samplers are handled by the sigmas themselves). Not
damped: the benchmark compares it with FasterCache's progress damping
(``extrapolated.py``; benchmarks/results/RESULTS.md).

The forecast is ``sum_i w_i r_i`` with Lagrange weights
``w_i = prod_{j != i} (sigma - s_j) / (s_i - s_j)``: floats from sigmas, so a
skipped call adds its terms with one allocation and reads nothing from the
device. With fewer computed residuals than the order needs (the first skips
of a run) it uses the polynomial through those there are.
"""

from __future__ import annotations

from dataclasses import dataclass

from .reuse import Entry, Terms, weighted


def lagrange_weights(points: list[float], x: float) -> list[float]:
    """Weights of the values at ``points`` that give the interpolating polynomial's value at ``x``."""
    weights = []
    for i, si in enumerate(points):
        w = 1.0
        for j, sj in enumerate(points):
            if j != i:
                w *= (x - sj) / (si - sj)
        weights.append(w)
    return weights


@dataclass(frozen=True)
class SigmaPolynomial:
    order: int

    @property
    def keeps(self) -> int:
        return self.order + 1

    def terms(self, entry: Entry, sigma: float, progress: float) -> Terms:
        sigmas = entry.sigmas()[-(self.order + 1):]
        if len(sigmas) < 2:
            return [(1.0, entry.last)]
        last = Entry(entry.points[-len(sigmas):])
        return weighted(last, lagrange_weights(sigmas, sigma))
