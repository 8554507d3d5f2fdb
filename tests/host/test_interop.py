"""What other nodes do to a run, without their packs: ComfyUI's own pieces standing in for them.

* a sampler that writes its bookkeeping into ``transformer_options`` before
  every model call (as RES4LYF's do) still skips as planned; an object of
  its own under a key of its own is taken for a variant;
* a class swapped onto the shared live model by another node's object patch
  is not what a later plain run samples; a class swapped in by this chain
  after MagCache makes the run stand aside, and no summary counts a skip;
* a forward that bypasses the block patches but is reached through the
  diffusion-model wrapper moves the run to the output level, and the summary
  counts exactly the calls whose model was replaced;
* DualCFGGuider (negative first in its list): CFG-Cache leaves out the
  negative, never the middle cond; PerpNegGuider's three conds share one
  decision per call;
* ComfyUI's CFG-side guidance nodes (CFGZeroStar, CFGNorm, APG) before and
  after MagCache: exact at speed 1, the stack on plan at 2x.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import comfy.k_diffusion.sampling
import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import pytest
import tiny_models
import torch
from conftest import BlockCounter

from comfyui_magcache.nodes.magcache_node import MagCacheApply

STEPS = 12
CURVE = "wan2.1_t2v_1.3B"


@pytest.fixture(scope="module")
def wan() -> tiny_models.TinyModel:
    return tiny_models.build("wan21_t2v", seed=0)


def magcache(patcher: Any, speed: float, **kw: Any) -> Any:
    (out,) = MagCacheApply.execute(
        patcher, speed=speed, schedule="speed target", curve=CURVE, settings="recommended by the curve", **kw
    ).result
    return out


def sample(tiny: tiny_models.TinyModel, patcher: Any, sampler: Any = "euler") -> torch.Tensor:
    latent = comfy.sample.fix_empty_latent_channels(patcher, tiny.latent)
    noise = comfy.sample.prepare_noise(latent, 0)
    if isinstance(sampler, str):
        return comfy.sample.sample(
            patcher, noise, STEPS, tiny.cfg, sampler, "simple", tiny.positive, tiny.negative, latent,
            seed=0, disable_pbar=True,
        )
    sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "simple", STEPS)
    return comfy.sample.sample_custom(
        patcher, noise, tiny.cfg, sampler, sigmas, tiny.positive, tiny.negative, latent, seed=0, disable_pbar=True
    )


def summaries(text: str, what: str = "block stack") -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in re.findall(rf"skipped the {what} on (\d+) of (\d+) model calls", text)]


def first_block(tiny: tiny_models.TinyModel) -> BlockCounter:
    return BlockCounter([tiny.patcher.model.diffusion_model.blocks[0]])


# -- a sampler's bookkeeping ---------------------------------------------------------------------
def bookkeeping_sampler(value: Any) -> Any:
    """euler, writing ``value(call)`` into the options before each model call as a multi-stage sampler does."""

    def sample_fn(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: Any = None, callback: Any = None,
                  disable: Any = None) -> torch.Tensor:
        options = extra_args.setdefault("model_options", {}).setdefault("transformer_options", {})
        calls = 0

        def model_with_state(x: torch.Tensor, sigma: torch.Tensor, **kw: Any) -> torch.Tensor:
            nonlocal calls
            options.update(value(calls, sigma))
            calls += 1
            return model(x, sigma, **kw)

        return comfy.k_diffusion.sampling.sample_euler(model_with_state, x, sigmas, extra_args, callback, disable)

    return comfy.samplers.KSAMPLER(sample_fn)


def test_a_samplers_per_call_bookkeeping_is_not_guidance(wan, magcache_log) -> None:
    def stage_state(call: int, sigma: torch.Tensor) -> dict[str, Any]:
        return {"stage": call, "row": f"row {call}", "h": sigma * 0.5, "substep": {"z": torch.zeros(2), "i": call}}

    sampler = bookkeeping_sampler(stage_state)
    plain = sample(wan, wan.patcher, sampler)
    assert torch.equal(sample(wan, magcache(wan.patcher, 1.0), sampler), plain)
    counter = first_block(wan)
    sample(wan, magcache(wan.patcher, 2.0), sampler)
    counter.close()
    skipped, total = summaries(magcache_log.text)[-1]
    assert "extra evaluation" not in magcache_log.text
    assert total == STEPS and skipped > 0 and counter.calls == total - skipped


def test_an_object_of_its_own_under_a_key_of_its_own_is_a_variant(wan, magcache_log) -> None:
    """A callable another pack passes per call may change what the model computes: computed in full."""
    sampler = bookkeeping_sampler(lambda call, sigma: {"my_attention_override": lambda q: q * (call + 1)})
    sample(wan, magcache(wan.patcher, 2.0), sampler)
    assert re.search(r"(\d+) extra evaluation\(s\) with changed options \(guidance: my_attention_override\)",
                     magcache_log.text)


# -- class swaps -----------------------------------------------------------------------------------
def foreign_class(tiny: tiny_models.TinyModel) -> type:
    """A class with Wan's methods that the family table does not know (as RES4LYF's ReWanModel is)."""
    wan_class = type(tiny.patcher.model.diffusion_model)
    body = {k: v for k, v in vars(wan_class).items() if k not in ("__dict__", "__weakref__")}
    return type("ForeignModel", (torch.nn.Module,), body)


def test_a_class_swap_left_on_the_live_model_does_not_turn_magcache_off(wan, magcache_log) -> None:
    swapped = wan.patcher.clone()
    swapped.add_object_patch("diffusion_model.__class__", foreign_class(wan))
    plain = sample(wan, wan.patcher)
    sample(wan, swapped)
    assert type(wan.patcher.model.diffusion_model).__name__ == "ForeignModel", "ComfyUI kept the swap: the case"
    patched = magcache(wan.patcher, 2.0)
    assert "does not know" not in magcache_log.text
    counter = first_block(wan)
    sample(wan, patched)
    counter.close()
    skipped, total = summaries(magcache_log.text)[-1]
    assert total == STEPS and skipped > 0 and counter.calls == total - skipped
    sample(wan, swapped)
    assert torch.equal(sample(wan, magcache(wan.patcher, 1.0)), plain)


def test_a_class_swapped_in_after_magcache_stands_aside_and_no_skip_is_counted(wan, magcache_log) -> None:
    """Breaks the summary on purpose: the batches run on a model the hooks were not installed for."""
    def swap(patcher: Any) -> Any:
        m = patcher.clone()
        m.add_object_patch("diffusion_model.__class__", foreign_class(wan))
        return m

    sample(wan, wan.patcher)  # the live model wears Wan's class when the run starts
    reference = sample(wan, swap(wan.patcher))
    sample(wan, wan.patcher)
    out = sample(wan, swap(magcache(wan.patcher, 2.0)))
    assert torch.equal(out, reference)
    assert "ForeignModel (model config WAN21_T2V) is a model this version of the pack does not know; this run " \
           "computes every step" in magcache_log.text
    assert all(skipped == 0 for skipped, _ in summaries(magcache_log.text))


# -- block patches bypassed ------------------------------------------------------------------------
class Bypass:
    """An object patch of ``forward_orig`` that drops ``patches_replace``: the blocks run directly.

    The model is still entered through ComfyUI's diffusion-model wrapper; counts the calls that ran it.
    """

    def __init__(self, diffusion_model: Any) -> None:
        self.forward_orig = functools.partial(type(diffusion_model).forward_orig, diffusion_model)
        self.calls = 0

    def __deepcopy__(self, memo: dict) -> Bypass:
        return self

    def __call__(self, *args: Any, transformer_options: dict | None = None, **kwargs: Any) -> Any:
        self.calls += 1
        options = {k: v for k, v in (transformer_options or {}).items() if k != "patches_replace"}
        return self.forward_orig(*args, transformer_options=options, **kwargs)


def bypassed(tiny: tiny_models.TinyModel, patcher: Any, bypass: Bypass) -> Any:
    m = patcher.clone()
    m.add_object_patch("diffusion_model.forward_orig", bypass)
    return m


def test_bypassed_block_patches_move_the_run_to_the_output_level(wan, magcache_log) -> None:
    reference = sample(wan, bypassed(wan, wan.patcher, Bypass(wan.patcher.model.diffusion_model)))
    assert torch.equal(reference, sample(wan, wan.patcher))  # the bypass computes the same model
    assert torch.equal(sample(wan, bypassed(wan, magcache(wan.patcher, 1.0), Bypass(
        wan.patcher.model.diffusion_model))), reference)
    bypass = Bypass(wan.patcher.model.diffusion_model)
    counter = first_block(wan)
    out = sample(wan, bypassed(wan, magcache(wan.patcher, 2.0), bypass))
    counter.close()
    assert "this run goes on at the model's output" in magcache_log.text
    assert "the output-level stand-in 'tiny_wan_output' plans the rest of this run" in magcache_log.text
    skipped, total = summaries(magcache_log.text, "whole model")[-1]
    assert total == STEPS and skipped > 0
    assert bypass.calls == counter.calls == total - skipped  # counted skips are calls whose model did not run
    assert torch.isfinite(out).all()


class BypassAll(Bypass):
    """An object patch of ``forward`` that runs ``_forward`` directly: neither the diffusion-model wrapper
    nor the block patches are reached."""

    def __init__(self, diffusion_model: Any) -> None:
        super().__init__(diffusion_model)
        self.forward_orig = functools.partial(type(diffusion_model)._forward, diffusion_model)


def test_bypassed_block_patches_and_wrapper_stand_aside_and_no_skip_is_counted(wan, magcache_log) -> None:
    def bypassed_all(patcher: Any, bypass: BypassAll) -> Any:
        m = patcher.clone()
        m.add_object_patch("diffusion_model.forward", bypass)
        return m

    reference = sample(wan, bypassed_all(wan.patcher, BypassAll(wan.patcher.model.diffusion_model)))
    bypass = BypassAll(wan.patcher.model.diffusion_model)
    out = sample(wan, bypassed_all(magcache(wan.patcher, 2.0), bypass))
    assert torch.equal(out, reference) and bypass.calls == STEPS
    assert "ComfyUI did not call the block patches this family is known to have; skipping switched off" in (
        magcache_log.text
    )
    assert summaries(magcache_log.text)[-1] == (0, STEPS)
    assert "skipping was switched off (check failed" in magcache_log.text


# -- conditioning roles ----------------------------------------------------------------------------
def test_dual_cfg_guider_cfg_cache_leaves_out_the_negative(wan, magcache_log) -> None:
    """DualCFGGuider passes [negative, middle, positive]: CFG-Cache must rebuild the negative, not the middle."""
    from comfy_extras.nodes_custom_sampler import Guider_DualCFG

    text, extra = wan.positive[0]
    middle, negative = [[text * 0.5, dict(extra)]], [[text * -0.5, dict(extra)]]
    seen: list[set[str]] = []

    def which(executor: Any, *args: Any, **kwargs: Any) -> Any:
        context = args[3] if len(args) > 3 else kwargs["c_crossattn"]
        names = {"positive": text, "middle": text * 0.5, "negative": text * -0.5}
        seen.append({n for n, t in names.items() if any(torch.equal(row, t[0]) for row in context)})
        return executor(*args, **kwargs)

    def run(patcher: Any) -> torch.Tensor:
        guider = Guider_DualCFG(patcher)
        guider.set_conds(wan.positive, middle, negative)
        guider.set_cfg(4.0, 2.0)
        latent = comfy.sample.fix_empty_latent_channels(patcher, wan.latent)
        sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "simple", STEPS)
        return guider.sample(comfy.sample.prepare_noise(latent, 0), latent, comfy.samplers.sampler_object("euler"),
                             sigmas, seed=0, disable_pbar=True)

    plain = run(wan.patcher)
    assert torch.equal(run(magcache(wan.patcher, 1.0, cfg_cache=True)), plain)
    patched = magcache(wan.patcher, 2.0, cfg_cache=True)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test-which", which)
    out = run(patched)
    assert torch.isfinite(out).all()
    cond_only = int(re.findall(r"CFG-Cache ran only the conditional branch on (\d+) call", magcache_log.text)[-1])
    assert cond_only > 0
    assert sum(s == {"positive", "middle"} for s in seen) == cond_only
    assert all("positive" in s and "middle" in s for s in seen)


# -- ComfyUI's own guidance nodes -------------------------------------------------------------------
def _guidance_nodes() -> dict[str, Any]:
    from comfy_extras.nodes_apg import APG
    from comfy_extras.nodes_cfg import CFGNorm, CFGZeroStar

    return {
        "CFGZeroStar": lambda m: CFGZeroStar.execute(m),
        "CFGNorm": lambda m: CFGNorm.execute(m, 1.0),
        "APG": lambda m: APG.execute(m, 1.0, 5.0, 0.5),
    }


def _output(result: Any) -> Any:
    return result.result[0] if hasattr(result, "result") else result[0]


@pytest.mark.parametrize("node_name", ["CFGZeroStar", "CFGNorm", "APG"])
def test_core_guidance_nodes_before_and_after(wan, node_name, magcache_log) -> None:
    """CFG-side guidance (ComfyUI's NAGuidance is left out: its attention-output patch has no effect on Wan)."""
    from test_packs import sample_on_plan

    guide = _guidance_nodes()[node_name]
    plain = sample(wan, _output(guide(wan.patcher)))
    assert not torch.equal(plain, sample(wan, wan.patcher)), f"{node_name} acts on the model"
    for order in ("before", "after"):
        def chain(speed: float, order: str = order) -> Any:
            return magcache(_output(guide(wan.patcher)), speed) if order == "before" else _output(
                guide(magcache(wan.patcher, speed)))

        assert torch.equal(sample(wan, chain(1.0)), plain), order
        out = sample_on_plan(chain(2.0), lambda m: sample(wan, m), lambda: magcache_log.text,
                             wan.patcher.model.diffusion_model.blocks[0], steps=STEPS, label=order)
        assert "extra evaluation" not in magcache_log.text
        assert torch.isfinite(out).all()


def test_perp_neg_guider_three_conds(wan, magcache_log) -> None:
    """PerpNegGuider runs positive, negative and an empty prompt: three roles, one decision per call."""
    from comfy_extras.nodes_perpneg import PerpNegGuider

    text, extra = wan.positive[0]
    empty = [[text * 0.0, dict(extra)]]

    def run(patcher: Any) -> torch.Tensor:
        guider = _output(PerpNegGuider.execute(patcher, wan.positive, [[text * -0.5, dict(extra)]], empty, 4.0, 1.0))
        latent = comfy.sample.fix_empty_latent_channels(patcher, wan.latent)
        sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "simple", STEPS)
        return guider.sample(comfy.sample.prepare_noise(latent, 0), latent, comfy.samplers.sampler_object("euler"),
                             sigmas, seed=0, disable_pbar=True)

    counter = first_block(wan)
    plain = run(wan.patcher)
    per_call, counter.calls = counter.calls // STEPS, 0
    assert torch.equal(run(magcache(wan.patcher, 1.0)), plain)
    counter.calls = 0
    out = run(magcache(wan.patcher, 2.0))
    counter.close()
    skipped, total = summaries(magcache_log.text)[-1]
    assert total == STEPS and skipped > 0 and "extra evaluation" not in magcache_log.text
    assert counter.calls == per_call * (total - skipped)
    assert torch.isfinite(out).all()
