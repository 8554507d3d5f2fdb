"""Tiny random-weight instances of ComfyUI's own DiT architectures.

The host tests need the real ComfyUI model classes (their block loops, their
``patches_replace`` hooks, their ``model_base`` conditioning) but cannot load
multi-gigabyte checkpoints on a 2-core CPU.  So each family here is built at a
toy size with seeded random weights and handed to ComfyUI the way a user's file
is handed to it:

* where ComfyUI's detection reads every size it needs from the tensor shapes,
  the random state dict goes through ``comfy.sd.load_diffusion_model_state_dict``
  (the "Load Diffusion Model" node's code path) and we check that detection
  rebuilt exactly the module we made;
* where detection hard-codes a large size (Flux: 24 heads of 128), we run the
  same detection on a shape-only stand-in of the real checkpoint, shrink the
  resulting ``unet_config`` and build the model through
  ``comfy.model_detection.model_config_from_unet_config``, so the
  ``model_config`` / ``model_base`` classes are the ones a user would get.

Call :func:`comfy_host.import_comfyui` before :func:`build`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    import comfy.model_patcher

Shapes = dict[str, tuple[int, ...]]


@dataclass
class TinyModel:
    """A loaded tiny model plus the inputs a user's workflow would give it."""

    family: str
    patcher: comfy.model_patcher.ModelPatcher
    latent: torch.Tensor
    positive: list
    negative: list
    cfg: float


# The ModuleList attributes holding the transformer blocks, in execution order.
BLOCK_LISTS: dict[str, tuple[str, ...]] = {
    "wan21_t2v": ("blocks",),
    "wan21_i2v": ("blocks",),
    "wan21_vace": ("blocks", "vace_blocks"),
    "wan22_ti2v_5b": ("blocks",),
    "hunyuan_video": ("double_blocks", "single_blocks"),
    "hunyuan_video15": ("double_blocks", "single_blocks"),
    "flux": ("double_blocks", "single_blocks"),
    "flux_kontext": ("double_blocks", "single_blocks"),
    "chroma": ("double_blocks", "single_blocks"),
    "qwen_image": ("transformer_blocks",),
    "ltxv": ("transformer_blocks",),
    "mochi": ("blocks",),
    "sd3": ("joint_blocks",),
    "auraflow": ("double_layers", "single_layers"),
    "hunyuan_dit": ("blocks",),
    "kandinsky5": ("text_transformer_blocks", "visual_transformer_blocks"),
    "lumina2": ("context_refiner", "noise_refiner", "layers"),
    "hidream": ("double_stream_blocks", "single_stream_blocks"),
    "cosmos": ("blocks",),
    "flux2": ("double_blocks", "single_blocks"),
    "chroma_radiance": ("double_blocks", "single_blocks"),
    "ltxav": ("transformer_blocks",),
    "wan21_camera": ("blocks",),
    "wan21_humo": ("blocks",),
    "wan22_s2v": ("blocks",),
    "wan22_animate": ("blocks",),
    "hunyuan_image21": ("double_blocks", "single_blocks"),
    "z_image": ("context_refiner", "noise_refiner", "layers"),
    "joyimage": ("double_blocks",),
    "mageflow": ("transformer_blocks",),
    "lens": ("transformer_blocks",),
    "longcat_image": ("double_blocks", "single_blocks"),
    "minimax_h3": ("blocks",),
    "hidream_o1": ("language_model.layers",),
    "krea2": ("blocks",),
    "ideogram4": ("layers",),
    "cogvideox": ("blocks",),
    "pixeldit": ("patch_blocks", "pixel_blocks"),
    "anima": ("blocks",),
    "wan_scail": ("blocks",),
    "wan_animate2": ("blocks",),
    "wan_dancer": ("blocks",),
    "z_image_pixel": ("context_refiner", "noise_refiner", "layers"),
}

TEXT_TOKENS = 8  # short prompts keep the joint sequences small


# ----------------------------------------------------------------- helpers --


def _ops() -> Any:
    """ComfyUI's no-init layer classes, as the loader itself uses on CPU."""
    import comfy.ops

    return comfy.ops.disable_weight_init


def _randomize(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Fill every float tensor of ``module``'s state dict with seeded values.

    ``disable_weight_init`` layers are bare ``torch.empty``, so nothing may be
    left unfilled.  Matrices get a fan-in scaled normal (activations stay O(1)
    through a few blocks); norm scales get 1 + noise; other vectors small
    noise.  Returns the state dict, whose tensors share the module's storage.
    """
    gen = torch.Generator().manual_seed(seed)
    sd = module.state_dict()
    for name in sorted(sd):
        t = sd[name]
        if not t.is_floating_point():
            continue
        r = torch.randn(t.shape, generator=gen, dtype=torch.float32)
        if t.ndim >= 2:
            fan_in = math.prod(t.shape[1:])
            r = r / math.sqrt(fan_in)
        elif "norm" in name and name.endswith(("weight", "scale")):
            r = 1.0 + 0.02 * r
        else:
            r = 0.02 * r
        with torch.no_grad():
            t.copy_(r.to(t.dtype))
    return sd


def _via_loader(module: torch.nn.Module, seed: int) -> Any:
    """Load ``module``'s randomized weights through the user-facing loader.

    Asserts that detection rebuilt a module with the same keys and shapes, so
    a silently shrunk/grown detection cannot go unnoticed.
    """
    import comfy.sd

    sd = _randomize(module, seed)
    expected = {k: tuple(v.shape) for k, v in sd.items()}
    patcher = comfy.sd.load_diffusion_model_state_dict(dict(sd))
    if patcher is None:
        raise RuntimeError(f"ComfyUI did not recognise {type(module).__name__}")
    got = {k: tuple(v.shape) for k, v in patcher.model.diffusion_model.state_dict().items()}
    if got != expected:
        diff = set(got.items()) ^ set(expected.items())
        raise RuntimeError(f"detection rebuilt a different {type(module).__name__}: {sorted(diff)[:6]}")
    return patcher


def _detected(shapes: Shapes) -> dict[str, Any]:
    """Run ComfyUI's detection on a shape-only stand-in of a real checkpoint."""
    import comfy.model_detection

    sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    cfg = comfy.model_detection.detect_unet_config(sd, "")
    if cfg is None:
        raise RuntimeError("detection did not recognise the stand-in state dict")
    return cfg


def _via_config(unet_config: dict[str, Any], seed: int) -> Any:
    """Build through ComfyUI's model_config machinery, bypassing size detection."""
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher

    model_config = comfy.model_detection.model_config_from_unet_config(unet_config)
    if model_config is None:
        raise RuntimeError(f"no ComfyUI model_config matches {unet_config}")
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    _randomize(model.diffusion_model, seed)
    dev = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=dev, offload_device=dev)


def _text(seed: int, dim: int, tokens: int = TEXT_TOKENS) -> torch.Tensor:
    """A random stand-in for a text encoder's hidden states."""
    return torch.randn((1, tokens, dim), generator=torch.Generator().manual_seed(seed))


def _vec(seed: int, dim: int) -> torch.Tensor:
    """A random stand-in for a pooled text embedding."""
    return torch.randn((1, dim), generator=torch.Generator().manual_seed(seed))


def _conds(
    seed: int, dim: int, extra: dict[str, Any] | None = None, pooled: int | None = None, tokens: int = TEXT_TOKENS
) -> tuple[list, list]:
    """Positive and negative conditioning with different random text."""
    out = []
    for s in (seed + 1000, seed + 2000):
        ex = dict(extra or {})
        if pooled is not None:
            ex["pooled_output"] = _vec(s + 1, pooled)
        out.append([[_text(s, dim, tokens), ex]])
    return out[0], out[1]


