#!/usr/bin/env bash
# Builds the engine core and its synthetic benchmark against a CUDA LibTorch
# (no gRPC, SQLite, OpenCV or Abseil needed) and times training and
# evaluation steps on the GPU in FP32 and with bfloat16 autocast. Runs in
# well under five minutes on one H100.
#
#   bench/gpu_check.sh                 # LibTorch from the Python torch on PATH
#   TORCH_PREFIX=/opt/libtorch bench/gpu_check.sh
#
# Needs cmake, a C++17 compiler, and a LibTorch built with CUDA (a pip
# `torch` wheel works; its CMake config also wants the CUDA toolkit headers).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-/tmp/traind-gpu-build}
PY=${PYTHON:-python3}

if [[ -z "${TORCH_PREFIX:-}" ]]; then
  TORCH_PREFIX=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)') || {
    echo "gpu_check: no TORCH_PREFIX and '$PY' cannot import torch" >&2
    exit 1
  }
fi
echo "== LibTorch from $TORCH_PREFIX"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

cmake -S . -B "$BUILD" -DTRAIND_ENGINE_ONLY=ON -DTRAIND_WERROR=OFF \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" > "$BUILD.configure.log" 2>&1 || {
  tail -30 "$BUILD.configure.log" >&2
  echo "gpu_check: cmake configure failed (full log: $BUILD.configure.log)" >&2
  exit 1
}
cmake --build "$BUILD" --target engine_bench -j"$(nproc)"

BENCH="$BUILD/bench/engine_bench"
run() { echo "== $*"; timeout 120 "$BENCH" --device cuda "$@"; }
# The recipe's shape (128 px, batch 32), a GPU-sized batch, and 224 px.
run --image_size 128 --batch 32 --steps 30
run --image_size 128 --batch 256 --steps 20
run --image_size 224 --batch 128 --steps 20
