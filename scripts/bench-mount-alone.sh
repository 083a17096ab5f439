#!/bin/bash
# Mounts one dfs-mount build alone on a running dev cluster, runs small-file workloads on it
# and unmounts: alternate two builds on one cluster to compare them in turn. Prints creates
# and unlinks per second (one process, 2,000 files in a new directory), fs_mark files per
# second (1,000 files of 16 KiB, fsync before close) and dbench MB/s (4 clients, 15 s).
# Needs fs_mark and dbench; the mount runs with one runtime worker, as the dev cluster's does.
# (Unmount the dev cluster's own mount first to have the measured one truly alone: a second
# mount follows the change feed and is woken by every change.)
#
# usage: scripts/bench-mount-alone.sh DFS_MOUNT_BINARY [LABEL]
# (with the cluster's settings in the environment: . $DFS_DEV_DIR/cluster.env)
set -euo pipefail
bin=${1:?usage: bench-mount-alone.sh DFS_MOUNT_BINARY [LABEL]}
label=${2:-$bin}
: "${DFS_META:?source cluster.env of the dev cluster first}" "${DFS_CERTS:?}"
mnt=$(mktemp -d /tmp/dfs-alone.XXXXXX)
TOKIO_WORKER_THREADS=1 "$bin" "$DFS_META:/default" "$mnt" -o "certs=$DFS_CERTS" &
pid=$!
cleanup() {
    fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rmdir "$mnt" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do mountpoint -q "$mnt" && break; sleep 0.1; done
mountpoint -q "$mnt" || { echo "bench-mount-alone: $bin did not mount" >&2; exit 1; }
work=$mnt/alone-$$-$RANDOM
mkdir -p "$work"
ops=$(python3 - "$work/c" <<'PY'
import os, sys, time
d = sys.argv[1]
os.makedirs(d)
n = 2000
t0 = time.monotonic()
for i in range(n):
    os.close(os.open(f"{d}/f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
t1 = time.monotonic()
for i in range(n):
    os.unlink(f"{d}/f{i}")
t2 = time.monotonic()
print(f"creates {n / (t1 - t0):.0f}/s, unlinks {n / (t2 - t1):.0f}/s")
PY
)
# (fs_mark takes directory names under 40 bytes: it runs from inside.)
fsm=$(cd "$work" && mkdir s && fs_mark -d s -n 1000 -s 16384 -S 1 -t 1 -k 2>/dev/null |
    awk '$1 ~ /^[0-9]+$/ && NF >= 4 { print $4 }' | tail -1)
mkdir -p "$work/db"
db=$(dbench -t 15 -D "$work/db" 4 2>/dev/null | awk '/^Throughput/ { print $2 }')
echo "$label: $ops, fs_mark ${fsm} files/s, dbench ${db} MB/s"
rm -rf "$work"
