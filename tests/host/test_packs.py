"""MagCache with the third-party packs users combine it with, loaded from their own code (see ``packs.py``).

* RES4LYF (loads on ComfyUI 0.8 or later): its multi-stage samplers write
  their per-stage state into ``transformer_options`` before every model call,
  and its ReWanPatcher swaps the Wan model's class (ComfyUI leaves the swap on
  the live model after the run);
* ComfyUI-GGUF: the tiny Wan quantised (Q8_0, F16, Q4_0) with the ``gguf``
  package and loaded by the pack's own loader, a LoRA before or after;
* ComfyUI-KJNodes: its Wan attention patches and CFG-Zero*, before or after.

On the tiny Wan 2.1, each test shows: bit-identical to the pack alone at
speed 1; at 2x the block stack runs on exactly the calls the plan computes
(every stage of a step takes that step's decision, matched by sigma); the
picture as close to the plain run as MagCache alone is with euler; and a
summary that counts what really happened. A pack that is absent or does not
load skips its tests with one line saying so.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import comfy.patcher_extension
import comfy.sample
import packs
import pytest
import tiny_models
import torch
from conftest import BlockCounter

from comfyui_magcache.cache import estimators
from comfyui_magcache.cache import magcache as engine
from comfyui_magcache.nodes.magcache_node import MagCacheApply

STEPS = 16
CURVE = "wan2.1_t2v_1.3B"


@pytest.fixture(scope="module")
def res4lyf() -> Any:
    return packs.load("RES4LYF")


@pytest.fixture(scope="module")
def wan() -> tiny_models.TinyModel:
    return tiny_models.build("wan21_t2v", seed=0)


def magcache(patcher: Any, speed: float) -> Any:
    """The node at its defaults (speed target), with the curve named so the test can rebuild the plan."""
    (out,) = MagCacheApply.execute(
        patcher, speed=speed, schedule="speed target", curve=CURVE, settings="recommended by the curve"
    ).result
    return out


def sample(tiny: tiny_models.TinyModel, patcher: Any, sampler: str) -> torch.Tensor:
    latent = comfy.sample.fix_empty_latent_channels(patcher, tiny.latent)
    noise = comfy.sample.prepare_noise(latent, 0)
    return comfy.sample.sample(
        patcher, noise, STEPS, tiny.cfg, sampler, "simple", tiny.positive, tiny.negative, latent,
        seed=0, disable_pbar=True,
    )


def summaries(text: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in re.findall(r"skipped the block stack on (\d+) of (\d+) model calls", text)]


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    return float((out - reference).norm() / reference.norm())


class Recorder:
    """Test-only wrappers: the run's sigmas (OUTER_SAMPLE) and the sigma of every model evaluation."""

    def __init__(self, patcher: Any) -> None:
        self.sigmas: list[float] = []
        self.calls: list[float] = []
        patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, "test-recorder", self.outer)
        patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, "test-recorder", self.call)

    def outer(self, executor: Any, *args: Any, **kwargs: Any) -> Any:
        self.sigmas = [float(s) for s in args[3].flatten().tolist()]
        return executor(*args, **kwargs)

    def call(self, executor: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(float(args[3].reshape(-1)[0]))
        return executor(*args, **kwargs)

    def planned_skips(self, patched: Any) -> int:
        """How many of the recorded evaluations the run's plan skips (each matched to its step by sigma)."""
        config = patched.model_options["transformer_options"][engine.KEY]
        settings = config.settings_for(patched.model.model_sampling)
        estimator = estimators.make(config.reuse, config.curve, self.sigmas)
        schedule = engine.make_schedule(config, settings, self.sigmas, (0, 1), estimator)()
        return sum(schedule.decide(s, (0, 1)) for s in self.calls)


def sample_on_plan(patched: Any, run: Any, log_text: Any, first_block: Any = None, steps: int = STEPS,
                   label: str = "") -> torch.Tensor:
    """``run(patched)``'s output, after checking the run's summary: every call counted, the skips exactly the
    plan's (some), and, given ``first_block``, the block stack run on exactly the other calls.

    ``log_text`` reads the captured log after the run (the summary is its last line of that kind).
    """
    recorder = Recorder(patched)
    counter = BlockCounter([first_block]) if first_block is not None else None
    try:
        out = run(patched)
    finally:
        if counter is not None:
            counter.close()
    skipped, total = summaries(log_text())[-1]
    assert total == steps and skipped == recorder.planned_skips(patched) > 0, label
    if counter is not None:
        assert counter.calls == total - skipped, label
    return out


@pytest.fixture
def blocks(wan: tiny_models.TinyModel) -> Iterator[BlockCounter]:
    counter = BlockCounter([wan.patcher.model.diffusion_model.blocks[0]])
    yield counter
    counter.close()


@pytest.mark.parametrize(("sampler", "stages"), [("res_2s", 2), ("res_3s", 3)])
def test_res4lyf_multistage_samplers_skip_as_planned(res4lyf, wan, sampler, stages, magcache_log, blocks) -> None:
    plain = sample(wan, wan.patcher, sampler)
    assert torch.equal(sample(wan, magcache(wan.patcher, 1.0), sampler), plain)
    patched = magcache(wan.patcher, 2.0)
    recorder = Recorder(patched)
    blocks.calls = 0
    out = sample(wan, patched, sampler)
    skipped, total = summaries(magcache_log.text)[-1]
    assert total == len(recorder.calls) == stages * STEPS  # every stage of every step, none taken for guidance
    assert "extra evaluation" not in magcache_log.text
    assert skipped == recorder.planned_skips(patched) > 0
    assert blocks.calls == total - skipped  # cond and uncond in one batch: one stack run per computed call
    # As close to the plain run as MagCache alone is with euler.
    euler_plain = sample(wan, wan.patcher, "euler")
    euler_error = relative_error(sample(wan, magcache(wan.patcher, 2.0), "euler"), euler_plain)
    assert relative_error(out, plain) <= 1.5 * euler_error


def test_res4lyf_clownsharksampler(res4lyf, wan, magcache_log, blocks) -> None:
    node = res4lyf.NODE_CLASS_MAPPINGS["ClownsharKSampler_Beta"]

    def clown(patcher: Any) -> torch.Tensor:
        latent = comfy.sample.fix_empty_latent_channels(patcher, wan.latent)
        out = node.execute(
            eta=0.5, sampler_name="exponential/res_2s", scheduler="simple", steps=STEPS, steps_to_run=-1,
            denoise=1.0, cfg=wan.cfg, seed=0, sampler_mode="standard", bongmath=True, model=patcher,
            positive=wan.positive, negative=wan.negative, latent_image={"samples": latent},
        )
        return (out.result if hasattr(out, "result") else out)[0]["samples"]

    plain = clown(wan.patcher)
    assert torch.equal(clown(magcache(wan.patcher, 1.0)), plain)
    patched = magcache(wan.patcher, 2.0)
    recorder = Recorder(patched)
    blocks.calls = 0
    out = clown(patched)
    skipped, total = summaries(magcache_log.text)[-1]
    assert total == len(recorder.calls) and "extra evaluation" not in magcache_log.text
    assert skipped == recorder.planned_skips(patched) > 0
    assert blocks.calls == total - skipped
    assert torch.isfinite(out).all() and relative_error(out, plain) < 0.2


def test_res4lyf_class_swap_left_on_the_live_model_does_not_turn_magcache_off(res4lyf, wan, magcache_log,
                                                                               blocks) -> None:
    """ReWanPatcher's class stays on the shared live model after its run; a later plain run is served."""
    plain = sample(wan, wan.patcher, "euler")
    (rewan,) = res4lyf.NODE_CLASS_MAPPINGS["ReWanPatcher"]().main(wan.patcher)
    sample(wan, rewan, "euler")
    live = type(wan.patcher.model.diffusion_model).__name__
    patched = magcache(wan.patcher, 2.0)  # applied while the live model still wears ReWan's class
    assert patched is not wan.patcher, "MagCache left the plain Wan alone"
    assert "does not know" not in magcache_log.text
    blocks.calls = 0
    out = sample(wan, patched, "euler")
    skipped, total = summaries(magcache_log.text)[-1]
    assert skipped > 0 and total == STEPS and blocks.calls == total - skipped
    assert torch.isfinite(out).all()
    sample(wan, rewan, "euler")
    assert torch.equal(sample(wan, magcache(wan.patcher, 1.0), "euler"), plain)
    assert live == "ReWanModel", "the test needs ComfyUI to keep the swap on the live model after the run"


def test_res4lyf_rewan_after_magcache_stands_aside_and_says_so(res4lyf, wan, magcache_log, blocks) -> None:
    """ReWanModel runs its blocks itself: the run computes every step, and no summary claims a skip."""
    (reference_model,) = res4lyf.NODE_CLASS_MAPPINGS["ReWanPatcher"]().main(wan.patcher)
    blocks.calls = 0
    reference = sample(wan, reference_model, "euler")
    uncached_calls, blocks.calls = blocks.calls, 0
    (chain,) = res4lyf.NODE_CLASS_MAPPINGS["ReWanPatcher"]().main(magcache(wan.patcher, 2.0))
    out = sample(wan, chain, "euler")
    assert torch.equal(out, reference)
    assert blocks.calls == uncached_calls >= STEPS
    assert "ReWanModel (model config WAN21_T2V) is a model this version of the pack does not know; this run " \
           "computes every step" in magcache_log.text
    assert not summaries(magcache_log.text)


# -- ComfyUI-GGUF ------------------------------------------------------------------------------------
def write_gguf(diffusion_model: torch.nn.Module, path: Any, quant: str) -> None:
    """The tiny Wan as a GGUF file, written with the ``gguf`` package: linear weights in ``quant``, the rest F32."""
    import gguf
    import numpy as np

    qtype = gguf.GGMLQuantizationType[quant]
    writer = gguf.GGUFWriter(str(path), "wan")
    for name, tensor in diffusion_model.state_dict().items():
        data = tensor.detach().float().cpu().numpy()
        if data.ndim == 2 and name.endswith(".weight") and data.shape[-1] % 32 == 0:
            if qtype is gguf.GGMLQuantizationType.F16:
                writer.add_tensor(name, data.astype(np.float16))
            else:
                writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def gguf_loader() -> Any:
    pack = packs.load("ComfyUI-GGUF")
    return pack.NODE_CLASS_MAPPINGS["UnetLoaderGGUF"]()


@pytest.fixture(scope="module")
def gguf_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import folder_paths

    folder = tmp_path_factory.mktemp("gguf")
    folder_paths.add_model_folder_path("diffusion_models", str(folder))
    yield folder
    paths, _ = folder_paths.folder_names_and_paths["diffusion_models"]
    if str(folder) in paths:
        paths.remove(str(folder))


def with_lora(patcher: Any) -> Any:
    """A weight patch as a LoRA loader applies it (ComfyUI's 'diff' format), on a quantised weight."""
    m = patcher.clone()
    key = "diffusion_model.blocks.1.ffn.0.weight"
    m.add_patches({key: (torch.full(tuple(patcher.model.diffusion_model.blocks[1].ffn[0].weight.shape), 0.01),)}, 1.0)
    return m


@pytest.mark.parametrize("quant", ["Q8_0", "F16", "Q4_0"])
def test_gguf_quantised_wan_with_lora_before_and_after(gguf_loader, gguf_folder, wan, quant, magcache_log) -> None:
    name = f"tiny_wan_{quant}.gguf"
    write_gguf(wan.patcher.model.diffusion_model, gguf_folder / name, quant)
    (model,) = gguf_loader.load_unet(name)
    assert type(model).__name__ == "GGUFModelPatcher"
    assert type(model.model.diffusion_model.blocks[1].ffn[0].weight).__name__ == "GGMLTensor"
    plain = sample(wan, model, "euler")
    assert not torch.equal(plain, sample(wan, wan.patcher, "euler")), "the quantised weights are the ones used"
    assert torch.equal(sample(wan, magcache(model, 1.0), "euler"), plain)
    reference = sample(wan, wan.patcher, "euler")
    reference_error = relative_error(sample(wan, magcache(wan.patcher, 2.0), "euler"), reference)
    lora_plain = sample(wan, with_lora(model), "euler")
    assert not torch.equal(lora_plain, plain), "the LoRA acts on the quantised model"

    def chain(order: str, speed: float) -> Any:
        return magcache(with_lora(model), speed) if order == "before" else with_lora(magcache(model, speed))

    for order in ("before", "after"):
        assert torch.equal(sample(wan, chain(order, 1.0), "euler"), lora_plain), order
        out = sample_on_plan(chain(order, 2.0), lambda m: sample(wan, m, "euler"), lambda: magcache_log.text,
                             model.model.diffusion_model.blocks[0], label=order)
        assert relative_error(out, lora_plain) <= 1.5 * reference_error + 0.01, order


# -- ComfyUI-KJNodes -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kjnodes() -> Any:
    return packs.load("ComfyUI-KJNodes").NODE_CLASS_MAPPINGS


KJ_PATCHES = {
    # Enhance-A-Video: object patches of every block's self-attention forward.
    "WanVideoEnhanceAVideoKJ": lambda node, m, tiny: node.enhance(m, 2.0, {"samples": tiny.latent}),
    # NAG: object patches of every block's cross-attention forward, with the negative prompt's context.
    "WanVideoNAG": lambda node, m, tiny: node.patch(m, tiny.negative, 11.0, 0.25, 2.5),
    # CFG-Zero*: a CFG function, and zeroed first steps.
    "CFGZeroStarAndInit": lambda node, m, tiny: node.patch(m, True, 1),
}


@pytest.mark.parametrize("node_name", list(KJ_PATCHES))
def test_kjnodes_wan_patches_before_and_after(kjnodes, wan, node_name, magcache_log) -> None:
    node = kjnodes[node_name]()

    def kj(m: Any) -> Any:
        return KJ_PATCHES[node_name](node, m, wan)[0]

    def chain(order: str, speed: float) -> Any:
        return magcache(kj(wan.patcher), speed) if order == "before" else kj(magcache(wan.patcher, speed))

    reference = sample(wan, wan.patcher, "euler")
    reference_error = relative_error(sample(wan, magcache(wan.patcher, 2.0), "euler"), reference)
    plain = sample(wan, kj(wan.patcher), "euler")
    assert not torch.equal(plain, reference), f"{node_name} acts on the model"
    for order in ("before", "after"):
        assert torch.equal(sample(wan, chain(order, 1.0), "euler"), plain), order
        out = sample_on_plan(chain(order, 2.0), lambda m: sample(wan, m, "euler"), lambda: magcache_log.text,
                             wan.patcher.model.diffusion_model.blocks[0], label=order)
        assert relative_error(out, plain) <= 1.5 * reference_error + 0.01, order


def test_kjnodes_torch_compile_before_and_after(kjnodes, wan, magcache_log) -> None:
    """TorchCompileModelAdvanced (inductor, blocks only) before and after MagCache: at speed 1 the output is the
    compiled model's within rounding (dynamo recompiles the shared block forward per block and input layout and,
    past its recompile limit, runs some calls eagerly, so not bit for bit); at 2x the plan's calls are skipped
    and the picture stays as close as MagCache's alone. The compiled blocks are swapped in per call, so
    MagCache's block patches still wrap them."""
    node = kjnodes["TorchCompileModelAdvanced"]()

    def compiled(m: Any) -> Any:
        return node.patch(m, "inductor", False, "default", "false", True, 64, False)[0]

    def chain(order: str, speed: float) -> Any:
        return magcache(compiled(wan.patcher), speed) if order == "before" else compiled(magcache(wan.patcher, speed))

    reference = sample(wan, wan.patcher, "euler")
    reference_error = relative_error(sample(wan, magcache(wan.patcher, 2.0), "euler"), reference)
    plain = sample(wan, compiled(wan.patcher), "euler")
    assert relative_error(plain, reference) < 1e-4  # inductor's kernels: the eager result within rounding
    for order in ("before", "after"):
        assert relative_error(sample(wan, chain(order, 1.0), "euler"), plain) < 1e-4, order
        assert summaries(magcache_log.text)[-1] == (0, STEPS), order
        # No block count: the compiled blocks run in place of the module a counter would hook.
        out = sample_on_plan(chain(order, 2.0), lambda m: sample(wan, m, "euler"), lambda: magcache_log.text,
                             label=order)
        assert relative_error(out, plain) <= 1.5 * reference_error + 0.01, order
