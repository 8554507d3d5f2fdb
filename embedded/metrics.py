"""Image metrics for the demo and the benchmark, in plain torch.

* :func:`psnr` and :func:`ssim` compare decoded frames (values in 0..1) of a
  cached run with the uncached run of the same prompt and seed: how much the
  cache changed the picture. SSIM is the usual one (Gaussian window of 11
  pixels, sigma 1.5, constants for a data range of 1), computed per frame
  and averaged.
* :func:`read_clips` judges a clip against the data the model was trained on:
  which digit it shows (best normalised cross-correlation with the ten
  glyphs), how well the best glyph matches, and how far the measured motion
  is from the prompted one. These make "clean digits with consistent motion"
  a number instead of an impression.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 (the usual name)

from . import codec as cdc


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each clip, for values in 0..1; (n, ...) -> (n,)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean structural similarity of each clip; (n, T, H, W) in 0..1 -> (n,).

    Local statistics use a Gaussian window over the valid region (no padding),
    as in the original definition.
    """
    n, t, h, w = a.shape
    x = a.float().reshape(n * t, 1, h, w)
    y = b.float().reshape(n * t, 1, h, w)
    win = _gaussian_window()[None, None]
    c1, c2 = 0.01**2, 0.03**2
    mx, my = F.conv2d(x, win), F.conv2d(y, win)
    sxx = F.conv2d(x * x, win) - mx * mx
    syy = F.conv2d(y * y, win) - my * my
    sxy = F.conv2d(x * y, win) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1).reshape(n, t).mean(1)


@dataclass(frozen=True)
class ClipReading:
    """What :func:`read_clips` found in a batch of clips (one entry per clip)."""

    digit: torch.Tensor  # the best-matching digit
    match: torch.Tensor  # mean over frames of the prompted digit's best NCC (1 = the glyph exactly)
    motion_error: torch.Tensor  # |measured - prompted| velocity, pixels per frame


def _templates() -> torch.Tensor:
    """The glyphs at pixel resolution, zero-mean and unit-norm: (10, 1, h, w)."""
    g = F.avg_pool2d(cdc.GLYPHS[:, None], cdc.SUPER)
    g = g - g.mean(dim=(-2, -1), keepdim=True)
    return g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def read_clips(frames: torch.Tensor, prompted: torch.Tensor) -> ClipReading:
    """Read digit, glyph match and motion of each clip; (n, T, H, W) pixels, (n,) prompted digits."""
    n, t, h, w = frames.shape
    tpl = _templates()
    th, tw = tpl.shape[-2:]
    x = frames.float().reshape(n * t, 1, h, w)
    # Normalised cross-correlation at every position: template (zero mean,
    # unit norm) against the window, divided by the window's own spread.
    pad = (tw // 2, tw - 1 - tw // 2, th // 2, th - 1 - th // 2)
    xp = F.pad(x, pad)
    corr = F.conv2d(xp, tpl)
    ones = torch.ones(1, 1, th, tw)
    s1 = F.conv2d(xp, ones)
    s2 = F.conv2d(xp * xp, ones)
    spread = (s2 - s1 * s1 / (th * tw)).clamp_min(1e-6).sqrt()
    ncc = (corr / spread).reshape(n, t, 10, h, w)
    best = ncc.flatten(3).max(3)  # values and positions, (n, t, 10)
    digit = best.values.mean(1).argmax(1)
    idx = prompted.view(n, 1, 1).expand(n, t, 1)
    match = best.values.gather(2, idx)[..., 0].mean(1)
    pos = best.indices.gather(2, idx)[..., 0]  # (n, t) flat positions of the prompted glyph
    yx = torch.stack((pos // w, pos % w), dim=-1).float()  # (n, t, 2)
    frame = torch.arange(t, dtype=torch.float32)
    fc = frame - frame.mean()
    velocity = ((yx - yx.mean(1, keepdim=True)) * fc.view(1, t, 1)).sum(1) / fc.pow(2).sum()
    want = torch.tensor([cdc.direction(int(d)) for d in prompted])
    return ClipReading(digit=digit, match=match, motion_error=(velocity - want).norm(dim=1))
