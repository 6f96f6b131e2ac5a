#!/usr/bin/env bash
# Runs the reference recipe (PyTorch) and traind on the same dataset, same
# spec and seed, one after the other on this machine, and prints per-epoch
# seconds, images/s and accuracies side by side with the time ratio.
#
#   bench/compare_reference.sh DATASET_DIR [EPOCHS] [KIND] [SEED] [PRECISION]
#   (KIND scratch; finetune needs WEIGHTS=/path/to/resnet18.pth;
#    REFERENCE_OUTPUT=FILE reuses the lines of an earlier reference run;
#    TRAINED_OUT=FILE.pth keeps traind's trained weights, e.g. for
#    build/bench/engine_bench --weights FILE.pth;
#    RUNS=N runs traind's job N times, one after the other on one daemon, and
#    also prints the median per epoch: the machine is shared and noisy;
#    TRAIND_FLAGS="--split_backward=false ..." adds flags to the daemon's)
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=$(realpath "$1")
EPOCHS=${2:-1}
KIND=${3:-scratch}
SEED=${4:-0}
PRECISION=${5:-fp32}
WORK=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
PID=

ref_args=(--kind "$KIND" --epochs "$EPOCHS" --seed "$SEED")
ctl_args=(--kind="$KIND" --epochs="$EPOCHS" --seed="$SEED" --precision="$PRECISION"
          --augment_validation --output=json)
if [[ $KIND == finetune ]]; then
  mkdir -p "$WORK/weights"
  cp "$WEIGHTS" "$WORK/weights/start.pth"
  ref_args+=(--weights "$WEIGHTS")
  ctl_args+=(--pretrained=start.pth)
fi

echo "== reference (PyTorch, ImageFolder, DataLoader num_workers=2): $KIND, $EPOCHS epoch(s), seed $SEED"
if [[ -n ${REFERENCE_OUTPUT:-} ]]; then  # reuse an earlier reference run's output
  tee "$WORK/ref.txt" < "$REFERENCE_OUTPUT"
else
  /usr/bin/python3 bench/reference_recipe.py "$DATASET" "${ref_args[@]}" | tee "$WORK/ref.txt"
fi

echo "== traind: $KIND, $EPOCHS epoch(s), seed $SEED, $PRECISION, validation augmented as the reference"
build/server/traind --listen=127.0.0.1:0 --state-dir="$WORK/state" \
  --data-root="$(dirname "$DATASET")" --weights-root="$WORK/weights" --port-file="$WORK/port" \
  ${TRAIND_FLAGS:-} > "$WORK/traind.log" 2>&1 &
PID=$!
for _ in $(seq 100); do [[ -s $WORK/port ]] && break; sleep 0.1; done
export TRAINCTL_SERVER=127.0.0.1:$(cat "$WORK/port")
runs=()
for run in $(seq "${RUNS:-1}"); do
  job=$(build/client/trainctl submit --dataset="$(basename "$DATASET")" "${ctl_args[@]}" |
        sed -E 's/.*"job_id":"([^"]+)".*/\1/')
  build/client/trainctl watch "$job" --output=json > "$WORK/events-$run.jsonl" || true
  runs+=("$WORK/events-$run.jsonl")
done
if [[ -n ${TRAINED_OUT:-} ]]; then
  build/client/trainctl weights "$job" -o "$TRAINED_OUT" > /dev/null
fi
/usr/bin/python3 - "$WORK/ref.txt" "${runs[@]}" <<'PY'
import json, statistics, sys
ref = {}
for line in open(sys.argv[1]):
    f = line.split()
    ref[int(f[2])] = dict(zip(f[3::2], map(float, f[4::2])))
seconds = {}  # epoch -> traind's seconds in each run
for n, path in enumerate(sys.argv[2:], 1):
    events = [json.loads(l) for l in open(path)]
    ours = [e["epoch"] for e in events if "epoch" in e]
    first_batch = next((int(e["time_ms"]) for e in events if "batch" in e), None)
    running = next(int(e["time_ms"]) for e in events if e.get("state", {}).get("state") == "RUNNING")
    for m in ours:
        seconds.setdefault(m.get("epoch", 0), []).append(m["seconds"])
    if len(sys.argv) > 3:
        print(f"== traind run {n} of {len(sys.argv) - 2}")
    print(f"traind: dataset scan + decode before the first batch: {(first_batch - running) / 1000:.1f} s")
    print(f"{'epoch':>5} | {'ref s':>7} {'traind s':>8} {'ratio':>6} | {'ref img/s':>9} {'traind img/s':>12} | "
          f"{'ref val acc':>11} {'traind val acc':>14} | {'ref train loss':>14} {'traind train loss':>17}")
    for m in ours:
        e = m.get("epoch", 0)
        r = ref.get(e, {})
        print(f"{e:>5} | {r.get('seconds', 0):7.1f} {m['seconds']:8.1f} {m['seconds'] / r.get('seconds', 1):6.2f} | "
              f"{r.get('train_img_s', 0):9.1f} {m['images_per_second']:12.1f} | "
              f"{r.get('val_acc', 0):11.4f} {m.get('validation_accuracy', 0):14.4f} | "
              f"{r.get('train_loss', 0):14.4f} {m.get('train_loss', 0):17.4f}")
    print("traind epoch time by phase (s): steps / waiting for batches / validation / rest")
    for m in ours:
        parts = [m.get(k, 0) for k in ("step_seconds", "data_seconds", "validation_seconds")]
        rest = m["seconds"] - sum(parts)
        print(f"{m.get('epoch', 0):>5} | " + " / ".join(f"{p:.1f}" for p in parts + [rest]))
if len(sys.argv) > 3:
    print(f"median of {len(sys.argv) - 2} runs: epoch | ref s  traind s  ratio (each run's traind s)")
    for e, ss in sorted(seconds.items()):
        r = ref.get(e, {}).get("seconds", 0)
        med = statistics.median(ss)
        print(f"{e:>5} | {r:7.1f} {med:8.1f} {med / r if r else 0:6.2f} ({', '.join(f'{x:.1f}' for x in ss)})")
PY
