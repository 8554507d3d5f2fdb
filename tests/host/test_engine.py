"""MagCache on tiny random-weight models of every family the running ComfyUI can load, in the real host.

For each family: the model is loaded the way ComfyUI loads a user's file and
sampled with ComfyUI's own sampler and CFG, at the level the family table
gives it (the block stack, or the model's output). We check that threshold 0
changes nothing, that the blocks run on exactly the calls the plan says, that
outputs differ from the baseline only from the first skipped step on, and
that the model the user passed in is left exactly as it was. Families that
inject features between blocks must switch skipping off, with one log line.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import numpy as np
import pytest
import tiny_models
import torch
from conftest import BlockCounter

from comfyui_magcache.cache import magcache as engine
from comfyui_magcache.cache.policy import plan_run
from comfyui_magcache.calibration.curve import MagnitudeCurve, RoleCurve
from comfyui_magcache.hooks.families import Family, Level, blocks_of, family_of
from comfyui_magcache.nodes.magcache_node import MagCacheApply

STEPS = 12
#: Tiny models whose inputs add features between blocks: skipping must switch off, saying why.
SWITCHED_OFF = {
    "wan21_vace": "'vace_context' inputs add features between blocks",
    "wan22_s2v": "'audio_embed' inputs add features between blocks",
    "wan_dancer": "'audio_embed' inputs add features between blocks",
}


def family(tiny: tiny_models.TinyModel) -> Family:
    found = family_of(tiny.patcher.model.diffusion_model, tiny.patcher.model.model_config)
    assert found is not None, f"{tiny.family} has no family entry"
    return found


def servable(name: str) -> bool:
    """Whether the pack serves this tiny model (the family table says how, or why not).

    A model that fails to build counts as served: its tests then fail with the builder's error.
    """
    try:
        tiny = tiny_models.build(name)
    except Exception:
        return True
    found = family_of(tiny.patcher.model.diffusion_model, tiny.patcher.model.model_config)
    return found is not None and found.unsupported is None


SERVED = [f for f in tiny_models.available_families() if servable(f)]
NOT_SERVED = [f for f in tiny_models.available_families() if f not in SERVED]


def sample(tiny: tiny_models.TinyModel, patcher: Any, steps: int = STEPS, **kw: Any) -> tuple[torch.Tensor, list]:
    """Sample with euler/simple and return the output and every step's denoised prediction."""
    latent = comfy.sample.fix_empty_latent_channels(patcher, tiny.latent)
    noise = comfy.sample.prepare_noise(latent, 0)
    previews: list[torch.Tensor] = []
    out = comfy.sample.sample(
        patcher,
        noise,
        steps,
        tiny.cfg,
        kw.pop("sampler", "euler"),
        kw.pop("scheduler", "simple"),
        tiny.positive,
        tiny.negative,
        latent,
        seed=0,
        disable_pbar=True,
        callback=lambda step, x0, x, total: previews.append(flat(x0)),
        **kw,
    )
    return flat(out), previews


def flat(x: Any) -> torch.Tensor:
    """A copy of a latent as one tensor (LTX-2 and MiniMax H3 carry video and audio latents together)."""
    if isinstance(x, torch.Tensor):
        return x.clone()
    return torch.cat([t.flatten() for t in x.tensors])


def schedule_curve(patcher: Any, ratio: float = 0.99, steps: int = STEPS) -> MagnitudeCurve:
    """A curve on this model's own schedule where the residual shrinks 1% per step."""
    sig = comfy.samplers.calculate_sigmas(patcher.model.model_sampling, "simple", steps)[:-1]
    role = RoleCurve(tuple(float(s) for s in sig), tuple([ratio] * (len(sig) - 1)))
    return MagnitudeCurve(name="test-law", roles={"cond": role, "uncond": role})


def attach(tiny: tiny_models.TinyModel, curve: MagnitudeCurve, threshold: float, k: int = 2, **kw: Any) -> Any:
    patched = tiny.patcher.clone()
    fam = family(tiny)
    kw.setdefault("level", fam.level)
    engine.attach(patched, engine.MagCacheConfig(curve, fam, threshold, k, kw.pop("retention", 0.2), **kw))
    return patched


def all_blocks(tiny: tiny_models.TinyModel) -> list[torch.nn.Module]:
    """Every transformer block the model runs (refiners included), whatever level MagCache acts at."""
    dm = tiny.patcher.model.diffusion_model
    return [b for attr in tiny_models.BLOCK_LISTS[tiny.family] for b in blocks_of(dm, attr)]


