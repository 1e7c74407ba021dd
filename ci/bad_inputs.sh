#!/usr/bin/env bash
# Bad-input corpus for the three binaries (issue #14): every case runs in a
# folder of its own and states the exit code it expects and the files it may
# create; files that were there before must come out byte-identical. Prints a
# table (case, exit code, first line of the message, files left) and exits 1
# if any case misbehaves: wrong exit code, a panic ("panicked at", exit 101,
# 134, 139), a timeout, a damaged file or a stray one.
#
#   bash ci/bad_inputs.sh [BIN_DIR]      # default target/debug; build first
set -uo pipefail
cd "$(dirname "$0")/.."
bin="$(cd "${1:-target/debug}" && pwd)"
for b in unet-infer unet-export unet-train; do
  [ -x "$bin/$b" ] || { echo "bad_inputs: $bin/$b is missing; build the workspace first" >&2; exit 1; }
done
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Per case, so a hang (e.g. 100000 threads) cannot stall CI.
limit="${BAD_INPUTS_TIMEOUT:-60}"

# ---- inputs --------------------------------------------------------------
inputs="$work/inputs"
mkdir -p "$inputs"
python3 - "$inputs" <<'EOF'
import struct, sys, zlib
out = sys.argv[1]
def png(w, h):
    def chunk(t, b):
        return struct.pack('>I', len(b)) + t + b + struct.pack('>I', zlib.crc32(t + b))
    rows = b''.join(b'\x00' + bytes(sum(([x * 7 % 256, y * 11 % 256, 128] for x in range(w)), []))
                    for y in range(h))
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0))
            + chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b''))
open(f'{out}/frame.png', 'wb').write(png(40, 24))
open(f'{out}/garbage.bin', 'wb').write(bytes((i * 37 + 11) % 256 for i in range(4096)))
# A safetensors header claiming 2^63 bytes.
open(f'{out}/huge_header.safetensors', 'wb').write(struct.pack('<Q', 1 << 63) + b'{}')
# A header whose tensor runs past the end of the file.
hdr = b'{"w":{"dtype":"F32","shape":[1000,1000],"data_offsets":[0,4000000]}}'
open(f'{out}/past_eof.safetensors', 'wb').write(struct.pack('<Q', len(hdr)) + hdr + b'\0' * 16)
EOF
cp fixtures/unet/weights.safetensors "$inputs/model.safetensors"
head -c 5000 "$inputs/model.safetensors" >"$inputs/truncated.safetensors"
cp runtime/tests/data/color.onnx "$inputs/color.onnx"
head -c 200 "$inputs/color.onnx" >"$inputs/truncated.onnx"
: >"$inputs/empty"
echo "not an image" >"$inputs/text.png"
# A depth-3 model with its metadata, for the tiling cases.
if ! "$bin/unet-export" "$inputs/model.safetensors" -o "$inputs/unet.onnx" --no-check >/dev/null 2>&1; then
  echo "bad_inputs: cannot export fixtures/unet/weights.safetensors" >&2; exit 1
fi

# ---- the harness -----------------------------------------------------------
results="$work/results.tsv"
: >"$results"
failed=0

# prep NAME: a fresh case folder; files put there before `check` are guarded.
prep() {
  dir="$work/cases/$1"
  mkdir -p "$dir"
}

