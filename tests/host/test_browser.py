"""The pack in the real page: Debian's Chromium, headless, driven by Playwright, against the real server.

What a user does, done the way a user does it: open the page, load each
example workflow through the page's own file input (what "Open" and drag and
drop call), then build the tiny-model workflow by hand: add a MagCache node
through the node search box, connect it between the loader and the sampler by
dragging the links, queue with Ctrl+Enter, and wait for the picture.

The browser never reaches beyond the test server: every other request is
refused and reported. Chromium is Debian's (``/usr/bin/chromium``); Playwright
is told to use it and never downloads a browser of its own. When Chromium is
missing, the test installs it with apt-get if it runs as root, and otherwise
skips with one line. On 2 busy cores the module takes about 40-60 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from comfy_server import EXAMPLES, NO_TINY_MODEL, PACK_ROOT, TINY_MODEL, TINY_WORKFLOW, ComfyServer

from comfyui_magcache.cache.config import DEFAULT_SPEED

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
#: Where the finished graph's screenshot goes when MAGCACHE_UPDATE_SCREENSHOT=1 (the README shows it).
README_SCREENSHOT = PACK_ROOT / "docs" / "screenshot.png"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.json"))
PLAN = re.compile(r"MagCache: computing \d+ of \d+ steps")


def chromium() -> str:
    """Debian's Chromium, installed with apt-get when missing and possible; otherwise the test is skipped."""
    if CHROMIUM.is_file():
        return str(CHROMIUM)
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            subprocess.run(cmd, env=env, capture_output=True, timeout=1200, check=False)
    if not CHROMIUM.is_file():
        pytest.skip("Debian's chromium is not installed and apt-get could not install it; browser tests skipped")
    return str(CHROMIUM)


class PageWatch:
    """Everything that goes wrong in the page: uncaught errors, console errors, failed and off-host requests."""

    def __init__(self, page: Any, server_url: str) -> None:
        self.server_url = server_url
        self.errors: list[str] = []
        self.failed: list[tuple[int, str]] = []
        self.offhost: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("console", self._console)
        page.on("response", lambda r: self.failed.append((r.status, r.url)) if r.status >= 400 else None)
        page.route("**/*", self._route)

    def _console(self, msg: Any) -> None:
        # A failed request is also logged as a console error; it is judged by its URL in `failed`.
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            self.errors.append(f"console: {msg.text}")

    def _route(self, route: Any) -> None:
        if route.request.url.startswith(self.server_url):
            route.continue_()
        else:
            self.offhost.append(route.request.url)
            route.abort()

    def reset(self) -> None:
        self.errors.clear()
        self.failed.clear()


def _pack_errors(watch: PageWatch) -> list[str]:
    """The page's errors less its refused probes of the examples' model download addresses.

    The examples list their models' download addresses (properties.models);
    the page of ComfyUI 0.33 (frontend 1.49) asks them for the file sizes of
    models the test server lacks, and the page's own Content Security Policy
    refuses it. That is the page's missing-model list at work (test_page.py
    checks it), not an error of the pack.
    """
    return [e for e in watch.errors if not ("Content Security Policy" in e and "https://huggingface.co/" in e)]


def _expected_miss(url: str, input_files: set[str]) -> bool:
    """A 404 the page is expected to get from a test server: optional user files, input images it lacks."""
    parsed = urlparse(url)
    if parsed.path in ("/user.css", "/api/userdata/user.css") or parsed.path.startswith("/api/userdata"):
        return True  # the page probes per-user files a fresh user does not have
    query = parse_qs(parsed.query)
    is_input = parsed.path == "/api/view" and query.get("type") == ["input"]
    return is_input and query.get("filename", [""])[0] in input_files


