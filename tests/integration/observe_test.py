"""Seeing the training: TensorBoard event files read back by an independent
reader (Debian's python3-crc32c for the checksums, a hand-written protobuf
wire decoder for the records), checked against the job's event stream."""
import glob
import os
import shutil
import struct
import unittest

import crc32c

from harness import Daemon, make_subset, temp_root


def masked_crc(data):
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path):
    """TFRecord framing, every checksum verified."""
    with open(path, "rb") as f:
        raw = f.read()
    pos, out = 0, []
    while pos < len(raw):
        header = raw[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", raw[pos + 8:pos + 12])
        assert length_crc == masked_crc(header), f"{path}: bad length CRC at {pos}"
        payload = raw[pos + 12:pos + 12 + length]
        (payload_crc,) = struct.unpack("<I", raw[pos + 12 + length:pos + 16 + length])
        assert payload_crc == masked_crc(payload), f"{path}: bad payload CRC at {pos}"
        out.append(payload)
        pos += 16 + length
    assert pos == len(raw), f"{path}: trailing bytes"
    return out


def fields(buf):
    """(field number, wire type, value) of a protobuf message."""
    pos = 0

    def varint():
        nonlocal pos
        shift = value = 0
        while True:
            b = buf[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value

    while pos < len(buf):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, wire, varint()
        elif wire == 1:
            yield number, wire, buf[pos:pos + 8]
            pos += 8
        elif wire == 2:
            n = varint()
            yield number, wire, buf[pos:pos + n]
            pos += n
        elif wire == 5:
            yield number, wire, buf[pos:pos + 4]
            pos += 4
        else:
            raise AssertionError(f"unexpected wire type {wire}")


def parse_event(payload):
    """tensorflow.Event: wall_time=1 (double), step=2, file_version=3, summary=5."""
    event = {"step": 0, "values": {}}
    for number, _, value in fields(payload):
        if number == 1:
            event["wall_time"] = struct.unpack("<d", value)[0]
        elif number == 2:
            event["step"] = value
        elif number == 3:
            event["file_version"] = value.decode()
        elif number == 5:
            for n, _, v in fields(value):
                assert n == 1
                tag, simple = None, None
                for vn, _, vv in fields(v):
                    if vn == 1:
                        tag = vv.decode()
                    elif vn == 2:
                        simple = struct.unpack("<f", vv)[0]
                event["values"][tag] = simple
    return event


def read_scalars(folder):
    """{tag: {step: value}} from every event file in folder (not sub-folders)."""
    scalars = {}
    files = sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*")))
    assert files, f"no event files in {folder}"
    for path in files:
        events = [parse_event(p) for p in read_records(path)]
        assert events[0].get("file_version") == "brain.Event:2", path
        for e in events[1:]:
            for tag, value in e["values"].items():
                scalars.setdefault(tag, {})[e["step"]] = value
    return scalars


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


class ObserveTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = temp_root("traind-observe-")
        cls.data = os.path.join(cls.root, "data")
        os.makedirs(os.path.join(cls.root, "w"))
        make_subset(os.path.join(cls.data, "subset"))
        cls.state = os.path.join(cls.root, "state")
        cls.d = Daemon(cls.state, cls.data, os.path.join(cls.root, "w"),
                       extra=["--metrics_listen=127.0.0.1:0"]).start()
        cls.job = cls.d.submit("--kind=scratch", "--dataset=subset", "--epochs=2",
                               "--image_size=64", "--batch_size=8")
        cls.events, _ = cls.d.watch(cls.job)

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()
        shutil.rmtree(cls.root, ignore_errors=True)

    def test_tensorboard_files_hold_exactly_the_streamed_metrics(self):
        logdir = self.d.trainctl("tensorboard").stdout.split("--logdir ")[1].strip()
        self.assertEqual(logdir, os.path.join(self.state, "runs"))
        job_dir = self.d.status(self.job)["tensorboard_dir"]
        self.assertEqual(job_dir, os.path.join(logdir, self.job))
        scalars = read_scalars(job_dir)
        batches = [e["batch"] for e in self.events if "batch" in e]
        epochs = [e["epoch"] for e in self.events if "epoch" in e]
        self.assertEqual(len(batches), 8)
        self.assertEqual(scalars["Loss/train_batch"],
                         {int(b.get("global_step", 0)): f32(b["loss"]) for b in batches})
        for tag, key in (("Loss/train_epoch", "train_loss"),
                         ("Accuracy/train_epoch", "train_accuracy"),
                         ("Loss/validation_epoch", "validation_loss"),
                         ("Accuracy/validation_epoch", "validation_accuracy"),
                         ("Throughput/images_per_second", "images_per_second")):
            self.assertEqual(scalars[tag], {e["epoch"]: f32(e.get(key, 0.0)) for e in epochs}, tag)
        self.assertEqual(scalars["LearningRate/classifier"], {1: f32(1e-3), 2: f32(1e-3)})


    def test_plot_draws_the_history(self):
        out = os.path.join(self.root, "curves.png")
        p = self.d.trainctl("plot", self.job, "-o", out)
        self.assertIn("1280x480", p.stdout)
        with open(out, "rb") as f:
            head = f.read(24)
        self.assertEqual(head[:8], b"\x89PNG\r\n\x1a\n")
        self.assertEqual(struct.unpack(">II", head[16:24]), (1280, 480))
        p = self.d.trainctl("plot", self.job, "-o", "/nonexistent-dir/x.png", check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("cannot write", p.stderr)

    def test_report_matches_the_last_validation_pass(self):
        job = self.d.status(self.job)
        ev = job["evaluation"]
        last = [e["epoch"] for e in self.events if "epoch" in e][-1]
        self.assertAlmostEqual(ev["top1_accuracy"], last["validation_accuracy"], places=12)
        n = len(job["class_names"])
        confusion = [int(c) for c in ev["confusion"]]
        self.assertEqual(len(confusion), n * n)
        self.assertEqual(sum(confusion), job["validation_images"])
        self.assertEqual(sum(confusion[k * n + k] for k in range(n)),
                         round(ev["top1_accuracy"] * job["validation_images"]))
        self.assertEqual(ev["top5_accuracy"], 1.0)  # 4 classes: always among the top 5
        for k, c in enumerate(ev["classes"]):
            self.assertEqual(c["name"], job["class_names"][k])
            self.assertEqual(int(c.get("support", 0)), sum(confusion[k * n:(k + 1) * n]))
        png = os.path.join(self.root, "confusion.png")
        out = self.d.trainctl("report", self.job, "--confusion", png).stdout
        self.assertIn("top-1", out)
        self.assertIn("worst classes", out)
        for name in job["class_names"]:
            self.assertIn(name, out)
        self.assertTrue(os.path.getsize(png) > 1000)

    def test_classify_agrees_with_torchvision_on_the_trained_weights(self):
        import torch
        import torchvision
        from PIL import Image
        weights = os.path.join(self.root, "w.pth")
        self.d.trainctl("weights", self.job, "-o", weights)
        job = self.d.status(self.job)
        names = job["class_names"]
        images = sorted(glob.glob(os.path.join(self.data, "subset", names[1], "*")))[:3]
        out = self.d.trainctl_json("classify", self.job, *images, "--top=3")[0]["results"]
        self.assertEqual(len(out), 3)
        model = torchvision.models.resnet18(num_classes=len(names))
        model.load_state_dict(torch.load(weights, weights_only=True))
        model.eval()
        mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
        for path, result in zip(images, out):
            img = Image.open(path).convert("RGB").resize((64, 64), Image.BILINEAR)
            x = torchvision.transforms.functional.to_tensor(img)
            with torch.no_grad():
                probs = torch.softmax(model(((x - mean) / std).unsqueeze(0)), 1)[0]
            top = torch.topk(probs, 3)
            preds = result["predictions"]
            self.assertEqual([p.get("class_index", 0) for p in preds], top.indices.tolist())
            self.assertEqual([p["class_name"] for p in preds],
                             [names[i] for i in top.indices.tolist()])
            for p, v in zip(preds, top.values.tolist()):
                self.assertAlmostEqual(p["probability"], v, delta=1e-3)
        bad = os.path.join(self.root, "bad.jpg")
        with open(bad, "wb") as f:
            f.write(b"not an image at all")
        p = self.d.trainctl("classify", self.job, images[0], bad, check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("images[1]: not a JPEG, PNG", p.stderr)

    def test_metrics_endpoint_during_a_job(self):
        import re
        import time
        import urllib.request
        job = self.d.submit("--kind=scratch", "--dataset=subset", "--epochs=30",
                            "--image_size=64", "--batch_size=8")
        deadline = time.time() + 120
        while True:
            text = urllib.request.urlopen(self.d.metrics_url, timeout=10).read().decode()
            if f'traind_job_images_per_second{{job="{job}"}}' in text and \
                    not re.search(rf'images_per_second{{job="{job}"}} 0\.000', text):
                break
            self.assertLess(time.time(), deadline)
            time.sleep(0.2)
        self.d.trainctl("cancel", job)
        samples = {}
        line_re = re.compile(r'^([a-z_]+)(\{[^}]*\})? (\S+)$')
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = line_re.match(line)
            self.assertIsNotNone(m, line)
            samples[m.group(1) + (m.group(2) or "")] = float(m.group(3))
        self.assertEqual(samples["traind_jobs_running"], 1)
        self.assertEqual(samples["traind_slots_in_use"], 1)
        self.assertEqual(samples["traind_slots"], 1)  # --workers by default
        self.assertGreater(samples[f'traind_job_images_per_second{{job="{job}"}}'], 0)
        self.assertGreaterEqual(samples['traind_rpc_requests_total{method="SubmitJob",code="OK"}'], 2)
        self.assertGreater(samples["traind_events_streamed_total"], 0)
        buckets = [v for k, v in samples.items()
                   if k.startswith('traind_rpc_latency_seconds_bucket{method="GetJob"')]
        self.assertEqual(buckets, sorted(buckets))
        self.assertEqual(buckets[-1], samples['traind_rpc_latency_seconds_count{method="GetJob"}'])


if __name__ == "__main__":
    unittest.main()