# check NAME EXPECTED_RC "NEW FILES" -- COMMAND...: runs COMMAND in the case
# folder; NEW FILES ("" for none) are the files it must leave, relative paths.
check() {
  local name="$1" want="$2" expect_new="$3"
  shift 4
  local before after rc msg new why=""
  before="$(cd "$dir" && find . -type f -exec sha256sum {} + | sort -k2)"
  rc=0
  (cd "$dir" && timeout "$limit" "$@") >"$dir.out" 2>"$dir.err" || rc=$?
  after="$(cd "$dir" && find . -type f -exec sha256sum {} + | sort -k2)"
  # The error line if there is one, else the first line said.
  msg="$(grep -m1 -i '^error' "$dir.err" || grep -m1 -v '^\s*$' "$dir.err" || true)"
  [ -n "$msg" ] || msg="$(grep -m1 -v '^\s*$' "$dir.out" || true)"
  new="$(comm -13 <(echo "$before" | awk '{print $2}') <(echo "$after" | awk '{print $2}') \
    | sed 's|^\./||' | sort | tr '\n' ' ' | sed 's/ $//')"
  local want_new
  want_new="$(echo "$expect_new" | tr ' ' '\n' | sed '/^$/d' | sort | tr '\n' ' ' | sed 's/ $//')"
  if grep -q "panicked at" "$dir.out" "$dir.err"; then why="panic"; fi
  case "$rc" in
    101 | 134 | 139) why="${why:+$why, }crash ($rc)" ;;
    124) why="${why:+$why, }timeout after ${limit}s" ;;
  esac
  [ "$rc" = "$want" ] || why="${why:+$why, }exit $rc, expected $want"
  local damaged
  damaged="$(join -j 2 <(echo "$before" | sort -k2) <(echo "$after" | sort -k2) \
    | awk '$2 != $3 {print $1}' | sed 's|^\./||' | tr '\n' ' ')"
  [ -z "$damaged" ] || why="${why:+$why, }changed: $damaged"
  local gone
  gone="$(comm -23 <(echo "$before" | awk '{print $2}') <(echo "$after" | awk '{print $2}') \
    | sed 's|^\./||' | tr '\n' ' ')"
  [ -z "$gone" ] || why="${why:+$why, }removed: $gone"
  [ "$new" = "$want_new" ] || why="${why:+$why, }left [${new}], expected [${want_new}]"
  local verdict=ok
  if [ -n "$why" ]; then verdict="FAIL: $why"; failed=$((failed + 1)); fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$want" "$rc" "${msg:0:90}" "${new:--}" "$verdict" >>"$results"
}

infer="$bin/unet-infer"
export_="$bin/unet-export"
train="$bin/unet-train"
# A training run that would finish in seconds if a bad flag were not refused
# (cases that set --image-size or --batch-size themselves use tiny_base).
tiny_base=(--demo --demo-count 8 --epochs 1 --quiet --out run)
tiny_train=("${tiny_base[@]}" --image-size 32x32 --batch-size 2)

# ---- unet-infer ------------------------------------------------------------
prep infer-garbage-onnx; cp "$inputs/garbage.bin" "$dir/model.onnx"; cp "$inputs/frame.png" "$dir/"
check infer-garbage-onnx 1 "" -- "$infer" model.onnx frame.png -o out
prep infer-truncated-onnx; cp "$inputs/truncated.onnx" "$dir/model.onnx"; cp "$inputs/frame.png" "$dir/"
check infer-truncated-onnx 1 "" -- "$infer" model.onnx frame.png -o out
prep infer-empty-onnx; cp "$inputs/empty" "$dir/model.onnx"; cp "$inputs/frame.png" "$dir/"
check infer-empty-onnx 1 "" -- "$infer" model.onnx frame.png -o out
prep infer-model-is-dir; mkdir "$dir/model.onnx"; cp "$inputs/frame.png" "$dir/"
check infer-model-is-dir 1 "" -- "$infer" model.onnx frame.png -o out
prep infer-missing-model; cp "$inputs/frame.png" "$dir/"
check infer-missing-model 1 "" -- "$infer" nope.onnx frame.png -o out
prep infer-safetensors-as-model; cp "$inputs/model.safetensors" "$inputs/frame.png" "$dir/"
check infer-safetensors-as-model 1 "" -- "$infer" model.safetensors frame.png -o out
prep infer-ok; cp "$inputs/color.onnx" "$inputs/frame.png" "$dir/"
check infer-ok 0 "out/frame_mask.png" -- "$infer" color.onnx frame.png -o out
prep infer-image-is-dir; cp "$inputs/color.onnx" "$dir/"; mkdir "$dir/frame.png"
check infer-image-is-dir 1 "" -- "$infer" color.onnx frame.png -o out
prep infer-missing-image; cp "$inputs/color.onnx" "$dir/"
check infer-missing-image 1 "" -- "$infer" color.onnx nope.png -o out
prep infer-png-named-jpg; cp "$inputs/color.onnx" "$dir/"; cp "$inputs/frame.png" "$dir/frame.jpg"
check infer-png-named-jpg 0 "out/frame_mask.png" -- "$infer" color.onnx frame.jpg -o out
prep infer-text-as-image; cp "$inputs/color.onnx" "$inputs/text.png" "$dir/"
check infer-text-as-image 1 "" -- "$infer" color.onnx text.png -o out
prep infer-empty-image; cp "$inputs/color.onnx" "$dir/"; cp "$inputs/empty" "$dir/empty.png"
check infer-empty-image 1 "" -- "$infer" color.onnx empty.png -o out
prep infer-bad-image-among-good; cp "$inputs/color.onnx" "$inputs/frame.png" "$inputs/text.png" "$dir/"
cp "$inputs/frame.png" "$dir/frame2.png"
check infer-bad-image-among-good 1 "out/frame_mask.png out/frame2_mask.png" -- \
  "$infer" color.onnx frame.png text.png frame2.png -o out
