"""The embedded default's data and latent codec: moving digits, and a linear "VAE".

Why a hand-made world: the pack must show a caching method on a *trained*
model, on any machine, without downloading anything. So the training data is
drawn here, from a 5x7 bitmap font written below: a digit glides across a
32x32 canvas for :data:`FRAMES` frames, each digit with its own direction of
motion. Each digit is one "prompt"; a prompt is a fixed random embedding of
the Wan text width (4096), and one more embedding plays the empty prompt
(the negative of classifier-free guidance).

Latents are a fixed, exactly invertible linear map of the pixels, so every
sample the model makes can be looked at: each 4x4 pixel patch (16 values)
becomes the 16 latent channels through a PCA rotation, scaled so each channel
has unit variance where it carries signal. The result is what Wan's latent
format calls the *processed* latent (what the diffusion model sees);
ComfyUI's ``Wan21.process_out`` turns it into the stored latent and
``process_in`` back, so a sampler's output needs ``process_in`` before
:meth:`Codec.decode`.

Everything is torch arithmetic, seeded; the codec's numbers live in a
safetensors file next to the model so decoding never depends on refitting.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 (the usual name)

#: The shipped files of the embedded default, next to this module (one place that names them). The model
#: sits in a folder of its own, which ``model_folder.py`` adds to ComfyUI's diffusion-model folders.
MODEL_FILE = Path(__file__).resolve().parent / "diffusion_models" / "tiny_wan_digits.safetensors"
CODEC_FILE = Path(__file__).resolve().parent / "tiny_wan_digits_codec.safetensors"

#: Canvas side in pixels, frames per clip, pixels per latent cell.
CANVAS = 32
FRAMES = 4
PATCH = 4
CHANNELS = PATCH * PATCH  # a 4x4 grayscale patch -> 16 channels: lossless
LATENT_SIDE = CANVAS // PATCH
#: Sub-pixel resolution of the renderer (positions are in 1/SUPER pixel).
SUPER = 4
#: Glyph cell size in pixels: the 5x7 font is drawn 2.5 px per font cell.
CELL = 2.5
#: Motion speed in pixels per frame.
SPEED = 2.5
#: Tokens per prompt embedding and their width (Wan's text width).
PROMPT_TOKENS = 4
TEXT_DIM = 4096
NUM_DIGITS = 10
#: Index of the empty prompt (classifier-free guidance's negative).
EMPTY = NUM_DIGITS

# A 5x7 font, one string per row, '#' on.
_FONT: dict[int, tuple[str, ...]] = {
    0: (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    1: ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    2: (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    3: ("####.", "....#", "....#", ".###.", "....#", "....#", "####."),
    4: ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    5: ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    6: ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    7: ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    8: (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    9: (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
}


def direction(digit: int) -> tuple[float, float]:
    """Velocity ``(dy, dx)`` in pixels per frame of ``digit``'s motion.

    The ten digits take ten headings 36 degrees apart, so neighbouring
    prompts differ in both shape and motion.
    """
    angle = 2.0 * math.pi * digit / NUM_DIGITS
    return SPEED * math.sin(angle), SPEED * math.cos(angle)


def prompt_text(digit: int) -> str:
    """A human-readable name of a prompt, for logs and figures."""
    if digit == EMPTY:
        return "(empty prompt)"
    # Screen angles: 0 degrees is rightwards, angles turn clockwise (y points down).
    return f"digit {digit} moving at {360 * digit // NUM_DIGITS} deg"


def _glyphs() -> torch.Tensor:
    """The ten glyphs at renderer resolution, softened at the edges: (10, h, w)."""
    scale = round(CELL * SUPER)
    out = []
    for d in range(NUM_DIGITS):
        bitmap = torch.tensor([[c == "#" for c in row] for row in _FONT[d]], dtype=torch.float32)
        big = bitmap.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
        # A small box blur rounds the pixel-font corners a little, so edges
        # are anti-aliased after downsampling instead of hard steps.
        k = SUPER + 1
        big = F.avg_pool2d(F.pad(big[None, None], (k // 2,) * 4), k, stride=1)[0, 0]
        out.append(big)
    return torch.stack(out)


GLYPHS = _glyphs()
GLYPH_H, GLYPH_W = GLYPHS.shape[-2] / SUPER, GLYPHS.shape[-1] / SUPER


def render(digits: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Clips of ``digits`` starting at ``starts``: (n, FRAMES, CANVAS, CANVAS) in 0..1.

    ``starts`` is (n, 2): the top-left corner ``(y, x)`` at frame 0 in pixels;
    the glyph then moves by :func:`direction` each frame. Positions are
    rounded to 1/SUPER pixel and the canvas is area-averaged down, so motion
    is smooth and sub-pixel.
    """
    n = digits.shape[0]
    hi = CANVAS * SUPER
    gh, gw = GLYPHS.shape[-2:]
    canvas = torch.zeros(n, FRAMES, hi + 2 * gh, hi + 2 * gw)
    for i in range(n):
        d = int(digits[i])
        dy, dx = direction(d)
        for f in range(FRAMES):
            y = round((float(starts[i, 0]) + dy * f) * SUPER) + gh
            x = round((float(starts[i, 1]) + dx * f) * SUPER) + gw
            canvas[i, f, y : y + gh, x : x + gw] = GLYPHS[d]
    canvas = canvas[:, :, gh : gh + hi, gw : gw + hi]
    return F.avg_pool2d(canvas, SUPER).clamp(0.0, 1.0)


