"""An adaptive schedule after AdaCache (Kahatapitiya et al. 2024): reuse longer where the features change less.

AdaCache decides per generation: after each computed call it measures how much
the residual changed since the previous computed call and looks the change up
in a small codebook of reuse counts: little change, reuse for many calls; a
lot, recompute soon. Its motion regularisation (MoReg) spends more compute on
videos whose latent moves more.

Here the codebook is relative, so one codebook serves every model: the change
is divided by the run's running mean of changes, and the codebook scales a
base reuse count. The base follows the speed the user asked for from what is
left of the run (calls left in the window / computed calls the budget still
allows), so the run lands near that speed while the placement adapts to the
sample. Motion enters the same way: the latent's frame-to-frame difference
relative to the run's mean multiplies the change (video only; 0 for images).

The engine feeds :meth:`AdaptiveSchedule.observe` two scalars read once per
computed evaluation; nothing here touches torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .policy import SkipSettings

#: (relative change below, reuse factor): the codebook. A change at the run's
#: mean reuses the base count; half of it twice as long; twice of it none.
CODEBOOK: tuple[tuple[float, float], ...] = ((0.5, 2.0), (0.8, 1.5), (1.25, 1.0), (2.0, 0.5), (math.inf, 0.0))
#: How strongly the latent's motion (relative to the run's mean) raises the change: AdaCache's MoReg.
MOTION_GAIN = 0.5


@dataclass
class AdaptiveSchedule:
    """Reuse counts from the measured change, around ``budget`` computed calls of ``calls``."""

    settings: SkipSettings
    calls: tuple[float, ...]
    budget: int
    measures: bool = True
    _reuse_left: int = 0
    _seen: int = 0  # evaluations decided so far
    _computed: int = 0
    _changes: list[float] = field(default_factory=list)
    _motions: list[float] = field(default_factory=list)
    _carry: float = 0.0  # fractional reuse carried to the next decision, so fractional bases average out
    _last_sigma: float | None = None

    def _base(self) -> float:
        """Reuses per computed call that spend the remaining budget evenly over the remaining calls."""
        left = max(len(self.calls) - self._seen, 0)
        budget_left = max(self.budget - self._computed, 1)
        return max(left / budget_left - 1.0, 0.0)

    def decide(self, sigma: float, roles: tuple[int, ...]) -> bool:
        repeat = self._last_sigma is not None and abs(sigma - self._last_sigma) <= 1e-6 * max(abs(sigma), 1.0)
        self._last_sigma = sigma
        if not repeat:
            self._seen += 1
        skip = self._computed > 0 and self.settings.in_window(sigma) and self._reuse_left > 0
        if skip:
            if not repeat:
                self._reuse_left -= 1
            return True
        self._computed += 1
        # Until the measurement of this call arrives (observe), reuse at the base rate: the plan shown before
        # sampling, and what a run does when nothing is measured.
        base = self._base()
        self._reuse_left = min(int(base), self._cap(base))
        return False

    def observe(self, change: float, motion: float) -> None:
        """Set the reuse count after a computed call from its measured change and the latent's motion."""
        if not (math.isfinite(change) and math.isfinite(motion)):
            self._set_reuse(0.0)
            return
        self._changes.append(change)
        if motion > 0:
            self._motions.append(motion)
        mean_change = sum(self._changes) / len(self._changes)
        relative = change / mean_change if mean_change > 0 else 1.0
        if self._motions:
            mean_motion = sum(self._motions) / len(self._motions)
            if mean_motion > 0:
                relative *= 1.0 + MOTION_GAIN * (motion / mean_motion - 1.0)
        factor = next(f for bound, f in CODEBOOK if relative < bound)
        self._set_reuse(factor)

    def _cap(self, base: float) -> int:
        """K, raised (like the planner's) only as far as the base rate needs: the speed is what was asked."""
        return max(self.settings.max_skips, math.ceil(base))

    def _set_reuse(self, factor: float) -> None:
        base = self._base()
        cap = self._cap(base)
        wanted = base * factor + self._carry
        count = min(int(wanted), cap)
        self._carry = wanted - count if count < cap else 0.0
        self._reuse_left = count
