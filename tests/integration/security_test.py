"""Safe to expose: TLS, mutual TLS, bearer tokens and job ownership, through
the real traind and trainctl. Certificates and tokens come from the deploy/
scripts a user runs for a first setup."""
import glob
import os
import shutil
import signal
import subprocess
import unittest

from harness import TRAINCTL, TRAIND, Daemon, add_token, make_certs, make_subset, temp_root

class SecurityTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = temp_root("traind-security-")
        cls.data = os.path.join(cls.root, "data")
        os.makedirs(os.path.join(cls.root, "w"))
        make_subset(os.path.join(cls.data, "subset"))
        cls.certs = os.path.join(cls.root, "certs")
        make_certs(cls.certs)
        cls.tokens_file = os.path.join(cls.root, "tokens")
        cls.tokens = {"alice": add_token(cls.tokens_file, "alice"),
                      "bob": add_token(cls.tokens_file, "bob"),
                      "root": add_token(cls.tokens_file, "root", "admin")}
        cls.d = Daemon(os.path.join(cls.root, "state"), cls.data, os.path.join(cls.root, "w"),
                       extra=[f"--tls-cert={cls.certs}/server.crt",
                              f"--tls-key={cls.certs}/server.key",
                              f"--tokens-file={cls.tokens_file}"]).start()
        cls.job = cls.ctl("alice", "--output=json", "submit", "--kind=scratch",
                          "--dataset=subset", "--epochs=1", "--image_size=32",
                          "--batch_size=8").stdout.split('"job_id":"')[1].split('"')[0]
        assert cls.ctl("alice", "watch", cls.job).returncode == 0

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()
        shutil.rmtree(cls.root, ignore_errors=True)

    @classmethod
    def ctl(cls, who, *args, address=None, ca=True, env_extra=None):
        env = dict(os.environ, TRAINCTL_SERVER=address or cls.d.address)
        env.pop("TRAINCTL_TOKEN", None)
        if ca:
            env["TRAINCTL_TLS_CA"] = f"{cls.certs}/ca.crt"
        if who == "bad":
            env["TRAINCTL_TOKEN"] = "0" * 64
        elif who in cls.tokens:
            env["TRAINCTL_TOKEN"] = cls.tokens[who]
        env.update(env_extra or {})
        return subprocess.run([TRAINCTL, *args], capture_output=True, text=True, env=env,
                              timeout=300)

    def test_every_rpc_for_every_kind_of_caller(self):
        image = sorted(glob.glob(os.path.join(self.data, "subset", "*", "*")))[0]
        out = os.path.join(self.root, "w.pth")
        rpcs = {
            "GetJob": ("status", self.job),
            "ListJobs": ("list",),
            "StreamMetrics": ("watch", self.job),
            "GetWeights": ("weights", self.job, "-o", out),
            "Classify": ("classify", self.job, image),
            "CancelJob": ("cancel", self.job),
            "SubmitJob": ("submit", "--kind=scratch", "--dataset=subset", "--epochs=1",
                          "--image_size=32"),
        }
        # Expected exit codes: 0 allowed, 2 refused by the server.
        want = {"none": 2, "bad": 2, "bob": 2, "alice": 0, "root": 0}
        matrix = []
        for rpc, args in rpcs.items():
            row = []
            for who, code in want.items():
                p = self.ctl(who, *args)
                expected = 0 if rpc in ("ListJobs", "SubmitJob") and who == "bob" else code
                self.assertEqual(p.returncode, expected, f"{rpc} as {who}: {p.stderr}")
                if who in ("none", "bad"):
                    self.assertIn("bearer token", p.stderr)  # UNAUTHENTICATED
                    self.assertNotIn(self.tokens["alice"], p.stderr)
                if who == "bob" and expected == 2:
                    self.assertIn(f'no job "{self.job}"', p.stderr)  # NOT_FOUND, not DENIED
                if rpc == "ListJobs" and p.returncode == 0:
                    self.assertEqual(self.job in p.stdout, who != "bob", who)
                if rpc == "SubmitJob" and p.returncode == 0:
                    new = p.stdout.split()[-1] if "job-" in p.stdout else ""
                    self.ctl(who, "cancel", new)
                row.append(f"{who}:{p.returncode}")
            matrix.append(f"{rpc:14} " + " ".join(row))
        # DeleteJob last: bob cannot see it, alice can delete it.
        p = self.ctl("bob", "delete", self.job)
        self.assertEqual(p.returncode, 2)
        self.assertIn("no job", p.stderr)
        self.assertEqual(self.ctl("none", "delete", self.job).returncode, 2)
        self.assertEqual(self.ctl("alice", "delete", self.job).returncode, 0)
        self.assertEqual(self.ctl("root", "status", self.job).returncode, 2)
        print("\n" + "\n".join(matrix))

    def test_distributed_ranks_use_the_tls_control_link(self):
        job = self.ctl("alice", "--output=json", "submit", "--kind=scratch", "--dataset=subset",
                       "--epochs=1", "--image_size=32", "--batch_size=8",
                       "--world_size=2").stdout.split('"job_id":"')[1].split('"')[0]
        watch = self.ctl("alice", "--output=json", "watch", job)
        self.assertEqual(watch.returncode, 0, watch.stdout[-2000:])
        self.assertIn("world size 2", watch.stdout)
        self.assertIn('"SUCCEEDED"', watch.stdout)
        # Bob does not see alice's distributed job.
        self.assertNotEqual(self.ctl("bob", "status", job).returncode, 0)

    def test_plaintext_to_the_tls_port_is_refused(self):
        p = self.ctl("alice", "list", ca=False)
        self.assertEqual(p.returncode, 3, p.stderr)

    def test_tokens_reload_on_sighup(self):
        carol = add_token(self.tokens_file, "carol")
        self.assertEqual(self.ctl("x", "list", env_extra={"TRAINCTL_TOKEN": carol}).returncode, 2)
        self.d.proc.send_signal(signal.SIGHUP)
        for _ in range(50):
            line = self.d.proc.stdout.readline()
            if "SIGHUP" in line:
                break
        self.assertIn("tokens reloaded", line)
        self.assertEqual(self.ctl("x", "list", env_extra={"TRAINCTL_TOKEN": carol}).returncode, 0)


