#!/usr/bin/env bash
# Training steps beside other work, against the same steps alone, in one run.
#
#   ROUNDS=N MODES=scratch,finetune [PRECISION=bf16] bench/contention.sh [engine_bench flags...]
#
# Conditions (each round runs them all, back to back):
#   alone      nothing else of ours on the machine
#   neighbour  bench/neighbour.py burning 0.36 of a core in slices of at most
#              5 ms, at random moments (a loader, a log shipper, another job)
#   quota      inside a cgroup this script makes with a CFS quota of
#              QUOTA_CORES cores (what a Kubernetes CPU limit is); removed
#              at the end
# Runs per condition: traind's engine with a fixed thread count, with
# adaptive threads (--adaptive 1, thread_governor.h), and PyTorch's tuned
# step (reference_bench.py --tuned, traind's allocator settings), all with
# --threads (default: the cores this process may use).
# Prints images/s per run, then per condition its fair share (the share of
# the cores left to the benchmark: 1 - neighbour/cores, quota/cores) and each
# run's ratio to the same run alone, the median over the rounds. The machine
# is shared and noisy: compare the ratios, and run ROUNDS=3 or more.
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE=${ENGINE:-build/bench/engine_bench}
ROUNDS=${ROUNDS:-1}
MODES=${MODES:-scratch}
SHARE=${SHARE:-0.36}
QUOTA_CORES=${QUOTA_CORES:-1.5}
CORES=$(nproc)
THREADS=${THREADS:-$CORES}
STEPS=${STEPS:-40}
PRECISION=${PRECISION:-fp32}  # or bf16: traind's bf16 steps against PyTorch's under autocast
case $PRECISION in
  fp32) ENGINE_PRECISION=(--bf16 0); REFERENCE_PRECISION=() ;;
  bf16) ENGINE_PRECISION=(--bf16 1 --fp32 0); REFERENCE_PRECISION=(--bf16) ;;
  *) echo "contention: PRECISION is fp32 or bf16, not $PRECISION" >&2; exit 2 ;;
esac
source bench/tuned_env.sh
COMMON=(--threads "$THREADS" --steps "$STEPS" --modes "$MODES" "$@")

NEIGHBOUR=
CGROUP=
cleanup() {
  [[ -n $NEIGHBOUR ]] && kill "$NEIGHBOUR" 2>/dev/null && wait "$NEIGHBOUR" 2>/dev/null
  [[ -n $CGROUP && -d $CGROUP ]] && rmdir "$CGROUP" 2>/dev/null
  return 0
}
trap cleanup EXIT

# A cgroup with the quota: v2 where the cpu controller is enabled at the
# root, else v1's cpu hierarchy. Empty (and the quota condition skipped,
# with the reason) where neither can be written.
make_cgroup() {
  local period=100000 quota
  quota=$(awk -v c="$QUOTA_CORES" -v p=$period 'BEGIN {printf "%d", c * p}')
  if grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then
    CGROUP=/sys/fs/cgroup/traind-contention-$$
    mkdir "$CGROUP" && echo "$quota $period" > "$CGROUP/cpu.max" || CGROUP=
  elif [[ -w /sys/fs/cgroup/cpu/cgroup.procs ]]; then
    CGROUP=/sys/fs/cgroup/cpu/traind-contention-$$
    mkdir "$CGROUP" && echo $period > "$CGROUP/cpu.cfs_period_us" &&
      echo "$quota" > "$CGROUP/cpu.cfs_quota_us" || CGROUP=
  fi
  [[ -n $CGROUP ]] || echo "contention: no writable cgroup cpu controller here; the quota condition is skipped" >&2
}

# run CONDITION LABEL COMMAND...: one timed run under CONDITION; prints and
# keeps "ROUND CONDITION LABEL MODE IMG/S" lines.
run() {
  local condition=$1 label=$2; shift 2
  if [[ $condition == neighbour ]]; then
    python3 bench/neighbour.py --share "$SHARE" >/dev/null & NEIGHBOUR=$!
  fi
  case $condition in
    quota) bash -c 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"' _ "$CGROUP" "$@" ;;
    *) "$@" ;;
  esac | awk -v r="$round" -v c="$condition" -v l="$label" \
    '$1 ~ /^(engine|tuned)(-bf16)?$/ && $3 ~ /^[0-9.]+$/ {print r, c, l, $2, $3; fflush()}' |
    tee -a "$results"
  if [[ -n $NEIGHBOUR ]]; then
    kill "$NEIGHBOUR"; wait "$NEIGHBOUR" 2>/dev/null || true; NEIGHBOUR=
  fi
}

make_cgroup
CONDITIONS=(alone neighbour)
[[ -n $CGROUP ]] && CONDITIONS+=(quota)
echo "contention: $CORES cores, $THREADS threads, $PRECISION, modes $MODES, $STEPS timed steps, $ROUNDS round(s);" \
     "neighbour ${SHARE} of a core in <= 5 ms slices; quota ${QUOTA_CORES} cores"
results=$(mktemp)
trap 'cleanup; rm -f "$results"' EXIT
for round in $(seq "$ROUNDS"); do
  for c in "${CONDITIONS[@]}"; do
    run "$c" fixed "$ENGINE" "${COMMON[@]}" "${ENGINE_PRECISION[@]}"
    run "$c" adaptive "$ENGINE" "${COMMON[@]}" "${ENGINE_PRECISION[@]}" --adaptive 1
    run "$c" pytorch env "${TUNED_ENV[@]}" /usr/bin/python3 bench/reference_bench.py --tuned \
      "${REFERENCE_PRECISION[@]}" "${COMMON[@]}"
  done
done
echo "== ratio to the same run alone (median of $ROUNDS round(s)), and adaptive / fixed"
awk -v cores="$CORES" -v share="$SHARE" -v quota="$QUOTA_CORES" '
  { v[$1 " " $2 " " $3 " " $4] = $5; rounds[$1]; conds[$2]; runs[$3]; modes[$4] }
  function median(a, n,   i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  END {
    fair["alone"] = 1; fair["neighbour"] = 1 - share / cores; fair["quota"] = quota / cores
    for (c in conds) for (m in modes) {
      line = sprintf("%-9s %-8s fair share %.2f:", c, m, fair[c])
      split("fixed adaptive pytorch", order, " ")
      for (i = 1; i <= 3; i++) {
        r = order[i]; if (!(r in runs)) continue
        n = 0; for (k in rounds) if ((k " alone " r " " m) in v && v[k " alone " r " " m] > 0) a[++n] = v[k " " c " " r " " m] / v[k " alone " r " " m]
        line = line sprintf("  %s %.2fx", r, median(a, n))
        n = 0; for (k in rounds) a[++n] = v[k " " c " " r " " m]
        line = line sprintf(" (%.1f img/s)", median(a, n))
      }
      n = 0; for (k in rounds) if (v[k " " c " fixed " m] > 0) a[++n] = v[k " " c " adaptive " m] / v[k " " c " fixed " m]
      print line sprintf("  adaptive/fixed %.2fx", median(a, n))
    }
  }' "$results" | sort
