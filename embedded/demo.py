"""The demo: MagCache on the embedded tiny Wan 2.1, with and without, side by side.

Run from the pack's folder (or anywhere), with a ComfyUI checkout at
``$COMFYUI_PATH`` or ``~/ComfyUI`` (or the ComfyUI whose ``custom_nodes`` holds
the pack)::

    python embedded/demo.py

What it does, in the order a user would in ComfyUI:

1. loads ``tiny_wan_digits.safetensors`` through ComfyUI's own diffusion-model
   loader (the ``UNETLoader`` code path), which detects it as Wan 2.1 T2V;
2. runs one generation through the **MagCache Calibrate** node, which records
   the model's magnitude curve (into a temporary curve folder, so your
   ``models/magcache`` is left alone);
3. applies the **MagCache** node with that curve at its recommended settings;
4. generates every prompt with the plain model and with MagCache (same seed),
   timing each run and counting the model calls that ran the block stack;
5. prints, per prompt and in total: steps computed, wall time, speedup, and
   PSNR/SSIM of the decoded frames against the uncached run; writes a PNG with
   the frames side by side (uncached | MagCache) and the recorded curve.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: find ComfyUI and register the pack first
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _bootstrap

    _bootstrap.boot()

from comfyui_magcache.embedded import codec as cdc
from comfyui_magcache.embedded import metrics
from comfyui_magcache.embedded.codec import CODEC_FILE, MODEL_FILE

CURVE_NAME = "tiny_wan_digits_demo"


@dataclass(frozen=True)
class Settings:
    """Sampler settings of a generation (what a KSampler node would hold)."""

    steps: int = 30
    cfg: float = 5.0
    sampler: str = "uni_pc"
    scheduler: str = "simple"
    #: Wan 2.2's split: the schedule run as two sampler runs (KSamplerAdvanced's start/end step), the second
    #: starting at this step on the first's output without new noise; 0 runs it in one.
    split: int = 0


@dataclass
class Generation:
    """One sampling run: decoded frames, wall time, and how often the block stack ran."""

    frames: torch.Tensor  # (T, H, W) in 0..1
    seconds: float
    calls: int  # forwards of the diffusion model (cond and uncond batched: one per model evaluation)
    computed: int  # of those, the ones that ran the block stack
    branches: int = 0  # batch rows through the diffusion model (2 per call under CFG)
    computed_branches: int = 0  # of those, the rows that ran the block stack (CFG-Cache runs one row)
    block_rows: int = 0  # rows through every block of the stack, summed over blocks

    @property
    def compute_speedup(self) -> float:
        """Real compute saved: branch rows an uncached run computes / rows this one computed."""
        return self.branches / self.computed_branches if self.computed_branches else 1.0


def load_model(path: Path = MODEL_FILE) -> Any:
    """The embedded model through ComfyUI's diffusion-model loader (what ``UNETLoader`` calls)."""
    import comfy.sd

    patcher = comfy.sd.load_diffusion_model(str(path))
    name = type(patcher.model.model_config).__name__
    if name != "WAN21_T2V":
        raise RuntimeError(f"ComfyUI detected {path.name} as {name}, expected WAN21_T2V")
    return patcher


def load_codec(path: Path = CODEC_FILE) -> cdc.Codec:
    return cdc.Codec.load(path)


def stack_blocks(patcher: Any) -> list[torch.nn.Module]:
    """Every block of the family's stacks, in the order a computed call runs them."""
    from comfyui_magcache.hooks.families import blocks_of, family_of

    dm = patcher.model.diffusion_model
    family = family_of(dm, patcher.model.model_config)
    if family is None or not family.stacks:
        raise RuntimeError(f"no block stack known for {type(dm).__name__}")
    return [b for st in family.stacks for b in (blocks_of(dm, st.attr) or [])]


