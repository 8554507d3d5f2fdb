"""Node classes and the engine that hooks MagCache into ComfyUI's model.

Kept free of imports so the pure parts (``policy``, ``architectures``) load
without ComfyUI; ``mappings`` gathers the node classes for ComfyUI.
"""
