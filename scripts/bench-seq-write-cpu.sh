#!/bin/bash
# One 1 GiB sequential write (fio, 1 MiB blocks, end_fsync=1) to MOUNT, caches dropped first;
# prints its throughput and the CPU-seconds the whole machine spent per GiB (/proc/stat), so
# two builds can be compared in turn on one cluster. Needs fio and root (drop_caches).
#
# usage: scripts/bench-seq-write-cpu.sh MOUNT
set -euo pipefail
m=${1:?usage: bench-seq-write-cpu.sh MOUNT}
rm -f $m/sw; sync; echo 3 > /proc/sys/vm/drop_caches
s1=$(head -1 /proc/stat)
out=$(fio --name=sw --filename=$m/sw --size=1g --rw=write --bs=1m --end_fsync=1 --ioengine=psync --output-format=terse --terse-version=3 2>/dev/null)
s2=$(head -1 /proc/stat)
bw=$(echo "$out" | cut -d';' -f48)
python3 - "$s1" "$s2" "$bw" <<'PY'
import sys
a=list(map(int,sys.argv[1].split()[1:8])); b=list(map(int,sys.argv[2].split()[1:8]))
busy=(sum(b)-sum(a))-(b[3]-a[3])-(b[4]-a[4])
print(f"{int(sys.argv[3])/1024:.0f} MiB/s, {busy/100:.2f} CPU-s/GiB")
PY
rm -f $m/sw
