"""The calibration recorder: watches sampling runs and measures how the block stack's residual changes.

It hooks ComfyUI through the same layer as MagCache itself (``hooks``): the
family table, the block patches (only the first and last block, chained to
other nodes' patches) or the output wrapper, the per-run options, and the cut
of the residual ``r = blocks(x) - x`` to the image tokens with its checks.

* ``outer_sample_wrapper`` (``WrappersMP.OUTER_SAMPLE``): when sampling starts,
  checks that the run can be added to the saved curve of that name, creates a
  fresh :class:`Recording` and installs the hooks in the run's own copy of the
  model options; when sampling ends normally, turns the recording into a
  :class:`~.runs.CalibrationRun`, combines it with the runs already saved
  under the name, writes the file and logs where it went. A run that fails or
  is cancelled saves nothing; either way nothing is left.
* :class:`Recording` is the hooks' method: it never asks for a skip, and
  measures each residual it is handed against that conditioning's previous
  one. Blocks run exactly as they would without it, so the image is the
  normal, uncached one.

Per-call statistics stay on the device as small tensors and reach the host in
one transfer when the run ends: the recorder never waits on the device per block.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..hooks import hidden
from ..hooks.families import Family, Level
from ..hooks.host import arg, host_version
from ..hooks.sites import Batch, RunHooks
from ..hooks.wrappers import CALIBRATE_KEY, MAGCACHE_KEY, apply_model_wrapper, run_scope
from ..hooks.wrappers import attach as attach_wrappers
from . import catalog
from .curve import SKETCH_SIZE, CurveError, MagnitudeCurve, RoleCurve, Trajectory, role_curve_from_ratios
from .curve_file import load_curve, save_curve
from .runs import CalibrationRun, combine_roles, curve_from_runs, model_mismatch, pack_version, runs_of, summary

log = logging.getLogger("comfyui-magcache")

#: Key of the recorder's wrappers and of its entry in ``transformer_options``.
KEY = CALIBRATE_KEY


@dataclass(frozen=True)
class CalibrationTarget:
    """What the Calibrate node decided; shared by every run of the model it returned.

    ``model`` identifies the calibrated model (``architecture``, ``level``, ``model_config``
    and a ``fingerprint`` of family and sizes); runs are only ever combined with
    runs of the same model. ``combine`` adds each run to the saved curve of the
    same name; otherwise each run replaces it.
    """

    file_name: str
    family: Family
    level: Level
    model: dict[str, Any]
    combine: bool = True
    #: Called with the saved file and curve after each save (the node shows them in the page); None: log only.
    on_saved: Callable[[Path, MagnitudeCurve], None] | None = field(default=None, compare=False)


@dataclass
class _Call:
    """One conditioning's pass through the block stack."""

    key: Any
    role: int
    sigma: torch.Tensor
    stats: torch.Tensor | None  # mean ratio, token std of the ratio, mean cosine distance; None on the first call
    sketch: torch.Tensor  # the residual's sampled elements (``sample_indices``), float32, on the device


def sample_indices(numel: int, device: torch.device) -> torch.Tensor:
    """:data:`SKETCH_SIZE` element indices of a flattened residual: one per equal stretch, at a seeded offset.

    Seeded, so every call of a run samples the same elements; a stretch's
    element stands for it, so a sample's error estimates the whole's.
    """
    size = min(SKETCH_SIZE, numel)
    stretch = numel // size
    gen = torch.Generator().manual_seed(0)
    offsets = torch.randint(0, stretch, (size,), generator=gen) if stretch > 1 else torch.zeros(size, dtype=torch.long)
    return (torch.arange(size) * stretch + offsets).to(device)


