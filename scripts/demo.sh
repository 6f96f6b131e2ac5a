#!/usr/bin/env bash
# From a fresh Debian 12 machine to trained weights: installs the packages
# that building and running traind need, builds traind and trainctl, starts traind with its embedded defaults and its dashboard, trains a scratch
# ResNet-18 and then fine-tunes from its weights, watching both, and
# downloads the result.
#
#   scripts/demo.sh                     # on a generated demo dataset (~1 min)
#   DATASET=/path/to/101_ObjectCategories EPOCHS=1 IMAGE_SIZE=128 scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${DEMO_NO_SETUP:-} ]]; then  # tests/integration/demo_test.py has both done
  scripts/install-deps.sh
  BUILD_TYPE=Release scripts/build.sh traind trainctl
fi

STATE=${STATE:-$PWD/demo-state}
# The generated shapes: 8 scratch epochs, then 4 fine-tuning ones, at 64 px.
SCRATCH_EPOCHS=${SCRATCH_EPOCHS:-${EPOCHS:-8}}
FINETUNE_EPOCHS=${FINETUNE_EPOCHS:-${EPOCHS:-4}}
IMAGE_SIZE=${IMAGE_SIZE:-64}
mkdir -p "$STATE/data" "$STATE/weights"
if [[ -n ${DATASET:-} ]]; then
  # Datasets resolve strictly inside the data root: serve the dataset's parent.
  DATA_ROOT=$(dirname "$(realpath "$DATASET")")
  NAME=$(basename "$(realpath "$DATASET")")
else
  DATA_ROOT=$STATE/data
  NAME=shapes
  [[ -d $DATA_ROOT/$NAME ]] || build/client/trainctl demo-data "$DATA_ROOT/$NAME"
fi

build/server/traind --listen=127.0.0.1:0 --http-listen=127.0.0.1:${HTTP_PORT:-0} \
  --state-dir="$STATE" --data-root="$DATA_ROOT" --port-file="$STATE/port" \
  > "$STATE/traind.log" 2>&1 &
TRAIND_PID=$!
trap 'kill $TRAIND_PID 2>/dev/null; wait $TRAIND_PID 2>/dev/null' EXIT
for _ in $(seq 100); do grep -q "HTTP API on" "$STATE/traind.log" && break; sleep 0.1; done
head -1 "$STATE/traind.log"
DASHBOARD=$(sed -n 's/.*dashboard and HTTP API on //p' "$STATE/traind.log")
echo "== watch it in a browser: $DASHBOARD"
export TRAINCTL_SERVER=127.0.0.1:$(cat "$STATE/port")
ctl=build/client/trainctl

scratch=$($ctl submit --kind=scratch --dataset="$NAME" --epochs="$SCRATCH_EPOCHS" \
  --image_size="$IMAGE_SIZE" --output=json | sed -E 's/.*"job_id":"([^"]+)".*/\1/')
echo "== scratch baseline $scratch: ${DASHBOARD}#/job/$scratch"
$ctl watch "$scratch"
finetune=$($ctl submit --kind=finetune --from-job="$scratch" --dataset="$NAME" \
  --epochs="$FINETUNE_EPOCHS" --image_size="$IMAGE_SIZE" --output=json |
  sed -E 's/.*"job_id":"([^"]+)".*/\1/')
echo "== fine-tune $finetune (from $scratch's weights): ${DASHBOARD}#/job/$finetune"
$ctl watch "$finetune"
$ctl list
$ctl report "$finetune"
$ctl weights "$finetune" -o "$STATE/$finetune.pth"
$ctl weights "$finetune" -o "$STATE/$finetune.safetensors" --format=safetensors
if [[ -t 0 ]]; then
  echo "== traind keeps serving the dashboard at $DASHBOARD; Ctrl-C stops it"
  wait $TRAIND_PID || true
fi
