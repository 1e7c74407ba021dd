#!/usr/bin/env bash
# Builds the CUDA variant of `unet-train` on a machine without a GPU (see docs/cuda.md).
#
# nvcc, the CUDA headers and the CUDA libraries come from PyPI wheels pinned to CUDA 13.0
# (ci/cuda/requirements-cuda13.0.txt) in their own venv, so neither a system CUDA install nor
# a GPU is needed. The build goes to its own target dir and leaves the CPU build alone.
#
#   ci/build-cuda.sh                  # build target-cuda/release/unet-train and target-cuda/carry/
#   ci/build-cuda.sh --check          # `cargo check` only (build scripts still run nvcc)
#   ci/build-cuda.sh --typecheck      # CI-sized: type-check the cuda feature, no CUDA download, no nvcc
#   ci/build-cuda.sh --features cudnn # other trainer features (cudnn adds ci/cuda/requirements-cudnn.txt)
#   ci/build-cuda.sh --carry-libs libcurand.so.10 --xz   # carry a library PyTorch lacks; compress
#                                     # (--carry-libs all: every CUDA library the binary loads)
#   eval "$(ci/build-cuda.sh --print-env)"   # set up this shell to run cargo by hand
#
# Environment: CUDA_VENV (default .venv-cuda), CARGO_TARGET_DIR (default target-cuda),
# CUDA_COMPUTE_CAP (default 90: H100/H200), CUDAFORGE_THREADS (parallel nvcc jobs),
# PYTHON (interpreter for the venv, default python3).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

mode=build
features=cuda
carry_libs=""
xz=0
while [ $# -gt 0 ]; do
  case "$1" in
    --check) mode=check ;;
    --typecheck) mode=typecheck ;;
    --print-env) mode=env ;;
    --features) features="$2"; shift ;;
    --carry-libs) carry_libs="$2"; shift ;;
    --xz) xz=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "build-cuda: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

log() { echo "build-cuda: $*" >&2; }
t0=$(date +%s)

# Type-check only: candle-kernels' build script gets ci/cuda/nvcc-typecheck, which writes empty
# PTX/objects instead of compiling candle's kernels, and cudarc is told the CUDA version instead
# of asking nvcc. Every Rust line behind the feature is checked; nothing here can run or link.
if [ "$mode" = typecheck ]; then
  export NVCC="$root/ci/cuda/nvcc-typecheck" UNET_NVCC_TYPECHECK=1 CUDARC_CUDA_VERSION=13000
  export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
  # Always its own target dir: cudaforge's incremental cache would keep the placeholder PTX
  # in a dir that a real build later reuses.
  export CARGO_TARGET_DIR="$root/target-cuda/typecheck"
  cargo check --locked -p unet-trainer --all-targets --features "$features"
  log "cargo check (type-check only) --features $features: $(( $(date +%s) - t0 ))s"
  exit 0
fi

venv="${CUDA_VENV:-$root/.venv-cuda}"
target="${CARGO_TARGET_DIR:-$root/target-cuda}"
reqs="$root/ci/cuda/requirements-cuda13.0.txt"
want_release="13.0"

# 1. The toolkit wheels, in their own venv (re-running only re-checks the pins).
if [ ! -x "$venv/bin/python" ]; then
  if ! "${PYTHON:-python3}" -m venv --help >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
  fi
  "${PYTHON:-python3}" -m venv "$venv"
fi
extra_reqs=()
case ",$features," in *,cudnn,*) extra_reqs=(-r "$root/ci/cuda/requirements-cudnn.txt") ;; esac
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$reqs" "${extra_reqs[@]}" >&2
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
wheel_root="$site/nvidia/cu13"
[ -x "$wheel_root/bin/nvcc" ] || { log "no nvcc in $wheel_root/bin after installing $reqs"; exit 1; }

# 2. One toolkit root laid out as cudarc and cudaforge expect: bin/ include/ nvvm/ from the
# wheels, lib/ with the unversioned names the linker looks for (wheels ship only libfoo.so.N),
# lib/stubs/libcuda.so for the driver API (no wheel ships it; see ci/cuda/make-libcuda-stub.sh).
cuda="$venv/cuda"
mkdir -p "$cuda/lib/stubs"
for d in bin include nvvm; do ln -sfn "$wheel_root/$d" "$cuda/$d"; done
# cuDNN's wheel (--features cudnn) unpacks into nvidia/cudnn/, beside cu13/.
for so in "$wheel_root"/lib/lib*.so.* "$site"/nvidia/cudnn/lib/lib*.so.*; do
  [ -e "$so" ] || continue
  name="$(basename "$so")"
  ln -sfn "$so" "$cuda/lib/$name"
  ln -sfn "$so" "$cuda/lib/${name%%.so.*}.so"