def residual_stats(r: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """``[mean, std]`` over tokens of ``||r|| / ||previous||`` and the mean cosine distance, as one device tensor.

    Norms are taken over the last (channel) dimension, per token; every other
    dimension counts as tokens. Computed in float32 whatever the model's dtype.
    """
    a, b = r.float(), previous.float()
    na = torch.linalg.vector_norm(a, dim=-1)
    nb = torch.linalg.vector_norm(b, dim=-1)
    ratio = na / nb
    cosine = 1.0 - (a * b).sum(dim=-1) / (na * nb).clamp_min(1e-12)
    return torch.stack((ratio.mean(), ratio.std(correction=0), cosine.mean()))


@dataclass
class Recording:
    """Everything one calibration run has measured; created at its start, dropped at its end."""

    target: CalibrationTarget
    hooks: RunHooks = field(init=False)
    previous: dict[Any, torch.Tensor] = field(default_factory=dict)
    calls: list[_Call] = field(default_factory=list)
    indices: dict[tuple[int, torch.device], torch.Tensor] = field(default_factory=dict)  # by residual size
    unattributed: int = 0  # batches whose layout did not say which conditioning is where

    # -- the hooks' method: look, never skip -------------------------------------
    def begin_batch(self, batch: Batch) -> None:
        """Nothing to decide: every batch is computed."""

    def cached(self, batch: Batch, shape: tuple[tuple[int, ...], ...], device: torch.device) -> None:
        return None

    def end_batch(self, batch: Batch) -> None:
        """Nothing to count."""

    def disable(self, reason: str) -> None:
        """Inputs between blocks do not spoil a measurement; a failed check does (``hooks.broken``)."""

    def store(self, batch: Batch, residual: hidden.Hidden) -> None:
        """Record the residual of every conditioning in ``batch`` (no host sync).

        Of a (video, audio) pair the video part is measured: it is most of the
        work and what the picture shows.
        """
        residual = hidden.primary(residual)
        n = len(batch.roles)
        if n == 0 or len(batch.uuids) != n or residual.shape[0] % n:
            self.unattributed += 1
            return
        for key, role, part in zip(batch.uuids, batch.roles, residual.chunk(n)):
            prev = self.previous.get(key)
            stats = residual_stats(part, prev) if prev is not None and prev.shape == part.shape else None
            where = (part.numel(), part.device)
            if where not in self.indices:
                self.indices[where] = sample_indices(*where)
            sketch = part.reshape(-1)[self.indices[where]].float()
            self.calls.append(_Call(key=key, role=role, sigma=batch.sigma, stats=stats, sketch=sketch))
            self.previous[key] = part

    def measurements(self) -> dict[str, list[RoleCurve]]:
        """Per role, one :class:`RoleCurve` per conditioning; moves the statistics to the host once."""
        if not self.calls:
            return {}
        measured = [c.stats for c in self.calls if c.stats is not None]
        flat = torch.cat([torch.cat([c.sigma.float() for c in self.calls]), *measured]).cpu().tolist()
        sigmas, stats = flat[: len(self.calls)], flat[len(self.calls) :]
        series: dict[Any, tuple[int, list[list[float]]]] = {}
        j = 0
        for call, sigma in zip(self.calls, sigmas):
            role, rows = series.setdefault(call.key, (call.role, []))
            if call.stats is None:
                if not rows:  # a conditioning's first call has nothing to compare with
                    rows.append([sigma, 1.0, 0.0, 0.0])
                continue
            rows.append([sigma, *stats[3 * j : 3 * j + 3]])
            j += 1
        out: dict[str, list[RoleCurve]] = {}
        for role, rows in series.values():
            if len(rows) < 2:
                continue
            s, g, sd, cd = (list(col) for col in zip(*rows))
            out.setdefault("cond" if role == 0 else "uncond", []).append(
                role_curve_from_ratios(s, g, ratio_std=sd, cosine_distance=cd)
            )
        return out

    def trajectories(self) -> dict[str, Trajectory]:
        """Per role, the residual sample along the run of its first conditioning; one transfer to the host.

        A call at a sigma not below the one before (heun's second call) is left
        out, as the curve folds it: the trajectory is a function of sigma.
        """
        first: dict[int, Any] = {}
        for c in self.calls:
            first.setdefault(c.role, c.key)
        chosen = [c for c in self.calls if first.get(c.role) == c.key]
        if not chosen or len({c.sketch.numel() for c in chosen if c.role == chosen[0].role}) != 1:
            return {}
        sigmas = torch.cat([c.sigma.float().reshape(-1)[:1] for c in chosen]).cpu().tolist()
        out: dict[str, Trajectory] = {}
        for role in sorted(first):
            rows = [(s, c) for s, c in zip(sigmas, chosen) if c.role == role]
            kept: list[tuple[float, _Call]] = []
            for s, c in rows:
                if (not kept or s < kept[-1][0]) and c.sketch.numel() == rows[0][1].sketch.numel():
                    kept.append((s, c))
            if len(kept) < 2:
                continue
            values = torch.stack([c.sketch for _, c in kept]).cpu().numpy()
            out["cond" if role == 0 else "uncond"] = Trajectory(tuple(s for s, _ in kept), values)
        return out

    def free(self) -> None:
        self.previous.clear()
        self.calls.clear()
        self.indices.clear()


# -- run start and end -------------------------------------------------------


def _saved_runs(target: CalibrationTarget, path: Path, sigma_range: tuple[float, float]) -> list[CalibrationRun]:
    """Runs already saved under the target's name that this run may join; raise when it may not."""
    if not target.combine or not path.is_file():
        return []
    existing = load_curve(path)
    where = f"curve file '{path}'"
    try:
        runs = runs_of(existing)
    except CurveError as exc:
        raise CurveError(f"{where}: {exc}; set if_exists to 'replace' or pick another name") from None
    why = model_mismatch(existing, target.model)
    if why is not None:
        raise CurveError(
            f"{where}: was calibrated on another model ({why}). Pick another name, or set if_exists to "
            "'replace' to start this curve over"
        )
    cond = existing.roles["cond"]
    hi, lo = sigma_range
    if lo > cond.sigma[0] or hi < cond.sigma[-1]:
        raise CurveError(
            f"{where}: covers sigma {cond.sigma[0]:g} -> {cond.sigma[-1]:g}, this run {hi:g} -> {lo:g}; runs of one "
            "curve must cover the same part of the schedule (one name per model of a split sampler)"
        )
    return runs


def _sampler_name(sampler: Any) -> str:
    fn = getattr(sampler, "sampler_function", None)
    name = getattr(fn, "__name__", None) or type(sampler).__name__
    return name.removeprefix("sample_")


def _scheduler_name(model_sampling: Any, sigmas: torch.Tensor) -> str:
    """The ComfyUI scheduler that makes exactly these sigmas, or 'custom'."""
    import comfy.samplers

    steps = sigmas.numel() - 1
    for name in comfy.samplers.SCHEDULER_NAMES:
        try:
            candidate = comfy.samplers.calculate_sigmas(model_sampling, name, steps).cpu()
        except Exception:  # a scheduler that cannot make this schedule is simply not it
            continue
        if candidate.shape == sigmas.shape and torch.allclose(candidate.double(), sigmas.double(), rtol=1e-5):
            return name
    return "custom"


def _settings(guider: Any, sampler: Any, sigmas: torch.Tensor, seed: Any) -> dict[str, Any]:
    """What one run ran with, for the file's metadata."""
    model = guider.model_patcher.model
    model_sampling = model.model_sampling  # as loaded for the run that just ended, patches included
    cfg = getattr(guider, "cfg", None)
    settings: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "pack_version": pack_version(),
        "sampler": _sampler_name(sampler),
        "scheduler": _scheduler_name(model_sampling, sigmas),
        "steps": sigmas.numel() - 1,
        "cfg": float(cfg) if isinstance(cfg, (int, float)) else None,
        "seed": int(seed) if isinstance(seed, int) else None,
        "sigmas": [float(s) for s in sigmas.tolist()],
        "dtype": str(model.get_dtype()).removeprefix("torch."),
    }
    settings["comfyui_version"] = host_version()
    return settings


