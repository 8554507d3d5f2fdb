"""What a skipped call adds in place of the block stack (or the model): the estimators and their cache entry.

An estimator turns what was cached into a list of ``(coefficient, tensor)``
terms; the hooks add them to the stack's input with one allocation
(:func:`hooks.hidden.combine`). Coefficients are plain floats computed from the
curve and the sigmas, so no estimator reads anything from the device.

Here the two that keep one residual:

* :class:`PlainReuse` (the paper): the last computed residual, as it is.
* :class:`ScaledReuse`: the last residual times the magnitude ratio the curve
  predicts from its sigma to this call's. The law says the residual's size
  changes by that ratio; its direction is what the reuse cannot know.

The forecasts from several computed residuals live one file each:
``extrapolated.py`` (FasterCache's damped line), ``taylor.py`` (the
polynomial through the last two or three computed residuals, in sigma) and
``spectrum.py`` (a Chebyshev fit over the run's computed residuals);
``estimators.py`` maps the node's choice to one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..calibration.curve import MagnitudeCurve
from ..hooks import hidden

Terms = list[tuple[float, hidden.Hidden]]


@dataclass(frozen=True)
class Entry:
    """The computed residuals of one conditioning (or batch), oldest first, each with its sigma.

    An estimator says how many it needs (``Estimator.keeps``); the entry holds
    at most that many, so plain reuse keeps one residual and a forecast its
    history. Sigmas fall strictly along a run.
    """

    points: tuple[tuple[float, hidden.Hidden], ...]

    @property
    def last(self) -> hidden.Hidden:
        return self.points[-1][1]

    @property
    def sigma(self) -> float:
        return self.points[-1][0]

    def sigmas(self) -> list[float]:
        return [s for s, _ in self.points]

    def push(self, residual: hidden.Hidden, sigma: float, keep: int) -> Entry:
        """This entry with ``residual`` at ``sigma`` appended, at most ``keep`` residuals in all.

        A residual at a sigma not below the last one (heun's second call at a
        repeated sigma) or of another shape starts the history over.
        """
        if sigma >= self.sigma or hidden.shape(residual) != hidden.shape(self.last):
            return Entry(((sigma, residual),))
        return Entry((*self.points, (sigma, residual))[-max(keep, 1):])


def entry(residual: hidden.Hidden, sigma: float) -> Entry:
    return Entry(((sigma, residual),))


class Estimator(Protocol):
    """``keeps``: how many computed residuals per conditioning the estimator needs (the cache's memory)."""

    keeps: int

    def terms(self, entry: Entry, sigma: float, progress: float) -> Terms:
        """What a call at ``sigma`` (``progress`` 0..1 through the run) adds, from ``entry``."""
        ...


class PlainReuse:
    keeps = 1

    def terms(self, entry: Entry, sigma: float, progress: float) -> Terms:
        return [(1.0, entry.last)]


@dataclass
class ScaledReuse:
    curve: MagnitudeCurve
    keeps = 1

    def terms(self, entry: Entry, sigma: float, progress: float) -> Terms:
        # The cond curve: a batch holds cond and uncond together and gets one coefficient;
        # the roles' ratios differ by far less than either differs from 1 where calls are skipped.
        return [(self.curve.role(0).transition_ratio(entry.sigma, sigma), entry.last)]


def weighted(entry: Entry, weights: list[float]) -> Terms:
    """Terms from one weight per point of ``entry``, newest first (so a weight of exactly 1 adds it bit-exactly)."""
    return [(w, t) for w, (_, t) in reversed(list(zip(weights, entry.points))) if w != 0.0] or [(1.0, entry.last)]