def _has(module: str, attr: str | None = None) -> bool:
    """Whether the running ComfyUI has ``module`` (and ``attr`` in it)."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError:
        return False
    return attr is None or hasattr(mod, attr)


# --------------------------------------------------------------- families --


def _wan(seed: int, *, model_type: str, in_dim: int, out_dim: int, **extra: Any) -> Any:
    """A 4-block WanModel (dim 256 -> detection's dim // 128 = 2 heads)."""
    import comfy.ldm.wan.model as wan

    kw: dict[str, Any] = dict(
        model_type=model_type,
        patch_size=(1, 2, 2),
        in_dim=in_dim,
        dim=256,
        ffn_dim=512,
        freq_dim=256,
        text_dim=4096,
        out_dim=out_dim,
        num_heads=2,
        num_layers=4,
        window_size=(-1, -1),
        qk_norm=True,
        cross_attn_norm=True,
        eps=1e-6,
        operations=_ops(),
    )
    kw.update(extra)
    cls = wan.VaceWanModel if model_type == "vace" else wan.WanModel
    return _via_loader(cls(**kw), seed)


def _build_wan21_t2v(seed: int) -> TinyModel:
    """Wan 2.1 text-to-video: 16-channel latent, 4 frames x 8 x 8 -> 64 tokens."""
    patcher = _wan(seed, model_type="t2v", in_dim=16, out_dim=16)
    pos, neg = _conds(seed, 4096)
    return TinyModel("wan21_t2v", patcher, torch.zeros(1, 16, 4, 8, 8), pos, neg, 5.0)


def _build_wan21_i2v(seed: int) -> TinyModel:
    """Wan 2.1 image-to-video: in_dim 36 = noise 16 + mask 4 + image 16, plus CLIP-vision tokens.

    The extras are what WanImageToVideo puts in the conditioning.
    """
    import comfy.clip_vision

    patcher = _wan(seed, model_type="i2v", in_dim=36, out_dim=16)
    g = torch.Generator().manual_seed(seed + 7)
    image = torch.zeros(1, 16, 4, 8, 8)
    image[:, :, :1] = torch.randn((1, 16, 1, 8, 8), generator=g)
    mask = torch.ones(1, 1, 4, 8, 8)
    mask[:, :, :1] = 0.0
    clip = comfy.clip_vision.Output()
    clip["penultimate_hidden_states"] = torch.randn((1, 257, 1280), generator=g)
    extra = {"concat_latent_image": image, "concat_mask": mask, "clip_vision_output": clip}
    pos, neg = _conds(seed, 4096, extra)
    return TinyModel("wan21_i2v", patcher, torch.zeros(1, 16, 4, 8, 8), pos, neg, 5.0)


def _build_wan21_vace(seed: int) -> TinyModel:
    """Wan 2.1 VACE: 2 VACE blocks hinting main blocks 0 and 2, with control frames as WanVaceToVideo gives."""
    patcher = _wan(seed, model_type="vace", in_dim=16, out_dim=16, vace_layers=2, vace_in_dim=96)
    g = torch.Generator().manual_seed(seed + 7)
    frames = [torch.randn((1, 32, 4, 8, 8), generator=g)]
    masks = [torch.ones(1, 64, 4, 8, 8)]
    extra = {"vace_frames": frames, "vace_mask": masks, "vace_strength": [1.0]}
    pos, neg = _conds(seed, 4096, extra)
    return TinyModel("wan21_vace", patcher, torch.zeros(1, 16, 4, 8, 8), pos, neg, 5.0)


def _build_wan22_ti2v_5b(seed: int) -> TinyModel:
    """Wan 2.2 TI2V 5B: 48-channel latent in and out (detected as WAN22_T2V)."""
    patcher = _wan(seed, model_type="t2v", in_dim=48, out_dim=48)
    pos, neg = _conds(seed, 4096)
    return TinyModel("wan22_ti2v_5b", patcher, torch.zeros(1, 48, 3, 8, 8), pos, neg, 5.0)


def _hunyuan_video_kwargs(**extra: Any) -> dict[str, Any]:
    """HunyuanVideo params as detection would produce them, at hidden 256 (2 heads of 128)."""
    kw: dict[str, Any] = dict(
        image_model="hunyuan_video",
        in_channels=16,
        out_channels=16,
        vec_in_dim=768,
        context_in_dim=4096,
        hidden_size=256,
        mlp_ratio=4.0,
        num_heads=2,
        depth=2,
        depth_single_blocks=2,
        axes_dim=[16, 56, 56],
        theta=256,
        patch_size=[1, 2, 2],
        qkv_bias=True,
        guidance_embed=True,
    )
    import comfy.ldm.hunyuan_video.model as hv

    fields = getattr(hv.HunyuanVideoParams, "__dataclass_fields__", {})
    for name, default in (
        ("byt5", False),
        ("meanflow", False),
        ("use_cond_type_embedding", False),
        ("vision_in_dim", None),
        ("meanflow_sum", False),
    ):
        if name in fields:
            kw[name] = default
    kw.update(extra)
    return kw


def _build_hunyuan_video(seed: int) -> TinyModel:
    """HunyuanVideo 1.0 t2v: guidance-embedded, llama text + CLIP-L pooled."""
    import comfy.ldm.hunyuan_video.model as hv

    patcher = _via_loader(hv.HunyuanVideo(**_hunyuan_video_kwargs(), operations=_ops()), seed)
    pos, neg = _conds(seed, 4096, {"guidance": 6.0}, pooled=768)
    return TinyModel("hunyuan_video", patcher, torch.zeros(1, 16, 3, 8, 8), pos, neg, 3.0)


def _build_hunyuan_video15(seed: int) -> TinyModel:
    """HunyuanVideo 1.5: 32-ch latent, patch 1, in 65 = noise+image+mask, vision_in 1152, byT5 + cond types.

    Like the released 8.3B model it has double-stream blocks only (54 there, 3 here).
    """
    import comfy.ldm.hunyuan_video.model as hv

    kw = _hunyuan_video_kwargs(
        in_channels=65,
        out_channels=32,
        vec_in_dim=None,
        context_in_dim=3584,
        patch_size=[1, 1, 1],
        guidance_embed=False,
        byt5=True,
        use_cond_type_embedding=True,
        vision_in_dim=1152,
        meanflow_sum=True,
        depth=3,
        depth_single_blocks=0,
    )
    patcher = _via_loader(hv.HunyuanVideo(**kw, operations=_ops()), seed)
    g = torch.Generator().manual_seed(seed + 7)
    extra = {"conditioning_byt5small": torch.randn((1, 4, 1472), generator=g), "pooled_output": None}
    pos, neg = _conds(seed, 3584, extra)
    return TinyModel("hunyuan_video15", patcher, torch.zeros(1, 32, 2, 8, 8), pos, neg, 5.0)


def _flux_config(**shrink: Any) -> dict[str, Any]:
    """Flux-dev detection output, shrunk to 2 heads of 64 (RoPE axes 16+24+24)."""
    cfg = _detected(
        {
            "img_in.weight": (3072, 64),
            "txt_in.weight": (3072, 4096),
            "vector_in.in_layer.weight": (3072, 768),
            "guidance_in.in_layer.weight": (3072, 256),
            "double_blocks.0.img_attn.norm.key_norm.scale": (128,),
            "double_blocks.1.img_attn.norm.key_norm.scale": (128,),
            "single_blocks.0.norm.key_norm.scale": (128,),
            "single_blocks.1.norm.key_norm.scale": (128,),
            "single_blocks.2.norm.key_norm.scale": (128,),
        }
    )
    cfg.update(hidden_size=128, num_heads=2, axes_dim=[16, 24, 24])
    cfg.update(shrink)
    return cfg


def _build_flux(seed: int) -> TinyModel:
    """Flux dev: 2 double + 3 single blocks, guidance 3.5, T5 + CLIP-L pooled, 64 image tokens."""
    patcher = _via_config(_flux_config(), seed)
    pos, neg = _conds(seed, 4096, {"guidance": 3.5}, pooled=768)
    return TinyModel("flux", patcher, torch.zeros(1, 16, 16, 16), pos, neg, 2.0)


def _build_flux_kontext(seed: int) -> TinyModel:
    """Flux Kontext: the Flux dev model with a reference latent appended as extra image tokens."""
    patcher = _via_config(_flux_config(), seed)
    ref = torch.randn((1, 16, 16, 16), generator=torch.Generator().manual_seed(seed + 7))
    pos, neg = _conds(seed, 4096, {"guidance": 2.5, "reference_latents": [ref]}, pooled=768)
    return TinyModel("flux_kontext", patcher, torch.zeros(1, 16, 16, 16), pos, neg, 2.0)


def _build_chroma(seed: int) -> TinyModel:
    """Chroma: Flux-shaped blocks modulated by a distilled-guidance approximator, no pooled text."""
    cfg = _detected(
        {
            "img_in.weight": (3072, 64),
            "txt_in.weight": (3072, 4096),
            "distilled_guidance_layer.norms.0.scale": (5120,),
            "double_blocks.0.img_attn.norm.key_norm.scale": (128,),
            "double_blocks.1.img_attn.norm.key_norm.scale": (128,),
            "single_blocks.0.norm.key_norm.scale": (128,),
            "single_blocks.1.norm.key_norm.scale": (128,),
            "single_blocks.2.norm.key_norm.scale": (128,),
        }
    )
    cfg.update(hidden_size=128, num_heads=2, axes_dim=[16, 24, 24], out_dim=128, hidden_dim=256, n_layers=2)
    patcher = _via_config(cfg, seed)
    pos, neg = _conds(seed, 4096, {"pooled_output": None})  # T5-only, as CLIPTextEncode gives it
    return TinyModel("chroma", patcher, torch.zeros(1, 16, 16, 16), pos, neg, 4.0)


def _build_qwen_image(seed: int) -> TinyModel:
    """Qwen-Image: 3 MMDiT blocks, 2 heads of 32, Qwen2.5-VL 3584-dim text."""
    cfg = _detected(
        {
            "txt_norm.weight": (3584,),
            "img_in.weight": (3072, 64),
            **{f"transformer_blocks.{i}.attn.to_q.weight": (3072, 3072) for i in range(3)},
        }
    )
    cfg.update(attention_head_dim=32, num_attention_heads=2, axes_dims_rope=(8, 12, 12))
    patcher = _via_config(cfg, seed)
    pos, neg = _conds(seed, 3584)
    return TinyModel("qwen_image", patcher, torch.zeros(1, 16, 16, 16), pos, neg, 4.0)


def _build_ltxv(seed: int) -> TinyModel:
    """LTX-Video: detection fixes 32 heads, so inner dim 256 = 32 heads of 8; 128-ch latent, patch 1."""
    import comfy.ldm.lightricks.model as ltx

    module = ltx.LTXVModel(
        in_channels=128,
        cross_attention_dim=256,
        attention_head_dim=8,
        num_attention_heads=32,
        caption_channels=4096,
        num_layers=3,
        operations=_ops(),
    )
    patcher = _via_loader(module, seed)
    pos, neg = _conds(seed, 4096, {"frame_rate": 25, "attention_mask": torch.ones(1, TEXT_TOKENS, dtype=torch.long)})
    return TinyModel("ltxv", patcher, torch.zeros(1, 128, 3, 4, 4), pos, neg, 3.0)


def _build_mochi(seed: int) -> TinyModel:
    """Genmo Mochi: 3 asymmetric joint blocks (visual 128 / text 64), 2 heads of 64."""
    cfg = _detected({"t5_yproj.weight": (1536, 4096)})
    # AsymmetricJointBlock asserts hidden_x * mlp_ratio_x == 1536 * 8, so the MLP stays wide.
    cfg.update(depth=3, num_heads=2, hidden_size_x=128, hidden_size_y=64, mlp_ratio_x=1536 * 8 / 128)
    patcher = _via_config(cfg, seed)
    mask = torch.ones(1, TEXT_TOKENS, dtype=torch.long)
    pos, neg = _conds(seed, 4096, {"attention_mask": mask})
    return TinyModel("mochi", patcher, torch.zeros(1, 12, 3, 8, 8), pos, neg, 4.5)


def _build_sd3(seed: int) -> TinyModel:
    """SD3.x MMDiT: depth 2 -> hidden 128 (detection: depth = hidden // 64), T5 context + pooled CLIP."""
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit

    module = mmdit.MMDiT(
        patch_size=2,
        in_channels=16,
        out_channels=16,
        depth=2,
        adm_in_channels=2048,
        context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 128}},
        pos_embed_max_size=16,
        num_patches=256,
        pos_embed_scaling_factor=None,
        qk_norm="rms",
        x_block_self_attn_layers=[],
        operations=_ops(),
    )
    patcher = _via_loader(module, seed)
    pos, neg = _conds(seed, 4096, pooled=2048)
    return TinyModel("sd3", patcher, torch.zeros(1, 16, 16, 16), pos, neg, 4.0)


