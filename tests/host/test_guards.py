"""The engine checks what the family table assumes against the tensors it sees.

Each test breaks one assumption on purpose (a block list longer than the
model runs, a stack whose output no longer lines up with its input, image
tokens at neither end of the single-stream input) and shows the guard: one
warning naming the model, the assumption and the ComfyUI version, skipping
switched off, the output exactly the plain model's, no exception, nothing left
for the next run. A model that does not call the block patches but is reached
through the diffusion-model wrapper goes on at the output level instead (one
warning saying so); one reached through neither stands aside
(``test_interop.py``).
"""

from __future__ import annotations

import re
from typing import Any

import comfy.sample
import comfy.samplers
import pytest
import tiny_models
import torch
from comfy_host import ROOT, comfyui_version

from comfyui_magcache.cache import magcache as engine
from comfyui_magcache.calibration.curve import MagnitudeCurve, RoleCurve
from comfyui_magcache.hooks.families import Family, Level, Stack, Tokens, family_of
from comfyui_magcache.hooks.sites import RunHooks

STEPS = 12


def sample(tiny: tiny_models.TinyModel, patcher: Any) -> torch.Tensor:
    latent = comfy.sample.fix_empty_latent_channels(patcher, tiny.latent)
    noise = comfy.sample.prepare_noise(latent, 0)
    return comfy.sample.sample(
        patcher, noise, STEPS, tiny.cfg, "euler", "simple", tiny.positive, tiny.negative, latent,
        seed=0, disable_pbar=True,
    )  # fmt: skip


def curve_for(patcher: Any) -> MagnitudeCurve:
    sig = comfy.samplers.calculate_sigmas(patcher.model.model_sampling, "simple", STEPS)[:-1]
    role = RoleCurve(tuple(float(s) for s in sig), tuple([0.99] * (len(sig) - 1)))
    return MagnitudeCurve(name="test-law", roles={"cond": role, "uncond": role})


def magcache(patcher: Any, family: Family, level: Level = Level.BLOCK) -> Any:
    patched = patcher.clone()
    engine.attach(patched, engine.MagCacheConfig(curve_for(patcher), family, 0.15, 2, 0.2, level=level))
    return patched


def guarded(log_text: str, assumption: str) -> None:
    """Exactly one warning per run, naming model, assumption and host; and nothing skipped."""
    warnings = re.findall(r"MagCache: (.+) on ComfyUI (\S+): (.+); skipping switched off for this run", log_text)
    assert len(warnings) == 1, log_text
    _model, version, what = warnings[0]
    assert version == comfyui_version(ROOT)
    assert assumption in what, what
    assert re.findall(r"skipped the (?:block stack|whole model) on 0 of \d+ model calls", log_text), log_text


def test_a_model_that_does_not_call_the_block_patches(magcache_log) -> None:
    """Reached through the diffusion-model wrapper all the same: the run goes on at the output level."""
    if "lumina2" not in tiny_models.available_families():
        pytest.skip("this ComfyUI has no Lumina 2")
    tiny = tiny_models.build("lumina2")
    # Pretend the table said Lumina 2's layers take block patches (its code has none).
    wrong = Family("Lumina 2, wrongly listed", ("NextDiT",), (Stack("layers", "double_block"),))
    out = sample(tiny, magcache(tiny.patcher, wrong))
    text = magcache_log.text
    moved = re.findall(r"MagCache: (.+) on ComfyUI (\S+): (.+); this run goes on at the model's output", text)
    assert len(moved) == 1, text
    model, version, what = moved[0]
    assert model == wrong.name and version == comfyui_version(ROOT)
    assert "its block patches were not" in what
    assert "curve 'test-law' (block stack) is not used at the model's output" in text
    assert "skipping switched off" not in text
    (skipped, total), = re.findall(r"skipped the whole model on (\d+) of (\d+) model calls", text)
    assert int(total) == STEPS and int(skipped) > 0
    assert torch.isfinite(out).all()


class _LongerList(torch.nn.ModuleList):
    """A block list that says it holds one block more than the model runs."""

    def __len__(self) -> int:
        return super().__len__() + 1


