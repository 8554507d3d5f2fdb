"""Which model evaluations are guidance variants, and which conditioning each cond of an evaluation is.

A *variant* is an evaluation that computes something else than the run's own
evaluations at the same sigma: a guidance method calling the model again
with layers skipped, attention changed or patches swapped. It must be
computed in full and never share the cache (its residual is not the run's).
What makes one is a change in *what the model computes*:

* the block replacements (``patches_replace``), the model patches
  (``patches``), the wrappers and callbacks the options carry, compared by
  identity (SkipLayerGuidance replaces block patches for its extra call);
* the flags guidance methods in ComfyUI are known to set, compared by value
  (:data:`GUIDANCE_FLAGS`);
* any other entry that holds a callable or an object of its own, compared by
  identity (a patch-like object another pack keeps under a key of its own).

Per-call bookkeeping is not: numbers, strings, tensors and containers of them
that a sampler writes before every call (RES4LYF's stage state, ``sigmas``,
``sample_sigmas``). Taking those for variants computed every call of such a
sampler in full and said it was guidance.

Conditioning roles follow ComfyUI's ``cond_or_uncond`` numbering: 0 is the
positive prompt, 1 the negative, and every further cond (DualCFGGuider's
middle cond, PerpNeg's empty prompt) a role of its own from 2 on. A cond's
role is read from what it is, the guider's named conds, not from its place
in the list (DualCFGGuider passes the negative first).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

#: ``transformer_options`` entries that say what the model computes: compared by the identity of their leaves.
STRUCTURE = frozenset({"patches_replace", "patches", "wrappers", "callbacks"})
#: Flags that ComfyUI's guidance nodes set for their extra model call, compared by value:
#: LTX-Video STG (``stg_self_attn_blocks``), LTX-2 modality guidance (``a2v_cross_attn``, ``v2a_cross_attn``).
GUIDANCE_FLAGS = frozenset({"stg_self_attn_blocks", "a2v_cross_attn", "v2a_cross_attn"})
#: Entries ComfyUI itself changes between the evaluations of one run.
PER_CALL = frozenset({"sample_sigmas", "sigmas", "cond_or_uncond", "uuids"})
#: Values that are data, never code: a sampler's bookkeeping.
_PLAIN = (
    type(None), bool, int, float, complex, str, bytes, range,
    torch.Tensor, torch.device, torch.dtype, np.ndarray, np.generic,
)

#: Conditioning roles (ComfyUI's ``cond_or_uncond`` numbering); extra conds take 2, 3, ...
POSITIVE, NEGATIVE, EXTRA = 0, 1, 2

Leaf = tuple[Any, ...]


def signature(options: Mapping[str, Any], ignore: Iterable[str] = ()) -> frozenset[Leaf]:
    """What in ``options`` (a ``transformer_options`` dict) decides what the model computes.

    Cheap (identities and a few flag values, no tensor is read) and blind to the
    copies ComfyUI makes of the option dicts. Two evaluations with equal
    signatures compute the same function of their inputs.
    """
    skip = PER_CALL | frozenset(ignore)
    leaves: set[Leaf] = set()
    for key, value in options.items():
        if key in skip:
            continue
        if key in GUIDANCE_FLAGS:
            leaves.add((key, "=", _token(value)))
        elif key in STRUCTURE:
            _by_identity(value, (key,), leaves)
        else:
            _objects(value, (key,), leaves)
    return frozenset(leaves)


def changed_keys(a: frozenset[Leaf], b: frozenset[Leaf]) -> list[str]:
    """The top-level option names whose part of two signatures differs, for the log."""
    return sorted({str(leaf[0]) for leaf in a ^ b})


def _token(value: Any) -> Any:
    """A flag's value as something hashable: itself, or its identity."""
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))
    return value


def _by_identity(value: Any, path: Leaf, out: set[Leaf]) -> None:
    """Every leaf under ``path`` by identity (a patch list's functions, a wrapper dict's callables)."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            _by_identity(v, (*path, k), out)
    elif isinstance(value, (list, tuple)):
        out.update((*path, i, id(v)) for i, v in enumerate(value))
    else:
        out.add((*path, id(value)))


def _objects(value: Any, path: Leaf, out: set[Leaf]) -> None:
    """Leaves under an unknown key that are code or objects (by identity); plain data is bookkeeping."""
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            _objects(v, (*path, k), out)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for i, v in enumerate(value):
            _objects(v, (*path, i), out)
    else:
        out.add((*path, id(value)))


def named_roles(named: Mapping[str, Any] | None) -> dict[int, int]:
    """Role of each of a guider's cond lists, by the list's identity: ``{id(list): role}``.

    ``named`` is the guider's ``conds`` (``"positive"``, ``"negative"``, and any
    other name a guider uses for further conds, in its order).
    """
    if not named:
        return {}
    roles: dict[int, int] = {}
    extra = EXTRA
    for name, conds in named.items():
        if conds is None:
            continue
        if name == "positive":
            roles[id(conds)] = POSITIVE
        elif name == "negative":
            roles[id(conds)] = NEGATIVE
        else:
            roles[id(conds)] = extra
            extra += 1
    return roles


def roles_of(conds: list[Any], known: Mapping[int, int]) -> tuple[int, ...]:
    """The role of every cond an evaluation computes (the non-None ones, in list order).

    A cond list the guider names gets its role; when none is named (a guider
    that keeps its conds elsewhere, a direct ``calc_cond_batch`` call) the
    list order is taken as ComfyUI's samplers use it: positive, negative,
    extras. A list the guider does not name among named ones is an extra.
    """
    present = [(i, c) for i, c in enumerate(conds) if c is not None]
    found = [known.get(id(c)) for _, c in present]
    if all(r is None for r in found):
        return tuple(i for i, _ in present)
    taken = {r for r in found if r is not None}
    extra = max([EXTRA - 1, *taken]) + 1
    roles = []
    for r in found:
        if r is None:
            r, extra = extra, extra + 1
        roles.append(r)
    return tuple(roles)
