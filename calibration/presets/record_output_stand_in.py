"""Record the output-level stand-in preset on the embedded tiny Wan, and measure the magnitude law there.

Families whose ComfyUI code has no block patches (Lumina 2 / Z-Image, HiDream,
Kandinsky 5, ...) are cached at the model's output, where no published curve
exists. Their stand-in is a curve the MagCache Calibrate node records at the
output level on the pack's embedded tiny Wan 2.1 (the only trained model the
pack ships). The same runs are recorded at the block level too, so the two
levels' magnitude laws can be compared on one model.

Run by a maintainer, with a ComfyUI checkout importable (not run by the pack)::

    python calibration/presets/record_output_stand_in.py

Writes ``calibration/presets/tiny_wan_output.safetensors`` and
``benchmarks/results/output_level.json`` and prints both curves.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

PACK = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PACK / "embedded"))
import _bootstrap  # noqa: E402

_bootstrap.boot()

from comfyui_magcache.calibration.curve import MagnitudeCurve  # noqa: E402
from comfyui_magcache.calibration.curve_file import save_curve  # noqa: E402
from comfyui_magcache.embedded import demo  # noqa: E402

DIGITS = list(range(8))
SETTINGS = demo.Settings(steps=50, cfg=5.0, sampler="euler", scheduler="simple")
SEED = 1000
PRESET = PACK / "calibration" / "presets" / "tiny_wan_output.safetensors"
RESULTS = PACK / "benchmarks" / "results" / "output_level.json"


def record(level: str, patcher: object, codec: object, folder: Path) -> MagnitudeCurve:
    """Eight prompts through MagCache Calibrate at ``level``, combined into one curve."""
    with demo.curve_folder(folder):
        return demo.calibrate(patcher, codec, DIGITS, SEED, SETTINGS, f"tiny_wan_{level}", level)


def law(curve: MagnitudeCurve) -> dict[str, object]:
    """Where the ratio stays near 1 and how it falls, for the cond role."""
    cond = curve.roles["cond"]
    ratio = np.asarray(cond.ratio)
    sigma = np.asarray(cond.sigma[1:])
    flat = int(np.argmax(np.abs(ratio - 1.0) > 0.01)) if np.any(np.abs(ratio - 1.0) > 0.01) else len(ratio)
    return {
        "sigma": sigma.round(4).tolist(),
        "ratio": ratio.round(4).tolist(),
        "ratio_std": np.asarray(cond.ratio_std).round(4).tolist() if cond.ratio_std else None,
        "first_ratios_within_1pct": flat,
        "min": float(ratio.min()),
        "last": float(ratio[-1]),
        "monotone_fraction": float(np.mean(np.diff(ratio) <= 1e-3)),
    }


def main() -> None:
    patcher, codec = demo.load_model(), demo.load_codec()
    with tempfile.TemporaryDirectory() as tmp:
        curves = {level: record(level, patcher, codec, Path(tmp)) for level in ("auto", "output")}
    output = curves["output"]
    meta = {
        **output.metadata,
        "source": "MagCache Calibrate at the output level on the embedded tiny Wan 2.1 (embedded/), "
        f"{len(DIGITS)} prompts, {SETTINGS.steps} {SETTINGS.sampler} steps, cfg {SETTINGS.cfg:g}",
        "license": "same as this pack",
        "stand_in": True,
        "recommended": {"threshold": 0.12, "max_skips": 2, "retention": 0.2, "source": "pack default, K 2"},
    }
    meta.pop("runs", None)
    save_curve(MagnitudeCurve(name=PRESET.stem, roles=output.roles, metadata=meta), PRESET)
    report = {
        "command": "python calibration/presets/record_output_stand_in.py",
        "settings": {"prompts": DIGITS, "steps": SETTINGS.steps, "sampler": SETTINGS.sampler, "cfg": SETTINGS.cfg},
        "block": law(curves["auto"]),
        "output": law(output),
    }
    RESULTS.write_text(json.dumps(report, indent=1))
    for level in ("block", "output"):
        r = report[level]
        print(
            f"{level:6s}: first {r['first_ratios_within_1pct']} of {len(r['ratio'])} ratios within 1% of 1, "
            f"min {r['min']:.3f}, last {r['last']:.3f}, non-increasing {r['monotone_fraction']:.0%}"
        )
        print("        " + " ".join(f"{s:.2f}:{g:.3f}" for s, g in zip(r["sigma"][::5], r["ratio"][::5])))
    print(f"wrote {PRESET} and {RESULTS}")


if __name__ == "__main__":
    main()
