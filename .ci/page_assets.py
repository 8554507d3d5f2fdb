"""Draw the pack's pictures for the page and the registry, and name each example's model files.

Why a script: the pictures must follow the workflows. Run it after changing an
example, and commit what it writes:

* ``icon.png``: the registry's icon for the pack ([tool.comfy] Icon);
* ``example_workflows/<name>.jpg``: the template browser's thumbnail of every
  example (the page asks for ``/api/workflow_templates/<pack>/<name>.jpg``);
  for the tiny-model example a real result, made by running the example
  itself in a real ComfyUI server; for the others a diagram of the chain the
  workflow builds, with the model file it loads;
* ``properties.models`` of every loader node of every example: the file, the
  folder it goes in and where to download it, which the page shows when a
  workflow needs a file the user lacks.

Usage (in the host test environment, a ComfyUI checkout at $COMFYUI_PATH or ~/ComfyUI):
    python .ci/page_assets.py            # everything
    python .ci/page_assets.py --no-run   # skip running the tiny model (keeps its thumbnail)
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "example_workflows"
ICON = ROOT / "icon.png"
TINY = "magcache_tiny_wan_digits_cpu"
THUMB_SIZE = (512, 512)

#: Where every model file the examples load comes from (the repositories ComfyUI's own templates use).
HF = "https://huggingface.co"
WAN21 = f"{HF}/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
WAN22 = f"{HF}/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files"
HUNYUAN = f"{HF}/Comfy-Org/HunyuanVideo_repackaged/resolve/main/split_files"
QWEN = f"{HF}/Comfy-Org/Qwen-Image_ComfyUI/resolve/main/split_files"
FLUX_TE = f"{HF}/comfyanonymous/flux_text_encoders/resolve/main"
MODEL_URLS: dict[str, str] = {
    "wan2.1_t2v_1.3B_fp16.safetensors": f"{WAN21}/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors",
    "wan2.1_i2v_480p_14B_fp16.safetensors": f"{WAN21}/diffusion_models/wan2.1_i2v_480p_14B_fp16.safetensors",
    "umt5_xxl_fp8_e4m3fn_scaled.safetensors": f"{WAN21}/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
    "wan_2.1_vae.safetensors": f"{WAN21}/vae/wan_2.1_vae.safetensors",
    "clip_vision_h.safetensors": f"{WAN21}/clip_vision/clip_vision_h.safetensors",
    "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors":
        f"{WAN22}/diffusion_models/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
    "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors":
        f"{WAN22}/diffusion_models/wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors",
    "wan2.2_ti2v_5B_fp16.safetensors": f"{WAN22}/diffusion_models/wan2.2_ti2v_5B_fp16.safetensors",
    "wan2.2_vae.safetensors": f"{WAN22}/vae/wan2.2_vae.safetensors",
    "hunyuan_video_t2v_720p_bf16.safetensors": f"{HUNYUAN}/diffusion_models/hunyuan_video_t2v_720p_bf16.safetensors",
    "llava_llama3_fp8_scaled.safetensors": f"{HUNYUAN}/text_encoders/llava_llama3_fp8_scaled.safetensors",
    "hunyuan_video_vae_bf16.safetensors": f"{HUNYUAN}/vae/hunyuan_video_vae_bf16.safetensors",
    "clip_l.safetensors": f"{FLUX_TE}/clip_l.safetensors",
    "t5xxl_fp16.safetensors": f"{FLUX_TE}/t5xxl_fp16.safetensors",
    "t5xxl_fp8_e4m3fn_scaled.safetensors": f"{FLUX_TE}/t5xxl_fp8_e4m3fn_scaled.safetensors",
    "flux1-dev.safetensors": f"{HF}/Comfy-Org/flux1-dev/resolve/main/flux1-dev.safetensors",
    "flux1-dev-kontext_fp8_scaled.safetensors":
        f"{HF}/Comfy-Org/flux1-kontext-dev_ComfyUI/resolve/main/split_files/diffusion_models/"
        "flux1-dev-kontext_fp8_scaled.safetensors",
    "ae.safetensors": f"{HF}/Comfy-Org/Lumina_Image_2.0_Repackaged/resolve/main/split_files/vae/ae.safetensors",
    "Chroma1-HD-fp8mixed.safetensors":
        f"{HF}/Comfy-Org/Chroma1-HD_repackaged/resolve/main/split_files/diffusion_models/"
        "Chroma1-HD-fp8mixed.safetensors",
    "qwen_image_fp8_e4m3fn.safetensors": f"{QWEN}/diffusion_models/qwen_image_fp8_e4m3fn.safetensors",
    "qwen_2.5_vl_7b_fp8_scaled.safetensors": f"{QWEN}/text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors",
    "qwen_image_vae.safetensors": f"{QWEN}/vae/qwen_image_vae.safetensors",
    "ltx-video-2b-v0.9.safetensors": f"{HF}/Lightricks/LTX-Video/resolve/main/ltx-video-2b-v0.9.safetensors",
}  # fmt: skip

#: Loader node type -> (folder under models/, how many leading widget values are file names).
LOADERS: dict[str, tuple[str, int]] = {
    "UNETLoader": ("diffusion_models", 1),
    "CLIPLoader": ("text_encoders", 1),
    "DualCLIPLoader": ("text_encoders", 2),
    "VAELoader": ("vae", 1),
    "CLIPVisionLoader": ("clip_vision", 1),
    "CheckpointLoaderSimple": ("checkpoints", 1),
}
#: The node types a diagram shows, in the order a model flows through them.
CHAIN = ("UNETLoader", "CheckpointLoaderSimple", "ModelSamplingSD3", "MagCacheApply", "MagCacheCalibrate",
         "KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced")  # fmt: skip
SHORT = {"UNETLoader": "Load Diffusion Model", "CheckpointLoaderSimple": "Load Checkpoint",
         "ModelSamplingSD3": "ModelSampling", "MagCacheApply": "MagCache", "MagCacheCalibrate": "MagCache Calibrate",
         "KSamplerAdvanced": "KSampler (Advanced)", "SamplerCustomAdvanced": "SamplerCustomAdvanced"}  # fmt: skip

BG, INK, DIM, ACCENT, BOX = (24, 26, 33), (235, 237, 242), (140, 146, 160), (255, 170, 40), (48, 52, 64)


def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans where installed (Debian's fonts-dejavu), else PIL's own."""
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    for folder in ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/TTF"):
        path = Path(folder) / name
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size)


