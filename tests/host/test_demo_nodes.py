"""The tiny model's prompt and decoder nodes: exactly the embedded codec, in ComfyUI's own formats."""

from __future__ import annotations

import comfy.latent_formats
import pytest
import torch

from comfyui_magcache.embedded import codec as cdc
from comfyui_magcache.nodes.demo_nodes import PROMPTS, MagCacheDemoDecode, MagCacheDemoPrompt, load_codec


def test_prompt_node_gives_the_codec_embedding_as_comfy_conditioning() -> None:
    codec = load_codec()
    for index, prompt in enumerate(PROMPTS):
        (conditioning,) = MagCacheDemoPrompt.execute(prompt).result
        assert len(conditioning) == 1
        tensor, extra = conditioning[0]
        assert extra == {}
        assert tensor.shape == (1, cdc.PROMPT_TOKENS, cdc.TEXT_DIM)
        assert torch.equal(tensor[0], codec.prompts[index])
    assert PROMPTS[cdc.EMPTY] == "(empty prompt)"


def test_prompt_node_refuses_an_unknown_prompt() -> None:
    with pytest.raises(ValueError, match="prompt must be one of"):
        MagCacheDemoPrompt.execute("digit 11")


@pytest.mark.parametrize("scale", [1, 3])
def test_decode_node_inverts_the_codec_from_a_sampler_latent(scale: int) -> None:
    """A sampler hands out Wan's stored latent (process_out); the node must give back the pixels exactly."""
    codec = load_codec()
    _, frames = cdc.random_clips(2, torch.Generator().manual_seed(0))
    stored = comfy.latent_formats.Wan21().process_out(codec.encode(frames))
    (images,) = MagCacheDemoDecode.execute({"samples": stored}, scale).result
    assert images.shape == (2 * cdc.FRAMES, cdc.CANVAS * scale, cdc.CANVAS * scale, 3)
    expected = frames.repeat_interleave(scale, -2).repeat_interleave(scale, -1).reshape(-1, *images.shape[1:3])
    assert torch.allclose(images[..., 0], expected, atol=1e-4)
    assert torch.equal(images[..., 0], images[..., 2])  # grey: the three channels agree


def test_decode_node_refuses_an_image_latent_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="video latents"):
        MagCacheDemoDecode.execute({"samples": torch.zeros(1, 16, 8, 8)}, 4)
