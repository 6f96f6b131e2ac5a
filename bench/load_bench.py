"""Serving while training: the real traind under RPC load while a job trains.

    /usr/bin/python3 bench/load_bench.py [--clients 200] [--watchers 50]
        [--epochs 1] [--image_size 64] [--dataset DIR] [--traind-arg=--flag=value ...]

Runs the same scratch job three times on one daemon (the dataset is decoded
once, by a warm-up job): alone; under load (CLIENTS closed-loop clients
calling GetJob/ListJobs from separate processes, WATCHERS following the job
with StreamMetrics); and beside a plain CPU burner that takes the CPU share
the load generator took. Prints latency percentiles per RPC, errors by code,
events per watcher (and whether any had a gap), the daemon's RSS, threads and
open fds at the start and the end, and training images/s of each run with the
ratios loaded / alone and loaded / burner (the latter is what traind's own
serving costs, net of the generator's CPU).
"""
import argparse
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "../tests/integration"))
for name, path in (("TRAIND", "server/traind"), ("TRAINCTL", "client/trainctl")):
    os.environ.setdefault(name, os.path.join(HERE, "../build", path))

import grpc  # noqa: E402

from harness import Daemon, TRAINCTL, CALTECH  # noqa: E402
from rpc_client import Client, pb  # noqa: E402


def proc_stats(pid):
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    rss = int(status["VmRSS"].split()[0]) // 1024
    threads = int(status["Threads"])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, threads, fds


def cpu_seconds(pids):
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except FileNotFoundError:
            pass
    return total


def unary_clients(address, job, threads, stop, out):
    """One process: `threads` closed-loop clients, each with its own channel."""
    import threading
    lat = {"GetJob": [], "ListJobs": []}
    errors = {}
    lock = threading.Lock()

    def loop(seed):
        rng = random.Random(seed)
        c = Client(grpc.insecure_channel(address))
        while not stop.is_set():
            rpc = rng.choice(("GetJob", "ListJobs"))
            req = pb.GetJobRequest(job_id=job) if rpc == "GetJob" else pb.ListJobsRequest()
            t0 = time.perf_counter()
            code, _, _ = c.call(rpc, req, timeout=30)
            dt = time.perf_counter() - t0
            with lock:
                lat[rpc].append(dt)
                if code != grpc.StatusCode.OK:
                    errors[code.name] = errors.get(code.name, 0) + 1
            time.sleep(rng.uniform(0.05, 0.15))  # think time: ~10 calls/s per client
        c.channel.close()

    ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put(("unary", lat, errors))


def watchers(address, job, n, out):
    """One process: `n` watchers, each following the job to its end."""
    import threading
    results = []
    lock = threading.Lock()

    def follow():
        c = Client(grpc.insecure_channel(address))
        code, events, why = c.call("StreamMetrics", pb.StreamMetricsRequest(job_id=job),
                                   timeout=3600)
        seqs = [e.event.seq for e in events or []]
        with lock:
            results.append((code.name, len(seqs), seqs == list(range(1, len(seqs) + 1))))
        c.channel.close()

    ts = [threading.Thread(target=follow) for _ in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put(("watch", results, None))


def burner(share, stop_at):
    """Takes `share` of one core: busy for share x 10 ms of every 10 ms."""
    while time.time() < stop_at:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.01 * share:
            pass
        time.sleep(0.01 * (1 - share))


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(p / 100 * len(v)))] * 1000


def train(d, args, dataset):
    """Submits the benchmark job; returns its id."""
    return d.submit("--kind=scratch", f"--dataset={dataset}", f"--epochs={args.epochs}",
                    f"--image_size={args.image_size}", "--precision=fp32")


