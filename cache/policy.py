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

from ..calibration.curve import MagnitudeCurve


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

    def decide(self, sigma: float, roles: tuple[int, ...]) -> bool:
        """Return True to skip the call at ``sigma`` for conditioning ``roles``."""
        s = self.settings
        states = [self._roles.setdefault(r, _RoleState()) for r in roles]
        in_window = s.compute_below_sigma <= sigma <= s.skip_below_sigma
        skip = in_window and s.threshold > 0 and bool(states)
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

    @property
    def speedup(self) -> float:
        """Ideal speedup of the block stack: calls / calls that run it."""
        return self.total / self.computed if self.computed else 1.0


def plan_run(curve: MagnitudeCurve, settings: SkipSettings, sigmas: list[float], roles: tuple[int, ...]) -> Plan:
    """Simulate the rule over a schedule with one model call per step.

    ``sigmas`` is the sampler's schedule; the model is called at every entry
    but the last (the target, usually 0). Samplers that call the model more
    than once per step follow the same rule; the plan is then an estimate and
    the run's summary line gives the actual counts.
    """
    policy = SkipPolicy(curve, settings)
    calls = [float(s) for s in sigmas[:-1]]
    return Plan(sigmas=tuple(calls), skips=tuple(policy.decide(s, roles) for s in calls))
