"""The MagCache paper's rule (Ma et al., 2025): skip while the accumulated magnitude error stays under a threshold.

Run by the engine (``When.RULE``) with the calibration curve, K = 2 skips in a
row and the paper's 20% retention; the threshold is the knob, tuned to each
speed by the benchmark.
"""

from __future__ import annotations

from typing import Any

from comfyui_magcache.benchmarks.peers.common import Context, Line
from comfyui_magcache.cache import magcache
from comfyui_magcache.cache.config import MagCacheConfig, When

RETENTION = 0.2
MAX_SKIPS = 2


def lines(context: Context) -> list[Line]:
    base = MagCacheConfig(context.curve, context.family, 0.0, MAX_SKIPS, RETENTION, when=When.RULE)

    def make(patcher: Any, threshold: float) -> Any:
        from dataclasses import replace

        model = patcher.clone()
        magcache.attach(model, replace(base, threshold=threshold))
        return model

    return [Line("MagCache rule (paper), K=2", make, tuned=True, high=3.0)]
