#!/usr/bin/env bash
# Resident memory over 10 000 frames through the C ABI (release static library).
# usage: runtime/tests/c/rss_bench.sh MODEL.onnx [FRAMES] [WIDTH] [HEIGHT] [BACKEND: 1 tract, 2 ort]
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
model="${1:?usage: rss_bench.sh MODEL.onnx [FRAMES] [WIDTH] [HEIGHT] [BACKEND]}"
shift
cargo build --release -p unet-runtime --lib ${UNET_FEATURES:+--features "$UNET_FEATURES"} >&2
target="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cc -O2 -std=c99 -D_POSIX_C_SOURCE=200809L -o "$out/rss_loop" "$root/runtime/tests/c/rss_loop.c" \
  -I "$root/runtime/include" "$target/release/libunet_runtime.a" -lpthread -ldl -lm -Wl,-z,noexecstack
"$out/rss_loop" "$model" "$@"