def step_bars(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], computed: list[bool]) -> None:
    """The motif of the pack: one bar per sampling step, bright where computed, dim where skipped."""
    x0, y0, x1, y1 = box
    width = (x1 - x0) / len(computed)
    for i, on in enumerate(computed):
        height = (y1 - y0) * (0.35 + 0.65 * (1 - i / len(computed)) ** 0.7)
        left = x0 + i * width + width * 0.15
        draw.rounded_rectangle(
            (left, y1 - height, left + width * 0.7, y1), radius=max(1, int(width * 0.2)), fill=ACCENT if on else BOX
        )


#: A typical MagCache plan at 2x: the first steps computed, then one in two or three.
PLAN = [True] * 4 + [True, False, True, False, False, True, False, True, False, False, True, False]


def draw_icon(path: Path = ICON) -> None:
    """The registry icon: the step bars under the pack's name, 400x400."""
    image = Image.new("RGB", (400, 400), BG)
    draw = ImageDraw.Draw(image)
    step_bars(draw, (40, 70, 360, 270), PLAN)
    draw.text((200, 330), "MagCache", font=font(64, bold=True), fill=INK, anchor="mm")
    image.save(path, optimize=True)


def model_files(workflow: dict[str, Any]) -> list[tuple[dict[str, Any], str, str]]:
    """(node, file name, models/ folder) of every file the workflow's loaders load."""
    found = []
    for node in workflow["nodes"]:
        if node["type"] in LOADERS:
            folder, count = LOADERS[node["type"]]
            found += [(node, name, folder) for name in node["widgets_values"][:count]]
    return found


def name_models(workflow: dict[str, Any]) -> bool:
    """Put ``properties.models`` on each loader (the page's missing-model list); True if anything changed.

    The embedded tiny model has no entry: it ships with the pack and is listed without a download.
    """
    changed = False
    wanted: dict[int, list[dict[str, str]]] = {}
    for node, name, folder in model_files(workflow):
        if name in MODEL_URLS:
            wanted.setdefault(node["id"], []).append({"name": name, "url": MODEL_URLS[name], "directory": folder})
        elif name != "tiny_wan_digits.safetensors":
            raise SystemExit(f"no download address known for {name}: add it to MODEL_URLS")
    for node in workflow["nodes"]:
        if node["id"] in wanted and node.setdefault("properties", {}).get("models") != wanted[node["id"]]:
            node["properties"]["models"] = wanted[node["id"]]
            changed = True
    return changed


def chain(workflow: dict[str, Any]) -> list[str]:
    """The labels of the model's path through the workflow (loader, sampling, MagCache, sampler), in order."""
    types = [n["type"] for n in workflow["nodes"]]
    return [SHORT.get(t, t) for t in CHAIN if t in types]


