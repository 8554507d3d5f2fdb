"""MagCache under ComfyUI's MultiGPU CFG split (ComfyUI 0.33), driven as far as a CPU-only host allows.

With "MultiGPU CFG Split" ComfyUI runs the cond and the uncond batch of every
model evaluation at the same time, one worker thread per device, each on its
own deep clone of the model. MagCache's ``APPLY_MODEL`` wrapper and its block
patches then run in those threads, concurrently, while its ``OUTER_SAMPLE`` and
``CALC_COND_BATCH`` wrappers stay in the sampler's thread. These tests show the
per-thread batch state and the shared residual cache hold up: the batches
really overlap in two pool threads with MagCache's patches in them; threshold 0
changes nothing; with skipping on, the output, the block calls and the summary
line are exactly those of the same settings on one device; a second run gives
the same again.

What is real (ComfyUI 0.33's own code, unpatched):

* the node: ``MultiGPUCFGSplitNode.execute`` -> ``create_multigpu_deepclones``
  -> ``ModelPatcher.deepclone_multigpu``, which reloads the model from the
  loader's ``cached_patcher_init`` factory. The tiny Wan 2.1 is saved to a
  safetensors file and loaded with ``comfy.sd.load_diffusion_model`` (the
  UNETLoader's function), which registers that factory itself; later splits
  reuse the loaded deep clone (``reuse_loaded=True``), as a re-run node does;
* sampling with ``comfy.sample.sample`` (euler, cfg 5): ``prepare_sampling``
  (``match_multigpu_clones``, ``load_models_gpu`` loading the clone on its
  device), ``prepare_model_patcher_multigpu_clones``, the persistent
  ``MultiGPUThreadPool`` (one worker per device, shut down at the end),
  ``_calc_cond_batch_multigpu`` (scheduling one cond per device, per-batch
  ``transformer_options`` with ``multigpu_thread_device``,
  ``cast_transformer_options``, ``apply_model`` on the device's clone, results
  gathered in the sampler's thread).

What is not:

* two distinct devices. The host has no GPU, and ComfyUI's ``--cpu`` mode
  enumerates one device, so ``comfy.model_management.get_all_torch_devices``
  is monkeypatched, only while the node runs, to return ``cpu`` and ``cpu:0``.
  These compare unequal and hash differently, so ComfyUI keeps a clone, a
  queue and a worker thread for each; but both are the CPU: every
  ``.to(device)`` (ComfyUI's, and the engine's move of a cached residual to
  the batch's device) copies nothing, and CUDA's per-thread current device,
  streams and asynchronous copies are not exercised. Nor, for the same
  reason, can a device mismatch show when a batch reuses residuals computed
  on the other device (when the batches' make-up changes mid-run, e.g. a
  prompt with a timestep range starts): here every residual is in CPU memory;
* the node inside a server graph (it is called directly), memory-limited
  batching (the CPU reports plenty free), ControlNet and hook keyframes per
  device, and ``Guider_DualModel``.

Two conditioning sets: the tiny model's own, which one device batches
together (cond + uncond in one call) while MultiGPU splits them, so the two
differ by float rounding of batch 2 vs batch 1 even without MagCache; and one
whose negative prompt has 3 tokens, which ComfyUI never batches with the
8-token positive (``CONDCrossAttn.can_concat`` refuses to pad to more than 4x),
so one device also runs one batch per cond and the outputs can be compared
bit for bit.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import comfy.model_management
import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import comfy.sd
import comfy.utils
import pytest
import tiny_models
import torch
from comfy_host import ROOT, comfyui_version
from conftest import BlockCounter

from comfyui_magcache.cache import magcache as engine
from comfyui_magcache.calibration.curve import MagnitudeCurve, RoleCurve
from comfyui_magcache.hooks import sites
from comfyui_magcache.hooks.families import family_of
from comfyui_magcache.hooks.host import arg

if importlib.util.find_spec("comfy.multigpu") is None:
    pytest.skip(
        f"ComfyUI {comfyui_version(ROOT) if ROOT else '?'} has no MultiGPU CFG split "
        "(comfy/multigpu.py and its node are in 0.33, not in 0.8.0 or 0.3.64)",
        allow_module_level=True,
    )

STEPS = 12
FAMILY = "wan21_t2v"
#: The device ComfyUI's --cpu mode gives every model, and a second "device" that is the same CPU.
MAIN = torch.device("cpu")
EXTRA = torch.device("cpu", 0)
SUMMARY = re.compile(r"skipped the block stack on (\d+) of (\d+) model calls")
PLAN = re.compile(r"MagCache: computing (\d+) of (\d+) steps")
#: Conditioning sets: the tiny model's own (one device batches them), and one it never batches.
CONDS = ("batchable", "separate")


# ------------------------------------------------------------------ helpers --


def _two_cpus(exclude_current: bool = False) -> list[torch.device]:
    """Stand-in for ``get_all_torch_devices`` on a two-GPU machine: the CPU, twice over."""
    devices = [MAIN, EXTRA]
    if exclude_current:
        devices.remove(comfy.model_management.get_torch_device())
    return devices


def _drop_dead_loaded_models() -> None:
    """Forget loaded-model entries whose patcher was garbage-collected by earlier tests.

    ComfyUI 0.33's ``create_multigpu_deepclones`` reads ``.model`` on every entry of
    ``loaded_models()``, which lists ``None`` for such entries and fails the split. In a
    server the executor keeps its patchers alive; in a test session models come and go.
    """
    gc.collect()
    mm = comfy.model_management
    mm.current_loaded_models[:] = [m for m in mm.current_loaded_models if m.model is not None]


def split(model: Any) -> Any:
    """Apply the "MultiGPU CFG Split" node (max_gpus 2) as a workflow would, with two devices to split over."""
    from comfy_extras.nodes_multigpu import MultiGPUCFGSplitNode

    _drop_dead_loaded_models()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(comfy.model_management, "get_all_torch_devices", _two_cpus)
        (patched,) = MultiGPUCFGSplitNode.execute(model, 2).result
    clones = patched.get_additional_models_with_key("multigpu")
    assert [c.load_device for c in clones] == [EXTRA] and clones[0].is_multigpu_base_clone
    assert clones[0].model is not patched.model, "the clone must be a model of its own"
    return patched


def clones_of(patcher: Any) -> list[Any]:
    """The BaseModels a split run uses: the main one, then each device's deep clone."""
    return [patcher.model, *(c.model for c in patcher.get_additional_models_with_key("multigpu"))]