class ExposureTest(unittest.TestCase):
    def setUp(self):
        self.root = temp_root("traind-exposure-")
        os.makedirs(os.path.join(self.root, "data"))
        os.makedirs(os.path.join(self.root, "w"))

    def tearDown(self):
        shutil.rmtree(self.root, ignore_errors=True)

    def traind(self, *extra):
        return subprocess.run([TRAIND, f"--state-dir={self.root}/state",
                               f"--data-root={self.root}/data", f"--weights-root={self.root}/w",
                               *extra], capture_output=True, text=True, timeout=60)

    def test_a_network_address_needs_tls_and_tokens(self):
        p = self.traind("--listen=0.0.0.0:0")
        self.assertEqual(p.returncode, 1)
        self.assertIn("refusing to serve 0.0.0.0:0 without TLS", p.stderr)

    def test_mutual_tls_refuses_clients_without_the_right_certificate(self):
        certs, other = os.path.join(self.root, "certs"), os.path.join(self.root, "other")
        make_certs(certs)
        make_certs(other)
        d = Daemon(os.path.join(self.root, "state"), os.path.join(self.root, "data"),
                   os.path.join(self.root, "w"),
                   extra=[f"--tls-cert={certs}/server.crt", f"--tls-key={certs}/server.key",
                          f"--tls-client-ca={certs}/ca.crt"]).start()
        try:
            def ctl(*tls):
                env = dict(os.environ, TRAINCTL_SERVER=d.address)
                return subprocess.run([TRAINCTL, *tls, "list"], capture_output=True, text=True,
                                      env=env, timeout=60)
            self.assertEqual(ctl(f"--tls-ca={certs}/ca.crt").returncode, 3)  # no client cert
            self.assertEqual(ctl(f"--tls-ca={certs}/ca.crt", f"--tls-cert={other}/client.crt",
                                 f"--tls-key={other}/client.key").returncode, 3)  # other CA
            self.assertEqual(ctl().returncode, 3)  # plaintext
            p = ctl(f"--tls-ca={certs}/ca.crt", f"--tls-cert={certs}/client.crt",
                    f"--tls-key={certs}/client.key")
            self.assertEqual(p.returncode, 0, p.stderr)
        finally:
            d.stop()

    def test_tokens_on_plaintext_loopback(self):
        tokens = os.path.join(self.root, "tokens")
        alice = add_token(tokens, "alice")
        d = Daemon(os.path.join(self.root, "state"), os.path.join(self.root, "data"),
                   os.path.join(self.root, "w"), extra=[f"--tokens-file={tokens}"]).start()
        try:
            env = dict(os.environ, TRAINCTL_SERVER=d.address)
            env.pop("TRAINCTL_TOKEN", None)
            p = subprocess.run([TRAINCTL, "list"], capture_output=True, text=True, env=env)
            self.assertEqual(p.returncode, 2)
            self.assertIn("bearer token", p.stderr)
            p = subprocess.run([TRAINCTL, f"--token={alice}", "list"], capture_output=True,
                               text=True, env=env)
            self.assertEqual(p.returncode, 0, p.stderr)
        finally:
            d.stop()


