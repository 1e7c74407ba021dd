#!/usr/bin/env bash
# Runtime benchmarks (issue targets; not part of the test run):
#  - this CPU's FMA peak per instruction set (unet-kernels' probe)
#  - tract vs ONNX Runtime CPU latency, unet-16, unet (base 64) and attention-unet-16 at
#    256² and 512², 2 threads, with the tract path's GFLOP/s and fraction of the peak
#    (and tract without Winograd's 3x3 convolutions, UNET_WINOGRAD=0), on
#    each x86 path in turn: AVX-512 (tract's kernels forced on with TRACT_CPU_ISA=+avx512f,
#    gemm's with the `avx512` feature) and AVX2 (-avx512f, a build without `avx512`)
#  - peak RSS of unet-infer on one 512² frame (base 16, tract), with and without --low-memory
#  - size of a stripped, tract-only unet-infer, and of the NNEF-only one
#  - resident memory over FRAMES frames through the C ABI
# usage: ci/bench_runtime.sh [OUT_DIR] ; env RUNS (default 30), FRAMES (default 10000),
#   EDGE=0 to skip the (slow, fat-LTO) edge builds
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
cargo build --release -q -p unet-kernels --example fma_peak
bin=target/release

echo "== FMA peak of this CPU"
"$bin/examples/fma_peak" 2 1

# The x86 paths this CPU has: tract's kernels by TRACT_CPU_ISA, the runtime's own
# (TiledConv through gemm) by the `avx512` feature, in a build of its own.
paths=()
if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
  paths+=(avx512)
  CARGO_TARGET_DIR=target/bench-avx2 cargo build --release -q -p unet-runtime \
    --no-default-features --features tract,nnef,cli,ort --bin unet-infer
fi
grep -qw avx2 /proc/cpuinfo 2>/dev/null && paths+=(avx2)

for preset in unet-16 unet attention-unet-16; do
  "$bin/examples/make_model" "$preset" "$out/$preset.safetensors"
  "$bin/unet-export" "$out/$preset.safetensors" -o "$out/$preset.onnx" --no-check
  "$bin/unet-export" "$out/$preset.safetensors" -o "$out/$preset.fold.onnx" --fold-bn --no-check
done

echo "== latency, 2 threads (bare graph and whole pipeline), per x86 path"
for path in "${paths[@]:-native}"; do
  case "$path" in
    avx512) infer="$bin/unet-infer"; isa=+avx512f ;;
    avx2) infer="target/bench-avx2/release/unet-infer"; isa=-avx512f
      [ -x "$infer" ] || infer="$bin/unet-infer" ;;
    *) infer="$bin/unet-infer"; isa="" ;;
  esac
  for preset in unet-16 unet attention-unet-16; do
    for size in 256x256 512x512; do
      echo "-- $path: $preset.fold $size"
      TRACT_CPU_ISA="$isa" "$infer" bench "$out/$preset.fold.onnx" --size "$size" --runs "$runs" \
        --threads 2 --backend "${backends[@]}"
      echo "   the same on im2col only (UNET_WINOGRAD=0):"
      UNET_WINOGRAD=0 TRACT_CPU_ISA="$isa" "$infer" bench "$out/$preset.fold.onnx" --size "$size" \
        --runs "$runs" --threads 2 --backend tract | grep '^tract'
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
    -o "$out/masks" --overwrite --backend tract --quiet $memory 2>&1
done

if [ "${EDGE:-1}" = 0 ]; then
  echo "== edge builds skipped (EDGE=0); sizes on both targets: ci/sizes.sh"
else
echo "== stripped tract-only unet-infer"
cargo build --profile edge -q -p unet-runtime --no-default-features --features tract,cli,avx512 --bin unet-infer
ls -l target/edge/unet-infer | awk '{printf "unet-infer (edge profile: fat LTO, stripped, panic=abort, opt-level s; tract only): %.2f MiB\n", $5 / 1048576}'
echo "-- edge build vs release, unet-16 and unet 256x256, tract"
for preset in unet-16 unet; do
  for b in "$bin" target/edge; do
    echo -n "$b: "
    "$b/unet-infer" bench "$out/$preset.onnx" --size 256x256 --runs "$runs" --threads 2 --backend tract | grep '^tract'
  done
done
echo "-- the ONNX-free build: NNEF archives only (unet-export nnef)"
cargo build --profile edge -q -p unet-runtime --no-default-features --features nnef,cli,avx512 --bin unet-infer
ls -l target/edge/unet-infer | awk '{printf "unet-infer (edge profile, NNEF only, no tract-onnx): %.2f MiB\n", $5 / 1048576}'
"$bin/unet-export" nnef "$out/unet-16.onnx" -o "$out/unet-16.nnef.tar" --quiet
target/edge/unet-infer bench "$out/unet-16.nnef.tar" --size 256x256 --runs "$runs" --threads 2 --backend tract | grep '^tract'
fi

echo "== resident memory over $frames frames through the C ABI (unet-16, 128x128, tract)"
bash runtime/tests/c/rss_bench.sh "$out/unet-16.onnx" "$frames" 128 128 1
