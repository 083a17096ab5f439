#!/usr/bin/env bash
# fio and a metadata workload against a live dfs mount and a plain local directory of the same
# disk, in the same run. Prints Markdown for docs/BENCHMARKS.md. Run as root (drops caches).
#
# Settings: DFS_BENCH_SIZE (1g), DFS_BENCH_FILES (10000), DFS_BENCH_SMALL_FILES (2000),
# DFS_BENCH_DIR (/tmp/dfs-bench-mount).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
size=${DFS_BENCH_SIZE:-1g}
files=${DFS_BENCH_FILES:-10000}
small_files=${DFS_BENCH_SMALL_FILES:-2000}
work=${DFS_BENCH_DIR:-/tmp/dfs-bench-mount}
command -v fio >/dev/null || { [ "$(id -u)" = 0 ] && apt-get install -y -qq fio >/dev/null; }
export DFS_DEV_DIR=$work/cluster
mkdir -p "$work/local"
"$repo/scripts/dev-cluster.sh" up >/dev/null
trap '"$repo/scripts/dev-cluster.sh" down >/dev/null' EXIT
# shellcheck disable=SC1091
. "$DFS_DEV_DIR/cluster.env"
mkdir -p "$DFS_MOUNT/bench"

drop_caches() { sync; if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches; fi; }
fio_bw() { # dir rw bs [extra...] -> MiB/s
    local dir=$1 rw=$2 bs=$3
    shift 3
    fio --name=b --directory="$dir" --filename=fio.dat --rw="$rw" --bs="$bs" --size="$size" \
        --ioengine=psync --output-format=terse --terse-version=3 "$@" 2>/dev/null |
        awk -F';' -v rw="$rw" '{ kb = (rw ~ /write/) ? $48 : $7; printf "%.0f", kb / 1024 }'
}
seconds() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); awk -v a="$s" -v b="$e" 'BEGIN{printf "%.3f", b-a}'; }
meta_ops() { # dir op
    local dir=$1 op=$2
    case $op in
        create) seconds sh -c "cd '$dir' && mkdir -p m && cd m && for i in \$(seq 1 $files); do : > f\$i; done" ;;
        stat) seconds sh -c "cd '$dir/m' && for i in \$(seq 1 $files); do stat -c %s f\$i; done" ;;
        list) seconds sh -c "ls -l '$dir/m' | wc -l" ;;
        unlink) seconds sh -c "rm -rf '$dir/m'" ;;
        # The same creates from 8 processes at once, in 8 directories.
        create8) seconds sh -c "cd '$dir' && for p in 1 2 3 4 5 6 7 8; do (mkdir -p c\$p && cd c\$p && for i in \$(seq 1 $((files / 8))); do : > f\$i; done) & done; wait" ;;
        # 2,000 files of 16 KiB, each written and fsynced before close (small-file durability).
        small) seconds python3 -c "
import os
data = os.urandom(16384)
os.makedirs('$dir/s', exist_ok=True)
for i in range($small_files):
    fd = os.open('$dir/s/f%d' % i, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, data)
    os.fsync(fd)
    os.close(fd)
" ;;
    esac
}
row() { awk -v n="$1" -v d="$2" -v l="$3" -v u="$4" 'BEGIN { printf "| %s | %s %s | %s %s | %.0f%% |\n", n, d, u, l, u, 100 * d / l }'; }
rate_row() { awk -v n="$1" -v d="$2" -v l="$3" -v c="${4:-$files}" 'BEGIN { printf "| %s | %.0f/s | %.0f/s | %.0f%% |\n", n, c / d, c / l, 100 * l / d }'; }

echo "| workload | dfs mount | local dir | dfs / local |"
echo "|---|---|---|---|"
for target in "$DFS_MOUNT/bench" "$work/local"; do rm -f "$target/fio.dat"; done
d=$(fio_bw "$DFS_MOUNT/bench" write 1m --end_fsync=1); l=$(fio_bw "$work/local" write 1m --end_fsync=1)
row "sequential write, 1 MiB, fsync at end" "$d" "$l" MiB/s
drop_caches
d=$(fio_bw "$DFS_MOUNT/bench" read 1m); drop_caches; l=$(fio_bw "$work/local" read 1m)
row "sequential read, cold" "$d" "$l" MiB/s
drop_caches
d=$(fio_bw "$DFS_MOUNT/bench" randread 4k --runtime=20 --time_based); l=$(fio_bw "$work/local" randread 4k --runtime=20 --time_based)
row "random read 4 KiB" "$d" "$l" MiB/s
d=$(fio_bw "$DFS_MOUNT/bench" randwrite 4k --runtime=20 --time_based --end_fsync=1); l=$(fio_bw "$work/local" randwrite 4k --runtime=20 --time_based --end_fsync=1)
row "random write 4 KiB, fsync at end" "$d" "$l" MiB/s
for op in create stat list unlink; do
    d=$(meta_ops "$DFS_MOUNT/bench" $op); l=$(meta_ops "$work/local" $op)
    rate_row "$op $files files (one process)" "$d" "$l"
done
d=$(meta_ops "$DFS_MOUNT/bench" create8); l=$(meta_ops "$work/local" create8)
rate_row "create $files files (8 processes)" "$d" "$l"
d=$(meta_ops "$DFS_MOUNT/bench" small); l=$(meta_ops "$work/local" small)
rate_row "write+fsync $small_files files of 16 KiB" "$d" "$l" "$small_files"
rm -rf "$DFS_MOUNT/bench"/c? "$DFS_MOUNT/bench/s" "$work/local"/c? "$work/local/s"
rm -f "$DFS_MOUNT/bench/fio.dat" "$work/local/fio.dat"