@pytest.fixture(scope="module")
def page(comfy_server: ComfyServer) -> Iterator[tuple[Any, PageWatch]]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed; browser tests skipped")
    executable = chromium()
    # A fresh user directory would open the template browser over the canvas on first load.
    status, _ = comfy_server.request("POST", "/settings/Comfy.TutorialCompleted", True)
    assert status == 200
    # The examples name their model files (properties.models), which the test server lacks: the page's
    # missing-models list is checked in test_page.py; here it would cover the canvas.
    status, _ = comfy_server.request("POST", "/settings/Comfy.Workflow.ShowMissingModelsWarning", False)
    assert status == 200
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            tab = browser.new_page(viewport={"width": 1600, "height": 1000})
            watch = PageWatch(tab, comfy_server.url)
            tab.goto(comfy_server.url)
            tab.wait_for_function(
                "() => window.app && window.app.graph && window.LiteGraph"
                " && window.LiteGraph.registered_node_types['MagCacheApply']",
                timeout=120_000,
            )
            # The page's own start-up noise (ComfyUI 0.3.64's page throws once while it
            # registers its settings) is not the pack's; only what mentions the pack counts here.
            assert not [e for e in watch.errors if "magcache" in e.lower()], watch.errors
            assert not watch.offhost, f"the page tried to reach beyond the server: {watch.offhost}"
            yield tab, watch
        finally:
            browser.close()


def _load(tab: Any, path: Path, expected_nodes: list[int]) -> None:
    """Open a workflow file through the page's file input, as its Open menu and drag and drop do."""
    tab.set_input_files("#comfy-file-input", str(path))
    # Node ids are numbers in the file; the page of ComfyUI 0.33 (frontend 1.49) holds them as strings.
    tab.wait_for_function(
        "ids => JSON.stringify(window.app.graph._nodes.map(n => Number(n.id)).sort((a, b) => a - b))"
        " === JSON.stringify(ids)",
        arg=sorted(expected_nodes),
        timeout=30_000,
    )
    tab.wait_for_timeout(800)  # dialogs about missing nodes open right after the graph is configured


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_example_loads_without_missing_nodes_or_errors(page: tuple[Any, PageWatch], path: Path) -> None:
    tab, watch = page
    workflow = json.loads(path.read_text())
    watch.reset()
    _load(tab, path, [n["id"] for n in workflow["nodes"]])

    dialogs = tab.locator(".p-dialog:visible")
    assert dialogs.count() == 0, f"a dialog opened: {dialogs.first.inner_text()[:500]}"
    assert tab.locator(".p-toast-message-error:visible").count() == 0, "an error toast appeared"
    unknown = tab.evaluate(
        "() => window.app.graph._nodes.filter(n => !window.LiteGraph.registered_node_types[n.type]).map(n => n.type)"
    )
    assert not unknown, f"the page does not know these node types: {unknown}"
    # The page rebuilt each node's widgets from the server's definitions; saving
    # it again must give back the file's values, so no widget shifted or vanished.
    # A newer ComfyUI may declare widgets after them that the file predates
    # (CreateVideo's bit_depth in 0.33): the page appends those with their defaults.
    serialized = tab.evaluate("() => window.app.graph.serialize()")["nodes"]
    saved = {int(n["id"]): n.get("widgets_values") or [] for n in serialized}
    for node in workflow["nodes"]:
        values = node["widgets_values"]
        assert saved[node["id"]][: len(values)] == values, f"node {node['id']} ({node['type']}) changed on load"

    input_files = {v for n in workflow["nodes"] if n["type"] == "LoadImage" for v in n["widgets_values"][:1]}
    assert not _pack_errors(watch), watch.errors
    assert all(_expected_miss(url, input_files) for _, url in watch.failed), watch.failed
    assert not watch.offhost, watch.offhost


def _without_magcache(workflow: dict[str, Any]) -> dict[str, Any]:
    """The tiny-model example with its MagCache node taken out and the loader wired straight to the sampler."""
    wf = json.loads(json.dumps(workflow))
    node = next(n for n in wf["nodes"] if n["type"] == "MagCacheApply")
    link_in = next(link for link in wf["links"] if link[3] == node["id"])
    link_out = next(link for link in wf["links"] if link[1] == node["id"])
    wf["nodes"].remove(node)
    wf["links"] = [link for link in wf["links"] if link not in (link_in, link_out)]
    loader = next(n for n in wf["nodes"] if n["id"] == link_in[1])
    sampler = next(n for n in wf["nodes"] if n["id"] == link_out[3])
    wf["links"].append([link_in[0], loader["id"], link_in[2], sampler["id"], link_out[4], "MODEL"])
    loader["outputs"][link_in[2]]["links"] = [link_in[0]]
    sampler["inputs"][link_out[4]]["link"] = link_in[0]
    # Another seed than the example's, so the server cannot answer from its cache of an earlier run.
    sampler["widgets_values"][0] += 1
    return wf


