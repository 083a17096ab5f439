#!/usr/bin/env python3
"""Latency of closing small files on a mount while another process streams a large file.

Usage: scripts/bench-close-beside-stream.py MOUNT GIB COUNT

One process writes a GIB-GiB file in 1 MiB writes and fsyncs it; meanwhile this one creates up
to COUNT files of 4 KiB on the same mount and times each close (each one a durable commit).
Prints the median, 90th and 99th percentile and the slowest close. Files go under
MOUNT/closebench; remove it between runs.
"""
import os, sys, time, statistics, multiprocessing as mp

def stream(path, gib):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    buf = os.urandom(1 << 20)
    for _ in range(gib << 10):
        os.write(fd, buf)
    os.fsync(fd)
    os.close(fd)

def main():
    mnt, gib, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    d = os.path.join(mnt, "closebench")
    os.makedirs(d, exist_ok=True)
    p = mp.Process(target=stream, args=(os.path.join(d, "big"), gib))
    p.start()
    time.sleep(1.0)
    closes, data = [], os.urandom(4096)
    for i in range(count):
        if not p.is_alive():
            break
        fd = os.open(os.path.join(d, f"s{i}"), os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        os.write(fd, data)
        t = time.perf_counter()
        os.close(fd)
        closes.append((time.perf_counter() - t) * 1000)
    p.join()
    closes.sort()
    q = lambda f: closes[min(len(closes) - 1, int(f * len(closes)))]
    print(f"{len(closes)} closes beside a {gib} GiB stream: p50 {q(0.5):.2f} ms, p90 {q(0.9):.2f} ms, p99 {q(0.99):.2f} ms, max {closes[-1]:.2f} ms")

main()
