"""World size 2 against 1 on the same cores: the real traind trains the same
scratch job on a Caltech-101 subset once in one process (2 intra-op threads)
and once as two `traind worker` ranks (1 thread each, gradients averaged by a
Gloo allreduce per step), and prints each epoch's training images/s, the
step time and their ratio.

    /usr/bin/python3 bench/distributed_bench.py [--classes 20] [--per_class 40]
        [--image_size 128] [--batch_size 32] [--epochs 2]

On one 2-core machine this shows the collective's overhead, not a speed-up:
both runs share the same two cores.
"""
import argparse
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "../tests/integration"))
for name, path in (("TRAIND", "server/traind"), ("TRAINCTL", "client/trainctl")):
    os.environ.setdefault(name, os.path.join(HERE, "../build", path))

from harness import CALTECH, Daemon  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--per_class", type=int, default=40)
    ap.add_argument("--image_size", type=int, default=128)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="traind-distbench-")
    try:
        data = os.path.join(root, "data", "subset")
        for cls in sorted(os.listdir(CALTECH))[1:1 + args.classes]:
            os.makedirs(os.path.join(data, cls))
            for name in sorted(os.listdir(os.path.join(CALTECH, cls)))[:args.per_class]:
                shutil.copy(os.path.join(CALTECH, cls, name), os.path.join(data, cls, name))
        os.makedirs(os.path.join(root, "weights"))
        daemon = Daemon(os.path.join(root, "state"), os.path.join(root, "data"),
                        os.path.join(root, "weights")).start()
        try:
            rows = []
            for world in (1, 2, 1, 2):
                job = daemon.submit("--kind=scratch", "--dataset=subset",
                                    f"--epochs={args.epochs}", f"--image_size={args.image_size}",
                                    f"--batch_size={args.batch_size}", "--threads=2",
                                    f"--world_size={world}")
                events, _ = daemon.watch(job)
                epochs = [e["epoch"] for e in events if "epoch" in e]
                last = epochs[-1]  # the first epoch of each run also warms up
                rows.append((world, float(last["images_per_second"]),
                             float(last["step_seconds"]), float(last["seconds"]),
                             float(last["validation_accuracy"])))
                print(f"world size {world}: last epoch {rows[-1][1]:.1f} img/s in steps, "
                      f"steps {rows[-1][2]:.1f} s, epoch {rows[-1][3]:.1f} s, "
                      f"val acc {rows[-1][4]:.3f}", flush=True)
        finally:
            daemon.stop()
        best = {w: max(r[1] for r in rows if r[0] == w) for w in (1, 2)}
        print(f"best of two: world size 1 {best[1]:.1f} img/s, world size 2 {best[2]:.1f} "
              f"img/s: ratio {best[2] / best[1]:.2f} on the same 2 cores")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
