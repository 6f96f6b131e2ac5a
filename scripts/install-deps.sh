#!/usr/bin/env bash
# Installs what traind needs to build and test, from Debian 12 packages.
set -euo pipefail
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends \
  build-essential cmake ccache pkg-config \
  libtorch-dev libopencv-dev \
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler \
  libabsl-dev libgtest-dev libgmock-dev libsqlite3-dev libssl-dev nlohmann-json3-dev \
  libopenblas0-openmp libcpp-httplib-dev openssl clang libclang-rt-14-dev \
  python3 python3-torch python3-torchvision python3-numpy python3-crc32c \
  python3-grpcio python3-protobuf \
  libgloo-dev iproute2 slurmctld slurmd slurm-client munge nodejs \
  libjs-chart.js chromium chromium-driver python3-selenium fonts-dejavu-core \
  python3-venv python3-pip python3-setuptools python3-wheel

# The official Kubernetes schemas (kubernetes-models, from the npm registry)
# that tests/integration/kube_test.py validates traind's objects against.
# kubectl renders deploy/k8s (kustomize) in the Kubernetes test; offline, no cluster.
if ! command -v kubectl >/dev/null; then
  $SUDO apt-get install -y -q --no-install-recommends kubernetes-client
fi
if ! command -v npm >/dev/null; then $SUDO apt-get install -y -q --no-install-recommends npm; fi
npm install --prefix "$(dirname "$0")/../tests/k8s" --no-audit --no-fund --silent
