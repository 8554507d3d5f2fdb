"""What makes an evaluation a guidance variant, and which role each cond has (cache/variants.py)."""

from __future__ import annotations

import torch

from comfyui_magcache.cache import variants


def patch(args: dict, extra: dict) -> dict:
    return args


def other_patch(args: dict, extra: dict) -> dict:
    return args


def base() -> dict:
    return {
        "patches_replace": {"dit": {("double_block", 0): patch}},
        "patches": {"attn1_output_patch": [patch]},
        "wrappers": {"diffusion_model": {"key": [patch]}},
        "magcache": object(),
        "sample_sigmas": torch.ones(3),
    }


def test_bookkeeping_a_sampler_writes_is_not_a_variant() -> None:
    a, b = base(), base()
    b["patches_replace"] = a["patches_replace"]
    b["patches"], b["wrappers"] = a["patches"], a["wrappers"]
    b.update(stage=3, row="row 2", h=torch.tensor(0.5), z_=torch.zeros(4), sigmas=torch.ones(1),
             substep={"i": 1, "state": [torch.zeros(1), 2.0, None]}, sample_sigmas=torch.zeros(5))
    assert variants.signature(a, ignore=("magcache",)) == variants.signature(b, ignore=("magcache",))


def test_a_replaced_block_patch_a_model_patch_or_a_wrapper_is_a_variant() -> None:
    reference = base()
    sig = variants.signature(reference, ignore=("magcache",))
    for key, value in (
        ("patches_replace", {"dit": {("double_block", 0): other_patch}}),
        ("patches_replace", {"dit": {("double_block", 0): patch, ("double_block", 1): patch}}),
        ("patches", {"attn1_output_patch": [other_patch]}),
        ("wrappers", {"diffusion_model": {"key": [patch, other_patch]}}),
    ):
        changed = {**reference, key: value}
        other = variants.signature(changed, ignore=("magcache",))
        assert other != sig, key
        assert variants.changed_keys(other, sig) == [key]


def test_guidance_flags_compare_by_value() -> None:
    a = {**base(), "stg_self_attn_blocks": frozenset({1, 2})}
    same = {**a, "stg_self_attn_blocks": frozenset({1, 2})}
    assert variants.signature(a) == variants.signature(same)
    for flag, value in (("stg_self_attn_blocks", frozenset({3})), ("a2v_cross_attn", False)):
        assert variants.changed_keys(variants.signature({**a, flag: value}), variants.signature(a)) == [flag]


def test_an_object_under_an_unknown_key_is_compared_by_identity() -> None:
    a = {**base(), "my_override": patch}
    assert variants.signature(a) == variants.signature({**a})
    assert variants.changed_keys(variants.signature({**a, "my_override": other_patch}), variants.signature(a)) == [
        "my_override"
    ]


def test_roles_by_what_a_cond_is() -> None:
    positive, negative, middle, empty = [{"p": 1}], [{"n": 1}], [{"m": 1}], [{"e": 1}]
    dual = variants.named_roles({"positive": positive, "middle": middle, "negative": negative})
    assert variants.roles_of([negative, middle, positive], dual) == (1, 2, 0)
    perp = variants.named_roles({"positive": positive, "negative": negative, "empty_negative_prompt": empty})
    assert variants.roles_of([positive, negative, empty], perp) == (0, 1, 2)
    cfg = variants.named_roles({"positive": positive, "negative": negative})
    assert variants.roles_of([positive, None], cfg) == (0,)
    assert variants.roles_of([None, negative], cfg) == (1,)
    # A guidance method's own list among named ones is an extra role; nothing named: list order, as before.
    assert variants.roles_of([positive, [{"x": 1}]], cfg) == (0, 2)
    assert variants.roles_of([[{"a": 1}], [{"b": 1}]], {}) == (0, 1)
    assert variants.roles_of([[{"a": 1}], None, [{"b": 1}]], {}) == (0, 2)
