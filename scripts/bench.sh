#!/usr/bin/env bash
# Benchmarks of the cluster core against a dev cluster, each next to the same work on a plain
# local directory of the same disk. Prints Markdown for docs/BENCHMARKS.md.
#
#   scripts/bench.sh            (as root, so that page caches can be dropped for cold reads)
#
# Settings: DFS_BENCH_SIZE_MB (1024), DFS_BENCH_CREATES (2000), DFS_BENCH_DIR (/tmp/dfs-bench);
# the dev cluster runs with DFS_DEV_DIR=$DFS_BENCH_DIR/cluster and the usual DFS_* settings.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
size_mb=${DFS_BENCH_SIZE_MB:-1024}
creates=${DFS_BENCH_CREATES:-2000}
work=${DFS_BENCH_DIR:-/tmp/dfs-bench}
export DFS_DEV_DIR=$work/cluster
mkdir -p "$work"

# A fresh cluster every run, removed afterwards: the files a run removes are collected only
# after a grace period, by which time the cluster is down, so kept clusters fill the disk.
rm -rf --one-file-system "$DFS_DEV_DIR"
"$repo/scripts/dev-cluster.sh" up >/dev/null
trap '"$repo/scripts/dev-cluster.sh" down >/dev/null; rm -rf --one-file-system "$DFS_DEV_DIR"' EXIT
# shellcheck disable=SC1091
. "$DFS_DEV_DIR/cluster.env"
bench=$repo/target/release/dfs-bench

drop_caches() {
    sync
    if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches; fi
}
busy_ticks() { awk '/^cpu /{ print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
hz=$(getconf CLK_TCK)
# command... -> "WALL_SECONDS CPU_SECONDS", CPU being system-wide busy time (all processes:
# client, servers, kernel) over exactly the command.
measure() {
    local start end c0 c1
    c0=$(busy_ticks)
    start=$(date +%s.%N)
    "$@" >/dev/null 2>&1
    end=$(date +%s.%N)
    c1=$(busy_ticks)
    awk -v a="$start" -v b="$end" -v c=$((c1 - c0)) -v hz="$hz" 'BEGIN { printf "%.3f %.2f", b - a, c / hz }'
}
mbps() { awk -v s="$size_mb" -v t="$1" 'BEGIN { printf "%.0f", s / t }'; }
pct() { awk -v d="$1" -v l="$2" 'BEGIN { printf "%.0f", 100 * l / d }'; }

src=$work/src.bin
head -c $((size_mb * 1024 * 1024)) /dev/urandom >"$src"
name=bench-$$.bin

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(uname -r)"
echo
echo "### Erasure coding (dfs-bench ec, 4 MiB blocks)"
echo
"$bench" ec
echo
echo "### ${size_mb} MiB file: dfs put / get against cp / cat on the same disk"
echo
drop_caches
read -r t_cp c_cp <<<"$(measure sh -c "cp '$src' '$work/copy.bin' && sync -f '$work/copy.bin'")"
rm -f "$work/copy.bin"
drop_caches
read -r t_put c_put <<<"$(measure dfs put "$src" "default:/$name")"
drop_caches
read -r t_cat c_cat <<<"$(measure sh -c "cat '$src' >/dev/null")"
# Both reads discard what they read, as cat does; a second get, not timed, checks the bytes.
drop_caches
read -r t_get c_get <<<"$(measure dfs get "default:/$name" /dev/null)"
dfs get "default:/$name" "$work/back.bin" >/dev/null
cmp -s "$src" "$work/back.bin" || { echo "get returned different bytes" >&2; exit 1; }
rm -f "$work/back.bin"
dfs rm "default:/$name"
echo "| operation | dfs | local | dfs / local |"
echo "|---|---|---|---|"
gib() { awk -v c="$1" -v s="$size_mb" 'BEGIN { printf "%.1f", c / (s / 1024) }'; } # CPU-s per GiB
printf '| write (put vs cp + fsync) | %.2f s, %s MiB/s, %s CPU-s/GiB | %.2f s, %s MiB/s, %s CPU-s/GiB | %s%% |\n' \
    "$t_put" "$(mbps "$t_put")" "$(gib "$c_put")" "$t_cp" "$(mbps "$t_cp")" "$(gib "$c_cp")" "$(pct "$t_put" "$t_cp")"
printf '| cold read (get vs cat, both to /dev/null) | %.2f s, %s MiB/s, %s CPU-s/GiB | %.2f s, %s MiB/s, %s CPU-s/GiB | %s%% |\n' \
    "$t_get" "$(mbps "$t_get")" "$(gib "$c_get")" "$t_cat" "$(mbps "$t_cat")" "$(gib "$c_cat")" "$(pct "$t_get" "$t_cat")"
echo
echo "### Creates through the client library (dfs-bench creates, $creates files)"
echo
"$bench" creates --count "$creates" --local "$work"
rm -f "$src"