def conditioning(tiny: tiny_models.TinyModel, conds: str) -> tuple[list, list]:
    if conds == "batchable":
        return tiny.positive, tiny.negative
    text = torch.randn((1, 3, 4096), generator=torch.Generator().manual_seed(3))
    return tiny.positive, [[text, {}]]


def schedule_curve(patcher: Any, ratio: float = 0.99) -> MagnitudeCurve:
    """A curve on this model's own schedule where the residual shrinks 1% per step (as in test_engine)."""
    sig = comfy.samplers.calculate_sigmas(patcher.model.model_sampling, "simple", STEPS)[:-1]
    role = RoleCurve(tuple(float(s) for s in sig), tuple([ratio] * (len(sig) - 1)))
    return MagnitudeCurve(name="test-law", roles={"cond": role, "uncond": role})


def with_magcache(tiny: tiny_models.TinyModel, model: Any, threshold: float) -> Any:
    """A clone of ``model`` with MagCache attached (K 2, retention 0.2)."""
    patched = model.clone()
    family = family_of(tiny.patcher.model.diffusion_model, tiny.patcher.model.model_config)
    assert family is not None
    engine.attach(patched, engine.MagCacheConfig(schedule_curve(tiny.patcher), family, threshold, 2, 0.2))
    return patched


