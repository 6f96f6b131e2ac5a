#!/usr/bin/env bash
# Regenerates the Python stubs of trainer.v1 from proto/ (Debian's protoc and
# grpc_python_plugin). The stubs are committed so that `pip install` needs
# neither; tests/integration/python_client_test.py checks they are current.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$here/traind_client}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
protoc -I "$root/proto" --python_out="$tmp" --grpc_python_out="$tmp" \
  --plugin=protoc-gen-grpc_python="$(command -v grpc_python_plugin)" \
  "$root/proto/trainer/v1/training_service.proto"
# The package's own modules import each other relatively.
sed 's/^from trainer\.v1 import training_service_pb2/from . import training_service_pb2/' \
  "$tmp/trainer/v1/training_service_pb2_grpc.py" > "$out/training_service_pb2_grpc.py"
cp "$tmp/trainer/v1/training_service_pb2.py" "$out/training_service_pb2.py"
