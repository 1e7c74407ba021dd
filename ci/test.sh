#!/usr/bin/env bash
# The test command of README.md: everything CI checks, cheapest first.
# Installs what it needs itself (Python venv with onnx/onnxruntime; a C compiler).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

if ! command -v cc >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq build-essential >/dev/null
fi
ORT_DYLIB_PATH="$(bash ci/setup-python.sh)"
export ORT_DYLIB_PATH
echo "ONNX Runtime library: $ORT_DYLIB_PATH"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
echo "== fixtures: torch-exported ONNX files on ONNX Runtime (Python)"
.venv/bin/python fixtures/check_onnx.py