def images_per_second(d, job, cpu=None):
    before = cpu_seconds([d.proc.pid])
    d.trainctl("watch", job)
    if cpu is not None:
        cpu.append(cpu_seconds([d.proc.pid]) - before)
    latest = d.status(job)["latest"]
    return latest["imagesPerSecond"] if "imagesPerSecond" in latest else \
        latest["images_per_second"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--watchers", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--image_size", type=int, default=64)
    ap.add_argument("--dataset", default=CALTECH)
    ap.add_argument("--traind-arg", action="append", default=[])
    args = ap.parse_args()

    root = tempfile.mkdtemp(prefix="traind-load-")
    data = os.path.join(root, "data")
    os.makedirs(data)
    if os.path.isdir(args.dataset):  # symlinks out of the data root are refused: copy
        shutil.copytree(args.dataset, os.path.join(data, "set"))
    else:
        subprocess.run([TRAINCTL, "demo-data", os.path.join(data, "set"), "--classes=10",
                        "--per_class=300"], check=True, capture_output=True)
    os.makedirs(os.path.join(root, "w"))
    d = Daemon(os.path.join(root, "state"), data, os.path.join(root, "w"),
               extra=["--max-streams-per-user=1000", "--max-queued-per-user=1000",
                      *args.traind_arg]).start()
    try:
        print(f"load_bench: dataset {args.dataset}, {args.image_size} px, {args.epochs} epoch(s), "
              f"{args.clients} clients, {args.watchers} watchers, traind {args.traind_arg}")
        warm = train(d, args, "set")  # decodes the dataset once for the runs below
        d.trainctl("watch", warm)
        start_stats = proc_stats(d.proc.pid)

        cpu = []
        alone = images_per_second(d, train(d, args, "set"), cpu)

        # Under load.
        job = train(d, args, "set")
        out = mp.Queue()
        stop = mp.Event()
        per_proc = 50
        procs = []
        for i in range(0, args.clients, per_proc):
            procs.append(mp.Process(target=unary_clients,
                                    args=(d.address, job, min(per_proc, args.clients - i),
                                          stop, out)))
        for i in range(0, args.watchers, per_proc):
            procs.append(mp.Process(target=watchers,
                                    args=(d.address, job, min(per_proc, args.watchers - i), out)))
        t0 = time.time()
        for p in procs:
            p.start()
        cpu0 = cpu_seconds([p.pid for p in procs])
        loaded = images_per_second(d, job, cpu)
        wall = time.time() - t0
        cpu1 = cpu_seconds([p.pid for p in procs])
        stop.set()  # the job is done: the clients report and end
        results = [out.get(timeout=300) for _ in procs]
        share = min(0.95, (cpu1 - cpu0) / max(wall, 1e-6))
        for p in procs:
            p.join(timeout=5)
        end_stats = proc_stats(d.proc.pid)

        # Control: a plain burner with the generator's CPU share.
        job = train(d, args, "set")
        burners = []
        stop_at = time.time() + 3600
        whole = int(share)
        for s in [1.0] * whole + [share - whole]:
            if s > 0.01:
                b = mp.Process(target=burner, args=(s, stop_at))
                b.start()
                burners.append(b)
        control = images_per_second(d, job)
        for b in burners:
            b.terminate()
            b.join()
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)

    lat = {"GetJob": [], "ListJobs": []}
    errors = {}
    for kind, r, e in results:
        if kind == "unary":
            for k in lat:
                lat[k] += r[k]
            for k, v in e.items():
                errors[k] = errors.get(k, 0) + v
    for k, v in lat.items():
        print(f"{k:9} {len(v):7d} calls ({len(v) / wall:.0f}/s): p50 {pct(v, 50):.1f} ms, "
              f"p99 {pct(v, 99):.1f} ms, max {pct(v, 100):.1f} ms")
    print(f"errors by code: {errors or 'none'}")
    watch = [r for kind, r, _ in results if kind == "watch"]
    watch = [x for group in watch for x in group]
    codes = {}
    for code, n, gapless in watch:
        codes[code] = codes.get(code, 0) + 1
    counts = sorted(n for _, n, _ in watch)
    print(f"watchers: {len(watch)}, end codes {codes}, events each min {counts[0] if counts else 0}"
          f" max {counts[-1] if counts else 0}, all gapless: {all(g for _, _, g in watch)}")
    print(f"generator CPU share {share:.2f} core over {wall:.1f} s; traind CPU: alone {cpu[0]:.1f} s,"
          f" loaded {cpu[1]:.1f} s (serving took about {cpu[1] - cpu[0]:.1f} s)")
    print(f"daemon start: RSS {start_stats[0]} MiB, {start_stats[1]} threads, {start_stats[2]} fds;"
          f" end: RSS {end_stats[0]} MiB, {end_stats[1]} threads, {end_stats[2]} fds")
    print(f"training img/s: alone {alone:.1f}, loaded {loaded:.1f} ({loaded / alone:.2f}x), "
          f"beside a {share:.2f}-core burner {control:.1f} ({control / alone:.2f}x); "
          f"loaded / burner {loaded / control:.2f}")


if __name__ == "__main__":
    main()
