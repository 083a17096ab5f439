#!/usr/bin/env bash
# POSIX conformance: runs pjdfstest (crates.io) against a live dfs mount of a fresh dev cluster,
# prints its counts, and fails on any failure not listed, with its reason, in
# tests/pjdfstest-known-failures.txt. Needs root (pjdfstest switches users), /dev/fuse and fuse3.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
known=$repo/tests/pjdfstest-known-failures.txt

if ! command -v pjdfstest >/dev/null 2>&1; then
    echo "== installing pjdfstest"
    cargo install --quiet --locked pjdfstest
fi

free_port() { # a UDP port nothing listens on
    local p
    while :; do
        p=$((20000 + RANDOM % 20000))
        ss -Huln "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return; }
    done
}

work=$(mktemp -d /tmp/dfs-pjdfstest.XXXXXX)
# pjdfstest runs parts as other users: they must be able to reach the mount point.
chmod 755 "$work"
export DFS_DEV_DIR=$work/cluster DFS_MOUNT=$work/mnt DFS_MOUNT_OPTIONS=allow_other
export DFS_META_PORT=$(free_port) DFS_CHUNK_PORT=$(free_port)
cleanup() {
    "$repo/scripts/dev-cluster.sh" down >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
"$repo/scripts/dev-cluster.sh" up

cat >"$work/pjdfstest.toml" <<TOML
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}
[settings]
naptime = 1.0
allow_remount = false
[dummy_auth]
entries = [["nobody", "nogroup"], ["daemon", "daemon"]]
TOML
mkdir -p "$DFS_MOUNT/pjdfstest" "$work/second"
echo "== pjdfstest on $DFS_MOUNT"
set +e
(cd "$DFS_MOUNT/pjdfstest" && pjdfstest -c "$work/pjdfstest.toml" -p "$DFS_MOUNT/pjdfstest" -s "$work/second") \
    >"$work/pjdfstest.log" 2>&1
set -e
summary=$(grep '^Summary:' "$work/pjdfstest.log" || true)
if [ -z "$summary" ]; then
    tail -50 "$work/pjdfstest.log"
    echo "pjdfstest did not finish" >&2
    exit 1
fi
failed=$(awk '$2 == "FAILED" {print $1}' "$work/pjdfstest.log" | sort)
listed=$(sed -e 's/#.*//' -e 's/[[:space:]]*$//' "$known" | { grep -v '^$' || true; } | sort)
unexpected=$(comm -23 <(echo "$failed" | grep -v '^$' || true) <(echo "$listed" | grep -v '^$' || true))
now_passing=$(comm -13 <(echo "$failed" | grep -v '^$' || true) <(echo "$listed" | grep -v '^$' || true))
echo "pjdfstest $summary"
echo "known failures (tests/pjdfstest-known-failures.txt): $(echo "$listed" | grep -c . || true)"
if [ -n "$now_passing" ]; then
    echo "listed as failing but passed now (remove them from the list):"
    echo "$now_passing" | sed 's/^/  /'
fi
if [ -n "$unexpected" ]; then
    echo "unexpected pjdfstest failures:" >&2
    for t in $unexpected; do
        grep -A3 "^$t " "$work/pjdfstest.log" | head -4 >&2
    done
    exit 1
fi
echo "pjdfstest: no unexpected failures"
# passed, known failures, skipped: for scripts/test.sh's closing line.
echo "$summary" | awk '{ for (i = 1; i <= NF; i++) { v = $(i-1); if ($i ~ /^failed/) f = v; if ($i ~ /^skipped/) s = v; if ($i ~ /^passed/) p = v } } END { printf "pjdfstest-counts: %d %d %d\n", p, f, s }' 