def _build_auraflow(seed: int) -> TinyModel:
    """AuraFlow: 2 joint + 2 single layers, dim 128 (4 heads of 32), SDXL 4-ch latent."""
    cfg = _detected(
        {
            "double_layers.0.attn.w1q.weight": (3072, 3072),
            "double_layers.1.attn.w1q.weight": (3072, 3072),
            "single_layers.0.attn.w1q.weight": (3072, 3072),
            "single_layers.1.attn.w1q.weight": (3072, 3072),
            "positional_encoding": (1, 1024, 3072),
            "cond_seq_linear.weight": (3072, 2048),
        }
    )
    cfg.update(dim=128, n_heads=4, global_conddim=128, max_seq=256)
    patcher = _via_config(cfg, seed)
    pos, neg = _conds(seed, 2048)
    return TinyModel("auraflow", patcher, torch.zeros(1, 4, 16, 16), pos, neg, 3.5)


def _build_hunyuan_dit(seed: int) -> TinyModel:
    """HunyuanDiT 1.2: 4 blocks (long skips), hidden 128 (16 heads of 8), BERT 1024 text.

    The loader would keep the 2048-wide mT5 MLP (2048 -> 8192 over 256 tokens,
    ~1.3 s per sample on 2 cores), so this one is built from a shrunk config
    with a 256-wide mT5 input instead.
    """
    cfg = _detected(
        {
            "mlp_t5.0.weight": (8192, 2048),
            "x_embedder.proj.weight": (1408, 4, 2, 2),
            "extra_embedder.0.weight": (5632, 1024),
            **{f"blocks.{i}.attn1.qkv.weight": (1, 1) for i in range(4)},
        }
    )
    cfg.update(hidden_size=128, num_heads=16, text_states_dim_t5=256)
    patcher = _via_config(cfg, seed)
    # The model's padding tables fix the prompt lengths: 77 BERT tokens, 256 mT5 tokens (masked past 8).
    g = torch.Generator().manual_seed(seed + 7)
    mask, mask_t5 = torch.zeros(1, 77, dtype=torch.long), torch.zeros(1, 256, dtype=torch.long)
    mask[:, :TEXT_TOKENS] = 1
    mask_t5[:, :TEXT_TOKENS] = 1
    extra = {
        "attention_mask": mask,
        "conditioning_mt5xl": torch.randn((1, 256, 256), generator=g),
        "attention_mask_mt5xl": mask_t5,
        "width": 128,
        "height": 128,
    }
    pos, neg = _conds(seed, 1024, extra, tokens=77)
    return TinyModel("hunyuan_dit", patcher, torch.zeros(1, 4, 16, 16), pos, neg, 6.0)


def _build_kandinsky5(seed: int) -> TinyModel:
    """Kandinsky 5 lite video: 1 text + 3 visual blocks, model_dim 128, visual in (16+16+1) * 2 * 2 = 132."""
    import comfy.ldm.kandinsky5.model as k5

    module = k5.Kandinsky5(
        in_visual_dim=16,
        out_visual_dim=16,
        in_text_dim=3584,
        in_text_dim2=768,
        time_dim=64,
        model_dim=128,
        ff_dim=256,
        visual_embed_dim=132,
        patch_size=(1, 2, 2),
        num_text_blocks=1,
        num_visual_blocks=3,
        axes_dims=(16, 24, 24),
        operations=_ops(),
    )
    patcher = _via_loader(module, seed)
    pos, neg = _conds(seed, 3584, pooled=768)
    return TinyModel("kandinsky5", patcher, torch.zeros(1, 16, 3, 8, 8), pos, neg, 5.0)


def _build_lumina2(seed: int) -> TinyModel:
    """Lumina Image 2.0 (NextDiT): dim 128, 2 heads of 64, 1+1 refiners + 2 main layers, Gemma 2304 text."""
    cfg = _detected(
        {
            "cap_embedder.1.weight": (2304, 2304),
            # ComfyUI 0.33 detects Lumina 2 by this key too (0.3.64 and 0.8 by the embedder alone).
            "noise_refiner.0.attention.k_norm.weight": (64,),
            "layers.0.attention.qkv.weight": (1, 1),
            "layers.1.attention.qkv.weight": (1, 1),
        }
    )
    cfg.update(dim=128, n_heads=2, n_kv_heads=2, axes_dims=[16, 24, 24], n_refiner_layers=1, multiple_of=16)
    patcher = _via_config(cfg, seed)
    # Gemma's attention mask gives NextDiT its num_tokens (required before 0.8).
    pos, neg = _conds(seed, 2304, {"attention_mask": torch.ones(1, TEXT_TOKENS, dtype=torch.long)})
    return TinyModel("lumina2", patcher, torch.zeros(1, 16, 16, 16), pos, neg, 4.0)


