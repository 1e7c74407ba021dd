#!/usr/bin/env bash
# Runs the carried CUDA `unet-train` on a GPU machine that has no Rust (see docs/cuda.md).
#
#   ./run-on-gpu.sh --check-libs            # where each needed library comes from, then exit
#   ./run-on-gpu.sh bench-step --device cuda --model unet --size 256 --batch-size 8
#   ./run-on-gpu.sh --demo --device cuda --out runs/cuda
#
# The binary loads libcuda.so.1 (the driver) and the CUDA 13 libraries listed in NEEDED.txt
# (libcudart.so.13, libcublas.so.13 with libcublasLt.so.13, libcurand.so.10; libcudnn.so.9
# with --features cudnn, which loads its libcudnn_*.so.9 parts from the same folder).
# They are searched in this order and the first directory holding each one goes on
# LD_LIBRARY_PATH: ./lib next to this script (build-cuda.sh --carry-libs), $CUDA_LIB_DIRS
# (colon-separated, yours), $CUDA_HOME/lib64, /usr/local/cuda/lib64 and its targets/ dir,
# and the nvidia/cu13/lib and nvidia/cudnn/lib folders of the Python environment that has
# PyTorch (pip wheels).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$here/unet-train"

# build-cuda.sh --xz carries unet-train.xz and lib/*.xz: unpack once (xz, else Python's lzma).
for packed in "$here/unet-train.xz" "$here"/lib/*.xz; do
  [ -e "$packed" ] || continue
  plain="${packed%.xz}"
  [ -e "$plain" ] && continue
  if command -v xz >/dev/null 2>&1; then
    xz -dc "$packed" >"$plain.tmp"
  else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$packed" "$plain.tmp"
  fi
  chmod +x "$plain.tmp"
  mv "$plain.tmp" "$plain"
done

dirs=("$here/lib")
if [ -n "${CUDA_LIB_DIRS:-}" ]; then IFS=: read -r -a extra <<<"$CUDA_LIB_DIRS"; dirs+=("${extra[@]}"); fi
[ -n "${CUDA_HOME:-}" ] && dirs+=("$CUDA_HOME/lib64" "$CUDA_HOME/lib")
dirs+=(/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu)
for py in "${PYTHON:-}" python3 python; do
  [ -n "$py" ] && command -v "$py" >/dev/null 2>&1 || continue
  site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || true)"
  [ -n "$site" ] && dirs+=("$site/nvidia/cu13/lib" "$site/nvidia/cudnn/lib")
done

search=""
used=""
missing=()
report=()
while read -r need; do
  [ -n "$need" ] || continue
  case "$need" in
    libc.so.*|libm.so.*|libgcc_s.so.*|libstdc++.so.*|libpthread.so.*|libdl.so.*|librt.so.*|ld-linux*) continue ;;
  esac
  found=""
  for d in "${dirs[@]}"; do
    if [ -e "$d/$need" ]; then found="$d"; break; fi
  done
  if [ -z "$found" ] && [ "$need" = libcuda.so.1 ] && ldconfig -p 2>/dev/null | grep -q 'libcuda.so.1 '; then
    found="(ldconfig: NVIDIA driver)"
  fi
  if [ -z "$found" ]; then
    missing+=("$need")
  else
    report+=("$need: $found")
    used="$used:$found:"
  fi
done <"$here/NEEDED.txt"
# The path keeps the search order, so the loader picks what was reported above.
for d in "${dirs[@]}"; do
  case "$used" in *":$d:"*) case ":$search:" in *":$d:"*) ;; *) search="${search:+$search:}$d" ;; esac ;; esac
done

export LD_LIBRARY_PATH="${search}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ "${1:-}" = --check-libs ]; then
  printf '%s\n' "${report[@]}"
  [ ${#missing[@]} -eq 0 ] || { echo "missing: ${missing[*]}" >&2; exit 1; }
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  ldd "$bin" | grep -E 'not found|cuda|cublas|curand|nvrtc' || true
  exit 0
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "run-on-gpu: cannot find ${missing[*]} in: ${dirs[*]}" >&2
  echo "run-on-gpu: set CUDA_LIB_DIRS, or rebuild the carry folder with ci/build-cuda.sh --carry-libs" >&2
  exit 1
fi
exec "$bin" "$@"
