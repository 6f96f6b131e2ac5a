"""A second, independent client of traind: Python grpcio with messages that
protoc generates from the project's .proto at test time (no generated code is
committed). Tests use it where trainctl cannot go: several users' calls on one
connection, raw metadata, the health service."""
import atexit
import glob
import importlib
import os
import shutil
import subprocess
import sys
import tempfile

import grpc

PROTO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../proto")
SERVICE = "/trainer.v1.TrainingService/"
STREAMING = {"StreamMetrics", "GetWeights"}


def load_messages():
    """Generates and imports trainer/v1/training_service_pb2."""
    out = tempfile.mkdtemp(prefix="traind-pb2-")
    atexit.register(shutil.rmtree, out, True)
    protos = glob.glob(os.path.join(PROTO_DIR, "trainer/v1/*.proto"))
    subprocess.run(["protoc", f"--proto_path={PROTO_DIR}", f"--python_out={out}", *protos],
                   check=True)
    for d in ("trainer", "trainer/v1"):
        open(os.path.join(out, d, "__init__.py"), "a").close()
    sys.path.insert(0, out)
    return importlib.import_module("trainer.v1.training_service_pb2")


pb = load_messages()


def load_ranks_messages():
    """Generates and imports traind/internal/v1/ranks_pb2 (the control link)."""
    out = tempfile.mkdtemp(prefix="traind-ranks-pb2-")
    atexit.register(shutil.rmtree, out, True)
    protos = glob.glob(os.path.join(PROTO_DIR, "traind/internal/v1/*.proto"))
    subprocess.run(["protoc", f"--proto_path={PROTO_DIR}", f"--python_out={out}", *protos],
                   check=True)
    for d in ("traind", "traind/internal", "traind/internal/v1"):
        open(os.path.join(out, d, "__init__.py"), "a").close()
    sys.path.insert(0, out)
    return importlib.import_module("traind.internal.v1.ranks_pb2")


class Client:
    """Calls TrainingService methods over one channel, each call with its own
    metadata (for example another user's bearer token)."""

    def __init__(self, channel):
        self.channel = channel

    def call(self, method, request, token=None, timeout=60):
        """Returns (status code, response or list of responses, details)."""
        response_type = getattr(pb, method + "Response")
        md = [("authorization", f"Bearer {token}")] if token else None
        path = SERVICE + method
        if method in STREAMING:
            stub = self.channel.unary_stream(path, request_serializer=lambda m: m.SerializeToString(),
                                             response_deserializer=response_type.FromString)
            try:
                return grpc.StatusCode.OK, list(stub(request, metadata=md, timeout=timeout)), ""
            except grpc.RpcError as e:
                return e.code(), None, e.details()
        stub = self.channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=response_type.FromString)
        try:
            return grpc.StatusCode.OK, stub(request, metadata=md, timeout=timeout), ""
        except grpc.RpcError as e:
            return e.code(), None, e.details()

    def health(self, service="", token=None):
        """grpc.health.v1.Health/Check, hand-encoded: the request carries the
        service name in field 1; the response's field 1 is the status
        (1 = SERVING, 2 = NOT_SERVING)."""
        encoded = service.encode()
        request = (b"\x0a" + bytes([len(encoded)]) + encoded) if service else b""
        stub = self.channel.unary_unary("/grpc.health.v1.Health/Check",
                                        request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
        md = [("authorization", f"Bearer {token}")] if token else None
        try:
            raw = stub(request, metadata=md, timeout=10)
        except grpc.RpcError as e:
            return e.code(), None
        status = raw[1] if len(raw) >= 2 and raw[0] == 0x08 else 0
        return grpc.StatusCode.OK, status
