"""The Comfy registry's own checks, offline: `comfy node validate` and the archive `comfy node pack` builds.

Why here and not in pytest: neither needs ComfyUI, and both run the
registry's own tool (comfy-cli), which is not a test dependency of the pack's
code. `comfy node validate` reads pyproject.toml the way publishing does and
runs its security lint; it reports problems as "Warning"/"Error" lines but
still exits 0, so any such line counts as a failure here. The archive is
built from a clone of the committed tree (what a registry build of the
repository would see), and must hold the shipped tiny model, its codec, every
preset curve, every example workflow with its thumbnail, the help pages and
the translations, and no file of the tests, the benchmarks or CI (what
.comfyignore leaves out).

Usage: python .ci/registry_check.py   (exit status 0 when everything passes)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUST_SHIP = ("__init__.py", "LICENSE", "pyproject.toml", "embedded/diffusion_models/tiny_wan_digits.safetensors",
             "embedded/tiny_wan_digits_codec.safetensors")  # fmt: skip
MUST_SHIP_GLOBS = ("calibration/presets/*.safetensors", "example_workflows/*.json", "example_workflows/*.jpg",
                   "nodes/web/docs/*.md", "nodes/web/docs/*/*.md", "locales/*/*.json")  # fmt: skip
#: What users never need (.comfyignore leaves it out): a file under these folders (the benchmark's second testbed
#: included), or any test module.
MUST_NOT_SHIP_DIRS = ("tests/", "benchmarks/", ".ci/", ".github/", "embedded/testbeds/")


def developer_files(names: set[str]) -> list[str]:
    """The archive's files that belong to the test suite, the benchmarks or CI, wherever they sit."""
    found = []
    for name in sorted(names):
        base = name.rsplit("/", 1)[-1]
        if (
            name.startswith(MUST_NOT_SHIP_DIRS)
            or base == "conftest.py"
            or (base.startswith("test_") and base.endswith(".py"))
        ):
            found.append(name)
    return found


def comfy_cli() -> list[str] | None:
    """The comfy-cli command of this environment, or None."""
    found = shutil.which("comfy", path=str(Path(sys.executable).parent)) or shutil.which("comfy")
    return [found] if found else None


def run(cmd: list[str], cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    # A throw-away HOME keeps comfy-cli's config out of the user's; the environment
    # variables switch its telemetry off; stdin is closed so it can never wait on a question.
    env = dict(os.environ, HOME=str(home), DO_NOT_TRACK="1", COMFY_NO_TELEMETRY="1", NO_COLOR="1")
    return subprocess.run(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)


def main() -> int:
    comfy = comfy_cli()
    if comfy is None:
        print("!! comfy-cli is not installed (pip install comfy-cli): registry checks SKIPPED")
        return 0
    failures = 0
    with tempfile.TemporaryDirectory(prefix="magcache-registry-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        done = run([*comfy, "--skip-prompt", "node", "validate"], ROOT, home)
        output = done.stdout + done.stderr
        print(output.rstrip())
        flagged = [line for line in output.splitlines() if any(w in line for w in ("Warning", "Error", "warning"))]
        if done.returncode != 0 or flagged:
            print(f"!! comfy node validate: exit {done.returncode}, {len(flagged)} warning/error line(s)")
            failures += 1

        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], check=True)
        done = run([*comfy, "--skip-prompt", "node", "pack"], clone, home)
        archive = clone / "node.zip"
        if done.returncode != 0 or not archive.is_file():
            print(f"!! comfy node pack failed:\n{done.stdout}{done.stderr}")
            return failures + 1
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
        wanted = set(MUST_SHIP)
        for pattern in MUST_SHIP_GLOBS:
            wanted |= {str(p.relative_to(clone)) for p in clone.glob(pattern)}
        missing = sorted(wanted - names)
        extra = developer_files(names)
        if extra:
            print(f"!! the registry archive holds test, benchmark or CI files (.comfyignore): {', '.join(extra)}")
            failures += 1
        if missing:
            print(f"!! the registry archive lacks: {', '.join(missing)}")
            failures += 1
        if not missing and not extra:
            size = archive.stat().st_size / 1e6
            presets = sum(n.startswith("calibration/presets/") for n in names)
            print(f"registry archive: {len(names)} files, {size:.1f} MB, with the tiny model, its codec, {presets} "
                  "preset files, the examples and their thumbnails, the help pages and translations; no test, "
                  "benchmark or CI file")  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
