"""The benchmark's peers do what their papers describe, on toy inputs (``benchmarks/peers/``)."""

from __future__ import annotations

import torch

from comfyui_magcache.benchmarks.peers import fbcache, taylorseer
from comfyui_magcache.hooks import hidden
from comfyui_magcache.hooks.families import Tokens
from comfyui_magcache.hooks.sites import Batch


def _batch(sigma: float) -> Batch:
    return Batch(uuids=(), roles=(0,), sigma=torch.tensor([sigma]))


def _run_taylor(order: int, speed: float, feature: callable, calls: int = 10) -> dict[int, torch.Tensor]:
    """Drive a TaylorSeerLite through a run whose stack output at call i is ``feature(i)``; return what each
    skipped call produced (the hooks' own arithmetic: input + terms)."""
    sigmas = [1.0 - i / calls for i in range(calls + 1)]
    method = taylorseer.TaylorSeerLite(sigmas, speed, order)
    produced = {}
    for i in range(calls):
        batch = _batch(sigmas[i])
        method.begin_batch(batch)
        x = torch.full((1, 3, 2), 100.0 + i)  # where the sampler has moved the input: must not leak in
        if batch.skip:
            batch.x_in = x
            terms = method.cached(batch, hidden.shape(x), x.device)
            assert terms is not None
            produced[i] = hidden.combine(x, terms)
        else:
            batch.x_in = x.clone()
            method.store(batch, feature(i) - x)
    return produced


def test_taylorseer_activates_evenly_spaced_calls_and_the_first():
    method = taylorseer.TaylorSeerLite([1.0 - i / 10 for i in range(11)], 2.0, 1)
    assert [i for i, s in enumerate(method.skips) if not s] == [0, 2, 4, 6, 8]
    method = taylorseer.TaylorSeerLite([1.0 - i / 12 for i in range(13)], 3.0, 1)
    assert [i for i, s in enumerate(method.skips) if not s] == [0, 3, 6, 9]


def test_taylorseer_order_one_is_exact_on_a_line_of_outputs_wherever_the_input_is():
    line = lambda i: torch.full((1, 3, 2), 2.0 + 0.5 * i)  # noqa: E731
    produced = _run_taylor(1, 2.0, line)
    assert produced  # something was skipped
    for i, out in produced.items():
        if i > 2:  # from the second activated call on, two points give the slope
            torch.testing.assert_close(out, line(i))


def test_taylorseer_order_two_uses_the_papers_backward_differences():
    # F(i) = i^2, activated at 0, 2, 4: at call 5 (k = 1, N = 2, u = 0.5) the expansion around F(4) = 16 with
    # dF = (16 - 4) / 2 and d2F = (16 - 2*4 + 0) / 4 gives 16 + 0.5*12 + 0.125*8 = 23 (the truth is 25: backward
    # differences lag, as the paper's first-order-accurate derivative estimates do).
    square = lambda i: torch.full((1, 3, 2), float(i * i))  # noqa: E731
    produced = _run_taylor(2, 2.0, square)
    torch.testing.assert_close(produced[5], torch.full((1, 3, 2), 23.0))
    # Order 0 before a second point exists: the cached output itself.
    torch.testing.assert_close(produced[1], torch.full((1, 3, 2), 0.0))


def test_fbcache_skips_the_rest_only_while_the_first_blocks_residual_stays_close():
    run = fbcache.FirstBlockRun(threshold=0.1)
    rest = torch.full((1, 4, 2), 3.0)

    def step(x: torch.Tensor, r0: float) -> tuple[dict[str, torch.Tensor], bool]:
        out = run.first({"img": x}, lambda a: {"img": a["img"] + r0}, "img")
        if not run.skipping:
            run.last(out["img"] + rest)  # the other blocks add ``rest``
        return out, run.skipping

    x = torch.ones(1, 4, 2)
    _, skipped = step(x, 1.0)
    assert not skipped  # nothing cached yet
    out, skipped = step(x * 2, 1.05)  # residual changed by 5% < 10%
    assert skipped
    torch.testing.assert_close(out["img"], x * 2 + 1.05 + rest)  # first block's output + the cached rest
    _, skipped = step(x, 1.2)  # 20% from the last computed call's residual (1.0): compute
    assert not skipped
    assert run.calls == 3 and run.computed == 2


def test_fbcache_cuts_a_joint_stack_to_the_image_tokens():
    run = fbcache.FirstBlockRun(threshold=0.5)
    run.tokens = Tokens.HEAD
    run.first({"img": torch.zeros(1, 4, 2)}, lambda a: {"img": a["img"] + 1.0}, "img")
    joint = torch.cat((torch.full((1, 4, 2), 5.0), torch.full((1, 3, 2), -7.0)), dim=1)  # image tokens first
    run.last(joint)
    torch.testing.assert_close(run.rest[(1, 4, 2)], torch.full((1, 4, 2), 4.0))


def test_fbcache_relative_change():
    a = torch.tensor([1.0, -1.0, 2.0])
    assert abs(fbcache.relative_change(a * 1.1, a) - 0.1) < 1e-6


class _FlowSampling:
    """A rectified-flow model sampling without shift: percent p of the schedule is sigma 1 - p."""

    def percent_to_sigma(self, percent: float) -> float:
        return 1.0 - percent


def _plan(line, sigmas: list[float], speed: float) -> tuple[bool, ...]:
    """The skips the engine makes of a peer's configuration (``Line.make`` wraps an engine config)."""
    from dataclasses import replace

    from comfyui_magcache.cache import estimators
    from comfyui_magcache.cache.magcache import make_schedule

    config = replace(line.make.config, speed=speed)
    schedule = make_schedule(config, config.settings_for(_FlowSampling()), sigmas, (0, 1),
                             estimators.make(config.reuse, config.curve, sigmas))()
    return tuple(schedule.skips)


def _context():
    from test_schedules import law

    from comfyui_magcache.benchmarks.peers.common import Context
    from comfyui_magcache.hooks.families import family_by_key

    return Context(law(20, cosine=True), family_by_key("WanModel"))


def test_spectrum_computes_the_first_fifth_densely_then_evenly_and_forecasts_with_the_chebyshev_fit():
    from comfyui_magcache.benchmarks.peers import spectrum
    from comfyui_magcache.cache.config import Reuse

    (line,) = spectrum.lines(_context())
    assert line.make.config.reuse is Reuse.SPECTRAL
    sigmas = [1.0 - i / 20 for i in range(21)]
    skips = _plan(line, sigmas, 2.0)
    assert not any(skips[:4])  # calls at 0-15% of the schedule: all computed
    assert sum(not s for s in skips) == 10 and any(skips[4:])


def test_lemica_plans_with_measured_errors_the_worst_segment_and_plain_reuse():
    from comfyui_magcache.benchmarks.peers import lemica
    from comfyui_magcache.cache.config import Reuse, When
    from comfyui_magcache.cache.planner import ErrorModel, Objective

    (line,) = lemica.lines(_context())
    config = line.make.config
    assert (config.when, config.reuse, config.error_model, config.objective) == (
        When.TARGET, Reuse.PLAIN, ErrorModel.FORECAST, Objective.PEAK)
    skips = _plan(line, [1.0 - i / 20 for i in range(21)], 2.0)
    assert sum(not s for s in skips) == 10
