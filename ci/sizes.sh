#!/usr/bin/env bash
# What the runtime weighs on a device, per target (x86-64 and, with --aarch64, the
# cross-built aarch64 one; see ci/build-aarch64.sh):
#  - unet-infer, edge profile (fat LTO, opt-level s, panic=abort, stripped), tract only:
#    the ONNX build (tract-onnx) and the ONNX-free NNEF build (tract-nnef);
#  - libunet_runtime.a, release profile (the C library keeps unwinding: it catches panics
#    at the boundary), ONNX only and NNEF only, after `strip --strip-debug`: every object
#    of every dependency; a firmware link pulls in only those its calls reach, so
#  - the C smoke program (runtime/tests/c/smoke.c, every entry point) linked statically
#    against it with --gc-sections and stripped: what a firmware image gains.
# Slow (fat LTO, one build each): not part of the test run.
# usage: ci/sizes.sh [--aarch64]
set -euo pipefail
cd "$(dirname "$0")/.."
targets=(x86_64-unknown-linux-gnu)
[ "${1:-}" = --aarch64 ] && targets+=(aarch64-unknown-linux-gnu)
out=target/sizes
mkdir -p "$out"

mib() { awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.2f MiB", b / 1048576 }'; }

for triple in "${targets[@]}"; do
  strip_tool=strip cc_tool=cc
  if [ "$triple" = aarch64-unknown-linux-gnu ]; then
    # Debian's cross compiler, linker and qemu runner, installed if missing.
    eval "$(bash ci/build-aarch64.sh --print-env | grep '^export')"
    strip_tool=aarch64-linux-gnu-strip cc_tool=aarch64-linux-gnu-gcc
  fi
  # The host build without --target shares target/<profile> with the other host builds.
  build=(cargo build --locked -q -p unet-runtime --no-default-features)
  dir=target
  if [ "$triple" != x86_64-unknown-linux-gnu ]; then
    build+=(--target "$triple")
    dir="target/$triple"
  fi
  for variant in "onnx:tract" "nnef:nnef"; do
    name="${variant%%:*}" features="${variant#*:}"
    "${build[@]}" --profile edge --features "$features,cli" --bin unet-infer
    cp "$dir/edge/unet-infer" "$out/unet-infer-$name-$triple"
    "${build[@]}" --release --features "$features" --lib
    "$strip_tool" --strip-debug -o "$out/libunet_runtime-$name-$triple.a" \
      "$dir/release/libunet_runtime.a"
    "$cc_tool" -std=c99 -O2 -Wl,--gc-sections -Wl,-z,noexecstack -s -o "$out/smoke-$name-$triple" runtime/tests/c/smoke.c \
      -I runtime/include "$out/libunet_runtime-$name-$triple.a" -lpthread -ldl -lm
  done
  for name in onnx nnef; do
    echo "$triple $name: unet-infer (edge) $(mib "$out/unet-infer-$name-$triple"), libunet_runtime.a (release, --strip-debug) $(mib "$out/libunet_runtime-$name-$triple.a"), C program linked against it $(mib "$out/smoke-$name-$triple")"
  done
done
