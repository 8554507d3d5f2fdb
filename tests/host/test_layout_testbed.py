"""The layout testbed: the shipped tiny HunyuanVideo loads through ComfyUI's loader and draws what it is told.

The benchmark's second testbed stands on this file, so it is checked the way
a user would meet it: ComfyUI's own diffusion-model loader must detect it as
HunyuanVideo at the trained size, the codec must decode what it encodes, a
generation must show the prompted colours and background (and, when a better
model ships, each object as one object: a strict expected failure today), and
MagCache must run on it at the block level.
"""

from __future__ import annotations

import pytest
import torch

from comfyui_magcache.embedded import scenes as sc
from comfyui_magcache.embedded import testbeds
from comfyui_magcache.hooks.families import Level, family_of


@pytest.fixture(scope="module")
def bed() -> testbeds.Layout:
    return testbeds.Layout()


@pytest.fixture(scope="module")
def patcher(bed: testbeds.Layout):
    return bed.load()


def test_shipped_files_are_small() -> None:
    assert sc.MODEL_FILE.stat().st_size <= 25 * 1024 * 1024
    assert sc.CODEC_FILE.stat().st_size <= 1024 * 1024


def test_loader_detects_hunyuan_video_at_the_trained_size(patcher) -> None:
    import comfy.supported_models

    model = patcher.model
    assert isinstance(model.model_config, comfy.supported_models.HunyuanVideo)
    dm = model.diffusion_model
    assert (dm.hidden_size, len(dm.double_blocks), len(dm.single_blocks), dm.num_heads) == (256, 2, 2, 2)
    assert not dm.params.guidance_embed
    assert model.model_sampling.shift == 7.0  # the flow shift the model was trained with
    family = family_of(dm, model.model_config)
    assert family is not None and family.level is Level.BLOCK


def test_codec_round_trip(bed: testbeds.Layout) -> None:
    gen = torch.Generator().manual_seed(3)
    scenes = sc.random_scenes(6, gen)
    images, _ = sc.render(scenes, gen)
    latent = bed.codec.encode(images)
    assert latent.shape == (6, sc.CHANNELS, 1, sc.LATENT_SIDE, sc.LATENT_SIDE)
    assert torch.allclose(bed.codec.decode(latent), images, atol=1e-5)
    assert float(sc.read_layout(images, scenes).score.min()) == 1.0  # the reader finds every drawn object


_READINGS: dict[float, dict[str, float]] = {}


def _read(bed, patcher, cfg: float) -> dict[str, float]:
    """What 8 uncached generations at ``cfg`` show, read once per module run (two tests look at it)."""
    from comfyui_magcache.embedded import demo

    if cfg in _READINGS:
        return _READINGS[cfg]
    prompts = bed.prompts(8)
    settings = demo.Settings(steps=20, cfg=cfg, sampler="euler", scheduler="simple")
    pixels = torch.stack([bed.generate(patcher, p, 7 + i, settings).pixels for i, p in enumerate(prompts)])
    _READINGS[cfg] = bed.read(pixels, prompts)
    return _READINGS[cfg]


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_generation_shows_the_prompted_colours_and_background_and_no_other_colour(bed, patcher, cfg: float) -> None:
    reading = _read(bed, patcher, cfg)
    assert reading["prompted_colour_px"] >= 20  # a drawn object covers 45-64 pixels
    assert reading["other_colour_px"] < 3
    assert reading["background_right"] == 1.0


@pytest.mark.xfail(strict=True, reason="the shipped layout model scatters each object's colour in patches (README)")
@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_generation_draws_each_prompted_object_as_one_object(bed, patcher, cfg: float) -> None:
    """Strict: the benchmark's movement figures stand on this; when a model that draws whole objects ships, it
    passes and README must be updated."""
    assert _read(bed, patcher, cfg)["layout_score"] >= 0.75


def test_magcache_skips_on_it_at_the_block_level(bed, patcher) -> None:
    from comfyui_magcache.embedded import demo

    model = demo.with_magcache(patcher, "hunyuan_video", **{**demo.page_defaults(), "speed": 2.0})
    prompt = bed.prompts(1)[0]
    settings = demo.Settings(steps=20, cfg=1.0, sampler="euler", scheduler="simple")
    plain = bed.generate(patcher, prompt, 3, settings)
    cached = bed.generate(model, prompt, 3, settings)
    assert cached.generation.calls == plain.generation.calls == 20
    assert cached.generation.computed == 10  # the published HunyuanVideo curve, at 2x
    assert float((cached.pixels - plain.pixels).abs().mean()) < 0.1
