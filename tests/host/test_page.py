"""The pack in the page beyond its nodes: help pages, translations, search, templates, the tiny model.

Driven as a user would, in Debian's Chromium (Playwright, headless) against a
real server of the checkout under test, on the page that checkout pins
(frontend 1.27 on ComfyUI 0.3.64, 1.35 on 0.8.0, 1.49 on 0.33.0):

* a node's help page opens from the node library's "?" button, in English,
  and in Chinese once the page's language is Chinese;
* the node search box finds MagCache by the words people look for it with;
* the template browser lists the pack's examples with their thumbnails;
* the tiny-model template opens and runs on a server where nothing was
  copied into ``models/``: the pack's own folder registration lists the model;
* an example whose model files the server lacks names them with their
  download addresses (``properties.models``).

This module starts its own server, with no model file placed in ``models/``
(the shared ``comfy_server`` fixture links the tiny model there), and its own
browser. The browser never reaches beyond the server.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from comfy_host import ROOT
from comfy_server import EXAMPLES, PACK_DIR_NAME, TINY_MODEL, TINY_WORKFLOW, ComfyServer, page_packages
from test_browser import CHROMIUM_ARGS, PageWatch, chromium

LOCALES = Path(__file__).resolve().parents[2] / "locales"
HELP = Path(__file__).resolve().parents[2] / "nodes" / "web" / "docs"
NODES = ("MagCacheApply", "MagCacheCalibrate", "MagCacheCurvePlot", "MagCacheDemoPrompt", "MagCacheDemoDecode")
#: Words users type for a caching node; the first is a display-name match on every page.
SEARCH_WORDS = ("cache", "teacache", "speed up", "faster")
READY = (
    "() => window.app && window.app.graph && window.LiteGraph"
    " && window.LiteGraph.registered_node_types['MagCacheApply']"
)


def frontend_assets(root: Path) -> Path:
    """The static assets of the page the server of ``root`` serves (the pinned package, as comfy_server picks it)."""
    target = page_packages(root)
    if target is not None:
        return target / "comfyui_frontend_package" / "static" / "assets"
    spec = importlib.util.find_spec("comfyui_frontend_package")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "static" / "assets"


def frontend_has_search_aliases(root: Path) -> bool:
    """Whether the page's node search reads ``search_aliases`` from the node definitions (frontend 1.4x and later)."""
    return any("search_aliases" in p.read_text(errors="replace") for p in frontend_assets(root).glob("*.js"))


@pytest.fixture(scope="module")
def server() -> Iterator[ComfyServer]:
    assert ROOT is not None
    with ComfyServer(ROOT) as running:  # no models: nothing copied by hand
        status, _ = running.request("POST", "/settings/Comfy.TutorialCompleted", True)
        assert status == 200
        yield running


@pytest.fixture(scope="module")
def browser(server: ComfyServer) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed; browser tests skipped")
    executable = chromium()
    with sync_api.sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


def open_page(browser: Any, server: ComfyServer) -> tuple[Any, PageWatch]:
    tab = browser.new_page(viewport={"width": 1600, "height": 1000})
    watch = PageWatch(tab, server.url)
    tab.goto(server.url)
    tab.wait_for_function(READY, timeout=120_000)
    tab.wait_for_timeout(500)
    # The page's own start-up noise (the wait above reads app.graph before the page has made it, which
    # frontend 1.49 logs as an error) is not the pack's: watch from here on.
    watch.reset()
    return tab, watch


@pytest.fixture
def page(browser: Any, server: ComfyServer) -> Iterator[tuple[Any, PageWatch]]:
    """A fresh tab on the server's page, in English; closed after the test."""
    status, _ = server.request("POST", "/settings/Comfy.Locale", "en")
    assert status == 200
    # Frontend 1.4x keeps its properties panel open across pages (a saved setting); start without it.
    status, _ = server.request("POST", "/settings/Comfy.RightSidePanel.IsOpen", False)
    assert status == 200
    tab, watch = open_page(browser, server)
    try:
        yield tab, watch
    finally:
        tab.close()


def run_command(tab: Any, command: str) -> None:
    """Run one of the page's commands (what its menus and keyboard shortcuts call)."""
    tab.evaluate("id => window.app.extensionManager.command.execute(id)", command)


