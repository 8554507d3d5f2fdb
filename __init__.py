"""comfyui-magcache: MagCache (magnitude-aware caching) for ComfyUI's diffusion transformers."""

from .nodes.mappings import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
