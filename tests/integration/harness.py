"""Helpers for tests that drive the real traind and trainctl binaries."""
import json
import os
import shutil
import signal
import struct
import subprocess
import tempfile

TRAIND = os.environ.get("TRAIND", "../../build/server/traind")
TRAINCTL = os.environ.get("TRAINCTL", "../../build/client/trainctl")
ENGINE_GOLDEN = os.environ.get("ENGINE_GOLDEN", "../../build/tests/engine_golden")
SHARED = os.environ.get("TRAIND_SHARED", os.path.join(os.path.dirname(__file__), "../../../shared"))
CALTECH = os.path.join(SHARED, "data/caltech101/101_ObjectCategories")


def make_subset(dest, classes=("accordion", "anchor", "barrel", "camera"), per_class=10):
    """Copies the first images of a few Caltech-101 classes into dest.

    Falls back to trainctl's generated demo data when ../shared is not there
    (a user's machine); CI has it."""
    if os.path.isdir(CALTECH):
        for cls in classes:
            src = os.path.join(CALTECH, cls)
            os.makedirs(os.path.join(dest, cls))
            for name in sorted(os.listdir(src))[:per_class]:
                shutil.copy(os.path.join(src, name), os.path.join(dest, cls, name))
        return "caltech101"
    subprocess.run([TRAINCTL, "demo-data", dest, f"--per_class={per_class}",
                    f"--classes={len(classes)}"], check=True, capture_output=True)
    return "demo"


class Daemon:
    """A traind process on 127.0.0.1 with its own state directory."""

    def __init__(self, state_dir, data_root, weights_root, listen="127.0.0.1:0", extra=()):
        self.state_dir, self.data_root, self.weights_root = state_dir, data_root, weights_root
        self.listen = listen
        self.extra = list(extra)
        self.proc = None
        self.port = None

    def start(self):
        cmd = [TRAIND, f"--listen={self.listen}", f"--state-dir={self.state_dir}",
               f"--data-root={self.data_root}", f"--weights-root={self.weights_root}",
               "--threads-per-job=2"] + self.extra
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, preexec_fn=getattr(self, "preexec", None))
        # The startup lines name the addresses actually bound.
        def wants(*names):
            return any(a.startswith(tuple(f"--{n}" for n in names)) for a in self.extra)
        waiting = {"serving"}
        if wants("metrics_listen", "metrics-listen"):
            waiting.add("metrics")
        if wants("http_listen", "http-listen"):
            waiting.add("http")
        for line in self.proc.stdout:
            if "serving on" in line:
                self.port = int(line.split("serving on ")[1].split()[0].rsplit(":", 1)[1])
                waiting.discard("serving")
            if "metrics on http://" in line:
                self.metrics_url = line.split("metrics on ")[1].strip()
                waiting.discard("metrics")
            if "dashboard and HTTP API on " in line:
                self.http_url = line.split("HTTP API on ")[1].strip().rstrip("/")
                waiting.discard("http")
            if not waiting:
                return self
        raise RuntimeError(f"traind did not start: exit {self.proc.wait()}")

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            rc = self.proc.wait(timeout=timeout)
            self.proc.stdout.close()
            return rc
        return self.proc.returncode if self.proc else None

    def trainctl(self, *args, check=True):
        env = dict(os.environ, TRAINCTL_SERVER=self.address)
        p = subprocess.run([TRAINCTL, *args], capture_output=True, text=True, env=env,
                           timeout=900)
        if check and p.returncode != 0:
            raise AssertionError(f"trainctl {' '.join(args)} failed ({p.returncode}): {p.stderr}")
        return p

    def trainctl_json(self, *args, check=True):
        p = self.trainctl("--output=json", *args, check=check)
        return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]

    def submit(self, *args):
        return self.trainctl_json("submit", *args)[0]["job_id"]

    def watch(self, job, after=0):
        p = self.trainctl("--output=json", "watch", job, f"--after={after}", check=False)
        return [json.loads(l) for l in p.stdout.splitlines() if l.strip()], p

    def status(self, job):
        return self.trainctl_json("status", job)[0]

    def watch_until(self, job, predicate):
        """Starts `trainctl watch` and reads events until one satisfies
        predicate; returns the running watcher and the events so far."""
        env = dict(os.environ, TRAINCTL_SERVER=self.address)
        watcher = subprocess.Popen([TRAINCTL, "--output=json", "watch", job],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   text=True, env=env)
        events = []
        for line in watcher.stdout:
            events.append(json.loads(line))
            if predicate(events[-1]):
                break
        return watcher, events

    @staticmethod
    def finish_watch(watcher, events):
        """Reads a watch_until watcher to its end."""
        for line in watcher.stdout:
            events.append(json.loads(line))
        watcher.wait(timeout=300)
        watcher.stdout.close()
        return events


