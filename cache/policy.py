"""The MagCache decision rule, as pure arithmetic on the curve and the sigmas.

After the last computed call ``c``, reusing its residual for calls ``c+1..c+j``
costs an estimated error ``|1 - prod(g)|`` at call ``c+j``, where the product of
magnitude ratios is read off the sigma-indexed curve. The running sum ``E`` of
those errors decides: skip while ``E < threshold`` and the run of consecutive
skips is at most ``K``; otherwise compute and start over. ``threshold = 0``
therefore never skips.

Each conditioning role (cond, uncond) accumulates its own error from its own
curve. ComfyUI usually evaluates cond and uncond of one model call together,
so a call is skipped only when every role present is within its budget; the
roles are then always computed together and their states stay in step.

Nothing here touches ComfyUI or torch, so the rule is tested on its own, and
the whole plan of a run can be computed before sampling starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..calibration.curve import MagnitudeCurve

#: Sigmas reach the rule as float32 (the sampler's tensor) while the window's
#: bounds are computed in float64: a call exactly on a bound (the 10th of 50
#: steps at retention 0.2) differs from it in the 7th digit. Bounds are
#: compared with this relative slack so a call on the bound is where the
#: fraction puts it.
SIGMA_SLACK = 1e-5


class Schedule(Protocol):
    """When the block stack is computed: one decision per model evaluation.

    ``measures``: the schedule wants the residual's change and the latent's
    motion after each computed evaluation (:meth:`observe`); the engine then
    reads those two scalars once per computed evaluation, never per block.
    """

    measures: bool

    def decide(self, sigma: float, roles: tuple[int, ...]) -> bool:
        """Return True to skip the evaluation at ``sigma`` for conditioning ``roles``; commits the answer."""
        ...

    def observe(self, change: float, motion: float) -> None:
        """The relative change of the residual just computed, and the latent's motion (0 for images)."""
        ...


@dataclass(frozen=True)
class SkipSettings:
    """User-facing settings of the rule, resolved to sigma bounds for one run.

    ``skip_below_sigma``: calls at a higher sigma are always computed (the
    retention ratio and the start fraction, whichever protects more).
    ``compute_below_sigma``: calls at a lower sigma are always computed (the
    end fraction). Sigmas are those of the model's own sampling schedule.
    """

    threshold: float
    max_skips: int
    skip_below_sigma: float
    compute_below_sigma: float = 0.0

    def in_window(self, sigma: float) -> bool:
        """Whether a call at ``sigma`` may be skipped at all: ``skip_below >= sigma > compute_below``."""
        upper = self.skip_below_sigma * (1.0 + SIGMA_SLACK)
        return self.compute_below_sigma * (1.0 + SIGMA_SLACK) < sigma <= upper


@dataclass
class _RoleState:
    last_sigma: float | None = None
    error: float = 0.0
    run: int = 0


@dataclass
class SkipPolicy:
    """Decides, call by call, whether the block stack may be skipped.

    One instance lives for one sampling run. ``decide`` both answers and
    commits the answer to the per-role state, exactly as the run will act.
    """

    curve: MagnitudeCurve
    settings: SkipSettings
    _roles: dict[int, _RoleState] = field(default_factory=dict)
    measures: bool = False

    def observe(self, change: float, motion: float) -> None:
        """The rule reads only the curve."""

    def decide(self, sigma: float, roles: tuple[int, ...]) -> bool:
        """Return True to skip the call at ``sigma`` for conditioning ``roles``."""
        s = self.settings
        states = [self._roles.setdefault(r, _RoleState()) for r in roles]
        skip = s.in_window(sigma) and s.threshold > 0 and bool(states)
        updated: list[tuple[float, int]] = []
        if skip:
            for role, st in zip(roles, states):
                if st.last_sigma is None:
                    skip = False
                    break
                ratio = self.curve.role(role).transition_ratio(st.last_sigma, sigma)
                # The error of reusing r_c at this call adds to what the run
                # of skips since c has already cost.
                error = st.error + abs(1.0 - ratio)
                if error >= s.threshold or st.run + 1 > s.max_skips:
                    skip = False
                    break
                updated.append((error, st.run + 1))
        if skip:
            for st, (error, run) in zip(states, updated):
                st.error, st.run = error, run
        else:
            for st in states:
                st.last_sigma, st.error, st.run = sigma, 0.0, 0
        return skip


@dataclass(frozen=True)
class Plan:
    """The decisions a run will take, computed when sampling starts."""

    sigmas: tuple[float, ...]
    skips: tuple[bool, ...]

    @property
    def computed(self) -> int:
        return sum(not s for s in self.skips)

    @property
    def total(self) -> int:
        return len(self.skips)

    def pattern(self) -> str:
        """The plan as one character per call: ``#`` computed, ``.`` skipped."""
        return "".join("." if s else "#" for s in self.skips)

    @property
    def speedup(self) -> float:
        """Ideal speedup of the block stack: calls / calls that run it."""
        return self.total / self.computed if self.computed else 1.0


def simulate(schedule: Schedule, sigmas: list[float], roles: tuple[int, ...]) -> Plan:
    """The decisions ``schedule`` (a fresh one) takes over a schedule with one model call per step.

    ``sigmas`` is the sampler's schedule; the model is called at every entry
    but the last (the target, usually 0). Samplers that call the model more
    than once per step follow the same schedule; the plan is then an estimate
    and the run's summary line gives the actual counts. An adaptive schedule's
    plan is what it does before it has measured anything.
    """
    calls = [float(s) for s in sigmas[:-1]]
    return Plan(sigmas=tuple(calls), skips=tuple(schedule.decide(s, roles) for s in calls))


def plan_run(curve: MagnitudeCurve, settings: SkipSettings, sigmas: list[float], roles: tuple[int, ...]) -> Plan:
    """The rule's plan over ``sigmas`` (see :func:`simulate`)."""
    return simulate(SkipPolicy(curve, settings), sigmas, roles)