@dataclasses.dataclass
class Result:
    out: torch.Tensor
    log: str
    block_calls: int = 0  # forward calls of every block of every model the run used

    @property
    def summary(self) -> tuple[str, str]:
        found = SUMMARY.findall(self.log)
        assert len(found) == 1, f"expected one summary line:\n{self.log}"
        return found[0]

    @property
    def plan(self) -> tuple[int, int]:
        (found,) = PLAN.findall(self.log)
        return int(found[0]), int(found[1])


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def pack_log() -> Iterator[_Lines]:
    """The pack's log lines while the block runs (module-scoped fixtures cannot use caplog)."""
    logger = logging.getLogger("comfyui-magcache")
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def sample(tiny: tiny_models.TinyModel, patcher: Any, conds: str) -> Result:
    """Sample with euler/simple and cfg 5 in this thread: the output, the pack's log lines and the block calls."""
    positive, negative = conditioning(tiny, conds)
    latent = comfy.sample.fix_empty_latent_channels(patcher, tiny.latent)
    noise = comfy.sample.prepare_noise(latent, 0)
    counter = BlockCounter([b for m in clones_of(patcher) for b in m.diffusion_model.blocks])
    try:
        with pack_log() as lines:
            out = comfy.sample.sample(
                patcher,
                noise,
                STEPS,
                tiny.cfg,
                "euler",
                "simple",
                positive,
                negative,
                latent,
                seed=0,
                disable_pbar=True,
            )
    finally:
        counter.close()
    text = "\n".join(lines.lines)
    assert "check failed" not in text and "computed off-plan" not in text, text
    return Result(out.clone(), text, counter.calls)


@dataclasses.dataclass
class ApplyCall:
    """One ``apply_model`` call as ComfyUI's ``APPLY_MODEL`` wrapper chain sees it."""

    thread: threading.Thread
    device: torch.device | None
    roles: tuple[int, ...]
    model: Any
    start: float


def record_apply_model(patcher: Any, calls: list[ApplyCall]) -> None:
    """Add an ``APPLY_MODEL`` wrapper (ComfyUI's own extension point) noting thread, device and batch."""

    def wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
        options = arg("apply_model", "transformer_options", args, kwargs) or {}
        device = options.get("multigpu_thread_device")
        roles = tuple(options.get("cond_or_uncond") or ())
        calls.append(ApplyCall(threading.current_thread(), device, roles, executor.class_obj, time.perf_counter()))
        return executor(*args, **kwargs)

    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test-threads", wrapper)


# ----------------------------------------------------------------- fixtures --


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tiny_models.TinyModel]:
    """The tiny Wan 2.1, saved to a file and loaded as UNETLoader loads it (so ComfyUI can deep-clone it)."""
    built = tiny_models.build(FAMILY, seed=0)
    path = tmp_path_factory.mktemp("multigpu") / f"{FAMILY}.safetensors"
    comfy.utils.save_torch_file(built.patcher.model.diffusion_model.state_dict(), str(path))
    patcher = comfy.sd.load_diffusion_model(str(path))
    assert patcher.cached_patcher_init is not None and patcher.load_device == MAIN
    yield dataclasses.replace(built, patcher=patcher)
    # The deep clones stay loaded on the extra "device", as they would on a GPU: unload them.
    comfy.model_management.free_memory(1e30, EXTRA)


class OneDevice(dict):
    """Runs on one device, by conditioning set and MagCache threshold (None: no MagCache), made on first use."""

    def __init__(self, tiny: tiny_models.TinyModel) -> None:
        super().__init__()
        self.tiny = tiny

    def __missing__(self, key: tuple[str, float | None]) -> Result:
        conds, threshold = key
        model = self.tiny.patcher if threshold is None else with_magcache(self.tiny, self.tiny.patcher, threshold)
        self[key] = sample(self.tiny, model, conds)
        return self[key]


@pytest.fixture(scope="module")
def one_device(tiny: tiny_models.TinyModel) -> OneDevice:
    return OneDevice(tiny)


# -------------------------------------------------------------------- tests --


