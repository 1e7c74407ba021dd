#!/usr/bin/env bash
# The experiment behind the model contract (issue: a device runs a model at
# the geometry it was trained at): train unet-16 at 128x128 on 256x256
# synthetic frames, export it, and score held-out frames with `unet-infer eval`
# and no geometry flag. The held-out Dice should match the trainer's
# validation Dice; `--native` shows what running at native resolution costs.
#   bash ci/geometry_check.sh [OUT] [EPOCHS]     (minutes, not in CI)
# GEOMETRY_PROFILE=debug uses the dev build (its kernels are optimised too).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-out/geometry-check}"
epochs="${2:-8}"
profile="${GEOMETRY_PROFILE:-release}"
bin="target/$profile"
if [ "$profile" = release ]; then
  cargo build --release -q -p unet-trainer -p unet-exporter -p unet-runtime --bins
fi
rm -rf "$out" && mkdir -p "$out"
"$bin/unet-train" demo-data --out "$out/train-data" --count 400 --size 256 --seed 42 >/dev/null
"$bin/unet-train" demo-data --out "$out/test-data" --count 100 --size 256 --seed 9001 >/dev/null
"$bin/unet-train" --data "$out/train-data" --model unet-16 --image-size 128x128 \
  --epochs "$epochs" --out "$out/train" --quiet
"$bin/unet-export" "$out/train/best.safetensors" -o "$out/model.onnx" >/dev/null
best=$(grep -o '"val":{"dice":[0-9.]*' "$out/train/metrics.jsonl" | cut -d: -f3 | sort -g | tail -n 1)
echo "trainer: best validation Dice $best"
echo -n "unet-infer eval (default: training geometry): "
"$bin/unet-infer" eval "$out/model.onnx" --images "$out/test-data/images" \
  --masks "$out/test-data/masks" -o "$out/eval.csv" --backend tract
echo -n "unet-infer eval --native (mirror-padded 256x256): "
"$bin/unet-infer" eval "$out/model.onnx" --images "$out/test-data/images" \
  --masks "$out/test-data/masks" -o "$out/eval-native.csv" --backend tract --native