@pytest.mark.skipif(not TINY_MODEL.is_file(), reason=NO_TINY_MODEL)
def test_add_magcache_by_search_connect_and_run(
    page: tuple[Any, PageWatch], comfy_server: ComfyServer, tmp_path: Path
) -> None:
    tab, watch = page
    watch.reset()
    example = json.loads(TINY_WORKFLOW.read_text())
    spot = next(n for n in example["nodes"] if n["type"] == "MagCacheApply")["pos"]
    plain = _without_magcache(example)
    path = tmp_path / "MagCache on the tiny model.json"
    path.write_text(json.dumps(plain))
    _load(tab, path, [n["id"] for n in plain["nodes"]])
    loader_id = next(n["id"] for n in plain["nodes"] if n["type"] == "UNETLoader")
    sampler_id = next(n["id"] for n in plain["nodes"] if n["type"] == "KSampler")

    canvas = tab.locator("canvas#graph-canvas").bounding_box()

    def on_screen(x: float, y: float) -> tuple[float, float]:
        cx, cy = tab.evaluate("p => Array.from(window.app.canvas.ds.convertOffsetToCanvas(p))", [x, y])
        return canvas["x"] + cx, canvas["y"] + cy

    def slot(node_id: int, is_input: bool, index: int) -> tuple[float, float]:
        pos = tab.evaluate(
            "([id, isInput, i]) => Array.from(window.app.graph.getNodeById(id).getConnectionPos(isInput, i))",
            [node_id, is_input, index],
        )
        return on_screen(*pos)

    def drag(start: tuple[float, float], end: tuple[float, float]) -> None:
        tab.mouse.move(*start)
        tab.mouse.down()
        tab.mouse.move(*end, steps=12)
        tab.mouse.up()
        tab.wait_for_timeout(300)

    # The node search box: double-click on empty canvas (where the example has its MagCache
    # node), type, take the first match. Typing before the box has the focus would press shortcuts.
    target = on_screen(spot[0] + 40, spot[1] + 120)
    assert tab.evaluate("([x, y]) => document.elementFromPoint(x, y).id", list(target)) == "graph-canvas"
    tab.mouse.dblclick(*target)
    tab.wait_for_function("() => document.activeElement && document.activeElement.tagName === 'INPUT'", timeout=30_000)
    tab.keyboard.type("MagCache", delay=40)
    # Wait until the result list has caught up with the typing: the pack's nodes listed, "MagCache" first.
    # The box is an autocomplete up to frontend 1.3x, a list of options (#results-list) in 1.49 (ComfyUI 0.33).
    tab.wait_for_function(
        """() => {
            let options = document.querySelectorAll('.p-autocomplete-option');
            if (!options.length) options = document.querySelectorAll('#results-list [role=option]');
            const items = [...options].map(o => o.innerText);
            return items.length > 0 && items[0].split('\\n')[0].trim() === 'MagCache'
                && items.some(text => text.includes('MagCache Curve Plot'));
        }""",
        timeout=30_000,
    )
    tab.keyboard.press("Enter")
    tab.wait_for_function("() => window.app.graph._nodes.some(n => n.type === 'MagCacheApply')", timeout=30_000)
    # Node ids are numbers here; the page of ComfyUI 0.33 (frontend 1.49) holds them as strings.
    added = int(tab.evaluate("() => window.app.graph._nodes.find(n => n.type === 'MagCacheApply').id"))
    tab.locator(".p-dialog:visible").first.wait_for(state="hidden", timeout=10_000)  # the search box has closed
    tab.wait_for_timeout(500)

    # Frontend 1.49 (ComfyUI 0.33) hands the new node to the pointer ("ghost" placement, centred
    # under it): move it to where the example has it, clear of the loader, and click to put it down.
    # Older pages put it down at the double-click at once.
    if tab.evaluate("() => window.app.canvas.state?.ghostNodeId != null"):
        width = tab.evaluate("id => window.app.graph.getNodeById(id).size[0]", added)
        tab.mouse.move(*on_screen(spot[0] + width / 2, spot[1] - 10), steps=12)
        tab.mouse.down()
        tab.mouse.up()
        tab.wait_for_function("() => window.app.canvas.state.ghostNodeId == null", timeout=10_000)
        placed = tab.evaluate("id => Array.from(window.app.graph.getNodeById(id).pos)", added)
        assert abs(placed[0] - spot[0]) < 20 and abs(placed[1] - spot[1]) < 20, (placed, spot)
        tab.wait_for_timeout(300)

    drag(slot(loader_id, False, 0), slot(added, True, 0))
    drag(slot(added, False, 0), slot(sampler_id, True, 0))
    links = tab.evaluate(
        "() => window.app.graph._nodes.flatMap(n => (n.inputs || []).filter(i => i.link != null)"
        ".map(i => { const l = window.app.graph.links[i.link] ?? window.app.graph.links.get(i.link);"
        " return [Number(l.origin_id), Number(l.target_id), i.name]; }))"
    )
    assert [loader_id, added, "model"] in links
    assert [added, sampler_id, "model"] in links
    assert not any(origin == loader_id and target == sampler_id for origin, target, _ in links)

    runs_before = len(PLAN.findall(comfy_server.log()))
    started = time.monotonic()
    tab.mouse.click(*on_screen(spot[0] + 20, spot[1] + 400))  # focus the canvas, away from any widget
    tab.keyboard.press("Control+Enter")
    tab.wait_for_function(
        "() => Object.values(window.app.nodeOutputs || {}).some(o => o.images && o.images.length)", timeout=120_000
    )
    seconds = time.monotonic() - started
    image = next(o for o in tab.evaluate("() => window.app.nodeOutputs").values() if o.get("images"))["images"][0]
    assert (comfy_server.output_dir / image["subfolder"] / image["filename"]).is_file()
    assert len(PLAN.findall(comfy_server.log())) == runs_before + 1, "the queued run did not go through MagCache"
    assert seconds < 60

    # The node's box grows with the text the run sent (curve, plan, summary) only on a resize: fit it, so
    # the screenshot shows all of it.
    tab.wait_for_timeout(500)
    tab.evaluate(
        "id => { const n = window.app.graph.getNodeById(id); const h = n.computeSize()[1];"
        " n.setSize([Math.max(n.size[0], 330), Math.max(n.size[1], h) + 140]);"
        " window.app.graph.setDirtyCanvas(true, true); }",
        added,
    )
    tab.mouse.move(canvas["x"] + canvas["width"] - 5, canvas["y"] + canvas["height"] / 2)
    tab.wait_for_timeout(1500)  # the preview image loads and the canvas redraws
    shot = README_SCREENSHOT if os.environ.get("MAGCACHE_UPDATE_SCREENSHOT") == "1" else tmp_path / "screenshot.png"
    tab.screenshot(path=str(shot))
    assert shot.stat().st_size > 20_000
    assert not watch.errors, watch.errors
    assert not watch.offhost, watch.offhost


