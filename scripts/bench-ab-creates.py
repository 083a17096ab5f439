#!/usr/bin/env python3
"""Creates and unlinks through two mounts in turn, to compare two builds on one cluster.

    scripts/bench-ab-creates.py DIR_A DIR_B [ROUNDS] [FILES]

Each round creates FILES empty files (open with O_CREAT|O_EXCL, then close) in a directory
under DIR_A, then unlinks them, then does the same under DIR_B (the order alternates between
rounds). Interleaving in small rounds spreads the machine's own swings over both, so a
difference of a few percent shows. Prints the mean time per create and per unlink of each.
"""
import os
import sys
import time


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    dirs = sys.argv[1:3]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    files = int(sys.argv[4]) if len(sys.argv) > 4 else 100
    spent = {d: [0.0, 0.0] for d in dirs}
    for d in dirs:
        os.makedirs(os.path.join(d, "ab-creates"), exist_ok=True)
    for r in range(rounds):
        for d in dirs if r % 2 == 0 else dirs[::-1]:
            names = [os.path.join(d, "ab-creates", f"f{r}-{i}") for i in range(files)]
            start = time.perf_counter()
            for name in names:
                os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            created = time.perf_counter()
            for name in names:
                os.unlink(name)
            spent[d][0] += created - start
            spent[d][1] += time.perf_counter() - created
    n = rounds * files
    for d, (create, unlink) in spent.items():
        print(f"{d}: create {create / n * 1e6:.0f} us, unlink {unlink / n * 1e6:.0f} us ({n} each)")


if __name__ == "__main__":
    main()
