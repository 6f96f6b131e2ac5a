"""The Python client (client/python) against the real traind: installed with
pip into a virtual environment, its stubs current with proto/, and its API
(submit, watch with resume, wait, weights with resume and digest check,
state_dict into torchvision, classify, list, cancel, pause, resume,
priority, tokens)."""
import filecmp
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

from harness import start_with_users

PACKAGE = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                       "../../client/python"))
sys.path.insert(0, PACKAGE)
from traind_client import Client, TraindError, pb  # noqa: E402

SMALL = dict(kind="SCRATCH", dataset="subset", image_size=32, batch_size=8, loader_threads=1)


class PythonClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # Streams end after 1 s, so every watch must resume to see a job through.
        start_with_users(cls, "traind-pyclient-", {"alice": "", "bob": ""},
                         ["--max-stream-seconds=1"])
        cls.alice = Client(cls.d.address, token=cls.tokens["alice"])
        cls.bob = Client(cls.d.address, token=cls.tokens["bob"])
        cls.done = cls.alice.submit(epochs=2, **SMALL)
        cls.done.wait(timeout=600)

    @classmethod
    def tearDownClass(cls):
        cls.alice.close()
        cls.bob.close()
        cls.d.stop()
        shutil.rmtree(cls.root, ignore_errors=True)

    def test_stubs_are_current_with_the_proto(self):
        with tempfile.TemporaryDirectory() as out:
            subprocess.run([os.path.join(PACKAGE, "generate.sh"), out], check=True)
            for name in ("training_service_pb2.py", "training_service_pb2_grpc.py"):
                self.assertTrue(filecmp.cmp(os.path.join(out, name),
                                            os.path.join(PACKAGE, "traind_client", name),
                                            shallow=False),
                                f"{name} is stale: run client/python/generate.sh")

    def test_pip_installs_it_and_the_readme_example_runs(self):
        # Exactly the README's offline commands, with HOME in a temp folder and
        # no package index (PIP_NO_INDEX), run beside a copy of client/python:
        # a build leaves build/ and *.egg-info beside the sources.
        with open(os.path.join(PACKAGE, "../../README.md")) as f:
            readme = f.read()
        commands = [l for l in readme.splitlines()
                    if l.startswith(("python3 -m venv", "~/traind-venv/bin/pip install"))]
        self.assertEqual(len(commands), 2, commands)
        self.assertIn("--no-build-isolation ./client/python", commands[1])
        home = os.path.join(self.root, "home")
        shutil.copytree(PACKAGE, os.path.join(home, "client", "python"),
                        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        env = dict(os.environ, HOME=home, PIP_NO_INDEX="1",
                   PATH="/usr/bin:/bin:" + os.environ.get("PATH", ""))
        for command in commands:
            p = subprocess.run(["/bin/bash", "-c", command], cwd=home, env=env,
                               capture_output=True, text=True)
            self.assertEqual(p.returncode, 0, f"{command}: {p.stderr}")
        venv = os.path.join(home, "traind-venv")
        py = os.path.join(venv, "bin", "python")
        script = textwrap.dedent(f"""
            import torchvision, traind_client
            from traind_client import Client
            assert "{venv}" in traind_client.__file__, traind_client.__file__
            c = Client("{self.d.address}", token="{self.tokens['alice']}")
            job = c.submit(dataset="subset", kind="SCRATCH", epochs=1, image_size=32,
                           batch_size=8)
            epochs = [e.epoch.epoch for e in job.watch() if e.HasField("epoch")]
            final = job.wait()
            model = torchvision.models.resnet18(num_classes=final.num_classes)
            model.load_state_dict(job.state_dict())
            print(epochs, traind_client.pb.JobState.Name(final.state))
            """)
        p = subprocess.run([py, "-c", script], capture_output=True, text=True, cwd=self.root,
                           timeout=600)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.strip(), "[1] SUCCEEDED")

    def test_watch_resumes_across_stream_ends_without_gap_or_repeat(self):
        job = self.alice.submit(epochs=6, **SMALL)
        events = list(job.watch())
        self.assertEqual([e.seq for e in events], list(range(1, len(events) + 1)))
        final = job.get()
        self.assertEqual(final.state, pb.SUCCEEDED)
        self.assertEqual(events[-1].seq, final.last_seq)
        # Longer than the 1 s stream limit: the watch had to resume.
        self.assertGreater(events[-1].time_ms - events[0].time_ms, 1500)
        self.assertEqual([e.seq for e in job.watch(after_seq=events[-3].seq)],
                         [events[-2].seq, events[-1].seq])

    def test_weights_resume_and_are_checked(self):
        out = os.path.join(self.root, "w.pth")
        self.done.weights(out)
        with open(out, "rb") as f:
            whole = f.read()
        self.assertEqual(hashlib.sha256(whole).hexdigest(), self.done.get().weights_sha256)
        resumed = os.path.join(self.root, "resumed.pth")
        with open(resumed + ".part", "wb") as f:
            f.write(whole[:12345])  # an interrupted download
        self.done.weights(resumed)
        with open(resumed, "rb") as f:
            self.assertEqual(f.read(), whole)
        self.assertFalse(os.path.exists(resumed + ".part"))
        corrupt = os.path.join(self.root, "corrupt.pth")
        with open(corrupt + ".part", "wb") as f:
            f.write(b"\0" * 12345)
        with self.assertRaises(TraindError) as err:
            self.done.weights(corrupt)
        self.assertEqual(err.exception.code, "DATA_LOSS")
        self.assertFalse(os.path.exists(corrupt + ".part"))
        self.assertFalse(os.path.exists(corrupt))
        st = os.path.join(self.root, "w.safetensors")
        self.done.weights(st, format="safetensors")
        self.assertGreater(os.path.getsize(st), 1000)

    def test_state_dict_loads_into_torchvision_and_equals_the_pth(self):
        import torch
        import torchvision
        state = self.done.state_dict()
        model = torchvision.models.resnet18(num_classes=self.done.get().num_classes)
        model.load_state_dict(state)  # strict: every name and shape
        pth = os.path.join(self.root, "sd.pth")
        self.d.trainctl("weights", self.done.id, "-o", pth,
                        "--token", self.tokens["alice"])
        reference = torch.load(pth, map_location="cpu", weights_only=True)
        self.assertEqual(set(state), set(reference))
        for name, tensor in reference.items():
            self.assertTrue(torch.equal(state[name], tensor), name)

    def test_classify_list_cancel_and_errors(self):
        images = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(self.data, "subset"))
                        for f in fs)[:3]
        results = self.done.classify(images, top_k=2)
        self.assertEqual(len(results), 3)
        for predictions in results:
            self.assertEqual(len(predictions), 2)
            self.assertGreaterEqual(predictions[0][1], predictions[1][1])
        with open(images[0], "rb") as f:
            alone = self.done.classify([f.read()], top_k=2)[0]
        # Alone or in a batch of 3: the same classes, probabilities within float rounding.
        self.assertEqual([n for n, _ in alone], [n for n, _ in results[0]])
        for (_, a), (_, b) in zip(alone, results[0]):
            self.assertAlmostEqual(a, b, places=4)
        self.assertIn(self.done.id, [j.id for j in self.alice.list_jobs(states=["SUCCEEDED"])])
        self.assertNotIn(self.done.id, [j.id for j in self.alice.list_jobs(states=["FAILED"])])
        long = self.alice.submit(epochs=500, **SMALL)
        self.assertIn(pb.JobState.Name(long.cancel().state), ("CANCELLING", "CANCELLED"))
        self.assertEqual(long.wait(timeout=300).state, pb.CANCELLED)
        self.assertGreaterEqual(long.delete(), 0)
        with self.assertRaises(TraindError) as err:
            long.get()
        self.assertEqual(err.exception.code, "NOT_FOUND")
        with self.assertRaises(TraindError) as err:
            self.alice.submit(dataset="subset", epochs=0)
        self.assertEqual(err.exception.code, "INVALID_ARGUMENT")
        self.assertIn("epochs", err.exception.message)
        with self.assertRaises(TraindError) as err:
            self.alice.submit(dataset="subset", no_such_field=1)
        self.assertEqual(err.exception.code, "INVALID_ARGUMENT")
        # Bob's token: alice's job does not exist for him.
        with self.assertRaises(TraindError) as err:
            self.bob.job(self.done.id).get()
        self.assertEqual(err.exception.code, "NOT_FOUND")
        self.assertNotIn(self.done.id, [j.id for j in self.bob.list_jobs()])
        with self.assertRaises(TraindError) as err:
            Client(self.d.address, token="wrong").list_jobs()
        self.assertEqual(err.exception.code, "UNAUTHENTICATED")

    def test_pause_resume_and_priority(self):
        job = self.alice.submit(epochs=500, priority="LOW", **SMALL)
        self.assertEqual(pb.Priority.Name(job.get().spec.priority), "LOW")
        self.assertIn(pb.JobState.Name(job.pause().state), ("PAUSED", "QUEUED", "RUNNING"))
        deadline = time.monotonic() + 300
        while job.get().state != pb.PAUSED and time.monotonic() < deadline:
            time.sleep(0.1)  # a running job pauses at its next batch boundary
        self.assertEqual(job.get().state, pb.PAUSED)
        self.assertEqual(job.set_priority("normal").spec.priority, pb.NORMAL)
        with self.assertRaises(TraindError) as err:
            job.set_priority("HIGH")  # above NORMAL: the admin's to allow
        self.assertEqual(err.exception.code, "PERMISSION_DENIED")
        with self.assertRaises(TraindError) as err:
            job.set_priority("soon")
        self.assertEqual(err.exception.code, "INVALID_ARGUMENT")
        self.assertIn(pb.JobState.Name(job.resume().state), ("QUEUED", "RUNNING"))
        with self.assertRaises(TraindError) as err:
            job.resume()
        self.assertEqual(err.exception.code, "FAILED_PRECONDITION")
        job.cancel()
        self.assertEqual(job.wait(timeout=300).state, pb.CANCELLED)


if __name__ == "__main__":
    unittest.main()
