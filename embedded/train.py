"""Train the embedded default: a tiny Wan 2.1 text-to-video model of moving digits.

Why: a caching method can only be judged on a trained model; the magnitude
law and the quality cost of a skip do not show on random weights. Real Wan
weights cannot be fetched on every machine, so the pack ships its own small
model of ComfyUI's own Wan 2.1 architecture, trained here from data this
script draws itself (see ``codec.py``).

What it trains, and why each choice:

* ComfyUI's ``WanModel`` at dim 256 (ComfyUI's detection reads
  ``num_heads = dim // 128``, so 2 heads), 4 blocks, FFN 1024, 16 latent
  channels, text width 4096: the saved file is recognised by the stock
  ``UNETLoader`` / ``load_diffusion_model`` as ``WAN21_T2V``.
* The objective ComfyUI samples Wan with: rectified flow, ``x_s = (1 - s) x0 +
  s n``, the model predicting ``n - x0`` at timestep ``1000 s`` (ComfyUI's
  ``CONST`` parametrisation: ``denoised = x - s * output``). Noise levels are
  drawn as ``s = shift(u)`` with ``u`` uniform and Wan's shift 8.0, which is
  exactly how the ``simple`` scheduler spaces its steps, so every sampling
  step is trained on equally often.
* Prompts are dropped to the empty prompt 10% of the time, so classifier-free
  guidance works with the empty prompt as the negative.
* AdamW with warm-up, then a constant rate; an exponential moving average of the
  weights is what gets saved (much cleaner samples than the raw weights).

Reproducible: every batch is drawn from a generator seeded by
``(seed, step)``, so a run resumed from a checkpoint continues exactly as an
uninterrupted one would (same torch version, same thread count).

Usage (from anywhere; the pack root must not be the working directory's
``sys.path`` entry, which running the file directly guarantees)::

    python embedded/train.py            # 6000 steps: the shipped file, about 80 minutes on 2 cores
    python embedded/train.py --resume   # continue after an interruption

The shipped ``tiny_wan_digits.safetensors`` is the default run (6000 steps of
32 clips, seed 0, 2 threads, torch 2.9.1). The learning rate does not depend
on ``--steps``, so ``preview_N.safetensors`` of a longer run equals a run of
``--steps N``. What 6000 steps give: every digit drawn recognisably, but each
frame placed on its own, so the digit does not yet glide as prompted; the
magnitude curve and the quality figures are measured on exactly this model.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: find ComfyUI and register the pack first
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _bootstrap

    _bootstrap.boot()

from comfyui_magcache.embedded import codec as cdc
from comfyui_magcache.embedded.codec import CODEC_FILE, MODEL_FILE

WORK_DIR = Path.home() / ".cache" / "comfyui-magcache" / "embedded-train"

#: The architecture. Everything not listed is what ComfyUI's detection assumes for Wan 2.1.
ARCH: dict[str, Any] = {"dim": 256, "num_layers": 4, "ffn_dim": 1024}
#: Wan 2.1's sampling shift in ComfyUI (checked against ``comfy.supported_models`` at start).
SHIFT = 8.0
P_EMPTY = 0.1


def build_model() -> torch.nn.Module:
    """ComfyUI's own Wan 2.1 T2V module at the embedded size, weights initialised here.

    ComfyUI builds its layers with ``disable_weight_init`` (bare ``torch.empty``),
    so every parameter is filled by :func:`init_weights`.
    """
    import comfy.ldm.wan.model as wan
    import comfy.ops

    dim = ARCH["dim"]
    model = wan.WanModel(
        model_type="t2v", patch_size=(1, 2, 2), in_dim=cdc.CHANNELS, dim=dim, ffn_dim=ARCH["ffn_dim"], freq_dim=256,
        text_dim=cdc.TEXT_DIM, out_dim=cdc.CHANNELS, num_heads=dim // 128, num_layers=ARCH["num_layers"],
        window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6, operations=comfy.ops.disable_weight_init,
    )
    return model.float()


#: Wan's output projections (attention ``o``, the FFN's second layer, the head): zero at the start.
WAN_OUTPUTS = ("self_attn.o.weight", "cross_attn.o.weight", "ffn.2.weight", "head.head.weight")


def init_weights(model: torch.nn.Module, gen: torch.Generator, outputs: tuple[str, ...] = WAN_OUTPUTS) -> None:
    """Fan-in scaled normal weights; every block's output projections (names ending in ``outputs``) start at zero.

    Zeroed output projections (attention ``o``, FFN's second layer, the head)
    make each block start as the identity, the usual way to keep a fresh
    transformer stable; the per-block ``modulation`` tables get small random
    values as Wan's reference initialisation gives them.
    """
    dim = ARCH["dim"]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("modulation"):
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(dim))
            elif p.ndim >= 2:
                zero = name.endswith(outputs)
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.zeros(p.shape) if zero else torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()


def _rope_with_backward(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in plain torch ops, so autograd can differentiate it.

    ``freqs`` holds a 2x2 rotation matrix per channel pair (``[..., pairs, 2, 2]``);
    each pair of ``x`` is multiplied by its matrix.
    """
    pairs = x.to(freqs.dtype).reshape(*x.shape[:-1], -1, 2, 1)
    return torch.matmul(freqs, pairs).reshape(x.shape).type_as(x)


@contextlib.contextmanager
def trainable_rope() -> Iterator[None]:
    """Swap ComfyUI's rope kernel for :func:`_rope_with_backward` while training.

    The ``comfy_kitchen`` kernel that ComfyUI 0.8 uses has no backward. The
    swap is undone on exit; sampling later runs ComfyUI's own kernel, which
    computes the same rotation.
    """
    import comfy.ldm.wan.model as wan

    original = wan.apply_rope1
    wan.apply_rope1 = _rope_with_backward
    try:
        yield
    finally:
        wan.apply_rope1 = original


def shift_sigma(u: torch.Tensor, shift: float = SHIFT) -> torch.Tensor:
    """ComfyUI's flow time shift: the sigma at schedule position ``u`` (1 = pure noise)."""
    return shift * u / (1.0 + (shift - 1.0) * u)


def make_batch(codec: cdc.Codec, batch: int, seed: int, step: int) -> dict[str, torch.Tensor]:
    """One training batch, a pure function of ``(seed, step)``."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    digits, frames = cdc.random_clips(batch, gen)
    x0 = codec.encode(frames)
    empty = torch.rand(batch, generator=gen) < P_EMPTY
    context = codec.prompts[torch.where(empty, torch.full_like(digits, cdc.EMPTY), digits)]
    # Stratified schedule positions: each batch covers the whole schedule.
    u = (torch.arange(batch) + torch.rand(batch, generator=gen)) / batch
    u = u[torch.randperm(batch, generator=gen)]
    sigma = shift_sigma(u)
    noise = torch.randn(x0.shape, generator=gen)
    s = sigma.view(-1, 1, 1, 1, 1)
    return {"x": (1.0 - s) * x0 + s * noise, "timestep": sigma * 1000.0, "context": context, "target": noise - x0}


def learning_rate(step: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then constant.

    No decay tied to the total: the weights after ``n`` steps are the same
    whatever ``--steps`` was, so any checkpoint of a long run is exactly what
    a run of that length produces (the moving average does the smoothing).
    """
    return peak * min(1.0, (step + 1) / warmup)


def export(ema: torch.nn.Module, path: Path, meta: dict[str, Any]) -> None:
    """Write the EMA weights as a diffusion-model file ComfyUI's loader detects as Wan 2.1.

    float16 halves the size (the weights are small and well inside its range);
    ComfyUI casts them to its compute dtype when loading.
    """
    from safetensors.torch import save_file

    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in ema.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(sd, str(tmp), metadata={"comfyui-magcache/embedded": json.dumps(meta, sort_keys=True)})
    tmp.replace(path)


def fit(
    model: torch.nn.Module,
    args: argparse.Namespace,
    batch_at: Callable[[int], dict[str, torch.Tensor]],
    forward: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor],
    describe: dict[str, Any],
    name: str,
    training: Callable[[], contextlib.AbstractContextManager[Any]],
) -> None:
    """The training loop both embedded models share: AdamW, warm-up, EMA, checkpoints, previews, the export.

    ``batch_at(step)`` is the step's batch (a pure function of the step, so a resumed run continues exactly);
    ``forward(model, batch)`` the prediction compared with ``batch["target"]``; ``describe`` what the saved
    file's metadata says of the model and its data, beside the run's own settings; ``training()`` the context
    the steps run in (a rope with a backward, for instance).
    """
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    ckpt_path = work / "checkpoint.pt"
    ema = copy.deepcopy(model).requires_grad_(False)
    decay, no_decay = [], []
    for pname, p in model.named_parameters():
        (no_decay if p.ndim < 2 or pname.endswith("modulation") else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.99),
    )
    start, history, elapsed = 0, [], 0.0
    if args.resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        start, history, elapsed = state["step"], state["history"], state["elapsed"]
        print(f"resumed at step {start}", flush=True)
    params = sum(p.numel() for p in model.parameters())
    print(f"{name}: {params / 1e6:.2f}M parameters, {describe['arch']}, {args.steps} steps of {args.batch}",
          flush=True)

    def meta(step: int) -> dict[str, Any]:
        return {
            **describe, "params": params, "steps": step, "batch": args.batch, "lr": args.lr, "seed": args.seed,
            "train_seconds": round(elapsed), "threads": args.threads, "torch": torch.__version__,
            "final_loss": history[-1][1] if history else None,
        }

    running, t0 = None, time.time()
    with training():
        for step in range(start, args.steps):
            b = batch_at(step)
            for group in opt.param_groups:
                group["lr"] = learning_rate(step, args.lr, args.warmup)
            out = forward(model, b)
            loss = torch.nn.functional.mse_loss(out.float(), b["target"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                d = min(args.ema, (1.0 + step) / (10.0 + step))
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1.0 - d)
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            done = step + 1
            if done % args.log_every == 0 or done == args.steps:
                now = time.time()
                elapsed += now - t0
                t0 = now
                history.append((done, round(running, 5), round(elapsed)))
                lr = opt.param_groups[0]["lr"]
                print(f"step {done} loss {running:.4f} lr {lr:.2e} {elapsed / 60:.1f} min", flush=True)
            if done % args.save_every == 0 or done == args.steps:
                torch.save(
                    {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": done,
                     "history": history, "elapsed": elapsed},
                    ckpt_path,
                )
                export(ema, work / f"preview_{done}.safetensors", meta(done))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    export(ema, Path(args.out), meta(args.steps))
    (work / "history.json").write_text(json.dumps(history))
    print(f"wrote {args.out} and {args.codec_out} after {elapsed / 60:.1f} min", flush=True)


def train(args: argparse.Namespace) -> None:
    import comfy.supported_models

    wan_shift = comfy.supported_models.WAN21_T2V.sampling_settings["shift"]
    if wan_shift != SHIFT:
        raise SystemExit(f"ComfyUI samples Wan 2.1 with shift {wan_shift}, this script trains with {SHIFT}")
    torch.set_num_threads(args.threads)
    codec = cdc.fit_codec(torch.Generator().manual_seed(args.seed))
    model = build_model()
    init_weights(model, torch.Generator().manual_seed(args.seed + 1))
    codec.save(args.codec_out, {"seed": args.seed, "prompts": [cdc.prompt_text(i) for i in range(cdc.NUM_DIGITS + 1)]})
    describe = {
        "arch": ARCH, "shift": SHIFT, "p_empty": P_EMPTY,
        "data": {"canvas": cdc.CANVAS, "frames": cdc.FRAMES, "patch": cdc.PATCH, "speed": cdc.SPEED,
                 "digits": cdc.NUM_DIGITS},
    }
    fit(model, args, lambda step: make_batch(codec, args.batch, args.seed, step),
        lambda m, b: m(b["x"], b["timestep"], b["context"]), describe, "tiny Wan 2.1", trainable_rope)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--ema", type=float, default=0.9995)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--save-every", type=int, default=1000)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--out", default=str(MODEL_FILE))
    p.add_argument("--codec-out", default=str(CODEC_FILE))
    p.add_argument("--work-dir", default=str(WORK_DIR))
    return p.parse_args(argv)


if __name__ == "__main__":
    train(parse_args())