def _finish(recording: Recording, guider: Any, sampler: Any, sigmas: torch.Tensor, seed: Any) -> Path:
    """Turn the recording into a run, add it to the saved curve and write the file."""
    target = recording.target
    if recording.hooks.broken is not None:
        raise CurveError(
            f"calibration '{target.file_name}': nothing was saved, because {recording.hooks.broken} "
            f"(ComfyUI {host_version()}); please report this model and ComfyUI version"
        )
    measured = recording.measurements()
    if not measured.get("cond"):
        raise CurveError(
            f"calibration '{target.file_name}': the run made fewer than 2 model calls per conditioning; "
            "nothing was saved"
        )
    run = CalibrationRun(roles=combine_roles(measured), settings=_settings(guider, sampler, sigmas, seed))
    path = catalog.saved_curve_target(target.file_name)
    cond = run.roles["cond"]
    runs = [*_saved_runs(target, path, (cond.sigma[0], cond.sigma[-1])), run]
    curve = curve_from_runs(Path(target.file_name).stem, runs, target.model)
    trajectories = {role: tr for role, tr in recording.trajectories().items() if role in curve.roles}
    if trajectories:
        metadata = {**curve.metadata, "trajectory": (
            f"per role, {SKETCH_SIZE} elements of the residual at every call of the newest run (one per equal "
            "stretch of the flattened residual, seeded offsets): the speed-target planner measures a forecast's "
            "error on it")}
        curve = dataclasses.replace(curve, trajectories=trajectories, metadata=metadata)
    save_curve(curve, path)
    _log_saved(curve, path, recording)
    if target.on_saved is not None:
        target.on_saved(path, curve)
    return path


