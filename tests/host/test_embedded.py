"""The embedded default: the shipped tiny Wan loads through ComfyUI's loader, and the demo runs.

The model file is what README's demo and the benchmark's quality figures
stand on, so these tests check it the way a user would meet it: ComfyUI's
own diffusion-model loader must detect it as Wan 2.1 T2V, the codec must
decode what it encodes, a generation must show the prompted digit, and the
demo command must run end to end (with fewer steps, to stay fast).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from comfyui_magcache.embedded import codec as cdc
from comfyui_magcache.embedded import demo, metrics
from comfyui_magcache.hooks.families import family_of


@pytest.fixture(scope="module")
def tiny() -> tuple:
    return demo.load_model(), demo.load_codec()


def test_shipped_files_are_small() -> None:
    assert demo.MODEL_FILE.stat().st_size <= 20 * 1024 * 1024
    assert demo.CODEC_FILE.stat().st_size <= 2 * 1024 * 1024


def test_loader_detects_wan21_t2v(tiny: tuple) -> None:
    import comfy.supported_models

    patcher, _ = tiny
    model = patcher.model
    assert type(model.model_config).__name__ == "WAN21_T2V"
    assert isinstance(model.model_config, comfy.supported_models.WAN21_T2V)
    dm = model.diffusion_model
    assert (dm.dim, len(dm.blocks), dm.num_heads) == (256, 4, 2)
    assert model.model_sampling.shift == 8.0  # the flow shift the model was trained with
    assert family_of(dm, model.model_config) is not None


def test_codec_round_trip(tiny: tuple) -> None:
    _, codec = tiny
    digits, frames = cdc.random_clips(4, torch.Generator().manual_seed(3))
    latent = codec.encode(frames)
    assert latent.shape == (4, cdc.CHANNELS, cdc.FRAMES, cdc.LATENT_SIDE, cdc.LATENT_SIDE)
    assert torch.allclose(codec.decode(latent), frames, atol=1e-5)
    reading = metrics.read_clips(frames, digits)
    assert bool((reading.digit == digits).all())


def _read_generations(tiny: tuple, digits: list[int]) -> metrics.ClipReading:
    patcher, codec = tiny
    gens = [demo.generate(patcher, codec, d, seed=5, settings=demo.Settings(steps=20, sampler="euler")) for d in digits]
    return metrics.read_clips(torch.stack([g.frames for g in gens]), torch.tensor(digits))


def test_generation_shows_the_prompted_digit(tiny: tuple) -> None:
    digits = [1, 4, 7]
    reading = _read_generations(tiny, digits)
    assert reading.digit.tolist() == digits
    assert float(reading.match.min()) > 0.6  # the training clips read about 0.95, noise far below


@pytest.mark.xfail(strict=True, reason="the shipped model draws the digit but has not learned its motion (README)")
def test_generation_moves_the_digit_as_prompted(tiny: tuple) -> None:
    """Strict: when a better-trained model moves its digits, this passes and README must be updated."""
    reading = _read_generations(tiny, [1, 7])
    assert float(reading.motion_error.max()) < 1.5


def test_demo_runs(tmp_path: Path) -> None:
    out = tmp_path / "demo.png"
    figures = demo.run(demo.parse_args(["--prompts", "2", "--steps", "16", "--out", str(out)]))
    assert out.is_file() and out.stat().st_size > 10_000
    assert figures["calls"] == 16
    assert 0 < figures["computed"] < figures["calls"]  # the recorded curve made MagCache skip
    assert figures["psnr"] > 15.0
