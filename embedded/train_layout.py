"""Train the layout testbed: a tiny HunyuanVideo image model whose prompts place coloured shapes.

Why: the first embedded model (``train.py``, moving digits) cannot show what a
skipped early step costs on a real image model, where the first steps set the
layout. This one is trained on ``scenes.py``'s pictures: the prompt names up
to two objects (shape and colour) and the background, the noise picks where
each object goes and the stripes, so a wrong early step moves or loses objects.

Why HunyuanVideo: it is the Flux-style family (double-stream blocks, then
single-stream blocks) whose size ComfyUI's loader reads from the weights on
every supported host (0.3.64 hard-codes Flux's and Qwen-Image's full widths),
and a single-frame HunyuanVideo is an image model. The file is recognised by
the stock ``UNETLoader`` as ``HunyuanVideo``.

What it trains, and why:

* ``HunyuanVideo`` at hidden 256 (2 heads of 128: detection reads
  ``num_heads = hidden // 128``), 2 double-stream + 2 single-stream blocks,
  MLP ratio 4, a 2-block token refiner on 4096-wide text, no guidance
  embedding. Prompts are dropped to the empty prompt 10% of the time, so it
  samples at cfg 1 (the conditional model alone) and at cfg > 1 with the empty
  prompt as the negative. Guidance distillation (Flux dev's cfg-1 guidance
  input) needs a teacher and was not done.
* Rectified flow as ComfyUI samples HunyuanVideo: ``x_s = (1 - s) x0 + s n``,
  target ``n - x0`` at timestep ``1000 s``, noise levels ``s = shift(u)`` with
  HunyuanVideo's shift 7.0, so every ``simple``-scheduler step is trained on
  equally often.
* AdamW, warm-up then constant rate, EMA weights saved in float16 (as
  ``train.py``, whose helpers this script uses).

Usage::

    python embedded/train_layout.py                 # the shipped file (see its metadata for steps and time)
    python embedded/train_layout.py --resume        # continue after an interruption
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: find ComfyUI and register the pack first
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _bootstrap

    _bootstrap.boot()

from comfyui_magcache.embedded import scenes as sc
from comfyui_magcache.embedded.train import _rope_with_backward, fit, init_weights, shift_sigma

WORK_DIR = Path.home() / ".cache" / "comfyui-magcache" / "embedded-train-layout"
ARCH: dict[str, Any] = {"hidden_size": 256, "depth": 2, "depth_single_blocks": 2, "mlp_ratio": 4.0}
SHIFT = 7.0
P_EMPTY = 0.1
#: HunyuanVideo's output projections, zero at the start so each block starts as the identity.
OUTPUTS = ("img_attn.proj.weight", "txt_attn.proj.weight", "img_mlp.2.weight", "txt_mlp.2.weight",
           "linear2.weight", "final_layer.linear.weight")


def build_model() -> torch.nn.Module:
    """ComfyUI's own HunyuanVideo module at the testbed's size (weights filled by ``init_weights``)."""
    import comfy.ldm.hunyuan_video.model as hv
    import comfy.ops

    kw: dict[str, Any] = dict(
        image_model="hunyuan_video", in_channels=sc.CHANNELS, out_channels=sc.CHANNELS, vec_in_dim=sc.POOLED_DIM,
        context_in_dim=sc.TEXT_DIM, num_heads=ARCH["hidden_size"] // 128, axes_dim=[16, 56, 56], theta=256,
        patch_size=[1, 2, 2], qkv_bias=True, guidance_embed=False, **ARCH,
    )
    # Fields later ComfyUI versions added, at the values detection gives a plain HunyuanVideo file.
    fields = getattr(hv.HunyuanVideoParams, "__dataclass_fields__", {})
    for name, default in (("byt5", False), ("meanflow", False), ("use_cond_type_embedding", False),
                          ("vision_in_dim", None), ("meanflow_sum", False)):
        if name in fields:
            kw[name] = default
    return hv.HunyuanVideo(**kw, operations=comfy.ops.disable_weight_init).float()


@contextlib.contextmanager
def trainable_rope() -> Iterator[None]:
    """Use a rope with a backward while training (the ``comfy_kitchen`` kernel of 0.8+ has none)."""
    import comfy.ldm.flux.math as fm

    original = fm.apply_rope

    def both(xq: torch.Tensor, xk: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _rope_with_backward(xq, freqs), _rope_with_backward(xk, freqs)

    fm.apply_rope = both
    try:
        yield
    finally:
        fm.apply_rope = original


def make_batch(codec: sc.SceneCodec, batch: int, seed: int, step: int) -> dict[str, torch.Tensor]:
    """One training batch, a pure function of ``(seed, step)``."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    scenes = sc.random_scenes(batch, gen)
    images, _ = sc.render(scenes, gen)
    x0 = codec.encode(images)
    context = codec.conditioning(scenes)
    empty = torch.rand(batch, generator=gen) < P_EMPTY
    context[empty] = codec.conditioning(None, int(empty.sum()))
    u = (torch.arange(batch) + torch.rand(batch, generator=gen)) / batch
    u = u[torch.randperm(batch, generator=gen)]
    sigma = shift_sigma(u, SHIFT)
    noise = torch.randn(x0.shape, generator=gen)
    s = sigma.view(-1, 1, 1, 1, 1)
    return {"x": (1.0 - s) * x0 + s * noise, "timestep": sigma * 1000.0, "context": context,
            "y": codec.pooled(batch), "target": noise - x0}


@contextlib.contextmanager
def training() -> Iterator[None]:
    """The training context: a rope with a backward, and copies of what autograd saves.

    HunyuanVideo's blocks add their outputs in place (``img += ...``) onto tensors autograd saved;
    saving copies lets the stock forward be differentiated unchanged.
    """
    with trainable_rope(), torch.autograd.graph.saved_tensors_hooks(torch.Tensor.clone, lambda t: t):
        yield


def train(args: argparse.Namespace) -> None:
    import comfy.supported_models

    shift = comfy.supported_models.HunyuanVideo.sampling_settings["shift"]
    if shift != SHIFT:
        raise SystemExit(f"ComfyUI samples HunyuanVideo with shift {shift}, this script trains with {SHIFT}")
    torch.set_num_threads(args.threads)
    codec = sc.fit_codec(torch.Generator().manual_seed(args.seed))
    model = build_model()
    init_weights(model, torch.Generator().manual_seed(args.seed + 1), OUTPUTS)
    codec.save(args.codec_out, {"seed": args.seed})
    describe = {
        "arch": ARCH, "shift": SHIFT, "p_empty": P_EMPTY,
        "data": {"canvas": sc.CANVAS, "patch": sc.PATCH, "shapes": sc.SHAPES, "colours": list(sc.COLOURS),
                 "radius": sc.RADIUS, "jitter": sc.JITTER, "placed_by": "noise"},
    }
    fit(model, args, lambda step: make_batch(codec, args.batch, args.seed, step),
        lambda m, b: m(b["x"], b["timestep"], b["context"], y=b["y"]), describe, "tiny HunyuanVideo", training)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--out", default=str(sc.MODEL_FILE))
    p.add_argument("--codec-out", default=str(sc.CODEC_FILE))
    p.add_argument("--work-dir", default=str(WORK_DIR))
    return p.parse_args(argv)


if __name__ == "__main__":
    train(parse_args())
