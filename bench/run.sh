#!/usr/bin/env bash
# Runs the engine and the PyTorch reference back to back on this machine and
# prints images/s for each mode and the engine/reference ratio.
#   bench/run.sh [--threads 2] [--steps 10] [--image_size 128] [--batch 32]
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE=${ENGINE:-build/bench/engine_bench}
eng=$("$ENGINE" "$@")
ref=$(/usr/bin/python3 bench/reference_bench.py "$@")
echo "$eng"
echo "$ref"
for mode in finetune scratch eval; do
  e=$(echo "$eng" | awk -v m="$mode" '$1=="engine" && $2==m {print $3}')
  r=$(echo "$ref" | awk -v m="$mode" '$1=="reference" && $2==m {print $3}')
  awk -v m="$mode" -v e="$e" -v r="$r" 'BEGIN {printf "ratio %-8s %.2fx (engine %s / reference %s img/s)\n", m, e / r, e, r}'
done
