"""Start the real ComfyUI server with the pack installed, on the CPU, and talk to it.

Why a subprocess and not ComfyUI imported in the test process: the server is
what users run. Its ``/object_info``, its prompt validation, its custom-node
loader and the page it serves are only honest when ``main.py`` runs them.

The user's checkout is never modified. The server gets a temporary base
directory (``--base-directory``, which ComfyUI 0.3.64 and 0.8 both have)
holding ``custom_nodes/comfyui-magcache`` (a symlink to this repository),
``models/`` with the files the test wants there, and its own ``input``,
``output``, ``temp`` and ``user`` folders; its database goes there too
(``--database-url``; the default would write into the checkout). It listens
on 127.0.0.1 only, on a free port, with the API nodes (the only part that
reaches the internet) switched off, and runs in its own process group so
that stopping it can prove nothing was left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any

from comfy_host import PACK_ROOT, comfyui_version

#: The folder name under custom_nodes/: also the name the template browser shows.
PACK_DIR_NAME = "comfyui-magcache"
#: The embedded tiny model and the name it has in models/diffusion_models/.
TINY_MODEL = PACK_ROOT / "embedded" / "diffusion_models" / "tiny_wan_digits.safetensors"
EXAMPLES = PACK_ROOT / "example_workflows"
#: The example that runs end to end on the embedded model.
TINY_WORKFLOW = EXAMPLES / "magcache_tiny_wan_digits_cpu.json"
#: Why the tests that run the tiny model skip while it is not built (.ci/registry_check.py
#: fails the run if the archive the registry builds lacks it, so a pack without it cannot pass).
NO_TINY_MODEL = f"the embedded tiny model {TINY_MODEL.name} is not built yet (embedded/train.py); skipped"


#: Stem of the empty files put in every model folder and the input folder, so that the
#: combos which list a folder's files can be told apart (see ``workflows.check_workflow``).
FILE_MARKER = "zz-magcache-folder-marker"

#: The packages that make up the page a checkout serves, pinned in its requirements.txt.
PAGE_PACKAGES = ("comfyui-frontend-package", "comfyui-workflow-templates", "comfyui-embedded-docs")
PAGE_CACHE = Path.home() / ".cache" / "comfyui-magcache" / "page"


def page_pins(root: Path) -> dict[str, str]:
    """The page packages and the exact versions that the checkout's requirements.txt pins."""
    pins = {}
    for line in (root / "requirements.txt").read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep and name.lower() in PAGE_PACKAGES:
            pins[name.lower()] = version.strip()
    return pins


def page_packages(root: Path) -> Path | None:
    """A folder to put first on the server's PYTHONPATH so it serves the page its checkout pins, or None.

    Why: the test environment is shared by every checkout, and its page
    packages are the newest one's. ComfyUI 0.3.64 does not start with them (it
    looks for ``comfyui_workflow_templates/templates``, a folder the newer
    templates package no longer has), and an older server is only fairly
    tested with the page released for it. So the pinned versions are installed
    once, from the package registry, into a cache folder of their own
    (``pip install --target``), leaving the environment untouched.
    """
    pins = page_pins(root)
    stale = {}
    for name, version in pins.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            stale[name] = version
    if not stale:
        return None
    target = PAGE_CACHE / "-".join(f"{n}{v}" for n, v in sorted(stale.items()))
    if not (target / ".complete").is_file():
        shutil.rmtree(target, ignore_errors=True)
        specs = [f"{n}=={v}" for n, v in sorted(stale.items())]
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
             "--target", str(target), *specs],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise ServerError(f"could not install the page packages {specs} that {root} pins:\n{done.stderr[-2000:]}")
        (target / ".complete").touch()
    return target


