"""TaylorSeer-lite (Liu et al., "From Reusing to Forecasting", 2025), written here from the paper's description.

What the paper does, and what this file keeps: the full model runs every
``N``-th step ("activated" steps); on the steps between, each cached feature is
predicted by a Taylor expansion around the last activated step, its
derivatives taken as finite differences of the last activated values
(``dF ~ (F_0 - F_1) / N``, ``d2F ~ (F_0 - 2 F_1 + F_2) / N^2``), in steps:
``F(k steps later) = F_0 + (k/N) dF_N + (k/N)^2 / 2 d2F_N``. "Lite" keeps one
feature, the output of the whole block stack (the image tokens leaving the last
block), rather than every layer's attention and MLP outputs. Fractional speeds
space the activated calls evenly (``N`` is then the distance between the last
two); the first call is always activated. What differs from the pack's own
forecasts (``cache/taylor.py``): it forecasts the stack's *output*, not its
residual, so a skipped call ignores where the sampler has moved its input, and
its differences are in steps, not in sigma.
"""

from __future__ import annotations

from typing import Any

from comfyui_magcache.benchmarks.peers.common import Context, Line, attach_method, call_index
from comfyui_magcache.cache.planner import computed_budget
from comfyui_magcache.hooks import hidden


def taylor_weights(order: int, k: float, spacing: float) -> list[float]:
    """Weights on ``[F_0, F_1, F_2]`` (newest first) of the order-``order`` prediction ``k`` steps after ``F_0``."""
    u = k / spacing
    if order == 0:
        return [1.0]
    if order == 1:
        return [1.0 + u, -u]
    c = u * u / 2.0
    return [1.0 + u + c, -u - 2.0 * c, c]


class TaylorSeerLite:
    """The hooking layer's ``Method`` for one run: activated calls evenly spaced, Taylor forecasts between."""

    def __init__(self, sigmas: list[float], speed: float, order: int) -> None:
        self.calls = sigmas[:-1]
        n = len(self.calls)
        budget = computed_budget(n, speed)
        activated = {round(j * n / budget) for j in range(budget)}  # every N-th call from the first
        self.skips = tuple(i not in activated for i in range(n))
        self.order = order
        self.history: dict[Any, list[tuple[int, hidden.Hidden]]] = {}  # newest first: (call, stack output)
        self.index = 0
        self.disabled = False

    def begin_batch(self, batch: Any) -> None:
        self.index = call_index(self.calls, float(batch.sigma))
        batch.skip = not self.disabled and self.skips[self.index]

    def cached(self, batch: Any, shape: Any, device: Any) -> list[tuple[float, hidden.Hidden]] | None:
        points = self.history.get((batch.roles, shape))
        if not points:
            return None
        order = min(self.order, len(points) - 1)
        spacing = float(points[0][0] - points[1][0]) if len(points) > 1 else 1.0
        weights = taylor_weights(order, self.index - points[0][0], spacing)
        # The hooks add these terms to the stack's input: taking the input away leaves the forecast output.
        return [(w, f) for w, (_, f) in zip(weights, points)] + [(-1.0, batch.x_in)]

    def store(self, batch: Any, residual: hidden.Hidden) -> None:
        output = hidden.combine(batch.x_in, [(1.0, residual)])
        key = (batch.roles, hidden.shape(residual))
        points = self.history.setdefault(key, [])
        if points and points[0][0] == self.index:  # a second evaluation at the same call replaces the first
            points.pop(0)
        points.insert(0, (self.index, output))
        del points[self.order + 1 :]

    def end_batch(self, batch: Any) -> None:
        pass

    def disable(self, reason: str) -> None:
        self.disabled = True

    def serve_output_level(self, reason: str) -> bool:
        return False


def attach(patcher: Any, speed: float, order: int) -> Any:
    model = patcher.clone()
    attach_method(model, "peer_taylorseer", lambda sigmas: TaylorSeerLite(sigmas, speed, order))
    return model


def lines(context: Context) -> list[Line]:
    return [Line(f"TaylorSeer-lite, order {o} (stack output)", lambda p, s, o=o: attach(p, s, o)) for o in (1, 2)]
