#!/usr/bin/env bash
# The test command of README.md: everything CI checks, cheapest first.
# Installs what it needs itself (Python venv with onnx/onnxruntime; a C compiler).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
# ONNX Runtime is loaded at run time (load-dynamic): CI tests both back ends.
features="unet-runtime/ort,unet-exporter/ort"

if ! command -v cc >/dev/null 2>&1 || ! command -v pkg-config >/dev/null 2>&1; then
  # pkg-config: the C smoke test builds against runtime/unet_runtime.pc.in.
  apt-get update -qq && apt-get install -y -qq build-essential pkg-config >/dev/null
fi
ORT_DYLIB_PATH="$(bash ci/setup-python.sh)"
export ORT_DYLIB_PATH
echo "ONNX Runtime library: $ORT_DYLIB_PATH"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --features "$features" -- -D warnings
echo "== fixtures: torch-exported ONNX files on onnx.checker and ONNX Runtime (Python)"
.venv/bin/python fixtures/check_onnx.py
echo "== cargo build (binaries and the C library the tests link)"
cargo build --workspace --features "$features"
# ---- bad inputs (ci/bad_inputs.sh): every binary refuses misuse cleanly ----
echo "== bad inputs: exit codes, messages, no panic, no damaged or stray file"
bash ci/bad_inputs.sh target/debug
# ---- end bad inputs ----
echo "== cargo test"
cargo test --workspace --features "$features"
echo "== exported fixtures: onnx.checker, shape inference, ONNX Runtime (Python) vs golden outputs"
.venv/bin/python ci/validate_onnx.py --export --unet-export target/debug/unet-export
echo "== end to end (tiny): train, export with parity on tract and onnxruntime, infer"
e2e="$(mktemp -d)"
QUICKSTART_PROFILE=debug QUICKSTART_ARGS="--epochs 1 --demo-count 16 --image-size 64x64 --quiet" \
  bash ci/quickstart.sh --out "$e2e"
.venv/bin/python -c "import onnx, sys; onnx.checker.check_model(sys.argv[1], full_check=True); print('onnx.checker: ok')" "$e2e/model.onnx"
echo "== parity gate for users' CI (ci/parity.sh): golden outputs saved, then compared"
target/debug/unet-export golden "$e2e/train/best.safetensors" -o "$e2e/golden"
bash ci/parity.sh "$e2e/train/best.safetensors" "$e2e/model.onnx" --golden "$e2e/golden" --report "$e2e/gate.json"
.venv/bin/python -c "import json, sys; assert all(json.load(open(f))['passed'] for f in sys.argv[1:])" \
  "$e2e/gate.json" "$e2e/gate.golden.json"
if bash ci/parity.sh fixtures/unet/weights.safetensors "$e2e/model.onnx" 2>/dev/null; then
  echo "ci/parity.sh passed a graph that is not the model's" >&2; exit 1
fi
# Usage errors exit 1 with a message, never 2 (which means drift), also when
# unet-export itself refuses a flag passed through after `--`.
for args in "" "--golden g" "$e2e/train/best.safetensors --golden" \
  "$e2e/train/best.safetensors --bogus" "$e2e/train/best.safetensors a.onnx b.onnx" \
  "$e2e/train/best.safetensors -- --bogus"; do
  rc=0
  # shellcheck disable=SC2086
  msg="$(bash ci/parity.sh $args 2>&1 >/dev/null)" || rc=$?
  if [ "$rc" != 1 ] || [ -z "$msg" ] || [[ "$msg" == *"parity gate: FAIL"* ]]; then
    echo "ci/parity.sh $args: exit $rc (expected 1 with a message, not FAIL): $msg" >&2; exit 1
  fi
done
rm -rf "$e2e"

echo "== goldens for other tools: ONNX test data (onnx.numpy_helper), npz (NumPy), Polygraphy JSON"
goldens="$(mktemp -d)"
for format in onnx-test npz polygraphy; do
  target/debug/unet-export golden fixtures/unet/weights.safetensors --head sigmoid \
    --format "$format" -o "$goldens/$format" --quiet
done
.venv/bin/python ci/check_goldens.py "$goldens" fixtures/unet/model.onnx
rm -rf "$goldens"

# ARM64: the runtime cross-built with Debian's Rust and its tests run under qemu-user
# (cold: about 15 minutes on 2 cores, a fresh-clone .ci/run about 33 in all;
# UNET_CI_AARCH64=0 leaves it out).
if [ "${UNET_CI_AARCH64:-1}" = 1 ]; then
  echo "== aarch64: cross-built runtime, its tests under qemu-user (ci/build-aarch64.sh)"
  bash ci/build-aarch64.sh --test
fi
