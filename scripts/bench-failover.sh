#!/usr/bin/env bash
# Metadata failover on a dev cluster of three metadata servers: SIGKILL of the leader, then
# the time until a create on the mount returns, and until a rewrite of an existing file does
# (a change to a file waits out the old leader's open delegations). The killed member is
# restarted and caught up before the next round. Prints each round and the medians, in
# milliseconds.
#
#   scripts/bench-failover.sh [ROUNDS]      (default: 5)
#
# Settings: DFS_BENCH_DIR (/tmp/dfs-bench-failover), where the cluster lives.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-5}
work=${DFS_BENCH_DIR:-/tmp/dfs-bench-failover}
export DFS_DEV_DIR=$work/cluster DFS_META_SERVERS=3
"$repo/scripts/dev-cluster.sh" up >/dev/null
trap '"$repo/scripts/dev-cluster.sh" down >/dev/null' EXIT
# shellcheck disable=SC1091
. "$DFS_DEV_DIR/cluster.env"
first_port=${DFS_META%%,*}
first_port=${first_port##*:}

# The address of the leader, from the first member that answers.
leader() { dfs meta status | awk '$3 == "leader" { print $2 }'; }

# Waits until all three members are voters with no lag.
settled() {
    local deadline=$((SECONDS + 60))
    until [ "$(dfs meta status | awk 'NR > 1 && ($3 == "leader" || $3 == "follower") && $NF == "0"' | wc -l)" = 3 ]; do
        [ $SECONDS -lt $deadline ] || { dfs meta status >&2; echo "the group did not settle" >&2; exit 1; }
        sleep 0.2
    done
}

times=()
rewrites=()
for round in $(seq 1 "$rounds"); do
    settled
    touch "$DFS_MOUNT/warm-$round"
    addr=$(leader)
    i=$((${addr##*:} - first_port + 1))
    name=meta
    [ "$i" = 1 ] || name=meta$i
    pid=$(cat "$DFS_DEV_DIR/pids/$name.pid")
    start=$(date +%s%N)
    kill -9 "$pid"
    touch "$DFS_MOUNT/after-kill-$round"
    end=$(date +%s%N)
    printf 'rewritten\n' >"$DFS_MOUNT/warm-$round"
    rewritten=$(date +%s%N)
    ms=$(((end - start) / 1000000))
    times+=("$ms")
    rewrites+=("$(((rewritten - start) / 1000000))")
    echo "round $round: killed leader $addr; the next create returned after $ms ms, a rewrite of an existing file after ${rewrites[-1]} ms"
    "$repo/scripts/dev-cluster.sh" up >/dev/null
done
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo "median of $rounds: create $(median "${times[@]}") ms, rewrite $(median "${rewrites[@]}") ms"
