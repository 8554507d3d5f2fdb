"""Prompt and decoder nodes for the embedded tiny model, so its workflow runs on any CPU.

Why these exist: the embedded default (``embedded/``) is a tiny Wan 2.1 model
trained on moving digits. Its "prompts" are fixed embeddings, one per digit,
and its "VAE" is an exactly invertible linear map of 4x4 pixel patches; both
live in ``embedded/tiny_wan_digits_codec.safetensors``. A real text encoder
and VAE are gigabytes, so the tiny-model workflow takes its conditioning and
its pictures from these two small nodes instead, and uses ComfyUI's stock
loader, empty latent, sampler and save nodes for everything else. That keeps
the MagCache node in exactly the place it takes in a real workflow: between
the model loader and the sampler.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from comfy_api.latest import io

from ..embedded import codec as cdc
from ..embedded.codec import CODEC_FILE

#: The prompt list, in the codec's order: digits 0-9, then the empty prompt.
PROMPTS = tuple(cdc.prompt_text(i) for i in range(cdc.NUM_DIGITS + 1))


@cache
def _codec(path: Path, mtime_ns: int) -> cdc.Codec:
    """The codec, read once per file version (``mtime_ns`` is only the cache key)."""
    return cdc.Codec.load(path)


def load_codec() -> cdc.Codec:
    """The embedded codec, with a message that says what is missing when the file is not there."""
    try:
        stamp = CODEC_FILE.stat().st_mtime_ns
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the embedded tiny model's codec is missing ({CODEC_FILE}); reinstall the pack"
        ) from None
    return _codec(CODEC_FILE, stamp)


class MagCacheDemoPrompt(io.ComfyNode):
    """Conditioning for the embedded tiny model: one of its ten digits, or the empty prompt."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """One combo: the digit to draw, or the empty prompt for the negative."""
        return io.Schema(
            node_id="MagCacheDemoPrompt",
            display_name="MagCache Demo Prompt (tiny model)",
            category="sampling/magcache/demo",
            description=(
                "The embedded tiny model's 'text encoder': its prompts are the ten digits (each glides in its own "
                "direction) and the empty prompt. Use the empty prompt as the negative. Only for the tiny model "
                "that ships with the pack (embedded/tiny_wan_digits.safetensors)."
            ),
            inputs=[
                io.Combo.Input(
                    "prompt",
                    options=list(PROMPTS),
                    default=PROMPTS[3],
                    tooltip="Which digit to draw, or the empty prompt (for the negative).",
                ),
            ],
            outputs=[io.Conditioning.Output(tooltip="The prompt's embedding, for the sampler's positive or negative.")],
        )

    @classmethod
    def execute(cls, prompt: str) -> io.NodeOutput:
        """The digit's fixed embedding as ComfyUI conditioning."""
        if prompt not in PROMPTS:
            raise ValueError(f"prompt must be one of {list(PROMPTS)}, got {prompt!r}")
        embedding = load_codec().conditioning(PROMPTS.index(prompt))
        # ComfyUI's conditioning: a list of [cross-attention tensor, extra options].
        return io.NodeOutput([[embedding, {}]])


class MagCacheDemoDecode(io.ComfyNode):
    """Pictures from the embedded tiny model's latents: the exact inverse of its linear 'VAE'."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """The sampler's latents in, frames out."""
        return io.Schema(
            node_id="MagCacheDemoDecode",
            display_name="MagCache Demo Decode (tiny model)",
            category="sampling/magcache/demo",
            description=(
                "The embedded tiny model's 'VAE decoder': turns its latents into frames (32x32 grey pixels each, "
                "enlarged by 'scale'). Only for the tiny model that ships with the pack."
            ),
            inputs=[
                io.Latent.Input("samples", tooltip="The sampler's output."),
                io.Int.Input("scale", default=4, min=1, max=16, tooltip="Each pixel becomes a scale x scale square."),
            ],
            outputs=[
                io.Image.Output(
                    tooltip="Every frame of every clip in the batch, in order, for Save Image or Save Animated WEBP."
                )
            ],
        )

    @classmethod
    def execute(cls, samples: dict[str, Any], scale: int) -> io.NodeOutput:
        """Decode with the codec's exact inverse, then enlarge each pixel to a square."""
        import comfy.latent_formats

        if not 1 <= scale <= 16:
            raise ValueError(f"scale must be within 1..16, got {scale}")
        latent = samples["samples"]
        if latent.ndim != 5 or latent.shape[1] != cdc.CHANNELS:
            raise ValueError(
                "MagCache Demo Decode reads the embedded tiny model's video latents (batch, "
                f"{cdc.CHANNELS}, frames, height, width); got shape {tuple(latent.shape)}"
            )
        # Samplers hand out the stored form of Wan's latents; the codec reads the
        # form the model works in, which process_in restores.
        frames = load_codec().decode(comfy.latent_formats.Wan21().process_in(latent.float().cpu()))
        frames = frames.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
        images = frames.reshape(-1, *frames.shape[-2:])[..., None].expand(-1, -1, -1, 3)
        return io.NodeOutput(images.contiguous())
