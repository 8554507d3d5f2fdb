"""What ComfyUI registers: node type names (unique among common packs) and display names."""

from __future__ import annotations

from .calibrate_node import MagCacheCalibrate, MagCacheCurvePlot
from .magcache_node import MagCacheApply

NODE_CLASS_MAPPINGS = {
    "MagCacheApply": MagCacheApply,
    "MagCacheCalibrate": MagCacheCalibrate,
    "MagCacheCurvePlot": MagCacheCurvePlot,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "MagCacheApply": "MagCache",
    "MagCacheCalibrate": "MagCache Calibrate",
    "MagCacheCurvePlot": "MagCache Curve Plot",
}
