"""Whole jobs beside other work, against the same jobs alone, in one run.

    /usr/bin/python3 bench/job_contention.py [--kinds scratch,finetune]
        [--precision fp32|bf16] [--image_size 128] [--epochs 1] [--classes 101]
        [--rounds 2] [--share 0.36] [--quota 1.5] [--dataset DIR]
        [--traind-arg=--flag=value ...]

bench/contention.sh times the engine's steps on synthetic batches; this
times what a user runs: the real traind, real jobs on real images (the first
CLASSES classes of Caltech-101, copied into a data root of its own), each
condition a job of its own on one daemon, from the epoch metrics the daemon
reports (step seconds, and their forward, backward and update parts).

Conditions, each round running every kind in each, back to back:
  alone      nothing else of ours on the machine
  neighbour  bench/neighbour.py burning SHARE of a core in slices of at most
             5 ms, at random moments
  quota      the daemon moved into a cgroup with a CFS quota of QUOTA cores
             (what a Kubernetes CPU limit is) for that job, and back out
             after; the cgroup is removed at the end. Skipped, with the
             reason, where no cgroup cpu controller can be written.
Prints each job's figures, then per kind and condition the ratio of its
step time alone to its step time there (the median over the rounds, each
round's in brackets), the same for each phase, and the fair share (the
cores left to the job: 1 - neighbour's measured share / cores, quota /
cores). A fine-tune starts from a random ResNet-18 (timing does not depend
on the weights). The machine is shared and noisy: compare ratios.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "../tests/integration"))
for name, path in (("TRAIND", "server/traind"), ("TRAINCTL", "client/trainctl")):
    os.environ.setdefault(name, os.path.join(HERE, "../build", path))

from harness import Daemon, CALTECH  # noqa: E402
from load_bench import cpu_seconds  # noqa: E402  (CPU seconds of a list of processes)

PHASES = ("forward", "backward", "update")


class Quota:
    """A cgroup with a CFS quota (v2 cpu.max, else v1's cpu hierarchy)."""

    def __init__(self, cores):
        self.path, self.root, self.why = None, None, None
        period = 100000
        quota = int(cores * period)
        name = f"traind-job-contention-{os.getpid()}"
        try:
            with open("/sys/fs/cgroup/cgroup.subtree_control") as f:
                v2 = "cpu" in f.read().split()
        except OSError:
            v2 = False
        try:
            if v2:
                self.root = "/sys/fs/cgroup"
                self.path = os.path.join(self.root, name)
                os.mkdir(self.path)
                with open(os.path.join(self.path, "cpu.max"), "w") as f:
                    f.write(f"{quota} {period}")
            elif os.access("/sys/fs/cgroup/cpu/cgroup.procs", os.W_OK):
                self.root = "/sys/fs/cgroup/cpu"
                self.path = os.path.join(self.root, name)
                os.mkdir(self.path)
                with open(os.path.join(self.path, "cpu.cfs_period_us"), "w") as f:
                    f.write(str(period))
                with open(os.path.join(self.path, "cpu.cfs_quota_us"), "w") as f:
                    f.write(str(quota))
            else:
                self.why = "no writable cgroup cpu controller here"
        except OSError as e:
            self.why = f"cannot make a cgroup with a quota: {e}"
            self.remove()

    def move(self, pid, inside):
        with open(os.path.join(self.path if inside else self.root, "cgroup.procs"), "w") as f:
            f.write(str(pid))

    def remove(self):
        if self.path and os.path.isdir(self.path):
            try:
                os.rmdir(self.path)
            except OSError:
                pass
        self.path = None


def make_dataset(source, dest, classes):
    """The first `classes` class folders of `source` (sorted), copied:
    symlinks out of the data root are refused."""
    names = sorted(n for n in os.listdir(source) if os.path.isdir(os.path.join(source, n)))
    names = [n for n in names if n != "BACKGROUND_Google"][:classes]
    for n in names:
        shutil.copytree(os.path.join(source, n), os.path.join(dest, n))
    return len(names)


def make_weights(path):
    """A random ResNet-18 state_dict, as a fine-tune's starting weights."""
    code = ("import sys, torch, torchvision; torch.manual_seed(0); "
            "torch.save(torchvision.models.resnet18().state_dict(), sys.argv[1])")
    subprocess.run(["/usr/bin/python3", "-c", code, path], check=True)


def run_job(d, args, kind):
    spec = [f"--kind={kind}", "--dataset=set", f"--epochs={args.epochs}",
            f"--image_size={args.image_size}", f"--precision={args.precision}"]
    if kind == "finetune":
        spec.append("--pretrained=start.pth")
    job = d.submit(*spec)
    d.trainctl("watch", job)
    status = d.status(job)
    if status["state"] != "SUCCEEDED":
        raise RuntimeError(f"{job} {status['state']}: {status.get('error', '')}")
    latest = status["latest"]
    # An epoch's figures; with several epochs, the last one's.
    fig = {"steps": latest["step_seconds"], "img/s": latest["images_per_second"]}
    for p in PHASES:
        fig[p] = latest.get(f"{p}_seconds", 0.0)
    return fig


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kinds", default="scratch,finetune")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--image_size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--classes", type=int, default=101)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--share", type=float, default=0.36)
    ap.add_argument("--quota", type=float, default=1.5)
    ap.add_argument("--dataset", default=CALTECH)
    ap.add_argument("--traind-arg", action="append", default=[])
    args = ap.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    cores = len(os.sched_getaffinity(0))

    root = tempfile.mkdtemp(prefix="traind-job-contention-")
    data, weights = os.path.join(root, "data"), os.path.join(root, "w")
    os.makedirs(os.path.join(data, "set"))
    os.makedirs(weights)
    classes = make_dataset(args.dataset, os.path.join(data, "set"), args.classes)
    if "finetune" in kinds:
        make_weights(os.path.join(weights, "start.pth"))
    quota = Quota(args.quota)
    conditions = ["alone", "neighbour"] + (["quota"] if quota.path else [])
    if not quota.path:
        print(f"job_contention: {quota.why}; the quota condition is skipped", file=sys.stderr)
    d = Daemon(os.path.join(root, "state"), data, weights, extra=args.traind_arg).start()
    results = {}  # (kind, condition) -> [figures per round]
    shares = []
    try:
        print(f"job_contention: {classes} classes of {args.dataset}, {args.image_size} px, "
              f"{args.precision}, {args.epochs} epoch(s) a job, {args.rounds} round(s), "
              f"{cores} cores; neighbour {args.share} of a core in <= 5 ms slices; "
              f"quota {args.quota} cores; traind {args.traind_arg}")
        run_job(d, args, kinds[0])  # decodes the images once, for every job after it
        for r in range(1, args.rounds + 1):
            for kind in kinds:
                for cond in conditions:
                    neighbour = None
                    if cond == "neighbour":
                        neighbour = subprocess.Popen(
                            [sys.executable, os.path.join(HERE, "neighbour.py"),
                             "--share", str(args.share)])
                        t0, c0 = time.monotonic(), cpu_seconds([neighbour.pid])
                    elif cond == "quota":
                        quota.move(d.proc.pid, inside=True)
                    try:
                        fig = run_job(d, args, kind)
                    finally:
                        if neighbour:
                            shares.append((cpu_seconds([neighbour.pid]) - c0) /
                                          max(time.monotonic() - t0, 1e-6))
                            neighbour.kill()
                            neighbour.wait()
                        elif cond == "quota":
                            quota.move(d.proc.pid, inside=False)
                    results.setdefault((kind, cond), []).append(fig)
                    print(f"round {r} {kind:8} {cond:9}: {fig['steps']:6.1f} s of steps "
                          f"({fig['img/s']:.1f} img/s): " +
                          ", ".join(f"{p} {fig[p]:.1f}" for p in PHASES), flush=True)
    finally:
        d.stop()
        quota.remove()
        shutil.rmtree(root, ignore_errors=True)

    share = statistics.median(shares) if shares else args.share
    fair = {"neighbour": 1 - share / cores, "quota": args.quota / cores}
    for kind in kinds:
        alone = results[(kind, "alone")]
        for cond in conditions[1:]:
            runs = results[(kind, cond)]

            def ratios(key):
                return [a[key] / b[key] if b[key] > 0 else float("nan")
                        for a, b in zip(alone, runs)]

            steps = ratios("steps")
            line = (f"{kind:8} {cond:9}: {statistics.median(steps):.2f}x of alone "
                    f"({', '.join(f'{x:.2f}x' for x in steps)}), fair {fair[cond]:.2f}; ")
            line += ", ".join(f"{p} {statistics.median(ratios(p)):.2f}x" for p in PHASES)
            print(line)
    if shares:
        print(f"neighbour's measured share: {share:.2f} of a core (median over its jobs)")


if __name__ == "__main__":
    main()