def of_kind(events, kind):
    """The payloads of the events of one kind ("batch", "state", ...)."""
    return [e[kind] for e in events if kind in e]


def read_until_paused(test, watcher, events):
    """Reads a watch_until watcher up to the PAUSED state event, which must
    say the job checkpointed first."""
    for line in watcher.stdout:
        events.append(json.loads(line))
        if events[-1].get("state", {}).get("state") == "PAUSED":
            break
    test.assertIn("checkpointed", events[-1]["state"]["reason"])


def assert_resumed_in_a_new_cluster_job(test, events, prefix, marker):
    """A paused and resumed cluster job's whole watch: gapless events,
    PAUSED then QUEUED, RUNNING again and SUCCEEDED, and two cluster jobs
    started (log lines "<prefix><name> ...<marker>...": one per attempt)."""
    test.assertEqual([int(e["seq"]) for e in events], list(range(1, len(events) + 1)))
    names = [s["state"] for s in of_kind(events, "state")]
    at = names.index("PAUSED")
    test.assertEqual((names[at + 1], names[-1]), ("QUEUED", "SUCCEEDED"), names)
    test.assertIn("RUNNING", names[at:])
    started = {l["text"][len(prefix):].split()[0] for l in of_kind(events, "log")
               if l["text"].startswith(prefix) and marker in l["text"]}
    test.assertEqual(len(started), 2, started)


def write_safetensors(tensors, path):
    import torch  # noqa: F401
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.contiguous()
        data = t.numpy().tobytes()
        header[name] = {"dtype": {"torch.float32": "F32", "torch.int64": "I64"}[str(t.dtype)],
                        "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_safetensors(path):
    import torch
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        dtype = {"F32": torch.float32, "I64": torch.int64}[info["dtype"]]
        buf = bytearray(raw[8 + n + b:8 + n + e])
        out[name] = torch.frombuffer(buf, dtype=dtype).reshape(info["shape"]).clone() \
            if e > b else torch.zeros(info["shape"], dtype=dtype)
    return out


# How many times float32's own error a gradient may be and still count as
# within rounding of zero (adam_first_step_gaps).
ROUNDING_NOISE = 10


def adam_first_step_gaps(got, want, grad, exact):
    """How far one Adam step of a parameter (got) is from the reference's
    (want, whose float32 gradient was grad; exact: the same gradient in
    float64): the largest difference where the gradient is clear of zero,
    and where it is within rounding of zero (0.0 where there is none).
    Within rounding of zero: exact is at most ROUNDING_NOISE times the
    largest error of grad (against exact) over the tensor.

    Adam's first step moves a weight by about the learning rate whatever its
    gradient's size, so where the gradient is within rounding of zero, the
    last bits of a convolution's sums (traind's Winograd kernels round
    differently from LibTorch's direct ones: winograd_conv.h) may flip the
    step's sign: there the weights may be up to twice the learning rate
    apart, and elsewhere they agree to rounding."""
    near_zero = exact.abs() <= ROUNDING_NOISE * (grad.double() - exact).abs().max()
    diff = (got.double() - want.double()).abs()
    clear = diff[~near_zero].max().item() if (~near_zero).any() else 0.0
    rounding = diff[near_zero].max().item() if near_zero.any() else 0.0
    return clear, rounding


def temp_root(prefix):
    return tempfile.mkdtemp(prefix=prefix)


DEPLOY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../deploy")


def add_token(tokens, user, role=""):
    """A new token for `user` in the tokens file, made by deploy/add-token.sh."""
    out = subprocess.run([os.path.join(DEPLOY, "add-token.sh"), tokens, user] +
                         ([role] if role else []), check=True, capture_output=True, text=True)
    return out.stdout.strip()


def make_certs(folder):
    """A CA, server and client certificates, made by deploy/make-certs.sh."""
    subprocess.run([os.path.join(DEPLOY, "make-certs.sh"), folder], check=True,
                   capture_output=True)


def start_with_users(test_class, prefix, users, extra=()):
    """For a test class: a temp root with a Caltech subset, a tokens file
    with `users` ({name: "" or "admin"}), and a traind serving them. Sets
    root, data, tokens_file, tokens ({name: token}) and d on the class."""
    cls = test_class
    cls.root = temp_root(prefix)
    cls.data = os.path.join(cls.root, "data")
    os.makedirs(os.path.join(cls.root, "w"))
    make_subset(os.path.join(cls.data, "subset"))
    cls.tokens_file = os.path.join(cls.root, "tokens")
    cls.tokens = {name: add_token(cls.tokens_file, name, role) for name, role in users.items()}
    cls.d = Daemon(os.path.join(cls.root, "state"), cls.data, os.path.join(cls.root, "w"),
                   extra=[f"--tokens-file={cls.tokens_file}", *extra]).start()
