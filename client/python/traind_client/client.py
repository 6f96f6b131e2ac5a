"""A small Python API over traind's gRPC service (trainer.v1.TrainingService).

    from traind_client import Client
    c = Client("127.0.0.1:50051")                 # or token=..., tls_ca=...
    job = c.submit(dataset="caltech101", kind="FINETUNE", epochs=3,
                   pretrained_file="resnet18-f37072fd.pth")
    for event in job.watch():                     # resumes after its last seq
        if event.HasField("epoch"):
            print(event.epoch.epoch, event.epoch.validation_accuracy)
    job.wait()
    model = torchvision.models.resnet18(num_classes=job.get().num_classes)
    model.load_state_dict(job.state_dict())

Errors are TraindError with the gRPC code's name and the server's message.
"""
import hashlib
import os
import time

import grpc
from google.protobuf import json_format

from . import training_service_pb2 as pb
from . import training_service_pb2_grpc as pb_grpc

ENDED = (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED)
# Codes after which a stream is resumed from its last sequence number.
_RESUMABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class TraindError(Exception):
    """A call that failed: `code` is the gRPC code's name ("NOT_FOUND", ...)."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_rpc(cls, err):
        return cls(err.code().name, err.details())


def _format(name):
    value = pb.WeightsFormat.Value(str(name).upper())
    return value or pb.PTH


class Client:
    """A connection to one traind. Arguments default to trainctl's
    environment: $TRAINCTL_SERVER, $TRAINCTL_TOKEN, $TRAINCTL_TLS_CA,
    $TRAINCTL_TLS_CERT and $TRAINCTL_TLS_KEY (a client certificate for mutual
    TLS). A server given as https://host:port, or with tls_ca, uses TLS."""

    def __init__(self, server=None, token=None, tls_ca=None, tls_cert=None, tls_key=None,
                 timeout=60.0):
        env = os.environ.get
        server = server or env("TRAINCTL_SERVER") or "127.0.0.1:50051"
        self.token = token if token is not None else env("TRAINCTL_TOKEN")
        tls_ca = tls_ca or env("TRAINCTL_TLS_CA")
        tls_cert = tls_cert or env("TRAINCTL_TLS_CERT")
        tls_key = tls_key or env("TRAINCTL_TLS_KEY")
        self.timeout = timeout
        tls = bool(tls_ca) or server.startswith("https://")
        target = server.split("://", 1)[-1]
        options = [("grpc.max_receive_message_length", 64 << 20),
                   ("grpc.max_send_message_length", 64 << 20)]
        if tls:
            def read(path):
                with open(path, "rb") as f:
                    return f.read()
            creds = grpc.ssl_channel_credentials(
                root_certificates=read(tls_ca) if tls_ca else None,
                private_key=read(tls_key) if tls_key else None,
                certificate_chain=read(tls_cert) if tls_cert else None)
            self.channel = grpc.secure_channel(target, creds, options)
        else:
            self.channel = grpc.insecure_channel(target, options)
        self.stub = pb_grpc.TrainingServiceStub(self.channel)

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _metadata(self):
        return [("authorization", f"Bearer {self.token}")] if self.token else None

    def call(self, method, request, timeout=None):
        """One unary call; TraindError on failure."""
        try:
            return getattr(self.stub, method)(request, metadata=self._metadata(),
                                              timeout=timeout or self.timeout)
        except grpc.RpcError as err:
            raise TraindError.from_rpc(err) from None

    def stream(self, method, request):
        try:
            yield from getattr(self.stub, method)(request, metadata=self._metadata())
        except grpc.RpcError as err:
            raise TraindError.from_rpc(err) from None

    def submit(self, spec=None, request_id="", **fields):
        """Submits a job: a JobSpec, a dict in its JSON mapping, or its fields
        as keyword arguments (snake_case or camelCase; enums by name; nested
        messages as dicts), e.g. submit(dataset="flowers", kind="SCRATCH",
        epochs=5, augmentation={"hflip": True})."""
        if spec is None:
            spec = dict(fields)
        elif fields:
            raise TypeError("give a spec or keyword fields, not both")
        if isinstance(spec, dict):
            try:
                spec = json_format.ParseDict(spec, pb.JobSpec())
            except json_format.ParseError as err:
                raise TraindError("INVALID_ARGUMENT", f"spec: {err}") from None
        reply = self.call("SubmitJob", pb.SubmitJobRequest(spec=spec, request_id=request_id))
        return Job(self, reply.job_id)

    def job(self, job_id):
        """A handle on an existing job (not checked until used)."""
        return Job(self, job_id)

    def list_jobs(self, states=(), full=False):
        """Every job the caller may see, oldest first (all pages), as Job
        messages; `states` filters by state names or values."""
        states = [pb.JobState.Value(s) if isinstance(s, str) else s for s in states]
        jobs, token = [], ""
        while True:
            page = self.call("ListJobs", pb.ListJobsRequest(
                page_size=1000, page_token=token, states=states,
                view=pb.FULL if full else pb.BASIC))
            jobs.extend(page.jobs)
            token = page.next_page_token
            if not token:
                return jobs


