#!/usr/bin/env bash
# Benchmarks of the cluster core against a dev cluster, each next to the same work on a plain
# local directory of the same disk. Prints Markdown for docs/BENCHMARKS.md.
#
#   scripts/bench.sh            (as root, so that page caches can be dropped for cold reads)
#
# Settings: DFS_BENCH_SIZE_MB (1024), DFS_BENCH_ROUNDS (3), DFS_BENCH_CREATES (2000),
# DFS_BENCH_DIR (/tmp/dfs-bench);
# the dev cluster runs with DFS_DEV_DIR=$DFS_BENCH_DIR/cluster and the usual DFS_* settings.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
size_mb=${DFS_BENCH_SIZE_MB:-1024}
creates=${DFS_BENCH_CREATES:-2000}
rounds=${DFS_BENCH_ROUNDS:-3}
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

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(uname -r)"
echo
echo "### Erasure coding (dfs-bench ec, 4 MiB blocks)"
echo
"$bench" ec
echo
echo "### ${size_mb} MiB file: dfs put / get against cp / cat on the same disk"
echo
# One sample of each side per round, the rounds alternating the two, and the medians compared:
# on a shared virtual machine one transfer can run at half speed (a neighbour's load, memory
# the host took back and must hand over again), for the local copy as for dfs.
t_cps=() c_cps=() t_puts=() c_puts=() t_cats=() c_cats=() t_gets=() c_gets=()
for round in $(seq "$rounds"); do
    name=bench-$$-$round.bin
    drop_caches
    read -r t c <<<"$(measure sh -c "cp '$src' '$work/copy.bin' && sync -f '$work/copy.bin'")"
    t_cps+=("$t") c_cps+=("$c")
    rm -f "$work/copy.bin"
    drop_caches
    read -r t c <<<"$(measure dfs put "$src" "default:/$name")"
    t_puts+=("$t") c_puts+=("$c")
    drop_caches
    read -r t c <<<"$(measure sh -c "cat '$src' >/dev/null")"
    t_cats+=("$t") c_cats+=("$c")
    # Both reads discard what they read, as cat does; a second get, not timed, checks the bytes.
    drop_caches
    read -r t c <<<"$(measure dfs get "default:/$name" /dev/null)"
    t_gets+=("$t") c_gets+=("$c")
    dfs get "default:/$name" "$work/back.bin" >/dev/null
    cmp -s "$src" "$work/back.bin" || { echo "get returned different bytes" >&2; exit 1; }
    rm -f "$work/back.bin"
done
for round in $(seq "$rounds"); do dfs rm "default:/bench-$$-$round.bin"; done
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
range() { printf '%s\n' "$@" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f–%.2f s", lo, hi }'; }
gib() { awk -v c="$1" -v s="$size_mb" 'BEGIN { printf "%.1f", c / (s / 1024) }'; } # CPU-s per GiB
# label target_percent dfs_times dfs_cpus local_times local_cpus (arrays passed by name)
row() {
    local -n td=$3 cd=$4 tl=$5 cl=$6
    local md ml ratio
    md=$(median "${td[@]}") ml=$(median "${tl[@]}")
    ratio=$(pct "$md" "$ml")
    printf '| %s | %.2f s (%s), %s MiB/s, %s CPU-s/GiB | %.2f s (%s), %s MiB/s, %s CPU-s/GiB | %s%% | >= %s%% | %s |\n' \
        "$1" "$md" "$(range "${td[@]}")" "$(mbps "$md")" "$(gib "$(median "${cd[@]}")")" \
        "$ml" "$(range "${tl[@]}")" "$(mbps "$ml")" "$(gib "$(median "${cl[@]}")")" "$ratio" \
        "$2" "$(if [ "$ratio" -ge "$2" ]; then echo met; else echo missed; fi)"
}
echo "Medians of $rounds rounds (the range in brackets); CPU-s/GiB is system-wide."
echo
# The data-path targets: a put at 60% of a local copy's speed, a get at 50% of a cold cat's.
echo "| operation | dfs | local | dfs / local | target | |"
echo "|---|---|---|---|---|---|"
row "write (put vs cp + fsync)" 60 t_puts c_puts t_cps c_cps
row "cold read (get vs cat, both to /dev/null)" 50 t_gets c_gets t_cats c_cats
echo
echo "### Creates through the client library (dfs-bench creates, $creates files)"
echo
"$bench" creates --count "$creates" --local "$work"
rm -f "$src"
