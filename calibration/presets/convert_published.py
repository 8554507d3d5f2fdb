"""Convert the MagCache authors' published ratio curves into the pack's preset files.

Published curves are indexed by step: entry ``i`` (or ``2i``/``2i+1`` for cond and
uncond under CFG) is the magnitude ratio measured at step ``i`` of the authors'
calibration run. The pack indexes curves by sigma, so each step is placed at the
sigma ComfyUI's default schedule gives that step for that model: the ``simple``
scheduler at the calibrated step count, with the model's default sampling shift.
That assumption is written into each preset's metadata.

Run once, by a maintainer, with a ComfyUI checkout importable (this is not run
by the pack)::

    python -m calibration.presets.convert_published PUBLISHED.json

It needs ComfyUI only for its schedules; the pack never reads the source file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: preset -> (ComfyUI model-config class, diffusion-model class, model type)
MODELS: dict[str, tuple[str, str, str]] = {
    "flux": ("Flux", "Flux", "FLUX"),
    "flux_kontext": ("Flux", "Flux", "FLUX"),
    "chroma": ("Chroma", "Chroma", "FLUX"),
    "qwen_image": ("QwenImage", "QwenImageTransformer2DModel", "FLOW"),
    "hunyuan_video": ("HunyuanVideo", "HunyuanVideo", "FLOW"),
    "hunyuan_video1.5": ("HunyuanVideo15", "HunyuanVideo", "FLOW"),
    "hunyuan_video1.5_40steps": ("HunyuanVideo15", "HunyuanVideo", "FLOW"),
    "wan2.1_t2v_1.3B": ("WAN21_T2V", "WanModel", "FLOW"),
    "wan2.1_t2v_14B": ("WAN21_T2V", "WanModel", "FLOW"),
    "wan2.1_i2v_480p_14B": ("WAN21_I2V", "WanModel", "FLOW"),
    "wan2.1_i2v_720p_14B": ("WAN21_I2V", "WanModel", "FLOW"),
    "wan2.1_vace_1.3B": ("WAN21_Vace", "VaceWanModel", "FLOW"),
    "wan2.1_vace_14B": ("WAN21_Vace", "VaceWanModel", "FLOW"),
    "wan2.2_t2v_14B": ("WAN21_T2V", "WanModel", "FLOW"),
    "wan2.2_ti2v_5B": ("WAN22_T2V", "WanModel", "FLOW"),
    "wan2.2_i2v_14B": ("WAN21_I2V", "WanModel", "FLOW"),
}


def default_sigmas(config_class: str, model_type: str, steps: int) -> list[float]:
    """ComfyUI's ``simple`` schedule for a model family at ``steps`` steps."""
    import comfy.model_base
    import comfy.samplers
    import comfy.supported_models

    config = getattr(comfy.supported_models, config_class)({})
    sampling = comfy.model_base.model_sampling(config, getattr(comfy.model_base.ModelType, model_type))
    return [float(s) for s in comfy.samplers.calculate_sigmas(sampling, "simple", steps)]


def convert(published: dict, comfy_version: str) -> list[Path]:
    """Write one preset file per published curve; return the paths."""
    sys.path.append(str(HERE.parents[1]))  # after ComfyUI, whose nodes.py our nodes/ must not shadow
    from calibration.curve import MagnitudeCurve, role_curve_from_ratios
    from calibration.curve_file import save_curve

    written = []
    for name, values in published["curves"].items():
        config_class, arch, model_type = MODELS[name]
        steps = int(published["steps_at_calibration"][name])
        sigmas = default_sigmas(config_class, model_type, steps)[:steps]
        cfg = len(values) == 2 * steps
        if not cfg and len(values) != steps:
            raise ValueError(f"{name}: {len(values)} values for {steps} steps")
        roles = {"cond": values[0::2], "uncond": values[1::2]} if cfg else {"cond": values}
        rec = published["recommended_settings_from_their_readme"].get(name)
        metadata = {
            "source": published["source"],
            "license": "Apache-2.0",
            "architecture": arch,
            "model_config": config_class,
            "steps": steps,
            "cfg": cfg,
            "conversion": (
                f"step i placed at sigma_i of ComfyUI {comfy_version}'s 'simple' schedule for "
                f"{config_class} at {steps} steps with the model's default shift"
            ),
            "sigmas": sigmas,
        }
        if rec:
            metadata["recommended"] = {
                "threshold": rec["magcache_thresh"],
                "max_skips": rec["magcache_K"],
                "retention": rec["retention_ratio"],
                "source": "the authors' README",
            }
        curve = MagnitudeCurve(
            name=name,
            roles={role: role_curve_from_ratios(sigmas, ratios) for role, ratios in roles.items()},
            metadata=metadata,
        )
        written.append(save_curve(curve, HERE / f"{name}.safetensors"))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("published", type=Path, help="magcache_published_ratios.json")
    parser.add_argument("--comfyui", type=Path, default=Path.home() / "ComfyUI")
    args = parser.parse_args()
    sys.path.insert(0, str(args.comfyui))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    version = next(
        line.split("=", 1)[1].strip().strip('"')
        for line in (args.comfyui / "pyproject.toml").read_text().splitlines()
        if line.startswith("version")
    )
    for path in convert(json.loads(args.published.read_text()), version):
        print(path.relative_to(HERE.parents[1]))


if __name__ == "__main__":
    main()