def open_help(
    tab: Any, display_name: str, node_type: str, panel: str = "Toggle properties panel", info: str = "Info"
) -> None:
    """Open a node's help as the page offers it: the node library's "?" button on the node's entry
    (frontend 1.27 to 1.3x), or, where the library has none (1.4x), the Info tab of a selected node's
    properties panel. ``panel`` and ``info`` are those two controls' labels in the page's language.
    """
    run_command(tab, "Workspace.ToggleSidebarTab.node-library")
    search = tab.locator("input[placeholder*='Search'], input[placeholder*='搜索']").first
    search.wait_for(state="visible", timeout=20_000)
    search.fill(display_name)
    entry = tab.get_by_text(display_name, exact=True).first
    entry.wait_for(state="visible", timeout=20_000)
    entry.hover()
    button = tab.locator(".help-button:visible").first
    try:
        button.wait_for(state="visible", timeout=5_000)
    except Exception:  # Playwright's timeout: this page's library has no help button
        run_command(tab, "Workspace.ToggleSidebarTab.node-library")  # close the library
        tab.evaluate(
            """type => {
                const node = window.LiteGraph.createNode(type);
                node.pos = [200, 200];
                window.app.graph.add(node);
                window.app.canvas.selectNode(node);
                window.app.canvas.setDirty(true, true);
            }""",
            node_type,
        )
        tab.wait_for_timeout(500)
        tab_button = tab.get_by_text(info, exact=True).first
        if not tab_button.is_visible():  # the panel stays open from an earlier page (a saved setting)
            tab.get_by_label(panel, exact=True).first.click()
        tab_button.click()
        return
    button.click()


# -- help pages -------------------------------------------------------------------------------------------


def test_every_node_has_a_help_page_in_english_and_chinese() -> None:
    for node in NODES:
        english = (HELP / f"{node}.md").read_text()
        chinese = (HELP / node / "zh.md").read_text()
        assert english.startswith("# ") and chinese.startswith("# ")
        assert any("\u4e00" <= ch <= "\u9fff" for ch in chinese), f"{node}/zh.md has no Chinese text"


def test_the_server_serves_the_help_where_the_page_looks(server: ComfyServer) -> None:
    info = server.object_info()
    for node in NODES:
        # The page takes the folder name from python_module and asks /extensions/<folder>/docs/.
        assert info[node]["python_module"] == f"custom_nodes.{PACK_DIR_NAME}"
        status, text = server.request("GET", f"/extensions/{PACK_DIR_NAME}/docs/{node}.md")
        assert status == 200 and text == (HELP / f"{node}.md").read_text()
        status, text = server.request("GET", f"/extensions/{PACK_DIR_NAME}/docs/{node}/zh.md")
        assert status == 200 and text == (HELP / node / "zh.md").read_text()


def test_help_page_opens_from_the_node_library(page: tuple[Any, PageWatch]) -> None:
    tab, watch = page
    open_help(tab, "MagCache Calibrate", "MagCacheCalibrate")
    text = tab.get_by_text("Measures how much this model's blocks change", exact=False).first
    text.wait_for(state="visible", timeout=20_000)
    # The page renders the Markdown: the input table became a table.
    assert tab.locator("table:visible").filter(has_text="if_exists").count() >= 1
    assert not watch.errors, watch.errors
    assert not watch.offhost, watch.offhost


def test_chinese_page_shows_translated_names_and_the_chinese_help(browser: Any, server: ComfyServer) -> None:
    translations = server.get("/i18n")
    ours = json.loads((LOCALES / "zh" / "nodeDefs.json").read_text())
    assert translations["zh"]["nodeDefs"]["MagCacheApply"] == ours["MagCacheApply"]
    status, _ = server.request("POST", "/settings/Comfy.Locale", "zh")
    assert status == 200
    tab, watch = open_page(browser, server)
    try:
        # The page names the node in Chinese: in the node library and on a node added to the graph.
        title = tab.evaluate(
            "() => { const n = window.LiteGraph.createNode('MagCacheApply'); window.app.graph.add(n); return n.title; }"
        )
        assert title == ours["MagCacheApply"]["display_name"]
        # The page's own Chinese labels of the properties panel and its Info tab (frontend 1.4x).
        open_help(tab, ours["MagCacheCalibrate"]["display_name"], "MagCacheCalibrate", "开关属性面板", "信息")
        tab.get_by_text("测量该模型的模块", exact=False).first.wait_for(state="visible", timeout=20_000)
        assert not [e for e in watch.errors if "magcache" in e.lower()], watch.errors
    finally:
        tab.close()
        server.request("POST", "/settings/Comfy.Locale", "en")