def fingerprint(patcher: Any) -> tuple:
    """Everything a leftover of ours could hide in."""
    dm = patcher.model.diffusion_model
    return (
        repr(patcher.model_options),
        repr(patcher.wrappers),
        repr(getattr(patcher, "callbacks", None)),
        sorted(vars(patcher)),
        sorted(vars(patcher.model)),
        sorted(vars(dm)),
        sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in dm.modules()),
    )


def planned(log_text: str) -> tuple[int, int]:
    m = re.findall(r"MagCache: computing (\d+) of (\d+) steps", log_text)
    assert m, f"no plan line in the log:\n{log_text}"
    return int(m[-1][0]), int(m[-1][1])


@pytest.fixture(scope="module", params=SERVED)
def tiny(request: pytest.FixtureRequest) -> tiny_models.TinyModel:
    return tiny_models.build(request.param, seed=0)


@pytest.fixture(scope="module")
def baseline(tiny: tiny_models.TinyModel) -> tuple[torch.Tensor, list, int]:
    counter = BlockCounter(all_blocks(tiny))
    out, previews = sample(tiny, tiny.patcher)
    counter.close()
    return out, previews, counter.calls


def test_threshold_zero_is_bit_identical(tiny, baseline) -> None:
    out, _ = sample(tiny, attach(tiny, schedule_curve(tiny.patcher), threshold=0.0))
    assert torch.equal(out, baseline[0])


def test_block_stack_runs_exactly_where_the_plan_says(tiny, baseline, magcache_log) -> None:
    before = fingerprint(tiny.patcher)
    patched = attach(tiny, schedule_curve(tiny.patcher), threshold=0.15, k=2)
    counter = BlockCounter(all_blocks(tiny))
    out, previews = sample(tiny, patched)
    counter.close()
    computed, total = planned(magcache_log.text)
    assert total == STEPS
    assert 0 < computed < total, "the test curve must call for some skips"
    assert "check failed" not in magcache_log.text
    if tiny.family in SWITCHED_OFF:
        # Features added between blocks: skipping is switched off, loudly, and nothing changes.
        assert f"skipping switched off for this run: {SWITCHED_OFF[tiny.family]}" in magcache_log.text
        assert counter.calls == baseline[2]
        assert torch.equal(out, baseline[0])
        return
    # Every computed model call runs every block once per batch; skipped calls run none.
    per_call = baseline[2] // STEPS
    assert baseline[2] == per_call * STEPS
    assert counter.calls == computed * per_call
    summary = re.findall(r"skipped the (?:block stack|whole model) on (\d+) of (\d+) model calls", magcache_log.text)
    assert summary[-1] == (str(total - computed), str(total))
    # Identical until the first skipped step, different from it on.
    diffs = [not torch.equal(a, b) for a, b in zip(previews, baseline[1])]
    first = diffs.index(True)
    assert not any(diffs[:first])
    assert first >= 1 and np.isfinite(out.numpy()).all()
    # The plan's first skip is exactly where the outputs part.
    plan = plan_run(
        patched.model_options["transformer_options"][engine.KEY].curve,
        patched.model_options["transformer_options"][engine.KEY].settings_for(tiny.patcher.model.model_sampling),
        [float(s) for s in comfy.samplers.calculate_sigmas(tiny.patcher.model.model_sampling, "simple", STEPS)],
        (0, 1),
    )
    assert plan.computed == computed
    assert plan.skips.index(True) == first
    # The model the user passed in is exactly as it was, and still samples the same.
    assert fingerprint(tiny.patcher) == before
    again, _ = sample(tiny, tiny.patcher)
    assert torch.equal(again, baseline[0])


def test_node_with_defaults_picks_a_curve_and_runs(tiny, magcache_log) -> None:
    (patched,) = MagCacheApply.execute(
        tiny.patcher,
        curve="auto",
        threshold=-1,
        max_consecutive_skips=-1,
        retention_ratio=-1,
        start=0.0,
        end=1.0,
        cache_device="compute",
    ).result
    out, _ = sample(tiny, patched, steps=STEPS)
    assert torch.isfinite(out).all()
    text = magcache_log.text
    if family(tiny).curve is None:  # no curve fits (v-prediction, EDM): left alone, saying to calibrate
        assert patched is tiny.patcher and "run MagCache Calibrate once" in text
        return
    assert patched is not tiny.patcher
    assert "MagCache: curve '" in text and "computing" in text
    assert ("stands in for" in text) == family(tiny).stand_in
    assert "check failed" not in text


