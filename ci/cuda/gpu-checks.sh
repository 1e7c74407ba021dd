#!/usr/bin/env bash
# The checks that wait for a GPU (docs/cuda.md), run from the carry folder on the GPU machine:
#
#   ./gpu-checks.sh OUT_DIR [quick|all]
#
# quick (default, a few minutes): library check, CPU vs CUDA agreement of one short epoch,
# candle vs PyTorch step time (unet, base 64, 256x256, batch 8 and 16, f32 and bf16).
# all: also a full `--demo` training on CUDA and on the CPU, for their validation Dice.
# Every result goes to OUT_DIR (logs, metrics.jsonl files, bench.jsonl, summary.txt).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: gpu-checks.sh OUT_DIR [quick|all]}"
level="${2:-quick}"
mkdir -p "$out"
run="$here/run-on-gpu.sh"
py="${PYTHON:-python3}"
summary="$out/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
step() { echo "== $*" | tee -a "$summary"; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1 | tee -a "$summary"
note "cpu cores: $(nproc)"

step "libraries"
if ! "$run" --check-libs 2>&1 | tee "$out/libs.txt"; then
  note "FAILED: libraries missing (see libs.txt); nothing else can run"
  exit 1
fi

# One short epoch, no augmentation, same seed: the weights start equal (initialised on the
# host), so the losses and the validation Dice must agree up to float reassociation.
step "CPU vs CUDA agreement (unet-16, 48 demo samples, 128x128, 1 epoch)"
common=(--demo --demo-count 48 --model unet-16 --image-size 128 --batch-size 4 --epochs 1
  --no-augment --workers 0 --seed 7 --quiet)
for dev in cpu cuda; do
  "$run" "${common[@]}" --device "$dev" --out "$out/agree-$dev" >"$out/agree-$dev.log" 2>&1 ||
    note "FAILED: agreement run on $dev (see agree-$dev.log)"
done
"$py" - "$out/agree-cpu/metrics.jsonl" "$out/agree-cuda/metrics.jsonl" <<'EOF' 2>&1 | tee -a "$summary"
import json, sys
try:
    cpu, cuda = (json.loads(open(p).read().splitlines()[-1]) for p in sys.argv[1:3])
except (OSError, IndexError, ValueError) as e:
    sys.exit(f"no metrics to compare: {e}")
for key in ("train_loss", "val_loss"):
    a, b = cpu[key], cuda[key]
    print(f"{key}: cpu {a:.6f} cuda {b:.6f} rel diff {abs(a - b) / max(abs(a), 1e-12):.2e}")
a, b = cpu["val"]["dice"], cuda["val"]["dice"]
print(f"val dice: cpu {a:.4f} cuda {b:.4f} abs diff {abs(a - b):.4f}")
print(f"images/s: cpu {cpu['images_per_second']:.1f} cuda {cuda['images_per_second']:.1f}")
EOF

step "step time: candle (unet-train bench-step) vs PyTorch, unet base 64, 256x256"
for batch in 8 16; do
  for precision in f32 bf16; do
    args=(bench-step --model unet --size 256 --batch-size "$batch" --steps 20 --device cuda)
    [ "$precision" = f32 ] || args+=(--precision "$precision")
    log="$out/candle-b$batch-$precision.log"
    if "$run" "${args[@]}" >"$log" 2>&1; then
      ms="$(sed -n 's/^median step: \([0-9.]*\) ms/\1/p' "$log")"
      note "candle batch $batch $precision: median $ms ms/step, $(awk -v b="$batch" -v m="$ms" 'BEGIN{printf "%.1f", b*1000/m}') images/s"
    else
      note "candle batch $batch $precision: FAILED ($(grep -m 1 -i error "$log" || tail -n 1 "$log"))"
    fi
  done
done
"$py" "$here/bench_torch_gpu.py" --model unet --size 256 --batch 8 16 --precision f32 bf16 --steps 20 \
  --json "$out/bench-torch.jsonl" 2>&1 | tee -a "$summary"

# ONNX Runtime's GPU providers can only be measured if the machine already has them.
step "ONNX Runtime providers available to $py"
"$py" -c 'import onnxruntime as o; print(o.__version__, o.get_available_providers(), o.__file__)' 2>&1 |
  tail -n 1 | tee -a "$summary"

if [ "$level" = all ]; then
  # The trainer's defaults (unet-16, 400 demo samples, 128x128, 12 epochs), once per device.
  for dev in cuda cpu; do
    step "full demo training on $dev"
    start=$(date +%s)
    "$run" --demo --device "$dev" --quiet --out "$out/demo-$dev" >"$out/demo-$dev.log" 2>&1 ||
      note "FAILED: demo training on $dev (see demo-$dev.log)"
    note "wall time $(( $(date +%s) - start ))s; last epoch: $(tail -n 1 "$out/demo-$dev/metrics.jsonl" 2>/dev/null)"
  done
fi
note "done; results in $out"
