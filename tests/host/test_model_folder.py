"""The embedded tiny model is listed by ComfyUI's "Load Diffusion Model" with nothing copied by hand.

Loading the pack's node mappings (what ComfyUI does when it loads the pack)
must add ``embedded/diffusion_models/`` to ComfyUI's diffusion-model folders,
after the user's own, once, and list the model and nothing else of the pack:
the codec file next to the model code is a safetensors file too, and must not
show up as a model. The same through the real server and page is in
``test_page.py``.
"""

from __future__ import annotations

from pathlib import Path

import folder_paths

from comfyui_magcache.embedded import codec, model_folder
from comfyui_magcache.nodes import mappings  # noqa: F401 (importing it registers the folder)


def test_loading_the_pack_registers_the_model_folder_after_the_users_own() -> None:
    paths = folder_paths.get_folder_paths("diffusion_models")
    assert str(model_folder.MODEL_DIR) in paths
    assert paths.index(str(model_folder.MODEL_DIR)) > 0, "the user's own models/diffusion_models must stay first"
    # The legacy name the old UNETLoader code used resolves to the same list.
    assert str(model_folder.MODEL_DIR) in folder_paths.get_folder_paths("unet")


def test_the_tiny_model_is_listed_and_resolves_to_the_shipped_file() -> None:
    names = folder_paths.get_filename_list("diffusion_models")
    assert codec.MODEL_FILE.name in names
    found = folder_paths.get_full_path("diffusion_models", codec.MODEL_FILE.name)
    assert found is not None and Path(found).resolve() == codec.MODEL_FILE.resolve()


def test_nothing_else_of_the_pack_is_listed_as_a_model() -> None:
    names = folder_paths.get_filename_list("diffusion_models")
    assert codec.CODEC_FILE.name not in names
    assert not [n for n in names if "codec" in n], names
    # The registered folder holds the model alone: whatever it holds is listed.
    assert sorted(p.name for p in model_folder.MODEL_DIR.iterdir()) == [codec.MODEL_FILE.name]


def test_registering_again_adds_no_second_entry() -> None:
    assert model_folder.register()
    assert model_folder.register()
    paths = folder_paths.get_folder_paths("diffusion_models")
    assert paths.count(str(model_folder.MODEL_DIR)) == 1