class Job:
    """One job on the server, by id."""

    def __init__(self, client, job_id):
        self.client = client
        self.id = job_id

    def __repr__(self):
        return f"Job({self.id!r})"

    def get(self):
        """The job as the server knows it now (a trainer.v1.Job)."""
        return self.client.call("GetJob", pb.GetJobRequest(job_id=self.id)).job

    @property
    def state(self):
        return pb.JobState.Name(self.get().state)

    def watch(self, after_seq=0, reconnect_seconds=1.0):
        """The job's events (trainer.v1.JobEvent) after `after_seq`, until the
        job ends. A stream that breaks (daemon restart, the server's stream
        time limit) is resumed after the last event seen: nothing is missed
        or given twice."""
        seq = after_seq
        while True:
            try:
                for reply in self.client.stub.StreamMetrics(
                        pb.StreamMetricsRequest(job_id=self.id, after_seq=seq),
                        metadata=self.client._metadata()):
                    seq = reply.event.seq
                    yield reply.event
                return
            except grpc.RpcError as err:
                if err.code() not in _RESUMABLE:
                    raise TraindError.from_rpc(err) from None
                time.sleep(reconnect_seconds)

    def wait(self, timeout=None):
        """Waits until the job ends; returns the final Job message.
        TimeoutError after `timeout` seconds (a PAUSED job waits for its
        resume)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get()
            if job.state in ENDED:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{self.id} is still {pb.JobState.Name(job.state)}")
            time.sleep(0.5)

    def cancel(self):
        return self.client.call("CancelJob", pb.CancelJobRequest(job_id=self.id)).job

    def pause(self):
        """Stops the job at a checkpoint and holds it PAUSED, freeing its
        slots (a running job: at its next batch boundary). The Job message."""
        return self.client.call("PauseJob", pb.PauseJobRequest(job_id=self.id)).job

    def resume(self):
        """Queues a PAUSED job again; it continues from its checkpoint."""
        return self.client.call("ResumeJob", pb.ResumeJobRequest(job_id=self.id)).job

    def set_priority(self, priority):
        """Changes the priority ("LOW", "NORMAL", "HIGH", "URGENT", any case,
        or pb.Priority values) of a job that has not ended."""
        if isinstance(priority, str):
            try:
                priority = pb.Priority.Value(priority.upper())
            except ValueError:
                raise TraindError("INVALID_ARGUMENT",
                                  f"priority: {priority!r} is not LOW, NORMAL, HIGH or URGENT") from None
        return self.client.call(
            "SetJobPriority", pb.SetJobPriorityRequest(job_id=self.id, priority=priority)).job

    def delete(self):
        """Removes a finished job; returns the bytes freed."""
        return self.client.call("DeleteJob", pb.DeleteJobRequest(job_id=self.id)).freed_bytes

    def report(self):
        """The evaluation of a SUCCEEDED job on its validation split."""
        job = self.get()
        if not job.HasField("evaluation"):
            raise TraindError("FAILED_PRECONDITION",
                              f"{self.id} has no evaluation (it is {pb.JobState.Name(job.state)})")
        return job.evaluation

    def weights(self, path, format="pth", trial=0):
        """Downloads the final weights to `path`. An interrupted download
        leaves `path`.part and the next call continues it; the whole file's
        SHA-256 is checked before it is renamed to `path`. Returns `path`."""
        part = f"{path}.part"
        offset = os.path.getsize(part) if os.path.exists(part) else 0
        request = pb.GetWeightsRequest(job_id=self.id, format=_format(format), trial=trial,
                                       offset=offset)
        header = None
        try:
            with open(part, "ab") as out:
                for reply in self.client.stream("GetWeights", request):
                    if reply.HasField("header"):
                        header = reply.header
                        continue
                    if reply.offset != out.tell():
                        raise TraindError("DATA_LOSS", f"chunk at {reply.offset}, expected {out.tell()}")
                    out.write(reply.chunk)
        except TraindError as err:
            if err.code == "INVALID_ARGUMENT" and offset:  # the part outgrew the file
                os.remove(part)
            raise
        digest = hashlib.sha256()
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if header is None or digest.hexdigest() != header.sha256:
            os.remove(part)
            raise TraindError("DATA_LOSS", f"{path}: SHA-256 {digest.hexdigest()} does not match "
                              f"the server's {header.sha256 if header else '(none)'}; removed, "
                              "download again")
        os.replace(part, path)
        return path

    def state_dict(self, trial=0):
        """The final weights as a state_dict of torch tensors, ready for
        torchvision.models.resnet18(num_classes=...).load_state_dict().
        Read from the safetensors download: data only, nothing in the file
        is executed (unlike unpickling a .pth)."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = self.weights(os.path.join(tmp, f"{self.id}.safetensors"), "safetensors", trial)
            return load_safetensors(path)

    def classify(self, images, top_k=5, trial=0):
        """Classifies images (paths or encoded bytes) with the final weights;
        per image, a list of (class_name, probability), most probable first."""
        data = []
        for image in images:
            if isinstance(image, (bytes, bytearray)):
                data.append(bytes(image))
            else:
                with open(image, "rb") as f:
                    data.append(f.read())
        reply = self.client.call("Classify", pb.ClassifyRequest(
            job_id=self.id, images=data, top_k=top_k, trial=trial))
        return [[(p.class_name, p.probability) for p in r.predictions] for r in reply.results]


def load_safetensors(path):
    """A safetensors file as {name: torch.Tensor} (the `safetensors`
    package when installed, else this reader of its documented layout: a
    little-endian u64 header length, a JSON header, then the raw data)."""
    import json
    import struct

    import torch
    try:
        from safetensors.torch import load_file
        return load_file(path)
    except ImportError:
        pass
    dtypes = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16,
              "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
              "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    data = bytearray(blob[8 + n:])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = dtypes[info["dtype"]]
        if end == start:
            out[name] = torch.empty(info["shape"], dtype=dtype)
        else:
            out[name] = torch.frombuffer(data, dtype=dtype, count=(end - start) // torch.empty(
                (), dtype=dtype).element_size(), offset=start).reshape(info["shape"]).clone()
    return out