def _build_hidream(seed: int) -> TinyModel:
    """HiDream I1: 1 double + 2 single MoE blocks, 2 heads of 64; one Llama layer per block."""
    cfg = _detected({"caption_projection.0.linear.weight": (2560, 4096)})
    cfg.update(
        num_attention_heads=2,
        attention_head_dim=64,
        num_layers=1,
        num_single_layers=2,
        axes_dims_rope=[32, 16, 16],
        llama_layers=[0, 1, 2],
    )
    patcher = _via_config(cfg, seed)
    g = torch.Generator().manual_seed(seed + 7)
    out = []
    for s in (seed + 1000, seed + 2000):
        llama = torch.randn((1, 3, TEXT_TOKENS, 4096), generator=g)
        ex = {"pooled_output": _vec(s + 1, 2048), "conditioning_llama3": llama}
        out.append([[_text(s, 4096), ex]])
    return TinyModel("hidream", patcher, torch.zeros(1, 16, 16, 16), out[0], out[1], 4.0)


def _build_cosmos(seed: int) -> TinyModel:
    """Cosmos Predict2 text-to-image (MiniTrainDIT): 2 blocks, 128 channels (2 heads), T5 1024 text."""
    cfg = _detected(
        {
            "blocks.0.mlp.layer1.weight": (1, 1),
            "x_embedder.proj.1.weight": (2048, 68),
        }
    )
    cfg.update(model_channels=128, num_blocks=2, num_heads=2, adaln_lora_dim=32)
    patcher = _via_config(cfg, seed)
    pos, neg = _conds(seed, 1024)
    return TinyModel("cosmos", patcher, torch.zeros(1, 16, 1, 16, 16), pos, neg, 4.0)


# ---------------------------------------------------------- newer families --


def _build_flux2(seed: int) -> TinyModel:
    """Flux.2 dev: 2 double + 2 single blocks, hidden 128 (2 heads of 64, 4 RoPE axes), 128-ch latent, patch 1.

    Global modulation and SiLU-gated MLPs as detection sets them, guidance 4, no pooled
    vector.  The model pads every prompt to 512 tokens, so the text is a 512-wide stand-in
    for Mistral's 15360 (at full width ``txt_in`` alone would be most of the toy's compute).
    """
    shapes = {
        "img_in.weight": (6144, 128),
        "txt_in.weight": (6144, 512),
        "guidance_in.in_layer.weight": (6144, 256),
        "double_stream_modulation_img.lin.weight": (36864, 6144),
        **{f"double_blocks.{i}.img_attn.norm.key_norm.scale": (128,) for i in range(2)},
        **{f"single_blocks.{i}.norm.key_norm.scale": (128,) for i in range(2)},
    }
    cfg = _detected(shapes)
    cfg.update(hidden_size=128, num_heads=2, axes_dim=[16, 16, 16, 16])
    patcher = _via_config(cfg, seed)
    pos, neg = _conds(seed, 512, {"guidance": 4.0, "pooled_output": None})
    return TinyModel("flux2", patcher, torch.zeros(1, 128, 8, 8), pos, neg, 2.0)


def _build_chroma_radiance(seed: int) -> TinyModel:
    """Chroma Radiance (pixel space): Chroma's blocks, 16-pixel patches of a 64 x 64 RGB image -> 16 tokens.

    2 double + 2 single blocks at hidden 128; the per-patch NeRF head is cut to 2 blocks of
    width 16.  T5-only text, as for Chroma.
    """
    cfg = _detected(
        {
            "img_in_patch.weight": (3072, 3, 16, 16),
            "txt_in.weight": (3072, 4096),
            "distilled_guidance_layer.norms.0.scale": (5120,),
            "nerf_blocks.0.norm.scale": (64,),
            "nerf_final_layer_conv.norm.scale": (64,),
            **{f"double_blocks.{i}.img_attn.norm.key_norm.scale": (128,) for i in range(2)},
            **{f"single_blocks.{i}.norm.key_norm.scale": (128,) for i in range(2)},
        }
    )
    cfg.update(hidden_size=128, num_heads=2, axes_dim=[16, 24, 24], out_dim=128, hidden_dim=256, n_layers=2)
    cfg.update(nerf_hidden_size=16, nerf_depth=2)
    patcher = _via_config(cfg, seed)
    pos, neg = _conds(seed, 4096, {"pooled_output": None})
    return TinyModel("chroma_radiance", patcher, torch.zeros(1, 3, 64, 64), pos, neg, 4.0)


def _build_ltxav(seed: int) -> TinyModel:
    """LTX-2 audio+video (LTXAVModel): 2 joint blocks, video 4 heads of 32, audio 2 heads of 32.

    The latent is what LTXVConcatAVLatent makes: a nested (video, audio) pair, here a
    128-ch 2 x 4 x 4 video latent (32 tokens) and an 8-ch x 8 x 16-bin audio latent
    (8 tokens).  Text is 64-wide per stream; where the model owns the embedding
    connectors (0.33) it gets the text encoder's raw features and runs them itself once
    per run; where the text encoder owns them (0.8) it gets the two connected halves.
    """
    import comfy.ldm.lightricks.av_model as av
    import comfy.nested_tensor

    cfg = _detected(
        {
            "adaln_single.emb.timestep_embedder.linear_1.bias": (4096,),
            "audio_adaln_single.linear.weight": (12288, 2048),
            **{f"transformer_blocks.{i}.attn2.to_k.weight": (4096, 4096) for i in range(2)},
        }
    )
    cfg.update(
        num_attention_heads=4,
        attention_head_dim=32,
        cross_attention_dim=128,
        audio_num_attention_heads=2,
        audio_attention_head_dim=32,
        audio_cross_attention_dim=64,
        caption_channels=64,
    )
    connectors = hasattr(av.LTXAVModel, "preprocess_text_embeds")
    if connectors:
        cfg.update(connector_num_attention_heads=2, connector_attention_head_dim=32, connector_num_layers=1)
    patcher = _via_config(cfg, seed)
    extra: dict[str, Any] = {"frame_rate": 25}
    if connectors:
        extra["unprocessed_ltxav_embeds"] = True
    pos, neg = _conds(seed, 64 if connectors else 128, extra)
    latent = comfy.nested_tensor.NestedTensor((torch.zeros(1, 128, 2, 4, 4), torch.zeros(1, 8, 8, 16)))
    return TinyModel("ltxav", patcher, latent, pos, neg, 3.0)


def _wan_module(cls: type, **extra: Any) -> torch.nn.Module:
    """A Wan-family module at the toy size of ``_wan`` (dim 256 = 2 heads of 128, 4 blocks)."""
    kw: dict[str, Any] = dict(
        patch_size=(1, 2, 2),
        in_dim=16,
        dim=256,
        ffn_dim=512,
        freq_dim=256,
        text_dim=4096,
        out_dim=16,
        num_heads=2,
        num_layers=4,
        window_size=(-1, -1),
        qk_norm=True,
        cross_attn_norm=True,
        eps=1e-6,
        operations=_ops(),
    )
    kw.update(extra)
    return cls(**kw)


def _clip_vision(seed: int) -> Any:
    """A CLIP-vision output with random penultimate states (257 tokens of 1280), as CLIPVisionEncode gives."""
    import comfy.clip_vision

    clip = comfy.clip_vision.Output()
    clip["penultimate_hidden_states"] = torch.randn((1, 257, 1280), generator=torch.Generator().manual_seed(seed))
    return clip


