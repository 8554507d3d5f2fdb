"""The benchmark: MagCache's overhead, its realized speedup, and its quality at equal compute.

A script, not a test: it takes tens of minutes on a 2-core CPU. Run it from
anywhere with a ComfyUI checkout at ``$COMFYUI_PATH`` or ``~/ComfyUI``::

    python benchmarks/bench.py                       # sections 1-3 on the CPU
    python benchmarks/bench.py --sections quality    # one section
    python benchmarks/bench.py --gpu                 # section 4, on a CUDA machine

It writes ``benchmarks/results/<section>.json`` (every measurement),
``benchmarks/results/RESULTS.md`` (the tables README quotes) and
``benchmarks/results/quality.png`` (quality against speedup, one line per method).

Sections:

1. **overhead**: MagCache attached but computing every step (threshold 0, so
   every hook runs and every residual is stored) against the plain model, on a
   random-weight Wan 2.1 large enough that the block stack dominates; paired
   runs in one process, order alternating; the median of the per-pair ratios.
2. **speedup**: the same model with the shipped ``wan2.1_t2v_1.3B`` preset at
   its recommended settings: realized speedup (plain wall time / MagCache wall
   time, median of pairs) against the ideal (model calls / calls that ran the
   block stack). The skip plan depends on the curve and the sigmas only, so
   random weights give the real speed.
3. **quality**: the embedded trained model, 16 prompt/seed pairs, PSNR and SSIM
   of the decoded frames against the uncached run, for MagCache (curve from
   one calibration sample and from eight averaged, K = 1..4) at thresholds
   that compute a given number of steps, ComfyUI's EasyCache and LazyCache
   with thresholds tuned to the same numbers, and a uniform schedule
   (compute evenly spaced steps) of the same budget. Uniform runs reuse the
   residual exactly as MagCache does; only the choice of steps differs.
3b. **forecasts** (``--sections forecasts``): every reuse (plain, scaled, the
   damped and undamped lines, the parabola, the Chebyshev fit) on the uniform
   schedule and on the speed target, at 1.5x-4x, over a matrix of samplers and
   step counts (``--protocols``), on the embedded model.
3c. **matrix** (``--sections matrix``, ``matrix.py``): both trained testbeds
   (``embedded/testbeds.py``) over a protocol matrix, the node's modes and
   every peer of ``peers/`` at 1.5x-4x.
m. **memory** (``--sections memory``): the most the cache held in a run, per
   reuse, with the offload device and with CFG-Cache, from the node's summary.
4. **gpu** (``--gpu``): Wan 2.1 1.3B's full architecture with random weights
   at 480p (81 frames, or fewer with ``--frames``), the preset at its
   recommended settings: seconds per step, total and speedup against plain.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: find ComfyUI and register the pack first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "embedded"))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _bootstrap

    _bootstrap.boot(cpu="--gpu" not in sys.argv)

import itertools

import lineplot
import matrix
from merging import MERGED, merge

from comfyui_magcache.cache import magcache as engine
from comfyui_magcache.cache.config import MagCacheConfig, Reuse, When
from comfyui_magcache.cache.planner import ErrorModel, Objective
from comfyui_magcache.cache.policy import plan_run
from comfyui_magcache.calibration import catalog
from comfyui_magcache.embedded import codec as cdc
from comfyui_magcache.embedded import demo, metrics
from comfyui_magcache.hooks.families import family_of

RESULTS = Path(__file__).resolve().parent / "results"
PRESET = "wan2.1_t2v_1.3B"
#: Sampler settings of sections 2-4: the published Wan figures use 50 steps.
STEPS = 50
SETTINGS = demo.Settings(steps=STEPS, cfg=5.0, sampler="euler", scheduler="simple")
#: Speedups (model calls / computed calls) the quality section aims at.
TARGETS = (1.5, 2.0, 2.5, 3.0)


# ----------------------------------------------------------------- helpers --


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    with contextlib.suppress(ImportError):
        import comfyui_version

        info["comfyui"] = comfyui_version.__version__
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def random_wan(dim: int, layers: int, ffn: int, seed: int, dtype: torch.dtype = torch.float32) -> Any:
    """A Wan 2.1 T2V of the given size with seeded random weights, through ComfyUI's loader.

    Matrices get a fan-in scaled normal so activations stay of order one
    through the stack; norm scales are one; other vectors small.
    """
    import comfy.ldm.wan.model as wan
    import comfy.ops
    import comfy.sd

    module = wan.WanModel(
        model_type="t2v", patch_size=(1, 2, 2), in_dim=16, dim=dim, ffn_dim=ffn, freq_dim=256, text_dim=4096,
        out_dim=16, num_heads=dim // 128, num_layers=layers, window_size=(-1, -1), qk_norm=True, cross_attn_norm=True,
        eps=1e-6, operations=comfy.ops.disable_weight_init, dtype=dtype,
    )
    gen = torch.Generator().manual_seed(seed)
    sd = module.state_dict()
    with torch.no_grad():
        for name in sorted(sd):
            t = sd[name]
            if t.ndim >= 2:
                r = torch.randn(t.shape, generator=gen) / math.sqrt(math.prod(t.shape[1:]))
            elif "norm" in name and name.endswith("weight"):
                r = torch.ones(t.shape)
            else:
                r = 0.02 * torch.randn(t.shape, generator=gen)
            t.copy_(r.to(t.dtype))
    patcher = comfy.sd.load_diffusion_model_state_dict(sd)
    del module, sd
    return patcher


def preset_model(patcher: Any, **overrides: Any) -> Any:
    """The MagCache node with the Wan 2.1 1.3B preset (recommended settings unless overridden)."""
    return demo.with_magcache(patcher, PRESET, **overrides)


@dataclass
class Timed:
    seconds: float
    calls: int
    computed: int
    rows: int  # branch rows an uncached run computes
    computed_rows: int  # branch rows that ran the block stack
    block_rows: int  # rows through every block


#: Modes sections 1 and 2 can time (``--mode``): the MagCache node's inputs for each.
SPEED_MODES: dict[str, dict[str, Any]] = {
    "rule": {"schedule": When.RULE.value},
    "default": {},  # the node as a new node in the page has it (demo.page_defaults)
    "target": {"schedule": When.TARGET.value},
    "target-scaled": {"schedule": When.TARGET.value, "reuse": Reuse.SCALED.value},
    "target-extrapolated": {"schedule": When.TARGET.value, "reuse": Reuse.EXTRAPOLATED.value},
    "uniform-extrapolated": {"schedule": When.UNIFORM.value, "reuse": Reuse.EXTRAPOLATED.value},
    "adaptive": {"schedule": When.ADAPTIVE.value},
    "target-cfg-cache": {"schedule": When.TARGET.value, "cfg_cache": True},
}


def mode_model(patcher: Any, mode: str, computing_everything: bool) -> Any:
    """The node in ``mode`` with the preset; computing every call (threshold 0 / speed 1), or at 2x (the rule:
    its recommended threshold)."""
    inputs = demo.page_defaults() if mode == "default" else dict(SPEED_MODES[mode])
    if inputs["schedule"] == When.RULE.value:
        return preset_model(patcher, **({"threshold": 0.0} if computing_everything else {}), **inputs)
    return preset_model(patcher, **{**inputs, "speed": 1.0 if computing_everything else 2.0})


def mode_file(section: str, mode: str) -> str:
    return section if mode == "rule" else f"{section}_{mode}"


def timed_run(patcher: Any, latent: torch.Tensor, context: torch.Tensor, negative: torch.Tensor,
              settings: demo.Settings, seed: int = 0) -> Timed:
    """One sampling run of a random-weight model; wall time and block-stack counts."""
    _, seconds, counts = demo.timed_sample(patcher, latent, [[context, {}]], [[negative, {}]], settings, seed)
    return Timed(seconds, *counts)


def paired(a: Any, b: Any, pairs: int, run: Any, label: str) -> list[tuple[Timed, Timed]]:
    """``pairs`` (a, b) timings, alternating which goes first so drift cancels."""
    out = []
    for i in range(pairs):
        if i % 2 == 0:
            ta, tb = run(a), run(b)
        else:
            tb, ta = run(b), run(a)
        out.append((ta, tb))
        print(f"  {label} pair {i + 1}/{pairs}: {ta.seconds:.2f}s / {tb.seconds:.2f}s", flush=True)
    return out


def _write(name: str, data: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1, sort_keys=True))


def _read(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


# ------------------------------------------------------- sections 1 and 2 --

SPEED_LATENT = (1, 16, 4, 16, 16)  # 4 x 8 x 8 = 256 tokens after Wan's 2x2 patches


def speed_setup(args: argparse.Namespace) -> tuple[dict[str, int], Any, tuple[torch.Tensor, ...]]:
    """The random-weight Wan of sections 1 and 2 and its inputs: ``(size, patcher, (latent, ctx, neg))``.

    Sized so the block stack dominates: what MagCache never skips (sampler
    arithmetic, embeddings, head, CFG) is a fixed cost per call; at 6 blocks
    of dim 512 it was about 5% of a call on 2 CPU cores, which alone holds the
    realized speedup to 95% of the ideal. 16 blocks (the default) bring it
    near 2%, closer to real models (Wan 2.1 1.3B has 30 blocks of dim 1536).
    """
    size = {"dim": 512, "layers": args.speed_layers, "ffn": 2048}
    patcher = random_wan(size["dim"], size["layers"], size["ffn"], seed=1)
    g = torch.Generator().manual_seed(7)
    inputs = (torch.zeros(SPEED_LATENT), torch.randn((1, 8, 4096), generator=g), torch.randn((1, 8, 4096), generator=g))
    return size, patcher, inputs


def section_overhead(args: argparse.Namespace) -> dict[str, Any]:
    """MagCache attached with threshold 0 (every hook runs, nothing skipped) against the plain model."""
    size, patcher, (latent, ctx, neg) = speed_setup(args)
    settings = demo.Settings(steps=args.overhead_steps, cfg=5.0, sampler="euler", scheduler="simple")
    attached = mode_model(patcher, args.mode, computing_everything=True)

    def run(m: Any) -> Timed:
        return timed_run(m, latent, ctx, neg, settings)

    run(patcher)  # warm-up: first-call allocations
    run(attached)
    pairs = paired(patcher, attached, args.pairs, run, "overhead (plain / attached)")
    ratios = [b.seconds / a.seconds for a, b in pairs]
    assert all(b.computed == b.calls for _, b in pairs), "threshold 0 must compute every call"
    result = {
        "mode": args.mode, "model": size, "latent": SPEED_LATENT, "settings": vars(settings), "pairs": args.pairs,
        "plain_seconds": [a.seconds for a, _ in pairs], "attached_seconds": [b.seconds for _, b in pairs],
        "ratios": ratios, "median_ratio": statistics.median(ratios),
        "overhead_percent": 100.0 * (statistics.median(ratios) - 1.0),
        "target_percent": 1.0,
    }
    result["met"] = result["overhead_percent"] <= result["target_percent"]
    print(f"overhead: median {result['overhead_percent']:+.2f}% over {args.pairs} pairs", flush=True)
    return result


def section_speedup(args: argparse.Namespace) -> dict[str, Any]:
    """Realized against ideal speedup with the preset at its recommended settings."""
    size, patcher, (latent, ctx, neg) = speed_setup(args)
    cached = mode_model(patcher, args.mode, computing_everything=False)

    def run(m: Any) -> Timed:
        return timed_run(m, latent, ctx, neg, SETTINGS)

    run(cached)  # warm-up
    pairs = paired(patcher, cached, args.pairs, run, "speedup (plain / MagCache)")
    realized = [a.seconds / b.seconds for a, b in pairs]
    b0 = pairs[0][1]
    ideal = b0.rows / b0.computed_rows  # branch rows: a CFG-Cache call saves one of two
    result = {
        "mode": args.mode, "model": size, "latent": SPEED_LATENT, "settings": vars(SETTINGS), "preset": PRESET,
        "recommended": vars(catalog.Recommended.of(catalog.load_preset(PRESET))), "pairs": args.pairs,
        "calls": b0.calls, "computed": b0.computed, "ideal_speedup": ideal,
        "plain_seconds": [a.seconds for a, _ in pairs], "magcache_seconds": [b.seconds for _, b in pairs],
        "realized": realized, "median_realized": statistics.median(realized),
    }
    result["fraction_of_ideal"] = result["median_realized"] / ideal
    result["met"] = result["fraction_of_ideal"] >= 0.97
    print(f"speedup: realized {result['median_realized']:.3f}x of ideal {ideal:.3f}x "
          f"({100 * result['fraction_of_ideal']:.1f}%)", flush=True)
    return result


def section_memory(args: argparse.Namespace) -> dict[str, Any]:
    """What each reuse keeps: the most the cache held in a run, as the node's summary reports it.

    The random-weight Wan of sections 1-2 at 2x on the preset (50 euler steps, cfg 5: the cond and uncond
    residuals of each computed call), every reuse, CFG-Cache, and the offload path (``cache_device``
    "offload": held on ComfyUI's offload device, the CPU here, so this machine cannot show the GPU's share
    falling to zero; the summary names where the cache lives).
    """
    import logging

    size, patcher, (latent, ctx, neg) = speed_setup(args)
    found: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found.extend(re.findall(r"the cache held up to ([0-9.]+ [KMG]iB)( on \S+)?", record.getMessage()))

    log = logging.getLogger("comfyui-magcache")
    handler, level = Grab(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    rows = []
    try:
        for reuse in Reuse:
            for extra in ({}, {"cache_device": "offload"}, {"cfg_cache": True}):
                found.clear()
                model = preset_model(patcher, **{**demo.page_defaults(), "reuse": reuse.value, "speed": 2.0, **extra})
                timed_run(model, latent, ctx, neg, SETTINGS)
                held, where = found[-1] if found else ("?", "")
                rows.append({"reuse": reuse.value, **extra, "held": held, "where": where.strip()})
                print(f"  {reuse.value} {extra or ''}: {held}{where}", flush=True)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    residual = 2 * math.prod(SPEED_LATENT[2:]) // 4 * size["dim"] * 4  # cond + uncond, 256 tokens, float32
    return {"model": size, "latent": SPEED_LATENT, "settings": vars(SETTINGS), "residual_bytes": residual,
            "rows": rows}


# --------------------------------------------------------------- section 3 --


@dataclass(frozen=True)
class Method:
    """One point of the quality sweep: a line of the table and the model it runs."""

    line: str
    knob: float  # the rule's threshold, the speed asked for, or a tuned threshold (EasyCache, LazyCache)
    make: Any  # patcher -> patched model


def magcache_threshold(
    config: MagCacheConfig, model_sampling: Any, sigmas: list[float], budget: int
) -> float | None:
    """The smallest threshold whose plan computes at most ``budget`` calls, or None if none does.

    Plans depend only on the curve and the sigmas, so this is arithmetic on the
    engine's own settings resolution (retention -> sigma) and ``plan_run``.
    """

    def computed(th: float) -> int:
        settings = replace(config, threshold=th).settings_for(model_sampling)
        return plan_run(config.curve, settings, sigmas, (0, 1)).computed

    lo, hi = 0.0, 5.0
    if computed(hi) > budget:
        return None
    for _ in range(40):
        mid = (lo + hi) / 2
        if computed(mid) > budget:
            lo = mid
        else:
            hi = mid
    return hi


def quality_lines(one: Any, arch: Any, retention: float, k: int) -> list[tuple[str, MagCacheConfig]]:
    """Every cached mode of the pack the quality section measures, as node configs (speed set per column).

    All from the one-sample curve. The uniform lines compute every k-th call from the first (no retention):
    the baseline as the issue states it.
    """
    # The lines that name no error model were measured with "magnitude x step" (the config's default then).
    base = MagCacheConfig(one, arch, 0.0, k, retention, error_model=ErrorModel.STEP)
    lines = [(f"MagCache rule (paper), K={kk}", replace(base, max_skips=kk)) for kk in (2, 3)]
    for reuse in Reuse:
        name = "uniform" if reuse is Reuse.PLAIN else f"uniform, {reuse.value} reuse"
        lines.append((name, replace(base, when=When.UNIFORM, retention=0.0, reuse=reuse)))
    lines.append(("uniform + CFG-Cache", replace(base, when=When.UNIFORM, retention=0.0, cfg_cache=True)))
    for model in ErrorModel:
        lines.append((f"speed target, error {model.value}", replace(base, when=When.TARGET, error_model=model)))
    for reuse in (Reuse.SCALED, Reuse.EXTRAPOLATED):
        lines.append((f"speed target, {reuse.value} reuse", replace(base, when=When.TARGET, reuse=reuse)))
    lines.append(("speed target, no retention", replace(base, when=When.TARGET, retention=0.0)))
    lines.append(("speed target, no retention, extrapolated reuse",
                  replace(base, when=When.TARGET, retention=0.0, reuse=Reuse.EXTRAPOLATED)))
    lines.append(("speed target, no retention, error vector x step, extrapolated reuse",
                  replace(base, when=When.TARGET, retention=0.0, reuse=Reuse.EXTRAPOLATED,
                          error_model=ErrorModel.DIRECTION)))
    lines.append(("speed target + CFG-Cache", replace(base, when=When.TARGET, cfg_cache=True)))
    lines.append(("adaptive (AdaCache)", replace(base, when=When.ADAPTIVE)))
    lines.append(("adaptive (AdaCache), extrapolated reuse", replace(base, when=When.ADAPTIVE,
                                                                      reuse=Reuse.EXTRAPOLATED)))
    lines.append(("adaptive (AdaCache), no retention, extrapolated reuse",
                  replace(base, when=When.ADAPTIVE, retention=0.0, reuse=Reuse.EXTRAPOLATED)))
    return lines


def section_quality(args: argparse.Namespace) -> dict[str, Any]:
    """Quality at equal compute on the trained embedded model."""
    import comfy.samplers
    from comfy_extras import nodes_easycache

    patcher = demo.load_model(Path(args.model))
    codec = demo.load_codec(Path(args.codec))
    pairs = [(i % cdc.NUM_DIGITS, 100 + i) for i in range(args.quality_pairs)]
    sigmas = [float(s) for s in comfy.samplers.calculate_sigmas(patcher.model.model_sampling, "simple", STEPS)]
    calls = STEPS

    # The curve from the calibration node: one sample, on a seed none of the test pairs uses.
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, demo.curve_folder(Path(tmp)):
        one = demo.calibrate(patcher, codec, [3], 1000, SETTINGS, "bench_one_sample")
    arch = family_of(patcher.model.diffusion_model, patcher.model.model_config)
    rec = catalog.Recommended.of(one)

    def attached(config: MagCacheConfig) -> Any:
        def make(p: Any) -> Any:
            m = p.clone()
            engine.attach(m, config)
            return m
        return make

    def node(cls: Any, threshold: float) -> Any:
        def make(p: Any) -> Any:
            return cls.execute(p, threshold, 0.15, 0.95, False).result[0]
        return make

    wanted = [t for t in TARGETS if not args.columns or t in args.columns]
    chosen = set(args.lines.split("|")) if args.lines else None
    methods: list[Method] = []
    model_sampling = patcher.model.model_sampling
    for label, config in quality_lines(one, arch, rec.retention, rec.max_skips):
        if chosen is not None and label not in chosen:
            continue
        for t in wanted:
            if config.when is When.RULE:
                th = magcache_threshold(config, model_sampling, sigmas, round(calls / t))
                if th is not None:
                    methods.append(Method(label, th, attached(replace(config, threshold=th))))
            else:
                methods.append(Method(label, t, attached(replace(config, speed=t))))

    # What an uncached run computes, per pair: the denominator of every speedup. Counted on the uncached
    # runs, since EasyCache and LazyCache skip the diffusion model's forward, where the counter sits.
    references = {}
    for d, s in pairs:
        references[(d, s)] = demo.generate(patcher, codec, d, s, SETTINGS)

    prompted = torch.tensor([d for d, _ in pairs])
    ref_read = metrics.read_clips(torch.stack([references[p].frames for p in pairs]), prompted)
    points: list[dict[str, Any]] = []

    def measure(m: Method) -> None:
        model = m.make(patcher)
        gens = [demo.generate(model, codec, d, s, SETTINGS) for d, s in pairs]
        a = torch.stack([references[p].frames for p in pairs])
        b = torch.stack([g.frames for g in gens])
        point = {
            "method": m.line, "knob": m.knob,
            "calls": sum(g.calls for g in gens), "computed": sum(g.computed for g in gens),
            "branches": sum(references[p].branches for p in pairs),
            "computed_branches": sum(g.computed_branches for g in gens),
            "psnr": metrics.psnr(b, a).tolist(), "ssim": metrics.ssim(b, a).tolist(),
            "seconds": sum(g.seconds for g in gens), "reference_seconds": sum(references[p].seconds for p in pairs),
        }
        point["speedup"] = point["branches"] / point["computed_branches"]
        point["mean_psnr"] = statistics.mean(point["psnr"])
        point["mean_ssim"] = statistics.mean(point["ssim"])
        points.append(point)
        print(f"  [{len(points)}] {m.line} knob {m.knob:.4g}: {point['speedup']:.2f}x, "
              f"PSNR {point['mean_psnr']:.2f} dB, SSIM {point['mean_ssim']:.4f}", flush=True)
        _write("quality_partial", {"points": points})  # what a stopped run has measured so far

    for m in methods:
        measure(m)

    # EasyCache / LazyCache: adaptive, so tune each threshold on four pairs to each speed.
    def mean_speedup(make: Any, probe: list[tuple[int, int]]) -> float:
        model = make(patcher)
        gens = [demo.generate(model, codec, d, s, SETTINGS) for d, s in probe]
        return sum(references[p].branches for p in probe) / max(sum(g.computed_branches for g in gens), 1)

    probe = pairs[:4]
    for label, cls in (("EasyCache (ComfyUI)", nodes_easycache.EasyCacheNode),
                       ("LazyCache (ComfyUI)", nodes_easycache.LazyCacheNode)):
        if chosen is not None and label not in chosen:
            continue
        for t in wanted:
            lo, hi = 0.0, 3.0
            if mean_speedup(node(cls, hi), probe) < t:
                continue
            for _ in range(args.tune_iterations):
                mid = (lo + hi) / 2
                if mean_speedup(node(cls, mid), probe) < t:
                    lo = mid
                else:
                    hi = mid
            measure(Method(label, hi, node(cls, hi)))
            print(f"  tuned {label} to {t}x: threshold {hi:.4f}", flush=True)
    return {
        "settings": vars(SETTINGS), "pairs": pairs, "retention": rec.retention, "max_skips": rec.max_skips,
        "curves": {"one_sample": _curve_summary(one)},
        "reference_reading": {
            "digit_accuracy": float((ref_read.digit == prompted).float().mean()),
            "glyph_match": float(ref_read.match.mean()), "motion_error_px": float(ref_read.motion_error.mean()),
        },
        "points": points,
    }


#: The forecasts section's protocols: sampler, steps, scheduler (cfg 5, the tiny Wan's own).
PROTOCOLS = ("euler:50:simple", "uni_pc:30:simple", "dpmpp_2m:20:simple", "res_multistep:30:beta")
#: Its speeds (calls of the block stack an uncached run makes / calls this one makes).
FORECAST_SPEEDS = (1.5, 2.0, 3.0, 4.0)


def forecast_lines(one: Any, arch: Any) -> list[tuple[str, MagCacheConfig]]:
    """The forecasts section's lines: every reuse on the uniform schedule and on the speed target.

    No retention anywhere (the speed target's default), the vector error model for the target.
    """
    base = MagCacheConfig(one, arch, 0.0, 3, 0.0, error_model=ErrorModel.DIRECTION)
    lines = []
    for when in (When.UNIFORM, When.TARGET):
        for reuse in Reuse:
            lines.append((f"{when.value}, {reuse.value}", replace(base, when=when, reuse=reuse)))
    # The planner costing the forecast the run uses, summing the segments' errors or penalising the worst:
    # measured on the calibration sample's recorded trajectory, or predicted from the curve alone (as for a
    # published preset, which records none).
    for cost, curve in (("measured", one), ("predicted", dataclasses.replace(one, trajectories={}))):
        for objective in Objective:
            for reuse in (Reuse.PLAIN, Reuse.LINEAR, Reuse.QUADRATIC, Reuse.SPECTRAL):
                if reuse is Reuse.PLAIN and objective is Objective.SUM and cost == "predicted":
                    continue  # the predicted forecast error of plain reuse is the vector error: a line above
                lines.append((f"speed target ({objective.value} of {cost} forecast errors), {reuse.value}",
                              replace(base, curve=curve, when=When.TARGET, reuse=reuse,
                                      error_model=ErrorModel.FORECAST, objective=objective)))
    # Adaptive and CFG-Cache measured again with the line.
    line = replace(base, reuse=Reuse.LINEAR)
    measured = replace(line, when=When.TARGET, error_model=ErrorModel.FORECAST)
    lines.append(("adaptive (AdaCache), forecast: line", replace(line, when=When.ADAPTIVE)))
    lines.append(("uniform + CFG-Cache, forecast: line", replace(line, when=When.UNIFORM, cfg_cache=True)))
    lines.append(("speed target (sum of measured forecast errors) + CFG-Cache, forecast: line",
                  replace(measured, cfg_cache=True)))
    return lines


def parse_protocol(text: str) -> demo.Settings:
    sampler, steps, scheduler = text.split(":")
    return demo.Settings(steps=int(steps), cfg=SETTINGS.cfg, sampler=sampler, scheduler=scheduler)


def section_forecasts(args: argparse.Namespace) -> dict[str, Any]:
    """Every reuse (plain, scaled, the damped and undamped lines, the parabola, the Chebyshev fit) on the uniform
    schedule and the speed target, at 1.5x-4x, over several samplers and step counts, on the embedded tiny Wan.

    Speed is counted in branch runs of the block stack (an uncached run's / this run's: a skipped call saves
    both CFG branches, a CFG-Cache call one). One calibration sample (euler, 50 steps) serves every
    protocol: the curve is indexed by sigma.
    """
    import tempfile

    patcher = demo.load_model(Path(args.model))
    codec = demo.load_codec(Path(args.codec))
    pairs = [(i % cdc.NUM_DIGITS, 100 + i) for i in range(args.forecast_pairs)]
    with tempfile.TemporaryDirectory() as tmp, demo.curve_folder(Path(tmp)):
        one = demo.calibrate(patcher, codec, [3], 1000, SETTINGS, "bench_one_sample")
    arch = family_of(patcher.model.diffusion_model, patcher.model.model_config)
    chosen = set(args.lines.split("|")) if args.lines else None
    lines = [(n, c) for n, c in forecast_lines(one, arch) if chosen is None or n in chosen]
    protocols = [x for x in args.protocols.split(",") if x]
    speeds = args.columns or list(FORECAST_SPEEDS)
    points: list[dict[str, Any]] = []
    for proto in protocols:
        settings = parse_protocol(proto)
        refs = {p: demo.generate(patcher, codec, p[0], p[1], settings) for p in pairs}
        a = torch.stack([refs[p].frames for p in pairs])
        for name, config in lines:
            for speed in speeds:
                model = patcher.clone()
                engine.attach(model, replace(config, speed=speed))
                gens = [demo.generate(model, codec, d, s_, settings) for d, s_ in pairs]
                b = torch.stack([g.frames for g in gens])
                psnr, ssim = metrics.psnr(b, a), metrics.ssim(b, a)
                real = sum(refs[p].branches for p in pairs) / max(sum(g.computed_branches for g in gens), 1)
                point = {"protocol": proto, "method": name, "speed_asked": speed, "speedup": real,
                         "mean_psnr": float(psnr.mean()), "mean_ssim": float(ssim.mean()),
                         "psnr": psnr.tolist(), "ssim": ssim.tolist()}
                points.append(point)
                print(f"  {proto} | {name} @ {speed:g}x: {point['speedup']:.2f}x, PSNR {point['mean_psnr']:.2f} dB, "
                      f"SSIM {point['mean_ssim']:.4f}", flush=True)
                _write("forecasts_partial", {"points": points})
    return {"pairs": pairs, "protocols": protocols, "speeds": speeds, "cfg": SETTINGS.cfg, "points": points}


def forecast_table(f: dict[str, Any]) -> list[str]:
    """RESULTS.md's forecasts table: mean PSNR / SSIM over the protocols per line and speed, then per protocol."""
    speeds = f["speeds"]
    by: dict[str, dict[float, list[dict[str, Any]]]] = {}
    for p in f["points"]:
        by.setdefault(p["method"], {}).setdefault(p["speed_asked"], []).append(p)
    head = " | ".join(f"{s:g}x" for s in speeds)
    out = ["", f"## Forecasts over the protocol matrix ({len(f['pairs'])} prompt/seed pairs, cfg {f['cfg']:g}, "
           f"embedded tiny Wan 2.1; protocols {', '.join(f['protocols'])})", "",
           "Mean over the protocols of the mean PSNR in dB / SSIM against the uncached run at each speed asked "
           "(branch runs of the block stack, uncached / cached; the realized speed is within rounding of it). "
           "Best of each column in bold.", "", f"| method | {head} |", "|---|" + "---|" * len(speeds)]
    means = {m: {s: (statistics.mean(p["mean_psnr"] for p in v[s]), statistics.mean(p["mean_ssim"] for p in v[s]))
                 for s in v} for m, v in by.items()}
    best = {s: max((v[s][0] for v in means.values() if s in v), default=None) for s in speeds}
    for m, v in means.items():
        cells = []
        for s in speeds:
            if s not in v:
                cells.append("-")
                continue
            text = f"{v[s][0]:.2f} / {v[s][1]:.3f}"
            cells.append(f"**{text}**" if best[s] is not None and abs(v[s][0] - best[s]) < 1e-9 else text)
        out.append(f"| {m} | {' | '.join(cells)} |")
    out += ["", "Per protocol (PSNR dB):", "", f"| protocol | method | {head} |", "|---|---|" + "---|" * len(speeds)]
    for proto in f["protocols"]:
        for m, v in by.items():
            row = {p["speed_asked"]: p["mean_psnr"] for s in speeds for p in v.get(s, []) if p["protocol"] == proto}
            out.append(f"| {proto} | {m} | " + " | ".join(f"{row[s]:.2f}" if s in row else "-" for s in speeds) + " |")
    return out


def _curve_summary(curve: Any) -> dict[str, Any]:
    rc = curve.roles["cond"]
    return {"sigma": list(rc.sigma), "ratio": list(rc.ratio), "runs": len(curve.metadata.get("runs", []) or [])}


def interpolate(points: list[dict[str, Any]], x: float, key: str) -> float | None:
    """``key`` of a method's line at speedup ``x`` (linear between its points), or None outside it."""
    pts = sorted((p["speedup"], p[key]) for p in points)
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    for px, py in pts:
        if abs(px - x) <= 0.03 * x:
            return py
    return None


# --------------------------------------------------------------- section 4 --


def section_gpu(args: argparse.Namespace) -> dict[str, Any]:
    """Wan 2.1 1.3B architecture, random weights, 480p: seconds per step, total, speedup."""
    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device")
    patcher = random_wan(1536, 30, 8960, seed=1, dtype=torch.float16)
    frames = args.frames
    latent = torch.zeros(1, 16, (frames - 1) // 4 + 1, 480 // 8, 832 // 8)
    g = torch.Generator().manual_seed(7)
    ctx, neg = torch.randn((1, 512, 4096), generator=g), torch.randn((1, 512, 4096), generator=g)
    cached = mode_model(patcher, args.mode, computing_everything=False)
    settings = SETTINGS
    warm = demo.Settings(steps=2, cfg=5.0, sampler="euler", scheduler="simple")
    timed_run(patcher, latent, ctx, neg, warm)
    plain = timed_run(patcher, latent, ctx, neg, settings)
    mag = timed_run(cached, latent, ctx, neg, settings)
    result = {
        "model": "Wan 2.1 T2V 1.3B architecture (dim 1536, 30 blocks), random weights, float16",
        "latent": list(latent.shape), "video": f"832x480, {frames} frames", "settings": vars(settings),
        "preset": PRESET, "recommended": vars(catalog.Recommended.of(catalog.load_preset(PRESET))),
        "plain_seconds": plain.seconds, "magcache_seconds": mag.seconds,
        "plain_seconds_per_step": plain.seconds / settings.steps,
        "magcache_seconds_per_step": mag.seconds / settings.steps,
        "speedup": plain.seconds / mag.seconds, "ideal_speedup": mag.calls / mag.computed,
        "computed": mag.computed, "calls": mag.calls, "published_speedup": 2.2,
    }
    print(json.dumps(result, indent=1), flush=True)
    return result


# ----------------------------------------------------------------- report --


def quality_plot(q: dict[str, Any]) -> None:
    families: dict[str, list[dict[str, Any]]] = {}
    for p in q["points"]:
        families.setdefault(p["method"], []).append(p)
    charts = []
    for key, label in (("mean_psnr", "PSNR against uncached (dB)"), ("mean_ssim", "SSIM against uncached")):
        series = []
        for i, (name, pts) in enumerate(families.items()):
            series.append(lineplot.Series(
                name, [(p["speedup"], p[key]) for p in pts], lineplot.PALETTE[i % len(lineplot.PALETTE)],
                dashed=not name.startswith("MagCache"), width=4 if name.startswith("MagCache") else 2,
            ))
        charts.append(lineplot.chart(
            series, f"{label.split(' ')[0]} at equal compute, {len(q['pairs'])} prompt/seed pairs",
            "speedup of real compute (branch runs uncached / cached)", label.split(" (")[0], legend_rows=6,
        ))
    lineplot.side_by_side(charts).save(RESULTS / "quality.png")


def report(command: str) -> None:
    """Write RESULTS.md from whatever section results exist."""
    lines = ["# Benchmark results", "", f"Last written by `{command}`; each section's own command is in its JSON "
             "and below.", ""]
    info = _read("machine")
    if info:
        lines += [f"Machine: {info.get('cpu')}, {info.get('cores')} cores ({info.get('torch_threads')} torch threads), "
                  f"torch {info.get('torch')}, ComfyUI {info.get('comfyui', '?')}"
                  + (f", GPU {info['gpu']}" if info.get("gpu") else "")
                  + f"; load average at start {info.get('load_average_at_start')}.", ""]
    o, s, q, g = _read("overhead"), _read("speedup"), _read("quality"), _read("gpu")
    lines += ["| # | measure | target | result | met |", "|---|---|---|---|---|"]
    if o:
        lines.append(f"| 1 | overhead, attached but computing every step (median of {o['pairs']} pairs) | <= 1% "
                     f"| {o['overhead_percent']:+.2f}% | {'yes' if o['met'] else 'no'} |")
    if s:
        lines.append(f"| 2 | realized / ideal speedup ({s['preset']} preset, recommended settings) | >= 97% "
                     f"| {s['median_realized']:.3f}x / {s['ideal_speedup']:.3f}x = "
                     f"{100 * s['fraction_of_ideal']:.1f}% | {'yes' if s['met'] else 'no'} |")
    for mode in sorted(SPEED_MODES):
        if mode == "rule":
            continue
        om, sm = _read(mode_file("overhead", mode)), _read(mode_file("speedup", mode))
        if om:
            lines.append(f"| 1 ({mode}) | overhead, computing every step (median of {om['pairs']} pairs) | <= 1% "
                         f"| {om['overhead_percent']:+.2f}% | {'yes' if om['met'] else 'no'} |")
        if sm:
            lines.append(f"| 2 ({mode}) | realized / ideal speedup at 2x | >= 97% "
                         f"| {sm['median_realized']:.3f}x / {sm['ideal_speedup']:.3f}x = "
                         f"{100 * sm['fraction_of_ideal']:.1f}% | {'yes' if sm['met'] else 'no'} |")
    if g:
        lines.append(f"| 4 | full-size Wan 2.1 1.3B, {g['video']} | published 2.2x | {g['speedup']:.2f}x "
                     f"({g['plain_seconds_per_step']:.2f} -> {g['magcache_seconds_per_step']:.2f} s/step) | - |")
    else:
        lines.append("| 4 | full-size Wan 2.1 1.3B at 480p on a GPU | published 2.2x | not run: no GPU "
                     "(`python benchmarks/bench.py --gpu`) | - |")
    ran = [(name, r.get("command")) for name, r in (("overhead", o), ("speedup", s), ("quality", q), ("gpu", g)) if r]
    lines += ["", "Commands: " + "; ".join(f"{name}: `{cmd or '?'}`" for name, cmd in ran) + "."]
    if o:
        m = o["model"]
        lines += ["", f"Sections 1-2: random-weight Wan 2.1 (dim {m['dim']}, {m['layers']} blocks, FFN {m['ffn']}), "
                  f"latent {tuple(o['latent'])}, euler/simple, cfg 5; section 1 at {o['settings']['steps']} steps, "
                  f"section 2 at {STEPS}. Per-pair ratios: {', '.join(f'{r:.3f}' for r in o['ratios'])}."]
    if s:
        lines += ["", f"Section 2 computed {s['computed']} of {s['calls']} model calls; realized per pair: "
                  f"{', '.join(f'{r:.3f}' for r in s['realized'])}."]
    if q:
        families: dict[str, list[dict[str, Any]]] = {}
        for p in q["points"]:
            families.setdefault(p["method"], []).append(p)
        head = " | ".join(f"{t:g}x" for t in TARGETS)
        lines += ["", f"## Quality at equal compute ({len(q['pairs'])} prompt/seed pairs, {STEPS} steps euler/simple, "
                  f"cfg 5, embedded tiny Wan 2.1)", "",
                  "PSNR in dB / SSIM of the decoded frames against the uncached run, read off each method's line at "
                  "the given speedup of real compute (branch runs of the block stack an uncached run makes / the "
                  "ones this run made: a skipped call saves both CFG branches, a CFG-Cache call one; linear "
                  "between measured points; '-' where the method cannot reach it). Best of each column in bold.",
                  "", f"| method | {head} |", "|---|" + "---|" * len(TARGETS)]
        cells: dict[str, list[tuple[float | None, float | None]]] = {}
        for name, pts in families.items():
            cells[name] = [(interpolate(pts, t, "mean_psnr"), interpolate(pts, t, "mean_ssim")) for t in TARGETS]
        best = [max((c[i][0] for c in cells.values() if c[i][0] is not None), default=None)
                for i in range(len(TARGETS))]
        for name, row in cells.items():
            out = []
            for i, (p, ss) in enumerate(row):
                if p is None:
                    out.append("-")
                else:
                    text = f"{p:.2f} / {ss:.4f}"
                    out.append(f"**{text}**" if best[i] is not None and abs(p - best[i]) < 1e-9 else text)
            lines.append(f"| {name} | {' | '.join(out)} |")
        r = q["reference_reading"]
        lines += ["", f"The uncached samples: digit read back correctly in {100 * r['digit_accuracy']:.0f}% of clips, "
                  f"glyph match {r['glyph_match']:.3f} (training data: about 0.95), motion error "
                  f"{r['motion_error_px']:.2f} px/frame.", "", "![quality against speedup](quality.png)", "",
                  "Measured points (all in quality.json):", "", "| method | knob | speedup | PSNR | SSIM |",
                  "|---|---|---|---|---|"]
        for p in q["points"]:
            lines.append(f"| {p['method']} | {p['knob']:.4g} | {p['speedup']:.2f}x | {p['mean_psnr']:.2f} "
                         f"| {p['mean_ssim']:.4f} |")
    mem = _read("memory")
    if mem:
        lines += ["", "## What each reuse keeps (`--sections memory`)", "",
                  f"The most the cache held in one run, from the node's summary: random-weight Wan 2.1 (dim "
                  f"{mem['model']['dim']}), latent {tuple(mem['latent'])}, 50 euler steps, cfg 5, 2x; one cond+uncond "
                  f"residual is {mem['residual_bytes'] / 2**10:.0f} KiB.", "",
                  "| reuse | on the compute device | offload | with CFG-Cache |", "|---|---|---|---|"]
        by: dict[str, dict[str, str]] = {}
        for r in mem["rows"]:
            kind = "offload" if r.get("cache_device") else "cfg" if r.get("cfg_cache") else "plain"
            by.setdefault(r["reuse"], {})[kind] = f"{r['held']}{' ' + r['where'] if r['where'] else ''}"
        for reuse, v in by.items():
            lines.append(f"| {reuse} | {v.get('plain', '-')} | {v.get('offload', '-')} | {v.get('cfg', '-')} |")
    mx = _read("matrix")
    if mx:
        minutes = mx.get("section_seconds", 0) / 60
        lines += [*matrix.table(mx), "", f"Command: `{mx.get('command')}` ({minutes:.0f} minutes on this machine)."]
    fc = _read("forecasts")
    if fc:
        minutes = fc.get("section_seconds", 0) / 60
        lines += [*forecast_table(fc), "", f"Command: `{fc.get('command')}` ({minutes:.0f} minutes on this machine)."]
    (RESULTS / "RESULTS.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    global RESULTS
    p = argparse.ArgumentParser(description="MagCache benchmark (see the module docstring).")
    p.add_argument("--sections", default="overhead,speedup,quality")
    p.add_argument("--gpu", action="store_true", help="run section 4 (full-size Wan 2.1 1.3B) on CUDA")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--pairs", type=int, default=10, help="paired runs for sections 1 and 2")
    p.add_argument("--overhead-steps", type=int, default=20)
    p.add_argument("--speed-layers", type=int, default=16, help="blocks of the random-weight Wan of sections 1-2")
    p.add_argument("--quality-pairs", type=int, default=16)
    p.add_argument("--tune-iterations", type=int, default=7)
    p.add_argument("--forecast-pairs", type=int, default=8, help="forecasts: prompt/seed pairs per cell")
    p.add_argument("--protocols", default=",".join(PROTOCOLS),
                   help="forecasts: sampler:steps:scheduler, comma-separated")
    p.add_argument("--testbeds", default="digits,layout", help="matrix: the testbeds (embedded/testbeds.py)")
    p.add_argument("--matrix-pairs", type=int, default=16, help="matrix: prompt/seed pairs per cell")
    p.add_argument("--matrix-protocols", default="",
                   help="matrix: 'testbed=sampler:steps:scheduler:cfg[:split],...;testbed=...' (default: matrix.py's)")
    p.add_argument("--mode", default="rule", choices=sorted(SPEED_MODES), help="sections 1-2: the mode timed")
    p.add_argument("--lines", default="", help="quality, forecasts: only these lines, separated by '|' (default: all)")
    p.add_argument("--append", action="store_true", help="quality: keep the other lines of quality.json")
    p.add_argument("--columns", type=float, nargs="*", default=[], help="quality, forecasts: only these speeds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default=str(demo.MODEL_FILE), help="the trained model of section 3")
    p.add_argument("--codec", default=str(demo.CODEC_FILE))
    p.add_argument("--results", default=str(RESULTS), help="where to write the results")
    args = p.parse_args(argv)
    args.protocols_of = {k: tuple(v.split(",")) for k, v in
                         (part.split("=", 1) for part in args.matrix_protocols.split(";") if part)}
    RESULTS = Path(args.results)
    args.results_dir = RESULTS
    torch.set_num_threads(args.threads)
    command = "python benchmarks/bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    sections = ["gpu"] if args.gpu else [s.strip() for s in args.sections.split(",") if s.strip()]
    _write("machine", machine())
    for name in sections:
        print(f"== section {name}", flush=True)
        start = time.time()
        result = {"overhead": section_overhead, "speedup": section_speedup, "quality": section_quality,
                  "forecasts": section_forecasts, "gpu": section_gpu, "memory": section_memory,
                  "matrix": lambda a: matrix.section_matrix(a, _write)}[name](args)
        result["section_seconds"] = time.time() - start
        result["command"] = command
        earlier = _read(name) if args.append and name in MERGED else None
        if earlier:
            result = merge(earlier, result, MERGED[name])
        _write(mode_file(name, args.mode) if name in ("overhead", "speedup") else name, result)
        (RESULTS / f"{name}_partial.json").unlink(missing_ok=True)  # the run finished: the whole is written
        if name == "quality":
            quality_plot(result)
    report(command.strip())
    print(f"wrote {RESULTS / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
