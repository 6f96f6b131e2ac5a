#!/usr/bin/env bash
# Installs Debian 12 packages: by default what building and running traind
# and trainctl needs (scripts/demo.sh); with --test, also what the test suite
# adds (GoogleTest, clang, torchvision, Slurm, Chromium, kubectl, buf, npm
# packages).
#
#   scripts/install-deps.sh           # build + run
#   scripts/install-deps.sh --test    # build + run + tests
set -euo pipefail
TEST=0
case "${1:-}" in
  "") ;;
  --test) TEST=1 ;;
  *) echo "usage: $0 [--test]" >&2; exit 2 ;;
esac
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

# Building traind and trainctl, and what the binaries load.
BUILD=(
  build-essential cmake ccache pkg-config
  libtorch-dev libgloo-dev libopenblas0-openmp libdnnl-dev
  libopencv-core-dev libopencv-imgproc-dev libopencv-imgcodecs-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libsqlite3-dev libssl-dev openssl nlohmann-json3-dev libcpp-httplib-dev
  libjs-chart.js
)
# The tests: unit tests, clang's thread-safety build and fuzzers, golden
# tests against torchvision, the Python client, distributed runs in network
# namespaces, a real Slurm, headless Chromium, Kubernetes schemas.
TESTS=(
  libgtest-dev libgmock-dev clang libclang-rt-14-dev
  python3 python3-torch python3-torchvision python3-numpy python3-crc32c python3-yaml
  python3-grpcio python3-protobuf python3-venv python3-pip python3-setuptools python3-wheel
  iproute2 slurmctld slurmd slurm-client munge
  chromium chromium-driver python3-selenium fonts-dejavu-core nodejs
)
PACKAGES=("${BUILD[@]}")
if [[ $TEST == 1 ]]; then PACKAGES+=("${TESTS[@]}"); fi
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"

if [[ $TEST == 1 ]]; then
  # kubectl and npm only where missing: a Node.js from elsewhere brings its
  # own npm, which Debian's npm package conflicts with.
  if ! command -v kubectl >/dev/null; then
    $SUDO apt-get install -y -q --no-install-recommends kubernetes-client
  fi
  if ! command -v npm >/dev/null; then
    $SUDO apt-get install -y -q --no-install-recommends npm
  fi
  # The official Kubernetes schemas (kubernetes-models, from the npm
  # registry) that tests/integration/kube_test.py validates traind's objects
  # against; kubectl renders deploy/k8s (kustomize) there. Offline, no cluster.
  npm install --prefix "$(dirname "$0")/../tests/k8s" --no-audit --no-fund --silent
  # buf, for the API's lint and breaking-change checks (scripts/proto-check.sh).
  npm install --prefix "$(dirname "$0")/../tests/proto" --no-audit --no-fund --silent
fi