def _build_wan21_camera(seed: int) -> TinyModel:
    """Wan 2.1 Fun camera control (CameraWanModel): in_dim 32 = noise + start image, CLIP vision, Plucker camera.

    ``camera_conditions`` is WanCameraEmbedding's layout: 24 channels (6 x 4 frames folded)
    per latent frame at pixel resolution, 4 x 64 x 64 for the 4 x 8 x 8 latent.
    """
    import comfy.ldm.wan.model as wan

    patcher = _via_loader(_wan_module(wan.CameraWanModel, model_type="camera", in_dim=32), seed)
    g = torch.Generator().manual_seed(seed + 7)
    image = torch.zeros(1, 16, 4, 8, 8)
    image[:, :, :1] = torch.randn((1, 16, 1, 8, 8), generator=g)
    camera = torch.randn((1, 24, 4, 64, 64), generator=g)
    extra = {"concat_latent_image": image, "camera_conditions": camera, "clip_vision_output": _clip_vision(seed + 8)}
    pos, neg = _conds(seed, 4096, extra)
    return TinyModel("wan21_camera", patcher, torch.zeros(1, 16, 4, 8, 8), pos, neg, 5.0)


def _build_wan21_humo(seed: int) -> TinyModel:
    """Wan 2.1 HuMo (1.7B layout, in_dim 16): a reference frame appended, whisper audio per latent frame.

    As WanHuMoImageToVideo builds it: ``audio_embed`` [1, 4 frames, 8, 5, 1280] (zeros in
    the negative), one reference latent frame (zeros in the negative).  The block-internal
    audio cross-attention keys on HuMo's fixed 1536-wide audio tokens.
    """
    import comfy.ldm.wan.model as wan

    patcher = _via_loader(_wan_module(wan.HumoWanModel, model_type="humo"), seed)
    g = torch.Generator().manual_seed(seed + 7)
    ref = torch.randn((1, 16, 1, 8, 8), generator=g)
    audio = torch.randn((1, 4, 8, 5, 1280), generator=g)
    out = []
    for s, a, r in ((seed + 1000, audio, ref), (seed + 2000, torch.zeros_like(audio), torch.zeros_like(ref))):
        out.append([[_text(s, 4096), {"audio_embed": a, "reference_latents": [r]}]])
    return TinyModel("wan21_humo", patcher, torch.zeros(1, 16, 4, 8, 8), out[0], out[1], 5.0)


def _build_wan22_s2v(seed: int) -> TinyModel:
    """Wan 2.2 S2V: wav2vec audio injected after blocks 0 and 4 of 5, a reference frame, a zero control video.

    ``audio_embed`` is WanSoundImageToVideo's [1, 25 layers, 1024, 4 x latent frames]
    (zeros in the negative); the audio injector's default layer list is kept, so with 5
    blocks it fires after blocks 0 and 4.
    """
    import comfy.ldm.wan.model as wan

    patcher = _via_loader(_wan_module(wan.WanModel_S2V, model_type="s2v", num_layers=5), seed)
    g = torch.Generator().manual_seed(seed + 7)
    audio = torch.randn((1, 25, 1024, 16), generator=g)
    ref = torch.randn((1, 16, 1, 8, 8), generator=g)
    control = torch.zeros(1, 16, 4, 8, 8)
    out = []
    for s, a in ((seed + 1000, audio), (seed + 2000, audio * 0.0)):
        ex = {"audio_embed": a, "reference_latents": [ref], "control_video": control}
        out.append([[_text(s, 4096), ex]])
    return TinyModel("wan22_s2v", patcher, torch.zeros(1, 16, 4, 8, 8), out[0], out[1], 5.0)


def _build_wan22_animate(seed: int) -> TinyModel:
    """Wan 2.2 Animate (AnimateWanModel): 5 blocks (detection needs the face fuser of block 0), pose latent.

    Carries what WanAnimateToVideo gives without a face video: reference image + mask
    (in_dim 36), CLIP vision and ``pose_video_latent``.  ``face_video_pixels`` is left
    out: the face motion encoder is a fixed 512 x 512 StyleGAN encoder (~40 GFLOP a frame,
    seconds per model call on 2 cores), far over the toy budget.
    """
    import comfy.ldm.wan.model_animate as animate

    patcher = _via_loader(_wan_module(animate.AnimateWanModel, model_type="animate", in_dim=36, num_layers=5), seed)
    g = torch.Generator().manual_seed(seed + 7)
    image = torch.zeros(1, 16, 4, 8, 8)
    image[:, :, :1] = torch.randn((1, 16, 1, 8, 8), generator=g)
    mask = torch.ones(1, 1, 4, 8, 8)
    mask[:, :, :1] = 0.0
    pose = torch.randn((1, 16, 4, 8, 8), generator=g)
    extra = {
        "concat_latent_image": image,
        "concat_mask": mask,
        "clip_vision_output": _clip_vision(seed + 8),
        "pose_video_latent": pose,
    }
    pos, neg = _conds(seed, 4096, extra)
    return TinyModel("wan22_animate", patcher, torch.zeros(1, 16, 4, 8, 8), pos, neg, 5.0)


def _build_hunyuan_image21(seed: int) -> TinyModel:
    """HunyuanImage 2.1 (HunyuanVideo class, 2-D patch 1): 2 double + 2 single blocks, 2 heads of 64.

    64-ch latent (32x VAE), 8 x 8 = 64 tokens; Qwen2.5-VL 3584-dim text plus the byT5
    glyph text, no pooled vector.
    """
    shapes: Shapes = {
        "txt_in.individual_token_refiner.blocks.0.norm1.weight": (3584,),
        "txt_in.input_embedder.weight": (3584, 3584),
        "img_in.proj.weight": (3584, 64, 1, 1),
        "final_layer.linear.weight": (64, 3584),
        "byt5_in.fc1.weight": (2048, 1472),
        **{f"double_blocks.{i}.img_attn_qkv.weight": (1, 1) for i in range(2)},
        **{f"single_blocks.{i}.linear1.weight": (1, 1) for i in range(2)},
    }
    cfg = _detected(shapes)
    cfg.update(hidden_size=128, num_heads=2, axes_dim=[32, 32])
    patcher = _via_config(cfg, seed)
    g = torch.Generator().manual_seed(seed + 7)
    extra = {"conditioning_byt5small": torch.randn((1, 4, 1472), generator=g), "pooled_output": None}
    pos, neg = _conds(seed, 3584, extra)
    return TinyModel("hunyuan_image21", patcher, torch.zeros(1, 64, 8, 8), pos, neg, 3.5)


def _via_config_as(detected: dict[str, Any], seed: int, **shrink: Any) -> Any:
    """Like ``_via_config``, for model_config classes that pin or match on a size.

    The class is the one ComfyUI picks for the full-size ``detected`` config (what a
    user's checkpoint gets: ZImage is Lumina2 with dim 3840), built the way ComfyUI
    builds it; ``shrink`` then goes over its ``unet_config``, after any
    ``unet_extra_config`` (Ideogram 4 pins its widths there).
    """
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher

    model_config = comfy.model_detection.model_config_from_unet_config(detected)
    if model_config is None:
        raise RuntimeError(f"no ComfyUI model_config matches {detected}")
    model_config.unet_config.update(shrink)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    _randomize(model.diffusion_model, seed)
    dev = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=dev, offload_device=dev)


def _z_image_shapes() -> Shapes:
    """Shape-only stand-in of a Z-Image checkpoint's detection keys (dim 3840, Qwen3-4B text)."""
    return {
        "cap_embedder.1.weight": (3840, 2560),
        "noise_refiner.0.attention.k_norm.weight": (128,),
        "cap_pad_token": (1, 3840),
        **{f"layers.{i}.attention.qkv.weight": (1, 1) for i in range(2)},
    }


def _build_z_image(seed: int) -> TinyModel:
    """Z-Image (ZImage config, NextDiT): dim 256 (2 heads of 128, the real RoPE axes), 1+1 refiners + 2 layers.

    256 is the least width: the layers' modulation reads the 256-wide time embedding.
    Qwen3-4B 2560-dim text; tokens padded to multiples of 32 as in the real model;
    16-ch Flux latent, 64 tokens.
    """
    cfg = _detected(_z_image_shapes())
    shrink = dict(dim=256, n_heads=2, n_kv_heads=2, n_refiner_layers=1, multiple_of=16)
    patcher = _via_config_as(cfg, seed, **shrink)
    pos, neg = _conds(seed, 2560, {"attention_mask": torch.ones(1, TEXT_TOKENS, dtype=torch.long)})
    return TinyModel("z_image", patcher, torch.zeros(1, 16, 16, 16), pos, neg, 4.0)


