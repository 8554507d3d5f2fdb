"""Forecast a skipped call's residual from a global fit over the run's computed ones (after Spectrum, CVPR 2026).

Spectrum fits the features of every computed step with a Chebyshev series in
time by ridge regression and blends that global forecast with a local linear
one. Here the series is in sigma, mapped onto [-1, 1] over the run's schedule,
and fitted to the last :data:`HISTORY` computed residuals (memory: that many
residual-sized tensors per conditioning; ``cache_device`` offload moves them
all off the GPU).

The fit is linear in the residuals, so its forecast is a weighted sum of them:
with the basis matrix ``B`` (a row ``T_0..T_d`` per computed sigma) and the
basis row ``t`` at the skipped call's sigma, the weights are
``B (B^T B + lambda P)^-1 t``. They are floats from sigmas alone, computed once
per skipped call; the call then adds its terms with one allocation and reads
nothing from the device. ``P`` leaves the constant term unpenalised: a penalty
on it would shrink every forecast residual towards zero, a bias plain reuse
does not have (a constant residual is forecast exactly).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .reuse import Entry, Terms, weighted
from .taylor import lagrange_weights

#: Spectrum's published settings: Chebyshev degree 4, ridge 0.1.
DEGREE = 4
RIDGE = 0.1
#: Weight of the global fit in the blend with the local line (ours: the paper's weight was not available).
BLEND = 0.5
#: Computed residuals the fit keeps per conditioning.
HISTORY = 6


def chebyshev_rows(x: np.ndarray, degree: int) -> np.ndarray:
    """``T_0(x) .. T_degree(x)`` for each ``x`` (rows), by the three-term recurrence."""
    rows = [np.ones_like(x), x]
    while len(rows) <= degree:
        rows.append(2.0 * x * rows[-1] - rows[-2])
    return np.stack(rows[: degree + 1], axis=-1)


def ridge_weights(points: list[float], at: float, degree: int, ridge: float) -> list[float]:
    """Weights of the values at ``points`` (already on [-1, 1]) whose sum is the ridge fit's value at ``at``."""
    b = chebyshev_rows(np.asarray(points, dtype=np.float64), degree)
    penalty = np.eye(degree + 1) * ridge
    penalty[0, 0] = 0.0
    t = chebyshev_rows(np.asarray([at], dtype=np.float64), degree)[0]
    return (b @ np.linalg.solve(b.T @ b + penalty, t)).tolist()


@dataclass(frozen=True)
class ChebyshevFit:
    lo: float  # the run's sigma range, mapped onto [-1, 1]
    hi: float
    degree: int = DEGREE
    ridge: float = RIDGE
    blend: float = BLEND
    keeps: int = HISTORY

    @classmethod
    def for_run(cls, sigmas: list[float]) -> ChebyshevFit:
        return cls(min(sigmas, default=0.0), max(sigmas, default=1.0))

    def _x(self, sigma: float) -> float:
        span = self.hi - self.lo
        return 2.0 * (sigma - self.lo) / span - 1.0 if span > 0 else 0.0

    def terms(self, entry: Entry, sigma: float, progress: float) -> Terms:
        sigmas = entry.sigmas()
        if len(sigmas) < 2:
            return [(1.0, entry.last)]
        fit = ridge_weights([self._x(s) for s in sigmas], self._x(sigma), self.degree, self.ridge)
        line = [0.0] * (len(sigmas) - 2) + lagrange_weights(sigmas[-2:], sigma)
        return weighted(entry, [self.blend * f + (1.0 - self.blend) * g for f, g in zip(fit, line)])