def random_starts(digits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Start corners that keep the whole glyph on the canvas in every frame."""
    n = digits.shape[0]
    out = torch.empty(n, 2)
    u = torch.rand(n, 2, generator=gen)
    for i in range(n):
        dy, dx = direction(int(digits[i]))
        travel = (dy * (FRAMES - 1), dx * (FRAMES - 1))
        for axis, (size, move) in enumerate(((GLYPH_H, travel[0]), (GLYPH_W, travel[1]))):
            lo = max(0.0, -move)
            hi = CANVAS - size - max(0.0, move)
            out[i, axis] = lo + (hi - lo) * u[i, axis]
    return out


def random_clips(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` clips with random digits and positions: ``(digits, frames)``."""
    digits = torch.randint(0, NUM_DIGITS, (n,), generator=gen)
    return digits, render(digits, random_starts(digits, gen))


def to_patches(frames: torch.Tensor) -> torch.Tensor:
    """(n, T, H, W) pixels -> (n, T, H/4, W/4, 16) patch vectors."""
    n, t, h, w = frames.shape
    x = frames.reshape(n, t, h // PATCH, PATCH, w // PATCH, PATCH)
    return x.permute(0, 1, 2, 4, 3, 5).reshape(n, t, h // PATCH, w // PATCH, CHANNELS)


def from_patches(patches: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_patches`."""
    n, t, hp, wp, _ = patches.shape
    x = patches.reshape(n, t, hp, wp, PATCH, PATCH).permute(0, 1, 2, 4, 3, 5)
    return x.reshape(n, t, hp * PATCH, wp * PATCH)


@dataclass(frozen=True)
class Codec:
    """The linear latent map plus the prompt embeddings of the embedded model.

    ``basis`` (16, 16) has the principal directions of 4x4 patches as columns,
    ``scale`` (16) divides each coefficient so channels have about unit
    variance, ``prompts`` is (11, PROMPT_TOKENS, 4096): digits 0-9, then the
    empty prompt.
    """

    patch_mean: torch.Tensor
    basis: torch.Tensor
    scale: torch.Tensor
    prompts: torch.Tensor

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(n, T, H, W) pixels -> (n, 16, T, H/4, W/4) processed latents."""
        c = (to_patches(frames) - self.patch_mean) @ self.basis / self.scale
        return c.permute(0, 4, 1, 2, 3).contiguous()

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(n, 16, T, h, w) processed latents -> (n, T, 4h, 4w) pixels in 0..1."""
        c = latent.float().permute(0, 2, 3, 4, 1)
        patches = (c * self.scale) @ self.basis.T + self.patch_mean
        return from_patches(patches).clamp(0.0, 1.0)

    def conditioning(self, digit: int) -> torch.Tensor:
        """The prompt embedding of ``digit`` (or :data:`EMPTY`) as (1, tokens, 4096)."""
        return self.prompts[digit : digit + 1].clone()

    def save(self, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
        from safetensors.torch import save_file

        tensors = {
            "patch_mean": self.patch_mean,
            "basis": self.basis,
            "scale": self.scale,
            "prompts": self.prompts.to(torch.float16),
        }
        meta = {"format": "comfyui-magcache/embedded-codec", "metadata": json.dumps(metadata or {}, sort_keys=True)}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> Codec:
        from safetensors.torch import load_file

        t = load_file(str(path))
        return cls(t["patch_mean"], t["basis"], t["scale"], t["prompts"].float())


def fit_codec(gen: torch.Generator, clips: int = 2048) -> Codec:
    """Fit the PCA of 4x4 patches on freshly drawn clips and draw the prompts.

    The rotation is complete (16 of 16 directions), so encode/decode is exact
    up to float rounding; the fit only decides which channel carries what.
    Channels whose variance is tiny (flat background directions) are scaled
    by a floor instead of their own spread, so that noise in them, which
    the model will never fully remove, decodes to something invisible.
    """
    _, frames = random_clips(clips, gen)
    mean, basis, scale = patch_pca(to_patches(frames).reshape(-1, CHANNELS))
    prompts = torch.randn((NUM_DIGITS + 1, PROMPT_TOKENS, TEXT_DIM), generator=gen)
    return Codec(mean, basis, scale, prompts)


def patch_pca(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean, basis, scale)`` of patch vectors ``(n, d)``: principal directions as columns, largest first.

    Computed in float64, returned in float32. Sign convention: the largest entry of each direction is
    positive, so the fit is the same wherever eigh's arbitrary signs land. ``scale`` is each direction's
    spread, floored at 5% of the largest (see :func:`fit_codec`).
    """
    p = patches.double()
    mean = p.mean(0)
    cov = (p - mean).T @ (p - mean) / (p.shape[0] - 1)
    eigval, eigvec = torch.linalg.eigh(cov)
    order = torch.argsort(eigval, descending=True)
    eigval, eigvec = eigval[order].clamp_min(0.0), eigvec[:, order]
    signs = torch.sign(eigvec[eigvec.abs().argmax(0), torch.arange(p.shape[1])])
    eigvec = eigvec * signs
    std = eigval.sqrt()
    scale = torch.maximum(std, 0.05 * std[0])
    return mean.float(), eigvec.float(), scale.float()