def draw_diagram(workflow: dict[str, Any], title: str, path: Path) -> None:
    """A thumbnail for a workflow whose model is too big to run here: the chain and the model file."""
    image = Image.new("RGB", THUMB_SIZE, BG)
    draw = ImageDraw.Draw(image)
    draw.text((256, 34), title, font=font(30, bold=True), fill=INK, anchor="mm")
    steps = chain(workflow)
    top, height, gap = 78, 44, 14
    for i, label in enumerate(steps):
        y = top + i * (height + gap)
        hot = label.startswith("MagCache")
        draw.rounded_rectangle((96, y, 416, y + height), radius=10, fill=ACCENT if hot else BOX)
        draw.text((256, y + height / 2), label, font=font(20, bold=hot), fill=BG if hot else INK, anchor="mm")
        if i + 1 < len(steps):
            draw.line((256, y + height, 256, y + height + gap), fill=DIM, width=3)
    y = top + len(steps) * (height + gap) + 6
    diffusion = [name for node, name, folder in model_files(workflow) if folder in ("diffusion_models", "checkpoints")]
    for name in dict.fromkeys(diffusion):
        draw.text((256, y), name, font=font(15), fill=DIM, anchor="mm")
        y += 22
    step_bars(draw, (96, 430, 416, 478), PLAN)
    calibrating = "MagCache Calibrate" in steps
    note = "MagCache Calibrate: records a curve" if calibrating else "MagCache: about 2x fewer model calls"
    draw.text((256, 496), note, font=font(16), fill=INK, anchor="mm")
    image.save(path, quality=88, optimize=True)


TITLES = {
    "magcache_calibrate": "Calibrate a curve (Wan 2.1)",
    "magcache_chroma": "Chroma",
    "magcache_flux_dev": "Flux dev",
    "magcache_flux_kontext_dev": "Flux Kontext dev",
    "magcache_hunyuan_video_t2v": "HunyuanVideo T2V",
    "magcache_ltx_video": "LTX-Video 2B",
    "magcache_qwen_image": "Qwen-Image",
    "magcache_wan2.1_i2v_480p_14B": "Wan 2.1 I2V 14B",
    "magcache_wan2.1_t2v_1.3B": "Wan 2.1 T2V 1.3B",
    "magcache_wan2.2_t2v_14B_two_experts": "Wan 2.2 T2V 14B",
    "magcache_wan2.2_ti2v_5B": "Wan 2.2 TI2V 5B",
}


def run_tiny_example() -> list[Image.Image]:
    """The frames the tiny-model example makes, run as it is in a real ComfyUI server (no model copied)."""
    sys.path.insert(0, str(ROOT / "tests" / "host"))
    from comfy_host import ROOT as COMFY_ROOT
    from comfy_server import TINY_WORKFLOW, ComfyServer
    from workflows import to_api

    if COMFY_ROOT is None:
        raise SystemExit("no ComfyUI checkout found ($COMFYUI_PATH or ~/ComfyUI); use --no-run")
    with ComfyServer(COMFY_ROOT) as server:
        prompt = to_api(json.loads(TINY_WORKFLOW.read_text()), server.object_info())
        # The example keeps MagCache at its defaults: send only its link, so the picture does not
        # depend on how the node's widget values line up in the file (its inputs are optional).
        for node in prompt.values():
            if node["class_type"] == "MagCacheApply":
                node["inputs"] = {k: v for k, v in node["inputs"].items() if isinstance(v, list)}
        status, body = server.queue(prompt)
        if status != 200:
            raise SystemExit(f"the server refused the tiny example: {body}")
        entry = server.wait_history(body["prompt_id"])
        image = next(o["images"][0] for o in entry["outputs"].values() if o.get("images"))
        data = (server.output_dir / image["subfolder"] / image["filename"]).read_bytes()
    animation = Image.open(io.BytesIO(data))
    frames = []
    for index in range(getattr(animation, "n_frames", 1)):
        animation.seek(index)
        frames.append(animation.convert("RGB"))
    return frames


def draw_tiny(frames: list[Image.Image], path: Path) -> None:
    """The tiny example's thumbnail: its frames, large, in a 2x2 grid, captioned."""
    image = Image.new("RGB", THUMB_SIZE, BG)
    draw = ImageDraw.Draw(image)
    draw.text((256, 30), "Tiny Wan 2.1 on the CPU", font=font(28, bold=True), fill=INK, anchor="mm")
    cell = 200
    for i, frame in enumerate(frames[:4]):
        x, y = 48 + (i % 2) * (cell + 16), 56 + (i // 2) * (cell + 16)
        image.paste(frame.resize((cell, cell), Image.Resampling.NEAREST), (x, y))
    draw.text((256, 494), "digit 3, MagCache at its defaults: a real run", font=font(16), fill=DIM, anchor="mm")
    image.save(path, quality=90, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-run", action="store_true", help="do not run the tiny-model example")
    args = parser.parse_args()
    draw_icon()
    for path in sorted(EXAMPLES.glob("*.json")):
        workflow = json.loads(path.read_text())
        if name_models(workflow):
            path.write_text(json.dumps(workflow, indent=2, ensure_ascii=False) + "\n")
        if path.stem == TINY:
            if not args.no_run:
                draw_tiny(run_tiny_example(), path.with_suffix(".jpg"))
        else:
            draw_diagram(workflow, TITLES[path.stem], path.with_suffix(".jpg"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
