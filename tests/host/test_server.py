"""The pack inside the real ComfyUI server: its node list, the example workflows, a run end to end.

One server (``main.py --cpu`` on a free loopback port, the pack symlinked into a
temporary ``custom_nodes/``, the embedded tiny model in its
``models/diffusion_models/``) serves the whole module; the session fixture
stops it at the end and fails the run if any of its processes is left.
On 2 busy cores the module takes about 30-40 s, most of it the server's start.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from comfy_host import ROOT, comfyui_version
from comfy_server import (
    EXAMPLES,
    FILE_MARKER,
    NO_TINY_MODEL,
    PACK_DIR_NAME,
    PACK_ROOT,
    TINY_MODEL,
    TINY_WORKFLOW,
    ComfyServer,
    ServerError,
)
from packaging.specifiers import SpecifierSet
from PIL import Image
from workflows import FRONTEND_ONLY, check_workflow, input_specs, to_api

from comfyui_magcache.calibration import catalog
from comfyui_magcache.nodes.mappings import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.json"))
PLAN = re.compile(r"MagCache: computing (\d+) of (\d+) steps, ~([\d.]+)x")
SUMMARY = re.compile(r"MagCache: skipped the block stack on (\d+) of (\d+) model calls")


@pytest.fixture(scope="module")
def object_info(comfy_server: ComfyServer) -> dict[str, Any]:
    return comfy_server.object_info()


def _declared(cls: type) -> dict[str, tuple[Any, dict[str, Any]]]:
    types = cls.INPUT_TYPES()
    return {name: spec for section in ("required", "optional") for name, spec in types.get(section, {}).items()}


@pytest.mark.parametrize("node_type", sorted(NODE_CLASS_MAPPINGS))
def test_object_info_lists_our_node_with_inputs_and_tooltips(object_info: dict[str, Any], node_type: str) -> None:
    cls = NODE_CLASS_MAPPINGS[node_type]
    info = object_info.get(node_type)
    assert info is not None, f"the server does not list {node_type}"
    assert info["display_name"] == NODE_DISPLAY_NAME_MAPPINGS[node_type]
    assert info["category"].startswith("sampling/magcache")
    assert info["description"] == cls.DESCRIPTION
    assert info["output"] == list(cls.RETURN_TYPES)
    assert info["output_tooltips"] == list(cls.OUTPUT_TOOLTIPS)
    declared = _declared(cls)
    served = {spec.name: spec for spec in input_specs(info)}
    assert list(served) == list(declared), "inputs or their order differ from the class"
    for name, (kind, options) in declared.items():
        spec = served[name]
        assert options.get("tooltip"), f"{node_type}.{name} has no tooltip"
        assert spec.options.get("tooltip") == options["tooltip"]
        assert spec.type == ("COMBO" if isinstance(kind, list) else kind)
        for key in ("default", "min", "max", "step"):
            assert spec.options.get(key) == options.get(key), f"{node_type}.{name}: {key}"


def test_magcache_curve_list_offers_auto_and_every_preset(object_info: dict[str, Any]) -> None:
    curve = next(s for s in input_specs(object_info["MagCacheApply"]) if s.name == "curve")
    assert curve.choices[0] == catalog.AUTO
    assert set(catalog.preset_names()) <= set(curve.choices)


def test_template_browser_lists_every_example(comfy_server: ComfyServer) -> None:
    """The page's template browser reads this list, then fetches each file from the pack's folder."""
    listed = comfy_server.get("/workflow_templates")
    assert sorted(listed.get(PACK_DIR_NAME, [])) == [p.stem for p in EXAMPLE_FILES]
    served = comfy_server.get(f"/api/workflow_templates/{PACK_DIR_NAME}/{TINY_WORKFLOW.name}")
    assert served == json.loads(TINY_WORKFLOW.read_text())


def test_examples_cover_the_families_the_issue_names() -> None:
    """A workflow per supported family, plus calibration and the tiny model (names are what users browse)."""
    stems = {p.stem for p in EXAMPLE_FILES}
    for needed in ("wan2.1_t2v", "wan2.1_i2v", "wan2.2_t2v_14B", "wan2.2_ti2v_5B", "hunyuan_video", "flux_dev",
                   "flux_kontext", "qwen_image", "chroma", "ltx_video", "calibrate", "tiny"):  # fmt: skip
        assert any(needed in s for s in stems), f"no example workflow for {needed}"


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_example_workflow_matches_object_info(object_info: dict[str, Any], path: Path) -> None:
    """Every node type, slot, link and widget value against what this server declares (see ``check_workflow``)."""
    workflow = json.loads(path.read_text())
    assert workflow.get("version") == 0.4
    problems = check_workflow(workflow, object_info, FILE_MARKER)
    assert not problems, "\n".join(problems)
    notes = [n for n in workflow["nodes"] if n["type"] in FRONTEND_ONLY]
    assert notes and all(len(n["widgets_values"][0]) > 80 for n in notes), "each example explains itself in a note"
    ours = [n for n in workflow["nodes"] if n["type"] in NODE_CLASS_MAPPINGS]
    assert ours, "the example does not use the pack"
    assert workflow["last_node_id"] >= max(n["id"] for n in workflow["nodes"])
    assert workflow["last_link_id"] >= max((link[0] for link in workflow["links"]), default=0)
    # The MagCache nodes carry the node's defaults (a user loading an example gets what dragging the node gives),
    # but for the curve, which an example may pick.
    optional = object_info["MagCacheApply"]["input"]["optional"]
    defaults = {name: spec[1].get("default") for name, spec in optional.items()}
    for node in (n for n in workflow["nodes"] if n["type"] == "MagCacheApply"):
        values = dict(zip(optional, node["widgets_values"]))
        differ = {k: (v, defaults[k]) for k, v in values.items() if k != "curve" and v != defaults[k]}
        assert not differ, f"MagCache node {node['id']}: (saved, default) {differ}"


def _node(workflow: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(n for n in workflow["nodes"] if n["type"] == kind)


def _set(kind: str, index: int, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(workflow: dict[str, Any]) -> None:
        _node(workflow, kind)["widgets_values"][index] = value

    return mutate


def _unlink_model(workflow: dict[str, Any]) -> None:
    _node(workflow, "KSampler")["inputs"][0]["link"] = None


def _retype_link(workflow: dict[str, Any]) -> None:
    workflow["links"][0][5] = "LATENT"


BROKEN = {
    "unknown node type": (lambda wf: _node(wf, "KSampler").update(type="NoSuchSampler"), "no node of this type"),
    "value below min": (_set("KSampler", 2, 0), "below the minimum"),
    "value above max": (_set("MagCacheApply", 0, 6.5), "above the maximum"),
    "int widget given a float": (_set("KSampler", 2, 30.5), "not an integer"),
    "combo value not offered": (_set("KSampler", 4, "no_such_sampler"), "is not one of"),
    "file name in a combo that lists no files": (_set("KSampler", 5, "simple.safetensors"), "is not one of"),
    "bad control_after_generate": (_set("KSampler", 1, "sometimes"), "control_after_generate"),
    "one widget value missing": (lambda wf: _node(wf, "KSampler")["widgets_values"].pop(), "widget values for"),
    "required input unconnected": (_unlink_model, "is not connected"),
    "link of the wrong type": (_retype_link, "carried as LATENT"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_the_workflow_check_catches(object_info: dict[str, Any], case: str) -> None:
    """The example check is only worth something if it fails on a broken file: one break at a time."""
    workflow = json.loads(TINY_WORKFLOW.read_text())
    assert check_workflow(workflow, object_info, FILE_MARKER) == []
    mutate, expected = BROKEN[case]
    mutate(workflow)
    problems = check_workflow(workflow, object_info, FILE_MARKER)
    assert any(expected in p for p in problems), problems


def test_the_workflow_check_accepts_a_model_file_the_server_lacks(object_info: dict[str, Any]) -> None:
    workflow = json.loads(TINY_WORKFLOW.read_text())
    _node(workflow, "UNETLoader")["widgets_values"][0] = "some_other_model.safetensors"
    assert check_workflow(workflow, object_info, FILE_MARKER) == []
    _node(workflow, "UNETLoader")["widgets_values"][0] = "not a file name"
    assert check_workflow(workflow, object_info, FILE_MARKER)


def test_requires_comfyui_covers_the_checkout_under_test() -> None:
    """pyproject's [tool.comfy].requires-comfyui must include every version this suite is run on
    (0.3.64, 0.8.0, 0.33.0) and must not refuse newer releases than the newest one tested."""
    line = next(x for x in (PACK_ROOT / "pyproject.toml").read_text().splitlines() if x.startswith("requires-comfyui"))
    spec = SpecifierSet(line.split("=", 1)[1].strip().strip('"'))
    assert ROOT is not None
    version = comfyui_version(ROOT)
    assert version in spec, f"ComfyUI {version} passes the host suite? then widen requires-comfyui ({spec})"
    for newer in ("0.33.1", "0.40.0", "1.0.0"):
        assert newer in spec, f"requires-comfyui ({spec}) refuses ComfyUI {newer}: users run releases newer than tested"


@pytest.mark.skipif(not TINY_MODEL.is_file(), reason=NO_TINY_MODEL)
def test_tiny_workflow_runs_end_to_end_in_under_a_minute(
    comfy_server: ComfyServer, object_info: dict[str, Any]
) -> None:
    prompt = to_api(json.loads(TINY_WORKFLOW.read_text()), object_info)
    log_before = len(comfy_server.log())
    started = time.monotonic()
    status, body = comfy_server.queue(prompt)
    assert status == 200, body
    entry = comfy_server.wait_history(body["prompt_id"], timeout=120)
    seconds = time.monotonic() - started
    assert seconds < 60, f"the CPU demo took {seconds:.1f} s"

    save_id = next(k for k, v in prompt.items() if v["class_type"] == "SaveAnimatedWEBP")
    images = entry["outputs"][save_id]["images"]
    assert len(images) == 1
    file = comfy_server.output_dir / images[0]["subfolder"] / images[0]["filename"]
    scale = prompt[next(k for k, v in prompt.items() if v["class_type"] == "MagCacheDemoDecode")]["inputs"]["scale"]
    with Image.open(file) as webp:
        assert webp.n_frames == 4  # the tiny model's clip: 4 frames
        assert webp.size == (32 * scale, 32 * scale)  # 32 x 32 pixels, enlarged
        frames = []
        for i in range(webp.n_frames):
            webp.seek(i)
            frames.append(webp.convert("L").getextrema())
    assert any(low < high for low, high in frames), "every frame is one flat colour"

    log = comfy_server.log()[log_before:]
    plan, summary = PLAN.search(log), SUMMARY.search(log)
    assert plan, f"no plan line in the server log:\n{log[-3000:]}"
    assert summary, f"no summary line in the server log:\n{log[-3000:]}"
    computed, steps = int(plan.group(1)), int(plan.group(2))
    assert steps == prompt[next(k for k, v in prompt.items() if v["class_type"] == "KSampler")]["inputs"]["steps"]
    assert 0 < computed < steps, "the demo should skip some steps"


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("speed", 7.0, "value_bigger_than_max"),
        ("end", -2, "value_smaller_than_min"),
        ("threshold", 5.0, "custom_validation_failed"),
        ("max_consecutive_skips", -2, "custom_validation_failed"),
        ("retention_ratio", float("nan"), "custom_validation_failed"),
    ],
)
def test_out_of_range_input_is_refused_by_validation(
    comfy_server: ComfyServer, object_info: dict[str, Any], field: str, value: float, error: str
) -> None:
    prompt = to_api(json.loads(TINY_WORKFLOW.read_text()), object_info)
    node_id = next(k for k, v in prompt.items() if v["class_type"] == "MagCacheApply")
    prompt[node_id]["inputs"][field] = value
    status, body = comfy_server.queue(prompt)
    assert status == 400, body
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    errors = body["node_errors"][node_id]["errors"]
    assert {e["type"] for e in errors} == {error}
    if error == "custom_validation_failed":  # the node's own check of threshold, K and retention (-1 allowed)
        assert all(f"{field} must be" in e["details"] for e in errors), errors
    else:
        assert [e["extra_info"]["input_name"] for e in errors] == [field]


@pytest.mark.skipif(not TINY_MODEL.is_file(), reason=NO_TINY_MODEL)
def test_an_api_prompt_written_for_the_first_node_runs(comfy_server: ComfyServer, object_info: dict[str, Any]) -> None:
    """The first node's seven inputs, -1 for the curve's values, none of the newer ones: valid, and runs the rule."""
    prompt = to_api(json.loads(TINY_WORKFLOW.read_text()), object_info)
    node_id = next(k for k, v in prompt.items() if v["class_type"] == "MagCacheApply")
    model = prompt[node_id]["inputs"]["model"]
    old = {"curve": "auto", "threshold": -1, "max_consecutive_skips": -1, "retention_ratio": -1}
    prompt[node_id]["inputs"] = {"model": model, **old, "start": 0.0, "end": 1.0, "cache_device": "compute"}
    sampler = next(k for k, v in prompt.items() if v["class_type"] == "KSampler")
    prompt[sampler]["inputs"]["seed"] += 101  # not answered from the cache of another test's run
    log_before = len(comfy_server.log())
    status, body = comfy_server.queue(prompt)
    assert status == 200, body
    comfy_server.wait_history(body["prompt_id"], timeout=120)
    log = comfy_server.log()[log_before:]
    plan = re.search(r"MagCache: computing \d+ of \d+ steps, ~[\d.]+x \(threshold ", log)
    assert plan, f"the old prompt did not run the paper's rule:\n{log[-3000:]}"


@pytest.mark.skipif(not TINY_MODEL.is_file(), reason=NO_TINY_MODEL)
def test_a_replaced_curve_file_is_picked_up_and_a_deleted_one_refused(
    comfy_server: ComfyServer, object_info: dict[str, Any]
) -> None:
    """Same prompt, same curve name: the node runs again only when the file changed; a deleted file is named."""
    import shutil

    folder = comfy_server.base / "models" / "magcache"
    folder.mkdir(parents=True, exist_ok=True)
    curve = folder / "replaced_in_place.safetensors"
    shutil.copyfile(catalog.PRESETS_DIR / "wan2.1_t2v_1.3B.safetensors", curve)
    prompt = to_api(json.loads(TINY_WORKFLOW.read_text()), object_info)
    node_id = next(k for k, v in prompt.items() if v["class_type"] == "MagCacheApply")
    prompt[node_id]["inputs"]["curve"] = curve.name
    chosen = f"MagCache: curve '{curve.name}' (chosen in the node)"

    def run() -> int:
        status, body = comfy_server.queue(prompt)
        assert status == 200, body
        comfy_server.wait_history(body["prompt_id"], timeout=120)
        return comfy_server.log().count(chosen)

    first = run()
    assert first >= 1
    assert run() == first  # nothing changed: ComfyUI answers from its cache
    shutil.copyfile(catalog.PRESETS_DIR / "wan2.1_t2v_14B.safetensors", curve)  # recalibrated under the same name
    assert run() == first + 1
    curve.unlink()
    status, body = comfy_server.queue(prompt)
    if status == 200 and comfyui_version(ROOT).startswith("0.3."):
        # ComfyUI 0.3.64 does not check a V3 node's combo choices when the prompt is queued; the node refuses it.
        refused = f"MagCache input 'curve': no saved curve named '{curve.name}'"
        with pytest.raises(ServerError, match=re.escape(refused)):
            comfy_server.wait_history(body["prompt_id"], timeout=120)
        return
    assert status == 400, body
    errors = body["node_errors"][node_id]["errors"]
    assert [(e["type"], e["extra_info"]["input_name"]) for e in errors] == [("value_not_in_list", "curve")]
    assert curve.name in errors[0]["details"]
