"""A LeMiCa-style plan (2025), from the paper's description.

LeMiCa weighs every reuse segment (compute at one call, reuse until another)
by the error it caused on a calibration sample, and picks the path through
this graph with the smallest worst segment under the compute budget; skipped
calls reuse the cached residual plainly. Here: the engine's planner with the
error of plain reuse measured on the calibration sample's recorded trajectory
(``ErrorModel.FORECAST``) and the objective that penalises the worst segment
(``Objective.PEAK``, a sum of fifth powers: a smooth stand-in for the
maximum). Segments of any length: no K.
"""

from __future__ import annotations

from comfyui_magcache.benchmarks.peers.common import Context, Engine, Line
from comfyui_magcache.cache.config import MagCacheConfig, Reuse, When
from comfyui_magcache.cache.planner import ErrorModel, Objective

#: No limit on skips in a row: LeMiCa's graph has an edge from every call to every later one.
ANY_LENGTH = 1000


def lines(context: Context) -> list[Line]:
    config = MagCacheConfig(context.curve, context.family, 0.0, ANY_LENGTH, 0.0, when=When.TARGET, reuse=Reuse.PLAIN,
                            error_model=ErrorModel.FORECAST, objective=Objective.PEAK)
    return [Line("LeMiCa-style plan (worst measured segment, plain reuse)", Engine(config))]
