"""The layout testbed's world: coloured shapes that the prompt names and the noise places, on stripes.

Why a second world: on the tiny Wan of moving digits a wrong early sampling
step costs almost nothing. On real image models the first steps set the
layout: where things go is decided early, by the noise, and a step that goes
wrong there moves or loses them. Here the prompt names up to two objects
(shape and colour) and a background palette; the noise decides everything
else: which quadrant of the canvas each object lands in, where inside it,
and the stripes' angle and phase. :func:`read_layout` finds each prompted
object back by its colour, and the benchmark measures how far objects moved
from the uncached picture.

Why the noise and not the prompt places them: a first version put each
object in a quadrant the prompt named; after 2500 of its training steps the
model drew the right colours and shapes but had not learned to bind a word to
a place (layout score 0.06, see ``train_layout.py``), which a model of this
size does not learn in the two hours this testbed may take. Placement by the
noise is also how real models behave for everything a prompt leaves open.

Latents are a fixed linear map of the pixels, as for the digits (``codec.py``):
each 2x2 RGB patch (12 values) becomes 12 of the 16 latent channels through a
PCA rotation, scaled to unit variance; the last four channels are always zero
(the model learns to leave them empty). The map is exact, so every sample can
be decoded and looked at. Latents are HunyuanVideo's *processed* latent of a
single frame, ``(n, 16, 1, 16, 16)``: 64 image tokens at patch 1x2x2.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 (the usual name)

from .codec import patch_pca

#: The testbed's files: a benchmark instrument, so kept out of ComfyUI's model lists (``diffusion_models/`` is
#: registered with ComfyUI, this folder is not) and out of the registry archive (``.comfyignore``).
MODEL_FILE = Path(__file__).resolve().parent / "testbeds" / "tiny_hunyuan_layout.safetensors"
CODEC_FILE = Path(__file__).resolve().parent / "testbeds" / "tiny_hunyuan_layout_codec.safetensors"

CANVAS = 32
PATCH = 2
PIXEL_CHANNELS = 3
SIGNAL = PATCH * PATCH * PIXEL_CHANNELS  # 12 latent channels carry the picture
CHANNELS = 16  # HunyuanVideo's latent width; channels SIGNAL.. stay zero
LATENT_SIDE = CANVAS // PATCH
SUPER = 4  # renderer oversampling, for anti-aliased edges
#: Object radius in pixels and how far the noise may move it from its quadrant's centre.
RADIUS = 4.5
JITTER = 3.0
STRIPE_PERIOD = 5.0
TEXT_DIM = 4096
POOLED_DIM = 768
PROMPT_TOKENS = 3  # object, object (or "none"), background

SHAPES = ("square", "disc", "triangle")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.16, 0.10),
    "green": (0.12, 0.80, 0.22),
    "blue": (0.16, 0.32, 0.96),
}
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
#: Background palettes: the two greys the stripes alternate between.
BACKGROUNDS: dict[str, tuple[float, float]] = {"light": (0.55, 0.72), "dark": (0.12, 0.30)}


@dataclass(frozen=True)
class Scene:
    """What a prompt says: objects as ``(shape, colour)`` indices, and a background index.

    The objects' colours are distinct, so each can be found by its colour alone.
    """

    objects: tuple[tuple[int, int], ...]
    background: int

    def text(self) -> str:
        names = [f"a {COLOURS_NAMES[c]} {SHAPES[s]}" for s, c in self.objects]
        return " and ".join(names) + f" on {tuple(BACKGROUNDS)[self.background]} stripes"


COLOURS_NAMES = tuple(COLOURS)
_COLOUR_RGB = torch.tensor(list(COLOURS.values()))
_BG = torch.tensor(list(BACKGROUNDS.values()))


def quadrant_centre(q: int) -> tuple[float, float]:
    """Centre ``(y, x)`` in pixels of quadrant ``q``."""
    half = CANVAS / 2
    return (q // 2) * half + half / 2, (q % 2) * half + half / 2


def random_scenes(n: int, gen: torch.Generator) -> list[Scene]:
    """``n`` prompts: one or two objects (even odds) of distinct colours."""
    out = []
    for _ in range(n):
        count = 1 + int(torch.randint(0, 2, (1,), generator=gen))
        colours = torch.randperm(len(COLOURS), generator=gen)[:count]
        shapes = torch.randint(0, len(SHAPES), (count,), generator=gen)
        objs = tuple((int(s), int(c)) for s, c in zip(shapes, colours))
        out.append(Scene(objs, int(torch.randint(0, len(BACKGROUNDS), (1,), generator=gen))))
    return out


def _shape_mask(shape: int, yy: torch.Tensor, xx: torch.Tensor, cy: float, cx: float) -> torch.Tensor:
    dy, dx = yy - cy, xx - cx
    if SHAPES[shape] == "square":
        half = RADIUS * 0.85
        return (dy.abs() <= half) & (dx.abs() <= half)
    if SHAPES[shape] == "disc":
        return dy * dy + dx * dx <= RADIUS * RADIUS
    # An upward triangle: apex above the centre, base below it.
    top, bottom = cy - RADIUS, cy + RADIUS * 0.8
    width = (yy - top) / (bottom - top) * RADIUS * 1.1
    return (yy >= top) & (yy <= bottom) & (dx.abs() <= width)


def render(scenes: list[Scene], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Pictures of ``scenes``: ``(images (n, 3, 32, 32) in 0..1, centres (n, 2, 2))``.

    The noise-decided parts come from ``gen``: a quadrant for each object (distinct, so objects never
    overlap), its offset from the quadrant's centre (up to :data:`JITTER` px per axis), and the stripes'
    angle and phase. ``centres`` holds each object's centre ``(y, x)`` (NaN where a scene has one object).
    """
    n = len(scenes)
    side = CANVAS * SUPER
    coords = (torch.arange(side, dtype=torch.float32) + 0.5) / SUPER
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    images = torch.empty(n, 3, side, side)
    centres = torch.full((n, 2, 2), float("nan"))
    angle = torch.rand(n, generator=gen) * math.pi
    phase = torch.rand(n, generator=gen) * 2 * math.pi
    jitter = (torch.rand(n, 2, 2, generator=gen) * 2 - 1) * JITTER
    quads = torch.stack([torch.randperm(len(QUADRANTS), generator=gen)[:2] for _ in range(n)]) if n else None
    for i, scene in enumerate(scenes):
        lo, hi = _BG[scene.background]
        wave = torch.sin(2 * math.pi * (xx * math.cos(angle[i]) + yy * math.sin(angle[i])) / STRIPE_PERIOD + phase[i])
        img = (lo + (hi - lo) * (0.5 + 0.5 * wave)).expand(3, side, side).clone()
        for k, (s, c) in enumerate(scene.objects):
            cy, cx = quadrant_centre(int(quads[i, k]))
            cy, cx = cy + float(jitter[i, k, 0]), cx + float(jitter[i, k, 1])
            centres[i, k] = torch.tensor((cy, cx))
            mask = _shape_mask(s, yy, xx, cy, cx)
            img[:, mask] = _COLOUR_RGB[c].view(3, 1)
        images[i] = img
    return F.avg_pool2d(images, SUPER).clamp(0.0, 1.0), centres


