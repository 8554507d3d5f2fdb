"""What a skipped call adds in place of the block stack (or the model): the reuse estimators.

An estimator turns what was cached into a list of ``(coefficient, tensor)``
terms; the hooks add them to the stack's input with one allocation
(:func:`hooks.hidden.combine`). Coefficients are plain floats computed from the
curve and the sigmas, so no estimator reads anything from the device.

* :class:`PlainReuse` (the paper): the last computed residual, as it is.
* :class:`ScaledReuse`: the last residual times the magnitude ratio the curve
  predicts from its sigma to this call's. The law says the residual's size
  changes by that ratio; its direction is what the reuse cannot know.
* :class:`ExtrapolatedReuse` (after FasterCache, Lv et al. 2024, "dynamic
  feature reuse"): the residual continued linearly in sigma from the last two
  computed ones, damped early in the run, where the features move least
  predictably, and trusted more as the sample settles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..calibration.curve import MagnitudeCurve
from ..hooks import hidden
from .config import Reuse

Terms = list[tuple[float, hidden.Hidden]]


@dataclass
class Entry:
    """A cached residual, the sigma it was computed at, and (for extrapolation) the one before it."""

    last: hidden.Hidden
    sigma: float
    previous: hidden.Hidden | None = None
    previous_sigma: float | None = None


class Estimator(Protocol):
    """``keeps_previous``: the estimator needs the residual before the last (twice the cache memory)."""

    keeps_previous: bool

    def terms(self, entry: Entry, sigma: float, progress: float) -> Terms:
        """What a call at ``sigma`` (``progress`` 0..1 through the run) adds, from ``entry``."""
        ...


class PlainReuse:
    keeps_previous = False

    def terms(self, entry: Entry, sigma: float, progress: float) -> Terms:
        return [(1.0, entry.last)]


@dataclass
class ScaledReuse:
    curve: MagnitudeCurve
    keeps_previous = False

    def terms(self, entry: Entry, sigma: float, progress: float) -> Terms:
        # The cond curve: a batch holds cond and uncond together and gets one coefficient;
        # the roles' ratios differ by far less than either differs from 1 where calls are skipped.
        return [(self.curve.role(0).transition_ratio(entry.sigma, sigma), entry.last)]


class ExtrapolatedReuse:
    keeps_previous = True

    def terms(self, entry: Entry, sigma: float, progress: float) -> Terms:
        prev, s_prev = entry.previous, entry.previous_sigma
        if prev is None or s_prev is None or s_prev <= entry.sigma:
            return [(1.0, entry.last)]
        # r(sigma) ~ r_c + a (r_c - r_p), a = how far past the last computed call this one is, in units
        # of the gap between the last two, damped by the run's progress.
        a = progress * (entry.sigma - sigma) / (s_prev - entry.sigma)
        return [(1.0 + a, entry.last), (-a, prev)]


def make(reuse: Reuse, curve: MagnitudeCurve) -> Estimator:
    """The estimator the config names."""
    if reuse is Reuse.SCALED:
        return ScaledReuse(curve)
    if reuse is Reuse.EXTRAPOLATED:
        return ExtrapolatedReuse()
    return PlainReuse()
