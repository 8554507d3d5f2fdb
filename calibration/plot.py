"""A picture of a calibration: the magnitude ratio against sigma, for ComfyUI's IMAGE output.

Drawn with PIL (which ComfyUI ships) so that the pack needs no plotting
library. The picture answers one question at a glance: does the magnitude law
hold for this model (ratio close to 1 for most of the schedule, falling at the
end), and how far is the curve from the preset of its family?

* the recorded ratio, cond and uncond, as thick lines, with a band of plus or
  minus its spread (token spread and spread across runs together);
* every run the curve was combined from, as a thin line;
* the preset of the same family, dashed, read off on the recorded sigmas,
  because a per-step ratio depends on the step size: comparing each curve on
  its own grid would compare step sizes, not models.

Sigma runs from high (left, where sampling starts) to low (right).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .curve import MagnitudeCurve, RoleCurve

WIDTH, HEIGHT = 960, 540
_SCALE = 2  # drawn at twice the size and scaled down: smooth lines without an antialiasing backend
_COLORS = {"cond": (31, 119, 180), "uncond": (230, 115, 0)}
_GRAY = (120, 120, 120)
_INK = (30, 30, 30)
_GRID = (228, 228, 228)
# Margins of the plot area, at final size: left, top, right, bottom.
_MARGIN = (78, 70, 24, 58)


@dataclass(frozen=True)
class _Frame:
    """Maps data coordinates (sigma, ratio) to canvas pixels."""

    x0: float
    x1: float
    y0: float
    y1: float
    sigma_hi: float
    sigma_lo: float
    ratio_lo: float
    ratio_hi: float

    def point(self, sigma: float, ratio: float) -> tuple[float, float]:
        u = (self.sigma_hi - sigma) / (self.sigma_hi - self.sigma_lo)
        v = (ratio - self.ratio_lo) / (self.ratio_hi - self.ratio_lo)
        return self.x0 + u * (self.x1 - self.x0), self.y1 - v * (self.y1 - self.y0)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's built-in font, scalable where the installed Pillow allows (10.1 and later)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """Round tick values covering ``lo..hi``, about ``count`` of them."""
    span = hi - lo
    raw = span / max(count, 1)
    mag = 10 ** np.floor(np.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = np.ceil(lo / step) * step
    return [float(v) for v in np.arange(first, hi + step * 1e-6, step)]


def _dashed(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], fill: tuple, width: int, dash: int) -> None:
    """A dashed polyline: PIL draws only solid ones."""
    on, left = True, float(dash)
    for (xa, ya), (xb, yb) in pairwise(points):
        length = float(np.hypot(xb - xa, yb - ya))
        pos = 0.0
        while pos < length:
            step = min(left, length - pos)
            if on:
                t0, t1 = pos / length, (pos + step) / length
                draw.line(
                    [(xa + (xb - xa) * t0, ya + (yb - ya) * t0), (xa + (xb - xa) * t1, ya + (yb - ya) * t1)],
                    fill=fill,
                    width=width,
                )
            pos += step
            left -= step
            if left <= 0:
                on, left = not on, float(dash)


def _faint(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """The color mixed half-way with white: for the per-run lines behind the mean."""
    r, g, b = (int(c + (255 - c) * 0.55) for c in color)
    return r, g, b


def _transition_points(rc: RoleCurve) -> tuple[np.ndarray, np.ndarray]:
    """Each ratio is drawn at the sigma the transition reaches."""
    return np.asarray(rc.sigma[1:]), np.asarray(rc.ratio)


def _on_sigmas(reference: RoleCurve, sigma: Sequence[float]) -> np.ndarray:
    """The reference curve's ratio over each transition of ``sigma``."""
    return np.array([reference.transition_ratio(a, b) for a, b in pairwise(sigma)])


