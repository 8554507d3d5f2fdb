"""Never break a workflow: the failure modes users hit with caching nodes, in the real host.

Each scenario shows: no exception, no state left behind for the next run, and
with threshold 0 an output bit-identical to the plain model. Numbers in the
test names follow README's "Compatibility" section.
"""

from __future__ import annotations

import gc
import re
import weakref
from collections.abc import Iterator
from typing import Any

import comfy.controlnet
import comfy.model_management
import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import pytest
import tiny_models
import torch
from conftest import BlockCounter

from comfyui_magcache.cache import magcache as engine
from comfyui_magcache.cache.policy import SkipPolicy, plan_run
from comfyui_magcache.nodes.magcache_node import MagCacheApply

STEPS = 12
CURVE = "wan2.1_t2v_1.3B"


@pytest.fixture(scope="module")
def wan() -> tiny_models.TinyModel:
    return tiny_models.build("wan21_t2v", seed=0)


def magcache(patcher: Any, threshold: float = 0.3, k: int = 3, retention: float = 0.2, **kw: Any) -> Any:
    """The node as a user wires it, with an explicit curve so the tests control the plan."""
    # No schedule given: the node runs the paper's rule, as an API prompt from before the schedules did.
    (out,) = MagCacheApply.execute(
        patcher,
        curve=kw.pop("curve", CURVE),
        threshold=threshold,
        max_consecutive_skips=k,
        retention_ratio=retention,
        start=kw.pop("start", 0.0),
        end=kw.pop("end", 1.0),
        cache_device=kw.pop("cache_device", "compute"),
    ).result
    assert not kw
    return out


def run(
    tiny: tiny_models.TinyModel,
    patcher: Any,
    steps: int = STEPS,
    latent: torch.Tensor | None = None,
    positive: list | None = None,
    **kw: Any,
) -> torch.Tensor:
    latent = comfy.sample.fix_empty_latent_channels(patcher, tiny.latent if latent is None else latent)
    noise = kw.pop("noise", None)
    if noise is None:
        noise = comfy.sample.prepare_noise(latent, kw.pop("seed", 0))
    return comfy.sample.sample(
        patcher,
        noise,
        steps,
        tiny.cfg,
        kw.pop("sampler", "euler"),
        kw.pop("scheduler", "simple"),
        tiny.positive if positive is None else positive,
        tiny.negative,
        latent,
        seed=0,
        disable_pbar=True,
        **kw,
    )


def counts(log_text: str) -> list[tuple[int, int]]:
    """(skipped, total) of every summary line so far."""
    return [(int(a), int(b)) for a, b in re.findall(r"skipped the block stack on (\d+) of (\d+) model calls", log_text)]


def plans(log_text: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in re.findall(r"computing (\d+) of (\d+) steps", log_text)]


