"""One traind shared by a team: priorities and preemption, pause and resume
(across a restart, and of a 2-rank job), quotas, through the real traind and
trainctl. Every job that was stopped and continued must end with the same
weights (sha256) as the same job run without a stop."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import unittest

from harness import TRAINCTL, Daemon, add_token, make_subset, of_kind, temp_root
from durability_test import Watcher, seqs


def spec(epochs, *more):
    return ("--kind=scratch", "--dataset=subset", "--image_size=32", "--batch_size=8",
            "--loader_threads=1", "--seed=5", f"--epochs={epochs}", *more)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def states(events):
    return [(s["state"], s.get("reason", "")) for s in of_kind(events, "state")]


class SchedulingTest(unittest.TestCase):
    def setUp(self):
        self.root = temp_root("traind-sched-")
        self.data = os.path.join(self.root, "data")
        make_subset(os.path.join(self.data, "subset"), per_class=8)
        self.state = os.path.join(self.root, "state")
        self.weights = os.path.join(self.root, "w")
        os.makedirs(self.weights)
        self.daemons = []

    def tearDown(self):
        for d in self.daemons:
            d.stop(sig=signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def daemon(self, listen="127.0.0.1:0", extra=()):
        d = Daemon(self.state, self.data, self.weights, listen=listen, extra=extra)
        self.daemons.append(d)
        return d.start()

    def weights_sha(self, d, job):
        out = os.path.join(self.root, f"{job}.safetensors")
        d.trainctl("weights", job, "-o", out, "--format=safetensors")
        return sha256(out)

    def reference(self, d, *args):
        job = d.submit(*args)
        events, p = d.watch(job)
        self.assertEqual(p.returncode, 0, p.stderr)
        return self.weights_sha(d, job)

    def test_a_high_job_preempts_a_low_one_which_resumes_exactly(self):
        d = self.daemon()
        want = self.reference(d, *spec(3))
        low = d.submit(*spec(3, "--priority=low"))
        w = Watcher(d.address, low)
        w.read_until(lambda e: e.get("batch", {}).get("epoch") == 2)
        high = d.submit(*spec(1, "--priority=high"))
        submitted_at = int(d.status(low)["last_seq"])
        # The LOW job stops at its next batch boundary, with a checkpoint,
        # and says which job took its place.
        w.read_until(lambda e: e.get("state", {}).get("state") == "QUEUED")
        reason = w.events[-1]["state"]["reason"]
        # At the epochs LOW had finished when it stopped (1, or more where its
        # steps outran the submission): the count its own events show.
        done = len(of_kind(w.events, "epoch"))
        self.assertGreaterEqual(done, 1)
        self.assertTrue(reason.startswith(f"preempted by {high} (HIGH) at {done} epochs"), reason)
        self.assertIn("checkpointed", reason)
        late = [e for e in w.events if "batch" in e and int(e["seq"]) > submitted_at]
        self.assertLessEqual(len(late), 1, late)
        waiting = d.status(low)
        if waiting["state"] == "QUEUED":  # unless HIGH already finished
            self.assertEqual(waiting.get("queue_position"), 1)
        high_events, p = d.watch(high)
        self.assertEqual(p.returncode, 0, p.stderr)
        rc, err = w.finish()
        self.assertEqual(rc, 0, err)
        events = w.events
        self.assertEqual(seqs(events), list(range(1, len(events) + 1)))
        self.assertEqual([s for s, _ in states(events)],
                         ["QUEUED", "RUNNING", "QUEUED", "RUNNING", "SUCCEEDED"])
        resumed = of_kind(events, "resumed")
        self.assertEqual(len(resumed), 1, resumed)
        # HIGH ran while LOW waited: it started after LOW stopped.
        low_stop = next(int(e["time_ms"]) for e in events
                        if e.get("state", {}).get("state") == "QUEUED" and "preempted" in
                        e["state"].get("reason", ""))
        high_start = next(int(e["time_ms"]) for e in high_events
                          if e.get("state", {}).get("state") == "RUNNING")
        self.assertLessEqual(low_stop, high_start)
        got = self.weights_sha(d, low)
        print(f"preempted at global step {resumed[0].get('global_step')}: sha256 "
              f"{got[:16]}... vs uninterrupted {want[:16]}...")
        self.assertEqual(got, want)

    def test_pause_survives_a_restart_and_resume_ends_exactly(self):
        d = self.daemon()
        # Paused in its 2nd epoch of 5: the 3 epochs after it leave the
        # pause time to land however fast the steps are.
        want = self.reference(d, *spec(5))
        job = d.submit(*spec(5))
        w = Watcher(d.address, job)
        w.read_until(lambda e: e.get("batch", {}).get("epoch") == 2)
        out = d.trainctl("pause", job).stdout
        self.assertIn(job, out)
        w.read_until(lambda e: e.get("state", {}).get("state") == "PAUSED")
        self.assertIn("checkpointed", w.events[-1]["state"]["reason"])
        # The watch goes on through the pause and the restart.
        d.stop()
        d = self.daemon(listen=d.address)
        self.assertEqual(d.status(job)["state"], "PAUSED")
        listed = [j for j in d.trainctl_json("list")[0]["jobs"] if j["id"] == job]
        self.assertEqual(listed[0]["state"], "PAUSED")
        self.assertIn("PAUSED", d.trainctl("status", job).stdout)
        d.trainctl("resume", job)
        rc, err = w.finish()
        self.assertEqual(rc, 0, err)
        events = w.events
        self.assertEqual(seqs(events), list(range(1, len(events) + 1)))
        self.assertEqual([s for s, _ in states(events)],
                         ["QUEUED", "RUNNING", "PAUSED", "QUEUED", "RUNNING", "SUCCEEDED"])
        self.assertEqual(self.weights_sha(d, job), want)
        # A queued job pauses at once, and a paused job can be cancelled; an
        # ended one cannot be paused. A long job holds the daemon's one slot,
        # so the pause finds the other job queued however fast the machine is
        # (a running 1-epoch job can end before a pause reaches it).
        blocker = d.submit(*spec(100))
        other = d.submit(*spec(1))
        self.assertEqual(d.status(other)["state"], "QUEUED")
        d.trainctl("pause", other)
        self.assertEqual(d.status(other)["state"], "PAUSED")
        d.trainctl("cancel", other)
        self.assertEqual(d.status(other)["state"], "CANCELLED")
        d.trainctl("cancel", blocker)
        p = d.trainctl("pause", job, check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("only a queued or running job can be paused", p.stderr)

    def test_a_two_rank_job_pauses_and_resumes_exactly(self):
        d = self.daemon(extra=["--workers=2"])
        ranks = ("--world_size=2",)
        # Paused in its 1st epoch of 3 (as above, epochs to spare).
        want = self.reference(d, *spec(3, *ranks))
        job = d.submit(*spec(3, *ranks))
        w = Watcher(d.address, job)
        w.read_until(lambda e: e.get("batch", {}).get("epoch") == 1 and
                     e["batch"].get("batch", 0) >= 2)
        d.trainctl("pause", job)
        w.read_until(lambda e: e.get("state", {}).get("state") == "PAUSED")
        d.trainctl("resume", job)
        rc, err = w.finish()
        self.assertEqual(rc, 0, err)
        self.assertEqual(seqs(w.events), list(range(1, len(w.events) + 1)))
        self.assertEqual(self.weights_sha(d, job), want)

    def test_quotas_and_priority_rights_come_from_the_policy_file(self):
        tokens = os.path.join(self.root, "tokens")
        alice = add_token(tokens, "alice")
        policy = os.path.join(self.root, "policy.json")
        with open(policy, "w") as f:
            # Nothing of alice's runs yet: what waits stays waiting.
            json.dump({"default": {"max_queued_jobs": 2, "max_world_size": 1,
                                   "max_running_jobs": 0}}, f)
        d = self.daemon(extra=[f"--tokens-file={tokens}", f"--policy-file={policy}"])

        def ctl(*args):
            env = dict(os.environ, TRAINCTL_SERVER=d.address, TRAINCTL_TOKEN=alice)
            return subprocess.run([TRAINCTL, *args], capture_output=True, text=True, env=env,
                                  timeout=600)

        p = ctl("submit", *spec(1, "--priority=high"))
        self.assertEqual(p.returncode, 2, p.stderr)  # PERMISSION_DENIED
        self.assertIn("priority HIGH: user alice may give jobs at most NORMAL", p.stderr)
        p = ctl("submit", *spec(1, "--world_size=2"))
        self.assertEqual(p.returncode, 2, p.stderr)  # RESOURCE_EXHAUSTED
        self.assertIn("quota max_world_size: user alice may run ranks up to world size 1; this "
                      "job asks for 2", p.stderr)
        first = ctl("--output=json", "submit", *spec(20))
        second = ctl("--output=json", "submit", *spec(1))
        self.assertEqual(first.returncode, 0, first.stderr)
        self.assertEqual(second.returncode, 0, second.stderr)
        first, second = (json.loads(x.stdout)["job_id"] for x in (first, second))
        third = ctl("submit", *spec(1))
        self.assertEqual(third.returncode, 2, third.stderr)
        self.assertIn("quota max_queued_jobs: user alice has 2 of 2 jobs waiting", third.stderr)
        self.assertIn("queue      position 1; waiting: 0 of alice's 0 running jobs in use",
                      ctl("status", first).stdout)
        self.assertIn("queue      position 2;", ctl("status", second).stdout)
        # A new policy on SIGHUP: alice's jobs may run, and she may use HIGH.
        with open(policy, "w") as f:
            json.dump({"default": {"max_priority": "HIGH"}}, f)
        d.proc.send_signal(signal.SIGHUP)
        for _ in range(100):
            line = d.proc.stdout.readline()
            if "policy" in line:
                break
        self.assertIn("policy reloaded", line)
        p = ctl("priority", second, "high")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("priority HIGH", p.stdout)
        p = ctl("priority", second, "urgent")
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("may give jobs at most HIGH", p.stderr)
        for job in (first, second):
            ctl("cancel", job)


if __name__ == "__main__":
    unittest.main()
