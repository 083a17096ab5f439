#!/usr/bin/env bash
# Runs the whole dfs test suite, as CI does: formatting, lints, the binaries the process tests
# start, then every unit and integration test (real servers on 127.0.0.1, real QUIC, real disks).
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
if ! need cargo; then
    echo "cargo is missing: install a Rust toolchain (https://rustup.rs) first" >&2
    exit 1
fi
# System packages the suite uses (fuse3 for the mount tests; git and sqlite3 run on a mount;
# iproute2 for the network-partition test; chromium loads the status page); installed when
# missing and we may (root with apt-get). The mount tests also need /dev/fuse.
missing=()
need cc || missing+=(gcc)
need fusermount3 || missing+=(fuse3)
need git || missing+=(git)
need sqlite3 || missing+=(sqlite3)
need ip || missing+=(iproute2)
need chromium || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && need apt-get; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "missing system packages: ${missing[*]}" >&2
        exit 1
    fi
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo build --bins"
cargo build --workspace --bins --quiet
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "== cargo test"
cargo test --workspace 2>&1 | tee "$log"
echo "== pjdfstest"
scripts/pjdfstest.sh | tee -a "$log"

# One closing line for the whole suite. pjdfstest cases listed in
# tests/pjdfstest-known-failures.txt (with their reasons) are counted as skipped.
awk '
    /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
    /^pjdfstest-counts:/ { p += $2; s += $3 + $4 }
    END { printf "dfs: %d passed, %d failed, %d skipped\n", p, f, s }
' "$log"
