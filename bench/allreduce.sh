#!/usr/bin/env bash
# Allreduce of ResNet-18's gradient between two ranks, as traind's ranks do it
# (c10d Gloo, one reused flat buffer). Two local processes on loopback, then
# (as root, where network namespaces can be made) one rank in each of two
# network namespaces joined by a veth pair: two "hosts" on one machine.
#   bench/allreduce.sh [ITERATIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-build/bench/allreduce_bench}
N=${1:-20}
PORT=$((20000 + RANDOM % 20000))

echo "== two local processes (loopback)"
RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$PORT "$BIN" "$N" &
one=$!
RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$PORT "$BIN" "$N"
wait $one

A=traind-bench-a-$$
B=traind-bench-b-$$
if ! ip netns add "$A" 2>/dev/null; then
  echo "== two network namespaces: skipped (cannot create network namespaces here: not root?)"
  exit 0
fi
cleanup() { ip netns del "$A" 2>/dev/null || true; ip netns del "$B" 2>/dev/null || true; }
trap cleanup EXIT
ip netns add "$B"
ip link add "va$$" netns "$A" type veth peer name "vb$$" netns "$B"
ip -n "$A" addr add 10.231.0.1/24 dev "va$$"
ip -n "$B" addr add 10.231.0.2/24 dev "vb$$"
for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
ip -n "$A" link set "va$$" up
ip -n "$B" link set "vb$$" up
echo "== two network namespaces joined by a veth pair (10.231.0.1 <-> 10.231.0.2)"
ip netns exec "$B" env RANK=1 WORLD_SIZE=2 MASTER_ADDR=10.231.0.1 MASTER_PORT=$PORT \
  TRAIND_RANK_ADDR=10.231.0.2 "$BIN" "$N" &
one=$!
ip netns exec "$A" env RANK=0 WORLD_SIZE=2 MASTER_ADDR=10.231.0.1 MASTER_PORT=$PORT \
  TRAIND_RANK_ADDR=10.231.0.1 "$BIN" "$N"
wait $one
