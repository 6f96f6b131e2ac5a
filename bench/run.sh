#!/usr/bin/env bash
# Runs the engine and PyTorch back to back on this machine and prints images/s
# for each mode, and the engine's ratio to:
#   reference       the recipe's PyTorch code as written (fp32)
#   tuned           the same code at its best here: channels-last and traind's
#                   allocator settings (fp32), and with bf16 autocast (bf16)
#   bench/run.sh [--threads 2] [--steps 10] [--image_size 128] [--batch 32]
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE=${ENGINE:-build/bench/engine_bench}
# traind's allocator settings (server/train/allocator.cc), for PyTorch.
TUNED_ENV=(MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_MMAP_THRESHOLD_=33554432
           MALLOC_TRIM_THRESHOLD_=1073741824)
eng=$("$ENGINE" "$@")
ref=$(/usr/bin/python3 bench/reference_bench.py "$@")
tuned=$(env "${TUNED_ENV[@]}" /usr/bin/python3 bench/reference_bench.py --tuned "$@")
tuned_bf16=$(env "${TUNED_ENV[@]}" /usr/bin/python3 bench/reference_bench.py --tuned --bf16 "$@")
printf '%s\n' "$eng" "$ref" "$tuned" "$tuned_bf16"
figure() { echo "$1" | awk -v l="$2" -v m="$3" '$1==l && $2==m {print $3}'; }
for mode in finetune scratch eval; do
  e=$(figure "$eng" engine "$mode"); eb=$(figure "$eng" engine-bf16 "$mode")
  r=$(figure "$ref" reference "$mode"); t=$(figure "$tuned" tuned "$mode")
  tb=$(figure "$tuned_bf16" tuned-bf16 "$mode")
  awk -v m="$mode" -v e="$e" -v eb="$eb" -v r="$r" -v t="$t" -v tb="$tb" 'BEGIN {
    printf "ratio %-8s fp32: %.2fx the reference, %.2fx tuned PyTorch | bf16: %.2fx tuned PyTorch bf16\n",
      m, e / r, e / t, (tb > 0 ? eb / tb : 0) }'
done