def h2_ping_flood(port, seconds=8):
    """A raw HTTP/2 client that sends nothing but PING frames; returns the
    GOAWAY (error code, debug data) the server answers with, or None."""
    import socket
    import struct
    import time

    def frame(kind, payload=b""):
        return struct.pack(">I", len(payload))[1:] + bytes([kind, 0]) + b"\0\0\0\0" + payload

    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4))  # preface + SETTINGS
    buf, sent, start = b"", 0, time.time()
    try:
        while time.time() - start < seconds:
            s.sendall(frame(6, struct.pack(">Q", sent)))  # PING
            sent += 1
            s.settimeout(0.05)
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                return None
            buf += chunk
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                n, kind = int.from_bytes(buf[:3], "big"), buf[3]
                payload, buf = buf[9:9 + n], buf[9 + n:]
                if kind == 7:  # GOAWAY
                    return struct.unpack(">I", payload[4:8])[0], payload[8:]
    except OSError:
        return None
    finally:
        s.close()
    return None


class HostileInputTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = temp_root("traind-hostile-")
        cls.data = os.path.join(cls.root, "data")
        os.makedirs(os.path.join(cls.root, "w"))
        make_subset(os.path.join(cls.data, "subset"))
        cls.d = Daemon(os.path.join(cls.root, "state"), cls.data, os.path.join(cls.root, "w"),
                       extra=["--max-queued-per-user=1", "--max-streams-per-user=1",
                              "--max-stream-seconds=2"]).start()

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()
        shutil.rmtree(cls.root, ignore_errors=True)

    def test_dataset_names_cannot_leave_the_data_root(self):
        os.symlink("/etc", os.path.join(self.data, "etc-link"))
        spec = os.path.join(self.root, "nul.json")
        with open(spec, "w") as f:
            f.write('{"kind": "SCRATCH", "dataset": "sub\\u0000set"}')
        for name in ("../../etc/passwd", "/etc/shadow", "a/../../x", "x" * 5000, "etc-link"):
            p = self.d.trainctl("submit", "--kind=scratch", f"--dataset={name}", check=False)
            self.assertEqual(p.returncode, 2, name[:40])
            self.assertIn("trainctl: submit: dataset", p.stderr)  # refused, field named
        p = self.d.trainctl("submit", "-f", spec, check=False)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("dataset", p.stderr)
        self.assertEqual(self.d.trainctl_json("list")[0].get("jobs", []), [])

    def test_hostile_images_are_skipped_with_warnings(self):
        hostile = os.path.join(self.data, "hostile")
        shutil.copytree(os.path.join(self.data, "subset"), hostile)
        cls_dir = os.path.join(hostile, sorted(os.listdir(hostile))[0])
        real = sorted(glob.glob(os.path.join(cls_dir, "*.jpg")))[0]
        with open(real, "rb") as f:
            head = f.read(600)
        with open(os.path.join(cls_dir, "truncated.jpg"), "wb") as f:
            f.write(head)
        # A PNG whose header claims 60000 x 60000 pixels.
        import struct
        import zlib
        ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
        chunk = lambda t, d: (struct.pack(">I", len(d)) + t + d +
                              struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF))
        with open(os.path.join(cls_dir, "huge.png"), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
                    chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
        open(os.path.join(cls_dir, "empty.jpg"), "wb").close()
        with open(os.path.join(cls_dir, "text.jpg"), "w") as f:
            f.write("this is not a picture\n")
        job = self.d.submit("--kind=scratch", "--dataset=hostile", "--epochs=1",
                            "--image_size=32", "--batch_size=8")
        events, p = self.d.watch(job)
        self.assertEqual(p.returncode, 0, p.stderr)
        warnings = " ".join(e["log"]["text"] for e in events
                            if e.get("log", {}).get("level") == "WARNING")
        for name in ("truncated.jpg", "huge.png", "empty.jpg", "text.jpg"):
            self.assertIn(name, warnings)
        # In traind's words, not OpenCV's internal assertion text.
        self.assertIn("huge.png: image larger than the 100-megapixel limit", warnings)
        self.assertNotIn("Assertion", warnings)
        self.assertNotIn("OpenCV(", warnings)

    def test_a_refused_start_leaves_nothing_behind(self):
        state = os.path.join(self.root, "refused-state")
        p = subprocess.run([TRAIND, "--listen=0.0.0.0:0", f"--state-dir={state}"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 1)
        self.assertIn("refusing to serve", p.stderr)
        self.assertFalse(os.path.exists(state), os.listdir(state) if os.path.exists(state) else "")

    def test_a_client_flooding_pings_is_sent_away(self):
        goaway = h2_ping_flood(self.d.port)
        # ENHANCE_YOUR_CALM (0xb), "too_many_pings"
        self.assertEqual(goaway, (11, b"too_many_pings"))
        self.assertEqual(self.d.trainctl("list").returncode, 0)  # others still served

    def test_streams_are_capped_and_watchers_resume(self):
        import time
        job = self.d.submit("--kind=scratch", "--dataset=subset", "--epochs=6",
                            "--image_size=64", "--batch_size=8")
        start = time.time()
        events, p = self.d.watch(job)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertGreater(time.time() - start, 2.5)  # outlived the 2 s stream cap
        seqs = [int(e["seq"]) for e in events]
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))
        self.assertEqual([e["state"]["state"] for e in events if "state" in e][-1], "SUCCEEDED")

    def test_limits_refuse_with_resource_exhausted(self):
        running = self.d.submit("--kind=scratch", "--dataset=subset", "--epochs=100",
                                "--image_size=32")
        waiting = self.d.submit("--kind=scratch", "--dataset=subset", "--epochs=1",
                                "--image_size=32")
        p = self.d.trainctl("submit", "--kind=scratch", "--dataset=subset", check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("already has 1 jobs waiting", p.stderr)
        # A 5 MiB SubmitJob.
        big = os.path.join(self.root, "big.json")
        with open(big, "w") as f:
            f.write('{"kind": "SCRATCH", "dataset": "subset", "exclude_classes": [' +
                    ",".join(['"' + "c" * 100 + '"'] * 50000) + "]}")
        p = self.d.trainctl("submit", "-f", big, check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("exceeds the 1048576-byte limit", p.stderr)
        self.d.trainctl("cancel", waiting)
        self.d.trainctl("cancel", running)


class StreamLimitTest(unittest.TestCase):
    """One open stream per user. Its own daemon, without HostileInputTest's
    2 s stream cap: a capped stream ends and reconnects, and its slot can be
    free at the moment a second watcher asks."""

    @classmethod
    def setUpClass(cls):
        cls.root = temp_root("traind-streams-")
        cls.data = os.path.join(cls.root, "data")
        os.makedirs(os.path.join(cls.root, "w"))
        make_subset(os.path.join(cls.data, "subset"))
        cls.d = Daemon(os.path.join(cls.root, "state"), cls.data, os.path.join(cls.root, "w"),
                       extra=["--max-streams-per-user=1"]).start()

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()
        shutil.rmtree(cls.root, ignore_errors=True)

    def test_a_second_stream_is_refused_with_resource_exhausted(self):
        job = self.d.submit("--kind=scratch", "--dataset=subset", "--epochs=100",
                            "--image_size=32")
        env = dict(os.environ, TRAINCTL_SERVER=self.d.address)
        first = subprocess.Popen([TRAINCTL, "--output=json", "watch", job],
                                 stdout=subprocess.PIPE, text=True, env=env)
        try:
            first.stdout.readline()  # its stream is open, and stays open
            p = self.d.trainctl("watch", job, check=False)
            self.assertEqual(p.returncode, 2)
            self.assertIn("open streams", p.stderr)
            self.assertEqual(self.d.trainctl("list").returncode, 0)  # still answering
        finally:
            first.kill()
            first.wait()
            first.stdout.close()
            self.d.trainctl("cancel", job)


if __name__ == "__main__":
    unittest.main()
