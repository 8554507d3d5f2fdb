"""Make ComfyUI's "Load Diffusion Model" list the embedded tiny model where the pack installed it.

Why: the tiny-model example must run straight after installing the pack, with
nothing copied by hand. ComfyUI looks for diffusion models in every folder
registered under ``diffusion_models`` (``folder_paths``), searching each one
recursively; so the model sits alone in ``embedded/diffusion_models/`` and
that folder, not ``embedded/``, is registered. Registering ``embedded/`` would
also list the codec (a safetensors file that is not a model) and anything a
user drops there.

The folder is appended after the user's own folders (``is_default=False``):
a file of the same name in ``models/diffusion_models/`` still wins, and the
user's default save folder does not change.

Imported by ``nodes/mappings.py``, so it runs once when ComfyUI loads the pack;
outside ComfyUI (the pure tests, the scripts) there is no ``folder_paths`` and
nothing happens.
"""

from __future__ import annotations

import logging

from .codec import MODEL_FILE

#: The folder kind ComfyUI's UNETLoader ("Load Diffusion Model") lists.
FOLDER_KIND = "diffusion_models"
#: The folder registered: it holds the tiny model and nothing else.
MODEL_DIR = MODEL_FILE.parent

log = logging.getLogger("comfyui-magcache")


def register() -> bool:
    """Add :data:`MODEL_DIR` to ComfyUI's diffusion-model folders; False when ComfyUI is not importable.

    Idempotent: ``folder_paths.add_model_folder_path`` keeps a path once.
    """
    try:
        import folder_paths
    except ImportError:
        return False
    if not MODEL_DIR.is_dir():  # a checkout without the built model: nothing to offer
        log.debug("MagCache: %s is missing; the embedded tiny model is not listed", MODEL_DIR)
        return False
    folder_paths.add_model_folder_path(FOLDER_KIND, str(MODEL_DIR), is_default=False)
    return True


register()