done
if [ ! -f "$cuda/lib/stubs/libcuda.so" ] || [ "$cuda/include/cuda.h" -nt "$cuda/lib/stubs/libcuda.so" ]; then
  bash "$root/ci/cuda/make-libcuda-stub.sh" "$cuda/include" "$cuda/lib/stubs"
fi

# 3. The environment the build scripts read:
#  - cudaforge (candle-kernels' build.rs): nvcc from $NVCC or PATH, sm from CUDA_COMPUTE_CAP
#    (90 becomes sm_90a), NVCC_CCBIN optional, CUDAFORGE_THREADS parallel nvcc jobs;
#  - cudarc: CUDA version from `nvcc --version` on PATH (13.0 -> feature cuda-13000), link
#    search dirs <root>/lib and <root>/lib/stubs for each of CUDA_HOME, CUDA_PATH, CUDA_ROOT.
export PATH="$cuda/bin:$PATH"
export NVCC="$cuda/bin/nvcc"
export CUDA_HOME="$cuda" CUDA_PATH="$cuda" CUDA_ROOT="$cuda"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CARGO_TARGET_DIR="$target"

if [ "$mode" = env ]; then
  for v in PATH NVCC CUDA_HOME CUDA_PATH CUDA_ROOT CUDA_COMPUTE_CAP CARGO_TARGET_DIR; do
    printf 'export %s=%q\n' "$v" "${!v}"
  done
  exit 0
fi

release="$(nvcc --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')"
if [ "$release" != "$want_release" ]; then
  log "nvcc reports CUDA $release, expected $want_release (the GPU machines' driver is CUDA $want_release)"
  exit 1
fi
log "nvcc $(nvcc --version | tail -n 1), compute capability $CUDA_COMPUTE_CAP, target dir $target"
log "toolkit ready in $(( $(date +%s) - t0 ))s"

# 4. Build (or check). --locked: this script never rewrites Cargo.lock.
t1=$(date +%s)
if [ "$mode" = check ]; then
  cargo check --locked -p unet-trainer --features "$features"
  log "cargo check --features $features: $(( $(date +%s) - t1 ))s"
  exit 0
fi
cargo build --locked --release -p unet-trainer --features "$features"
log "cargo build --release --features $features: $(( $(date +%s) - t1 ))s"

# 5. What a GPU machine without Rust needs: the binary, the runner, the checks, the PyTorch
# comparison, and the shared libraries it loads (direct NEEDED entries plus the CUDA libraries
# those pull in, e.g. libcublasLt behind libcublas).
bin="$target/release/unet-train"
carry="$target/carry"
rm -rf "$carry"
mkdir -p "$carry"
cp "$bin" "$root/ci/cuda/run-on-gpu.sh" "$root/ci/cuda/bench_torch_gpu.py" "$root/ci/cuda/gpu-checks.sh" "$carry/"
cp "$root/fixtures/generate.py" "$carry/reference_generate.py"
{
  readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'
  LD_LIBRARY_PATH="$cuda/lib" ldd "$bin" | sed -n "s|^[[:space:]]*\([^ ]*\) => $cuda/lib/.*|\1|p"
} | awk '!seen[$0]++' >"$carry/NEEDED.txt"
{
  echo "# unet-train built $(date -u +%Y-%m-%dT%H:%MZ) with features '$features', CUDA $release, sm_$CUDA_COMPUTE_CAP"
  echo "# ldd with the wheels' lib dir (libcuda.so.1 comes from the GPU machine's driver):"
  LD_LIBRARY_PATH="$cuda/lib" ldd "$bin" || true
  echo "# sizes:"
  while read -r need; do
    if [ -e "$cuda/lib/$need" ]; then echo "$need $(du -hL "$cuda/lib/$need" | cut -f1)"; fi
  done <"$carry/NEEDED.txt"
} >"$carry/LIBS.txt"
if [ -n "$carry_libs" ]; then
  mkdir -p "$carry/lib"
  while read -r need; do
    [ -e "$cuda/lib/$need" ] && [ "$need" != libcuda.so.1 ] || continue
    case ",$carry_libs," in *",all,"*|*",$need,"*) cp -L "$cuda/lib/$need" "$carry/lib/$need" ;; esac
  done <"$carry/NEEDED.txt"
fi
# xz shrinks the binary ~8x (its PTX is text); run-on-gpu.sh unpacks on first use.
if [ "$xz" = 1 ]; then
  for f in "$carry/unet-train" "$carry"/lib/*.so*; do
    if [ -e "$f" ]; then xz -T0 -6 "$f"; fi
  done
fi
log "carry folder: $carry ($(du -sh "$carry" | cut -f1)); loads: $(tr '\n' ' ' <"$carry/NEEDED.txt")"
log "total $(( $(date +%s) - t0 ))s"