def _rows(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Batch rows of a block call: its first tensor argument's first dimension (blocks take them either way)."""
    for v in (*args, *kwargs.values()):
        if isinstance(v, torch.Tensor):
            return v.shape[0]
    return 0


@contextmanager
def count_stack_runs(patcher: Any) -> Iterator[list[int]]:
    """Count model calls and block runs while sampling: yields ``[calls, stack_runs, rows, stack_rows,
    block_rows]`` (rows: batch rows an uncached run would compute, 2 per call when cond and uncond are batched;
    stack_rows: the rows that ran the block stack, 1 on a call where CFG-Cache ran one branch; block_rows: rows
    through every block, which counts a method that always runs some blocks, First Block Cache, fairly).

    A model call is a forward of the diffusion model (cond and uncond go
    through it as one batch here). The last transformer block runs exactly
    when the block stack is computed: MagCache's skip returns before it, and
    EasyCache/LazyCache skip the whole model. Forwards, not sampler steps:
    heun, dpm_2 and other samplers call the model more than once per step.
    """
    counts = [0, 0, 0, 0, 0]

    def on_model(_: Any, args: tuple[Any, ...]) -> None:
        counts[0] += 1
        counts[2] = max(counts[2], args[0].shape[0])  # rows of a full call; times calls when done

    def on_block(_: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        counts[4] += _rows(args, kwargs)

    def on_last(_: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        counts[1] += 1
        counts[3] += _rows(args, kwargs)

    dm = patcher.model.diffusion_model
    blocks = stack_blocks(patcher)
    handles = [dm.register_forward_pre_hook(on_model), blocks[-1].register_forward_pre_hook(on_last, with_kwargs=True)]
    handles += [b.register_forward_pre_hook(on_block, with_kwargs=True) for b in blocks]
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()
        counts[2] *= counts[0]  # what an uncached run computes: every call with all its rows


def timed_sample(
    patcher: Any, latent: torch.Tensor, positive: Any, negative: Any, settings: Settings, seed: int
) -> tuple[torch.Tensor, float, list[int]]:
    """One run of ComfyUI's sampler: ``(latent out, seconds, counts)``, counts as :func:`count_stack_runs` gives.

    Inference mode, as ComfyUI's executor samples: no autograd bookkeeping in
    the timings. On a GPU the clock waits for the device at both ends.
    """
    import comfy.sample

    noise = comfy.sample.prepare_noise(latent, seed)
    with count_stack_runs(patcher) as counts, torch.inference_mode():
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        if settings.split:
            first = comfy.sample.sample(
                patcher, noise, settings.steps, settings.cfg, settings.sampler, settings.scheduler, positive,
                negative, latent, start_step=0, last_step=settings.split, force_full_denoise=False, seed=seed,
                disable_pbar=True,
            )
            out = comfy.sample.sample(
                patcher, torch.zeros_like(noise), settings.steps, settings.cfg, settings.sampler, settings.scheduler,
                positive, negative, first, disable_noise=True, start_step=settings.split, last_step=settings.steps,
                force_full_denoise=True, seed=seed, disable_pbar=True,
            )
        else:
            out = comfy.sample.sample(
                patcher, noise, settings.steps, settings.cfg, settings.sampler, settings.scheduler, positive,
                negative, latent, seed=seed, disable_pbar=True,
            )
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return out, seconds, counts


def generate(patcher: Any, codec: cdc.Codec, digit: int, seed: int, settings: Settings) -> Generation:
    """Generate the clip of ``digit`` with ComfyUI's sampler, the empty prompt as negative."""
    latent = torch.zeros(1, cdc.CHANNELS, cdc.FRAMES, cdc.LATENT_SIDE, cdc.LATENT_SIDE)
    positive = [[codec.conditioning(digit), {}]]
    negative = [[codec.conditioning(cdc.EMPTY), {}]]
    out, seconds, (calls, computed, rows, computed_rows, block_rows) = timed_sample(
        patcher, latent, positive, negative, settings, seed
    )
    # The sampler returns the stored latent format; the codec reads the model's own.
    frames = codec.decode(patcher.model.process_latent_in(out))[0]
    return Generation(frames, seconds, calls, computed, rows, computed_rows, block_rows)


@contextmanager
def curve_folder(path: Path) -> Iterator[None]:
    """Put ``path`` first among ComfyUI's curve folders for the duration, then restore the list."""
    import folder_paths

    from comfyui_magcache.calibration import catalog

    catalog.register_folder()
    saved = folder_paths.folder_names_and_paths[catalog.FOLDER]
    folder_paths.folder_names_and_paths[catalog.FOLDER] = ([str(path), *saved[0]], set(saved[1]))
    try:
        yield
    finally:
        folder_paths.folder_names_and_paths[catalog.FOLDER] = saved
        # ComfyUI caches each folder's listing with the mtimes of its paths and
        # re-reads them on the next lookup; a cached listing naming the deleted
        # temporary folder would make every later lookup fail.
        folder_paths.filename_list_cache.pop(catalog.FOLDER, None)


def calibrate(
    patcher: Any,
    codec: cdc.Codec,
    digits: list[int],
    seed: int,
    settings: Settings,
    name: str,
    level: str = "auto",
) -> Any:
    """Record a curve with the MagCache Calibrate node over ``digits`` (runs combined); return the curve.

    ``level`` is the node's input: "auto" (the block stack) or "output".
    """
    runs = [lambda m, d=d, i=i: generate(m, codec, d, seed + i, settings) for i, d in enumerate(digits)]
    return record_curve(patcher, runs, name, level)


def record_curve(patcher: Any, runs: list[Callable[[Any], Any]], name: str, level: str = "auto") -> Any:
    """Record a curve with the MagCache Calibrate node: each of ``runs`` samples the recording model once,
    the later runs joining the first; return the curve as the catalog loads it."""
    from comfyui_magcache.calibration import catalog
    from comfyui_magcache.nodes.calibrate_node import MagCacheCalibrate

    recording, file_name = MagCacheCalibrate.execute(patcher, name, "replace", level).result
    for i, run in enumerate(runs):
        run(recording)
        if i == 0:  # later runs join the first one
            recording, _ = MagCacheCalibrate.execute(patcher, name, "combine", level).result
    return catalog.load_named_curve(file_name)


def page_defaults() -> dict[str, Any]:
    """The MagCache node's inputs as a new node in the page has them (an API call without them gets the
    first node's behaviour instead, the paper's rule)."""
    from comfyui_magcache.cache.config import DEFAULT_CFG_CACHE, DEFAULT_REUSE, DEFAULT_SPEED, DEFAULT_WHEN
    from comfyui_magcache.nodes.magcache_node import BY_CURVE

    return {"speed": DEFAULT_SPEED, "schedule": DEFAULT_WHEN.value, "reuse": DEFAULT_REUSE.value,
            "cfg_cache": DEFAULT_CFG_CACHE, "settings": BY_CURVE}


def with_magcache(patcher: Any, curve_name: str, **overrides: Any) -> Any:
    """The MagCache node applied to ``patcher`` with the saved curve (recommended settings unless overridden)."""
    from comfyui_magcache.nodes.magcache_node import MagCacheApply

    return MagCacheApply.execute(patcher, curve=curve_name, **overrides).result[0]


def _frames_strip(frames: torch.Tensor, zoom: int) -> np.ndarray:
    strip = torch.cat(list(frames), dim=1)
    img = (strip.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return np.kron(img, np.ones((zoom, zoom), dtype=np.uint8))


def write_png(
    path: Path, rows: list[tuple[str, Generation, Generation, float, float]], curve_image: np.ndarray, title: str
) -> None:
    """Frames of each prompt, uncached | MagCache, above the curve plot."""
    from PIL import Image, ImageDraw

    zoom, gap, label_h, pad = 4, 24, 18, 12
    strips = [(_frames_strip(a.frames, zoom), _frames_strip(b.frames, zoom)) for _, a, b, _, _ in rows]
    sw, sh = strips[0][0].shape[1], strips[0][0].shape[0]
    grid_w = 2 * sw + gap
    plot = Image.fromarray((np.clip(curve_image, 0, 1) * 255).astype(np.uint8))
    width = max(grid_w, plot.width) + 2 * pad
    height = pad + 2 * label_h + len(rows) * (sh + label_h + 6) + pad + plot.height + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x0 = pad + (width - 2 * pad - grid_w) // 2
    draw.text((pad, pad), title, fill=(20, 20, 20))
    y = pad + label_h
    draw.text((x0, y), "uncached", fill=(20, 20, 20))
    draw.text((x0 + sw + gap, y), "MagCache", fill=(20, 20, 20))
    y += label_h
    for (label, a, b, p, s), (ia, ib) in zip(rows, strips):
        draw.text((x0, y), f"{label}: {a.computed}/{a.calls} vs {b.computed}/{b.calls} computed, "
                  f"PSNR {p:.1f} dB, SSIM {s:.3f}", fill=(60, 60, 60))
        y += label_h
        canvas.paste(Image.fromarray(ia).convert("RGB"), (x0, y))
        canvas.paste(Image.fromarray(ib).convert("RGB"), (x0 + sw + gap, y))
        y += sh + 6
    canvas.paste(plot, ((width - plot.width) // 2, y + pad))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The demo; returns its figures (the host test reads them)."""
    from tqdm import tqdm

    from comfyui_magcache.nodes.calibrate_node import MagCacheCurvePlot

    torch.set_num_threads(args.threads)
    settings = Settings(steps=args.steps, cfg=args.cfg, sampler=args.sampler, scheduler=args.scheduler)
    digits = [int(d) for d in args.prompts.split(",")]
    patcher = load_model(Path(args.model))
    codec = load_codec(Path(args.codec))
    bar = tqdm(total=1 + 2 * len(digits), desc="demo", unit="run", file=sys.stdout)
    with tempfile.TemporaryDirectory() as tmp, curve_folder(Path(tmp)):
        bar.set_postfix_str("calibrating")
        curve = calibrate(patcher, codec, [args.calibration_digit], args.seed + 1000, settings, CURVE_NAME)
        bar.update(1)
        cached_model = with_magcache(patcher, f"{CURVE_NAME}.safetensors", **page_defaults())
        (plot,) = MagCacheCurvePlot.execute(f"{CURVE_NAME}.safetensors", samples=True).result
    rows = []
    for digit in digits:
        bar.set_postfix_str(f"digit {digit}: uncached")
        a = generate(patcher, codec, digit, args.seed + digit, settings)
        bar.update(1)
        bar.set_postfix_str(f"digit {digit}: MagCache")
        b = generate(cached_model, codec, digit, args.seed + digit, settings)
        bar.update(1)
        p = float(metrics.psnr(b.frames[None], a.frames[None])[0])
        s = float(metrics.ssim(b.frames[None], a.frames[None])[0])
        rows.append((cdc.prompt_text(digit), a, b, p, s))
    bar.close()

    def total(i: int, field: str) -> float:
        return sum(getattr(r[i], field) for r in rows)

    plain_s, cached_s = total(1, "seconds"), total(2, "seconds")
    calls, computed = total(2, "calls"), total(2, "computed")
    figures = {
        "prompts": len(rows),
        "settings": vars(settings),
        "uncached_seconds": plain_s,
        "magcache_seconds": cached_s,
        "speedup": plain_s / cached_s,
        "ideal_speedup": calls / computed,
        "calls": calls,
        "computed": computed,
        "psnr": float(np.mean([r[3] for r in rows])),
        "ssim": float(np.mean([r[4] for r in rows])),
        "curve_steps": curve.steps,
    }
    print(f"\nMagCache demo on the embedded tiny Wan 2.1 ({settings.steps} steps, {settings.sampler}/"
          f"{settings.scheduler}, cfg {settings.cfg:g}); curve recorded by MagCache Calibrate")
    print(f"{'prompt':<28}{'steps computed':>16}{'uncached s':>12}{'MagCache s':>12}{'speedup':>9}"
          f"{'PSNR dB':>9}{'SSIM':>8}")
    for label, a, b, p, s in rows:
        print(f"{label:<28}{f'{b.computed}/{b.calls}':>16}{a.seconds:>12.2f}{b.seconds:>12.2f}"
              f"{a.seconds / b.seconds:>8.2f}x{p:>9.2f}{s:>8.4f}")
    print(f"{'all prompts':<28}{f'{computed}/{calls}':>16}{plain_s:>12.2f}{cached_s:>12.2f}"
          f"{figures['speedup']:>8.2f}x{figures['psnr']:>9.2f}{figures['ssim']:>8.4f}")
    print(f"ideal speedup (model calls / calls that ran the block stack): {figures['ideal_speedup']:.2f}x")
    title = (f"MagCache on the embedded tiny Wan 2.1: {figures['speedup']:.2f}x wall time, "
             f"mean PSNR {figures['psnr']:.1f} dB, SSIM {figures['ssim']:.3f} against uncached")
    out = Path(args.out)
    write_png(out, rows, plot[0].numpy(), title)
    print(f"wrote {out}")
    figures["png"] = str(out)
    return figures


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="MagCache demo on the embedded tiny Wan 2.1 model.")
    p.add_argument("--prompts", default="0,1,2,3,4,5,6,7,8,9", help="digits to generate, comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calibration-digit", type=int, default=3)
    p.add_argument("--steps", type=int, default=Settings.steps)
    p.add_argument("--cfg", type=float, default=Settings.cfg)
    p.add_argument("--sampler", default=Settings.sampler)
    p.add_argument("--scheduler", default=Settings.scheduler)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default=str(MODEL_FILE))
    p.add_argument("--codec", default=str(CODEC_FILE))
    p.add_argument("--out", default="magcache_demo.png", help="where to write the PNG")
    return p.parse_args(argv)


if __name__ == "__main__":
    run(parse_args())
