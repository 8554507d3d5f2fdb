"""The magnitude curve: how the block-stack residual shrinks along the noise schedule.

A calibration records, at every model call, the ratio ``g = ||r_t|| / ||r_prev||``
of the residual ``r = blocks(x) - x`` to the previous call's. We store the ratios
against the noise level (sigma) at which they were measured, not against the
step number, because the magnitude of ``r`` is a property of where the sample is
on the schedule. Summing ``log g`` gives a log-magnitude profile ``L(sigma)``; the
ratio for any transition ``sigma_a -> sigma_b`` is then ``exp(L(sigma_b) - L(sigma_a))``.
One curve thus serves any step count, scheduler, denoise, split sampler, and
samplers that call the model several times per step.

This module knows nothing of ComfyUI or torch: it is plain arithmetic on arrays.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Conditioning roles a curve may describe. Role 0 of ComfyUI's ``cond_or_uncond``
#: is the positive conditioning, every other role uses the ``uncond`` curve.
ROLES: tuple[str, ...] = ("cond", "uncond")


class CurveError(ValueError):
    """A curve is unusable; the message names the curve and the problem."""


@dataclass(frozen=True)
class RoleCurve:
    """Ratios of one conditioning role, indexed by sigma.

    ``sigma`` holds the noise levels of consecutive model calls, strictly
    decreasing. ``ratio[i]`` is the magnitude ratio of the residual at
    ``sigma[i + 1]`` to the one at ``sigma[i]``, so it has one entry fewer.
    ``ratio_std`` and ``cosine_distance`` are optional per-transition spreads
    that calibrations record to judge fit; decisions use ``ratio`` only.
    """

    sigma: tuple[float, ...]
    ratio: tuple[float, ...]
    ratio_std: tuple[float, ...] | None = None
    cosine_distance: tuple[float, ...] | None = None
    # Derived once: cumulative log magnitude at each sigma, ascending-sigma order
    # for bisection (the hot path calls ``log_magnitude`` once per model call).
    _asc_sigma: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _asc_logmag: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        logmag = [0.0]
        for g in self.ratio:
            # NaN for a non-positive ratio: ``validate`` reports it with a name.
            logmag.append(logmag[-1] + (math.log(g) if g > 0 else math.nan))
        object.__setattr__(self, "_asc_sigma", tuple(reversed(self.sigma)))
        object.__setattr__(self, "_asc_logmag", tuple(reversed(logmag)))

    def validate(self, where: str) -> None:
        """Raise :class:`CurveError` naming ``where`` if the arrays are unusable."""
        n = len(self.sigma)
        if n < 2:
            raise CurveError(f"{where}: needs at least 2 sigmas, has {n}")
        if len(self.ratio) != n - 1:
            raise CurveError(
                f"{where}: has {n} sigmas but {len(self.ratio)} ratios; expected {n - 1} "
                "(one ratio per transition between consecutive sigmas)"
            )
        sig = np.asarray(self.sigma, dtype=np.float64)
        if not np.all(np.isfinite(sig)) or np.any(sig < 0):
            raise CurveError(f"{where}: sigmas must be finite and >= 0")
        if np.any(np.diff(sig) >= 0):
            raise CurveError(f"{where}: sigmas must be strictly decreasing (highest noise first)")
        for label, values in (
            ("ratio", self.ratio),
            ("ratio_std", self.ratio_std),
            ("cosine_distance", self.cosine_distance),
        ):
            if values is None:
                continue
            arr = np.asarray(values, dtype=np.float64)
            if arr.shape != (n - 1,):
                raise CurveError(f"{where}: {label} has {arr.size} entries, expected {n - 1}")
            if not np.all(np.isfinite(arr)):
                raise CurveError(f"{where}: {label} contains NaN or infinite values")
            if label == "ratio" and np.any(arr <= 0):
                raise CurveError(f"{where}: ratios must be positive (found {float(arr.min()):g})")
            if label != "ratio" and np.any(arr < 0):
                raise CurveError(f"{where}: {label} must be >= 0")

    def log_magnitude(self, sigma: float) -> float:
        """``L(sigma)``: cumulative log ratio, linear in sigma between samples.

        Outside the calibrated range the end segments are extended linearly, so
        a run that goes below the lowest calibrated sigma still sees the steep
        fall of the last steps instead of a flat (error-free) profile.
        """
        xs, ys = self._asc_sigma, self._asc_logmag
        i = bisect_left(xs, sigma)
        i = min(max(i, 1), len(xs) - 1)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (sigma - x0) / (x1 - x0)

    def transition_ratio(self, sigma_from: float, sigma_to: float) -> float:
        """Estimated ``||r(sigma_to)|| / ||r(sigma_from)||``."""
        return math.exp(self.log_magnitude(sigma_to) - self.log_magnitude(sigma_from))


#: Elements of the residual a calibration keeps per call (a stratified sample; the planner's measured cost).
SKETCH_SIZE = 2048


@dataclass(frozen=True, eq=False)
class Trajectory:
    """The residual itself along one calibration run, as a fixed sample of its elements at each call.

    ``values[i]`` is the same :data:`SKETCH_SIZE` elements (one per equal
    stretch of the flattened residual, at a seeded offset) at ``sigma[i]``.
    Errors of a forecast measured on the sample estimate those on the whole
    residual: each element stands for its stretch. The speed-target planner
    measures the forecast's error on it instead of predicting it from ratios.
    """

    sigma: tuple[float, ...]
    values: np.ndarray  # (len(sigma), sample size), float32

    def validate(self, where: str) -> None:
        v = self.values
        if v.ndim != 2 or v.shape[0] != len(self.sigma) or not 1 <= v.shape[1] <= 65536:
            raise CurveError(f"{where}: trajectory must be (calls, 1..65536) with one row per sigma, "
                             f"has shape {tuple(v.shape)} for {len(self.sigma)} sigmas")
        if len(self.sigma) < 2 or np.any(np.diff(np.asarray(self.sigma)) >= 0):
            raise CurveError(f"{where}: trajectory sigmas must be at least 2, strictly decreasing")
        if not np.all(np.isfinite(v)) or not np.all(np.isfinite(self.sigma)):
            raise CurveError(f"{where}: trajectory holds NaN or infinite values")

    def at(self, sigma: float) -> np.ndarray:
        """The sampled residual at ``sigma``, linear between recorded calls, the nearest end outside them."""
        xs = self.sigma
        if sigma >= xs[0]:
            return self.values[0].astype(np.float64)
        if sigma <= xs[-1]:
            return self.values[-1].astype(np.float64)
        i = len(xs) - bisect_left(tuple(reversed(xs)), sigma)  # xs[i - 1] > sigma >= xs[i]
        i = min(max(i, 1), len(xs) - 1)
        t = (xs[i - 1] - sigma) / (xs[i - 1] - xs[i])
        return (1.0 - t) * self.values[i - 1].astype(np.float64) + t * self.values[i].astype(np.float64)


@dataclass(frozen=True)
class MagnitudeCurve:
    """A named calibration: one :class:`RoleCurve` per conditioning role.

    A curve recorded without CFG has only ``cond``; the uncond role then uses it
    too. ``metadata`` holds provenance (source, schedule assumed, architecture,
    model fingerprint, sampler settings); it is informative, never executed.
    """

    name: str
    roles: dict[str, RoleCurve]
    metadata: dict[str, Any] = field(default_factory=dict)
    #: The residual sample along the newest calibration run, per role (MagCache Calibrate records it; the
    #: published presets have none).
    trajectories: dict[str, Trajectory] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        where = f"curve '{self.name}'"
        if "cond" not in self.roles:
            raise CurveError(f"{where}: has no 'cond' role")
        for role, tr in self.trajectories.items():
            if role not in self.roles:
                raise CurveError(f"{where}: a trajectory for role '{role}', which the curve does not have")
            tr.validate(f"{where}, role '{role}'")
        unknown = set(self.roles) - set(ROLES)
        if unknown:
            raise CurveError(f"{where}: unknown roles {sorted(unknown)}; expected {list(ROLES)}")
        for role, rc in self.roles.items():
            rc.validate(f"{where}, role '{role}'")
        uncond = self.roles.get("uncond")
        if uncond is not None:
            # Both roles are measured at the same model calls, so a curve whose
            # roles disagree on the grid was assembled wrongly.
            cond = self.roles["cond"]
            if uncond.sigma != cond.sigma:
                raise CurveError(
                    f"{where}: roles 'cond' and 'uncond' must share one sigma grid (cond has {len(cond.sigma)} "
                    f"sigmas {cond.sigma[0]:g}..{cond.sigma[-1]:g}, uncond {len(uncond.sigma)} "
                    f"sigmas {uncond.sigma[0]:g}..{uncond.sigma[-1]:g})"
                )

    def role(self, cond_or_uncond: int) -> RoleCurve:
        """The curve for ComfyUI's ``cond_or_uncond`` index (0 = cond)."""
        if cond_or_uncond == 0:
            return self.roles["cond"]
        return self.roles.get("uncond", self.roles["cond"])

    def trajectory(self, cond_or_uncond: int) -> Trajectory | None:
        """The recorded residual sample for that role (the cond's where the uncond has none), or None."""
        if cond_or_uncond == 0:
            return self.trajectories.get("cond")
        return self.trajectories.get("uncond", self.trajectories.get("cond"))

    @property
    def level(self) -> str:
        """Where the curve was measured: "block" (the block stack's residual) or "output" (the model's).

        Curves without the key (the published presets, calibrations of pack
        versions before 0.2) were measured on the block stack.
        """
        return str(self.metadata.get("level", "block"))

    @property
    def steps(self) -> int:
        """Number of model calls per role the curve was recorded from."""
        return len(self.roles["cond"].sigma)


