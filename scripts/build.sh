#!/usr/bin/env bash
# Configures and builds in build/: everything (traind, trainctl, the tests
# and the benchmarks), or only the targets named.
#
#   scripts/build.sh                   # all, with debug info (RelWithDebInfo)
#   scripts/build.sh traind trainctl   # what scripts/demo.sh needs
#
# BUILD_TYPE=Release builds the same optimised code without debug info, a
# fifth less compile time: what scripts/demo.sh does. (CMake's Release is
# -O3; here it stays at -O2, the level everything is measured at.)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo}
cmake -S . -B build -DCMAKE_BUILD_TYPE="$BUILD_TYPE" "-DCMAKE_CXX_FLAGS_RELEASE=-O2 -DNDEBUG" \
  > /dev/null
targets=()
for t in "$@"; do targets+=(--target "$t"); done
cmake --build build -j "$(nproc)" "${targets[@]}"