def render_curve(
    curve: MagnitudeCurve,
    runs: Sequence[dict[str, RoleCurve]] = (),
    reference: MagnitudeCurve | None = None,
    subtitle: str = "",
    size: tuple[int, int] = (WIDTH, HEIGHT),
) -> np.ndarray:
    """Render ``curve`` as an RGB float32 array ``[H, W, 3]`` in 0..1.

    ``runs`` are the per-run curves it was combined from (drawn thin when there
    are several); ``reference`` is the preset of the same family, if any.
    """
    s = _SCALE
    w, h = size[0] * s, size[1] * s
    ml, mt, mr, mb = (m * s for m in _MARGIN)
    roles = list(curve.roles.items())
    sigma_all = np.concatenate([np.asarray(rc.sigma) for _, rc in roles])
    sigma_hi, sigma_lo = float(sigma_all.max()), float(min(sigma_all.min(), 0.0))

    # Every value drawn decides the vertical range; 1.0 is always shown.
    values = [np.array([1.0])]
    for _, rc in roles:
        ratio = np.asarray(rc.ratio)
        spread = np.asarray(rc.ratio_std) if rc.ratio_std is not None else np.zeros_like(ratio)
        values += [ratio - spread, ratio + spread]
    if len(runs) > 1:
        values += [np.asarray(rc.ratio) for run in runs for rc in run.values()]
    ref_lines: dict[str, np.ndarray] = {}
    if reference is not None:
        for role, rc in roles:
            if role in reference.roles:  # a reference without uncond would draw its cond line twice
                ref_lines[role] = _on_sigmas(reference.roles[role], rc.sigma)
        values += list(ref_lines.values())
    allv = np.concatenate(values)
    lo, hi = float(allv.min()), float(allv.max())
    pad = max(hi - lo, 0.02) * 0.08
    frame = _Frame(ml, w - mr, mt, h - mb, sigma_hi, sigma_lo, lo - pad, hi + pad)

    image = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    small, normal, big = _font(13 * s), _font(15 * s), _font(19 * s)

    # Grid, axes and ticks.
    for tick in _nice_ticks(frame.ratio_lo, frame.ratio_hi):
        _, y = frame.point(sigma_hi, tick)
        draw.line([(frame.x0, y), (frame.x1, y)], fill=_GRID, width=s)
        draw.text((frame.x0 - 8 * s, y), f"{tick:.3g}", fill=_INK, font=small, anchor="rm")
    for tick in _nice_ticks(sigma_lo, sigma_hi):
        x, _ = frame.point(tick, frame.ratio_lo)
        draw.line([(x, frame.y0), (x, frame.y1)], fill=_GRID, width=s)
        draw.text((x, frame.y1 + 8 * s), f"{tick:.3g}", fill=_INK, font=small, anchor="mt")
    draw.rectangle([frame.x0, frame.y0, frame.x1, frame.y1], outline=_INK, width=s)
    one = [frame.point(sigma_hi, 1.0), frame.point(sigma_lo, 1.0)]
    _dashed(draw, one, _GRAY, s, 4 * s)
    draw.text(
        ((frame.x0 + frame.x1) / 2, h - 8 * s),
        "sigma (noise level): sampling runs from left to right",
        fill=_INK,
        font=normal,
        anchor="mb",
    )
    label = Image.new("RGB", (int(frame.y1 - frame.y0), 22 * s), (255, 255, 255))
    ImageDraw.Draw(label).text(
        (label.width / 2, label.height / 2), "ratio ||r_t|| / ||r_prev||", fill=_INK, font=normal, anchor="mm"
    )
    image.paste(label.rotate(90, expand=True), (4 * s, int(frame.y0)))

    # Spread bands first (translucent), then run lines, references and means on top.
    band_layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    band = ImageDraw.Draw(band_layer)
    for role, rc in roles:
        if rc.ratio_std is None:
            continue
        xs, ys = _transition_points(rc)
        sd = np.asarray(rc.ratio_std)
        upper = [frame.point(x, y) for x, y in zip(xs, ys + sd)]
        lower = [frame.point(x, y) for x, y in zip(xs[::-1], (ys - sd)[::-1])]
        band.polygon(upper + lower, fill=(*_COLORS[role], 60))
    image.paste(band_layer, (0, 0), band_layer)
    draw = ImageDraw.Draw(image)
    if len(runs) > 1:
        for run in runs:
            for role, rc in run.items():
                xs, ys = _transition_points(rc)
                draw.line([frame.point(x, y) for x, y in zip(xs, ys)], fill=_faint(_COLORS[role]), width=s)
    for role, rc in roles:
        if role in ref_lines:
            xs = np.asarray(rc.sigma[1:])
            _dashed(draw, [frame.point(x, y) for x, y in zip(xs, ref_lines[role])], _COLORS[role], 2 * s, 7 * s)
    for role, rc in roles:
        xs, ys = _transition_points(rc)
        pts = [frame.point(x, y) for x, y in zip(xs, ys)]
        draw.line(pts, fill=_COLORS[role], width=3 * s, joint="curve")
        for x, y in pts:
            draw.ellipse([x - 3 * s, y - 3 * s, x + 3 * s, y + 3 * s], fill=_COLORS[role])

    # Title and legend.
    draw.text((ml, 12 * s), f"MagCache curve '{curve.name}'", fill=_INK, font=big)
    if subtitle:
        draw.text((ml, 38 * s), subtitle, fill=_GRAY, font=small)
    entries: list[tuple[str, tuple, str]] = []
    for role, _ in roles:
        entries.append((f"{role} (recorded, band = spread)", _COLORS[role], "solid"))
    if len(runs) > 1:
        entries.append((f"each of the {len(runs)} runs", _faint(_COLORS["cond"]), "thin"))
    if reference is not None:
        entries.append((f"preset '{reference.name}', on these sigmas", _COLORS["cond"], "dashed"))
    lx, ly = frame.x0 + 14 * s, frame.y1 - 14 * s - 20 * s * len(entries)
    box_w = 14 * s + max(draw.textlength(t, font=small) for t, _, _ in entries) + 50 * s
    draw.rectangle([lx - 8 * s, ly - 8 * s, lx + box_w, frame.y1 - 8 * s], fill=(255, 255, 255), outline=_GRID, width=s)
    for i, (text, color, style) in enumerate(entries):
        y = ly + 20 * s * i + 8 * s
        seg = [(lx, y), (lx + 34 * s, y)]
        if style == "dashed":
            _dashed(draw, seg, color, 2 * s, 7 * s)
        else:
            draw.line(seg, fill=color, width=(3 if style == "solid" else 1) * s)
        draw.text((lx + 44 * s, y), text, fill=_INK, font=small, anchor="lm")

    image = image.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.float32) / 255.0
