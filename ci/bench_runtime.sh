#!/usr/bin/env bash
# Runtime benchmarks (issue targets; not part of the test run):
#  - tract vs ONNX Runtime CPU latency, unet preset at base 16 and 64, 256² and 512², 2 threads
#  - peak RSS of unet-infer on one 512² frame (base 16, tract), with and without --low-memory
#  - size of a stripped, tract-only unet-infer
#  - resident memory over FRAMES frames through the C ABI
# usage: ci/bench_runtime.sh [OUT_DIR] ; env RUNS (default 30), FRAMES (default 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-out/bench-runtime}"
runs="${RUNS:-30}"
frames="${FRAMES:-10000}"
mkdir -p "$out"
if [ -z "${ORT_DYLIB_PATH:-}" ]; then
  ORT_DYLIB_PATH="$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n 1 || true)"
fi
export ORT_DYLIB_PATH
backends=(tract)
[ -n "$ORT_DYLIB_PATH" ] && backends+=(ort)

cargo build --release -q -p unet-runtime --features ort --bin unet-infer
cargo build --release -q -p unet-exporter --bin unet-export --example make_model
bin=target/release

for preset in unet-16 unet; do
  "$bin/examples/make_model" "$preset" "$out/$preset.safetensors"
  "$bin/unet-export" "$out/$preset.safetensors" -o "$out/$preset.onnx" --no-check
  "$bin/unet-export" "$out/$preset.safetensors" -o "$out/$preset.fold.onnx" --fold-bn --no-check
done

echo "== latency, 2 threads (bare graph and whole pipeline)"
for preset in unet-16 unet; do
  for variant in "" .fold; do
    for size in 256x256 512x512; do
      echo "-- $preset$variant $size"
      "$bin/unet-infer" bench "$out/$preset$variant.onnx" --size "$size" --runs "$runs" \
        --threads 2 --backend "${backends[@]}"
    done
  done
done

echo "== peak RSS, unet-16 on one 512x512 frame (tract)"
python3 - "$out/frame512.png" <<'PY'
import sys, zlib, struct
w = h = 512
rows = b"".join(b"\x00" + bytes((x * 7 + y * 3) % 256 for x in range(w) for _ in range(3)) for y in range(h))
chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
open(sys.argv[1], "wb").write(png)
PY
for memory in "" --low-memory; do
  echo -n "unet-infer ${memory:-(freed memory kept, the default)}: "
  /usr/bin/time -f "peak RSS %M KiB, wall %e s" "$bin/unet-infer" "$out/unet-16.onnx" "$out/frame512.png" \
    -o "$out/masks" --backend tract --quiet $memory 2>&1
done

echo "== stripped tract-only unet-infer"
cargo build --profile edge -q -p unet-runtime --no-default-features --features tract --bin unet-infer
ls -l target/edge/unet-infer | awk '{printf "unet-infer (edge profile: fat LTO, stripped, panic=abort, opt-level s; tract only): %.2f MiB\n", $5 / 1048576}'
echo "-- edge build vs release, unet-16 and unet 256x256, tract"
for preset in unet-16 unet; do
  for b in "$bin" target/edge; do
    echo -n "$b: "
    "$b/unet-infer" bench "$out/$preset.onnx" --size 256x256 --runs "$runs" --threads 2 --backend tract | grep '^tract'
  done
done

echo "== resident memory over $frames frames through the C ABI (unet-16, 128x128, tract)"
bash runtime/tests/c/rss_bench.sh "$out/unet-16.onnx" "$frames" 128 128 1
