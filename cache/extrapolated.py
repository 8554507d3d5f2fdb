"""FasterCache's "dynamic feature reuse" (Lv et al. 2024) as first shipped: a line in sigma, damped by progress.

The residual is continued linearly in sigma from the last two computed ones,
with the step past the last computed call scaled by the run's progress (0 at
the first call, 1 at the last): early, where features were assumed to move
least predictably, it stays close to plain reuse. Kept for the workflows saved
with it; ``taylor.py`` has the undamped line, which the benchmark compares
with it (benchmarks/results/RESULTS.md).
"""

from __future__ import annotations

from .reuse import Entry, Terms


class DampedLine:
    keeps = 2

    def terms(self, entry: Entry, sigma: float, progress: float) -> Terms:
        if len(entry.points) < 2:
            return [(1.0, entry.last)]
        (s_prev, prev), (s_last, last) = entry.points[-2:]
        # r(sigma) ~ r_c + a (r_c - r_p), a = how far past the last computed call this one is, in units
        # of the gap between the last two, damped by the run's progress.
        a = progress * (s_last - sigma) / (s_prev - s_last)
        return [(1.0 + a, last), (-a, prev)]
