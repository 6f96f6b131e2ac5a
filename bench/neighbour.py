#!/usr/bin/env python3
"""A bursty neighbour: burns SHARE of one core in slices of at most SLICE_MS.

    neighbour.py [--share 0.36] [--slice-ms 5] [--seconds N]

It compares its own CPU time with SHARE of the wall time since it started;
when behind it spins until caught up or the slice ends, then sleeps a random
0-SLICE_MS. So it takes a few milliseconds of a core at unpredictable
moments, as log shippers, loaders and other jobs' threads do: what stalls
every parallel region of a training step that has one thread per core.
Runs until killed (or --seconds).
"""
import argparse
import random
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--share", type=float, default=0.36)
    parser.add_argument("--slice-ms", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=0.0)
    args = parser.parse_args()
    slice_s = args.slice_ms / 1000
    start_wall, start_cpu = time.monotonic(), time.process_time()
    rng = random.Random(1)
    while True:
        now = time.monotonic()
        if args.seconds and now - start_wall > args.seconds:
            return
        if time.process_time() - start_cpu < args.share * (now - start_wall):
            end = now + slice_s
            while time.monotonic() < end and time.process_time() - start_cpu < args.share * (time.monotonic() - start_wall):
                pass
        time.sleep(rng.uniform(0, slice_s))


if __name__ == "__main__":
    main()
