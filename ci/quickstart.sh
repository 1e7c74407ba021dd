#!/usr/bin/env bash
# README's first command: synthetic endoscopy data -> train -> export with parity
# check -> inference on held-out frames, everything in one output folder.
#   bash ci/quickstart.sh [--model unet-16|attention-unet-16] [--out DIR]
# QUICKSTART_PROFILE=debug QUICKSTART_ARGS="--epochs 1 --demo-count 16" makes the
# tiny CI run of the same path.
set -euo pipefail
cd "$(dirname "$0")/.."
model=unet-16
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="${2/#attention-unet/attention-unet}"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
case "$model" in unet|attention-unet) model="$model-16" ;; esac
out="${out:-out/quickstart-$model}"
profile="${QUICKSTART_PROFILE:-release}"
flag=$([ "$profile" = release ] && echo --release || true)
bin="target/$profile"

cargo build $flag -q -p unet-trainer -p unet-exporter -p unet-runtime --bins --features unet-runtime/ort,unet-exporter/ort
# ONNX Runtime is optional: use it when the venv from ci/setup-python.sh is there.
if [ -z "${ORT_DYLIB_PATH:-}" ]; then
  ORT_DYLIB_PATH="$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n 1 || true)"
fi
export ORT_DYLIB_PATH
mkdir -p "$out"

echo "== 1/4 train $model on the bundled synthetic data"
# shellcheck disable=SC2086
"$bin/unet-train" --demo --model "$model" --out "$out/train" ${QUICKSTART_ARGS:-}
echo "== 2/4 export to ONNX with the parity check (tract$([ -n "$ORT_DYLIB_PATH" ] && echo ', onnxruntime'))"
"$bin/unet-export" "$out/train/best.safetensors" -o "$out/model.onnx" --report "$out/parity.json" | tee "$out/parity.txt"
echo "== 3/4 held-out synthetic frames (256x256: the runtime brings them to the training size)"
rm -rf "$out/heldout"
"$bin/unet-train" demo-data --out "$out/heldout" --count ${QUICKSTART_HELDOUT:-20} --seed 9001 >/dev/null
echo "== 4/4 inference and evaluation with tract"
"$bin/unet-infer" "$out/model.onnx" "$out/heldout/images" -o "$out/masks" --overlay --backend tract --overwrite
"$bin/unet-infer" eval "$out/model.onnx" --images "$out/heldout/images" --masks "$out/heldout/masks" \
  -o "$out/eval.csv" --backend tract --overwrite | tee "$out/eval.txt"
if [ -n "$ORT_DYLIB_PATH" ]; then
  "$bin/unet-infer" "$out/model.onnx" "$out/heldout/images" -o "$out/masks-ort" --overlay --backend ort --overwrite
fi
dice=$(tail -n 1 "$out/train/metrics.jsonl" | grep -o '"val":{"dice":[0-9.]*' | cut -d: -f3 || true)
cat <<TXT

Done. Everything is in $out/:
  train/best.safetensors   weights + config (self-describing)
  train/curves.png         loss and Dice curves;  train/val_preview.png  predictions
  train/metrics.jsonl      per-epoch metrics
  model.onnx               exported graph;  parity.txt / parity.json  candle vs tract/onnxruntime
  masks/                   mask and overlay PNGs of held-out frames (tract)
  eval.csv / eval.txt      per-frame Dice, IoU, precision, recall on the held-out frames (tract)
Validation Dice (last epoch): ${dice:-see train/metrics.jsonl}
TXT
