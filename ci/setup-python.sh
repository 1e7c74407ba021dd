#!/usr/bin/env bash
# Creates .venv with the pinned ONNX tools (onnx checker, ONNX Runtime) and prints
# the path of ONNX Runtime's shared library, which the `ort` back end loads at run time.
# Idempotent: a second run only re-checks the pins.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"
if ! python3 -m venv --help >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$root/ci/requirements.txt" >&2
# The wheel ships only the versioned file name (no libonnxruntime.so symlink).
ls "$venv"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n 1
