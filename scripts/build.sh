#!/usr/bin/env bash
# Configures and builds in build/: everything (traind, trainctl, the tests
# and the benchmarks), or only the targets named.
#
#   scripts/build.sh                   # all
#   scripts/build.sh traind trainctl   # what scripts/demo.sh needs
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
targets=()
for t in "$@"; do targets+=(--target "$t"); done
cmake --build build -j "$(nproc)" "${targets[@]}"