prep infer-mask-exists; cp "$inputs/color.onnx" "$inputs/frame.png" "$dir/"; mkdir "$dir/out"
cp "$inputs/garbage.bin" "$dir/out/frame_mask.png"
check infer-mask-exists 1 "" -- "$infer" color.onnx frame.png -o out
prep infer-same-stem-twice; cp "$inputs/color.onnx" "$inputs/frame.png" "$dir/"; cp "$inputs/frame.png" "$dir/frame.jpg"
# Both masks kept: the stems collide, so each name carries its extension.
check infer-same-stem-twice 0 "out/frame_png_mask.png out/frame_jpg_mask.png" -- \
  "$infer" color.onnx frame.png frame.jpg -o out
prep infer-output-is-file; cp "$inputs/color.onnx" "$inputs/frame.png" "$dir/"; echo x >"$dir/out"
check infer-output-is-file 1 "" -- "$infer" color.onnx frame.png -o out
prep infer-threads-0; cp "$inputs/color.onnx" "$inputs/frame.png" "$dir/"
check infer-threads-0 1 "" -- "$infer" color.onnx frame.png -o out --threads 0
prep infer-threads-100000; cp "$inputs/color.onnx" "$inputs/frame.png" "$dir/"
check infer-threads-100000 1 "" -- "$infer" color.onnx frame.png -o out --threads 100000
prep infer-threshold-nan; cp "$inputs/color.onnx" "$inputs/frame.png" "$dir/"
check infer-threshold-nan 1 "" -- "$infer" color.onnx frame.png -o out --threshold NaN
prep infer-threshold-2; cp "$inputs/color.onnx" "$inputs/frame.png" "$dir/"
check infer-threshold-2 1 "" -- "$infer" color.onnx frame.png -o out --threshold 2
prep infer-threshold-negative; cp "$inputs/color.onnx" "$inputs/frame.png" "$dir/"
check infer-threshold-negative 1 "" -- "$infer" color.onnx frame.png -o out --threshold=-0.5
prep infer-tile-0; cp "$inputs/color.onnx" "$inputs/frame.png" "$dir/"
check infer-tile-0 1 "" -- "$infer" color.onnx frame.png -o out --tile 0
prep infer-overlap-ge-tile; cp "$inputs/color.onnx" "$inputs/frame.png" "$dir/"
check infer-overlap-ge-tile 1 "" -- "$infer" color.onnx frame.png -o out --tile 16 --overlap 16
# Tiles must suit the model's size multiple (8 for this depth-3 model).
prep infer-tile-7-overlap-0; cp "$inputs/unet.onnx" "$inputs/frame.png" "$dir/"
check infer-tile-7-overlap-0 1 "" -- "$infer" unet.onnx frame.png -o out --tile 7 --overlap 0
prep infer-resize-0x0; cp "$inputs/color.onnx" "$inputs/frame.png" "$dir/"
check infer-resize-0x0 1 "" -- "$infer" color.onnx frame.png -o out --resize 0x0
prep bench-size-0x0; cp "$inputs/color.onnx" "$dir/"
check bench-size-0x0 1 "" -- "$infer" bench color.onnx --size 0x0 --runs 1
prep bench-size-100000x100000; cp "$inputs/color.onnx" "$dir/"
check bench-size-100000x100000 1 "" -- "$infer" bench color.onnx --size 100000x100000 --runs 1
prep bench-runs-0; cp "$inputs/color.onnx" "$dir/"
check bench-runs-0 1 "" -- "$infer" bench color.onnx --runs 0

