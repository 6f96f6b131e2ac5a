"""traind's Python client: submit, watch and fetch training jobs over gRPC."""
from . import training_service_pb2 as pb
from .client import ENDED, Client, Job, TraindError

__all__ = ["Client", "Job", "TraindError", "ENDED", "pb"]
__version__ = "0.1.0"