def free_port() -> int:
    """A TCP port nothing listens on now (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerError(RuntimeError):
    """The server did not start, died, or did not answer as expected; the message carries its log tail."""


class ComfyServer:
    """One ComfyUI server process over a temporary base directory.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    ``models`` maps paths under ``models/`` (``"diffusion_models/x.safetensors"``)
    to the files they link to.
    """

    def __init__(
        self,
        root: Path,
        models: dict[str, Path] | None = None,
        python: str = sys.executable,
    ) -> None:
        self.root = root
        self.version = comfyui_version(root)
        self.models = models or {}
        self.python = python
        self.base = Path(tempfile.mkdtemp(prefix="magcache-comfy-"))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.base / "server.log"

    # -- lifetime -----------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        (self.base / "custom_nodes" / PACK_DIR_NAME).symlink_to(PACK_ROOT, target_is_directory=True)
        # The model folders ComfyUI ships (models/<kind>/ in the checkout), each with the marker file.
        for kind in sorted(p.name for p in (self.root / "models").iterdir() if p.is_dir()):
            (self.base / "models" / kind).mkdir(exist_ok=True)
            (self.base / "models" / kind / f"{FILE_MARKER}.safetensors").touch()
        (self.base / "input" / f"{FILE_MARKER}.png").touch()
        for rel, target in self.models.items():
            link = self.base / "models" / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path(target).resolve())

    def command(self) -> list[str]:
        cmd = [
            self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base), "--database-url", f"sqlite:///{self.base / 'user' / 'comfyui.db'}",
            "--disable-auto-launch", "--disable-api-nodes",
        ]  # fmt: skip
        return cmd

    def start(self, timeout: float = 240.0) -> ComfyServer:
        """Start the server and wait until it answers; raise :class:`ServerError` with its log if it cannot."""
        self._prepare()
        self.port = free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        page = page_packages(self.root)
        if page is not None:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(page), env.get("PYTHONPATH", "")) if p)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.command(), cwd=self.root, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,  # its own process group: stop() can end and then check all of it
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                tail = self.log_tail()
                self.stop()
                raise ServerError(f"ComfyUI exited with {code} while starting:\n{tail}")
            with contextlib.suppress(OSError):
                if self.request("GET", "/system_stats", timeout=5)[0] == 200:
                    return self
            time.sleep(0.5)
        tail = self.log_tail()
        self.stop()
        raise ServerError(f"ComfyUI did not answer within {timeout:.0f} s:\n{tail}")

    def stop(self, timeout: float = 30.0) -> None:
        """End the server's whole process group, then check that none of it is left; remove the base folder.

        Raises :class:`ServerError` if a process of the group survives a kill.
        """
        if self.proc is None:
            return
        pgid = self.proc.pid  # the session leader's pid is the group id
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGINT)  # ComfyUI's own way out (KeyboardInterrupt)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                self.proc.wait(10)
        # Children that outlived the leader would still be in the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
            time.sleep(0.5)
        survivors = _group_members(pgid)
        self.proc = None
        shutil.rmtree(self.base, ignore_errors=True)
        if survivors:
            raise ServerError(f"processes of the ComfyUI server's group survived a kill: {survivors}")

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- talking to it ------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: Any = None, timeout: float = 60.0) -> tuple[int, Any]:
        """(status, parsed JSON or text) of one HTTP request; HTTP errors are returned, not raised."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        text = raw.decode("utf-8", "replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def get(self, path: str) -> Any:
        status, body = self.request("GET", path)
        if status != 200:
            raise ServerError(f"GET {path}: HTTP {status}: {body}")
        return body

    def object_info(self) -> dict[str, Any]:
        return self.get("/object_info")

    def queue(self, prompt: dict[str, Any]) -> tuple[int, Any]:
        """POST an API-format prompt; (status, body). 200 with a prompt_id, or 400 with ComfyUI's validation errors."""
        return self.request("POST", "/prompt", {"prompt": prompt, "client_id": "magcache-tests"})

    def wait_history(self, prompt_id: str, timeout: float = 180.0) -> dict[str, Any]:
        """The finished run's history entry; raise with the log tail if it fails or takes longer than ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                if entry["status"].get("status_str") != "success":
                    raise ServerError(f"prompt failed: {json.dumps(entry['status'])[:2000]}\n{self.log_tail()}")
                return entry
            if not self.running:
                raise ServerError(f"ComfyUI died while running the prompt:\n{self.log_tail()}")
            time.sleep(0.25)
        raise ServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    @property
    def output_dir(self) -> Path:
        return self.base / "output"


def _group_members(pgid: int) -> list[str]:
    """'pid command' of every live process in group ``pgid`` (from /proc; zombies excluded)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            # Fields after the ')' that closes the command name: state, ppid, pgrp, ...
            fields = text[text.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(f"{stat.parent.name} {text[text.index('(') + 1 : text.rindex(')')]}")
    return found
