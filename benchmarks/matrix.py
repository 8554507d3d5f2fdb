"""The benchmark's protocol matrix: every peer and the node's modes, on both testbeds, at 1.5x-4x.

For each testbed (``embedded/testbeds.py``) and each protocol (sampler, steps,
scheduler, cfg, and a Wan 2.2-style split run), the uncached pictures of N
prompt/seed pairs are the reference; each line is run at each speed and
compared: PSNR and SSIM of the decoded pictures, and on the layout testbed how
far the objects moved and whether they are still where the prompt put them.

Speed is counted in block runs (rows through every block, summed: an uncached
run's over this run's), so a method that always runs some blocks (First Block
Cache) and CFG-Cache's one-branch calls are counted as what they compute.
Lines whose knob is a speed are asked for each speed; lines whose knob is a
threshold (the paper's rule, First Block Cache, EasyCache, LazyCache) are
bisected to it on four probe pairs, and the realized speed is recorded.

One calibration sample per testbed (MagCache Calibrate, at the testbed's
calibration protocol, on a prompt/seed no pair uses) serves every protocol:
curves are indexed by sigma.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lineplot
import torch

from comfyui_magcache.benchmarks.peers import (
    comfy_easycache,
    fbcache,
    lemica,
    magcache_rule,
    spectrum,
    taylorseer,
    uniform,
)
from comfyui_magcache.benchmarks.peers.common import Context, Line
from comfyui_magcache.cache.config import Reuse, When
from comfyui_magcache.embedded import demo, metrics, testbeds
from comfyui_magcache.hooks.families import family_of

#: Protocols per testbed: ``sampler:steps:scheduler:cfg[:split]`` (split: the step the second sampler run starts).
PROTOCOLS: dict[str, tuple[str, ...]] = {
    "digits": ("uni_pc:30:simple:5", "dpmpp_2m:20:simple:5", "res_multistep:30:beta:5", "euler:50:simple:5",
               "euler:30:simple:5:15"),
    "layout": ("euler:30:simple:1", "uni_pc:20:simple:1", "dpmpp_2m:30:simple:4", "res_multistep:50:beta:1",
               "euler:30:simple:4:15"),
}
SPEEDS = (1.5, 2.0, 3.0, 4.0)
PEERS = (uniform, taylorseer, spectrum, lemica, fbcache, magcache_rule, comfy_easycache)
CURVE_NAME = "bench_matrix_{}"


def parse(text: str) -> demo.Settings:
    parts = text.split(":")
    sampler, steps, scheduler, cfg = parts[0], int(parts[1]), parts[2], float(parts[3])
    return demo.Settings(steps=steps, cfg=cfg, sampler=sampler, scheduler=scheduler,
                         split=int(parts[4]) if len(parts) > 4 else 0)


def node_lines(curve_name: str) -> list[Line]:
    """The node's own modes, through the node, with the testbed's calibrated curve."""
    from comfyui_magcache.calibration.catalog import AUTO
    from comfyui_magcache.nodes.magcache_node import CUSTOM, RECOMMENDED

    defaults = demo.page_defaults()

    def node(curve: str = curve_name, **inputs: Any) -> Callable[[Any, float], Any]:
        return lambda p, speed: demo.with_magcache(p, curve, **{**defaults, **inputs, "speed": speed})

    first_fifth = {"settings": CUSTOM, "threshold": RECOMMENDED, "max_consecutive_skips": RECOMMENDED,
                   "retention_ratio": 0.2}
    return [
        Line("node default (speed target, forecast: line)", node()),
        # Early steps: the default computes them only where its plan says; these protect the first 20%.
        Line("node default, first 20% computed", node(**first_fifth)),
        # What a user who never calibrated gets: the family's published curve (and its 20% retention).
        Line("node default, published curve of the family", node(AUTO)),
        # The default with at most two reused calls in a row (the curve recommends three).
        Line("node default, at most 2 skips in a row", node(**{**first_fifth, "retention_ratio": RECOMMENDED,
                                                               "max_consecutive_skips": 2})),
        Line("node: speed target, forecast: parabola", node(reuse=Reuse.QUADRATIC.value)),
        Line("node: speed target, plain reuse", node(reuse=Reuse.PLAIN.value)),
        Line("node: speed target + CFG-Cache", node(cfg_cache=True), needs_cfg=True),
        Line("node: adaptive (AdaCache)", node(schedule=When.ADAPTIVE.value)),
    ]


def all_lines(context: Context, curve_name: str) -> list[Line]:
    lines = node_lines(curve_name)
    for peer in PEERS:
        lines += peer.lines(context)
    return lines


def section_matrix(args: Any, write: Callable[[str, dict[str, Any]], None]) -> dict[str, Any]:
    """Run the matrix (``args``: testbeds, protocols, lines, speeds, pairs, tune iterations); return the results."""
    chosen = set(args.lines.split("|")) if args.lines else None
    speeds = args.columns or list(SPEEDS)
    points: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    for bed_name in [b for b in args.testbeds.split(",") if b]:
        bed = testbeds.TESTBEDS[bed_name]()
        patcher = bed.load()
        prompts = bed.prompts(args.matrix_pairs)
        seeds = [100 + i for i in range(len(prompts))]
        with tempfile.TemporaryDirectory() as tmp, demo.curve_folder(Path(tmp)):
            name = CURVE_NAME.format(bed_name)
            curve = bed.calibrate(patcher, name)
            family = family_of(patcher.model.diffusion_model, patcher.model.model_config)
            every = all_lines(Context(curve, family), f"{name}.safetensors")
            lines = [ln for ln in every if chosen is None or ln.name in chosen]
            protocols = args.protocols_of.get(bed_name) or PROTOCOLS[bed_name]
            info[bed_name] = {"protocols": list(protocols), "curve": _curve(curve)}
            figure(bed, patcher, curve, every[0], parse(protocols[0]), args.results_dir / f"testbed_{bed_name}.png")
            for proto in protocols:
                settings = parse(proto)
                refs = [bed.generate(patcher, pr, sd, settings) for pr, sd in zip(prompts, seeds)]
                ref_px = torch.stack([r.pixels for r in refs])
                info[bed_name].setdefault("reading", {})[proto] = bed.read(ref_px, prompts)
                ref_units = sum(r.generation.block_rows for r in refs)
                for line in lines:
                    if line.needs_cfg and settings.cfg == 1.0:
                        continue
                    for speed in speeds:
                        knob = speed
                        if line.tuned:
                            knob = _tune(bed, patcher, line, prompts[:4], seeds[:4], settings, refs[:4], speed,
                                         args.tune_iterations)
                            if knob is None:
                                continue
                        model = line.make(patcher, knob)
                        outs = [bed.generate(model, pr, sd, settings) for pr, sd in zip(prompts, seeds)]
                        px = torch.stack([o.pixels for o in outs])
                        psnr, ssim = metrics.psnr(px, ref_px), metrics.ssim(px, ref_px)
                        units = sum(o.generation.block_rows for o in outs)
                        point = {"testbed": bed_name, "protocol": proto, "method": line.name, "speed_asked": speed,
                                 "knob": knob, "speedup": ref_units / max(units, 1),
                                 "mean_psnr": float(psnr.mean()), "mean_ssim": float(ssim.mean()),
                                 "psnr": psnr.tolist(), "ssim": ssim.tolist(),
                                 **bed.compare(ref_px, px, prompts)}
                        points.append(point)
                        extra = "".join(f", {k} {v:.3f}" for k, v in bed.compare(ref_px, px, prompts).items())
                        print(f"  {bed_name} {proto} | {line.name} @ {speed:g}x: {point['speedup']:.2f}x, "
                              f"PSNR {point['mean_psnr']:.2f}, SSIM {point['mean_ssim']:.4f}{extra}", flush=True)
                        write("matrix_partial", {"points": points, "testbeds": info})
    return {"pairs": args.matrix_pairs, "speeds": speeds, "testbeds": info, "points": points}


def figure(bed: Any, patcher: Any, curve: Any, line: Line, settings: demo.Settings, path: Path) -> None:
    """What a testbed draws and what its calibration recorded: six prompts uncached, then ``line`` at 2x, 3x and
    4x, above the curve MagCache Calibrate recorded (magnitude ratio and direction)."""
    import numpy as np
    from PIL import Image, ImageDraw

    from comfyui_magcache.calibration.plot import render_curve

    prompts = bed.prompts(6)
    rows = [("uncached", patcher)] + [(f"{line.name} @ {s:g}x", line.make(patcher, s)) for s in (2.0, 3.0, 4.0)]
    zoom, pad, label = 3, 8, 16
    strips = []
    for title, model in rows:
        pics = [bed.generate(model, p, 100 + i, settings).pixels for i, p in enumerate(prompts)]
        tiles = []
        for px in pics:
            img = px if px.shape[0] == 3 else px.reshape(-1, px.shape[-1])[None].expand(3, -1, -1)  # frames stacked
            arr = (img.permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)
            tiles.append(np.kron(arr, np.ones((zoom, zoom, 1), dtype=np.uint8)))
        strips.append((title, np.concatenate([np.pad(t, ((0, 0), (0, 4), (0, 0)), constant_values=255)
                                              for t in tiles], axis=1)))
    magnitude = Image.fromarray((np.clip(render_curve(curve, subtitle=f"{bed.name} testbed"), 0, 1) * 255
                                 ).astype(np.uint8))
    direction = [lineplot.Series(role, list(enumerate(rc.cosine_distance)), lineplot.PALETTE[(0, 5)[i % 2]])
                 for i, (role, rc) in enumerate(curve.roles.items()) if rc.cosine_distance]
    plot = lineplot.side_by_side([magnitude, lineplot.chart(
        direction, "direction: cosine distance between consecutive residuals", "call (sampling order)",
        "1 - cos", size=(640, magnitude.height))])
    width = max(max(s.shape[1] for _, s in strips), plot.width) + 2 * pad
    height = pad + sum(label + s.shape[0] + 4 for _, s in strips) + plot.height + 2 * pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = pad
    for title, strip in strips:
        draw.text((pad, y), f"{title} ({settings.sampler} {settings.steps} steps, cfg {settings.cfg:g})",
                  fill=(30, 30, 30))
        y += label
        canvas.paste(Image.fromarray(strip), (pad, y))
        y += strip.shape[0] + 4
    canvas.paste(plot, (pad, y + pad))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def _tune(bed: Any, patcher: Any, line: Line, prompts: list[Any], seeds: list[int], settings: demo.Settings,
          refs: list[Any], speed: float, iterations: int) -> float | None:
    """The smallest threshold (bisected) whose realized speed on the probe pairs reaches ``speed``; None if none."""
    ref_units = sum(r.generation.block_rows for r in refs)

    def realized(th: float) -> float:
        model = line.make(patcher, th)
        outs = [bed.generate(model, pr, sd, settings) for pr, sd in zip(prompts, seeds)]
        return ref_units / max(sum(o.generation.block_rows for o in outs), 1)

    lo, hi = 0.0, line.high
    if realized(hi) < speed * 0.97:
        return None
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if realized(mid) < speed:
            lo = mid
        else:
            hi = mid
    return hi


def _curve(curve: Any) -> dict[str, Any]:
    rc = curve.roles["cond"]
    out = {"sigma": list(rc.sigma), "ratio": list(rc.ratio)}
    if rc.cosine_distance is not None:
        out["cosine_distance"] = list(rc.cosine_distance)
    return out


def table(m: dict[str, Any]) -> list[str]:
    """RESULTS.md's matrix tables: per testbed, mean over protocols per line and speed; then every cell."""
    out: list[str] = []
    speeds = m["speeds"]
    head = " | ".join(f"{s:g}x" for s in speeds)
    for bed, info in m["testbeds"].items():
        pts = [p for p in m["points"] if p["testbed"] == bed]
        if not pts:
            continue
        layout = "moved_px" in pts[0]
        out += ["", f"## Protocol matrix: {bed} ({m['pairs']} pairs per cell; {', '.join(info['protocols'])})", "",
                "Mean over the protocols of PSNR dB / SSIM" + (" / objects moved (px)" if layout else "")
                + " against the uncached run, by speed asked (the realized speed is in matrix.json). "
                "Best PSNR of each column in bold; '-': not reached.", "",
                f"| method | {head} |", "|---|" + "---|" * len(speeds)]
        by: dict[str, dict[float, list[dict[str, Any]]]] = {}
        for p in pts:
            by.setdefault(p["method"], {}).setdefault(p["speed_asked"], []).append(p)
        cells = {k: {s: _mean(v[s], layout) for s in v} for k, v in by.items()}
        best = {s: max((c[s][0] for c in cells.values() if s in c), default=None) for s in speeds}
        for k, c in cells.items():
            row = []
            for s in speeds:
                if s not in c:
                    row.append("-")
                    continue
                text = " / ".join(f"{x:.2f}" if i != 1 else f"{x:.3f}" for i, x in enumerate(c[s]))
                n = len(by[k][s])
                if n < len(info["protocols"]):
                    text += f" ({n} of {len(info['protocols'])})"
                row.append(f"**{text}**" if best[s] is not None and abs(c[s][0] - best[s]) < 1e-9 else text)
            out.append(f"| {k} | {' | '.join(row)} |")
        out += ["", "Per protocol, PSNR dB (realized speed):", "", f"| protocol | method | {head} |",
                "|---|---|" + "---|" * len(speeds)]
        for proto in info["protocols"]:
            for k, v in by.items():
                r = {p["speed_asked"]: p for s in speeds for p in v.get(s, []) if p["protocol"] == proto}
                out.append(f"| {proto} | {k} | " + " | ".join(
                    f"{r[s]['mean_psnr']:.2f} ({r[s]['speedup']:.2f}x)" if s in r else "-" for s in speeds) + " |")
    return out


def _mean(points: list[dict[str, Any]], layout: bool) -> tuple[float, ...]:
    vals = [statistics.mean(p["mean_psnr"] for p in points), statistics.mean(p["mean_ssim"] for p in points)]
    if layout:
        moved = [p["moved_px"] for p in points if p["moved_px"] == p["moved_px"]]
        vals.append(statistics.mean(moved) if moved else float("nan"))
    return tuple(vals)
