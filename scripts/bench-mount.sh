#!/usr/bin/env bash
# fio and metadata workloads against a live dfs mount and a plain local directory of the same
# disk, in the same run. Prints Markdown for docs/BENCHMARKS.md. Run as root (drops caches).
#
#   scripts/bench-mount.sh [data|meta|all]      (default: all)
#
# data: the fio jobs of the data-path targets (psync engine, one job, queue depth 1), with
#       system-wide CPU-seconds per GiB (from /proc/stat, over exactly the job) for the
#       sequential ones.
# meta: the small-file and metadata workloads: create/stat/list/unlink loops over
#       DFS_BENCH_FILES files, creates from 8 processes, fs_mark (files of 16 KiB fsynced
#       before close), dbench (4 clients), unpacking an archive of small files (tar), and
#       small appends each followed by fsync.
#
# Settings: DFS_BENCH_SIZE (1g), DFS_BENCH_RAND_SIZE (256m), DFS_BENCH_RUNTIME (30),
# DFS_BENCH_FILES (10000), DFS_BENCH_SMALL_FILES (2000), DFS_BENCH_DBENCH_SECS (30),
# DFS_BENCH_APPENDS (6000), DFS_BENCH_TAR_FILES (3000), DFS_BENCH_DIR (/tmp/dfs-bench-mount).
# With DFS_BENCH_MOUNT set to an existing dfs mount, that mount is measured instead of a fresh
# dev cluster.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
what=${1:-all}
size=${DFS_BENCH_SIZE:-1g}
rand_size=${DFS_BENCH_RAND_SIZE:-256m}
runtime=${DFS_BENCH_RUNTIME:-30}
files=${DFS_BENCH_FILES:-10000}
small_files=${DFS_BENCH_SMALL_FILES:-2000}
dbench_secs=${DFS_BENCH_DBENCH_SECS:-30}
appends=${DFS_BENCH_APPENDS:-6000}
tar_files=${DFS_BENCH_TAR_FILES:-3000}
work=${DFS_BENCH_DIR:-/tmp/dfs-bench-mount}
case $what in data | meta | all) ;; *) echo "usage: $0 [data|meta|all]" >&2; exit 2 ;; esac
for tool in fio:fio fs_mark:fsmark dbench:dbench; do
    command -v "${tool%%:*}" >/dev/null || { [ "$(id -u)" = 0 ] && apt-get install -y -qq "${tool#*:}" >/dev/null; }
done
mkdir -p "$work/local"
if [ -n "${DFS_BENCH_MOUNT:-}" ]; then
    mount_dir=$DFS_BENCH_MOUNT
else
    # A fresh cluster every run, removed afterwards: one left from an earlier run would
    # collect that run's garbage during the measurements, and fills the disk over many runs.
    export DFS_DEV_DIR=$work/cluster
    rm -rf --one-file-system "$DFS_DEV_DIR"
    "$repo/scripts/dev-cluster.sh" up >/dev/null
    trap '"$repo/scripts/dev-cluster.sh" down >/dev/null; rm -rf --one-file-system "$DFS_DEV_DIR"' EXIT
    # shellcheck disable=SC1091
    . "$DFS_DEV_DIR/cluster.env"
    mount_dir=$DFS_MOUNT
fi
dfs_dir=$mount_dir/bench
local_dir=$work/local
mkdir -p "$dfs_dir"
hz=$(getconf CLK_TCK)

drop_caches() { sync; if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches; fi; }
busy_ticks() { awk '/^cpu /{ print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }

# fio DIR FILE RW BS SIZE [fio options...] -> "RATE CPU_S_PER_GIB": RATE is MiB/s for blocks of
# 1 MiB and IOPS otherwise; CPU is system-wide busy time over the job per GiB it moved.
fio_job() {
    local dir=$1 file=$2 rw=$3 bs=$4 job_size=$5 before after out
    shift 5
    before=$(busy_ticks)
    out=$(fio --name=b --directory="$dir" --filename="$file" --rw="$rw" --bs="$bs" \
        --size="$job_size" --ioengine=psync --output-format=terse --terse-version=3 "$@" 2>/dev/null)
    after=$(busy_ticks)
    awk -F';' -v rw="$rw" -v bs="$bs" -v ticks=$((after - before)) -v hz="$hz" '{
        kib = (rw ~ /write/) ? $47 : $6; bw = (rw ~ /write/) ? $48 : $7; iops = (rw ~ /write/) ? $49 : $8
        rate = (bs == "1m") ? bw / 1024 : iops
        printf "%.0f %.1f", rate, (kib > 0) ? (ticks / hz) / (kib / 1048576) : 0 }' <<<"$out"
}
# row NAME TARGET_PERCENT UNIT "DFS_RATE DFS_CPU" "LOCAL_RATE LOCAL_CPU" SHOW_CPU
row() {
    local d=($4) l=($5)
    awk -v n="$1" -v t="$2" -v u="$3" -v d="${d[0]}" -v dc="${d[1]}" -v l="${l[0]}" -v lc="${l[1]}" \
        -v cpu="$6" 'BEGIN {
        ratio = (l > 0) ? 100 * d / l : 0
        dcell = d " " u; lcell = l " " u
        if (cpu) { dcell = dcell ", " dc " CPU-s/GiB"; lcell = lcell ", " lc " CPU-s/GiB" }
        printf "| %s | %s | %s | %.1f%% | >= %s%% | %s |\n", n, lcell, dcell, ratio, t, (ratio >= t) ? "met" : "missed" }'
}

