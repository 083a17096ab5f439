//! Self-healing with real processes: servers killed with SIGKILL and their shards rebuilt on
//! others, a flipped bit found by the scrub and repaired, garbage collected, a repair that
//! survives a metadata-server crash, a returning server reconciled, a full disk avoided. Every
//! test checks the content of everything it wrote.

use crate::mount::cluster_with_volume;
use dfs_common::proto::meta::{ClusterStatus, RepairProgress};
use dfs_tests::process::{Mount, ProcessCluster};
use dfs_tests::random_bytes;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

fn cli_json<T: serde::de::DeserializeOwned>(cluster: &ProcessCluster, args: &[&str]) -> T {
    let out = cluster.cli().arg("--json").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "dfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn status(cluster: &ProcessCluster) -> ClusterStatus {
    cli_json(cluster, &["cluster", "status"])
}

/// Polls `cond` until it holds, failing with `what` and the logs after `limit`.
fn wait_until(
    cluster: &ProcessCluster,
    limit: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until every referenced block has all its shards on live servers.
fn wait_fully_healthy(cluster: &ProcessCluster, limit: Duration) -> ClusterStatus {
    let mut last = None;
    wait_until(
        cluster,
        limit,
        "blocks never got back to full redundancy",
        || {
            let s = status(cluster);
            let done = s.health.degraded == 0 && s.health.unavailable == 0 && s.health.healthy > 0;
            last = Some(s);
            done
        },
    );
    last.expect("status read")
}

fn shard_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(subdirs) = fs::read_dir(dir.join("shards")) {
        for sub in subdirs.flatten() {
            for f in fs::read_dir(sub.path()).into_iter().flatten().flatten() {
                out.push(f.path());
            }
        }
    }
    out.sort();
    out
}

