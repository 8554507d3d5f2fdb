"""What ComfyUI registers: node type names (unique among common packs) and display names."""

from __future__ import annotations

from ..calibration import catalog
from .magcache_node import MagCacheApply

catalog.register_folder()

NODE_CLASS_MAPPINGS = {
    "MagCacheApply": MagCacheApply,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "MagCacheApply": "MagCache",
}