class ResidualWatch:
    """Weak references to every residual the engine stores, to prove they are freed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.refs: list[weakref.ref] = []
        original = engine.RunState.store

        def spy(state: engine.RunState, batch: Any, r: torch.Tensor) -> None:
            original(state, batch, r)
            self.refs.append(weakref.ref(state.by_batch[batch.uuids]))

        monkeypatch.setattr(engine.RunState, "store", spy)

    def alive(self) -> int:
        gc.collect()
        return sum(ref() is not None for ref in self.refs)


def first_block(patcher: Any) -> torch.nn.Module:
    return patcher.model.diffusion_model.blocks[0]


# 1 -----------------------------------------------------------------------------------------
def test_1_cond_and_uncond_in_separate_calls_and_together(wan, magcache_log, monkeypatch) -> None:
    joint_counter = BlockCounter([first_block(wan.patcher)])
    joint = run(wan, magcache(wan.patcher))
    joint_counter.close()
    # Make ComfyUI believe memory is short, so it sends cond and uncond through the model one by one.
    monkeypatch.setattr(wan.patcher.model, "memory_required", lambda *a, **k: 1e30)
    split_counter = BlockCounter([first_block(wan.patcher)])
    split = run(wan, magcache(wan.patcher))
    split_counter.close()
    (skipped_joint, total), (skipped_split, _) = counts(magcache_log.text)[-2:]
    assert skipped_joint == skipped_split > 0
    assert split_counter.calls == 2 * joint_counter.calls == 2 * (total - skipped_joint)
    assert torch.allclose(split, joint, atol=1e-4)
    assert torch.equal(run(wan, magcache(wan.patcher, threshold=0.0)), run(wan, wan.patcher))


# 2 -----------------------------------------------------------------------------------------
def test_2_batch_sizes_change_between_runs_of_one_patched_model(wan, magcache_log) -> None:
    patched = magcache(wan.patcher)
    plain0 = magcache(wan.patcher, threshold=0.0)
    seen = []
    for batch in (1, 2, 4, 1):
        latent = wan.latent.repeat(batch, *([1] * (wan.latent.ndim - 1)))
        out = run(wan, patched, latent=latent)
        assert out.shape[0] == batch and torch.isfinite(out).all()
        assert torch.equal(run(wan, plain0, latent=latent), run(wan, wan.patcher, latent=latent))
        seen.append(counts(magcache_log.text)[-2])
    assert len(set(seen)) == 1 and seen[0][0] > 0  # same decisions whatever the batch size


# 3 -----------------------------------------------------------------------------------------
def test_3_several_positive_conds_with_areas_and_timestep_ranges(magcache_log) -> None:
    flux = tiny_models.build("flux", seed=0)
    text, extra = flux.positive[0]
    h, w = flux.latent.shape[-2:]
    positive = [
        [text, dict(extra)],
        [text * 0.5, {**extra, "area": (h // 2, w, 0, 0), "strength": 0.8}],
        [text * -0.5, {**extra, "start_percent": 0.0, "end_percent": 0.4}],
        [text * 0.25, {**extra, "start_percent": 0.5, "end_percent": 1.0}],
    ]
    before = repr(flux.patcher.model_options)
    out = run(flux, magcache(flux.patcher, curve="flux"), positive=positive)
    assert torch.isfinite(out).all()
    assert counts(magcache_log.text)[-1][0] > 0
    exact = run(flux, magcache(flux.patcher, curve="flux", threshold=0.0), positive=positive)
    assert torch.equal(exact, run(flux, flux.patcher, positive=positive))
    assert repr(flux.patcher.model_options) == before


# 4 -----------------------------------------------------------------------------------------
def test_4_cancel_in_the_middle_then_run_again(wan, monkeypatch) -> None:
    watch = ResidualWatch(monkeypatch)
    patched = magcache(wan.patcher)

    def cancel_at_step_6(step: int, *_: Any) -> None:
        if step == 6:
            raise comfy.model_management.InterruptProcessingException()

    with pytest.raises(comfy.model_management.InterruptProcessingException):
        run(wan, patched, callback=cancel_at_step_6)
    assert watch.refs and watch.alive() == 0
    again = run(wan, patched)
    fresh = run(wan, magcache(wan.patcher))
    assert torch.equal(again, fresh)
    assert watch.alive() == 0


# 5 -----------------------------------------------------------------------------------------
def test_5_one_patched_model_two_samplers_at_two_resolutions(wan, magcache_log) -> None:
    patched = magcache(wan.patcher)
    first = run(wan, patched)
    upscaled = torch.nn.functional.interpolate(first, size=(first.shape[2], 12, 12), mode="nearest-exact")
    second = run(wan, patched, latent=upscaled, denoise=0.6)
    assert second.shape[-2:] == (12, 12) and torch.isfinite(second).all()
    assert "off-plan" not in magcache_log.text  # the second pass never met the first pass's cache
    exact0 = magcache(wan.patcher, threshold=0.0)
    exact = run(wan, exact0, latent=upscaled, denoise=0.6)
    assert torch.equal(exact, run(wan, wan.patcher, latent=upscaled, denoise=0.6))


# 6 -----------------------------------------------------------------------------------------
def test_6_advanced_sampler_and_wan22_two_experts(wan, magcache_log) -> None:
    high, low = wan, tiny_models.build("wan21_t2v", seed=1)

    def two_experts(mh: Any, ml: Any) -> torch.Tensor:
        latent = comfy.sample.fix_empty_latent_channels(mh, high.latent)
        noise = comfy.sample.prepare_noise(latent, 0)
        part = run(high, mh, noise=noise, latent=latent, start_step=0, last_step=STEPS // 2, force_full_denoise=False)
        return run(low, ml, noise=noise, latent=part, start_step=STEPS // 2, last_step=STEPS, disable_noise=True)

    plain = two_experts(high.patcher, low.patcher)
    assert torch.equal(two_experts(magcache(high.patcher, threshold=0.0), magcache(low.patcher, threshold=0.0)), plain)
    magcache_log.clear()
    low_counter = BlockCounter([first_block(low.patcher)])
    out = two_experts(magcache(high.patcher, retention=0.3), magcache(low.patcher, retention=0.3))
    low_counter.close()
    assert torch.isfinite(out).all()
    (plan_high, plan_low) = plans(magcache_log.text)
    assert plan_high[1] == plan_low[1] == STEPS // 2
    # Retention is a sigma bound on the whole schedule: it protects the start of the
    # high-noise part only; the low-noise part may skip from its second call on.
    sig = [float(s) for s in comfy.samplers.calculate_sigmas(wan.patcher.model.model_sampling, "simple", STEPS)]
    cfg = magcache(low.patcher, retention=0.3).model_options["transformer_options"][engine.KEY]
    settings = cfg.settings_for(low.patcher.model.model_sampling)
    assert all(s > settings.skip_below_sigma for s in sig[:3]) and sig[STEPS // 2] < settings.skip_below_sigma
    expected_low = plan_run(cfg.curve, settings, sig[STEPS // 2 :], (0, 1))
    assert plan_low[0] == expected_low.computed < STEPS // 2
    assert not expected_low.skips[0]  # no cache crosses the switch: the low expert computes first
    assert low_counter.calls == expected_low.computed


# 7 -----------------------------------------------------------------------------------------
class SigmaRecorder:
    """A test-only CALC_COND_BATCH wrapper noting the sigma of every model evaluation."""

    def __init__(self) -> None:
        self.sigmas: list[float] = []

    def __call__(self, executor: Any, *args: Any, **kwargs: Any) -> Any:
        self.sigmas.append(float(args[3].reshape(-1)[0]))
        return executor(*args, **kwargs)


def expected_skips(patched: Any, sigmas: list[float]) -> int:
    config = patched.model_options["transformer_options"][engine.KEY]
    policy = SkipPolicy(config.curve, config.settings_for(patched.model.model_sampling))
    return sum(policy.decide(s, (0, 1)) for s in sigmas)


@pytest.mark.parametrize("sampler", ["heun", "dpm_2", "dpmpp_2s_ancestral", "res_multistep", "uni_pc"])
def test_7_samplers_calling_the_model_several_times_per_step(wan, sampler, magcache_log) -> None:
    patched = magcache(wan.patcher)
    recorder = SigmaRecorder()
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, "test-recorder", recorder)
    out = run(wan, patched, sampler=sampler)
    assert torch.isfinite(out).all()
    skipped, total = counts(magcache_log.text)[-1]
    assert total == len(recorder.sigmas)
    assert skipped == expected_skips(patched, recorder.sigmas) > 0
    exact = run(wan, magcache(wan.patcher, threshold=0.0), sampler=sampler)
    assert torch.equal(exact, run(wan, wan.patcher, sampler=sampler))


CUSTOM_SIGMAS = {
    "repeated": [1.0, 0.99, 0.97, 0.97, 0.95, 0.9, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.5, 0.3, 0.1, 0.0],
    "final_zero_twice": [1.0, 0.98, 0.96, 0.94, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.2, 0.0, 0.0],
    "all_zero": [0.0] * 14,
}


@pytest.mark.parametrize("name", list(CUSTOM_SIGMAS))
def test_7_custom_sigma_lists(wan, name, magcache_log) -> None:
    sigmas = torch.tensor(CUSTOM_SIGMAS[name])
    sampler = comfy.samplers.sampler_object("euler")

    def custom(model: Any) -> torch.Tensor:
        latent = comfy.sample.fix_empty_latent_channels(model, wan.latent)
        noise = comfy.sample.prepare_noise(latent, 0)
        return comfy.sample.sample_custom(
            model, noise, wan.cfg, sampler, sigmas, wan.positive, wan.negative, latent, disable_pbar=True, seed=0
        )

    patched = magcache(wan.patcher)
    recorder = SigmaRecorder()
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, "test-recorder", recorder)
    out = custom(patched)
    plain = custom(wan.patcher)
    # A zero sigma makes ComfyUI's own euler step divide by zero; we must add nothing worse.
    assert torch.isfinite(out).all() or not torch.isfinite(plain).all()
    if recorder.sigmas:
        skipped, total = counts(magcache_log.text)[-1]
        assert (skipped, total) == (expected_skips(patched, recorder.sigmas), len(recorder.sigmas))
    torch.testing.assert_close(custom(magcache(wan.patcher, threshold=0.0)), plain, rtol=0, atol=0, equal_nan=True)


# 8 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [4, 6, 8])
def test_8_few_step_schedules_are_left_alone_once(wan, steps, magcache_log) -> None:
    out = run(wan, magcache(wan.patcher, threshold=1.0, k=5, retention=0.0), steps=steps)
    assert torch.equal(out, run(wan, wan.patcher, steps=steps))
    assert magcache_log.text.count(f"{steps}-step schedule is too short to skip safely") == 1
    assert not plans(magcache_log.text)


# 9 -----------------------------------------------------------------------------------------
def _with_lora(patcher: Any) -> Any:
    """A weight patch as a LoRA loader applies it (ComfyUI's 'diff' patch format)."""
    m = patcher.clone()
    key = "diffusion_model.blocks.1.ffn.0.weight"
    weight = patcher.model.state_dict()[key]
    m.add_patches({key: (torch.full_like(weight, 0.01),)}, 1.0)
    return m


class ScaleBlock:
    """Another node's block patch: scales one block's output and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __deepcopy__(self, memo: dict) -> ScaleBlock:
        # ModelPatcher.clone() deep-copies model options; keep one counter for the test.
        return self

    def __call__(self, args: dict, extra: dict) -> dict:
        self.calls += 1
        out = extra["original_block"](args)
        return {**out, "img": out["img"] * 0.9}


def _with_block_patch(patcher: Any, patch: ScaleBlock) -> Any:
    m = patcher.clone()
    m.set_model_patch_replace(patch, "dit", "double_block", 2)
    return m


def test_9_lora_before_and_after(wan) -> None:
    reference = run(wan, _with_lora(wan.patcher))
    assert not torch.equal(reference, run(wan, wan.patcher))
    assert torch.equal(run(wan, magcache(_with_lora(wan.patcher), threshold=0.0)), reference)
    assert torch.equal(run(wan, _with_lora(magcache(wan.patcher, threshold=0.0))), reference)
    assert torch.isfinite(run(wan, _with_lora(magcache(wan.patcher)))).all()


def test_9_another_block_patch_before_and_after(wan, magcache_log) -> None:
    reference = run(wan, _with_block_patch(wan.patcher, ScaleBlock()))
    for order in ("before", "after"):
        for threshold in (0.0, 0.3):
            patch = ScaleBlock()
            if order == "before":
                model = magcache(_with_block_patch(wan.patcher, patch), threshold=threshold)
            else:
                model = _with_block_patch(magcache(wan.patcher, threshold=threshold), patch)
            out = run(wan, model)
            skipped, total = counts(magcache_log.text)[-1]
            assert patch.calls == total - skipped  # their patch runs on every computed call
            if threshold == 0.0:
                assert torch.equal(out, reference)
            else:
                assert skipped > 0 and torch.isfinite(out).all()


# 10 ----------------------------------------------------------------------------------------
class FakeControlNet(comfy.controlnet.ControlBase):
    """A ControlNet as ComfyUI's sampler sees one: residuals added after the first double block."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden

    def get_control(self, x_noisy: torch.Tensor, t: Any, cond: Any, batched_number: int, *args: Any) -> dict:
        tokens = (x_noisy.shape[-2] // 2) * (x_noisy.shape[-1] // 2)
        return {"input": [torch.full((x_noisy.shape[0], tokens, self.hidden), 0.05)], "output": [], "middle": []}

    def copy(self) -> FakeControlNet:
        return FakeControlNet(self.hidden)


def test_10_controlnet_switches_skipping_off_for_the_run(magcache_log) -> None:
    flux = tiny_models.build("flux", seed=0)
    hidden = flux.patcher.model.diffusion_model.hidden_size
    positive = [[t, {**e, "control": FakeControlNet(hidden)}] for t, e in flux.positive]
    plain = run(flux, flux.patcher, positive=positive)
    assert not torch.equal(plain, run(flux, flux.patcher))  # the control input does act
    out = run(flux, magcache(flux.patcher, curve="flux"), positive=positive)
    assert torch.equal(out, plain)
    assert magcache_log.text.count("skipping switched off for this run: ControlNet") == 1


# 11 ----------------------------------------------------------------------------------------
def test_11_memory_is_flat_over_twenty_runs_and_freed_after_errors(wan, monkeypatch) -> None:
    import psutil

    watch = ResidualWatch(monkeypatch)
    other = tiny_models.build("wan21_t2v", seed=2)
    models = [magcache(wan.patcher), magcache(other.patcher)]
    small = wan.latent
    large = torch.zeros(*wan.latent.shape[:-2], 12, 12)
    rss = []
    for i in range(20):
        out = run(wan, models[i % 2], latent=small if (i // 2) % 2 == 0 else large)
        assert torch.isfinite(out).all()
        assert watch.alive() == 0  # caches are freed when sampling ends
        rss.append(psutil.Process().memory_info().rss)
    growth = (max(rss[2:]) - rss[2]) / 2**20
    assert growth < 40, f"resident memory grew by {growth:.1f} MiB over 18 runs"

    class Boom:
        def __init__(self) -> None:
            self.calls = 0

        def __call__(self, args: dict, extra: dict) -> dict:
            self.calls += 1
            if self.calls == 5:
                raise RuntimeError("boom inside the model")
            return extra["original_block"](args)

    broken = magcache(wan.patcher).clone()
    broken.set_model_patch_replace(Boom(), "dit", "double_block", 1)
    with pytest.raises(RuntimeError, match="boom"):
        run(wan, broken)
    assert watch.alive() == 0
    assert torch.equal(run(wan, models[0]), run(wan, magcache(wan.patcher)))


# 12 ----------------------------------------------------------------------------------------
def test_12_cache_on_offload_device_gives_the_same_output(wan) -> None:
    compute = run(wan, magcache(wan.patcher, cache_device="compute"))
    offload = run(wan, magcache(wan.patcher, cache_device="offload"))
    assert torch.equal(compute, offload)


# 14 ----------------------------------------------------------------------------------------
@pytest.fixture
def dynamo_counters() -> Iterator[Any]:
    from torch._dynamo.utils import counters

    counters.clear()
    torch._dynamo.reset()
    yield counters
    torch._dynamo.reset()


def test_14_torch_compiled_model(wan, dynamo_counters, magcache_log, capsys) -> None:
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    steps = 30
    reference = run(wan, magcache(wan.patcher), steps=steps)
    compiled = magcache(wan.patcher).clone()
    set_torch_compile_wrapper(model=compiled, backend="eager")
    out = run(wan, compiled, steps=steps)
    skipped, total = counts(magcache_log.text)[-1]
    assert total == steps and skipped > 0
    assert torch.allclose(out, reference, atol=1e-4)
    frames = sum(dynamo_counters["frames"].values()) if "frames" in dynamo_counters else 0
    graphs = dynamo_counters["stats"].get("unique_graphs", 0)
    recompiles = sum(v for k, v in dynamo_counters["recompiles"].items()) if "recompiles" in dynamo_counters else 0
    with capsys.disabled():
        print(
            f"\n[torch.compile] 30-step run with MagCache: {graphs} unique graphs, {recompiles} recompilations, "
            f"{frames} frame events, {skipped}/{total} calls skipped"
        )


# 15 ----------------------------------------------------------------------------------------
def test_15_model_patches_between_blocks_switch_skipping_off(wan, magcache_log) -> None:
    """A ``set_model_double_block_patch`` (Uni3C, DiffSynth ControlNets) runs between blocks: honoured exactly."""

    def nudge(kwargs: dict[str, Any]) -> dict[str, Any]:
        return {**kwargs, "img": kwargs["img"] * 1.01}

    with_patch = wan.patcher.clone()
    with_patch.set_model_double_block_patch(nudge)
    plain = run(wan, with_patch)
    out = run(wan, magcache(with_patch))
    if "double_block" in magcache_log.text:  # this ComfyUI's Wan applies the patch (0.33 does; 0.8 and 0.3 do not)
        assert "skipping switched off for this run: model patches applied between blocks (double_block)" in (
            magcache_log.text
        )
        assert torch.equal(out, plain)
    else:
        assert counts(magcache_log.text)[-1][0] > 0


# 16 ----------------------------------------------------------------------------------------
def _node_output(out: Any) -> Any:
    """The first output of a node, V1 (a tuple) or V3 (a NodeOutput)."""
    return out.result[0] if hasattr(out, "result") else out[0]


def test_16_guidance_that_calls_the_model_again_never_shares_the_cache(magcache_log) -> None:
    """SkipLayerGuidance re-runs the cond with some of our block patches replaced: those calls compute in full."""
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT

    flux = tiny_models.build("flux")
    slg = _node_output(SkipLayerGuidanceDiT.execute(flux.patcher, 3.0, 0.0, 0.6, "1", "1", 0.0))
    exact = run(flux, magcache(slg, threshold=0.0, curve="flux"))
    assert torch.equal(exact, run(flux, slg))
    out = run(flux, magcache(slg, threshold=0.3, curve="flux"))
    assert torch.isfinite(out).all()
    variants = re.findall(r"(\d+) extra evaluation\(s\) with changed options", magcache_log.text)
    assert variants and int(variants[-1]) > 0
    skipped, total = counts(magcache_log.text)[-1]
    assert total == STEPS and skipped > 0


# 17 ----------------------------------------------------------------------------------------
def test_17_a_changed_noise_schedule_counts_in_the_very_run_that_uses_it(wan, magcache_log) -> None:
    """ModelSamplingSD3 after MagCache: the plan reads the shifted schedule; nothing carries to the next run."""
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    default_sampling = wan.patcher.model.model_sampling  # shift 8, Wan's default; read before any other shift
    patched = magcache(wan.patcher, retention=0.5)
    first = run(wan, patched)
    (shifted,) = ModelSamplingSD3().patch(patched, 1.0)
    run(wan, shifted)
    # Retention 0.5 of the shifted schedule: the plan line of that run was built on shift 1.0 sigmas.
    sampling = shifted.get_model_object("model_sampling")
    config = patched.model_options["transformer_options"][engine.KEY]
    sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", STEPS).tolist()
    expected = plan_run(config.curve, config.settings_for(sampling), sigmas, (0, 1))
    assert plans(magcache_log.text)[-1] == (expected.computed, expected.total)
    stale = plan_run(
        config.curve,
        config.settings_for(default_sampling),
        comfy.samplers.calculate_sigmas(default_sampling, "simple", STEPS).tolist(),
        (0, 1),
    )
    assert stale.skips != expected.skips, "the test needs a shift that changes the plan"
    # The same prompt gives the same output whatever ran before it, and its plan is again shift 8's.
    assert torch.equal(run(wan, patched), first)
    assert plans(magcache_log.text)[-1] == (stale.computed, stale.total)
