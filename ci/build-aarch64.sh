#!/usr/bin/env bash
# Cross-builds the runtime for an ARM64 (aarch64) Linux device on an x86-64 Debian host,
# and runs its tests there under qemu-user (see README.md, "Building for an ARM64 device").
#
# Rustup's toolchain has no aarch64 standard library (and nothing may download one), so the
# build uses Debian's own Rust (rustc-web with the multiarch libstd-rust-web-dev:arm64) and the
# aarch64 GNU C cross toolchain. Missing packages are installed with apt-get (needs root).
#
#   ci/build-aarch64.sh                    # release: libunet_runtime.{a,so}, unet-infer, unet-smoke
#   ci/build-aarch64.sh --profile edge --bin-only   # the size-optimised unet-infer only
#   ci/build-aarch64.sh --test             # CI: dev build, then the aarch64 tests under qemu
#   eval "$(ci/build-aarch64.sh --print-env)"   # set up this shell to run cargo by hand
#
# Outputs land in $CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/<profile dir>/ (target dir
# default: target, shared with the host build; both compilers' artifacts coexist there).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

triple=aarch64-unknown-linux-gnu
# Where qemu finds the aarch64 loader and libc: the multiarch root, whose libc6:arm64
# (pulled in by libstd-rust-web-dev:arm64) is the one /lib/aarch64-linux-gnu holds. With
# the cross sysroot (/usr/aarch64-linux-gnu) qemu would pair that tree's ld.so with the
# multiarch libc.so.6 it falls back to, two glibc builds whose private data differ: the
# first pthread_create then loops forever in the loader's stack cache.
qemu_root=/
mode=build
profile=release
bin_only=0
cargo_features=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift ;;
    --bin-only) bin_only=1 ;;
    --features) cargo_features+=(--features "$2"); shift ;;
    --no-default-features) cargo_features+=(--no-default-features) ;;
    --test) mode=test; profile=dev ;;
    --print-env) mode=env ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "build-aarch64: unknown argument $1 (see --help)" >&2; exit 1 ;;
  esac
  shift
done

log() { echo "build-aarch64: $*" >&2; }
t0=$(date +%s)

# --- toolchain: install what is missing, quietly; nothing when all is there ---------------
packages=(rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu
  libc6-dev-arm64-cross qemu-user)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    log "missing packages: ${missing[*]}; as root run:"
    log "  dpkg --add-architecture arm64 && apt-get update && apt-get install ${missing[*]}"
    exit 1
  fi
  log "installing ${missing[*]}"
  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's compiler by path: rustup's proxies come first on PATH and have no aarch64 std.
# Any recent cargo drives it (rustup's, or Debian's cargo-web where there is no rustup).
export RUSTC=/usr/bin/rustc
cargo=cargo
command -v cargo >/dev/null 2>&1 || cargo=/usr/bin/cargo
# tract 0.23 needs Rust 1.91 (its rust-version); bookworm's rustc-web has been 1.85 before.
version="$("$RUSTC" --version | awk '{print $2}')"
if [ "$(printf '%s\n' 1.91.0 "$version" | sort -V | head -n 1)" != 1.91.0 ]; then
  log "$RUSTC is $version; the lockfile's tract needs 1.91 or newer (apt-get upgrade rustc-web)"
  exit 1
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
# `cargo test --target` runs the test binaries through this (no binfmt_misc needed).
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L $qemu_root"
export CARGO_TERM_COLOR=never

if [ "$mode" = env ]; then
  for v in RUSTC CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER CC_aarch64_unknown_linux_gnu \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER; do
    printf 'export %s=%q\n' "$v" "${!v}"
  done
  echo "# then: cargo build --target $triple -p unet-runtime ..."
  exit 0
fi

target_dir="${CARGO_TARGET_DIR:-$root/target}"
case "$profile" in
  dev|test) out="$target_dir/$triple/debug" ;;
  *) out="$target_dir/$triple/$profile" ;;
esac
config=()
# Under emulation the runtime's own convolution loops would run unoptimised (the dev
# profile optimises only dependencies): optimise the crate too.
[ "$mode" = test ] && config=(--config 'profile.dev.package.unet-runtime.opt-level=3')
build=("$cargo" build --locked -p unet-runtime --target "$triple" --profile "$profile"
  ${config[@]+"${config[@]}"} ${cargo_features[@]+"${cargo_features[@]}"})

# The C smoke program against the static library, as the x86-64 test `c_abi` builds it.
build_smoke() {
  aarch64-linux-gnu-gcc -std=c99 -Wall -Wextra -Werror -O2 -o "$out/unet-smoke" \
    runtime/tests/c/smoke.c -I runtime/include "$out/libunet_runtime.a" -lpthread -ldl -lm
}

if [ "$mode" = build ]; then
  if [ "$bin_only" = 1 ]; then
    "${build[@]}" --bin unet-infer
  else
    "${build[@]}" --lib --bin unet-infer
    build_smoke
  fi
  log "built for $triple ($profile) in $(( $(date +%s) - t0 ))s:"
  for f in libunet_runtime.a libunet_runtime.so unet-infer unet-smoke; do
    [ -f "$out/$f" ] && log "  $out/$f ($(du -h "$out/$f" | cut -f1))"
  done
  exit 0
fi

# --- tests under qemu-user: correctness only (timings under emulation mean nothing) -------
# One build of everything the steps below run, with the test build's (dev-dependency)
# features, so the `cargo test` calls only link and run.
"${build[@]}" --lib --bin unet-infer --tests
build_smoke
log "build: $(( $(date +%s) - t0 ))s"
# Every test runs in a thread: a setup that cannot start one (see qemu_root) would hang
# each of them, so a 20-second probe fails first, with the reason.
probe="$out/thread-probe"
printf '%s\n' '#include <pthread.h>' 'static void *f(void *a) { return a; }' \
  'int main(void) { pthread_t t; return pthread_create(&t, 0, f, 0) || pthread_join(t, 0); }' |
  aarch64-linux-gnu-gcc -x c - -o "$probe" -lpthread
if ! timeout 20 qemu-aarch64 -L "$qemu_root" "$probe"; then
  log "qemu-aarch64 -L $qemu_root cannot start a thread ($(qemu-aarch64 --version | head -n 1),"
  log "kernel $(uname -r)): are libc6:arm64 and its loader in /lib/aarch64-linux-gnu?"
  exit 1
fi
run_tests=("$cargo" test --locked -p unet-runtime --target "$triple"
  ${config[@]+"${config[@]}"} ${cargo_features[@]+"${cargo_features[@]}"})
# The unit tests: TiledConv/TiledDeconv (NEON kernels through gemm) against tract's own
# plan, the tiling and metadata logic.
"${run_tests[@]}" --lib
# The integration tests on tract: the torch-exported fixtures and the NNEF archives against
# PyTorch's outputs (32x48 frames), the segmenter, the C ABI from Rust (a handle shared by
# threads, camera pixel formats), tiling and errors. Left out: those that spawn x86-64
# programs (`cli`, `c_abi`: the C smoke program below runs instead) or cbindgen (`header`).
"${run_tests[@]}" --test it -- --skip cli:: --skip c_abi:: --skip header::
# unet-kernels' own tests: Winograd's transforms and its NEON product kernel against their
# definitions. The FMA-peak test is left out: under emulation no peak means anything.
"$cargo" test --locked -p unet-kernels --features conv --target "$triple" --lib -- --skip peak::
qemu-aarch64 -L "$qemu_root" "$out/unet-smoke" runtime/tests/data/color.onnx 1
log "aarch64 build and tests under qemu: $(( $(date +%s) - t0 ))s"