def _build_joyimage(seed: int) -> TinyModel:
    """JoyImage edit (JoyImageTransformer3DModel): 2 double-stream blocks, 2 heads of 128 (the config's RoPE).

    Wan 16-ch latent 1 x 16 x 16 (64 tokens) plus one 8 x 8 reference latent appended as
    image tokens, as the JoyImage encode node gives; Qwen3-VL 4096-dim text.
    """
    import comfy.ldm.joyimage.model as joy

    module = joy.JoyImageTransformer3DModel(
        in_channels=16,
        hidden_size=256,
        num_attention_heads=2,
        text_dim=4096,
        num_layers=2,
        rope_dim_list=[16, 56, 56],
        theta=10000,
        operations=_ops(),
    )
    patcher = _via_loader(module, seed)
    ref = torch.randn((1, 16, 1, 8, 8), generator=torch.Generator().manual_seed(seed + 7))
    pos, neg = _conds(seed, 4096, {"reference_latents": [ref]})
    return TinyModel("joyimage", patcher, torch.zeros(1, 16, 1, 16, 16), pos, neg, 4.0)


def _build_mageflow(seed: int) -> TinyModel:
    """Mage-Flow: 3 Qwen-Image-style MMDiT blocks, 2 heads of 64, Flux.2 128-ch latent (patch 1, 64 tokens).

    Qwen3-VL-4B 2560-dim text.
    """
    cfg = _detected(
        {
            "txt_norm.weight": (2560,),
            "proj_out.weight": (128, 3072),
            **{f"transformer_blocks.{i}.attn.to_q.weight": (3072, 3072) for i in range(3)},
        }
    )
    cfg.update(num_attention_heads=2, attention_head_dim=64, axes_dims_rope=(16, 24, 24))
    patcher = _via_config(cfg, seed)
    pos, neg = _conds(seed, 2560)
    return TinyModel("mageflow", patcher, torch.zeros(1, 128, 8, 8), pos, neg, 4.0)


def _build_lens(seed: int) -> TinyModel:
    """Microsoft Lens: 2 dual-stream blocks, 2 heads of 64, Flux.2 128-ch latent (64 tokens).

    Text is 4 GPT-OSS layers of 2880 stacked along the features (11520 wide) with their
    attention mask, as the Lens text encoder gives it.
    """
    import comfy.ldm.lens.model as lens

    module = lens.LensTransformer2DModel(num_layers=2, num_attention_heads=2, operations=_ops())
    patcher = _via_loader(module, seed)
    pos, neg = _conds(seed, 4 * 2880, {"attention_mask": torch.ones(1, TEXT_TOKENS, dtype=torch.long)})
    return TinyModel("lens", patcher, torch.zeros(1, 128, 8, 8), pos, neg, 4.0)


def _build_longcat_image(seed: int) -> TinyModel:
    """LongCat-Image (the Flux class, LongCatImage config): 2 double + 2 single blocks, hidden 128.

    No guidance embedding and no pooled vector; Qwen2.5-VL 3584-dim text on 2-D text RoPE ids.
    """
    cfg = _detected(
        {
            "img_in.weight": (3072, 64),
            "txt_in.weight": (3072, 3584),
            **{f"double_blocks.{i}.img_attn.norm.key_norm.scale": (128,) for i in range(2)},
            **{f"single_blocks.{i}.norm.key_norm.scale": (128,) for i in range(2)},
        }
    )
    cfg.update(hidden_size=128, num_heads=2, axes_dim=[16, 24, 24])
    patcher = _via_config(cfg, seed)
    pos, neg = _conds(seed, 3584)
    return TinyModel("longcat_image", patcher, torch.zeros(1, 16, 16, 16), pos, neg, 4.0)


def _build_minimax_h3(seed: int) -> TinyModel:
    """MiniMax H3 audio+video: 2 single-stream blocks on one packed [seq, hidden] sequence, 2 heads of 128.

    The latent is EmptyMiniMaxH3LatentAV's nested (video, audio) pair: 24-ch 2 x 8 x 8 video
    (32 tokens after the 2x2 patch) and 32-ch x 2 x 8 audio; Qwen3-VL-32B 5120-dim text,
    refined once per run by the model's 1-block token refiner.  The model runs batch 1,
    so cond and uncond go through it one at a time.
    """
    import comfy.ldm.minimax.model as minimax
    import comfy.nested_tensor

    module = minimax.MiniMaxH3Model(
        hidden_size=256,
        num_layers=2,
        token_refiner_num_layers=1,
        num_attention_heads=2,
        attention_head_dim=128,
        ffn_hidden_size=512,
        text_dim=5120,
        time_embed_hidden_size=256,
        time_embed_dim=128,
        operations=_ops(),
    )
    patcher = _via_loader(module, seed)
    pos, neg = _conds(seed, 5120)
    latent = comfy.nested_tensor.NestedTensor((torch.zeros(1, 24, 2, 8, 8), torch.zeros(1, 32, 2, 8)))
    return TinyModel("minimax_h3", patcher, latent, pos, neg, 4.0)


def _build_hidream_o1(seed: int) -> TinyModel:
    """HiDream-O1 (pixel space): its Qwen3-VL decoder cut to 2 layers of width 128 (2 heads of 128, real MRoPE).

    A 128 x 128 RGB image in 32-pixel patches (16 tokens) joins the prompt in one sequence.
    The "text encoder" only tokenizes, so the conditioning is the chat-templated token ids
    (random prompt words) with their float surrogate, as HiDreamO1TE gives it.  The vision
    tower (used for reference images only) is shrunk to 1 block.
    """
    import comfy.text_encoders.hidream_o1 as te

    cfg = _detected({"t_embedder1.mlp.0.weight": (4096, 256), "x_embedder.proj1.weight": (1024, 3072)})
    cfg["text_config_overrides"] = dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=128,
    )
    cfg["vision_config_overrides"] = dict(
        hidden_size=64,
        num_heads=2,
        intermediate_size=128,
        depth=1,
        num_position_embeddings=64,
        deepstack_visual_indexes=(),
    )
    patcher = _via_config(cfg, seed)
    head = [te.IM_START_ID, te.USER_ID, te.NEWLINE_ID]
    tail = [
        te.IM_END_ID,
        te.NEWLINE_ID,
        te.IM_START_ID,
        te.ASSISTANT_ID,
        te.NEWLINE_ID,
        te.BOI_TOKEN_ID,
        te.TMS_TOKEN_ID,
    ]
    out = []
    for s in (seed + 1000, seed + 2000):
        words = torch.randint(1000, 100000, (TEXT_TOKENS,), generator=torch.Generator().manual_seed(s)).tolist()
        ids = torch.tensor([head + words + tail], dtype=torch.long)
        out.append([[ids.unsqueeze(-1).float(), {"text_input_ids": ids}]])
    return TinyModel("hidream_o1", patcher, torch.zeros(1, 3, 128, 128), out[0], out[1], 4.0)


def _build_krea2(seed: int) -> TinyModel:
    """Krea 2 (SingleStreamDiT): 2 single-stream blocks of 2 heads of 128 over [text, image] tokens.

    Text is 4 hidden layers of a 128-wide stand-in for Qwen3-VL-4B, stacked along the
    features (512 wide): the model's text-fusion transformer works at the encoder's width
    (2560 would be ~400M parameters), so its width is shrunk with it.  Wan 16-ch latent,
    1 x 16 x 16 -> 64 image tokens.
    """
    cfg = _detected(
        {
            "txtfusion.projector.weight": (1, 12),
            "txtfusion.layerwise_blocks.0.prenorm.scale": (2560,),
            "first.weight": (6144, 64),
            "blocks.0.attn.wq.weight": (6144, 6144),
            "blocks.0.attn.wk.weight": (1536, 6144),
            "blocks.1.attn.wq.weight": (6144, 6144),
        }
    )
    cfg.update(features=256, heads=2, kvheads=1, txtlayers=4, txtdim=128, txtheads=2, txtkvheads=2)
    patcher = _via_config(cfg, seed)
    pos, neg = _conds(seed, 4 * 128)
    return TinyModel("krea2", patcher, torch.zeros(1, 16, 1, 16, 16), pos, neg, 4.0)


