#!/usr/bin/env bash
# Parity gate for CI: fails (exit 2) when any back end drifts past tolerance;
# exits 1 on a usage or input error (its own or unet-export's).
#
#   ci/parity.sh MODEL.safetensors [MODEL.onnx] [--golden DIR] [--report FILE.json] [-- EXPORT FLAGS]
#
# Without MODEL.onnx the model is exported to a temporary file with its check
# (EXPORT FLAGS are passed to unet-export, e.g. --fold-bn --head sigmoid).
# With MODEL.onnx the committed file is checked against the weights' candle forward.
# --golden DIR also compares the ONNX file with outputs saved earlier by
# `unet-export golden MODEL.safetensors -o DIR` (commit DIR: a regression gate
# that needs neither candle nor the weights to agree with themselves).
# Back ends: tract always; ONNX Runtime when ORT_DYLIB_PATH points at its
# library (or this repository's .venv from ci/setup-python.sh has it).
set -euo pipefail

# Usage errors exit 1, like unet-export's own errors; only drift exits 2.
usage() { [ $# -eq 0 ] || echo "ci/parity.sh: $*" >&2; sed -n '4,4p' "$0" >&2; exit 1; }
[ $# -ge 1 ] || usage "no MODEL.safetensors given"
case "$1" in -*) usage "the first argument must be MODEL.safetensors, not $1" ;; esac
model="$1"; shift
onnx=""; golden=""; report=""; export_flags=()
while [ $# -gt 0 ]; do
  case "$1" in
    --golden|--report) [ $# -ge 2 ] || usage "$1 needs a value"
      if [ "$1" = --golden ]; then golden="$2"; else report="$2"; fi
      shift 2 ;;
    --) shift; export_flags=("$@"); break ;;
    -*) usage "unknown option $1" ;;
    *) [ -z "$onnx" ] || usage "a second ONNX file: $1"; onnx="$1"; shift ;;
  esac
done

root="$(cd "$(dirname "$0")/.." && pwd)"
exporter="${UNET_EXPORT:-$(command -v unet-export || true)}"
for candidate in "$root/target/release/unet-export" "$root/target/debug/unet-export"; do
  [ -n "$exporter" ] && break
  [ -x "$candidate" ] && exporter="$candidate"
done
[ -n "$exporter" ] || { echo "unet-export not found: install it or set UNET_EXPORT" >&2; exit 1; }
if [ -z "${ORT_DYLIB_PATH:-}" ]; then
  ORT_DYLIB_PATH="$(ls "$root"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n 1 || true)"
  export ORT_DYLIB_PATH
fi

report_flags=()
[ -n "$report" ] && report_flags=(--report "$report")
status=0
if [ -z "$onnx" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  onnx="$tmp/model.onnx"
  "$exporter" "$model" -o "$onnx" "${report_flags[@]}" "${export_flags[@]}" || status=$?
else
  "$exporter" check "$model" "$onnx" "${report_flags[@]}" || status=$?
fi
if [ "$status" -eq 0 ] && [ -n "$golden" ]; then
  golden_report=()
  [ -n "$report" ] && golden_report=(--report "${report%.json}.golden.json")
  "$exporter" check --golden "$golden" "$onnx" "${golden_report[@]}" || status=$?
fi
# unet-export exits 1 on a usage or input error and 2 only on drift; say which.
case "$status" in
  0) echo "parity gate: PASS" ;;
  2) echo "parity gate: FAIL (exit 2: drift past tolerance)" >&2 ;;
  *) echo "parity gate: ERROR (exit $status: a usage or input error, not drift)" >&2; status=1 ;;
esac
exit "$status"
