#!/usr/bin/env bash
# README's test command. Runs the pure tests (no ComfyUI needed) and the host
# tests (against $COMFYUI_PATH or ~/ComfyUI; skipped with one line if none),
# in the Python environment that checkout's ComfyUI version needs (.ci/host-env).
# Arguments select tests, e.g. `bash tests/run.sh tests/pure`.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(bash .ci/host-env "${COMFYUI_PATH:-}")"
exec "$venv/bin/pytest" -rs "${@:-tests}"
