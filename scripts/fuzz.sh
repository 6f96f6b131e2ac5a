#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (address and undefined-behaviour
# sanitizers) and runs each for a bounded time from the kept corpus
# (tests/fuzz/corpus/<target>, which includes every input that ever found a
# bug). Fails on any crash, leak or sanitizer report, keeping the input
# under build-fuzz/artifacts/.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET=30]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
cmake -S . -B build-fuzz -DTRAIND_FUZZ=ON -DTRAIND_WERROR=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ > build-fuzz.log 2>&1 ||
  { tail -20 build-fuzz.log; exit 1; }
cmake --build build-fuzz -j2 >> build-fuzz.log 2>&1 || { tail -40 build-fuzz.log; exit 1; }
mkdir -p build-fuzz/artifacts
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1
for t in spec weights image; do
  work=build-fuzz/corpus/$t
  mkdir -p "$work"
  out=$(build-fuzz/tests/fuzz/${t}_fuzzer -max_total_time="$seconds" -timeout=20 \
        -rss_limit_mb=4096 -max_len=65536 -artifact_prefix=build-fuzz/artifacts/${t}- \
        "$work" tests/fuzz/corpus/$t 2>&1) || { echo "$out" | tail -40; echo "fuzz: ${t}_fuzzer failed"; exit 1; }
  echo "fuzz: ${t}_fuzzer: $(echo "$out" | grep -E '^Done [0-9]+ runs' | tail -1)"
done
