#!/usr/bin/env python3
"""Latency of single small metadata operations on a mount, one process, one at a time:
97-byte appends each followed by fsync, creates of empty files and their unlinks. For A/B
runs of two builds under one cluster (the numbers in docs/BENCHMARKS.md).

    scripts/bench-small-ops.py DIR [APPENDS] [FILES]     (defaults: 3000, 2000)
"""
import os
import sys
import time


def appends(path, n):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    record = b"x" * 96 + b"\n"
    start = time.monotonic()
    for _ in range(n):
        os.write(fd, record)
        os.fsync(fd)
    took = time.monotonic() - start
    os.close(fd)
    os.unlink(path)
    return took * 1000 / n


def creates_and_unlinks(directory, n):
    os.makedirs(directory, exist_ok=True)
    start = time.monotonic()
    for i in range(n):
        os.close(os.open(f"{directory}/f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    created = time.monotonic()
    for i in range(n):
        os.unlink(f"{directory}/f{i}")
    unlinked = time.monotonic()
    os.rmdir(directory)
    return (created - start) * 1000 / n, (unlinked - created) * 1000 / n


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    where = sys.argv[1]
    n_appends = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    n_files = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    append_ms = appends(os.path.join(where, "bench-small-ops.log"), n_appends)
    create_ms, unlink_ms = creates_and_unlinks(os.path.join(where, "bench-small-ops"), n_files)
    print(
        f"append+fsync {append_ms:.3f} ms, create {create_ms:.3f} ms, unlink {unlink_ms:.3f} ms"
    )


if __name__ == "__main__":
    main()
