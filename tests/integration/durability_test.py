"""Nothing lost: the real traind killed at random moments, restarted, and
checked through the real trainctl and its SQLite file."""
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import sqlite3
import subprocess
import time
import unittest

from harness import TRAINCTL, Daemon, make_subset, read_safetensors, temp_root, of_kind



def spec(epochs, image=64, *more):
    return ("--kind=scratch", "--dataset=subset", f"--image_size={image}", "--batch_size=8",
            "--loader_threads=1", "--seed=3", f"--epochs={epochs}", *more)


def seqs(events):
    return [int(e["seq"]) for e in events]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def db_rows(state_dir, sql, *args):
    """Reads the daemon's store as any SQLite client would (read-only)."""
    con = sqlite3.connect(f"file:{state_dir}/traind.db?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def max_abs_diff(a_path, b_path):
    a, b = read_safetensors(a_path), read_safetensors(b_path)
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0
               for k in a)


class Watcher:
    """`trainctl watch` in the background, reconnecting by itself."""

    def __init__(self, address, job):
        env = dict(os.environ, TRAINCTL_SERVER=address)
        self.proc = subprocess.Popen([TRAINCTL, "--output=json", "--reconnect_seconds=120",
                                      "watch", job], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.events = []

    def read_until(self, predicate):
        for line in self.proc.stdout:
            self.events.append(json.loads(line))
            if predicate(self.events[-1]):
                return
        raise AssertionError("watch ended before the awaited event")

    def finish(self):
        for line in self.proc.stdout:
            self.events.append(json.loads(line))
        rc = self.proc.wait(timeout=600)
        err = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return rc, err


class DurabilityTest(unittest.TestCase):
    def setUp(self):
        self.root = temp_root("traind-durable-")
        self.data = os.path.join(self.root, "data")
        make_subset(os.path.join(self.data, "subset"))
        self.state = os.path.join(self.root, "state")
        self.weights = os.path.join(self.root, "w")
        os.makedirs(self.weights)
        self.daemons = []

    def tearDown(self):
        for d in self.daemons:
            d.stop(sig=signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def daemon(self, listen="127.0.0.1:0", state=None, extra=(), preexec=None):
        d = Daemon(state or self.state, self.data, self.weights, listen=listen, extra=extra)
        if preexec:
            d.preexec = preexec
        self.daemons.append(d)
        return d.start()

    def download(self, d, job, name):
        out = os.path.join(self.root, name)
        d.trainctl("weights", job, "-o", out, "--format=safetensors")
        return out

    def test_killed_or_stopped_mid_epoch_the_job_resumes_exactly(self):
        d = self.daemon()
        reference = d.submit(*spec(3))
        d.watch(reference)
        self.assertEqual(d.status(reference)["state"], "SUCCEEDED")
        want = self.download(d, reference, "reference.safetensors")

        for sig, name in ((signal.SIGKILL, "killed"), (signal.SIGTERM, "stopped")):
            with self.subTest(signal=name):
                job = d.submit(*spec(3))
                w = Watcher(d.address, job)
                w.read_until(lambda e: e.get("batch", {}).get("epoch") == 2)
                d.stop(sig=sig)
                d = self.daemon(listen=d.address)
                rc, err = w.finish()
                self.assertEqual(rc, 0, err)
                events, _ = d.watch(job)
                # The watcher reconnected by itself and saw exactly the stored history.
                self.assertEqual(w.events, events)
                self.assertEqual(seqs(events), list(range(1, len(events) + 1)))
                resumed = of_kind(events, "resumed")
                self.assertEqual(len(resumed), 1, resumed)
                self.assertEqual(resumed[0]["attempt"], 2)
                self.assertIn(resumed[0].get("epoch", 0), (1, 2))
                if sig == signal.SIGTERM:
                    # A graceful stop checkpoints at the next batch boundary.
                    reasons = [s.get("reason", "") for s in of_kind(events, "state")]
                    self.assertTrue(any("checkpointed" in r for r in reasons), reasons)
                self.assertEqual(sorted({e["epoch"] for e in of_kind(events, "epoch")}),
                                 [1, 2, 3])
                after = events.index(next(e for e in events if "resumed" in e))
                self.assertTrue(all(b.get("attempt") == 2
                                    for b in of_kind(events[after:], "batch")))
                self.assertTrue(all(b.get("attempt") == 1
                                    for b in of_kind(events[:after], "batch")))
                self.assertEqual(of_kind(events, "state")[-1]["state"], "SUCCEEDED")
                first_after = next(e for e in events[after:] if "batch" in e)
                resume_ms = int(first_after["time_ms"]) - int(events[after]["time_ms"])
                got = self.download(d, job, f"{name}.safetensors")
                diff = max_abs_diff(want, got)
                print(f"{name}: resumed at epoch {resumed[0].get('epoch', 0)} batch "
                      f"{resumed[0].get('next_batch', 0)}, first batch {resume_ms} ms after the "
                      f"resume event; max |weight difference| vs the "
                      f"uninterrupted run: {diff:g} (sha256 equal: {sha256(want) == sha256(got)})")
                self.assertEqual(diff, 0.0)

    def test_random_kills_lose_nothing_and_never_load_a_bad_checkpoint(self):
        rng = random.Random(11)
        no_limit = ("--max_attempts_without_progress=1000",)
        d = self.daemon(extra=no_limit)
        job = d.submit(*spec(100, 32, "--request_id=long-job"))
        acknowledged = {"long-job": job}
        cycles = 20

        def wait_until(predicate, what):
            deadline = time.time() + 300
            while not predicate():
                self.assertLess(time.time(), deadline, what)
                time.sleep(0.05)

        # A first checkpoint, so that every later restart has one to resume from,
        # however slow this machine is.
        wait_until(lambda: db_rows(self.state, "SELECT COUNT(*) FROM checkpoints")[0][0] > 0,
                   "no first checkpoint")
        for cycle in range(cycles):
            # Kill at a random moment of a running attempt.
            wait_until(lambda: d.status(job)["state"] == "RUNNING", "job not running again")
            # Acknowledged submissions, some while the job is checkpointing.
            for k in range(rng.randint(0, 2)):
                rid = f"c{cycle}-{k}"
                acknowledged[rid] = d.submit(*spec(1, 32, f"--request_id={rid}"))
            time.sleep(rng.uniform(0.2, 2.5))
            d.stop(sig=signal.SIGKILL)
            self.assertEqual(db_rows(self.state, "PRAGMA integrity_check"), [("ok",)])
            ids = dict(db_rows(self.state, "SELECT request_id, id FROM jobs"))
            for rid, jid in acknowledged.items():
                self.assertEqual(ids.get(rid), jid, f"cycle {cycle}: job {jid} lost")
            for path, digest in db_rows(self.state, "SELECT path, sha256 FROM checkpoints"):
                self.assertEqual(sha256(path), digest, f"cycle {cycle}: {path} recorded but bad")
            d = self.daemon(listen=d.address, extra=no_limit)
        d.trainctl("cancel", job)
        events, _ = d.watch(job)
        self.assertEqual(seqs(events), list(range(1, len(events) + 1)))
        recorded = {r[0] for r in db_rows(self.state, "SELECT sha256 FROM checkpoints")}
        resumed = [r for r in of_kind(events, "resumed") if r.get("checkpoint_sha256")]
        # Every resume names the verified digest of the checkpoint it loaded.
        self.assertTrue(resumed)
        self.assertGreaterEqual(len(of_kind(events, "resumed")), cycles // 2)
        print(f"{cycles} kill cycles: {len(resumed)} resumes from a checkpoint, "
              f"{len(acknowledged)} acknowledged jobs all present, integrity ok every time; "
              f"{len(recorded)} checkpoints kept at the end")

    def test_a_job_that_keeps_crashing_without_progress_stops(self):
        limit = ("--max_attempts_without_progress=2",)
        d = self.daemon(extra=limit)
        job = d.submit(*spec(5, 160))
        for attempt in (1, 2):
            w = Watcher(d.address, job)
            running = []
            w.read_until(lambda e: e.get("state", {}).get("state") == "RUNNING" and
                         running.append(e) is None and len(running) == attempt)
            d.stop(sig=signal.SIGKILL)  # before the first checkpoint
            w.proc.kill()
            w.finish()
            self.assertEqual(db_rows(self.state, "SELECT COUNT(*) FROM checkpoints"), [(0,)])
            d = self.daemon(listen=d.address, extra=limit)
        status = d.status(job)
        self.assertEqual(status["state"], "FAILED")
        self.assertIn("2 attempts in a row without a new checkpoint", status["error"])

    def test_damaged_newest_checkpoint_falls_back_to_the_previous(self):
        d = self.daemon()
        job = d.submit(*spec(4))
        deadline = time.time() + 300
        while len(db_rows(self.state, "SELECT path FROM checkpoints WHERE job_id = ?", job)) < 2:
            self.assertLess(time.time(), deadline)
            time.sleep(0.05)
        d.stop(sig=signal.SIGKILL)
        (newest, epoch), (previous, prev_epoch) = db_rows(
            self.state, "SELECT path, epoch FROM checkpoints WHERE job_id = ? "
            "ORDER BY global_step DESC LIMIT 2", job)
        with open(newest, "r+b") as f:
            f.seek(os.path.getsize(newest) // 2)
            f.write(b"\xde\xad\xbe\xef" * 4)
        d = self.daemon(listen=d.address)
        events, p = d.watch(job)
        self.assertEqual(p.returncode, 0, p.stderr)
        warnings = [l["text"] for l in of_kind(events, "log") if l.get("level") == "WARNING"]
        self.assertTrue(any(os.path.basename(newest) in w and "damaged" in w for w in warnings),
                        warnings)
        resumed = of_kind(events, "resumed")
        self.assertEqual(len(resumed), 1)
        self.assertEqual(resumed[0].get("epoch", 0), prev_epoch - 1)
        self.assertEqual(of_kind(events, "state")[-1]["state"], "SUCCEEDED")

    def test_same_request_id_across_a_kill_is_one_job(self):
        d = self.daemon()
        first = d.submit(*spec(1, 64, "--request_id=retry-me"))
        d.stop(sig=signal.SIGKILL)  # right after the reply
        d = self.daemon(listen=d.address)
        again = d.submit(*spec(1, 64, "--request_id=retry-me"))
        self.assertEqual(first, again)
        jobs = d.trainctl_json("list")[0]["jobs"]
        self.assertEqual([j["id"] for j in jobs], [first])

    def test_weights_download_continues_and_delete_removes_a_finished_job(self):
        d = self.daemon()
        job = d.submit(*spec(1))
        running = d.submit(*spec(50))
        d.watch(job)
        full = self.download(d, job, "full.safetensors")
        with open(full, "rb") as f:
            data = f.read()
        out = os.path.join(self.root, "partial.safetensors")
        # An interrupted download: the part file and the announced digest.
        with open(out + ".part", "wb") as f:
            f.write(data[:1_000_000 + 17])
        with open(out + ".part.sha256", "w") as f:
            f.write(hashlib.sha256(data).hexdigest() + "\n")
        p = d.trainctl("weights", job, "-o", out, "--format=safetensors")
        self.assertIn("continued from byte 1000017", p.stdout)
        self.assertEqual(sha256(out), hashlib.sha256(data).hexdigest())
        self.assertFalse(os.path.exists(out + ".part"))
        # A part of some other file is not continued: the download starts over.
        with open(out + ".part", "wb") as f:
            f.write(b"x" * 5000)
        with open(out + ".part.sha256", "w") as f:
            f.write("0" * 64 + "\n")
        p = d.trainctl("weights", job, "-o", out, "--format=safetensors")
        self.assertNotIn("continued", p.stdout)
        self.assertEqual(sha256(out), hashlib.sha256(data).hexdigest())

        p = d.trainctl("delete", running, check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("only a finished or paused job can be deleted", p.stderr)
        p = d.trainctl("delete", job)
        self.assertIn("deleted", p.stdout)
        self.assertFalse(os.path.exists(os.path.join(self.state, "jobs", job)))
        self.assertEqual(d.trainctl("status", job, check=False).returncode, 2)
        self.assertEqual(db_rows(self.state, "SELECT COUNT(*) FROM events WHERE job_id = ?", job),
                         [(0,)])
        d.trainctl("cancel", running)

    def test_full_disk_fails_the_job_with_the_reason_and_keeps_the_rest(self):
        state = os.path.join(self.root, "small-state")
        os.makedirs(state)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", state],
                                 capture_output=True).returncode == 0
        preexec = None
        if not mounted:
            # No privilege to mount: cap file sizes instead (writes fail with EFBIG).
            def preexec():
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (48 << 20, 48 << 20))
        try:
            d = self.daemon(state=state, preexec=preexec)
            kept = d.submit(*spec(50))
            d.trainctl("cancel", kept)
            job = d.submit(*spec(2))
            events, p = d.watch(job)
            self.assertEqual(p.returncode, 4)
            status = d.status(job)
            self.assertEqual(status["state"], "FAILED")
            self.assertTrue("No space left on device" in status["error"] or
                            "File too large" in status["error"], status["error"])
            self.assertIn("checkpoint", status["error"])
            listed = [j["id"] for j in d.trainctl_json("list")[0]["jobs"]]
            self.assertEqual(listed, [kept, job])
            self.assertEqual(d.status(kept)["state"], "CANCELLED")
            before, _ = d.watch(kept)
            d.stop()
            d = self.daemon(state=state, preexec=preexec)
            after, _ = d.watch(kept)
            self.assertEqual(before, after)
            self.assertEqual(d.status(job)["state"], "FAILED")
            d.stop()
            print("disk trouble via", "a 64 MiB tmpfs" if mounted else "RLIMIT_FSIZE", ":",
                  status["error"])
        finally:
            if mounted:
                subprocess.run(["umount", state])


if __name__ == "__main__":
    unittest.main()
