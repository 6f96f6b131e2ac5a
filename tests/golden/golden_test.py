"""Golden tests: the engine against torchvision and the reference recipe's
PyTorch code (Debian's python3-torch / python3-torchvision)."""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../integration"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../bench"))
from reference_recipe import recipe_optimizer  # noqa: E402
from harness import (CALTECH, ENGINE_GOLDEN, TRAINCTL, adam_first_step_gaps,  # noqa: E402
                     read_safetensors, write_safetensors)

TOL = 1e-4


def golden(*args):
    return subprocess.run([ENGINE_GOLDEN, *map(str, args)], check=True, capture_output=True,
                          text=True).stdout


def randomized_resnet(num_classes, seed):
    """A torchvision ResNet-18 with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=num_classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


class GoldenTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(2)
        cls.tmp = tempfile.mkdtemp(prefix="traind-golden-")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.tmp, name)

    def max_diff(self, a, b):
        return (a.double() - b.double()).abs().max().item()

    def test_model_matches_torchvision_in_eval_and_train_mode(self):
        model = randomized_resnet(10, seed=1)
        torch.save(model.state_dict(), self.path("m.pth"))
        torch.manual_seed(2)
        x = torch.randn(4, 3, 128, 128)
        write_safetensors({"input": x}, self.path("x.safetensors"))

        golden("forward", self.path("m.pth"), 10, self.path("x.safetensors"),
               self.path("eval.safetensors"))
        model.eval()
        with torch.no_grad():
            want = model(x)
        got = read_safetensors(self.path("eval.safetensors"))["logits"]
        self.assertLess(self.max_diff(got, want), TOL)

        golden("forward", self.path("m.pth"), 10, self.path("x.safetensors"),
               self.path("train.safetensors"), "train")
        model.train()
        with torch.no_grad():
            want = model(x)
        got = read_safetensors(self.path("train.safetensors"))
        self.assertLess(self.max_diff(got["logits"], want), TOL)
        stats = {k: v for k, v in model.state_dict().items() if "running_" in k}
        self.assertEqual(len(stats), 40)
        for name, value in stats.items():
            self.assertLess(self.max_diff(got[name], value), TOL, name)

    def test_served_weights_load_in_torch_safe_loader(self):
        """What traind serves opens with torch.load(weights_only=True), the
        default since PyTorch 2.6, and loads strictly into torchvision."""
        model = randomized_resnet(7, seed=6)
        model.layer1[0].bn1.num_batches_tracked.fill_(123)
        want = model.state_dict()
        torch.save(want, self.path("in.pth"))
        golden("export", self.path("in.pth"), 7, self.path("served.pth"))
        got = torch.load(self.path("served.pth"), weights_only=True)
        self.assertEqual(type(got).__name__, "OrderedDict")
        self.assertEqual(list(got), list(want))  # torchvision's order
        for name, value in want.items():
            self.assertEqual(got[name].dtype, value.dtype, name)
            self.assertEqual(got[name].stride(), value.stride(), name)
            self.assertTrue(torch.equal(got[name], value), name)
        fresh = torchvision.models.resnet18(num_classes=7)
        fresh.load_state_dict(got, strict=True)
        # Saved again by torch itself: the same archive records.
        import zipfile
        torch.save(got, self.path("resaved.pth"))
        names = lambda p: sorted(n.split("/", 1)[1] for n in zipfile.ZipFile(p).namelist())
        self.assertLessEqual(set(names(self.path("resaved.pth"))) - {".data/version", ".data/serialization_id"},
                             set(names(self.path("served.pth"))))

    def assert_adam_step_close(self, name, got, want, grad, exact, lr):
        """One Adam step of a parameter within TOL of the reference's, except
        where the reference's gradient is within rounding of zero: there up
        to twice the learning rate (harness.adam_first_step_gaps: measured
        against the gradient in float64, exact). Seen: at most 22 weights of a tensor more than TOL apart,
        all with float64 gradients below 0.53 times that error; the others
        within 3.5e-7."""
        clear, rounding = adam_first_step_gaps(got, want, grad, exact)
        self.assertLess(clear, TOL, name)
        self.assertLessEqual(rounding, 2 * lr + TOL, name)

    def one_step(self, kind):
        num_classes = 5
        model = randomized_resnet(num_classes, seed=3)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        torch.save(model.state_dict(), self.path(f"{kind}.pth"))
        torch.manual_seed(4)
        x = torch.randn(8, 3, 64, 64)
        y = torch.randint(0, num_classes, (8,))
        write_safetensors({"input": x, "labels": y}, self.path(f"{kind}-batch.safetensors"))
        golden("step", kind, self.path(f"{kind}.pth"), num_classes,
               self.path(f"{kind}-batch.safetensors"), self.path(f"{kind}-after.safetensors"))
        got = read_safetensors(self.path(f"{kind}-after.safetensors"))

        # The reference recipe's code.
        opt = recipe_optimizer(model, kind)
        model.train()
        opt.zero_grad()
        torch.nn.CrossEntropyLoss()(model(x), y).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
        lr = {n: lrs[id(p)] for n, p in model.named_parameters() if id(p) in lrs}
        opt.step()
        want = model.state_dict()
        # The same gradients in float64: how far the reference's own are from
        # exact.
        exact_model = randomized_resnet(num_classes, seed=3).double()
        exact_model.train()
        torch.nn.CrossEntropyLoss()(exact_model(x.double()), y).backward()
        exact = {n: p.grad for n, p in exact_model.named_parameters()}

        self.assertEqual(sorted(got), sorted(want))
        moved = 0
        for name, value in want.items():
            if name in grads:
                self.assert_adam_step_close(name, got[name], value, grads[name], exact[name],
                                            lr[name])
            else:
                self.assertLess(self.max_diff(got[name], value), TOL, name)
            trainable = kind == "scratch" or name.startswith(("layer3", "layer4", "fc"))
            is_param = not any(s in name for s in ("running_", "num_batches"))
            if is_param and not trainable:
                self.assertTrue(torch.equal(got[name], start[name]), f"{name} must stay frozen")
            if is_param and trainable and not torch.equal(got[name], start[name]):
                moved += 1
        return moved

    def test_one_finetune_step_matches_the_recipe(self):
        moved = self.one_step("finetune")
        self.assertGreater(moved, 20)  # layer3, layer4 and fc parameters changed

    def test_one_scratch_step_matches_the_recipe(self):
        moved = self.one_step("scratch")
        self.assertGreater(moved, 55)

    def test_initialisation_follows_the_recipe(self):
        model = randomized_resnet(1000, seed=5)
        torch.save(model.state_dict(), self.path("imagenet.pth"))
        golden("init", "finetune", self.path("imagenet.pth"), 101, 0, self.path("ft.safetensors"))
        ft = read_safetensors(self.path("ft.safetensors"))
        for name, value in model.state_dict().items():
            if not name.startswith("fc."):
                self.assertTrue(torch.equal(ft[name], value), name)
        bound = (6.0 / (512 + 101)) ** 0.5
        w = ft["fc.weight"]
        self.assertEqual(tuple(w.shape), (101, 512))
        self.assertLessEqual(w.abs().max().item(), bound)
        self.assertAlmostEqual(w.std().item(), bound / 3 ** 0.5, delta=0.05 * bound)
        self.assertLessEqual(ft["fc.bias"].abs().max().item(), 1 / 512 ** 0.5)  # Linear default

        golden("init", "scratch", "-", 101, 0, self.path("scratch.safetensors"))
        sc = read_safetensors(self.path("scratch.safetensors"))
        for name, value in sc.items():
            if value.dim() == 4 or name == "fc.weight":
                fan_out, fan_in = value.shape[0], value.shape[1]
                rf = value[0][0].numel() if value.dim() == 4 else 1
                bound = (6.0 / (fan_in * rf + fan_out * rf)) ** 0.5
                self.assertLessEqual(value.abs().max().item(), bound + 1e-7, name)
                self.assertAlmostEqual(value.std().item(), bound / 3 ** 0.5,
                                       delta=0.1 * bound, msg=name)
        self.assertEqual(sc["fc.bias"].abs().max().item(), 0.0)
        self.assertTrue(torch.equal(sc["bn1.weight"], torch.ones(64)))

    def test_split_is_exactly_random_split(self):
        root = CALTECH
        if not os.path.isdir(root):
            root = self.path("demo")
            subprocess.run([TRAINCTL, "demo-data", root, "--per_class=25"], check=True)

        class Folder(torchvision.datasets.ImageFolder):
            def find_classes(self, directory):
                classes = sorted(e.name for e in os.scandir(directory)
                                 if e.is_dir() and e.name != "BACKGROUND_Google")
                return classes, {c: i for i, c in enumerate(classes)}

        ds = Folder(root)
        n_train = int(len(ds) * 0.8)
        _, val = torch.utils.data.random_split(
            ds, [n_train, len(ds) - n_train], generator=torch.Generator().manual_seed(0))
        want = [os.path.relpath(ds.samples[i][0], root) for i in val.indices]
        got = golden("split", root, 0, 0.8).splitlines()
        if root == CALTECH:
            self.assertEqual(len(ds), 8677)
            self.assertEqual(len(want), 1736)
        self.assertEqual(got, want)

    def test_transforms_match_torchvision_functional(self):
        """Each op at a fixed parameter on real images, in 0..255 units."""
        if os.path.isdir(CALTECH):
            classes = sorted(os.listdir(CALTECH))[1::10]
            files = [os.path.join(CALTECH, c, sorted(os.listdir(os.path.join(CALTECH, c)))[0])
                     for c in classes]
        else:
            demo = self.path("tdemo")
            subprocess.run([TRAINCTL, "demo-data", demo, "--per_class=3"], check=True)
            files = [os.path.join(demo, c, "0000.jpg") for c in sorted(os.listdir(demo))]
        # op: (torchvision functional, engine parameter, mean tolerance, max tolerance)
        ops = {
            "hflip": (TF.hflip, 0, 0.0, 0),
            # PIL's rotation takes a 16.16 fixed-point path: a few pixels on
            # the edge of the rotated content land on the other neighbour.
            "rotate": (lambda im: TF.rotate(im, 7.5), 7.5, 0.05, 255),
            "rotate_neg": (lambda im: TF.rotate(im, -9.0), -9.0, 0.05, 255),
            "brightness": (lambda im: TF.adjust_brightness(im, 1.3), 1.3, 0.0, 0),
            "contrast": (lambda im: TF.adjust_contrast(im, 0.7), 0.7, 0.0, 0),
            "saturation": (lambda im: TF.adjust_saturation(im, 1.4), 1.4, 0.0, 0),
            "desaturate": (lambda im: TF.adjust_saturation(im, 0.8), 0.8, 0.0, 0),
            "hue": (lambda im: TF.adjust_hue(im, 0.08), 0.08, 0.02, 3),
            "hue_neg": (lambda im: TF.adjust_hue(im, -0.1), -0.1, 0.02, 3),
        }
        report = []
        worst = {op: [0.0, 0] for op in ["resize", *ops]}
        for i, f in enumerate(files):
            pil = Image.open(f).convert("RGB")
            resized = TF.resize(pil, [128, 128])
            golden("transform", "resize", 128, f, self.path(f"r{i}.png"))
            got = np.asarray(Image.open(self.path(f"r{i}.png")), dtype=np.int16)
            d = np.abs(got - np.asarray(resized, dtype=np.int16))
            worst["resize"] = [max(worst["resize"][0], d.mean()), max(worst["resize"][1], d.max())]
            src = self.path(f"s{i}.png")
            resized.save(src)
            for op, (fn, param, _, _) in ops.items():
                out = self.path(f"{op}{i}.png")
                golden("transform", op.split("_")[0].replace("desaturate", "saturation"),
                       param, src, out)
                got = np.asarray(Image.open(out), dtype=np.int16)
                d = np.abs(got - np.asarray(fn(Image.open(src)), dtype=np.int16))
                worst[op] = [max(worst[op][0], d.mean()), max(worst[op][1], int(d.max()))]
        for op, (mean, mx) in worst.items():
            report.append(f"{op:<11} mean {mean:.3f} max {mx}")
        print("\nper-op worst difference over", len(files), "images (0..255 units):\n  " +
              "\n  ".join(report), file=sys.stderr)
        # PIL's antialiased bilinear, reimplemented: equal up to JPEG decoding.
        self.assertLessEqual(worst["resize"][0], 0.05)
        self.assertLessEqual(worst["resize"][1], 2)
        for op, (_, _, mean_tol, max_tol) in ops.items():
            self.assertLessEqual(worst[op][0], mean_tol, op)
            self.assertLessEqual(worst[op][1], max_tol, op)


if __name__ == "__main__":
    unittest.main()
