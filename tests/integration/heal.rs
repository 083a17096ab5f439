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

pub(crate) fn cli_json<T: serde::de::DeserializeOwned>(
    cluster: &ProcessCluster,
    args: &[&str],
) -> T {
    let out = cluster.cli().arg("--json").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "dfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

pub(crate) fn status(cluster: &ProcessCluster) -> ClusterStatus {
    cli_json(cluster, &["cluster", "status"])
}

/// Polls `cond` until it holds, failing with `what` and the logs after `limit`.
pub(crate) fn wait_until(
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

/// Waits until every referenced block has all its shards on live servers, as seen by a repair
/// scan that started after this call (earlier scans may predate what the test just did).
pub(crate) fn wait_fully_healthy(cluster: &ProcessCluster, limit: Duration) -> ClusterStatus {
    let base = status(cluster).repair.scans;
    let mut last = None;
    wait_until(
        cluster,
        limit,
        "blocks never got back to full redundancy",
        || {
            let s = status(cluster);
            let done = s.repair.scans >= base + 2
                && s.health.degraded == 0
                && s.health.unavailable == 0
                && s.health.healthy > 0;
            last = Some(s);
            done
        },
    );
    last.expect("status read")
}

/// The shards the chunk server whose data directory is `dir` holds, sorted: the path of each
/// shard file, and for each shard in a slot file (small shards) a name made of that file's
/// path, the slot and the shard, `<slot file>#<slot>/<block>-<index>`, which is no file.
pub(crate) fn shard_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(subdirs) = fs::read_dir(dir.join("shards")) {
        for sub in subdirs.flatten() {
            for f in fs::read_dir(sub.path()).into_iter().flatten().flatten() {
                out.push(f.path());
            }
        }
    }
    for f in fs::read_dir(dir.join("slots"))
        .into_iter()
        .flatten()
        .flatten()
    {
        out.extend(slotted_shards(&f.path()));
    }
    out.sort();
    out
}

/// The shards in slot file `path` (`slots-<KiB>k`): each slot that starts with a shard header's
/// magic, named as [`shard_files`] names them.
fn slotted_shards(path: &Path) -> Vec<PathBuf> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let Some(kib) = name
        .strip_prefix("slots-")
        .and_then(|n| n.strip_suffix('k'))
        .and_then(|n| n.parse::<usize>().ok())
    else {
        return Vec::new();
    };
    let bytes = fs::read(path).unwrap_or_default();
    bytes
        .chunks(kib << 10)
        .enumerate()
        .filter(|(_, slot)| slot.len() >= 29 && &slot[..8] == b"DFSSHARD")
        .map(|(i, slot)| {
            let block = u64::from_le_bytes(slot[20..28].try_into().unwrap());
            PathBuf::from(format!(
                "{}#{i}/{block:016x}-{:02}",
                path.display(),
                slot[28]
            ))
        })
        .collect()
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
    // The corrupt copy stays until the repaired one is placed, then reconciliation deletes
    // it (or the rebuild rewrote it whole); the file reads intact.
    wait_until(
        &cluster,
        Duration::from_secs(60),
        "the corrupt shard is still there",
        || fs::read(&victim).map_or(true, |now| now != bytes),
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
    let used = || -> u64 { status(&cluster).servers.iter().map(|s| s.used).sum() };
    for i in 0..4 {
        write_synced(&m.path(&format!("g{i}")), &random_bytes(8 * MIB, i));
    }
    // Four 8 MiB files: at least eight 4 MiB blocks of six shards.
    let before = shards_on_disk();
    assert!(before >= 48, "{before} shards on disk");
    wait_until(
        &cluster,
        Duration::from_secs(30),
        "usage never reported",
        || used() >= 32 * MIB as u64,
    );
    let used_before = used();
    // Overwrite one whole file and delete the others: only the new blocks stay referenced.
    let kept = random_bytes(8 * MIB, 100);
    write_synced(&m.path("g0"), &kept);
    for i in 1..4 {
        fs::remove_file(m.path(&format!("g{i}"))).unwrap();
    }
    // Every shard left on disk is one the cluster places, and those are the kept file's only.
    wait_until(
        &cluster,
        Duration::from_secs(60),
        "garbage shards were never deleted",
        || {
            let s = status(&cluster);
            let placed: u64 = s.servers.iter().map(|s| s.placed).sum();
            s.health.garbage == 0
                && s.health.healthy * 6 == placed
                && placed as usize == shards_on_disk()
                && placed < 24
        },
    );
    wait_until(
        &cluster,
        Duration::from_secs(30),
        "capacity never came back",
        || used() < used_before / 2,
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
    // A shard in a slot counts as its largest slot.
    let held: u64 = shard_files(&cluster.chunk_dir(0))
        .iter()
        .map(|p| fs::metadata(p).map_or(128 << 10, |m| m.len()))
        .sum();
    assert!(held <= 3 * MIB as u64, "the full server took {held} bytes");
}

fn up_count(cluster: &ProcessCluster) -> usize {
    status(cluster).servers.iter().filter(|s| s.up).count()
}

fn placed_on(cluster: &ProcessCluster, id: u64) -> Option<u64> {
    status(cluster)
        .servers
        .iter()
        .find(|s| s.id.0 == id)
        .map(|s| s.placed)
}

#[test]
fn a_drained_server_is_emptied_then_removed() {
    let mut cluster = ProcessCluster::start(7);
    wait_until(
        &cluster,
        Duration::from_secs(30),
        "servers never came up",
        || up_count(&cluster) == 7,
    );
    create_volume(&cluster);
    let m = Mount::new(&cluster, "default", "mnt", "").unwrap();
    let files: Vec<Vec<u8>> = (0..6).map(|i| random_bytes(6 * MIB, 70 + i)).collect();
    for (i, data) in files.iter().enumerate() {
        write_synced(&m.path(&format!("d{i}")), data);
    }
    let id = cluster.chunk_id(2);
    wait_until(
        &cluster,
        Duration::from_secs(30),
        "the scan never counted placed shards",
        || placed_on(&cluster, id).unwrap_or(0) > 0,
    );
    // A server that is up cannot be removed, drained or not.
    let out = cluster
        .cli()
        .args(["node", "remove", &id.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is up"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = cluster
        .cli()
        .args(["node", "drain", &id.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Reads keep working while shards move.
    for (i, data) in files.iter().enumerate() {
        assert!(
            fs::read(m.path(&format!("d{i}"))).unwrap() == *data,
            "d{i} differs while draining"
        );
    }
    wait_until(
        &cluster,
        Duration::from_secs(120),
        "the drain never finished",
        || placed_on(&cluster, id) == Some(0),
    );
    // New writes avoid the draining server.
    write_synced(&m.path("after"), &random_bytes(8 * MIB, 99));
    std::thread::sleep(SCAN_SETTLE);
    assert_eq!(
        placed_on(&cluster, id),
        Some(0),
        "a new block went to the draining server"
    );

    cluster.kill_chunk(2);
    wait_until(
        &cluster,
        Duration::from_secs(30),
        "the stopped server never went down",
        || up_count(&cluster) == 6,
    );
    let out = cluster
        .cli()
        .args(["node", "remove", &id.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = wait_fully_healthy(&cluster, Duration::from_secs(30));
    assert!(
        s.servers.iter().all(|s| s.id.0 != id),
        "the removed server is still listed"
    );
    let fresh = Mount::new(&cluster, "default", "fresh", "").unwrap();
    for (i, data) in files.iter().enumerate() {
        assert!(
            fs::read(fresh.path(&format!("d{i}"))).unwrap() == *data,
            "d{i} differs after removal"
        );
    }
}

/// Long enough for a repair scan (every 0.5 s in tests) to have seen the latest writes.
const SCAN_SETTLE: Duration = Duration::from_secs(2);

#[test]
fn a_server_cut_off_and_back_is_repaired_around_and_reconciled() {
    let mut cluster = ProcessCluster::start(7);
    wait_until(
        &cluster,
        Duration::from_secs(30),
        "servers never came up",
        || up_count(&cluster) == 7,
    );
    create_volume(&cluster);
    let m = Mount::new(&cluster, "default", "mnt", "").unwrap();
    let files: Vec<Vec<u8>> = (0..5).map(|i| random_bytes(5 * MIB, 90 + i)).collect();
    for (i, data) in files.iter().enumerate() {
        write_synced(&m.path(&format!("c{i}")), data);
    }
    let id = cluster.chunk_id(4);
    let held_before = shard_files(&cluster.chunk_dir(4)).len();
    assert!(held_before > 0);

    // Silent to everyone: marked down, and its shards rebuilt on the other six.
    cluster.freeze_chunk(4, true);
    wait_until(
        &cluster,
        Duration::from_secs(30),
        "the silent server was never marked down",
        || up_count(&cluster) == 6,
    );
    wait_fully_healthy(&cluster, Duration::from_secs(120));
    assert_eq!(placed_on(&cluster, id), Some(0));
    let fresh = Mount::new(&cluster, "default", "fresh", "").unwrap();
    for (i, data) in files.iter().enumerate() {
        assert!(
            fs::read(fresh.path(&format!("c{i}"))).unwrap() == *data,
            "c{i} differs while cut off"
        );
    }

    // Back: it rejoins, and its copies of shards now placed elsewhere are deleted.
    cluster.freeze_chunk(4, false);
    wait_until(
        &cluster,
        Duration::from_secs(30),
        "the server never came back",
        || up_count(&cluster) == 7,
    );
    wait_until(
        &cluster,
        Duration::from_secs(60),
        "the returning server kept stale shards",
        || shard_files(&cluster.chunk_dir(4)).is_empty(),
    );
    wait_fully_healthy(&cluster, Duration::from_secs(30));
    for (i, data) in files.iter().enumerate() {
        assert!(
            fs::read(fresh.path(&format!("c{i}"))).unwrap() == *data,
            "c{i} differs after return"
        );
    }
}

#[test]
fn a_new_server_gets_its_share_on_rebalance() {
    let mut cluster = ProcessCluster::start(6);
    wait_until(
        &cluster,
        Duration::from_secs(30),
        "servers never came up",
        || up_count(&cluster) == 6,
    );
    create_volume(&cluster);
    let m = Mount::new(&cluster, "default", "mnt", "").unwrap();
    let files: Vec<Vec<u8>> = (0..6).map(|i| random_bytes(8 * MIB, 110 + i)).collect();
    for (i, data) in files.iter().enumerate() {
        write_synced(&m.path(&format!("b{i}")), data);
    }
    // Twelve blocks, six shards each, all on the six servers; then a seventh joins.
    let new = cluster.add_chunk();
    wait_until(
        &cluster,
        Duration::from_secs(30),
        "the new server never came up",
        || up_count(&cluster) == 7,
    );
    let id = cluster.chunk_id(new);
    assert_eq!(placed_on(&cluster, id).unwrap_or(0), 0);
    let out = cluster
        .cli()
        .args(["rebalance", "--wait"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = wait_fully_healthy(&cluster, Duration::from_secs(60));
    let counts: Vec<u64> = s.servers.iter().map(|s| s.placed).collect();
    let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(max - min <= 2, "still uneven: {counts:?}");
    assert!(
        placed_on(&cluster, id).unwrap() >= 8,
        "the new server got too little: {counts:?}"
    );
    // The moved shards' old copies are gone from disk, and everything reads back.
    let on_disk: usize = (0..7)
        .map(|i| shard_files(&cluster.chunk_dir(i)).len())
        .sum();
    assert_eq!(on_disk as u64, counts.iter().sum::<u64>());
    let fresh = Mount::new(&cluster, "default", "fresh", "").unwrap();
    for (i, data) in files.iter().enumerate() {
        assert!(
            fs::read(fresh.path(&format!("b{i}"))).unwrap() == *data,
            "b{i} differs"
        );
    }
}

#[test]
fn a_server_partitioned_off_the_network_is_repaired_around_and_reconciled() {
    let net = dfs_tests::netns::NetNs::create(((std::process::id() % 250) + 1) as u8);
    let cluster = ProcessCluster::start_with(7, |c| {
        // The metadata server listens on every address, so that the namespace reaches it
        // through the link; chunk server 6 lives on the far side of that link.
        c.meta_listen = Some(format!("0.0.0.0:{}", c.meta_addr.port()));
        c.chunk_netns.insert(
            6,
            (
                net.name.clone(),
                net.ns_ip.clone(),
                format!("{}:{}", net.host_ip, c.meta_addr.port()),
            ),
        );
    });
    wait_until(
        &cluster,
        Duration::from_secs(30),
        "servers never came up",
        || up_count(&cluster) == 7,
    );
    create_volume(&cluster);
    let m = Mount::new(&cluster, "default", "mnt", "").unwrap();
    let files: Vec<Vec<u8>> = (0..6).map(|i| random_bytes(5 * MIB, 130 + i)).collect();
    for (i, data) in files.iter().enumerate() {
        write_synced(&m.path(&format!("p{i}")), data);
    }
    let id = cluster.chunk_id(6);
    assert!(
        !shard_files(&cluster.chunk_dir(6)).is_empty(),
        "the far server got no shards"
    );

    // Cut the link: the server keeps running but nobody reaches it, nor it anybody.
    net.set_link(false);
    wait_until(
        &cluster,
        Duration::from_secs(30),
        "the partitioned server was never marked down",
        || up_count(&cluster) == 6,
    );
    wait_fully_healthy(&cluster, Duration::from_secs(120));
    assert_eq!(placed_on(&cluster, id), Some(0));
    // Reads and writes go on without it.
    let fresh = Mount::new(&cluster, "default", "fresh", "").unwrap();
    for (i, data) in files.iter().enumerate() {
        assert!(
            fs::read(fresh.path(&format!("p{i}"))).unwrap() == *data,
            "p{i} differs while partitioned"
        );
    }
    let during = random_bytes(6 * MIB, 140);
    write_synced(&fresh.path("during"), &during);
    // Unable to reach the metadata server, it deleted nothing.
    assert!(!shard_files(&cluster.chunk_dir(6)).is_empty());

    // Heal the partition: it comes back, its stale copies are deleted, nothing is corrupt.
    net.set_link(true);
    wait_until(
        &cluster,
        Duration::from_secs(60),
        "the server never came back",
        || up_count(&cluster) == 7,
    );
    wait_until(
        &cluster,
        Duration::from_secs(60),
        "the returning server kept stale shards",
        || shard_files(&cluster.chunk_dir(6)).is_empty(),
    );
    wait_fully_healthy(&cluster, Duration::from_secs(30));
    let again = Mount::new(&cluster, "default", "again", "").unwrap();
    for (i, data) in files.iter().enumerate() {
        assert!(
            fs::read(again.path(&format!("p{i}"))).unwrap() == *data,
            "p{i} differs after the partition"
        );
    }
    assert!(fs::read(again.path("during")).unwrap() == during);
    drop(cluster);
}

/// Small shards live in slot files, found again at start by reading the slots: with every
/// chunk server killed (SIGKILL) and started again, files whose blocks are all in slots read
/// back whole through a new mount (had the servers lost them, no block could be read).
#[test]
fn slotted_shards_survive_every_chunk_server_killed_and_restarted() {
    let mut cluster = cluster_with_volume();
    let files: Vec<Vec<u8>> = (0..8u64)
        .map(|i| random_bytes(1 + 13_001 * i as usize, i))
        .collect();
    {
        let m = Mount::new(&cluster, "default", "m", "noinline").unwrap();
        for (i, data) in files.iter().enumerate() {
            fs::write(m.path(&format!("f{i}")), data).unwrap();
        }
    }
    for i in 0..6 {
        let held = shard_files(&cluster.chunk_dir(i));
        assert!(
            held.len() == files.len() && held.iter().all(|p| p.to_string_lossy().contains('#')),
            "server {i} holds {held:?}, not one slotted shard per file"
        );
        cluster.kill_chunk(i);
    }
    let before: Vec<String> = status(&cluster)
        .servers
        .into_iter()
        .map(|s| s.addr)
        .collect();
    for i in 0..6 {
        cluster.start_chunk(i);
    }
    // Each restarted server listens on a new port; its heartbeats carry the address and the
    // shard count its reopened store found.
    wait_until(
        &cluster,
        Duration::from_secs(60),
        "six restarted servers up with their shards",
        || {
            let s = status(&cluster);
            s.servers
                .iter()
                .filter(|s| s.up && !before.contains(&s.addr) && s.shards == files.len() as u64)
                .count()
                == 6
        },
    );
    let fresh = Mount::new(&cluster, "default", "fresh", "").unwrap();
    for (i, data) in files.iter().enumerate() {
        let back = fs::read(fresh.path(&format!("f{i}"))).unwrap();
        assert!(back == *data, "f{i} read back different bytes");
    }
}