def _log_saved(curve: MagnitudeCurve, path: Path, recording: Recording) -> None:
    log.info("MagCache Calibrate: saved '%s' to %s: %s", path.name, path, summary(curve))
    if recording.unattributed:
        log.warning(
            "MagCache Calibrate: %d batch(es) did not say which conditioning they held and were not measured",
            recording.unattributed,
        )


def outer_sample_wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
    """Record this sampling run in a fresh state and save the curve when it completes.

    Arguments are ComfyUI's ``outer_sample(noise, latent_image, sampler, sigmas,
    denoise_mask, callback, disable_pbar, seed, ...)``.
    """
    guider = executor.class_obj
    transformer_options = guider.model_options.get("transformer_options", {})
    target = transformer_options.get(KEY)
    if not isinstance(target, CalibrationTarget):
        return executor(*args, **kwargs)
    if MAGCACHE_KEY in transformer_options:
        raise ValueError(
            "MagCache Calibrate: a MagCache node is applied to the same model. Calibration needs every step "
            "computed: bypass the MagCache node while calibrating"
        )
    sampler, seed = arg("outer_sample", "sampler", args, kwargs), arg("outer_sample", "seed", args, kwargs)
    sigmas = arg("outer_sample", "sigmas", args, kwargs).detach().flatten().cpu()
    path = catalog.saved_curve_target(target.file_name)
    # Refuse now, before the generation, a run that could not be added to the saved curve.
    calls = sigmas[:-1]
    if calls.numel():
        _saved_runs(target, path, (float(calls.max()), float(calls.min())))
    recording = Recording(target=target)
    recording.hooks = RunHooks(recording, target.family, target.level, all_blocks=False)
    log.info("MagCache Calibrate: recording this run for '%s' (nothing is skipped)", target.file_name)
    try:
        with run_scope(guider, KEY, recording.hooks, recording):
            out = executor(*args, **kwargs)
            _finish(recording, guider, sampler, sigmas, seed)
            return out
    finally:
        recording.free()


def attach(model: Any, target: CalibrationTarget) -> None:
    """Attach the recorder to ``model`` (a clone the caller owns) through official wrappers.

    A recorder attached earlier in the chain is replaced, not stacked.
    """
    import comfy.patcher_extension as ext

    attach_wrappers(
        model,
        KEY,
        {
            ext.WrappersMP.OUTER_SAMPLE: outer_sample_wrapper,
            ext.WrappersMP.APPLY_MODEL: partial(apply_model_wrapper, KEY),
        },
        target,
    )