fn write_synced(path: &Path, data: &[u8]) {
    let mut f = fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all()
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn create_volume(cluster: &ProcessCluster) {
    let out = cluster
        .cli()
        .args(["volume", "create", "default", "--ec", "4+2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn killed_servers_are_rebuilt_and_a_returning_one_reconciled() {
    let mut cluster = ProcessCluster::start(8);
    wait_until(
        &cluster,
        Duration::from_secs(30),
        "servers never came up",
        || status(&cluster).servers.iter().filter(|s| s.up).count() == 8,
    );
    create_volume(&cluster);
    let m = Mount::new(&cluster, "default", "mnt", "").unwrap();
    let files: Vec<Vec<u8>> = (0..16)
        .map(|i| random_bytes(3 * MIB + i * 1000, i as u64))
        .collect();
    // One, then a second (m = 2) server dies while the writes go on.
    for (i, data) in files.iter().enumerate() {
        if i == 4 {
            cluster.kill_chunk(1);
        }
        if i == 10 {
            cluster.kill_chunk(5);
        }
        write_synced(&m.path(&format!("f{i}")), data);
    }
    // Everything reads bit-exact while degraded, and again once repaired.
    for (i, data) in files.iter().enumerate() {
        assert!(
            fs::read(m.path(&format!("f{i}"))).unwrap() == *data,
            "f{i} differs (degraded)"
        );
    }
    let healthy = wait_fully_healthy(&cluster, Duration::from_secs(120));
    assert_eq!(healthy.servers.iter().filter(|s| s.up).count(), 6);
    let progress: RepairProgress = cli_json(&cluster, &["repair", "status"]);
    assert!(
        progress.shards_done > 0,
        "nothing was rebuilt: {progress:?}"
    );
    let fresh = Mount::new(&cluster, "default", "fresh", "").unwrap();
    for (i, data) in files.iter().enumerate() {
        assert!(
            fs::read(fresh.path(&format!("f{i}"))).unwrap() == *data,
            "f{i} differs (repaired)"
        );
    }

    // A killed server comes back: everything it held was rebuilt elsewhere, so its old shards
    // are deleted, and no block counts them twice.
    assert!(!shard_files(&cluster.chunk_dir(1)).is_empty());
    cluster.start_chunk(1);
    wait_until(
        &cluster,
        Duration::from_secs(60),
        "the returning server kept stale shards",
        || shard_files(&cluster.chunk_dir(1)).is_empty(),
    );
    let s = wait_fully_healthy(&cluster, Duration::from_secs(30));
    assert_eq!(s.servers.iter().filter(|s| s.up).count(), 7);
    for (i, data) in files.iter().enumerate() {
        assert!(
            fs::read(fresh.path(&format!("f{i}"))).unwrap() == *data,
            "f{i} differs (reconciled)"
        );
    }
}

#[test]
fn scrub_finds_a_flipped_bit_and_repair_restores_it() {
    let cluster = ProcessCluster::start(7);
    wait_until(
        &cluster,
        Duration::from_secs(30),
        "servers never came up",
        || status(&cluster).servers.iter().filter(|s| s.up).count() == 7,
    );
    create_volume(&cluster);
    let m = Mount::new(&cluster, "default", "mnt", "").unwrap();
    let data = random_bytes(8 * MIB, 3);
    write_synced(&m.path("victim"), &data);
    // Flip one bit in the data part of one shard file.
    let victim = (0..7)
        .flat_map(|i| shard_files(&cluster.chunk_dir(i)))
        .next()
        .expect("some shard on disk");
    let mut bytes = fs::read(&victim).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x10;
    fs::write(&victim, &bytes).unwrap();

    let out = cluster.cli().args(["scrub", "start"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        &cluster,
        Duration::from_secs(60),
        "the scrub never found the flipped bit",
        || {
            let servers: Vec<(u64, dfs_common::proto::chunk::ScrubProgress)> =
                cli_json(&cluster, &["scrub", "status"]);
            servers.iter().map(|(_, p)| p.corrupt).sum::<u64>() == 1
        },
    );
    wait_until(
        &cluster,
        Duration::from_secs(60),
        "the bad shard was never rebuilt",
        || {
            let p: RepairProgress = cli_json(&cluster, &["repair", "status"]);
            p.shards_done >= 1
        },
    );
    wait_fully_healthy(&cluster, Duration::from_secs(60));
    // The corrupt copy is gone (or rewritten whole), and the file reads intact.
    assert!(
        fs::read(&victim).map_or(true, |now| now != bytes),
        "the corrupt shard is still there"
    );
    assert!(fs::read(m.path("victim")).unwrap() == data);
}

#[test]
fn garbage_is_collected_after_the_grace_period() {
    let cluster = cluster_with_volume();
    let m = Mount::new(&cluster, "default", "mnt", "").unwrap();
    let shards_on_disk = || -> usize {
        (0..6)
            .map(|i| shard_files(&cluster.chunk_dir(i)).len())
            .sum()
    };
    for i in 0..4 {
        write_synced(&m.path(&format!("g{i}")), &random_bytes(8 * MIB, i));
    }
    // Four 8 MiB files: eight 4 MiB blocks of six shards.
    assert_eq!(shards_on_disk(), 48);
    // Overwrite one whole file and delete the others: only the new blocks stay referenced.
    let kept = random_bytes(8 * MIB, 100);
    write_synced(&m.path("g0"), &kept);
    for i in 1..4 {
        fs::remove_file(m.path(&format!("g{i}"))).unwrap();
    }
    wait_until(
        &cluster,
        Duration::from_secs(60),
        "garbage shards were never deleted",
        || shards_on_disk() == 12,
    );
    wait_until(
        &cluster,
        Duration::from_secs(30),
        "capacity never came back",
        || {
            let used: u64 = status(&cluster).servers.iter().map(|s| s.used).sum();
            used < 16 * MIB as u64
        },
    );
    assert!(fs::read(m.path("g0")).unwrap() == kept);
}

#[test]
fn a_repair_interrupted_by_a_metadata_server_crash_resumes() {
    let mut cluster = ProcessCluster::start_with(7, |c| {
        // Slow enough that the crash lands in the middle of the repair.
        c.meta_args = ["--repair-rate", "1M", "--repair-parallel", "1"]
            .map(String::from)
            .to_vec();
    });
    wait_until(
        &cluster,
        Duration::from_secs(30),
        "servers never came up",
        || status(&cluster).servers.iter().filter(|s| s.up).count() == 7,
    );
    create_volume(&cluster);
    let m = Mount::new(&cluster, "default", "mnt", "").unwrap();
    let files: Vec<Vec<u8>> = (0..6).map(|i| random_bytes(8 * MIB, 50 + i)).collect();
    for (i, data) in files.iter().enumerate() {
        write_synced(&m.path(&format!("r{i}")), data);
    }
    cluster.kill_chunk(3);
    wait_until(
        &cluster,
        Duration::from_secs(60),
        "the repair never started",
        || {
            let p: RepairProgress = cli_json(&cluster, &["repair", "status"]);
            p.shards_done >= 1 && p.shards_left >= 1
        },
    );
    cluster.kill_meta();
    cluster.start_meta();
    wait_fully_healthy(&cluster, Duration::from_secs(120));
    let fresh = Mount::new(&cluster, "default", "fresh", "").unwrap();
    for (i, data) in files.iter().enumerate() {
        assert!(
            fs::read(fresh.path(&format!("r{i}"))).unwrap() == *data,
            "r{i} differs"
        );
    }
}

#[test]
fn a_full_server_is_avoided_without_errors() {
    let cluster = ProcessCluster::start_with(7, |c| {
        c.chunk_args
            .insert(0, vec!["--capacity".into(), "3M".into()]);
    });
    wait_until(
        &cluster,
        Duration::from_secs(30),
        "servers never came up",
        || status(&cluster).servers.iter().filter(|s| s.up).count() == 7,
    );
    create_volume(&cluster);
    let m = Mount::new(&cluster, "default", "mnt", "").unwrap();
    let data = random_bytes(64 * MIB, 9);
    write_synced(&m.path("big"), &data);
    assert!(fs::read(m.path("big")).unwrap() == data);
    let held: u64 = shard_files(&cluster.chunk_dir(0))
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert!(held <= 3 * MIB as u64, "the full server took {held} bytes");
}
