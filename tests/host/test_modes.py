"""The speed target, the uniform and adaptive schedules, the reuse estimators and CFG-Cache in the real host.

On tiny Wan 2.1, Flux and Qwen-Image models (the families the issue names),
sampled with ComfyUI's own sampler: a run asked to save nothing is
bit-identical to the plain model in every mode; a run asked for 2x runs the
block stack on exactly the calls its plan (shown in the log) computes, and
its output parts from the plain run exactly at the plan's first skip; the
adaptive schedule runs the stack exactly as often as its summary says; and
CFG-Cache's branch count is what the summary reports.
"""

from __future__ import annotations

import re

import pytest
import tiny_models
import torch
from conftest import BlockCounter
from test_engine import STEPS, all_blocks, family, sample, schedule_curve
from torch.utils._python_dispatch import TorchDispatchMode

from comfyui_magcache.cache import magcache as engine
from comfyui_magcache.cache.config import Reuse, When
from comfyui_magcache.cache.planner import ErrorModel

FAMILIES = [f for f in ("wan21_t2v", "flux", "qwen_image") if f in tiny_models.available_families()]
MODES = [
    (When.TARGET, Reuse.PLAIN),
    (When.TARGET, Reuse.SCALED),
    (When.TARGET, Reuse.EXTRAPOLATED),
    (When.TARGET, Reuse.LINEAR),
    (When.TARGET, Reuse.QUADRATIC),
    (When.TARGET, Reuse.SPECTRAL),
    (When.UNIFORM, Reuse.EXTRAPOLATED),
    (When.UNIFORM, Reuse.SPECTRAL),
    (When.ADAPTIVE, Reuse.PLAIN),
]


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request: pytest.FixtureRequest) -> tiny_models.TinyModel:
    return tiny_models.build(request.param, seed=0)


@pytest.fixture(scope="module")
def baseline(tiny: tiny_models.TinyModel) -> tuple[torch.Tensor, list, int]:
    counter = BlockCounter(all_blocks(tiny))
    out, previews = sample(tiny, tiny.patcher)
    counter.close()
    return out, previews, counter.calls


def attach(tiny: tiny_models.TinyModel, when: When, reuse: Reuse, speed: float, cfg_cache: bool = False):
    """The model with MagCache in this mode; the speed target costs the forecast the run uses (as the node does)."""
    patched = tiny.patcher.clone()
    fam = family(tiny)
    config = engine.MagCacheConfig(
        schedule_curve(tiny.patcher), fam, 0.0, 2, 0.2, level=fam.level, when=when, speed=speed, reuse=reuse,
        cfg_cache=cfg_cache, error_model=ErrorModel.FORECAST,
    )
    engine.attach(patched, config)
    return patched


def plan_pattern(log_text: str) -> str:
    found = re.findall(r"computed: ([#.]+)", log_text)
    assert found, f"no plan line in the log:\n{log_text}"
    return found[-1]


@pytest.mark.parametrize(("when", "reuse"), MODES, ids=lambda m: m.name.lower())
@pytest.mark.parametrize("cfg_cache", [False, True], ids=["both_branches", "cfg_cache"])
def test_asking_for_no_speedup_is_bit_identical(tiny, baseline, when, reuse, cfg_cache, magcache_log) -> None:
    out, _ = sample(tiny, attach(tiny, when, reuse, 1.0, cfg_cache))
    assert torch.equal(out, baseline[0])
    assert plan_pattern(magcache_log.text) == "#" * STEPS


PLANNED = [m for m in MODES if m[0] is not When.ADAPTIVE]


@pytest.mark.parametrize(("when", "reuse"), PLANNED, ids=lambda m: m.name.lower())
def test_the_stack_runs_exactly_where_the_plan_says(tiny, baseline, when, reuse, magcache_log) -> None:
    counter = BlockCounter(all_blocks(tiny))
    out, previews = sample(tiny, attach(tiny, when, reuse, 2.0))
    counter.close()
    pattern = plan_pattern(magcache_log.text)
    assert pattern.count("#") == STEPS // 2  # 2x: half the calls
    per_call = baseline[2] // STEPS
    assert counter.calls == pattern.count("#") * per_call
    diffs = [not torch.equal(a, b) for a, b in zip(previews, baseline[1])]
    assert diffs.index(True) == pattern.index(".")
    assert not any(diffs[: pattern.index(".")])
    assert torch.isfinite(out).all()
    assert "check failed" not in magcache_log.text


