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
