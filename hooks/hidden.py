"""Hidden states as the block patches see them: one tensor, or a tuple of tensors.

Most families hand their blocks one hidden-state tensor; LTX-2 hands a
``(video, audio)`` pair (the audio part may be empty). Caching treats a pair
element by element: the residual of a pair is the pair of residuals. These
helpers keep that in one place, so the hooks and the methods never branch on it.
"""

from __future__ import annotations

import torch

Hidden = torch.Tensor | tuple[torch.Tensor, ...]


def parts(h: Hidden) -> tuple[torch.Tensor, ...]:
    return h if isinstance(h, tuple) else (h,)


def _like(h: Hidden, values: list[torch.Tensor]) -> Hidden:
    return tuple(values) if isinstance(h, tuple) else values[0]


def clone(h: Hidden) -> Hidden:
    return _like(h, [p.clone() for p in parts(h)])


def sub(a: Hidden, b: Hidden) -> Hidden:
    return _like(a, [x - y for x, y in zip(parts(a), parts(b))])


def add(a: Hidden, b: Hidden) -> Hidden:
    """``a + b``: the one allocation a skipped call makes (per element of a pair)."""
    return _like(a, [x + y for x, y in zip(parts(a), parts(b))])


def shape(h: Hidden) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(p.shape) for p in parts(h))


def to(h: Hidden, device: torch.device) -> Hidden:
    """``h`` on ``device`` (no copy when it is there already)."""
    return _like(h, [p.to(device, non_blocking=True) for p in parts(h)])


def device(h: Hidden) -> torch.device:
    return parts(h)[0].device


def chunk(h: Hidden, n: int) -> list[Hidden] | None:
    """``h`` split into ``n`` equal batch chunks, or None when its batch does not divide."""
    ps = parts(h)
    if n == 0 or any(p.ndim == 0 or p.shape[0] % n for p in ps):
        return None
    pieces = [p.chunk(n) for p in ps]
    return [_like(h, [pc[i] for pc in pieces]) for i in range(n)]


def primary(h: Hidden) -> torch.Tensor:
    """The part a magnitude is measured on: the tensor, or a pair's first (video) element."""
    return parts(h)[0]
