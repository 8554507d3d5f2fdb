"""Calibration runs: what one recorded generation contributes, and how several make one curve.

A saved calibration keeps every run it was built from in its JSON metadata, so
that a later run into the same name (another prompt, another seed) can be added
and the spread across runs stays visible. The tensors MagCache reads are
recomputed from all the runs whenever one is added.

Combining is done on the sigma axis, like everything else about curves: each
run's log-magnitude profile is read off at the transitions of one common grid,
so runs with different step counts or schedulers combine correctly.

Plain arithmetic on arrays: no torch, no ComfyUI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from .curve import ROLES, CurveError, MagnitudeCurve, RoleCurve

#: ``metadata["source"]`` of curves written by the calibration node.
SOURCE = "MagCache Calibrate"
#: Metadata keys that must agree before runs are combined: runs of one curve come from one model.
MODEL_KEYS = ("architecture", "level", "model_config", "fingerprint")
_FIELDS = ("sigma", "ratio", "ratio_std", "cosine_distance")
# Relative slack when deciding whether a run covers a transition: sigmas of the
# same schedule computed twice may differ in the last bits.
_TOL = 1e-6


@cache
def pack_version() -> str:
    """The pack's version, from its ``pyproject.toml`` (recorded in every calibration)."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        for line in pyproject.read_text().splitlines():
            if line.startswith("version"):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "unknown"


@dataclass(frozen=True)
class CalibrationRun:
    """One sampling run: a curve per conditioning role and the settings it ran with.

    ``settings`` holds what is needed to judge fit later (date, sampler,
    scheduler, steps, cfg, seed, sigmas, pack version); it is informative only.
    """

    roles: dict[str, RoleCurve]
    settings: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (floats round-trip exactly through JSON)."""
        roles = {role: {f: list(getattr(rc, f)) for f in _FIELDS} for role, rc in self.roles.items()}
        return {**self.settings, "roles": roles}

    @classmethod
    def from_json(cls, data: Any, where: str) -> CalibrationRun:
        """Rebuild and validate a run stored by :meth:`to_json`; raise naming ``where``."""
        if not isinstance(data, dict) or not isinstance(data.get("roles"), dict):
            raise CurveError(f"{where}: a stored run must be an object with 'roles'")
        roles: dict[str, RoleCurve] = {}
        for role, arrays in data["roles"].items():
            if role not in ROLES or not isinstance(arrays, dict):
                raise CurveError(f"{where}: stored run has an unknown role {role!r}")
            missing = [f for f in _FIELDS if not isinstance(arrays.get(f), list)]
            if missing:
                raise CurveError(f"{where}: stored run, role '{role}', lacks {missing}")
            try:
                rc = RoleCurve(**{f: tuple(float(v) for v in arrays[f]) for f in _FIELDS})
            except (TypeError, ValueError):
                raise CurveError(f"{where}: stored run, role '{role}', holds values that are not numbers") from None
            rc.validate(f"{where}, stored run, role '{role}'")
            roles[role] = rc
        if "cond" not in roles:
            raise CurveError(f"{where}: stored run has no 'cond' role")
        return cls(roles=roles, settings={k: v for k, v in data.items() if k != "roles"})


def _covers(sample: RoleCurve, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Which transitions ``hi -> lo`` lie inside the sigma range ``sample`` was measured over."""
    slack = _TOL * max(abs(sample.sigma[0]), 1.0)
    return (hi <= sample.sigma[0] + slack) & (lo >= sample.sigma[-1] - slack)