def test_models_the_pack_does_not_serve_are_left_alone_saying_why(magcache_log) -> None:
    """Every tiny model of this ComfyUI is served; an unknown model (and any family the table marks
    unsupported) is returned as it came, with a message naming it."""
    assert not NOT_SERVED, f"tiny models the pack does not serve: {NOT_SERVED}"
    unknown = SimpleNamespace(model=SimpleNamespace(diffusion_model=torch.nn.Linear(2, 2), model_config=object()))
    (patched,) = MagCacheApply.execute(
        unknown,
        curve="auto",
        threshold=-1,
        max_consecutive_skips=-1,
        retention_ratio=-1,
        start=0.0,
        end=1.0,
        cache_device="compute",
    ).result
    assert patched is unknown
    assert "Linear (model config object) is a model this version of the pack does not know" in magcache_log.text
    assert "the model is left unchanged" in magcache_log.text


#: family -> (module that receives the block stack's output first, how the first block receives its input)
HEADS: dict[str, tuple[str, int | str]] = {
    "wan21_t2v": ("head", 0),
    "wan21_i2v": ("head", 0),
    "wan22_ti2v_5b": ("head", 0),
    "hunyuan_video": ("final_layer", "img"),
    "hunyuan_video15": ("final_layer", "img"),
    "flux": ("final_layer", "img"),
    "flux_kontext": ("final_layer", "img"),
    "flux2": ("final_layer", "img"),
    "longcat_image": ("final_layer", "img"),
    "hunyuan_image21": ("final_layer", "img"),
    "wan21_camera": ("head", 0),
    "wan21_humo": ("head", 0),
    "wan_scail": ("head", 0),
    "chroma": ("final_layer", "img"),
    "qwen_image": ("norm_out", "hidden_states"),
    "ltxv": ("norm_out", 0),
    "mochi": ("final_layer", 0),
    "sd3": ("final_layer", 1),
    "hunyuan_dit": ("final_layer", 0),
}


class Tap:
    """Clones the tensor a module receives (before the module may change it in place)."""

    def __init__(self, module: torch.nn.Module, where: int | str) -> None:
        self.where = where
        self.seen: list[torch.Tensor] = []
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        self.seen.append((args[self.where] if isinstance(self.where, int) else kwargs[self.where]).detach().clone())


def test_skipped_calls_add_the_cached_residual_exactly(tiny) -> None:
    """Independent of the engine: replay every model call on the plain model and rebuild x + r by hand."""
    if family(tiny).level is not Level.BLOCK or tiny.family in SWITCHED_OFF:
        pytest.skip(f"{tiny.family} is not cached at the block level (or its skipping is switched off)")
    if tiny.family not in HEADS:
        pytest.skip(f"no head module listed for {tiny.family}")
    head_name, first_input = HEADS[tiny.family]
    dm = tiny.patcher.model.diffusion_model
    head = getattr(dm, head_name)
    first = all_blocks(tiny)[0]
    calls: list[tuple[tuple, dict]] = []

    def capture(executor: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append((args, dict(kwargs)))
        return executor(*args, **kwargs)

    patched = attach(tiny, schedule_curve(tiny.patcher), threshold=0.15, k=2)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test-capture", capture)
    head_tap = Tap(head, 0)
    sample_and_mark = BlockCounter([first])
    head_counts: list[int] = []
    head_hook = head.register_forward_pre_hook(lambda *a: head_counts.append(sample_and_mark.calls))
    sample(tiny, patched)
    head_hook.remove()
    sample_and_mark.close()
    head_tap.handle.remove()
    # Which calls ran the stack: the first block's count moved since the previous head call.
    ran = [b > a for a, b in zip([0, *head_counts[:-1]], head_counts)]
    assert len(ran) == len(calls) == STEPS and not all(ran)
    # Replay each call on the plain model (no MagCache, no patches) and tap the same modules.
    replay_head, replay_first = Tap(head, 0), Tap(first, first_input)
    for args, kwargs in calls:
        args = list(args)
        options = {k: v for k, v in args[5].items() if k not in (engine.KEY, "patches_replace", "wrappers")}
        args[5] = options
        tiny.patcher.model.apply_model(*args, **kwargs)
    replay_head.handle.remove()
    replay_first.handle.remove()
    residual = None
    for j, computed in enumerate(ran):
        x_j, h_j = replay_first.seen[j], replay_head.seen[j]
        if computed:
            torch.testing.assert_close(head_tap.seen[j], h_j, rtol=0, atol=1e-6)
            residual = h_j - x_j
        else:
            torch.testing.assert_close(head_tap.seen[j], x_j + residual, rtol=1e-5, atol=1e-5)
