"""Reading and writing curve files: safetensors tensors plus JSON metadata.

Nothing is ever unpickled. A file is validated as it is read; a bad file is
refused with a :class:`~calibration.curve.CurveError` that names the file and
the problem, and the caller never falls back silently to another curve.

Layout of a file:
- tensors ``<role>.sigma`` (float64, n, strictly decreasing) and ``<role>.ratio``
  (float64, n - 1), optionally ``<role>.ratio_std`` and ``<role>.cosine_distance``
  (n - 1), for role ``cond`` and optionally ``uncond`` (on the same sigmas as ``cond``);
- optionally, per role, ``<role>.trajectory_sigma`` (float64, m) and
  ``<role>.trajectory`` (float32, m x k): a fixed sample of the residual's
  elements at each call of the newest calibration run (``Trajectory``);
- safetensors metadata ``format`` = ``comfyui-magcache/curve``, ``format_version``
  = ``1`` and ``metadata`` = a JSON object (provenance, schedule, fingerprint).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .curve import ROLES, CurveError, MagnitudeCurve, RoleCurve, Trajectory

FORMAT = "comfyui-magcache/curve"
FORMAT_VERSION = "1"
SUFFIX = ".safetensors"
_FIELDS = ("sigma", "ratio", "ratio_std", "cosine_distance")
_TRAJECTORY = ("trajectory_sigma", "trajectory")


def save_curve(curve: MagnitudeCurve, path: str | Path) -> Path:
    """Write ``curve`` to ``path`` atomically (a partial file never appears)."""
    from safetensors.numpy import save_file

    path = Path(path)
    tensors: dict[str, np.ndarray] = {}
    for role, rc in curve.roles.items():
        for name in _FIELDS:
            values = getattr(rc, name)
            if values is not None:
                tensors[f"{role}.{name}"] = np.asarray(values, dtype=np.float64)
    for role, tr in curve.trajectories.items():
        tensors[f"{role}.trajectory_sigma"] = np.asarray(tr.sigma, dtype=np.float64)
        tensors[f"{role}.trajectory"] = np.ascontiguousarray(tr.values, dtype=np.float32)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": curve.name,
        "metadata": json.dumps(curve.metadata, sort_keys=True),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def load_curve(path: str | Path, name: str | None = None) -> MagnitudeCurve:
    """Read and validate a curve file; raise :class:`CurveError` naming the file."""
    from safetensors import safe_open

    path = Path(path)
    where = f"curve file '{path}'"
    if not path.is_file():
        raise CurveError(f"{where}: no such file")
    try:
        with safe_open(str(path), framework="np") as f:
            header = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for bad bytes
        raise CurveError(f"{where}: not a readable safetensors file ({exc})") from None
    if header.get("format") != FORMAT:
        raise CurveError(
            f"{where}: not a MagCache curve (metadata 'format' is {header.get('format')!r}, expected {FORMAT!r})"
        )
    if header.get("format_version") != FORMAT_VERSION:
        raise CurveError(
            f"{where}: format version {header.get('format_version')!r} is not supported (expected {FORMAT_VERSION})"
        )
    try:
        metadata: dict[str, Any] = json.loads(header.get("metadata", "{}"))
    except json.JSONDecodeError as exc:
        raise CurveError(f"{where}: metadata is not valid JSON ({exc})") from None
    if not isinstance(metadata, dict):
        raise CurveError(f"{where}: metadata must be a JSON object")
    unknown = {k for k in arrays
               if k.split(".", 1)[0] not in ROLES or k.split(".", 1)[-1] not in (*_FIELDS, *_TRAJECTORY)}
    if unknown:
        raise CurveError(f"{where}: unexpected tensors {sorted(unknown)}")
    roles: dict[str, RoleCurve] = {}
    for role in ROLES:
        if f"{role}.sigma" not in arrays and f"{role}.ratio" not in arrays:
            continue
        fields: dict[str, tuple[float, ...] | None] = {}
        for field_name in _FIELDS:
            arr = arrays.get(f"{role}.{field_name}")
            if arr is None:
                if field_name in ("sigma", "ratio"):
                    raise CurveError(f"{where}: role '{role}' lacks the tensor '{role}.{field_name}'")
                fields[field_name] = None
                continue
            if arr.ndim != 1:
                raise CurveError(f"{where}: tensor '{role}.{field_name}' must be 1-D, has shape {tuple(arr.shape)}")
            fields[field_name] = tuple(float(v) for v in arr.astype(np.float64))
        roles[role] = RoleCurve(**fields)  # type: ignore[arg-type]
    trajectories: dict[str, Trajectory] = {}
    for role in ROLES:
        sig, values = arrays.get(f"{role}.trajectory_sigma"), arrays.get(f"{role}.trajectory")
        if sig is None and values is None:
            continue
        if sig is None or values is None or sig.ndim != 1:
            raise CurveError(f"{where}: role '{role}' needs both '{role}.trajectory_sigma' (1-D) and "
                             f"'{role}.trajectory'")
        trajectories[role] = Trajectory(tuple(float(v) for v in sig.astype(np.float64)), values.astype(np.float32))
    try:
        return MagnitudeCurve(name=name or header.get("name") or path.stem, roles=roles, metadata=metadata,
                              trajectories=trajectories)
    except CurveError as exc:
        raise CurveError(f"{where}: {exc}") from None