# -- search -----------------------------------------------------------------------------------------------


def search_results(tab: Any, words: str) -> list[str]:
    """The first lines of the node search box's results for ``words`` (double-click on the empty canvas, type)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    # An empty graph, so the double-click lands on the canvas, not on a node of the page's default workflow.
    tab.evaluate("() => { window.app.graph.clear(); window.app.canvas.setDirty(true, true); }")
    tab.wait_for_timeout(300)
    canvas = tab.locator("canvas#graph-canvas").bounding_box()
    spot = (canvas["x"] + canvas["width"] * 0.5, canvas["y"] + canvas["height"] * 0.5)
    assert tab.evaluate("([x, y]) => document.elementFromPoint(x, y).id", list(spot)) == "graph-canvas"
    # On a busy 2-core machine the page sometimes takes the double-click as two clicks: try again (three times).
    for attempt in range(3):
        tab.mouse.dblclick(*spot)
        try:
            tab.wait_for_function("() => document.activeElement && document.activeElement.tagName === 'INPUT'",
                                  timeout=15_000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
            tab.keyboard.press("Escape")
    tab.keyboard.type(words, delay=30)
    tab.wait_for_timeout(1200)  # the list follows the typing
    items = tab.evaluate(
        """() => {
            let options = document.querySelectorAll('.p-autocomplete-option');
            if (!options.length) options = document.querySelectorAll('#results-list [role=option]');
            return [...options].map(o => o.innerText.split('\\n')[0].trim());
        }"""
    )
    tab.keyboard.press("Escape")
    return items


@pytest.mark.parametrize("words", SEARCH_WORDS)
def test_search_box_finds_magcache(page: tuple[Any, PageWatch], server: ComfyServer, words: str) -> None:
    tab, _ = page
    assert ROOT is not None
    if words != "cache" and not frontend_has_search_aliases(ROOT):
        pytest.skip(
            f"the page of this ComfyUI searches node names only (no search_aliases); '{words}' cannot find any "
            "node by another word here"
        )
    aliases = server.get("/object_info/MagCacheApply")["MagCacheApply"].get("search_aliases")
    results = search_results(tab, words)
    assert "MagCache" in results[:5], f"search for {words!r} gave {results[:10]}; the node's search_aliases: {aliases}"


# -- templates --------------------------------------------------------------------------------------------


def open_pack_templates(tab: Any) -> Any:
    """Open the template browser at the pack's entry; the dialog."""
    run_command(tab, "Comfy.BrowseTemplates")
    dialog = tab.locator("[role=dialog]:visible").last
    dialog.wait_for(state="visible", timeout=30_000)
    dialog.get_by_text(PACK_DIR_NAME, exact=True).first.click()
    return dialog


#: The size of the picture shown on the card titled ``name`` (the page may show it from a blob: address).
CARD_PICTURE = """name => {
    const title = [...document.querySelectorAll('[role=dialog] *')]
        .find(e => e.children.length === 0 && e.textContent.trim() === name);
    let card = title;
    while (card && !card.querySelector('img')) card = card.parentElement;
    const shown = card && [...card.querySelectorAll('img')].find(i => i.complete && i.naturalWidth > 0);
    return shown ? [shown.naturalWidth, shown.naturalHeight] : null;
}"""


