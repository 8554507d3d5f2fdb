"""MagCache Calibrate in the real host, on tiny random-weight Wan, Flux and Qwen-Image models.

What a calibration must do: leave the generation exactly as it is, record
what the block stack really does (checked here against our own computation
from forward hooks on the first and last block, which share no code with the
recorder), save a valid file where ComfyUI looks for it, combine runs, refuse
bad files and names with messages that name the problem, and leave nothing
behind, even when a run fails.

Saved curves go to a temporary models folder: the tests never write into the
checkout's ``models/``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import comfy.sample
import comfy.samplers
import numpy as np
import pytest
import tiny_models
import torch
from conftest import BlockCounter
from workflows import CONTROL_VALUES, DYNAMIC_COMBO, widget_layout

from comfyui_magcache.cache import magcache as engine
from comfyui_magcache.cache.config import Reuse
from comfyui_magcache.cache.planner import ErrorModel
from comfyui_magcache.cache.policy import Plan, plan_run
from comfyui_magcache.calibration import recorder
from comfyui_magcache.calibration.curve import SKETCH_SIZE, CurveError, MagnitudeCurve
from comfyui_magcache.calibration.curve_file import load_curve
from comfyui_magcache.calibration.recorder import sample_indices
from comfyui_magcache.calibration.runs import pack_version, runs_of
from comfyui_magcache.hooks.families import family_of
from comfyui_magcache.nodes.calibrate_node import MagCacheCalibrate, MagCacheCurvePlot
from comfyui_magcache.nodes.magcache_node import MagCacheApply

STEPS = 20
FAMILIES = ["wan21_t2v", "flux", "qwen_image"]

#: Per family, independently of the pack's architecture table: the first and the last
#: block of the stack, and whether the last block's output carries text tokens before
#: the image tokens (Flux's single-stream blocks).
ENDS = {
    "wan21_t2v": (("blocks", 0), ("blocks", -1), False),
    "flux": (("double_blocks", 0), ("single_blocks", -1), True),
    "qwen_image": (("transformer_blocks", 0), ("transformer_blocks", -1), False),
}


@pytest.fixture
def curve_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """ComfyUI's models folder, and its ``magcache`` entry, moved to a temporary folder."""
    import folder_paths

    models = tmp_path / "models"
    monkeypatch.setattr(folder_paths, "models_dir", str(models))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "magcache", ([str(models / "magcache")], {".safetensors"}))
    monkeypatch.delitem(folder_paths.filename_list_cache, "magcache", raising=False)
    return models / "magcache"


@pytest.fixture(scope="module")
def wan() -> tiny_models.TinyModel:
    return tiny_models.build("wan21_t2v")


def sample(tiny: tiny_models.TinyModel, patcher: Any, steps: int = STEPS, seed: int = 0, **kw: Any) -> torch.Tensor:
    latent = comfy.sample.fix_empty_latent_channels(patcher, tiny.latent)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(
        patcher,
        noise,
        steps,
        tiny.cfg,
        kw.pop("sampler", "euler"),
        kw.pop("scheduler", "simple"),
        tiny.positive,
        tiny.negative,
        latent,
        seed=seed,
        disable_pbar=True,
        **kw,
    )


def calibrate(patcher: Any, name: str, if_exists: str = "combine", level: str = "auto") -> tuple[Any, str]:
    return MagCacheCalibrate.execute(patcher, name, if_exists, level).result


def leftovers(patcher: Any) -> tuple:
    """Everything a leftover of a run could hide in."""
    dm = patcher.model.diffusion_model
    return (
        repr(patcher.model_options),
        repr(patcher.wrappers),
        sorted(vars(patcher.model)),
        sorted(vars(dm)),
        sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in dm.modules()),
    )