# ---- unet-export -----------------------------------------------------------
prep export-ok; cp "$inputs/model.safetensors" "$dir/"
check export-ok 0 "model.onnx" -- "$export_" model.safetensors --no-check
for kind in garbage truncated huge_header past_eof empty; do
  src="$inputs/$kind.safetensors"; [ "$kind" = garbage ] && src="$inputs/garbage.bin"
  [ "$kind" = empty ] && src="$inputs/empty"
  prep "export-$kind-safetensors"; cp "$src" "$dir/model.safetensors"
  check "export-$kind-safetensors" 1 "" -- "$export_" model.safetensors --no-check
done
prep export-onto-own-input; cp "$inputs/model.safetensors" "$dir/"
check export-onto-own-input 1 "" -- "$export_" model.safetensors -o model.safetensors --no-check
prep export-failure-keeps-old-output; cp "$inputs/garbage.bin" "$dir/model.safetensors"
cp "$inputs/color.onnx" "$dir/model.onnx"
check export-failure-keeps-old-output 1 "" -- "$export_" model.safetensors -o model.onnx --no-check
prep export-onnx-as-weights; cp "$inputs/color.onnx" "$dir/"
check export-onnx-as-weights 1 "" -- "$export_" color.onnx -o out.onnx --no-check
prep export-missing-input
check export-missing-input 1 "" -- "$export_" nope.safetensors --no-check
prep export-missing-out-dir; cp "$inputs/model.safetensors" "$dir/"
check export-missing-out-dir 1 "" -- "$export_" model.safetensors -o no/such/dir/m.onnx --no-check
prep export-opset-99; cp "$inputs/model.safetensors" "$dir/"
check export-opset-99 1 "" -- "$export_" model.safetensors -o m.onnx --opset 99 --no-check
prep export-bad-shape; cp "$inputs/model.safetensors" "$dir/"
check export-bad-shape 1 "" -- "$export_" model.safetensors -o m.onnx --dynamic none --shape 1x3x0x0 --no-check
prep check-garbage-onnx; cp "$inputs/model.safetensors" "$dir/"; cp "$inputs/garbage.bin" "$dir/m.onnx"
check check-garbage-onnx 1 "" -- "$export_" check model.safetensors m.onnx

# ---- unet-train ------------------------------------------------------------
prep train-lr-negative
check train-lr-negative 1 "" -- "$train" "${tiny_train[@]}" --lr=-1
prep train-image-size-0x0
check train-image-size-0x0 1 "" -- "$train" "${tiny_base[@]}" --image-size 0x0
prep train-image-size-not-multiple
check train-image-size-not-multiple 1 "" -- "$train" "${tiny_base[@]}" --image-size 33x33
prep train-threads-100000
check train-threads-100000 1 "" -- "$train" "${tiny_train[@]}" --threads 100000
prep train-batch-size-0
check train-batch-size-0 1 "" -- "$train" "${tiny_base[@]}" --image-size 32x32 --batch-size 0
prep train-val-split-2
check train-val-split-2 1 "" -- "$train" "${tiny_train[@]}" --val-split 2
prep train-unknown-model
check train-unknown-model 1 "" -- "$train" "${tiny_train[@]}" --model no-such-preset
prep train-missing-data
check train-missing-data 1 "" -- "$train" --data no/such/dir --epochs 1 --quiet --out run
prep train-resume-garbage; cp "$inputs/garbage.bin" "$dir/checkpoint.safetensors"
check train-resume-garbage 1 "" -- "$train" "${tiny_train[@]}" --resume checkpoint.safetensors
prep train-resume-truncated; cp "$inputs/truncated.safetensors" "$dir/checkpoint.safetensors"
check train-resume-truncated 1 "" -- "$train" "${tiny_train[@]}" --resume checkpoint.safetensors

# ---- the table -------------------------------------------------------------
{
  printf 'case\texpect\texit\tmessage (first line)\tfiles left\tverdict\n'
  cat "$results"
} | awk -F'\t' '{printf "%-34s %-6s %-4s %-90s %-36s %s\n", $1, $2, $3, $4, $5, $6}'
total="$(wc -l <"$results")"
echo "bad inputs: $((total - failed)) of $total cases behaved"
[ "$failed" -eq 0 ]