def test_cond_and_uncond_run_at_once_in_pool_threads_with_magcaches_patches_in_them(
    tiny: tiny_models.TinyModel, one_device: OneDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each batch runs in its own pool thread, on its own device's clone, both inside the blocks at once.

    A barrier in the first block of each model makes every computed evaluation
    wait until both batches are inside the block stack: were they run one after
    the other, it would time out. MagCache's block patches are spied on to show
    where they ran, skipping included. The barrier forces the overlap a race
    needs, and the output is still exactly the one-device output.
    """
    model = split(with_magcache(tiny, tiny.patcher, 0.15))
    models = clones_of(model)
    assert len(models) == 2
    applies: list[ApplyCall] = []
    record_apply_model(model, applies)

    barrier = threading.Barrier(2, timeout=30)
    entered: list[tuple[int, int]] = []  # (thread, which model) at every first-block call

    def rendezvous(which: int) -> Any:
        def hook(*_: Any) -> None:
            entered.append((threading.get_ident(), which))
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                raise AssertionError("the cond and uncond batches were not inside the block stack at once") from None

        return hook

    patch_calls: list[tuple[int, bool, bool, bool, tuple[int, ...]]] = []  # thread, first, last, skipping, roles
    original = sites._BlockPatch.__call__

    def spy(self: Any, args: dict[str, Any], extra: dict[str, Any]) -> Any:
        out = original(self, args, extra)
        batch = self.hooks.batch
        assert batch is not None, "a MagCache block patch ran without its thread's batch"
        patch_calls.append((threading.get_ident(), self.first, self.last, batch.skipping, batch.roles))
        return out

    monkeypatch.setattr(sites._BlockPatch, "__call__", spy)
    handles = [m.diffusion_model.blocks[0].register_forward_pre_hook(rendezvous(i)) for i, m in enumerate(models)]
    try:
        result = sample(tiny, model, "separate")
    finally:
        for h in handles:
            h.remove()

    main = threading.get_ident()
    computed, total = result.plan
    assert total == STEPS and 0 < computed < total
    # Two pool threads (ComfyUI's MultiGPUThreadPool workers), neither the sampler's thread.
    workers = {c.thread for c in applies}
    assert len(workers) == 2 and main not in {t.ident for t in workers}
    assert all("_worker_loop" in t.name and t.daemon for t in workers), [t.name for t in workers]
    # Each thread always has the same device, role and model: ComfyUI's scheduler puts the
    # cond on the main device's model and the uncond on the extra device's clone.
    placed = {t: {(c.device, c.roles, c.model) for c in applies if c.thread is t} for t in workers}
    assert all(len(v) == 1 for v in placed.values()), placed
    where = {t.ident: next(iter(v)) for t, v in placed.items()}
    assert sorted(where.values(), key=lambda v: v[1]) == [(MAIN, (0,), models[0]), (EXTRA, (1,), models[1])]
    # One call per thread per evaluation.
    assert len(applies) == 2 * STEPS
    ordered = sorted(applies, key=lambda c: c.start)
    assert all(ordered[2 * i].thread is not ordered[2 * i + 1].thread for i in range(STEPS))
    # Every computed evaluation: both threads in their own model's first block, through the barrier together.
    assert len(entered) == 2 * computed
    assert all(models[which] is where[thread][2] for thread, which in entered)
    # MagCache's block patches ran only in the pool threads, each on its own thread's batch, skipping included.
    assert {c[0] for c in patch_calls} == set(where)
    blocks = len(models[0].diffusion_model.blocks)
    for thread, (_, roles, _) in where.items():
        mine = [c for c in patch_calls if c[0] == thread]
        assert {c[4] for c in mine} == {roles}
        firsts = [c for c in mine if c[1]]
        assert len(mine) == blocks * STEPS and len(firsts) == STEPS
        assert sum(c[3] for c in firsts) == total - computed, "every skipped evaluation skipped in this thread"
        assert sum(1 for c in mine if c[2] and not c[3]) == computed, "a residual stored on every computed one"
    # Forced overlap and all: exactly the one-device result.
    reference = one_device["separate", 0.15]
    assert result.summary == reference.summary
    assert torch.equal(result.out, reference.out)


@pytest.mark.parametrize("conds", CONDS)
def test_threshold_zero_is_bit_identical_to_multigpu_without_magcache(
    tiny: tiny_models.TinyModel, one_device: OneDevice, conds: str
) -> None:
    """Threshold 0 skips nothing: MagCache's hooks in the pool threads must change no bit."""
    plain = sample(tiny, split(tiny.patcher), conds)
    cached = sample(tiny, split(with_magcache(tiny, tiny.patcher, 0.0)), conds)
    assert cached.summary == ("0", str(STEPS))
    assert torch.equal(cached.out, plain.out)
    if conds == "separate":  # one batch per cond on one device too: MultiGPU itself changes nothing
        assert torch.equal(plain.out, one_device[conds, None].out)


@pytest.mark.parametrize("order", ["magcache, then split", "split, then magcache"])
def test_skipping_under_multigpu_is_exactly_skipping_on_one_device(
    tiny: tiny_models.TinyModel, one_device: OneDevice, order: str
) -> None:
    """Same plan, same residuals, same output: the per-thread batches and the shared cache do not race.

    Conds that one device also runs as separate batches make the comparison
    exact. The node may come before or after MagCache in the chain: ComfyUI
    re-clones the main model per device when sampling starts.
    """
    if order == "magcache, then split":
        model = split(with_magcache(tiny, tiny.patcher, 0.15))
    else:
        model = with_magcache(tiny, split(tiny.patcher), 0.15)
    result = sample(tiny, model, "separate")
    reference = one_device["separate", 0.15]
    computed, total = result.plan
    assert result.plan == reference.plan and 0 < computed < total
    assert result.summary == reference.summary == (str(total - computed), str(total))
    # Both batches of every computed evaluation, through every block, on one device or on two.
    assert result.block_calls == reference.block_calls == 2 * computed * len(tiny.patcher.model.diffusion_model.blocks)
    assert torch.equal(result.out, reference.out)
    assert not torch.equal(result.out, one_device["separate", None].out), "the test curve must skip something"


def test_split_batch_matches_one_device_up_to_batch_rounding(
    tiny: tiny_models.TinyModel, one_device: OneDevice
) -> None:
    """Conds one device batches together: MultiGPU splits them, and caches per cond what one device caches per pair.

    The plan and the counts are the same; the outputs differ only by the float
    rounding of batch 1 vs batch 2, which the plain runs show as well.
    """
    plain = sample(tiny, split(tiny.patcher), "batchable")
    result = sample(tiny, split(with_magcache(tiny, tiny.patcher, 0.15)), "batchable")
    reference = one_device["batchable", 0.15]
    assert result.plan == reference.plan and result.summary == reference.summary
    rounding = (plain.out - one_device["batchable", None].out).abs().max().item()
    assert 0 < rounding < 1e-4, "batch 1 vs batch 2 on the CPU: a rounding difference, no more"
    effect = (reference.out - one_device["batchable", None].out).abs().max().item()
    deviation = (result.out - reference.out).abs().max().item()
    assert deviation <= 10 * rounding and deviation < effect / 100, (deviation, rounding, effect)


@pytest.mark.parametrize("conds", CONDS)
def test_a_second_run_is_the_same_and_nothing_is_left_behind(tiny: tiny_models.TinyModel, conds: str) -> None:
    """Run the same split model again, then a freshly split one (reusing the loaded deep clone): same output.

    After each run the pool's threads are gone and neither the model nor its
    device clones holds a run's state.
    """
    base = with_magcache(tiny, tiny.patcher, 0.15)
    model = split(base)
    applies: list[ApplyCall] = []
    record_apply_model(model, applies)
    first = sample(tiny, model, conds)
    second = sample(tiny, model, conds)
    third = sample(tiny, split(base), conds)
    assert torch.equal(first.out, second.out) and torch.equal(first.out, third.out)
    assert first.summary == second.summary == third.summary
    threads = {c.thread for c in applies}
    assert len(threads) == 4, "each run has a pool of its own"
    assert not any(t.is_alive() for t in threads)
    for patcher in (model, *model.get_additional_models_with_key("multigpu")):
        options = patcher.model_options
        assert isinstance(options["transformer_options"][engine.KEY], engine.MagCacheConfig)
        assert "multigpu_thread_pool" not in options and "multigpu_clones" not in options
        assert not options["transformer_options"].get("patches_replace"), "a run's block patches were left behind"
