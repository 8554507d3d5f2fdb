"""A small line chart drawn with PIL, for the benchmark's quality-against-speedup figure.

PIL ships with ComfyUI, so the benchmark needs no plotting library (adding
one to the test environment would reinstall gigabytes).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

PALETTE = (
    (31, 119, 180), (44, 160, 44), (148, 103, 189), (23, 190, 207), (214, 39, 40),
    (255, 127, 14), (140, 86, 75), (127, 127, 127), (188, 189, 34), (227, 119, 194),
)


@dataclass(frozen=True)
class Series:
    """One line: a label, its points, and how to draw it."""

    label: str
    points: Sequence[tuple[float, float]]
    color: tuple[int, int, int]
    dashed: bool = False
    width: int = 3


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow before 10.1 has one fixed-size default font
        return ImageFont.load_default()


def _ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """Round tick values covering ``lo..hi``."""
    raw = (hi - lo) / max(count, 1)
    step = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * step:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _dash(draw: ImageDraw.ImageDraw, a: tuple[float, float], b: tuple[float, float], fill: tuple, width: int) -> None:
    length = math.dist(a, b)
    n = max(1, int(length // 14))
    for i in range(n):
        t0, t1 = i / n, (i + 0.55) / n
        p = (a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0)
        q = (a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1)
        draw.line([p, q], fill=fill, width=width)


def chart(
    series: Sequence[Series], title: str, xlabel: str, ylabel: str, size: tuple[int, int] = (760, 520),
    legend_rows: int | None = None,
) -> Image.Image:
    """Draw ``series`` as lines with markers; returns an RGB image."""
    w, h = size
    ml, mt, mr, mb = 70, 48, 20, 150
    img = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(img)
    xs = [p[0] for s in series for p in s.points]
    ys = [p[1] for s in series for p in s.points]
    if not xs:
        d.text((ml, mt), "no data", fill=(0, 0, 0), font=_font(14))
        return img
    xlo, xhi = min(xs), max(xs)
    ylo, yhi = min(ys), max(ys)
    xpad, ypad = (xhi - xlo) * 0.05 or 0.1, (yhi - ylo) * 0.08 or 0.1
    xlo, xhi, ylo, yhi = xlo - xpad, xhi + xpad, ylo - ypad, yhi + ypad
    x0, x1, y0, y1 = ml, w - mr, mt, h - mb

    def at(x: float, y: float) -> tuple[float, float]:
        return x0 + (x - xlo) / (xhi - xlo) * (x1 - x0), y1 - (y - ylo) / (yhi - ylo) * (y1 - y0)

    small, big = _font(12), _font(15)
    for t in _ticks(xlo, xhi):
        px = at(t, ylo)[0]
        d.line([(px, y0), (px, y1)], fill=(232, 232, 232))
        d.text((px, y1 + 6), f"{t:g}", fill=(60, 60, 60), font=small, anchor="ma")
    for t in _ticks(ylo, yhi):
        py = at(xlo, t)[1]
        d.line([(x0, py), (x1, py)], fill=(232, 232, 232))
        d.text((x0 - 6, py), f"{t:g}", fill=(60, 60, 60), font=small, anchor="rm")
    d.rectangle([x0, y0, x1, y1], outline=(80, 80, 80))
    d.text(((x0 + x1) / 2, 14), title, fill=(20, 20, 20), font=big, anchor="ma")
    d.text(((x0 + x1) / 2, y1 + 26), xlabel, fill=(40, 40, 40), font=small, anchor="ma")
    d.text((x0, y0 - 8), ylabel, fill=(40, 40, 40), font=small, anchor="ld")
    for s in series:
        pts = [at(x, y) for x, y in sorted(s.points)]
        for a, b in itertools.pairwise(pts):
            if s.dashed:
                _dash(d, a, b, s.color, s.width)
            else:
                d.line([a, b], fill=s.color, width=s.width)
        for p in pts:
            d.ellipse([p[0] - 4, p[1] - 4, p[0] + 4, p[1] + 4], fill=s.color)
    # Legend under the plot, in columns.
    rows = legend_rows or math.ceil(len(series) / 2)
    col_w = (x1 - x0) // max(1, math.ceil(len(series) / rows))
    for i, s in enumerate(series):
        cx = x0 + (i // rows) * col_w
        cy = y1 + 50 + (i % rows) * 18
        if s.dashed:
            _dash(d, (cx, cy), (cx + 26, cy), s.color, s.width)
        else:
            d.line([(cx, cy), (cx + 26, cy)], fill=s.color, width=s.width)
        d.text((cx + 32, cy), s.label, fill=(30, 30, 30), font=small, anchor="lm")
    return img


def side_by_side(images: Sequence[Image.Image]) -> Image.Image:
    """Paste images left to right on one white canvas."""
    w = sum(i.width for i in images)
    h = max(i.height for i in images)
    out = Image.new("RGB", (w, h), (255, 255, 255))
    x = 0
    for i in images:
        out.paste(i, (x, 0))
        x += i.width
    return out