def test_a_block_list_longer_than_the_model_runs(magcache_log) -> None:
    tiny = tiny_models.build("wan21_t2v")
    plain = sample(tiny, tiny.patcher)
    dm = tiny.patcher.model.diffusion_model
    fam = family_of(dm, tiny.patcher.model.model_config)
    real = dm.blocks
    # The forward iterates the modules the list holds; the installer reads its length and patches one index more.
    dm._modules["blocks"] = _LongerList(list(real))
    try:
        out = sample(tiny, magcache(tiny.patcher, fam))
    finally:
        dm._modules["blocks"] = real
    guarded(magcache_log.text, "the stack's last block did not run")
    assert torch.equal(out, plain)


def test_a_stack_whose_output_no_longer_lines_up_with_its_input(magcache_log) -> None:
    tiny = tiny_models.build("wan21_t2v")
    fam = family_of(tiny.patcher.model.diffusion_model, tiny.patcher.model.model_config)

    def adds_tokens(args: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        """Another node's patch on the last block: two extra tokens (Wan's head crops them off)."""
        out = extra["original_block"](args)
        img = out["img"]
        return {**out, "img": torch.cat([img, img[:, :2]], dim=1)}

    other = tiny.patcher.clone()
    last = len(tiny.patcher.model.diffusion_model.blocks) - 1
    other.set_model_patch_replace(adds_tokens, "dit", "double_block", last)
    plain = sample(tiny, other)
    out = sample(tiny, magcache(other, fam))
    guarded(magcache_log.text, "does not line up with its input")
    assert torch.equal(out, plain)


class _Method:
    """A stand-in method that records what the hooks tell it."""

    def __init__(self) -> None:
        self.disabled: list[str] = []

    def disable(self, reason: str) -> None:
        self.disabled.append(reason)


def test_image_tokens_are_found_at_either_end_and_a_reordering_is_caught(magcache_log) -> None:
    fam = Family("joint test", ("X",), (Stack("a", "double_block"), Stack("b", "single_block", tokens=Tokens.FIND)))
    image, text = torch.randn(2, 6, 4), torch.randn(2, 3, 4)
    for joint, found in ((torch.cat([image, text], 1), Tokens.HEAD), (torch.cat([text, image], 1), Tokens.TAIL)):
        hooks = RunHooks(_Method(), fam, Level.BLOCK)  # type: ignore[arg-type]
        hooks.find_tokens(joint, image)
        assert hooks.tokens is found and hooks.broken is None
    method = _Method()
    hooks = RunHooks(method, fam, Level.BLOCK)  # type: ignore[arg-type]
    shuffled = torch.cat([image[:, :3], text, image[:, 3:]], 1)
    hooks.find_tokens(shuffled, image)
    assert hooks.tokens is None and hooks.broken is not None
    assert method.disabled and "neither end" in method.disabled[0]
    assert magcache_log.text.count("skipping switched off for this run") == 1


def _tokens_found(monkeypatch: pytest.MonkeyPatch) -> list[Tokens | None]:
    found: list[Tokens | None] = []
    original = RunHooks.find_tokens

    def spy(self: RunHooks, joint_in: torch.Tensor, image: torch.Tensor) -> None:
        original(self, joint_in, image)
        found.append(self.tokens)

    monkeypatch.setattr(RunHooks, "find_tokens", spy)
    return found


@pytest.mark.parametrize("name", ["hunyuan_video", "flux"])
def test_the_single_stream_layout_is_found_from_the_tensors(name: str, monkeypatch, magcache_log) -> None:
    """HunyuanVideo put image tokens first up to ComfyUI 0.12 and text first since; Flux always text first."""
    tiny = tiny_models.build(name)
    fam = family_of(tiny.patcher.model.diffusion_model, tiny.patcher.model.model_config)
    found = _tokens_found(monkeypatch)
    sample(tiny, magcache(tiny.patcher, fam))
    major, minor = (int(p) for p in comfyui_version(ROOT).split(".")[:2])
    text_first = name == "flux" or (major, minor) >= (0, 13)
    assert found == [Tokens.TAIL if text_first else Tokens.HEAD]  # once per run: one host sync
    assert "check failed" not in magcache_log.text
    assert re.findall(r"skipped the block stack on [1-9]\d* of", magcache_log.text)