def role_curve_from_ratios(sigmas: list[float], ratios: list[float], **spreads: Any) -> RoleCurve:
    """Build a :class:`RoleCurve` from per-call measurements.

    ``ratios[i]`` belongs to ``sigmas[i]`` and compares it to the previous call;
    ``ratios[0]`` has no predecessor and is dropped. Calls at a repeated sigma
    (second-order samplers) are merged by multiplying their ratios into the
    transition that reaches that sigma, so the profile stays a function of sigma.
    """
    if len(sigmas) != len(ratios):
        raise CurveError(f"{len(sigmas)} sigmas but {len(ratios)} ratios")
    out_sigma: list[float] = []
    out_ratio: list[float] = []
    out_spreads: dict[str, list[float]] = {k: [] for k in spreads}
    for i, s in enumerate(sigmas):
        s = float(s)
        if not out_sigma:
            out_sigma.append(s)
            continue
        if s >= out_sigma[-1]:
            # Same or higher noise than the previous call: fold into the last
            # transition (or ignore at the start) instead of breaking monotonicity.
            if out_ratio:
                out_ratio[-1] *= float(ratios[i])
            continue
        out_sigma.append(s)
        out_ratio.append(float(ratios[i]))
        for k, v in spreads.items():
            out_spreads[k].append(float(v[i]))
    return RoleCurve(
        sigma=tuple(out_sigma),
        ratio=tuple(out_ratio),
        **{k: tuple(v) for k, v in out_spreads.items()},
    )