def _build_ideogram4(seed: int) -> TinyModel:
    """Ideogram 4: 2 single-stream layers of 2 heads of 128 (real MRoPE) over [text, image] tokens.

    Flux.2 128-ch latent (64 tokens).  The text is stacked LLM layers: 4 x 128 wide here
    (53248 in the real model, which would dominate the toy), with its attention mask.
    """
    cfg = _detected(
        {
            "embed_image_indicator.weight": (2, 4608),
            "input_proj.weight": (4608, 128),
            **{f"layers.{i}.attn.qkv.weight": (1, 1) for i in range(2)},
        }
    )
    shrink = dict(
        num_attention_heads=2, attention_head_dim=128, intermediate_size=256, adaln_dim=64, llm_features_dim=512
    )
    patcher = _via_config_as(cfg, seed, **shrink)
    pos, neg = _conds(seed, 512, {"attention_mask": torch.ones(1, TEXT_TOKENS, dtype=torch.long)})
    return TinyModel("ideogram4", patcher, torch.zeros(1, 128, 8, 8), pos, neg, 4.0)


def _build_cogvideox(seed: int) -> TinyModel:
    """CogVideoX 1.0 5B layout (RoPE, no learned positions): 2 blocks, 2 heads of 64, T5 text.

    16-ch latent 2 x 8 x 8 -> 32 tokens (patch 2), v-prediction on a DDPM schedule.
    """
    import comfy.ldm.cogvideo.model as cog

    module = cog.CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=64,
        time_embed_dim=64,
        num_layers=2,
        use_rotary_positional_embeddings=True,
        operations=_ops(),
    )
    patcher = _via_loader(module, seed)
    pos, neg = _conds(seed, 4096)
    return TinyModel("cogvideox", patcher, torch.zeros(1, 16, 2, 8, 8), pos, neg, 6.0)


def _build_pixeldit(seed: int) -> TinyModel:
    """PixelDiT T2I (pixel space): 2 MMDiT patch blocks (hidden 128, 2 heads) then 1 per-pixel block.

    A 64 x 64 RGB image: 16-pixel patches give 16 patch tokens, the pixel block works on
    all 4096 pixels at width 16; Gemma-2-2B 2304-dim text.
    """
    cfg = _detected({"core.pixel_embedder.proj.weight": (16, 3)})
    cfg.update(
        hidden_size=128,
        num_groups=2,
        pixel_hidden_size=16,
        pixel_attn_hidden_size=64,
        pixel_num_groups=2,
        patch_depth=2,
        pixel_depth=1,
    )
    patcher = _via_config(cfg, seed)
    pos, neg = _conds(seed, 2304)
    return TinyModel("pixeldit", patcher, torch.zeros(1, 3, 64, 64), pos, neg, 4.0)


def _build_anima(seed: int) -> TinyModel:
    """Anima (MiniTrainDIT + LLM adapter): 2 blocks, 128 channels (2 heads), Wan 16-ch latent 1 x 16 x 16.

    The text is what the DiT gets in a ComfyUI run: the LLM adapter's 512 tokens of 1024
    (under inference mode model_base runs the adapter once, on Qwen3-0.6B states and T5
    ids, and drops the ids; given the ids outside inference mode it would rerun the
    ~135M-parameter adapter on every step).  The adapter's fixed size dominates the build.
    """
    cfg = _detected(
        {
            "blocks.0.mlp.layer1.weight": (1, 1),
            "blocks.1.mlp.layer1.weight": (1, 1),
            "llm_adapter.blocks.0.cross_attn.q_proj.weight": (1024, 1024),
            "x_embedder.proj.1.weight": (2048, 68),
        }
    )
    cfg.update(model_channels=128, num_heads=2, adaln_lora_dim=32)
    patcher = _via_config(cfg, seed)
    pos, neg = _conds(seed, 1024, tokens=512)
    return TinyModel("anima", patcher, torch.zeros(1, 16, 1, 16, 16), pos, neg, 4.0)


def _build_wan_scail(seed: int) -> TinyModel:
    """Wan SCAIL (SCAILWanModel): in_dim 20, a reference frame in front, half-resolution pose tokens behind.

    What WanSCAILToVideo gives in animation mode: ``reference_latents`` (1 frame),
    ``pose_video_latent`` (4 x 4 x 4, half the 8 x 8 latent), CLIP vision, ref_mask_flag.
    """
    import comfy.ldm.wan.model as wan

    patcher = _via_loader(_wan_module(wan.SCAILWanModel, model_type="scail", in_dim=20), seed)
    g = torch.Generator().manual_seed(seed + 7)
    extra = {
        "ref_mask_flag": True,
        "reference_latents": [torch.randn((1, 16, 1, 8, 8), generator=g)],
        "pose_video_latent": torch.randn((1, 16, 4, 4, 4), generator=g),
        "clip_vision_output": _clip_vision(seed + 8),
    }
    pos, neg = _conds(seed, 4096, extra)
    return TinyModel("wan_scail", patcher, torch.zeros(1, 16, 4, 8, 8), pos, neg, 5.0)


def _wan_config(in_dim: int, model_type: str, **extra: Any) -> dict[str, Any]:
    """Wan 14B i2v detection output, shrunk to the ``_wan`` toy size and given ``model_type``.

    For the Wan variants that the checkpoint shapes do not identify (Animate 2 is told
    apart by the file's metadata config).
    """
    cfg = _detected(
        {
            "head.modulation": (1, 2, 5120),
            "head.head.weight": (64, 5120),
            "blocks.0.ffn.0.weight": (13824, 5120),
            "patch_embedding.weight": (5120, in_dim, 1, 2, 2),
            "img_emb.proj.0.bias": (1280,),
        }
    )
    cfg.update(model_type=model_type, dim=256, ffn_dim=512, num_heads=2, num_layers=4)
    cfg.update(extra)
    return cfg


def _build_wan_animate2(seed: int) -> TinyModel:
    """Wan Animate 2 (WanAnimate2Model): frame 0 is the reference slot, a pose branch feeds k/v to every block.

    What WanAnimate2ToVideo gives: a 1 + 3 frame latent (8 x 8), reference + grey video as
    ``concat_latent_image`` with its mask (in_dim 36), CLIP vision, and the pose values
    (``pose_video_latent`` for the 3 generated frames, pose CLIP, the prompt as
    ``cross_attn_pose``), on the negative too.
    """
    patcher = _via_config(_wan_config(36, "animate2"), seed)
    g = torch.Generator().manual_seed(seed + 7)
    image = torch.randn((1, 16, 4, 8, 8), generator=g)
    mask = torch.ones(1, 1, 4, 8, 8)
    mask[:, :, :1] = 0.0
    clip = _clip_vision(seed + 8)
    pose = torch.randn((1, 16, 3, 8, 8), generator=g)
    pos_text = _text(seed + 1000, 4096)
    out = []
    for text in (pos_text, _text(seed + 2000, 4096)):
        ex = {
            "concat_latent_image": image,
            "concat_mask": mask,
            "clip_vision_output": clip,
            "pose_video_latent": pose,
            "clip_vision_output_pose": clip,
            "cross_attn_pose": pos_text,
        }
        out.append([[text, ex]])
    return TinyModel("wan_animate2", patcher, torch.zeros(1, 16, 4, 8, 8), out[0], out[1], 5.0)


def _build_wan_dancer(seed: int) -> TinyModel:
    """WanDancer (WanDancerModel): 5 blocks, music injected after blocks 0 and 4, in_dim 36 i2v.

    What WanDancerVideo gives: start image + mask, CLIP vision for the frame and the
    reference image, and WanDancerEncodeAudio's 35 music features per video frame
    (13 frames at 30 fps, so the main patch embedding and head are used).
    """
    import comfy.ldm.wan.model_wandancer as dancer

    patcher = _via_loader(_wan_module(dancer.WanDancerModel, model_type="wandancer", in_dim=36, num_layers=5), seed)
    g = torch.Generator().manual_seed(seed + 7)
    image = torch.zeros(1, 16, 4, 8, 8)
    image[:, :, :1] = torch.randn((1, 16, 1, 8, 8), generator=g)
    mask = torch.ones(1, 1, 4, 8, 8)
    mask[:, :, :1] = 0.0
    extra = {
        "concat_latent_image": image,
        "concat_mask": mask,
        "clip_vision_output": _clip_vision(seed + 8),
        "clip_vision_output_ref": _clip_vision(seed + 9),
        "audio_embed": torch.randn((1, 13, 35), generator=g),
        "fps": 30.0,
        "audio_inject_scale": 1.0,
    }
    pos, neg = _conds(seed, 4096, extra)
    return TinyModel("wan_dancer", patcher, torch.zeros(1, 16, 4, 8, 8), pos, neg, 5.0)


