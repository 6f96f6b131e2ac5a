#!/usr/bin/env bash
# From a fresh Debian 12 machine to trained weights: installs packages, builds,
# starts traind with its embedded defaults, trains a scratch ResNet-18 and
# then fine-tunes from its weights, watching both, and downloads the result.
#
#   scripts/demo.sh                     # on a generated demo dataset
#   DATASET=/path/to/101_ObjectCategories EPOCHS=1 scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh

STATE=${STATE:-$PWD/demo-state}
EPOCHS=${EPOCHS:-2}
IMAGE_SIZE=${IMAGE_SIZE:-128}
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

build/server/traind --listen=127.0.0.1:0 --state-dir="$STATE" --data-root="$DATA_ROOT" \
  --port-file="$STATE/port" \
  > "$STATE/traind.log" 2>&1 &
TRAIND_PID=$!
trap 'kill $TRAIND_PID 2>/dev/null; wait $TRAIND_PID 2>/dev/null' EXIT
for _ in $(seq 100); do [[ -s $STATE/port ]] && break; sleep 0.1; done
head -1 "$STATE/traind.log"
export TRAINCTL_SERVER=127.0.0.1:$(cat "$STATE/port")
ctl=build/client/trainctl

scratch=$($ctl submit --kind=scratch --dataset="$NAME" --epochs="$EPOCHS" \
  --image_size="$IMAGE_SIZE" --output=json | sed -E 's/.*"job_id":"([^"]+)".*/\1/')
echo "== scratch baseline $scratch"
$ctl watch "$scratch"
finetune=$($ctl submit --kind=finetune --from-job="$scratch" --dataset="$NAME" \
  --epochs="$EPOCHS" --image_size="$IMAGE_SIZE" --output=json |
  sed -E 's/.*"job_id":"([^"]+)".*/\1/')
echo "== fine-tune $finetune (from $scratch's weights)"
$ctl watch "$finetune"
$ctl list
$ctl weights "$finetune" -o "$STATE/$finetune.pth"
$ctl weights "$finetune" -o "$STATE/$finetune.safetensors" --format=safetensors
