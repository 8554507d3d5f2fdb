"""What ComfyUI registers: node type names (unique among common packs) and display names."""

from __future__ import annotations

from ..embedded import model_folder  # noqa: F401 (lists the embedded tiny model in "Load Diffusion Model")
from .calibrate_node import MagCacheCalibrate, MagCacheCurvePlot
from .demo_nodes import MagCacheDemoDecode, MagCacheDemoPrompt
from .magcache_node import MagCacheApply

NODE_CLASS_MAPPINGS = {
    "MagCacheApply": MagCacheApply,
    "MagCacheCalibrate": MagCacheCalibrate,
    "MagCacheCurvePlot": MagCacheCurvePlot,
    "MagCacheDemoPrompt": MagCacheDemoPrompt,
    "MagCacheDemoDecode": MagCacheDemoDecode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "MagCacheApply": "MagCache",
    "MagCacheCalibrate": "MagCache Calibrate",
    "MagCacheCurvePlot": "MagCache Curve Plot",
    "MagCacheDemoPrompt": "MagCache Demo Prompt (tiny model)",
    "MagCacheDemoDecode": "MagCache Demo Decode (tiny model)",
}
