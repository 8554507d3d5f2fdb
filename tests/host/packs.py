"""Third-party node packs the compatibility tests load, from a folder outside the repository.

The packs are public repositories, cloned by ``.ci/get-packs`` (or by hand)
into ``$MAGCACHE_PACKS`` (default ``~/comfy-packs``), one folder per pack
named as in :data:`PACKS`; the Python packages they need beyond ComfyUI's go
into ``$MAGCACHE_PACKS/.deps/py3.X`` (``pip install --target``), appended to
``sys.path`` so they never shadow the host environment's. Their code is
never copied into this repository. Where a pack is absent or does not load,
its tests skip with one line saying which pack, where it was looked for and why.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

#: Folder name of each pack, and the repository it is cloned from.
PACKS = {
    "RES4LYF": "ClownsharkBatwing/RES4LYF",
    "ComfyUI-GGUF": "city96/ComfyUI-GGUF",
    "ComfyUI-KJNodes": "kijai/ComfyUI-KJNodes",
}


def packs_root() -> Path:
    """Where the packs are kept: ``$MAGCACHE_PACKS``, else ``~/comfy-packs``."""
    return Path(os.environ.get("MAGCACHE_PACKS", "~/comfy-packs")).expanduser()


def _deps_dir() -> Path:
    return packs_root() / ".deps" / f"py{sys.version_info.major}.{sys.version_info.minor}"


def commit(name: str) -> str:
    """The commit the pack's checkout is at (for the test report), or 'unknown'."""
    head = packs_root() / name / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (head.parent / ref[5:]).read_text().strip()[:12]
        return ref[:12]
    except OSError:
        return "unknown"


@contextmanager
def _comfy_utils_package() -> Iterator[None]:
    """``utils`` as ComfyUI's own package while its server and a pack import.

    ComfyUI's ``main.py`` imports its ``utils`` package before ``nodes.py`` puts ``comfy/`` first on
    ``sys.path``; a test process that imported ``nodes`` first finds ``comfy/utils.py`` under that name,
    and ComfyUI's server (which packs import) then fails. What the name held before is put back after.
    """
    before = sys.modules.get("utils")
    if before is not None and hasattr(before, "__path__"):
        yield
        return
    sys.modules.pop("utils", None)
    removed = [p for p in sys.path if Path(p, "utils.py").is_file() and Path(p).name == "comfy"]
    for p in removed:
        sys.path.remove(p)
    try:
        importlib.import_module("utils.install_util")
    finally:
        sys.path[:0] = removed
    try:
        yield
    finally:
        if before is not None:
            sys.modules["utils"] = before


@contextmanager
def _server_instance(cls: Any) -> Iterator[None]:
    """A stand-in ``PromptServer.instance`` while a pack imports (packs register web routes at import).

    It says the page serves the packs' web folders itself, so no pack copies files into the checkout.
    Removed afterwards: the tests run no server in this process, and the pack's code must not think so.
    """
    had = hasattr(cls, "instance")
    if not had:
        from aiohttp import web

        cls.instance = types.SimpleNamespace(
            app=web.Application(),
            routes=web.RouteTableDef(),
            supports=["custom_nodes_from_web"],
            client_id=None,
            send_sync=lambda *a, **k: None,
        )
    try:
        yield
    finally:
        if not had:
            del cls.instance


def load(name: str) -> types.ModuleType:
    """Import pack ``name`` as ComfyUI would (a package named after its folder), or skip the test loudly."""
    folder = packs_root() / name
    if not (folder / "__init__.py").is_file():
        pytest.skip(
            f"PACK ABSENT: {name} not found at {folder} (clone github.com/{PACKS[name]} there, "
            "or run .ci/get-packs; MAGCACHE_PACKS moves the folder)"
        )
    deps = _deps_dir()
    if deps.is_dir() and str(deps) not in sys.path:
        sys.path.append(str(deps))
    if str(folder.parent) not in sys.path:
        sys.path.append(str(folder.parent))
    try:
        with _comfy_utils_package():
            server = importlib.import_module("server")
            with _server_instance(server.PromptServer):
                return importlib.import_module(name)
    except Exception as exc:  # whatever stops the pack from loading is reported, not raised
        pytest.skip(f"PACK DOES NOT LOAD: {name} at {folder} ({commit(name)}): {type(exc).__name__}: {exc}")
