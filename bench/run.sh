#!/usr/bin/env bash
# Runs the engine and PyTorch back to back on this machine and prints images/s
# for each mode, and the engine's ratio to:
#   reference       the recipe's PyTorch code as written (fp32)
#   tuned           the same code at its best here: channels-last, gradients
#                   set to None and traind's allocator settings (fp32), and
#                   with bf16 autocast (bf16)
#   ROUNDS=N bench/run.sh [--threads 2] [--steps 10] [--image_size 128] [--batch 32]
# With ROUNDS=N (default 1) the engine and the tuned PyTorch alternate N
# times; each ratio is taken within a round (the two runs minutes apart at
# most) and the median over the rounds is printed, which a shared, noisy
# machine needs.
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE=${ENGINE:-build/bench/engine_bench}
ROUNDS=${ROUNDS:-1}
source bench/tuned_env.sh
figure() { echo "$1" | awk -v l="$2" -v m="$3" '$1==l && $2==m {print $3}'; }
median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", (b > 0 ? a / b : 0)}'; }

ref=$(/usr/bin/python3 bench/reference_bench.py "$@")
echo "$ref"
declare -A ratios
for round in $(seq "$ROUNDS"); do
  eng=$("$ENGINE" "$@")
  tuned=$(env "${TUNED_ENV[@]}" /usr/bin/python3 bench/reference_bench.py --tuned "$@")
  tuned_bf16=$(env "${TUNED_ENV[@]}" /usr/bin/python3 bench/reference_bench.py --tuned --bf16 "$@")
  echo "== round $round"
  printf '%s\n' "$eng" "$tuned" "$tuned_bf16"
  for mode in finetune scratch eval; do
    e=$(figure "$eng" engine "$mode"); eb=$(figure "$eng" engine-bf16 "$mode")
    ratios[ref_$mode]+=" $(div "$e" "$(figure "$ref" reference "$mode")")"
    ratios[tuned_$mode]+=" $(div "$e" "$(figure "$tuned" tuned "$mode")")"
    ratios[bf16_$mode]+=" $(div "$eb" "$(figure "$tuned_bf16" tuned-bf16 "$mode")")"
  done
done
echo "== ratios (median of $ROUNDS round(s); per round in brackets)"
for mode in finetune scratch eval; do
  printf "ratio %-8s fp32: %.2fx the reference, %.2fx tuned PyTorch [%s] | bf16: %.2fx tuned PyTorch bf16 [%s]\n" \
    "$mode" "$(echo "${ratios[ref_$mode]}" | median)" \
    "$(echo "${ratios[tuned_$mode]}" | median)" "${ratios[tuned_$mode]# }" \
    "$(echo "${ratios[bf16_$mode]}" | median)" "${ratios[bf16_$mode]# }"
done