def _on_grid(sample: RoleCurve, grid: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    """``sample``'s ratio, ratio_std, cosine distance and coverage at the transitions of ``grid``.

    On its own grid a sample gives its measured values unchanged. Elsewhere the
    ratio is read off its log-magnitude profile (so it is exact for any
    coarser grid), and the spreads are interpolated at the transition's end.
    """
    if sample.ratio_std is None or sample.cosine_distance is None:
        raise CurveError("only measurements with ratio_std and cosine_distance can be combined")
    if sample.sigma == grid:
        ones = np.ones(len(grid) - 1, dtype=bool)
        return (np.asarray(sample.ratio), np.asarray(sample.ratio_std), np.asarray(sample.cosine_distance), ones)
    hi, lo = np.asarray(grid[:-1]), np.asarray(grid[1:])
    ratio = np.array([sample.transition_ratio(a, b) for a, b in zip(hi, lo)])
    ends = np.asarray(sample.sigma[1:])[::-1]  # ascending, as np.interp wants
    std = np.interp(lo, ends, np.asarray(sample.ratio_std)[::-1])
    cos = np.interp(lo, ends, np.asarray(sample.cosine_distance)[::-1])
    return ratio, std, cos, _covers(sample, hi, lo)


def combine_role_curves(samples: Sequence[RoleCurve], grid: tuple[float, ...] | None = None) -> RoleCurve:
    """One curve from several measurements of the same role.

    ``grid`` is the result's sigmas; by default the grid of the sample that
    spans the widest sigma range (the most calls on a tie). Each sample counts
    at the transitions inside the range it was measured over. Per transition:
    ``ratio`` is the samples' mean; ``ratio_std`` is the spread of the per-token
    ratio over all samples, ``sqrt(mean(std_k**2) + var_k(ratio_k))``, which for a
    single sample is its own token spread; ``cosine_distance`` is the mean.
    """
    if not samples:
        raise CurveError("nothing to combine: no measurements")
    if grid is None:
        grid = max(samples, key=lambda s: (s.sigma[0] - s.sigma[-1], len(s.sigma))).sigma
    parts = [_on_grid(s, grid) for s in samples]
    ratio, std, cos, mask = (np.stack([p[i] for p in parts]) for i in range(4))
    count = mask.sum(axis=0)
    if np.any(count == 0):
        j = int(np.argmin(count))
        raise CurveError(
            f"no measurement covers the transition sigma {grid[j]:g} -> {grid[j + 1]:g}: runs combined into one "
            "curve must cover the same part of the schedule"
        )
    w = mask / count
    mean = (ratio * w).sum(axis=0)
    spread = np.sqrt((std**2 * w).sum(axis=0) + ((ratio - mean) ** 2 * w).sum(axis=0))
    return RoleCurve(
        sigma=tuple(grid),
        ratio=tuple(float(v) for v in mean),
        ratio_std=tuple(float(v) for v in spread),
        cosine_distance=tuple(float(v) for v in (cos * w).sum(axis=0)),
    )


def combine_roles(samples: Mapping[str, Sequence[RoleCurve]]) -> dict[str, RoleCurve]:
    """Combine measurements role by role; ``uncond`` is put on the ``cond`` grid.

    A curve file keeps both roles on one grid, so the unconditional pass is
    always read off at the conditional pass's sigmas.
    """
    if not samples.get("cond"):
        raise CurveError("no measurement of the positive conditioning ('cond'): nothing to calibrate")
    roles = {"cond": combine_role_curves(samples["cond"])}
    if samples.get("uncond"):
        roles["uncond"] = combine_role_curves(samples["uncond"], grid=roles["cond"].sigma)
    return roles


def curve_from_runs(name: str, runs: Sequence[CalibrationRun], model: Mapping[str, Any]) -> MagnitudeCurve:
    """The curve of a saved calibration: all runs combined, every run kept in the metadata.

    ``model`` holds the :data:`MODEL_KEYS` of the calibrated model.
    """
    samples: dict[str, list[RoleCurve]] = {}
    for run in runs:
        for role, rc in run.roles.items():
            samples.setdefault(role, []).append(rc)
    metadata = {
        "source": SOURCE,
        **{k: model[k] for k in MODEL_KEYS if k in model},
        "pack_version": pack_version(),
        "date": max(str(r.settings.get("date", "")) for r in runs),
        "runs": [r.to_json() for r in runs],
    }
    return MagnitudeCurve(name=name, roles=combine_roles(samples), metadata=metadata)


def runs_of(curve: MagnitudeCurve) -> list[CalibrationRun]:
    """The runs a saved calibration was built from; raise if it keeps none."""
    where = f"curve '{curve.name}'"
    stored = curve.metadata.get("runs")
    if not isinstance(stored, list) or not stored:
        raise CurveError(f"{where}: keeps no calibration runs (it was not written by {SOURCE})")
    return [CalibrationRun.from_json(r, where) for r in stored]


def model_mismatch(curve: MagnitudeCurve, model: Mapping[str, Any]) -> str | None:
    """Why runs of ``model`` cannot be added to ``curve``, or None when they can."""
    for key in MODEL_KEYS:
        saved = curve.level if key == "level" else curve.metadata.get(key)
        if saved != model.get(key):
            return f"{key} is {saved!r} in the saved curve but {model.get(key)!r} for this model"
    return None


def summary(curve: MagnitudeCurve) -> str:
    """One short line about a calibration: how much data, and what the ratio did."""
    cond = curve.roles["cond"]
    runs = curve.metadata.get("runs") or []
    text = f"{len(runs)} run(s), {len(cond.sigma)} calls, sigma {cond.sigma[0]:.3g} -> {cond.sigma[-1]:.3g}"
    for role, rc in curve.roles.items():
        ratio = np.asarray(rc.ratio)
        part = f"{role}: ratio {ratio[0]:.3f} -> {ratio[-1]:.3f} (min {ratio.min():.3f})"
        if rc.ratio_std is not None:
            part += f", spread +-{float(np.mean(rc.ratio_std)):.3f}"
        if rc.cosine_distance is not None:
            part += f", cosine distance {float(np.mean(rc.cosine_distance)):.3g}"
        text += f"; {part}"
    return text