class _HiddenSizedAllocations(TorchDispatchMode):
    """Counts the tensors that operations create (in-place ones excluded) with at least ``numel`` elements."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.count = numel, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func._schema.name.endswith("_") and isinstance(out, torch.Tensor) and out.numel() >= self.numel:
            self.count += 1
        return out


def test_a_forecast_allocates_on_a_skipped_call_what_plain_reuse_does(tiny, baseline) -> None:
    """A skip adds its forecast's six terms into one new tensor: the run allocates no more than with plain reuse.

    Counted over the whole run (the same uniform plan, so the same computed calls), every tensor at least as
    large as the smallest hidden state; the only difference between the runs is the skipped calls' sum.
    """
    numel = min(t.numel() for t in baseline[1]) if baseline[1] else 1
    counts = []
    for reuse in (Reuse.PLAIN, Reuse.SPECTRAL):
        model = attach(tiny, When.UNIFORM, reuse, 2.0)
        with _HiddenSizedAllocations(numel) as mode:
            out, _ = sample(tiny, model)
        assert torch.isfinite(out).all()
        counts.append(mode.count)
    assert counts[0] > 0
    assert counts[1] == counts[0], counts


def test_the_summary_says_what_the_cache_held_and_each_forecast_keeps_its_history(tiny, magcache_log) -> None:
    """Plain reuse holds one residual per batch, the line two, the parabola three, the Chebyshev fit up to six
    (the uniform 2x plan of 12 calls computes six): the held bytes the summary reports scale exactly so."""
    held = {}
    for reuse in (Reuse.PLAIN, Reuse.LINEAR, Reuse.QUADRATIC, Reuse.SPECTRAL):
        magcache_log.clear()
        sample(tiny, attach(tiny, When.UNIFORM, reuse, 2.0))
        found = re.findall(r"the cache held up to ([0-9.]+) (KiB|MiB|GiB)", magcache_log.text)
        assert found, magcache_log.text
        number, unit = found[-1]
        held[reuse] = float(number) * {"KiB": 1, "MiB": 2**10, "GiB": 2**20}[unit]
    assert held[Reuse.PLAIN] > 0
    for reuse, times in ((Reuse.LINEAR, 2), (Reuse.QUADRATIC, 3), (Reuse.SPECTRAL, 6)):
        assert held[reuse] == pytest.approx(times * held[Reuse.PLAIN], rel=0.02), held


def test_adaptive_runs_the_stack_as_often_as_its_summary_says(tiny, baseline, magcache_log) -> None:
    counter = BlockCounter(all_blocks(tiny))
    out, _ = sample(tiny, attach(tiny, When.ADAPTIVE, Reuse.PLAIN, 2.0))
    counter.close()
    skipped, total = map(int, re.findall(r"on (\d+) of (\d+) model calls", magcache_log.text)[-1])
    assert total == STEPS and 0 < skipped < STEPS
    assert counter.calls == (total - skipped) * (baseline[2] // STEPS)
    assert torch.isfinite(out).all()


def test_cfg_cache_runs_one_branch_on_alternate_computed_calls(tiny, baseline, magcache_log) -> None:
    out, _ = sample(tiny, attach(tiny, When.TARGET, Reuse.PLAIN, 2.0, cfg_cache=True))
    text = magcache_log.text
    assert torch.isfinite(out).all()
    if tiny.cfg == 1.0:
        assert "CFG-Cache" not in text.split("computed:")[-1]
        return
    found = re.findall(r"conditional branch on (\d+) call\(s\): (\d+) of (\d+) branch runs", text)
    assert found, text
    cond_only, runs, total = map(int, found[-1])
    pattern = plan_pattern(text)
    assert total == 2 * STEPS
    assert cond_only > 0
    assert runs == 2 * pattern.count("#") - cond_only
    assert runs <= total / 2 + 2  # the speed asked for, within rounding of the budget


@pytest.mark.parametrize("scheduler", ["simple", "normal", "beta"])
def test_retention_computes_that_fraction_of_the_steps_at_every_step_count(scheduler) -> None:
    """Retention 0.2 computes the calls that start in the first 20% of the schedule: 10 of 50, 6 of 30, 7 of 33.

    Before, a float32 sigma on the bound counted as above it (11 of 50), and
    schedulers that put the "20%" call a model timestep early made it 7 of 30.
    """
    import comfy.samplers

    from comfyui_magcache.cache.policy import plan_run

    tiny = tiny_models.build("wan21_t2v", seed=0)
    sampling = tiny.patcher.model.model_sampling
    config = engine.MagCacheConfig(schedule_curve(tiny.patcher), family(tiny), 100.0, 1000, 0.2)
    wrong = {}
    for steps in range(10, 101):
        sigmas = comfy.samplers.calculate_sigmas(sampling, scheduler, steps)
        plan = plan_run(config.curve, config.settings_for(sampling), [float(s) for s in sigmas], (0, 1))
        retained = plan.skips.index(True)
        if scheduler == "simple":
            expected = -(-steps // 5)  # ceil(0.2 * steps)
        else:  # other spacings: the calls whose place on the schedule is below 20%
            expected = sum(engine.sigma_to_percent(sampling, float(s)) < 0.2 - 0.0015 for s in sigmas[:-1])
        if retained != max(expected, 1):
            wrong[steps] = (retained, expected)
    assert not wrong
