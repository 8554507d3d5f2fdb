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


def combine(base: Hidden | None, terms: list[tuple[float, Hidden]]) -> Hidden:
    """``base + sum(c * t)`` over ``terms`` with one allocation per element: the output of a skipped call.

    ``base`` None (the output level, where the cached quantity is the output
    itself) starts from the first term. A first coefficient of exactly 1 adds
    the term as it is, so plain reuse is bit-identical to ``base + t``.
    """
    (c0, t0), rest = terms[0], terms[1:]
    out: list[torch.Tensor] = []
    for i, t in enumerate(parts(t0)):
        if base is None:
            o = t.clone() if c0 == 1.0 else t * c0
        else:
            b = parts(base)[i]
            o = b + t if c0 == 1.0 else torch.add(b, t, alpha=c0)
        for c, term in rest:
            o.add_(parts(term)[i], alpha=c)
        out.append(o)
    return _like(t0, out)
