"""Distributed jobs placed by a real Slurm (launcher SLURM): a throwaway
cluster from Debian's packages in a temp folder (slurm_cluster.py), the real
traind submitting each attempt with sbatch, driven by the real trainctl."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
import unittest

from harness import (TRAINCTL, Daemon, assert_resumed_in_a_new_cluster_job, make_subset,
                     of_kind, read_until_paused, temp_root)
from slurm_cluster import SlurmCluster, missing_reason

IMAGE = "64"
BATCH = "8"
SEED = 5


def pids_with_env(key, value):
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if env.get(key.encode()) == value.encode() and b"worker" in cmd and b"TRAIND_ATTEMPT" in env:
            out.append(int(pid))
    return out


class SlurmTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        reason = missing_reason()
        if reason:
            raise unittest.SkipTest(f"no Slurm cluster here: {reason}")
        # Each thing started is stopped even when a later step of the set-up
        # fails (tearDownClass would not run): class clean-ups, newest first.
        cls.root = temp_root("traind-slurm-")
        cls.addClassCleanup(shutil.rmtree, cls.root, ignore_errors=True)
        os.chmod(cls.root, 0o755)  # munged (user munge) reaches its folder inside
        cls.cluster = SlurmCluster(os.path.join(cls.root, "slurm"),
                                   [("n1", "127.0.0.1", None, 2)])
        os.makedirs(cls.cluster.root)
        cls.addClassCleanup(cls.cluster.stop)
        cls.cluster.start()
        os.environ["SLURM_CONF"] = cls.cluster.conf
        cls.addClassCleanup(os.environ.pop, "SLURM_CONF", None)
        cls.data = os.path.join(cls.root, "data")
        os.makedirs(os.path.join(cls.root, "weights"))
        make_subset(os.path.join(cls.data, "subset"), per_class=13)
        cls.daemon = Daemon(os.path.join(cls.root, "state"), cls.data,
                            os.path.join(cls.root, "weights")).start()
        cls.addClassCleanup(cls.daemon.stop)

    def submit(self, launcher, epochs=2):
        return self.daemon.submit("--kind=scratch", "--dataset=subset", f"--epochs={epochs}",
                                  f"--image_size={IMAGE}", f"--batch_size={BATCH}",
                                  f"--seed={SEED}", "--world_size=2", f"--launcher={launcher}")

    def weights_sha(self, job):
        out = os.path.join(self.root, f"{job}.pth")
        self.daemon.trainctl("weights", job, "-o", out)
        with open(out, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()


    def watch_training(self, daemon, job):
        """Watches until the ranks train and the control plane has said which
        Slurm job holds them (Slurm is polled once a second, so that line may
        come after the first batch); returns watcher, events, Slurm job id."""
        seen = {"batch": False, "slurm": None}

        def both(event):
            seen["batch"] = seen["batch"] or "batch" in event
            seen["slurm"] = seen["slurm"] or self.slurm_job_id([event])
            return seen["batch"] and seen["slurm"] is not None
        watcher, events = daemon.watch_until(job, both)
        return watcher, events, seen["slurm"]

    def cancel_on_failure(self, job):
        """A long job left running would slow every later test."""
        self.addCleanup(lambda: subprocess.run(
            [TRAINCTL, "cancel", job], capture_output=True,
            env=dict(os.environ, TRAINCTL_SERVER=self.daemon.address)))

    def slurm_job_id(self, events):
        for text in (l["text"] for l in of_kind(events, "log")):
            if text.startswith("Slurm job ") and " runs on " in text:
                return text.split()[2]
        return None

    def test_two_ranks_under_slurm_train_what_local_ranks_train(self):
        job = self.submit("slurm")
        events, _ = self.daemon.watch(job)
        self.assertEqual(of_kind(events, "state")[-1]["state"], "SUCCEEDED",
                         [l["text"] for l in of_kind(events, "log")])
        self.assertEqual([int(e["seq"]) for e in events], list(range(1, len(events) + 1)))
        slurm_id = self.slurm_job_id(events)
        self.assertIsNotNone(slurm_id)
        placement = self.daemon.trainctl_json("status", job)[0]["placement"]
        self.assertEqual((placement["launcher"], placement["scheduler_job"]), ("SLURM", slurm_id))
        self.assertEqual(len(placement["ranks"]), 2)
        local = self.submit("local_processes")
        self.daemon.watch(local)
        self.assertEqual(self.weights_sha(job), self.weights_sha(local))

    def blocker(self, seconds):
        """A Slurm job holding every CPU of the node for a while."""
        out = subprocess.run(["sbatch", "--parsable", "-n2", "--output=/dev/null", f"--wrap=sleep {seconds}"],
                             check=True, capture_output=True, text=True).stdout
        return out.strip().split(";")[0]

    def test_pending_in_slurm_shows_as_queued_with_slurms_reason(self):
        blocker = self.blocker(10)
        job = self.submit("slurm")
        events, _ = self.daemon.watch(job)
        states = [(s["state"], s.get("reason", "")) for s in of_kind(events, "state")]
        self.assertEqual(states[-1][0], "SUCCEEDED", states)
        waiting = [r for s, r in states if s == "QUEUED" and r.startswith("waiting in Slurm")]
        self.assertTrue(any("Resources" in r or "Priority" in r for r in waiting), states)
        # Queued once while Slurm holds it, running once it starts.
        at = states.index(("QUEUED", waiting[0]))
        self.assertEqual([s for s, _ in states[at:]],
                         ["QUEUED"] * (len(states) - at - 2) + ["RUNNING", "SUCCEEDED"], states)
        subprocess.run(["scancel", blocker], capture_output=True)

    def test_cancel_while_pending_in_slurm(self):
        blocker = self.blocker(120)
        try:
            job = self.submit("slurm")
            watcher, events = self.daemon.watch_until(
                job, lambda e: e.get("state", {}).get("reason", "").startswith("waiting in Slurm"))
            started = time.time()
            self.daemon.trainctl("cancel", job)
            events = self.daemon.finish_watch(watcher, events)
            self.assertEqual(of_kind(events, "state")[-1]["state"], "CANCELLED")
            self.assertLess(time.time() - started, 30)
        finally:
            subprocess.run(["scancel", blocker], capture_output=True)

    def test_a_node_without_the_traind_binary_fails_the_job_saying_so(self):
        import harness
        copy = os.path.join(self.root, "bin", "traind")
        os.makedirs(os.path.dirname(copy), exist_ok=True)
        shutil.copy(harness.TRAIND, copy)
        saved, harness.TRAIND = harness.TRAIND, copy
        try:
            daemon = Daemon(os.path.join(self.root, "state-nobinary"), self.data,
                            os.path.join(self.root, "weights")).start()
        finally:
            harness.TRAIND = saved
        try:
            os.remove(copy)  # the daemon runs on; the "node" lacks its binary
            job = daemon.submit("--kind=scratch", "--dataset=subset", "--epochs=1",
                                f"--image_size={IMAGE}", f"--batch_size={BATCH}",
                                "--world_size=2", "--launcher=slurm")
            events, _ = daemon.watch(job)
        finally:
            daemon.stop()
        states = [(s["state"], s.get("reason", "")) for s in of_kind(events, "state")]
        self.assertEqual(states[-1][0], "FAILED", states)
        self.assertIn("every node needs the traind binary at that path", states[-1][1])
        self.assertIn(copy, states[-1][1])
        self.assertFalse(any("was lost" in r for _, r in states), states)  # not retried

    def test_scancel_from_outside_cancels_the_job_with_that_reason(self):
        job = self.submit("slurm", epochs=200)
        self.cancel_on_failure(job)
        watcher, events, slurm_id = self.watch_training(self.daemon, job)
        subprocess.run(["scancel", slurm_id], check=True)
        events = self.daemon.finish_watch(watcher, events)
        last = of_kind(events, "state")[-1]
        self.assertEqual(last["state"], "CANCELLED")
        self.assertIn(f"Slurm job {slurm_id} was cancelled outside traind", last["reason"])

    def assert_slurm_job_ended(self, slurm_id):
        """Waits (Slurm's own state, polled) until the Slurm job has left
        RUNNING and COMPLETING; fails if it has not within 30 s."""
        deadline = time.time() + 30
        while time.time() < deadline:
            shown = self.cluster.scontrol("show", "job", "-o", slurm_id)
            if "JobState=RUNNING" not in shown and "JobState=COMPLETING" not in shown:
                break
            time.sleep(0.5)
        self.assertNotIn("JobState=RUNNING", self.cluster.scontrol("show", "job", "-o", slurm_id))

    def test_trainctl_cancel_ends_the_slurm_job(self):
        job = self.submit("slurm", epochs=200)
        self.cancel_on_failure(job)
        watcher, events, slurm_id = self.watch_training(self.daemon, job)
        self.daemon.trainctl("cancel", job)
        events = self.daemon.finish_watch(watcher, events)
        self.assertEqual(of_kind(events, "state")[-1]["state"], "CANCELLED")
        self.assert_slurm_job_ended(slurm_id)
        # Slurm's own record says what the user did.
        self.assertIn("JobState=CANCELLED", self.cluster.scontrol("show", "job", "-o", slurm_id))

    def test_pause_ends_the_slurm_job_and_resume_finishes_exactly(self):
        reference = self.submit("local_processes", epochs=3)
        self.daemon.watch(reference)
        job = self.submit("slurm", epochs=3)
        self.cancel_on_failure(job)
        watcher, events, slurm_id = self.watch_training(self.daemon, job)
        self.daemon.trainctl("pause", job)
        read_until_paused(self, watcher, events)
        # Its slots went back: the Slurm job ended.
        self.assert_slurm_job_ended(slurm_id)
        self.daemon.trainctl("resume", job)
        events = self.daemon.finish_watch(watcher, events)
        assert_resumed_in_a_new_cluster_job(self, events, "Slurm job ", " runs on ")
        self.assertEqual(self.weights_sha(job), self.weights_sha(reference))

    def test_a_restarted_control_plane_takes_up_the_running_slurm_job(self):
        from slurm_cluster import free_port
        clean = self.submit("slurm", epochs=3)
        self.daemon.watch(clean)
        want = self.weights_sha(clean)
        # Its own daemon on a fixed port: the ranks dial the same address after the restart.
        daemon = Daemon(os.path.join(self.root, "state-restart"), self.data,
                        os.path.join(self.root, "weights"),
                        listen=f"127.0.0.1:{free_port()}").start()
        try:
            job = daemon.submit("--kind=scratch", "--dataset=subset", "--epochs=3",
                                f"--image_size={IMAGE}", f"--batch_size={BATCH}",
                                f"--seed={SEED}", "--world_size=2", "--launcher=slurm")
            watcher, events = daemon.watch_until(
                job, lambda e: int(e.get("batch", {}).get("epoch", 0)) == 2)
            slurm_id = self.slurm_job_id(events)
            daemon.stop(signal.SIGKILL)
            watcher.kill()
            watcher.wait()
            watcher.stdout.close()
            time.sleep(2)  # the ranks keep running without their control plane
            self.assertIn("JobState=RUNNING", self.cluster.scontrol("show", "job", "-o", slurm_id))
            daemon.start()
            events, _ = daemon.watch(job)
            self.assertEqual([int(e["seq"]) for e in events], list(range(1, len(events) + 1)))
            self.assertEqual(of_kind(events, "state")[-1]["state"], "SUCCEEDED")
            logs = [l["text"] for l in of_kind(events, "log")]
            self.assertTrue(any(f"took up Slurm job {slurm_id} again" in t for t in logs), logs)
            started = {t.split()[2] for t in logs if t.startswith("Slurm job ") and " runs on " in t}
            self.assertEqual(started, {slurm_id})  # not submitted twice
            out = os.path.join(self.root, "restarted.pth")
            daemon.trainctl("weights", job, "-o", out)
            with open(out, "rb") as f:
                self.assertEqual(hashlib.sha256(f.read()).hexdigest(), want)
        finally:
            daemon.stop()

    def test_a_killed_rank_relaunches_the_attempt_from_its_checkpoint(self):
        clean = self.submit("slurm", epochs=3)
        self.daemon.watch(clean)
        want = self.weights_sha(clean)
        job = self.submit("slurm", epochs=3)
        watcher, events = self.daemon.watch_until(
            job, lambda e: int(e.get("batch", {}).get("epoch", 0)) == 2)
        victims = pids_with_env("SLURM_PROCID", "1")
        self.assertEqual(len(victims), 1, victims)
        os.kill(victims[0], signal.SIGKILL)
        events = self.daemon.finish_watch(watcher, events)
        self.assertEqual(of_kind(events, "state")[-1]["state"], "SUCCEEDED")
        reasons = [s.get("reason", "") for s in of_kind(events, "state")]
        self.assertTrue(any("was lost" in r for r in reasons), reasons)
        self.assertEqual(len(of_kind(events, "resumed")), 1)
        self.assertEqual(self.weights_sha(job), want)


class SlurmTwoNodesTest(unittest.TestCase):
    """Two slurmd nodes, each in its own network namespace (two hosts on one
    machine, bridged to the root namespace where slurmctld runs); the
    control plane on a Unix socket, which the ranks reach from their
    namespaces."""

    def setUp(self):
        reason = missing_reason()
        if reason:
            self.skipTest(f"no Slurm cluster here: {reason}")
        tag = os.getpid() % 100000
        self.ns = [f"traind-s{tag}-{i}" for i in (1, 2)]
        p = subprocess.run(["ip", "netns", "add", self.ns[0]], capture_output=True, text=True)
        if p.returncode != 0:
            self.skipTest(f"cannot create network namespaces here: {p.stderr.strip()}")
        self.bridge = f"tdbr{tag}"
        self.addCleanup(self.remove_network)
        run = lambda *cmd: subprocess.run(cmd, check=True)  # noqa: E731
        run("ip", "netns", "add", self.ns[1])
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "addr", "add", "10.231.3.1/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        for i, ns in enumerate(self.ns):
            host, inner = f"tdh{tag}{i}", f"tdn{tag}{i}"
            run("ip", "link", "add", host, "type", "veth", "peer", "name", inner, "netns", ns)
            run("ip", "link", "set", host, "master", self.bridge)
            run("ip", "link", "set", host, "up")
            run("ip", "-n", ns, "addr", "add", f"10.231.3.{11 + i}/24", "dev", inner)
            run("ip", "-n", ns, "link", "set", inner, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        self.root = temp_root("traind-slurm2-")
        os.chmod(self.root, 0o755)
        self.addCleanup(shutil.rmtree, self.root, True)
        self.cluster = SlurmCluster(os.path.join(self.root, "slurm"),
                                    [("n1", "10.231.3.11", self.ns[0], 1),
                                     ("n2", "10.231.3.12", self.ns[1], 1)],
                                    ctld_addr="10.231.3.1")
        os.makedirs(self.cluster.root)
        self.cluster.start()
        self.addCleanup(self.cluster.stop)
        os.environ["SLURM_CONF"] = self.cluster.conf
        self.addCleanup(os.environ.pop, "SLURM_CONF", None)
        self.data = os.path.join(self.root, "data")
        os.makedirs(os.path.join(self.root, "weights"))
        make_subset(os.path.join(self.data, "subset"), per_class=13)

    def remove_network(self):
        for ns in self.ns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)

    def test_two_ranks_on_two_nodes_train_what_local_ranks_train(self):
        from distributed_test import UnixSocketDaemon
        daemon = UnixSocketDaemon(os.path.join(self.root, "state"), self.data,
                                  os.path.join(self.root, "weights")).start()
        try:
            shas = {}
            for launcher in ("slurm", "local_processes"):
                job = daemon.submit("--kind=scratch", "--dataset=subset", "--epochs=2",
                                    f"--image_size={IMAGE}", f"--batch_size={BATCH}",
                                    f"--seed={SEED}", "--world_size=2",
                                    f"--launcher={launcher}", "-f", self.two_nodes_file())
                events, _ = daemon.watch(job)
                logs = [l["text"] for l in of_kind(events, "log")]
                self.assertEqual(of_kind(events, "state")[-1]["state"], "SUCCEEDED", logs)
                if launcher == "slurm":
                    self.assertTrue(any("runs on n[1-2]" in t for t in logs), logs)
                    self.assertTrue(any("(10.231.3.11)" in t and "(10.231.3.12)" in t
                                        for t in logs), logs)
                out = os.path.join(self.root, f"{job}.pth")
                daemon.trainctl("weights", job, "-o", out)
                with open(out, "rb") as f:
                    shas[launcher] = hashlib.sha256(f.read()).hexdigest()
        finally:
            daemon.stop()
        self.assertEqual(shas["slurm"], shas["local_processes"])

    def two_nodes_file(self):
        path = os.path.join(self.root, "two-nodes.json")
        with open(path, "w") as f:
            json.dump({"distributed": {"slurm": {"nodes": 2}}}, f)
        return path


if __name__ == "__main__":
    unittest.main()