data_workloads() {
    echo "| fio workload | local dir | dfs | dfs / local | target | |"
    echo "|---|---|---|---|---|---|"
    local d l
    for dir in "$dfs_dir" "$local_dir"; do rm -f "$dir/seq.dat" "$dir/rand.dat"; done
    # Every job starts from an empty page cache on both sides: on this VM a page cache that
    # has filled the memory makes every later write pay for reclaim, a third of the speed.
    drop_caches; d=$(fio_job "$dfs_dir" seq.dat write 1m "$size" --end_fsync=1)
    drop_caches; l=$(fio_job "$local_dir" seq.dat write 1m "$size" --end_fsync=1)
    row "$size sequential write, 1 MiB blocks, end_fsync=1" 60 MiB/s "$d" "$l" 1
    drop_caches; d=$(fio_job "$dfs_dir" seq.dat read 1m "$size")
    drop_caches; l=$(fio_job "$local_dir" seq.dat read 1m "$size")
    row "$size sequential read, caches dropped" 50 MiB/s "$d" "$l" 1
    rm -f "$dfs_dir/seq.dat" "$local_dir/seq.dat"
    # fio lays the random-I/O file out (writes it whole) before the first job's clock starts.
    local timed=(--runtime="$runtime" --time_based)
    drop_caches; d=$(fio_job "$dfs_dir" rand.dat randread 4k "$rand_size" --direct=1 "${timed[@]}")
    drop_caches; l=$(fio_job "$local_dir" rand.dat randread 4k "$rand_size" --direct=1 "${timed[@]}")
    row "4 KiB random read, O_DIRECT, $rand_size file, ${runtime} s" 40 IOPS "$d" "$l" ""
    drop_caches; d=$(fio_job "$dfs_dir" rand.dat randwrite 4k "$rand_size" --direct=1 "${timed[@]}")
    drop_caches; l=$(fio_job "$local_dir" rand.dat randwrite 4k "$rand_size" --direct=1 "${timed[@]}")
    row "4 KiB random write, O_DIRECT, ${runtime} s" 50 IOPS "$d" "$l" ""
    drop_caches; d=$(fio_job "$dfs_dir" rand.dat randread 4k "$rand_size" "${timed[@]}")
    drop_caches; l=$(fio_job "$local_dir" rand.dat randread 4k "$rand_size" "${timed[@]}")
    row "4 KiB random read, buffered, caches dropped first, ${runtime} s" 50 IOPS "$d" "$l" ""
    drop_caches; d=$(fio_job "$dfs_dir" rand.dat randwrite 4k "$rand_size" "${timed[@]}")
    drop_caches; l=$(fio_job "$local_dir" rand.dat randwrite 4k "$rand_size" "${timed[@]}")
    row "4 KiB random write, buffered, ${runtime} s" 5 IOPS "$d" "$l" ""
    rm -f "$dfs_dir/rand.dat" "$local_dir/rand.dat"
}

seconds() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); awk -v a="$s" -v b="$e" 'BEGIN{printf "%.3f", b-a}'; }
meta_ops() { # dir op
    local dir=$1 op=$2
    case $op in
        # One process each, as system calls (no program started per file).
        create) seconds python3 -c "
import os
os.makedirs('$dir/m', exist_ok=True)
for i in range($files):
    os.close(os.open('$dir/m/f%d' % i, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
" ;;
        stat) seconds python3 -c "
import os
for i in range($files):
    os.stat('$dir/m/f%d' % i)
" ;;
        list) seconds python3 -c "
import os
for e in os.scandir('$dir/m'):
    e.stat(follow_symlinks=False)
" ;;
        unlink) seconds python3 -c "
import os
for i in range($files):
    os.unlink('$dir/m/f%d' % i)