def test_template_browser_shows_every_example_with_its_thumbnail(page: tuple[Any, PageWatch]) -> None:
    tab, watch = page
    served: dict[str, int] = {}
    tab.on("response", lambda r: served.__setitem__(r.url, r.status) if r.url.endswith(".jpg") else None)
    dialog = open_pack_templates(tab)
    examples = sorted(EXAMPLES.glob("*.json"))
    for path in examples:
        assert path.with_suffix(".jpg").is_file(), f"{path.name} has no thumbnail"
    dialog.get_by_text(TINY_WORKFLOW.stem, exact=True).first.scroll_into_view_if_needed(timeout=20_000)
    tab.wait_for_function(f"name => ({CARD_PICTURE})(name) !== null", arg=TINY_WORKFLOW.stem, timeout=20_000)
    assert tab.evaluate(CARD_PICTURE, TINY_WORKFLOW.stem) == [512, 512]
    # Every card asked the server for its picture, at the address the template convention gives.
    tab.wait_for_timeout(1000)
    for path in examples:
        url = f"/api/workflow_templates/{PACK_DIR_NAME}/{path.stem}.jpg"
        if not any(u.endswith(url) for u in served):  # cards further down load when scrolled to
            dialog.get_by_text(path.stem, exact=True).first.scroll_into_view_if_needed(timeout=20_000)
            tab.wait_for_timeout(800)
        assert [status for u, status in served.items() if u.endswith(url)] == [200], (url, served)
    assert not watch.errors, watch.errors


@pytest.mark.skipif(not TINY_MODEL.is_file(), reason="the embedded tiny model is not built")
def test_tiny_template_runs_with_nothing_copied(page: tuple[Any, PageWatch], server: ComfyServer) -> None:
    tab, watch = page
    assert not (server.base / "models" / "diffusion_models" / TINY_MODEL.name).exists()
    loaders = server.get("/object_info/UNETLoader")["UNETLoader"]["input"]["required"]["unet_name"]
    choices = loaders[1]["options"] if loaders[0] == "COMBO" else loaders[0]
    assert TINY_MODEL.name in choices
    assert not [c for c in choices if "codec" in c], choices

    dialog = open_pack_templates(tab)
    dialog.get_by_text(TINY_WORKFLOW.stem, exact=True).first.click()
    tab.wait_for_function(
        "() => window.app.graph._nodes.some(n => n.type === 'MagCacheApply')"
        " && window.app.graph._nodes.some(n => n.type === 'UNETLoader')",
        timeout=30_000,
    )
    tab.wait_for_timeout(800)
    assert tab.locator(".p-dialog:visible").count() == 0, tab.locator(".p-dialog:visible").first.inner_text()[:500]
    canvas = tab.locator("canvas#graph-canvas").bounding_box()
    tab.mouse.click(canvas["x"] + canvas["width"] - 20, canvas["y"] + canvas["height"] - 120)
    tab.keyboard.press("Control+Enter")
    tab.wait_for_function(
        "() => Object.values(window.app.nodeOutputs || {}).some(o => o.images && o.images.length)", timeout=120_000
    )
    image = next(o for o in tab.evaluate("() => window.app.nodeOutputs").values() if o.get("images"))["images"][0]
    assert (server.output_dir / image["subfolder"] / image["filename"]).stat().st_size > 1000
    assert "MagCache: computing" in server.log()
    assert not watch.errors, watch.errors


def test_an_example_names_the_model_files_it_needs(page: tuple[Any, PageWatch]) -> None:
    tab, _ = page
    workflow = json.loads((EXAMPLES / "magcache_wan2.1_t2v_1.3B.json").read_text())
    named = [m for n in workflow["nodes"] for m in n.get("properties", {}).get("models", [])]
    assert {m["name"] for m in named} == {
        "wan2.1_t2v_1.3B_fp16.safetensors",
        "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
        "wan_2.1_vae.safetensors",
    }
    assert all(m["url"].startswith("https://huggingface.co/") and m["url"].endswith(m["name"]) for m in named)

    dialog = open_pack_templates(tab)
    dialog.get_by_text("magcache_wan2.1_t2v_1.3B", exact=True).first.click()
    # The server lacks these files: the page lists them with their download addresses.
    tab.get_by_text("wan2.1_t2v_1.3B_fp16.safetensors", exact=False).first.wait_for(state="visible", timeout=30_000)
    for model in named:
        assert tab.get_by_text(model["name"], exact=False).first.is_visible(), f"{model['name']} is not listed"
