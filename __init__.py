"""comfyui-magcache: MagCache (magnitude-aware caching) for ComfyUI's diffusion transformers."""

from .nodes.mappings import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

#: The page extension that moves widget values of workflows saved with older MagCache nodes (ComfyUI reads it).
WEB_DIRECTORY = "./nodes/web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
