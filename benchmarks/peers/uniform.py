"""A uniform schedule: compute evenly spaced calls (the first always), fill the rest from the stack's residual.

The simplest schedule there is, with three reuses of the residual: plain (the
last computed one), and the undamped first- and second-order extrapolation in
sigma through the last two or three computed residuals. The bar the issue sets
for the node's default is the first-order line.
"""

from __future__ import annotations

from dataclasses import replace

from comfyui_magcache.benchmarks.peers.common import Context, Engine, Line
from comfyui_magcache.cache.config import MagCacheConfig, Reuse, When


def lines(context: Context) -> list[Line]:
    base = MagCacheConfig(context.curve, context.family, 0.0, 3, 0.0, when=When.UNIFORM)
    names = {Reuse.PLAIN: "plain", Reuse.LINEAR: "first-order in sigma", Reuse.QUADRATIC: "second-order in sigma"}
    return [Line(f"uniform, {name}", Engine(replace(base, reuse=reuse))) for reuse, name in names.items()]
