#!/usr/bin/env bash
# Repair throughput: a dev cluster of 7 chunk servers (4+2), DFS_BENCH_REPAIR_SIZE of data
# written, one chunk server killed with SIGKILL, then the time until every block is back at
# full redundancy. A `dfs put` of DFS_BENCH_PUT_SIZE is timed before the kill and again while
# the repair runs, to show what repair costs clients. Prints Markdown for docs/BENCHMARKS.md.
#
# Settings: DFS_BENCH_REPAIR_SIZE (1g), DFS_BENCH_PUT_SIZE (256m), DFS_BENCH_DIR
# (/tmp/dfs-bench-repair); the repair's own limits come from DFS_META_REPAIR_RATE (100M) and
# DFS_META_REPAIR_PARALLEL (4).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
size=${DFS_BENCH_REPAIR_SIZE:-1g}
put_size=${DFS_BENCH_PUT_SIZE:-256m}
work=${DFS_BENCH_DIR:-/tmp/dfs-bench-repair}
rm -rf "$work"
mkdir -p "$work"
export DFS_DEV_DIR=$work/cluster DFS_CHUNK_SERVERS=7
# Detect the dead server and scan for work quickly, so the figure is the rebuild itself.
export DFS_META_SERVER_TIMEOUT_SECS=3 DFS_META_REPAIR_INTERVAL_SECS=1
"$repo/scripts/dev-cluster.sh" up >/dev/null
trap '"$repo/scripts/dev-cluster.sh" down >/dev/null' EXIT
# shellcheck disable=SC1091
. "$DFS_DEV_DIR/cluster.env"

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
bytes() { numfmt --from=iec "${1^^}"; }
health() { dfs --json cluster status | python3 -c 'import json,sys; h=json.load(sys.stdin)["health"]; print(h["degraded"], h["unavailable"])'; }

head -c "$(bytes "$size")" /dev/urandom >"$work/data"
head -c "$(bytes "$put_size")" /dev/urandom >"$work/put"
dfs put "$work/data" default:/data >/dev/null
t0=$(now); dfs put "$work/put" default:/before >/dev/null; t1=$(now)
put_idle=$(secs "$t0" "$t1")

victim=$(echo "$DFS_CHUNK_PIDS" | awk '{print $1}')
kill -9 "$victim"
killed=$(now)
# Wait until the metadata server has noticed and the scan found work.
until [ "$(health)" != "0 0" ]; do sleep 0.2; done
noticed=$(now)
t0=$(now); dfs put "$work/put" default:/during >/dev/null; t1=$(now)
put_busy=$(secs "$t0" "$t1")
until [ "$(health)" = "0 0" ]; do sleep 0.5; done
repaired=$(now)
progress=$(dfs --json repair status)
rebuilt=$(echo "$progress" | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_done"])')
busy_ms=$(echo "$progress" | python3 -c 'import json,sys; print(json.load(sys.stdin)["busy_ms"])')
dfs get default:/data "$work/back" >/dev/null
cmp "$work/data" "$work/back" >/dev/null || { echo "data differs after repair" >&2; exit 1; }

mib() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }
echo "| measure | value |"
echo "|---|---|"
echo "| data written before the kill | $size |"
echo "| shard bytes rebuilt | $(mib "$rebuilt") MiB |"
echo "| kill to detection (server timeout 3 s, scan every 1 s) | $(secs "$killed" "$noticed") s |"
echo "| detection to full redundancy | $(secs "$noticed" "$repaired") s |"
echo "| rebuild rate (rebuilt bytes / time rebuilding) | $(awk -v b="$rebuilt" -v ms="$busy_ms" 'BEGIN { printf "%.0f", (ms > 0) ? b / 1048576 / (ms / 1000) : 0 }') MiB/s |"
echo "| \`dfs put\` of $put_size, idle cluster | $put_idle s ($(awk -v s="$put_idle" -v b="$(bytes "$put_size")" 'BEGIN { printf "%.0f", b / 1048576 / s }') MiB/s) |"
echo "| \`dfs put\` of $put_size, during the repair | $put_busy s ($(awk -v s="$put_busy" -v b="$(bytes "$put_size")" 'BEGIN { printf "%.0f", b / 1048576 / s }') MiB/s) |"