# -- saved work and what the nodes show -------------------------------------------------------------------

#: Workflows saved with the first MagCache node (seven widget values, -1 for "the curve's value").
SAVED_V1 = Path(__file__).parent / "data"
SUMMARY = re.compile(r"MagCache: skipped the .+ on \d+ of \d+ model calls")
TEXT_PREVIEW = "$$node-text-preview"  # the page's widget for a node's progress text


def _widgets(tab: Any, node_id: int) -> dict[str, Any]:
    """A node's widget values by name, as the page holds them."""
    return tab.evaluate(
        "id => Object.fromEntries((window.app.graph.getNodeById(id).widgets || []).map(w => [w.name, w.value]))",
        node_id,
    )


def _queue_and_wait(tab: Any, node_id: int, timeout: float = 180_000) -> dict[str, Any]:
    """Queue the graph as the page's Queue button does; the output the page then holds for ``node_id``."""
    tab.evaluate("() => { window.app.nodeOutputs = {}; }")
    tab.evaluate("() => window.app.queuePrompt(0, 1)")
    tab.wait_for_function(
        "id => { const o = (window.app.nodeOutputs || {})[String(id)]; return !!(o && o.images && o.images.length); }",
        arg=node_id,
        timeout=timeout,
    )
    return tab.evaluate("id => window.app.nodeOutputs[String(id)]", node_id)


