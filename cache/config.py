"""What the MagCache node decided, as one immutable value, and the choices it offers.

A cached run has three parts, each chosen here and each one file in this package:

* **when** the stack is computed (:class:`When`): the paper's threshold rule
  (``policy.py``), a plan that computes a given share of the calls and places
  them where the curve predicts the least error (``planner.py``), a uniform
  schedule, or an adaptive one that reacts to how much the residual changes
  (``adaptive.py``);
* **what** a skipped call reuses (:class:`Reuse`, ``estimators.py`` and one
  file per estimator): the last residual as it is, scaled by the curve's
  ratio, or forecast from several computed ones (a line or a parabola in
  sigma, a Chebyshev fit; FasterCache's damped line for older workflows);
* **which branches** a computed call runs (``cfg_cache``, ``branches.py``):
  both, or, on every other computed call, only the conditional one with the
  unconditional rebuilt from the cached difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..calibration.curve import MagnitudeCurve
from ..hooks.families import Family, Level
from .planner import ErrorModel, Objective
from .policy import SkipSettings


class When(str, Enum):
    """When the block stack is computed; the values are what the node shows."""

    TARGET = "speed target"  # compute total/speed calls, placed where the curve predicts least error
    RULE = "MagCache rule"  # the paper: accumulated |1 - ratio| below the threshold, at most K skips
    ADAPTIVE = "adaptive (AdaCache)"  # reuse count from the measured residual change, around the speed
    UNIFORM = "uniform"  # every k-th call, k from the speed


class Reuse(str, Enum):
    """What a skipped call adds in place of the stack; the values are what the node shows."""

    PLAIN = "plain"  # the last computed residual (the paper)
    SCALED = "scaled"  # the last residual times the magnitude ratio the curve predicts since it
    EXTRAPOLATED = "extrapolated (FasterCache)"  # linear in sigma from the last two, damped by progress
    LINEAR = "forecast: line"  # the line through the last two computed residuals, in sigma (undamped)
    QUADRATIC = "forecast: parabola"  # the parabola through the last three
    SPECTRAL = "forecast: Chebyshev fit (Spectrum)"  # a ridge fit over the last few, blended with the line


#: The node's defaults: the combination the forecasts benchmark found best over its protocol matrix
#: (benchmarks/results/RESULTS.md, embedded model, 16 pairs, euler 50 / uni_pc 30 / dpmpp_2m 20 /
#: res_multistep 30 steps): the speed target planned with the vector error model, skipped calls filled with
#: the undamped line through the last two computed residuals, no CFG-Cache. See README "Benchmarks".
DEFAULT_WHEN = When.TARGET
DEFAULT_SPEED = 2.0
DEFAULT_REUSE = Reuse.LINEAR
DEFAULT_CFG_CACHE = False


def recommended_retention(when: When, curve_retention: float, calibrated: bool) -> float:
    """The retention "recommended by the curve" for a schedule.

    The paper's rule gets the curve's: its error estimate barely grows where
    the curve is flat, so without retention it would spend its skips in the
    first, layout-setting steps. The speed schedules get none with a curve
    MagCache Calibrate recorded on the user's own model (``calibrated``: it
    carries direction changes and the residual's trajectory, so the planner
    knows that model's first steps): they place every computed call
    themselves, and measured better without on the embedded model
    (benchmarks/results/RESULTS.md). With a published preset nothing we can
    measure shows what a skip in the first steps does to a real picture's
    layout, so it keeps the curve's retention, as every method validated on
    real models protects those steps (MagCache 20%, EasyCache 15%).
    """
    return 0.0 if when is not When.RULE and calibrated else curve_retention


#: Fraction of the schedule within which a call counts as on a window bound (1.5 of 1000 model timesteps).
PERCENT_SLACK = 0.0015


@dataclass(frozen=True)
class MagCacheConfig:
    """What the node decided; immutable, shared by every run of the patched model.

    ``threshold`` and ``max_skips`` (K) drive the rule; ``speed`` (calls per
    computed call, block-stack and branch savings together) drives the other
    schedules, which also keep at most K skips in a row. ``retention``: the
    first fraction of the schedule is always computed; ``start``/``end``
    narrow the skippable window further.
    """

    curve: MagnitudeCurve
    family: Family
    threshold: float
    max_skips: int
    retention: float
    start: float = 0.0
    end: float = 1.0
    offload_cache: bool = False
    level: Level = Level.BLOCK
    when: When = When.RULE
    speed: float = DEFAULT_SPEED
    reuse: Reuse = Reuse.PLAIN
    cfg_cache: bool = False
    #: How the speed-target planner predicts the error of a reuse (the benchmark compares them).
    error_model: ErrorModel = ErrorModel.DIRECTION
    #: What the speed-target planner minimises over the run's reuse segments.
    objective: Objective = Objective.SUM
    #: The node's id in the page, where the plan and the summary of each run are shown (None: log only).
    node_id: str | None = None

    def settings_for(self, model_sampling: Any) -> SkipSettings:
        """The rule's settings with the window resolved to sigmas of this model's sampling."""
        skip_below, compute_below = self.window(model_sampling)
        return SkipSettings(self.threshold, self.max_skips, skip_below, compute_below)

    def window(self, model_sampling: Any) -> tuple[float, float]:
        """The skippable window as sigmas ``(skip_below, compute_below)`` of this model's sampling.

        A call whose place on the schedule is within :data:`PERCENT_SLACK` of
        a bound counts as on it: schedulers land calls on the model's own
        timestep grid (1000 points), so the call meant for "20%" of 30 steps
        sits at 19.9%; it is the first skippable call, as it is at 50 steps.
        """
        first_skippable = max(self.retention, self.start)
        skip_below = float(model_sampling.percent_to_sigma(max(first_skippable - PERCENT_SLACK, 0.0)))
        if self.end >= 1.0:
            return skip_below, 0.0
        return skip_below, float(model_sampling.percent_to_sigma(max(self.end - PERCENT_SLACK, 0.0)))