def smooth_timestep_response(tiny: tiny_models.TinyModel) -> None:
    """Make the tiny model's residual a smooth function of sigma, as a trained model's is.

    Random weights on the sinusoidal timestep features make the residual
    oscillate with sigma faster than any step count samples it, so per-step
    ratios would depend on where the steps fall. Training damps those
    frequencies; here the high-frequency half of the features is switched off.
    """
    dm = tiny.patcher.model.diffusion_model
    first = {
        "wan21_t2v": lambda: dm.time_embedding[0],
        "flux": lambda: dm.time_in.in_layer,
        "qwen_image": lambda: dm.time_text_embed.timestep_embedder.linear_1,
    }[tiny.family]()
    half = first.weight.shape[1] // 2  # [cos | sin] (or [sin | cos]), frequencies high to low in each
    with torch.no_grad():
        first.weight[:, : half // 2] = 0
        first.weight[:, half : half + half // 2] = 0


class BlockObserver:
    """Our own measurement of the residual, sharing nothing with the recorder.

    Forward hooks on the first and last block capture what enters and leaves
    the stack; ComfyUI's unet function wrapper says which conditionings each
    batch holds and at which sigma.
    """

    def __init__(self, tiny: tiny_models.TinyModel, patcher: Any) -> None:
        (first_attr, first_i), (last_attr, last_i), self.text_first = ENDS[tiny.family]
        dm = patcher.model.diffusion_model
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self.batches: list[tuple[list[int], float]] = []
        self.handles = [
            getattr(dm, first_attr)[first_i].register_forward_pre_hook(self._enter, with_kwargs=True),
            getattr(dm, last_attr)[last_i].register_forward_hook(self._leave),
        ]
        patcher.set_model_unet_function_wrapper(self._batch)

    def _enter(self, module: Any, args: tuple, kwargs: dict) -> None:
        x = kwargs.get("img", kwargs.get("hidden_states"))
        self.inputs.append((x if x is not None else args[0]).detach().clone())

    def _leave(self, module: Any, args: tuple, output: Any) -> None:
        y = output[1] if isinstance(output, tuple) else output  # Qwen-Image blocks return (text, image)
        self.outputs.append(y.detach().clone())

    def _batch(self, apply_model: Any, args: dict[str, Any]) -> torch.Tensor:
        self.batches.append((list(args["cond_or_uncond"]), float(args["timestep"][0])))
        return apply_model(args["input"], args["timestep"], **args["c"])

    def close(self) -> None:
        for h in self.handles:
            h.remove()

    def expected(self) -> dict[int, np.ndarray]:
        """Per role: rows of (sigma, mean ratio, token std of the ratio, mean cosine distance), in float64."""
        assert len(self.inputs) == len(self.outputs) == len(self.batches)
        previous: dict[int, torch.Tensor] = {}
        rows: dict[int, list[list[float]]] = {}
        for (roles, sigma), x, y in zip(self.batches, self.inputs, self.outputs):
            if self.text_first:
                y = y[:, y.shape[1] - x.shape[1] :]
            r = (y - x).double()
            for role, part in zip(roles, r.chunk(len(roles))):
                if role in previous:
                    prev = previous[role]
                    na, nb = part.norm(dim=-1), prev.norm(dim=-1)
                    ratio = na / nb
                    cos = 1 - (part * prev).sum(dim=-1) / (na * nb)
                    rows.setdefault(role, []).append(
                        [sigma, ratio.mean().item(), ratio.std(unbiased=False).item(), cos.mean().item()]
                    )
                previous[role] = part
        return {role: np.array(v) for role, v in rows.items()}

    def samples(self) -> dict[int, tuple[list[float], np.ndarray]]:
        """Per role: the sigmas and the residual's sampled elements (the recorder's indices) at every call."""
        out: dict[int, tuple[list[float], list[np.ndarray]]] = {}
        for (roles, sigma), x, y in zip(self.batches, self.inputs, self.outputs):
            if self.text_first:
                y = y[:, y.shape[1] - x.shape[1] :]
            for role, part in zip(roles, (y - x).float().chunk(len(roles))):
                idx = sample_indices(part.numel(), part.device)
                sig, rows = out.setdefault(role, ([], []))
                sig.append(sigma)
                rows.append(part.reshape(-1)[idx].numpy())
        return {role: (sig, np.stack(rows)) for role, (sig, rows) in out.items()}


@pytest.fixture
def observer() -> Iterator[list[BlockObserver]]:
    made: list[BlockObserver] = []
    yield made
    for o in made:
        o.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_calibration_only_observes_and_records_the_true_ratios(
    family: str, curve_folder: Path, observer: list[BlockObserver], magcache_log: pytest.LogCaptureFixture
) -> None:
    tiny = tiny_models.build(family)
    baseline = sample(tiny, tiny.patcher)
    untouched = leftovers(tiny.patcher)

    patched, name = calibrate(tiny.patcher, f"tiny {family}")
    assert name == f"tiny_{family}.safetensors"
    attached = leftovers(patched)
    watched = patched.clone()
    observer.append(BlockObserver(tiny, watched))
    out = sample(tiny, watched)

    # The calibration run's output is the normal, uncached one, bit for bit.
    assert torch.equal(out, baseline)
    # One file, in the curve folder, and a console line saying where it went.
    path = curve_folder / name
    assert sorted(p.name for p in curve_folder.iterdir()) == [name]
    assert f"saved '{name}' to {path}" in magcache_log.text
    assert "1 run(s)" in magcache_log.text

    # The recorded quantities equal our own computation from the blocks' inputs and outputs.
    curve = load_curve(path)
    expected = observer[0].expected()
    assert set(curve.roles) == {"cond", "uncond"}
    for role_name, role in (("cond", 0), ("uncond", 1)):
        rc, want = curve.roles[role_name], expected[role]
        np.testing.assert_allclose(rc.sigma[1:], want[:, 0], rtol=1e-6)
        np.testing.assert_allclose(rc.ratio, want[:, 1], rtol=1e-5)
        np.testing.assert_allclose(rc.ratio_std, want[:, 2], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(rc.cosine_distance, want[:, 3], rtol=1e-4, atol=1e-6)
    assert len(curve.roles["cond"].sigma) == STEPS
    # The residual sample at every call (the planner's measured cost), equal to the blocks' own residual there.
    samples = observer[0].samples()
    for role_name, role in (("cond", 0), ("uncond", 1)):
        tr, (sig, rows) = curve.trajectories[role_name], samples[role]
        np.testing.assert_allclose(tr.sigma, sig, rtol=1e-6)
        assert tr.values.shape == rows.shape and 0 < tr.values.shape[1] <= SKETCH_SIZE
        np.testing.assert_allclose(tr.values, rows, rtol=1e-4, atol=1e-6)
    assert "trajectory" in curve.metadata

    # What is needed to judge fit later.
    meta = curve.metadata
    dm = tiny.patcher.model.diffusion_model
    assert meta["architecture"] == family_of(dm, tiny.patcher.model.model_config).key
    assert meta["level"] == "block"
    assert meta["model_config"] == type(tiny.patcher.model.model_config).__name__
    assert meta["fingerprint"]["parameters"] == sum(p.numel() for p in dm.parameters())
    assert meta["pack_version"] == pack_version() != "unknown"
    (run,) = meta["runs"]
    settings = (run["sampler"], run["scheduler"], run["steps"], run["cfg"], run["seed"])
    assert settings == ("euler", "simple", STEPS, tiny.cfg, 0)
    sigmas = comfy.samplers.calculate_sigmas(tiny.patcher.model.model_sampling, "simple", STEPS)
    np.testing.assert_allclose(run["sigmas"], sigmas.tolist(), rtol=1e-6)
    assert datetime.fromisoformat(run["date"]).tzinfo is not None

    # Nothing left behind on the user's model or on the calibrating clone.
    observer[0].close()
    assert leftovers(tiny.patcher) == untouched
    assert leftovers(patched) == attached
    # The MagCache node's curve list shows the new curve, without a restart.
    kind, options = MagCacheApply.INPUT_TYPES()["optional"]["curve"]
    assert name in (options["options"] if kind == "COMBO" else kind)  # a V3 combo, or the list (ComfyUI 0.3.64)


def test_runs_into_one_name_are_combined_with_their_spread(curve_folder: Path) -> None:
    tiny = tiny_models.build("wan21_t2v")
    smooth_timestep_response(tiny)
    patched, name = calibrate(tiny.patcher, "combined")
    for seed in (0, 1, 2):
        latent = sample(tiny, patched, seed=seed)
    curve = load_curve(curve_folder / name)
    runs = runs_of(curve)
    assert [r.settings["seed"] for r in runs] == [0, 1, 2]
    for role in ("cond", "uncond"):
        ratio = np.array([r.roles[role].ratio for r in runs])
        token_var = np.array([r.roles[role].ratio_std for r in runs]) ** 2
        np.testing.assert_allclose(curve.roles[role].ratio, ratio.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(curve.roles[role].ratio_std, np.sqrt(token_var.mean(axis=0) + ratio.var(axis=0)))
        assert np.all(ratio.std(axis=0) > 0)  # different seeds really differ

    (image,) = MagCacheCurvePlot.execute(name, samples={"samples": latent}).result
    assert image.shape == (1, 540, 960, 3) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    if os.environ.get("MAGCACHE_DOCS_PLOT"):  # how docs/calibration_plot.png was made
        from PIL import Image

        Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).save(os.environ["MAGCACHE_DOCS_PLOT"])

    # 'replace' starts the curve over.
    restarted, _ = calibrate(tiny.patcher, "combined", "replace")
    sample(tiny, restarted, seed=5)
    assert [r.settings["seed"] for r in runs_of(load_curve(curve_folder / name))] == [5]


def test_magcache_with_a_just_saved_curve_decides_as_with_that_curve_in_memory(
    wan: tiny_models.TinyModel, curve_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved: list[MagnitudeCurve] = []
    real_save = recorder.save_curve

    def keep(curve: MagnitudeCurve, path: Path) -> Path:
        saved.append(curve)
        return real_save(curve, path)

    monkeypatch.setattr(recorder, "save_curve", keep)
    patched, name = calibrate(wan.patcher, "decisions")
    sample(wan, patched)
    (in_memory,) = saved

    threshold, k, retention = 0.2, 3, 0.2
    arch = family_of(wan.patcher.model.diffusion_model, wan.patcher.model.model_config)
    from_memory = wan.patcher.clone()
    engine.attach(from_memory, engine.MagCacheConfig(in_memory, arch, threshold, k, retention))
    (from_file,) = MagCacheApply.execute(
        wan.patcher,
        curve=name,
        threshold=threshold,
        max_consecutive_skips=k,
        retention_ratio=retention,
        start=0.0,
        end=1.0,
        cache_device="compute",
    ).result

    blocks = list(wan.patcher.model.diffusion_model.blocks)
    results = []
    for patcher in (from_memory, from_file):
        counter = BlockCounter(blocks)
        try:
            results.append((sample(wan, patcher), counter.calls))
        finally:
            counter.close()
    (out_a, calls_a), (out_b, calls_b) = results
    assert calls_a == calls_b < STEPS * len(blocks)  # the same calls skipped, and some were
    assert torch.equal(out_a, out_b)

    loaded = from_file.model_options["transformer_options"][engine.KEY].curve
    sigmas = comfy.samplers.calculate_sigmas(wan.patcher.model.model_sampling, "simple", STEPS).tolist()
    settings = engine.MagCacheConfig(in_memory, arch, threshold, k, retention).settings_for(
        wan.patcher.model.model_sampling
    )
    assert plan_run(loaded, settings, sigmas, (0, 1)) == plan_run(in_memory, settings, sigmas, (0, 1))


def computed_steps(plan: Plan) -> list[int]:
    return [i for i, skip in enumerate(plan.skips) if not skip]


def within_one_step(a: Plan, b: Plan) -> bool:
    """Same number of computed steps give or take one, each within one step of one in the other plan."""
    ca, cb = computed_steps(a), computed_steps(b)
    near = all(min(abs(i - j) for j in cb) <= 1 for i in ca) and all(min(abs(i - j) for j in ca) <= 1 for i in cb)
    return abs(len(ca) - len(cb)) <= 1 and near


def test_a_calibrated_curve_gives_the_speed_target_no_retention_and_the_planner_a_measured_cost(
    wan: tiny_models.TinyModel, curve_folder: Path, magcache_log: pytest.LogCaptureFixture
) -> None:
    """A curve with its trajectory: "recommended by the curve" forces no first steps for the speed target, and
    the forecast-costing planner measures on it (the plan line says so); a preset keeps its retention and the
    planner's cost is predicted."""
    patched, name = calibrate(wan.patcher, "measured")
    sample(wan, patched)
    by_curve = {"speed": 2.0, "schedule": "speed target", "settings": "recommended by the curve"}
    (model,) = MagCacheApply.execute(wan.patcher, curve=name, **by_curve).result
    config = model.model_options["transformer_options"][engine.KEY]
    assert config.curve.trajectory(0) is not None and config.retention == 0.0
    (preset,) = MagCacheApply.execute(wan.patcher, **by_curve).result
    preset_config = preset.model_options["transformer_options"][engine.KEY]
    assert preset_config.curve.trajectory(0) is None and preset_config.retention == 0.2
    for cfg, cost in ((config, "measured"), (preset_config, "predicted")):
        forecasting = wan.patcher.clone()
        engine.attach(forecasting, dataclasses.replace(cfg, error_model=ErrorModel.FORECAST, reuse=Reuse.LINEAR))
        sample(wan, forecasting)
        assert f"sum of {cost} forecast x step" in magcache_log.text.splitlines()[-2], magcache_log.text


@pytest.mark.parametrize("family", FAMILIES)
def test_a_30_step_calibration_plans_50_steps_like_a_50_step_calibration(
    family: str, curve_folder: Path, magcache_log: pytest.LogCaptureFixture
) -> None:
    tiny = tiny_models.build(family)
    smooth_timestep_response(tiny)
    curves = {}
    for steps in (30, 50):
        patched, name = calibrate(tiny.patcher, f"{family}_{steps}steps")
        sample(tiny, patched, steps=steps)
        curves[steps] = load_curve(curve_folder / name)
    assert len(curves[30].roles["cond"].sigma) == 30

    arch = family_of(tiny.patcher.model.diffusion_model, tiny.patcher.model.model_config)
    model_sampling = tiny.patcher.model.model_sampling
    sigmas = comfy.samplers.calculate_sigmas(model_sampling, "simple", 50).tolist()
    skipped_somewhere = False
    for threshold in (0.01, 0.02, 0.05):
        config = engine.MagCacheConfig(curves[50], arch, threshold, 10, 0.2)
        plans = [plan_run(c, config.settings_for(model_sampling), sigmas, (0, 1)) for c in (curves[30], curves[50])]
        assert within_one_step(*plans), (threshold, [p.skips for p in plans])
        skipped_somewhere |= plans[1].computed < plans[1].total
    assert skipped_somewhere

    # And the 30-step curve drives a real 50-step run: the engine follows the plan it announced.
    if family == "wan21_t2v":
        curve_30 = f"{family}_30steps.safetensors"
        (fast,) = MagCacheApply.execute(
            tiny.patcher,
            curve=curve_30,
            threshold=0.05,
            max_consecutive_skips=10,
            retention_ratio=0.2,
            start=0.0,
            end=1.0,
            cache_device="compute",
        ).result
        magcache_log.clear()
        sample(tiny, fast, steps=50)
        line = next(r.getMessage() for r in magcache_log.records if "skipped the block stack" in r.getMessage())
        skipped, total = line.split("skipped the block stack on ")[1].split(" model calls")[0].split(" of ")
        assert f"(plan: {skipped} of {total})" in line and int(skipped) > 0


def test_cond_and_uncond_run_apart_give_the_same_curve(
    wan: tiny_models.TinyModel, curve_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When memory is short ComfyUI runs cond and uncond as separate batches; the curve must not change."""
    first_block = [wan.patcher.model.diffusion_model.blocks[0]]
    together, name = calibrate(wan.patcher, "together")
    counter = BlockCounter(first_block)
    try:
        sample(wan, together)
    finally:
        counter.close()
    assert counter.calls == STEPS  # cond and uncond in one batch
    batched = load_curve(curve_folder / name)
    import comfy.model_management

    real = comfy.model_management.get_free_memory

    def short_of_memory(dev: Any = None, torch_free_too: bool = False) -> Any:
        # The sampler's batching asks without torch_free_too; attention's own query is answered truly.
        return real(dev, torch_free_too) if torch_free_too else 1

    monkeypatch.setattr(comfy.model_management, "get_free_memory", short_of_memory)
    apart, name = calibrate(wan.patcher, "apart")
    counter = BlockCounter(first_block)
    try:
        sample(wan, apart)
    finally:
        counter.close()
    assert counter.calls == 2 * STEPS  # one batch each
    split = load_curve(curve_folder / name)
    for role in ("cond", "uncond"):
        assert split.roles[role].sigma == batched.roles[role].sigma
        np.testing.assert_allclose(split.roles[role].ratio, batched.roles[role].ratio, rtol=1e-4)


def test_without_cfg_only_the_positive_conditioning_is_recorded(wan: tiny_models.TinyModel, curve_folder: Path) -> None:
    patched, name = calibrate(wan.patcher, "no_cfg")
    latent = comfy.sample.fix_empty_latent_channels(patched, wan.latent)
    comfy.sample.sample(
        patched,
        comfy.sample.prepare_noise(latent, 0),
        12,
        1.0,
        "euler",
        "simple",
        wan.positive,
        wan.negative,
        latent,
        seed=0,
        disable_pbar=True,
    )
    curve = load_curve(curve_folder / name)
    assert set(curve.roles) == {"cond"} and curve.metadata["runs"][0]["cfg"] == 1.0


def test_multi_call_samplers_give_one_ratio_per_noise_level(wan: tiny_models.TinyModel, curve_folder: Path) -> None:
    patched, name = calibrate(wan.patcher, "heun")
    sample(wan, patched, steps=12, sampler="heun")
    curve = load_curve(curve_folder / name)
    assert len(curve.roles["cond"].sigma) == 12  # heun's second call at each next sigma is folded in
    assert curve.metadata["runs"][0]["sampler"] == "heun"


def _write_curve_file(path: Path, tensors: dict[str, np.ndarray], metadata: str = "{}") -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": "comfyui-magcache/curve", "format_version": "1", "metadata": metadata}
    save_file(tensors, str(path), metadata=header)


GOOD = {"cond.sigma": np.array([1.0, 0.5, 0.1]), "cond.ratio": np.array([0.99, 0.9])}


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({**GOOD, "cond.ratio": np.array([0.99, np.nan])}, "NaN or infinite"),
        ({**GOOD, "cond.ratio": np.array([0.99, -0.5])}, "ratios must be positive"),
        ({**GOOD, "cond.sigma": np.array([0.1, 0.5, 1.0])}, "strictly decreasing"),
        ({**GOOD, "cond.ratio": np.array([0.99])}, "expected 2"),
        ({**GOOD, "uncond.sigma": np.array([1.0, 0.2]), "uncond.ratio": np.array([0.9])}, "share one sigma grid"),
        ({"cond.sigma": np.array([1.0, 0.5])}, "lacks the tensor 'cond.ratio'"),
    ],
)
def test_a_bad_saved_curve_is_refused_naming_the_file(
    wan: tiny_models.TinyModel, curve_folder: Path, tensors: dict[str, np.ndarray], message: str
) -> None:
    path = curve_folder / "bad.safetensors"
    _write_curve_file(path, tensors)
    with pytest.raises(CurveError, match=message) as err:
        MagCacheApply.execute(
            wan.patcher,
            curve="bad.safetensors",
            threshold=-1,
            max_consecutive_skips=-1,
            retention_ratio=-1,
            start=0.0,
            end=1.0,
            cache_device="compute",
        )
    assert str(path.resolve()) in str(err.value)

    # Calibrating into it refuses too, before the generation starts, and leaves the file alone.
    before = path.read_bytes()
    patched, _ = calibrate(wan.patcher, "bad")
    counter = BlockCounter(list(wan.patcher.model.diffusion_model.blocks))
    try:
        with pytest.raises(CurveError, match=message) as err:
            sample(wan, patched)
        assert counter.calls == 0
    finally:
        counter.close()
    assert str(path.resolve()) in str(err.value)
    assert path.read_bytes() == before


def test_runs_of_another_model_or_without_runs_are_not_combined(wan: tiny_models.TinyModel, curve_folder: Path) -> None:
    flux = tiny_models.build("flux")
    patched, _ = calibrate(flux.patcher, "shared")
    sample(flux, patched, steps=10)
    with pytest.raises(CurveError, match="calibrated on another model") as err:
        sample(wan, calibrate(wan.patcher, "shared")[0], steps=10)
    assert "'replace'" in str(err.value)

    _write_curve_file(curve_folder / "handmade.safetensors", GOOD)
    with pytest.raises(CurveError, match="keeps no calibration runs"):
        sample(wan, calibrate(wan.patcher, "handmade")[0], steps=10)
    # With 'replace' both start over.
    sample(wan, calibrate(wan.patcher, "handmade", "replace")[0], steps=10)
    assert len(runs_of(load_curve(curve_folder / "handmade.safetensors"))) == 1


@pytest.mark.parametrize(
    ("typed", "saved_as"),
    [
        ("../../escape", "____escape.safetensors"),
        ("/etc/evil", "_etc_evil.safetensors"),
        ("my wan: v2?", "my_wan_v2_.safetensors"),
        ("wan-1.3B_30steps.safetensors", "wan-1.3B_30steps.safetensors"),
    ],
)
def test_a_typed_name_cannot_leave_the_curve_folder(
    wan: tiny_models.TinyModel, curve_folder: Path, tmp_path: Path, typed: str, saved_as: str
) -> None:
    patched, name = calibrate(wan.patcher, typed)
    assert name == saved_as
    sample(wan, patched, steps=10)
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == [f"models/magcache/{saved_as}"]


def test_a_name_with_nothing_usable_is_refused(wan: tiny_models.TinyModel) -> None:
    with pytest.raises(CurveError, match="no usable characters"):
        calibrate(wan.patcher, "../..")


class CancelledError(Exception):
    pass


def test_a_cancelled_run_saves_nothing_and_leaves_nothing(wan: tiny_models.TinyModel, curve_folder: Path) -> None:
    patched, name = calibrate(wan.patcher, "cancelled")
    attached, untouched = leftovers(patched), leftovers(wan.patcher)

    def cancel(step: int, *_: Any) -> None:
        if step == 5:
            raise CancelledError

    with pytest.raises(CancelledError):
        sample(wan, patched, callback=cancel)
    assert not (curve_folder / name).exists()
    assert leftovers(patched) == attached and leftovers(wan.patcher) == untouched
    # The next run records from scratch and saves.
    sample(wan, patched)
    assert len(runs_of(load_curve(curve_folder / name))) == 1


def test_magcache_on_a_calibrating_model_is_refused(wan: tiny_models.TinyModel, curve_folder: Path) -> None:
    patched, _ = calibrate(wan.patcher, "with_magcache")
    (both,) = MagCacheApply.execute(
        patched,
        curve="wan2.1_t2v_1.3B",
        threshold=0.2,
        max_consecutive_skips=3,
        retention_ratio=0.2,
        start=0.0,
        end=1.0,
        cache_device="compute",
    ).result
    with pytest.raises(ValueError, match="bypass the MagCache node while calibrating"):
        sample(wan, both)
    assert not curve_folder.exists() or not any(curve_folder.iterdir())


def test_a_model_the_pack_does_not_know_cannot_be_calibrated() -> None:
    unknown = SimpleNamespace(model=SimpleNamespace(diffusion_model=torch.nn.Linear(2, 2), model_config=object()))
    with pytest.raises(ValueError, match="is a model this version of the pack does not know"):
        calibrate(unknown, "nope")


class OutputObserver:
    """Our own record of what the diffusion model returns, per batch, sharing nothing with the recorder."""

    def __init__(self, patcher: Any) -> None:
        self.outputs: list[torch.Tensor] = []
        self.batches: list[tuple[list[int], float]] = []
        self.handle = patcher.model.diffusion_model.register_forward_hook(self._leave)
        patcher.set_model_unet_function_wrapper(self._batch)

    def _leave(self, module: Any, args: tuple, output: torch.Tensor) -> None:
        self.outputs.append(output.detach().clone())

    def _batch(self, apply_model: Any, args: dict[str, Any]) -> torch.Tensor:
        self.batches.append((list(args["cond_or_uncond"]), float(args["timestep"][0])))
        return apply_model(args["input"], args["timestep"], **args["c"])

    def ratios(self) -> dict[int, np.ndarray]:
        """Per role: (sigma, mean over tokens of ||out_t|| / ||out_t-1||) rows, channels as the norm's axis."""
        assert len(self.outputs) == len(self.batches)
        previous: dict[int, torch.Tensor] = {}
        rows: dict[int, list[list[float]]] = {}
        for (roles, sigma), out in zip(self.batches, self.outputs):
            for role, part in zip(roles, out.double().chunk(len(roles))):
                if role in previous:
                    ratio = part.norm(dim=-1) / previous[role].norm(dim=-1)
                    rows.setdefault(role, []).append([sigma, ratio.mean().item()])
                previous[role] = part
        return {role: np.array(v) for role, v in rows.items()}


def test_output_level_calibration_records_the_models_output_and_drives_output_level_skipping(
    wan: tiny_models.TinyModel, curve_folder: Path, magcache_log: pytest.LogCaptureFixture
) -> None:
    baseline = sample(wan, wan.patcher)
    patched, name = calibrate(wan.patcher, "wan output", level="output")
    watched = patched.clone()
    observer = OutputObserver(watched)
    try:
        out = sample(wan, watched)
    finally:
        observer.handle.remove()
    assert torch.equal(out, baseline)
    curve = load_curve(curve_folder / name)
    assert curve.level == "output" and curve.metadata["level"] == "output"
    expected = observer.ratios()
    for role_name, role in (("cond", 0), ("uncond", 1)):
        rc, want = curve.roles[role_name], expected[role]
        np.testing.assert_allclose(rc.sigma[1:], want[:, 0], rtol=1e-6)
        np.testing.assert_allclose(rc.ratio, want[:, 1], rtol=1e-5)
    # The MagCache node takes the level from the curve: it skips the whole model.
    (cached,) = MagCacheApply.execute(
        wan.patcher,
        curve=name,
        threshold=0.3,
        max_consecutive_skips=2,
        retention_ratio=0.2,
        start=0.0,
        end=1.0,
        cache_device="compute",
    ).result
    assert cached.model_options["transformer_options"][engine.KEY].level.value == "output"
    sample(wan, cached)
    skipped = re.findall(r"skipped the whole model on (\d+) of (\d+) model calls", magcache_log.text)
    assert skipped and 0 < int(skipped[-1][0]) < int(skipped[-1][1])
    assert "check failed" not in magcache_log.text


# -- the example workflow --------------------------------------------------------------------------------------

WORKFLOW = Path(__file__).resolve().parents[2] / "example_workflows" / "magcache_calibrate.json"
#: Model-file lists are the user's: their entries are not checked.
FILE_WIDGETS = {"unet_name", "clip_name", "vae_name"}
_WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def node_classes() -> dict[str, type]:
    """Every node class the example uses, as this ComfyUI defines it, plus ours."""
    import importlib

    import nodes

    from comfyui_magcache.nodes.mappings import NODE_CLASS_MAPPINGS

    classes = {**nodes.NODE_CLASS_MAPPINGS, **NODE_CLASS_MAPPINGS}
    for name in ("comfy_extras.nodes_model_advanced", "comfy_extras.nodes_hunyuan", "comfy_extras.nodes_video"):
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if isinstance(value, type) and hasattr(value, "INPUT_TYPES"):
                classes.setdefault(attr, value)
    return classes


def widget_specs(cls: type, values: list[Any] | None = None) -> list[tuple[str, str, dict[str, Any], bool]]:
    """The widgets the page shows for a node, in order, as (name, type, options, required).

    Laid out as ``workflows.widget_layout`` does: seeds get their control widget, and a
    dynamic combo (ComfyUI 0.33's SaveVideo format) the widgets of the option chosen in ``values``.
    """
    out = []
    for slot in widget_layout({"input": cls.INPUT_TYPES()}, values):
        spec = slot.input
        if slot.extra == "control":
            out.append((f"{spec.name} control", "COMBO", {"options": sorted(CONTROL_VALUES)}, True))
        elif slot.extra == "upload":
            out.append((f"{spec.name} upload", "STRING", {}, True))
        elif spec.type == "COMBO":
            out.append((spec.name, "COMBO", {**spec.options, "options": list(spec.choices)}, spec.required))
        else:
            out.append((spec.name, spec.type, spec.options, spec.required))
    return out


def test_the_example_workflow_matches_this_comfyuis_nodes() -> None:
    workflow = json.loads(WORKFLOW.read_text())
    assert workflow["version"] == 0.4
    classes = node_classes()
    by_id = {n["id"]: n for n in workflow["nodes"]}
    types = [n["type"] for n in workflow["nodes"]]
    assert {"MagCacheCalibrate", "MagCacheCurvePlot", "Note", "KSampler", "UNETLoader"} <= set(types)
    assert "MagCacheApply" not in types  # calibration needs every step computed
    for n in workflow["nodes"]:
        if n["type"] == "Note":
            assert "MagCache Calibrate" in n["widgets_values"][0]
            continue
        cls = classes[n["type"]]
        values = n["widgets_values"]
        specs = widget_specs(cls, values)
        # Optional inputs newer than the file (CreateVideo's bit_depth in ComfyUI 0.33): their defaults apply.
        while len(specs) > len(values) and not specs[-1][3]:
            specs.pop()
        assert len(values) == len(specs), (n["type"], values, [s[0] for s in specs])
        for (name, typ, opts, _), value in zip(specs, values):
            where = f"{n['type']}.{name} = {value!r}"
            if typ == "COMBO":
                if name not in FILE_WIDGETS:
                    assert value in opts["options"], where
            elif typ == "BOOLEAN":
                assert isinstance(value, bool), where
            elif typ == "STRING":
                assert isinstance(value, str), where
            else:
                assert isinstance(value, (int, float)) and not isinstance(value, bool), where
                assert opts.get("min", value) <= value <= opts.get("max", value), where
        # Every required input that is not a widget is connected.
        sockets = {i["name"]: i for i in n["inputs"]}
        required = cls.INPUT_TYPES().get("required", {})
        for name, (typ, *rest) in required.items():
            if isinstance(typ, list) or typ == DYNAMIC_COMBO:
                continue
            if typ in _WIDGET_TYPES and not (rest and rest[0].get("forceInput")):
                continue
            assert sockets.get(name, {}).get("link") is not None, f"{n['type']}.{name} is not connected"
    for link_id, src, src_slot, dst, dst_slot, typ in workflow["links"]:
        out_types = [str(t) for t in classes[by_id[src]["type"]].RETURN_TYPES]
        assert out_types[src_slot] == typ == by_id[src]["outputs"][src_slot]["type"], link_id
        target = by_id[dst]["inputs"][dst_slot]
        assert target["type"] == typ and target["link"] == link_id
        spec = classes[by_id[dst]["type"]].INPUT_TYPES()
        declared = {**spec.get("required", {}), **spec.get("optional", {})}[target["name"]]
        assert str(declared[0]) == typ, (link_id, target["name"])
    # The plot waits for the sampler, and shows the curve the Calibrate node writes.
    plot = next(n for n in workflow["nodes"] if n["type"] == "MagCacheCurvePlot")
    sources = {link[4]: (by_id[link[1]]["type"], link[2]) for link in workflow["links"] if link[3] == plot["id"]}
    assert sources == {0: ("MagCacheCalibrate", 1), 1: ("KSampler", 0)}