def _text_on(tab: Any, node_id: int, pattern: re.Pattern[str], timeout: float = 90_000) -> str:
    """The text the page shows in the node's box, once it matches ``pattern``."""
    tab.wait_for_function(
        "([id, name, source]) => { const w = (window.app.graph.getNodeById(id).widgets || [])"
        ".find(w => w.name === name); return !!(w && new RegExp(source).test(String(w.value))); }",
        arg=[node_id, TEXT_PREVIEW, pattern.pattern],
        timeout=timeout,
    )
    return str(_widgets(tab, node_id)[TEXT_PREVIEW])


def test_a_workflow_saved_with_the_first_node_keeps_its_settings(page: tuple[Any, PageWatch]) -> None:
    """Widget values are stored by position: the pack's page extension moves the old seven into the new order."""
    tab, watch = page
    watch.reset()
    path = SAVED_V1 / "saved_v1_magcache_wan2.1_t2v_1.3B.json"
    workflow = json.loads(path.read_text())
    node = next(n for n in workflow["nodes"] if n["type"] == "MagCacheApply")
    assert node["widgets_values"] == ["auto", -1, -1, -1, 0.0, 1.0, "compute"]  # the file is really the old layout
    _load(tab, path, [n["id"] for n in workflow["nodes"]])
    widgets = _widgets(tab, node["id"])
    assert {k: widgets[k] for k in ("schedule", "reuse", "cfg_cache", "curve", "settings")} == {
        "schedule": "MagCache rule",  # what the first node did
        "reuse": "plain",
        "cfg_cache": False,
        "curve": "auto",
        "settings": "recommended by the curve",  # its three -1
    }
    assert {k: widgets[k] for k in ("start", "end", "cache_device")} == {
        "start": 0.0,
        "end": 1.0,
        "cache_device": "compute",
    }
    assert widgets["speed"] == DEFAULT_SPEED
    assert -1 not in (widgets["threshold"], widgets["max_consecutive_skips"], widgets["retention_ratio"])
    assert not _pack_errors(watch), watch.errors


@pytest.mark.skipif(not TINY_MODEL.is_file(), reason=NO_TINY_MODEL)
def test_an_old_tiny_workflow_runs_and_the_node_shows_the_plan_and_summary(
    page: tuple[Any, PageWatch], comfy_server: ComfyServer, tmp_path: Path
) -> None:
    tab, watch = page
    watch.reset()
    workflow = json.loads((SAVED_V1 / "saved_v1_magcache_tiny_wan_digits_cpu.json").read_text())
    sampler = next(n for n in workflow["nodes"] if n["type"] == "KSampler")
    sampler["widgets_values"][0] += 7  # a seed of its own, so the server cannot answer from its cache
    path = tmp_path / "old tiny workflow.json"
    path.write_text(json.dumps(workflow))
    _load(tab, path, [n["id"] for n in workflow["nodes"]])
    magcache = next(n["id"] for n in workflow["nodes"] if n["type"] == "MagCacheApply")
    saver = next(n["id"] for n in workflow["nodes"] if n["type"] == "SaveAnimatedWEBP")
    _queue_and_wait(tab, saver)
    text = _text_on(tab, magcache, SUMMARY)
    assert PLAN.search(text), text  # the plan of the run ...
    assert "threshold" in text, text  # ... made by the paper's rule, as the old workflow asked
    assert "curve '" in text, text  # which curve the node picked
    assert SUMMARY.search(text), text  # ... and what the run skipped
    assert not watch.errors, watch.errors


