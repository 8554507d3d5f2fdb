"""The two trained testbeds behind one interface, for the benchmark and the host tests.

* ``digits``: the tiny Wan 2.1 of moving digits (``train.py``, ``codec.py``), cfg 5.
* ``layout``: the tiny HunyuanVideo image model of coloured shapes that the prompt names and
  the noise places (``train_layout.py``, ``scenes.py``), used at cfg 1 (the conditional model
  alone, as a guidance-distilled model is run) and at cfg 4.

Why one interface: every protocol of the benchmark's matrix runs the same way on
both (load through ComfyUI's loader, sample with ComfyUI's sampler, decode, compare),
and what differs (the latent, the prompts, what "the model did what the prompt
asked" means) lives in one class per testbed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from comfyui_magcache.embedded import codec as cdc
from comfyui_magcache.embedded import demo, metrics
from comfyui_magcache.embedded import scenes as sc


@dataclass(frozen=True)
class Picture:
    """One sampled picture and what its run computed (as ``demo.Generation``)."""

    pixels: torch.Tensor  # (C, H, W) or (T, H, W) in 0..1: the per-image channels SSIM averages over
    generation: demo.Generation


class Testbed:
    """A trained embedded model: how to load it, prompt it, sample it and read its pictures."""

    name: str = ""
    #: The calibration protocol (MagCache Calibrate's one sample).
    calibration: demo.Settings = demo.Settings()
    #: Detected model config class name (what ComfyUI's loader must recognise).
    config_name: str = ""
    model_file: Path = Path()

    def load(self) -> Any:
        """The model through ComfyUI's diffusion-model loader (``UNETLoader``'s own call)."""
        import comfy.sd

        patcher = comfy.sd.load_diffusion_model(str(self.model_file))
        name = type(patcher.model.model_config).__name__
        if name != self.config_name:
            raise RuntimeError(f"ComfyUI detected {self.model_file.name} as {name}, expected {self.config_name}")
        return patcher

    def prompts(self, n: int) -> list[Any]:
        raise NotImplementedError

    def generate(self, patcher: Any, prompt: Any, seed: int, settings: demo.Settings) -> Picture:
        raise NotImplementedError

    def read(self, pixels: torch.Tensor, prompts: list[Any]) -> dict[str, float]:
        """What the pictures show against their prompts (the testbed's own score)."""
        raise NotImplementedError

    def compare(self, reference: torch.Tensor, pixels: torch.Tensor, prompts: list[Any]) -> dict[str, float]:
        """Testbed-specific differences of cached pictures from the uncached ones (beyond PSNR and SSIM)."""
        return {}

    def calibrate(self, patcher: Any, name: str, seed: int = 1000) -> Any:
        """One MagCache Calibrate sample at :attr:`calibration` on a prompt/seed no benchmark pair uses."""
        prompt = self.prompts(4)[3]
        return demo.record_curve(patcher, [lambda m: self.generate(m, prompt, seed, self.calibration)], name)


def _sample(patcher: Any, latent: torch.Tensor, positive: Any, negative: Any, settings: demo.Settings,
            seed: int) -> tuple[torch.Tensor, demo.Generation]:
    out, seconds, counts = demo.timed_sample(patcher, latent, positive, negative, settings, seed)
    # The sampler returns the stored latent format; the codecs read the model's own.
    return patcher.model.process_latent_in(out), demo.Generation(torch.empty(0), seconds, *counts)


class Digits(Testbed):
    """The tiny Wan of moving digits: a prompt is a digit, cfg 5 with the empty prompt as negative."""

    name = "digits"
    calibration = demo.Settings(steps=50, cfg=5.0, sampler="euler", scheduler="simple")
    config_name = "WAN21_T2V"
    model_file = cdc.MODEL_FILE

    def __init__(self) -> None:
        self.codec = cdc.Codec.load(cdc.CODEC_FILE)

    def prompts(self, n: int) -> list[int]:
        return [i % cdc.NUM_DIGITS for i in range(n)]

    def generate(self, patcher: Any, prompt: int, seed: int, settings: demo.Settings) -> Picture:
        latent = torch.zeros(1, cdc.CHANNELS, cdc.FRAMES, cdc.LATENT_SIDE, cdc.LATENT_SIDE)
        positive = [[self.codec.conditioning(prompt), {}]]
        negative = [[self.codec.conditioning(cdc.EMPTY), {}]]
        out, gen = _sample(patcher, latent, positive, negative, settings, seed)
        return Picture(self.codec.decode(out)[0], gen)

    def read(self, pixels: torch.Tensor, prompts: list[int]) -> dict[str, float]:
        prompted = torch.tensor(prompts)
        r = metrics.read_clips(pixels, prompted)
        return {"digit_accuracy": float((r.digit == prompted).float().mean()), "glyph_match": float(r.match.mean()),
                "motion_error_px": float(r.motion_error.mean())}


class Layout(Testbed):
    """The tiny HunyuanVideo of shapes: a prompt is a scene; cfg 1 and cfg 4 (empty prompt as negative)."""

    name = "layout"
    # Calibrated under CFG, so the curve has both branches; a cfg-1 run uses the conditional one.
    calibration = demo.Settings(steps=30, cfg=4.0, sampler="euler", scheduler="simple")
    config_name = "HunyuanVideo"
    model_file = sc.MODEL_FILE

    def __init__(self) -> None:
        self.codec = sc.SceneCodec.load(sc.CODEC_FILE)

    def prompts(self, n: int) -> list[sc.Scene]:
        # A generator of its own, so the pairs never depend on what ran before.
        return sc.random_scenes(n, torch.Generator().manual_seed(4242))

    def conditioning(self, scene: sc.Scene | None) -> list[list[Any]]:
        context = self.codec.conditioning(None if scene is None else [scene])
        return [[context, {"pooled_output": self.codec.pooled(1)}]]

    def generate(self, patcher: Any, prompt: sc.Scene, seed: int, settings: demo.Settings) -> Picture:
        latent = torch.zeros(1, sc.CHANNELS, 1, sc.LATENT_SIDE, sc.LATENT_SIDE)
        out, gen = _sample(patcher, latent, self.conditioning(prompt), self.conditioning(None), settings, seed)
        return Picture(self.codec.decode(out)[0], gen)

    def read(self, pixels: torch.Tensor, prompts: list[sc.Scene]) -> dict[str, float]:
        r = sc.read_layout(pixels, prompts)
        objects = sum(len(p.objects) for p in prompts)
        return {"layout_score": float(r.score.mean()), "objects_found": float(r.found.sum()) / objects,
                **sc.prompt_reading(pixels, prompts)}

    def compare(self, reference: torch.Tensor, pixels: torch.Tensor, prompts: list[sc.Scene]) -> dict[str, float]:
        a, b = sc.read_layout(reference, prompts), sc.read_layout(pixels, prompts)
        return {"layout_score": float(b.score.mean()), "moved_px": float(sc.displacement(a, b))}


TESTBEDS: dict[str, type[Testbed]] = {"digits": Digits, "layout": Layout}