os.rmdir('$dir/m')
" ;;
        # The same creates from 8 processes at once, in 8 directories.
        create8) seconds sh -c "cd '$dir' && for p in 1 2 3 4 5 6 7 8; do (mkdir -p c\$p && cd c\$p && for i in \$(seq 1 $((files / 8))); do : > f\$i; done) & done; wait" ;;
        # Files of 16 KiB, each written and fsynced before close (small-file durability): files/s.
        # (fs_mark takes directory names under 40 bytes: it runs from inside.)
        fsmark) rm -rf "$dir/s"; mkdir -p "$dir/s"
            (cd "$dir" && fs_mark -d s -n "$small_files" -s 16384 -S 1 -t 1 -k 2>/dev/null) | awk '$1 ~ /^[0-9]+$/ && NF >= 4 { print $4 }' | tail -1 ;;
        # 4 clients of dbench's file-server load: MB/s.
        dbench) rm -rf "$dir/db"; mkdir -p "$dir/db"
            dbench -t "$dbench_secs" -D "$dir/db" 4 2>/dev/null | awk '/^Throughput/ { print $2 }' ;;
        # Unpacking an archive of small files (a source tree): tar creates each file, writes
        # it, sets its mtime, owner and mode, and closes it. Seconds for the whole archive.
        untar) rm -rf "$dir/u"; mkdir -p "$dir/u"
            seconds sh -c "tar xf '$(archive)' -C '$dir/u' && sync -f '$dir/u'" ;;
        # Small appends, each followed by fsync (a log, a mail spool): milliseconds each.
        appends) python3 -c "
import os, time
fd = os.open('$dir/append.log', os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
line = b'x' * 96 + b'\\n'
start = time.monotonic()
for _ in range($appends):
    os.write(fd, line)
    os.fsync(fd)
print('%.3f' % ((time.monotonic() - start) * 1000 / $appends))
os.close(fd)
" ;;
    esac
}
# A tarball of DFS_BENCH_TAR_FILES files of 1 to 16 KiB in directories of 30, dated in the
# past, made once under the work directory; prints its path.
archive() {
    local tarball=$work/tree-$tar_files.tar
    if [ ! -f "$tarball" ]; then
        python3 - "$work/tree" "$tar_files" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
for i in range(n):
    d = os.path.join(root, "d%d" % (i // 30))
    os.makedirs(d, exist_ok=True)
    p = os.path.join(d, "f%d.c" % i)
    with open(p, "wb") as f:
        f.write(rng.randbytes(rng.randint(1024, 16384)))
    os.utime(p, (1_000_000_000, 1_000_000_000))
PY
        tar cf "$tarball" -C "$work/tree" . && rm -rf "$work/tree"
    fi
    echo "$tarball"
}
rate_row() { awk -v n="$1" -v d="$2" -v l="$3" -v c="${4:-$files}" 'BEGIN { printf "| %s | %.0f/s | %.0f/s | %.1f%% |\n", n, c / l, c / d, 100 * l / d }'; }

meta_workloads() {
    echo "| workload | local dir | dfs | dfs / local |"
    echo "|---|---|---|---|"
    local d l
    for op in create stat list unlink; do
        d=$(meta_ops "$dfs_dir" $op); l=$(meta_ops "$local_dir" $op)
        local label="$op $files files (one process)"
        [ "$op" = list ] && label="list $files files (one process: readdir + stat)"
        rate_row "$label" "$d" "$l"
    done
    d=$(meta_ops "$dfs_dir" create8); l=$(meta_ops "$local_dir" create8)
    rate_row "create $files files (8 processes)" "$d" "$l"
    d=$(meta_ops "$dfs_dir" fsmark); l=$(meta_ops "$local_dir" fsmark)
    awk -v n="fs_mark: $small_files files of 16 KiB, fsync before close" -v d="$d" -v l="$l" \
        'BEGIN { printf "| %s | %.0f/s | %.0f/s | %.1f%% |\n", n, l, d, 100 * d / l }'
    d=$(meta_ops "$dfs_dir" dbench); l=$(meta_ops "$local_dir" dbench)
    awk -v n="dbench, 4 clients, $dbench_secs s" -v d="$d" -v l="$l" \
        'BEGIN { printf "| %s | %.1f MB/s | %.1f MB/s | %.1f%% |\n", n, l, d, 100 * d / l }'
    d=$(meta_ops "$dfs_dir" untar); l=$(meta_ops "$local_dir" untar)
    rate_row "untar $tar_files files of 1-16 KiB (tar xf, then sync)" "$d" "$l" "$tar_files"
    d=$(meta_ops "$dfs_dir" appends); l=$(meta_ops "$local_dir" appends)
    echo "| $appends appends of 97 bytes, each followed by fsync | $l ms each | $d ms each | |"
    rm -rf "$dfs_dir"/c? "$dfs_dir/s" "$dfs_dir/db" "$dfs_dir/u" "$dfs_dir/append.log" \
        "$local_dir"/c? "$local_dir/s" "$local_dir/db" "$local_dir/u" "$local_dir/append.log"
}

# How long an idle CPU takes to wake decides much of a metadata operation's latency (it passes
# through several threads); on a KVM guest the haltpoll driver polls this long before halting.
idle=$(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || echo unknown)
poll=/sys/module/haltpoll/parameters/guest_halt_poll_ns
[ -r "$poll" ] && idle="$idle, guest_halt_poll_ns=$(cat "$poll")"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(uname -r); cpuidle $idle; fio $(fio --version)"
echo
case $what in
    data) data_workloads ;;
    meta) meta_workloads ;;
    all) data_workloads; echo; meta_workloads ;;
esac