def _calibration_workflow(example: dict[str, Any], name: str) -> dict[str, Any]:
    """The tiny-model example with MagCache Calibrate in MagCache's place and a Curve Plot after the sampler."""
    wf = json.loads(json.dumps(example))
    node = next(n for n in wf["nodes"] if n["type"] == "MagCacheApply")
    sampler = next(n for n in wf["nodes"] if n["type"] == "KSampler")
    sampler["widgets_values"][0] += 11
    node["type"] = "MagCacheCalibrate"
    node["properties"] = {"Node name for S&R": "MagCacheCalibrate"}
    node["widgets_values"] = [name, "replace", "auto"]
    plot_id, name_link, samples_link = max(n["id"] for n in wf["nodes"]) + 1, 900, 901
    node["outputs"] = [
        {"name": "model", "type": "MODEL", "links": node["outputs"][0]["links"], "slot_index": 0},
        {"name": "curve_name", "type": "STRING", "links": [name_link], "slot_index": 1},
    ]
    sampler["outputs"][0]["links"] = [*sampler["outputs"][0]["links"], samples_link]
    wf["nodes"].append(
        {
            "id": plot_id, "type": "MagCacheCurvePlot", "pos": [680, 420], "size": [480, 360], "flags": {},
            "order": 20, "mode": 0, "properties": {"Node name for S&R": "MagCacheCurvePlot"}, "widgets_values": [],
            "inputs": [
                {"name": "curve_name", "type": "STRING", "link": name_link},
                {"name": "samples", "type": "LATENT", "link": samples_link},
            ],
            "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": []}],
        }
    )  # fmt: skip
    wf["links"] += [
        [name_link, node["id"], 1, plot_id, 0, "STRING"],
        [samples_link, sampler["id"], 0, plot_id, 1, "LATENT"],
    ]
    wf["last_node_id"], wf["last_link_id"] = plot_id, samples_link
    return wf


@pytest.mark.skipif(not TINY_MODEL.is_file(), reason=NO_TINY_MODEL)
def test_calibrate_and_curve_plot_show_the_saved_file_and_the_plot_on_their_nodes(
    page: tuple[Any, PageWatch], comfy_server: ComfyServer, tmp_path: Path
) -> None:
    tab, watch = page
    watch.reset()
    workflow = _calibration_workflow(json.loads(TINY_WORKFLOW.read_text()), "browser_test_curve")
    path = tmp_path / "calibrate the tiny model.json"
    path.write_text(json.dumps(workflow))
    _load(tab, path, [n["id"] for n in workflow["nodes"]])
    calibrate = next(n["id"] for n in workflow["nodes"] if n["type"] == "MagCacheCalibrate")
    plot = next(n["id"] for n in workflow["nodes"] if n["type"] == "MagCacheCurvePlot")

    plot_output = _queue_and_wait(tab, plot)
    saved = comfy_server.base / "models" / "magcache" / "browser_test_curve.safetensors"
    assert saved.is_file()
    # Curve Plot: its image on the node itself, no Preview Image node in the workflow.
    image = plot_output["images"][0]
    assert image["type"] == "temp" and (comfy_server.base / "temp" / image["subfolder"] / image["filename"]).is_file()
    # Calibrate: where the curve went, and its plot, on the node.
    text = _text_on(tab, calibrate, re.compile("saved to"))
    assert str(saved) in text, text
    tab.wait_for_function(
        "id => { const o = (window.app.nodeOutputs || {})[String(id)]; return !!(o && o.images && o.images.length); }",
        arg=calibrate,
        timeout=90_000,
    )
    shown = tab.evaluate("id => window.app.nodeOutputs[String(id)].images[0]", calibrate)
    assert (comfy_server.base / "temp" / shown["subfolder"] / shown["filename"]).is_file()
    assert not watch.errors, watch.errors