def _build_z_image_pixel(seed: int) -> TinyModel:
    """Z-Image pixel space (ZImagePixelSpace, NextDiTPixelSpace): the z_image toy with a per-patch MLP decoder.

    A 64 x 64 RGB image in 16-pixel patches (16 tokens); the pixel decoder is cut to
    width 64 and 1 residual block.  Qwen3-4B 2560-dim text with its mask.
    """
    cfg = _detected(
        {
            **_z_image_shapes(),
            "x_embedder.weight": (3840, 768),
            "dec_net.cond_embed.weight": (3840, 3840),
            "dec_net.final_layer.linear.weight": (768, 3840),
            "dec_net.input_embedder.embedder.0.weight": (3840, 768 + 64),
            "dec_net.res_blocks.0.norm.weight": (3840,),
        }
    )
    shrink = dict(dim=256, n_heads=2, n_kv_heads=2, n_refiner_layers=1, multiple_of=16, decoder_hidden_size=64)
    patcher = _via_config_as(cfg, seed, **shrink)
    pos, neg = _conds(seed, 2560, {"attention_mask": torch.ones(1, TEXT_TOKENS, dtype=torch.long)})
    return TinyModel("z_image_pixel", patcher, torch.zeros(1, 3, 64, 64), pos, neg, 4.0)


# ------------------------------------------------------------------ index --

_BUILDERS: dict[str, tuple[Callable[[int], TinyModel], Callable[[], bool]]] = {
    "wan21_t2v": (_build_wan21_t2v, lambda: _has("comfy.ldm.wan.model", "WanModel")),
    "wan21_i2v": (_build_wan21_i2v, lambda: _has("comfy.ldm.wan.model", "WanModel")),
    "wan21_vace": (_build_wan21_vace, lambda: _has("comfy.ldm.wan.model", "VaceWanModel")),
    "wan22_ti2v_5b": (_build_wan22_ti2v_5b, lambda: _has("comfy.supported_models", "WAN22_T2V")),
    "hunyuan_video": (_build_hunyuan_video, lambda: _has("comfy.ldm.hunyuan_video.model", "HunyuanVideo")),
    "hunyuan_video15": (_build_hunyuan_video15, lambda: _has("comfy.supported_models", "HunyuanVideo15")),
    "flux": (_build_flux, lambda: _has("comfy.ldm.flux.model", "Flux")),
    "flux_kontext": (_build_flux_kontext, lambda: _has("comfy.ldm.flux.model", "Flux")),
    "chroma": (_build_chroma, lambda: _has("comfy.ldm.chroma.model", "Chroma")),
    "qwen_image": (_build_qwen_image, lambda: _has("comfy.ldm.qwen_image.model")),
    "ltxv": (_build_ltxv, lambda: _has("comfy.ldm.lightricks.model", "LTXVModel")),
    "mochi": (_build_mochi, lambda: _has("comfy.ldm.genmo.joint_model.asymm_models_joint")),
    "sd3": (_build_sd3, lambda: _has("comfy.ldm.modules.diffusionmodules.mmdit", "MMDiT")),
    "auraflow": (_build_auraflow, lambda: _has("comfy.ldm.aura.mmdit", "MMDiT")),
    "hunyuan_dit": (_build_hunyuan_dit, lambda: _has("comfy.ldm.hydit.models", "HunYuanDiT")),
    "kandinsky5": (_build_kandinsky5, lambda: _has("comfy.ldm.kandinsky5.model", "Kandinsky5")),
    "lumina2": (_build_lumina2, lambda: _has("comfy.ldm.lumina.model", "NextDiT")),
    "hidream": (_build_hidream, lambda: _has("comfy.ldm.hidream.model")),
    "cosmos": (_build_cosmos, lambda: _has("comfy.ldm.cosmos.predict2", "MiniTrainDIT")),
    "flux2": (_build_flux2, lambda: _has("comfy.supported_models", "Flux2")),
    "chroma_radiance": (_build_chroma_radiance, lambda: _has("comfy.ldm.chroma_radiance.model", "ChromaRadiance")),
    "ltxav": (_build_ltxav, lambda: _has("comfy.ldm.lightricks.av_model", "LTXAVModel")),
    "wan21_camera": (_build_wan21_camera, lambda: _has("comfy.ldm.wan.model", "CameraWanModel")),
    "wan21_humo": (_build_wan21_humo, lambda: _has("comfy.ldm.wan.model", "HumoWanModel")),
    "wan22_s2v": (_build_wan22_s2v, lambda: _has("comfy.ldm.wan.model", "WanModel_S2V")),
    "wan22_animate": (_build_wan22_animate, lambda: _has("comfy.ldm.wan.model_animate", "AnimateWanModel")),
    "hunyuan_image21": (_build_hunyuan_image21, lambda: _has("comfy.supported_models", "HunyuanImage21")),
    "z_image": (_build_z_image, lambda: _has("comfy.supported_models", "ZImage")),
    "joyimage": (_build_joyimage, lambda: _has("comfy.ldm.joyimage.model", "JoyImageTransformer3DModel")),
    "mageflow": (_build_mageflow, lambda: _has("comfy.ldm.mage_flow.model", "MageFlowTransformer2DModel")),
    "lens": (_build_lens, lambda: _has("comfy.ldm.lens.model", "LensTransformer2DModel")),
    "longcat_image": (_build_longcat_image, lambda: _has("comfy.supported_models", "LongCatImage")),
    "minimax_h3": (_build_minimax_h3, lambda: _has("comfy.ldm.minimax.model", "MiniMaxH3Model")),
    "hidream_o1": (_build_hidream_o1, lambda: _has("comfy.ldm.hidream_o1.model", "HiDreamO1Transformer")),
    "krea2": (_build_krea2, lambda: _has("comfy.ldm.krea2.model", "SingleStreamDiT")),
    "ideogram4": (_build_ideogram4, lambda: _has("comfy.ldm.ideogram4.model", "Ideogram4Transformer2DModel")),
    "cogvideox": (_build_cogvideox, lambda: _has("comfy.ldm.cogvideo.model", "CogVideoXTransformer3DModel")),
    "pixeldit": (_build_pixeldit, lambda: _has("comfy.ldm.pixeldit.model", "PixDiT_T2I")),
    "anima": (_build_anima, lambda: _has("comfy.ldm.anima.model", "Anima")),
    "wan_scail": (_build_wan_scail, lambda: _has("comfy.ldm.wan.model", "SCAILWanModel")),
    "wan_animate2": (_build_wan_animate2, lambda: _has("comfy.ldm.wan.model_animate2", "WanAnimate2Model")),
    "wan_dancer": (_build_wan_dancer, lambda: _has("comfy.ldm.wan.model_wandancer", "WanDancerModel")),
    "z_image_pixel": (_build_z_image_pixel, lambda: _has("comfy.supported_models", "ZImagePixelSpace")),
}

ALL_FAMILIES: tuple[str, ...] = tuple(_BUILDERS)

# Declared for type checkers; the value comes from the module ``__getattr__``
# below, so it reflects the ComfyUI imported by the time it is read.
FAMILIES: tuple[str, ...]


def available_families() -> tuple[str, ...]:
    """The families the running ComfyUI can build (ComfyUI must be importable)."""
    return tuple(f for f, (_, ok) in _BUILDERS.items() if ok())


def __getattr__(name: str) -> Any:
    """``FAMILIES`` is computed on first use, after ComfyUI has been imported."""
    if name == "FAMILIES":
        return available_families()
    raise AttributeError(name)


def build(family: str, seed: int = 0) -> TinyModel:
    """Build the tiny ``family`` model with weights drawn from ``seed``."""
    if family not in _BUILDERS:
        raise KeyError(f"unknown family {family!r}; known: {', '.join(ALL_FAMILIES)}")
    make, ok = _BUILDERS[family]
    if not ok():
        raise KeyError(f"{family!r} is not available in this ComfyUI version")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return make(seed)