def to_patches(images: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) -> (n, H/2, W/2, 12) patch vectors."""
    n, c, h, w = images.shape
    x = images.reshape(n, c, h // PATCH, PATCH, w // PATCH, PATCH)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(n, h // PATCH, w // PATCH, SIGNAL)


def from_patches(patches: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_patches`."""
    n, hp, wp, _ = patches.shape
    x = patches.reshape(n, hp, wp, PIXEL_CHANNELS, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(n, PIXEL_CHANNELS, hp * PATCH, wp * PATCH)


@dataclass(frozen=True)
class SceneCodec:
    """The linear latent map and the prompt vocabulary of the layout testbed.

    ``basis`` (12, 12) holds the principal directions of 2x2 RGB patches as
    columns and ``scale`` (12) their spreads. The vocabulary is a fixed random
    vector per shape, colour and background, plus "no second object" and the
    empty prompt: an object's token is the normalised sum of its two words'
    vectors, so the model has to learn what each word means wherever it
    appears.
    """

    patch_mean: torch.Tensor
    basis: torch.Tensor
    scale: torch.Tensor
    words: dict[str, torch.Tensor]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(n, 3, 32, 32) pixels -> (n, 16, 1, 16, 16) processed latents."""
        c = (to_patches(images) - self.patch_mean) @ self.basis / self.scale
        pad = torch.zeros(*c.shape[:-1], CHANNELS - SIGNAL)
        return torch.cat((c, pad), dim=-1).permute(0, 3, 1, 2).unsqueeze(2).contiguous()

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(n, 16, 1, 16, 16) processed latents -> (n, 3, 32, 32) pixels in 0..1."""
        c = latent.float()[:, :SIGNAL, 0].permute(0, 2, 3, 1)
        return from_patches((c * self.scale) @ self.basis.T + self.patch_mean).clamp(0.0, 1.0)

    def conditioning(self, scenes: list[Scene] | None, count: int = 1) -> torch.Tensor:
        """The prompt embedding of each scene as (n, 3, 4096); ``None``: ``count`` empty prompts."""
        if scenes is None:
            return self.words["empty"].expand(count, PROMPT_TOKENS, TEXT_DIM).clone()
        rows = []
        for scene in scenes:
            tokens = [self._object(o) for o in scene.objects]
            if len(tokens) == 1:
                tokens.append(self.words["none"])
            tokens.append(self.words["background"][scene.background])
            rows.append(torch.stack(tokens))
        return torch.stack(rows)

    def pooled(self, count: int) -> torch.Tensor:
        """The pooled text vector HunyuanVideo adds to its modulation: zeros (this testbed has no CLIP)."""
        return torch.zeros(count, POOLED_DIM)

    def _object(self, obj: tuple[int, int]) -> torch.Tensor:
        s, c = obj
        return (self.words["shape"][s] + self.words["colour"][c]) / math.sqrt(2.0)

    def save(self, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
        from safetensors.torch import save_file

        tensors = {"patch_mean": self.patch_mean, "basis": self.basis, "scale": self.scale}
        tensors.update({f"word.{k}": v.to(torch.float16) for k, v in self.words.items()})
        meta = {"format": "comfyui-magcache/embedded-scene-codec", "metadata": json.dumps(metadata or {})}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> SceneCodec:
        from safetensors.torch import load_file

        t = load_file(str(path))
        words = {k.removeprefix("word."): v.float() for k, v in t.items() if k.startswith("word.")}
        return cls(t["patch_mean"], t["basis"], t["scale"], words)


def fit_codec(gen: torch.Generator, pictures: int = 1024) -> SceneCodec:
    """Fit the PCA of 2x2 RGB patches on freshly drawn scenes and draw the vocabulary.

    Complete rotation (12 of 12 directions): encoding is exact up to rounding.
    Low-variance directions get a floor scale so leftover noise in them decodes
    to something invisible (as in ``codec.fit_codec``).
    """
    images, _ = render(random_scenes(pictures, gen), gen)
    mean, basis, scale = patch_pca(to_patches(images).reshape(-1, SIGNAL))

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn((*shape, TEXT_DIM), generator=gen)

    words = {
        "shape": draw(len(SHAPES)), "colour": draw(len(COLOURS)), "background": draw(len(BACKGROUNDS)),
        "none": draw(), "empty": draw(),
    }
    return SceneCodec(mean, basis, scale, words)


@dataclass(frozen=True)
class LayoutReading:
    """What :func:`read_layout` found: per picture, and per prompted object (NaN where absent)."""

    found: torch.Tensor  # (n, 2) bool: the object's colour forms one object of about its drawn size
    centre: torch.Tensor  # (n, 2, 2) centre (y, x) of the object's colour
    score: torch.Tensor  # (n,) fraction of the prompted objects found


#: A pixel belongs to a colour when it is this close to it (RGB distance). An object counts as found
#: when its colour covers at least this share of the smallest shape's area, and this share of the colour's
#: pixels lie within WINDOW px of their centre (one object, not colour scattered over the canvas). WINDOW
#: is the radius plus a margin for the triangle's off-centre corners, not a multiple of it: at twice a
#: 7.5 px radius (a larger-object world tried in training) the window spanned 30 of the canvas's 32 px and
#: counted colour scattered in patches as an object.
COLOUR_TOLERANCE = 0.3
FOUND_AREA = 0.5
FOUND_SHARE = 0.8
WINDOW = RADIUS + 2.0


def read_layout(images: torch.Tensor, scenes: list[Scene]) -> LayoutReading:
    """Find each prompted object by its colour: is it there as one object, and where is its centre."""
    n = images.shape[0]
    dist = (images.float().unsqueeze(1) - _COLOUR_RGB.view(1, -1, 3, 1, 1)).norm(dim=2)  # (n, colours, H, W)
    masks = (dist < COLOUR_TOLERANCE).float()
    coords = torch.arange(CANVAS, dtype=torch.float32) + 0.5
    min_area = FOUND_AREA * math.pi * RADIUS * RADIUS * 0.75  # the triangle is the smallest shape
    found = torch.zeros(n, 2, dtype=torch.bool)
    centre = torch.full((n, 2, 2), float("nan"))
    score = torch.zeros(n)
    for i, scene in enumerate(scenes):
        for k, (_, c) in enumerate(scene.objects):
            m = masks[i, c]
            area = float(m.sum())
            if area == 0:
                continue
            cy = float((m.sum(1) * coords).sum()) / area
            cx = float((m.sum(0) * coords).sum()) / area
            centre[i, k] = torch.tensor((cy, cx))
            near = (coords.view(-1, 1) - cy).abs().le(WINDOW) & (coords.view(1, -1) - cx).abs().le(WINDOW)
            found[i, k] = area >= min_area and float((m * near).sum()) >= FOUND_SHARE * area
        score[i] = found[i, : len(scene.objects)].float().mean()
    return LayoutReading(found=found, centre=centre, score=score)


def prompt_reading(images: torch.Tensor, scenes: list[Scene]) -> dict[str, float]:
    """Whether the pictures show what the prompts name, object shapes aside.

    ``prompted_colour_px``: mean pixels of each prompted object's colour (a drawn object covers 45-64);
    ``other_colour_px``: mean pixels of each colour no object of the prompt has; ``background_right``: share of
    pictures whose brightness matches the prompted palette (light or dark stripes).
    """
    near = (images.float().unsqueeze(1) - _COLOUR_RGB.view(1, -1, 3, 1, 1)).norm(dim=2) < COLOUR_TOLERANCE
    areas = near.sum((2, 3))  # (n, colours)
    prompted = [float(areas[i, c]) for i, sc_ in enumerate(scenes) for _, c in sc_.objects]
    other = [float(areas[i, c]) for i, sc_ in enumerate(scenes) for c in range(len(COLOURS))
             if c not in {o[1] for o in sc_.objects}]
    light = tuple(BACKGROUNDS).index("light")
    threshold = sum(sum(v) / 2 for v in BACKGROUNDS.values()) / len(BACKGROUNDS)
    right = [(float(images[i].mean()) > threshold) == (sc_.background == light) for i, sc_ in enumerate(scenes)]
    return {"prompted_colour_px": sum(prompted) / len(prompted), "other_colour_px": sum(other) / max(len(other), 1),
            "background_right": sum(right) / len(right)}


def displacement(a: LayoutReading, b: LayoutReading) -> torch.Tensor:
    """Mean distance in pixels between the objects' centres in two readings of the same prompts.

    An object found in ``a`` but not in ``b`` counts as half the canvas away
    (it was lost), so the number says how far the layout moved, in pixels.
    """
    d = (a.centre - b.centre).norm(dim=-1)  # (n, 2)
    lost = a.found & ~b.found
    d = torch.where(lost | d.isnan(), torch.full_like(d, CANVAS / 2), d)
    return d[a.found].mean() if bool(a.found.any()) else torch.tensor(float("nan"))
