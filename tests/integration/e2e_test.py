"""End to end: the real traind on a loopback port, driven by the real
trainctl, on a small real subset of Caltech-101, checked against torchvision."""
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import unittest

from harness import (of_kind, ENGINE_GOLDEN, TRAINCTL, Daemon, make_subset, read_safetensors,
                     temp_root, write_safetensors)

IMAGE = "64"
BATCH = 8


def seqs(events):
    return [int(e["seq"]) for e in events]


class EndToEndTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = temp_root("traind-e2e-")
        cls.data = os.path.join(cls.root, "data")
        cls.weights = os.path.join(cls.root, "weights")
        os.makedirs(cls.weights)
        cls.source = make_subset(os.path.join(cls.data, "subset"))
        cls.daemon = Daemon(os.path.join(cls.root, "state"), cls.data, cls.weights).start()
        # One scratch job shared by several tests.
        cls.scratch = cls.daemon.submit("--kind=scratch", "--dataset=subset", "--epochs=1",
                                        f"--image_size={IMAGE}", f"--batch_size={BATCH}")
        cls.scratch_events, cls.scratch_watch = cls.daemon.watch(cls.scratch)

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()
        shutil.rmtree(cls.root, ignore_errors=True)

    def test_watch_streams_every_event_in_order(self):
        events = self.scratch_events
        self.assertEqual(self.scratch_watch.returncode, 0, self.scratch_watch.stderr)
        self.assertEqual(seqs(events), list(range(1, len(events) + 1)))
        job = self.daemon.status(self.scratch)
        n_train = int(job["train_images"])
        self.assertEqual(n_train, 32)  # floor(40 * 0.8)
        batches = of_kind(events, "batch")
        self.assertEqual(len(batches), math.ceil(n_train / BATCH))
        self.assertEqual([b.get("batch", 0) for b in batches], list(range(len(batches))))
        epochs = of_kind(events, "epoch")
        self.assertEqual(len(epochs), 1)
        for key in ("train_accuracy", "validation_accuracy"):
            self.assertGreaterEqual(epochs[0].get(key, 0), 0)
            self.assertLessEqual(epochs[0].get(key, 0), 1)
        self.assertTrue(math.isfinite(epochs[0]["train_loss"]))
        # Where the steps' time went, phase by phase (no allreduce: one process).
        phases = [epochs[0][k] for k in ("forward_seconds", "backward_seconds", "update_seconds")]
        self.assertTrue(all(p > 0 for p in phases), epochs[0])
        self.assertNotIn("allreduce_seconds", epochs[0])  # 0: proto3 JSON leaves it out
        self.assertLessEqual(sum(phases), epochs[0]["step_seconds"])
        states = [s["state"] for s in of_kind(events, "state")]
        self.assertEqual(states, ["QUEUED", "RUNNING", "SUCCEEDED"])
        self.assertEqual(job["state"], "SUCCEEDED")
        self.assertEqual(int(job["last_seq"]), len(events))

    def test_late_and_resuming_watchers(self):
        again, _ = self.daemon.watch(self.scratch)
        self.assertEqual(again, self.scratch_events)
        k = 3
        tail, p = self.daemon.watch(self.scratch, after=k)
        self.assertEqual(p.returncode, 0)
        self.assertEqual(seqs(tail), list(range(k + 1, len(self.scratch_events) + 1)))

    def test_human_watch_output(self):
        p = self.daemon.trainctl("watch", self.scratch)
        self.assertIn("epoch 1/1: train loss", p.stdout)
        self.assertRegex(p.stdout, r"\n  time: steps [0-9.]+ s \(forward [0-9.]+, backward [0-9.]+, "
                         r"update [0-9.]+\), waiting for data [0-9.]+ s, validation [0-9.]+ s\n")
        self.assertIn(f"{self.scratch} SUCCEEDED", p.stdout)

    def test_weights_download_verify_and_match_torchvision(self):
        import torch
        import torchvision
        job = self.daemon.status(self.scratch)
        out = os.path.join(self.root, "scratch.pth")
        self.daemon.trainctl("weights", self.scratch, "-o", out)
        with open(out, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), job["weights_sha256"])
        # The safe loader (torch.load's default since PyTorch 2.6) takes it.
        state = torch.load(out, weights_only=True)
        model = torchvision.models.resnet18(num_classes=4)
        result = model.load_state_dict(state, strict=True)
        self.assertEqual(list(result.missing_keys), [])
        self.assertEqual(list(result.unexpected_keys), [])

        # Same logits as the engine on a fixed input, in eval mode.
        torch.manual_seed(0)
        x = torch.randn(2, 3, 64, 64)
        inp = os.path.join(self.root, "input.safetensors")
        res = os.path.join(self.root, "logits.safetensors")
        write_safetensors({"input": x}, inp)
        subprocess.run([ENGINE_GOLDEN, "forward", out, "4", inp, res], check=True)
        model.eval()
        with torch.no_grad():
            want = model(x)
        got = read_safetensors(res)["logits"]
        self.assertLess((got - want).abs().max().item(), 1e-4)

        # The safetensors download holds the same tensors.
        st_out = os.path.join(self.root, "scratch.safetensors")
        self.daemon.trainctl("weights", self.scratch, "-o", st_out, "--format=safetensors")
        st = read_safetensors(st_out)
        self.assertEqual(sorted(st), sorted(state))
        for name, t in state.items():
            self.assertTrue(torch.equal(st[name], t), name)

    def test_finetune_from_torchvision_checkpoint_freezes_early_layers(self):
        import torch
        import torchvision
        torch.manual_seed(1)
        start = torchvision.models.resnet18().state_dict()  # 1000 classes, as ImageNet's
        torch.save(start, os.path.join(self.weights, "resnet18-test.pth"))
        job = self.daemon.submit("--dataset=subset", "--pretrained=resnet18-test.pth",
                                 "--epochs=1", f"--image_size={IMAGE}", f"--batch_size={BATCH}")
        events, p = self.daemon.watch(job)
        self.assertEqual(p.returncode, 0, p.stderr + str(events[-3:]))
        out = os.path.join(self.root, "ft.pth")
        self.daemon.trainctl("weights", job, "-o", out)
        tuned = torch.load(out, weights_only=True)
        self.assertEqual(tuned["fc.weight"].shape, (4, 512))
        # Frozen blocks keep their weights bit for bit; trainable ones move.
        for name in ("conv1.weight", "layer1.0.conv1.weight", "layer2.1.conv2.weight"):
            self.assertTrue(torch.equal(tuned[name], start[name]), name)
        for name in ("layer3.0.conv1.weight", "layer4.1.conv2.weight"):
            self.assertFalse(torch.equal(tuned[name], start[name]), name)
        # BatchNorm runs in training mode everywhere: frozen layers' statistics update.
        self.assertFalse(torch.equal(tuned["bn1.running_mean"], start["bn1.running_mean"]))

        # And a fine-tune that starts from this job's weights.
        child = self.daemon.submit("--dataset=subset", f"--from-job={job}", "--epochs=1",
                                   f"--image_size={IMAGE}", f"--batch_size={BATCH}")
        _, p = self.daemon.watch(child)
        self.assertEqual(p.returncode, 0, p.stderr)

    def test_bad_checkpoints_are_refused_at_submit_with_the_reason(self):
        import io
        import torch
        import torchvision
        good = torchvision.models.resnet18().state_dict()

        def save(name, obj, **kw):
            torch.save(obj, os.path.join(self.weights, name), **kw)

        save("legacy.pth", good, _use_new_zipfile_serialization=False)
        buf = io.BytesIO()
        torch.save(good, buf)
        with open(os.path.join(self.weights, "truncated.pth"), "wb") as f:
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        save("missing.pth", {k: v for k, v in good.items() if not k.startswith("layer4.")})
        save("extra.pth", dict(good, **{"head.weight": torch.zeros(3)}))
        save("shapes.pth", dict(good, **{"conv1.weight": torch.zeros(64, 3, 3, 3)}))

        class Evil:
            def __reduce__(self):
                return (os.system, ("touch " + os.path.join(self.root_dir, "pwned"),))
        Evil.root_dir = self.root
        save("evil.pth", {"conv1.weight": Evil()})
        with open(os.path.join(self.weights, "text.pth"), "w") as f:
            f.write("not a checkpoint")
        cases = {
            "legacy.pth": "legacy",
            "truncated.pth": "truncated",
            "missing.pth": "missing keys [layer4.0.bn1.bias, ",
            "extra.pth": "unexpected keys [head.weight]",
            "shapes.pth": "wrong shapes [conv1.weight",
            "evil.pth": "refusing global",
            "text.pth": "not a PyTorch state_dict",
        }
        for name, phrase in cases.items():
            p = self.daemon.trainctl("submit", "--dataset=subset", f"--pretrained={name}",
                                     check=False)
            self.assertEqual(p.returncode, 2, name)
            self.assertIn("pretrained_file:", p.stderr, name)
            self.assertIn(phrase, p.stderr, name)
        self.assertFalse(os.path.exists(os.path.join(self.root, "pwned")))

    def test_cancel_running_job_within_one_batch(self):
        job = self.daemon.submit("--kind=scratch", "--dataset=subset", "--epochs=200",
                                 f"--image_size={IMAGE}", f"--batch_size={BATCH}")
        env = dict(os.environ, TRAINCTL_SERVER=self.daemon.address)
        watcher = subprocess.Popen([TRAINCTL, "--output=json", "watch", job],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=env)
        events = []
        for line in watcher.stdout:
            events.append(json.loads(line))
            if "batch" in events[-1]:
                self.daemon.trainctl("cancel", job)
                break
        for line in watcher.stdout:
            events.append(json.loads(line))
        rc = watcher.wait(timeout=60)
        watcher.stdout.close()
        watcher.stderr.close()
        self.assertNotEqual(rc, 0)  # the job did not succeed
        states = [s["state"] for s in of_kind(events, "state")]
        self.assertEqual(states[-2:], ["CANCELLING", "CANCELLED"])
        cancel_at = next(i for i, e in enumerate(events)
                         if e.get("state", {}).get("state") == "CANCELLING")
        self.assertLessEqual(len(of_kind(events[cancel_at:], "batch")), 1)
        self.assertEqual(seqs(events), list(range(1, len(events) + 1)))
        p = self.daemon.trainctl("weights", job, "-o", os.path.join(self.root, "x.pth"),
                                 check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("SUCCEEDED", p.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.root, "x.pth")))

    def test_bad_input_is_refused_and_nothing_is_queued(self):
        before = len(self.daemon.trainctl_json("list")[0].get("jobs", []))
        os.symlink("/etc", os.path.join(self.data, "etc-link"))
        cases = [
            (["--dataset=nope"], "dataset"),
            (["--dataset=../data/subset"], "dataset"),
            (["--dataset=/etc"], "dataset"),
            (["--dataset=etc-link"], "dataset"),
            (["--dataset=subset", "--epochs=0"], "epochs"),
            (["--dataset=subset", "--lr=-0.001"], "learning_rate"),
            (["--dataset=subset", "--lr=nan"], "learning_rate"),
            (["--dataset=subset", "--batch_size=0"], "batch_size"),
        ]
        for args, field in cases:
            p = self.daemon.trainctl("submit", "--kind=scratch", *args, check=False)
            self.assertEqual(p.returncode, 2, args)
            self.assertIn(f"{field}:", p.stderr, args)
            self.assertEqual(len(p.stderr.strip().splitlines()), 1, p.stderr)
        # Device and precision are enums: an unknown name is refused before
        # anything is sent (exit 1), naming the flag.
        for flag in ("--device=tpu", "--precision=fp8"):
            p = self.daemon.trainctl("submit", "--kind=scratch", "--dataset=subset", flag,
                                     check=False)
            self.assertEqual(p.returncode, 1, flag)
            self.assertIn(flag.split("=")[0] + ": must be", p.stderr)
        p = self.daemon.trainctl("submit", "--dataset=subset", check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("weights root", p.stderr)
        spec = os.path.join(self.root, "bad.json")
        with open(spec, "w") as f:
            f.write('{"dataset": "subset", "epochs": "many"}')
        p = self.daemon.trainctl("submit", "-f", spec, check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("not a valid JobSpec", p.stderr)
        after = len(self.daemon.trainctl_json("list")[0].get("jobs", []))
        self.assertEqual(before, after)
        p = self.daemon.trainctl("status", "job-999999", check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("no job", p.stderr)

    def test_job_file_and_idempotent_submit(self):
        spec = os.path.join(self.root, "job.json")
        with open(spec, "w") as f:
            json.dump({"kind": "SCRATCH", "dataset": "subset", "epochs": 1, "image_size": 32,
                       "batch_size": BATCH}, f)
        a = self.daemon.submit("-f", spec, "--request_id=same-key")
        b = self.daemon.submit("-f", spec, "--request_id=same-key")
        self.assertEqual(a, b)
        job = self.daemon.status(a)
        self.assertEqual(job["spec"]["image_size"], 32)
        self.assertEqual(job["spec"]["augmentation"]["hue"], 0.1)  # defaults filled in
        _, p = self.daemon.watch(a)
        self.assertEqual(p.returncode, 0)


class RestartTest(unittest.TestCase):
    def setUp(self):
        self.root = temp_root("traind-restart-")
        self.data = os.path.join(self.root, "data")
        make_subset(os.path.join(self.data, "subset"))
        self.args = (os.path.join(self.root, "state"), self.data, os.path.join(self.root, "w"))
        os.makedirs(self.args[2])

    def tearDown(self):
        shutil.rmtree(self.root, ignore_errors=True)

    def test_history_and_weights_survive_restart_and_watch_reconnects(self):
        d = Daemon(*self.args).start()
        done = d.submit("--kind=scratch", "--dataset=subset", "--epochs=1",
                        f"--image_size={IMAGE}", f"--batch_size={BATCH}")
        history, p = d.watch(done)
        self.assertEqual(p.returncode, 0)
        sha = d.status(done)["weights_sha256"]

        long_job = d.submit("--kind=scratch", "--dataset=subset", "--epochs=3",
                            f"--image_size={IMAGE}", f"--batch_size={BATCH}")
        env = dict(os.environ, TRAINCTL_SERVER=d.address)
        watcher = subprocess.Popen([TRAINCTL, "--output=json", "--reconnect_seconds=120",
                                    "watch", long_job], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env)
        events = []
        for line in watcher.stdout:
            events.append(json.loads(line))
            if "batch" in events[-1]:
                break
        # SIGTERM: a graceful stop that interrupts the running job.
        self.assertEqual(d.stop(), 0)
        d2 = Daemon(*self.args, listen=d.address).start()
        for line in watcher.stdout:
            events.append(json.loads(line))
        self.assertEqual(watcher.wait(timeout=600), 0, watcher.stderr.read())
        watcher.stdout.close()
        watcher.stderr.close()
        # The watcher resumed from its last sequence number: no gap, no repeat.
        self.assertEqual(seqs(events), list(range(1, len(events) + 1)))
        states = [s["state"] for s in of_kind(events, "state")]
        self.assertEqual(states[0:2], ["QUEUED", "RUNNING"])
        self.assertIn("QUEUED", states[2:])
        self.assertEqual(states[-1], "SUCCEEDED")

        again, _ = d2.watch(done)
        self.assertEqual(again, history)
        out = os.path.join(self.root, "after-restart.pth")
        d2.trainctl("weights", done, "-o", out)
        with open(out, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), sha)
        jobs = d2.trainctl_json("list")[0]["jobs"]
        self.assertEqual([j["id"] for j in jobs], [done, long_job])
        self.assertEqual(d2.stop(), 0)

    def test_daemon_killed_mid_epoch_loses_nothing_committed(self):
        d = Daemon(*self.args).start()
        done = d.submit("--kind=scratch", "--dataset=subset", "--epochs=1",
                        f"--image_size={IMAGE}", f"--batch_size={BATCH}")
        history, _ = d.watch(done)
        job = d.submit("--kind=scratch", "--dataset=subset", "--epochs=50",
                       f"--image_size={IMAGE}", f"--batch_size={BATCH}")
        env = dict(os.environ, TRAINCTL_SERVER=d.address)
        watcher = subprocess.Popen([TRAINCTL, "--output=json", "watch", job],
                                   stdout=subprocess.PIPE, text=True, env=env)
        seen = []
        for line in watcher.stdout:
            seen.append(json.loads(line))
            if len(of_kind(seen, "batch")) >= 3:
                break
        d.stop(sig=signal.SIGKILL)  # no shutdown path at all
        watcher.kill()
        watcher.wait()
        watcher.stdout.close()
        d2 = Daemon(*self.args).start()
        # Everything the watcher saw was committed; the job is queued again.
        replay, _ = d2.watch(done)
        self.assertEqual(replay, history)
        d2.trainctl("cancel", job)
        events, _ = d2.watch(job)
        self.assertEqual(events[:len(seen)], seen)
        self.assertEqual(seqs(events), list(range(1, len(events) + 1)))
        states = [s["state"] for s in of_kind(events, "state")]
        self.assertEqual(states[:2], ["QUEUED", "RUNNING"])
        self.assertIn("QUEUED", states[2:])  # re-queued by the restart
        self.assertEqual(states[-1], "CANCELLED")
        out = os.path.join(self.root, "w.pth")
        d2.trainctl("weights", done, "-o", out)
        self.assertEqual(d2.stop(), 0)


if __name__ == "__main__":
    unittest.main()
