"""What ComfyUI registers: node type names (unique among common packs) and display names."""

from __future__ import annotations

from .magcache_node import MagCacheApply

NODE_CLASS_MAPPINGS = {
    "MagCacheApply": MagCacheApply,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "MagCacheApply": "MagCache",
}
