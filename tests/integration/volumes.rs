//! Volume administration against real processes: quotas (EDQUOT through the client library
//! and through the kernel), the read-only flag, and deleting volumes.

use crate::cli::{fails_with as fails, ok, run as dfs};
use crate::mount::cluster_with_volume;
use dfs_client::client::ClientOptions;
use dfs_client::Client;
use dfs_common::proto::meta::VolumeChange;
use dfs_common::{FsError, InodeId};
use dfs_tests::process::{Mount, ProcessCluster};
use dfs_tests::random_bytes;
use std::fs;
use std::time::{Duration, Instant};

const EDQUOT: i32 = 122;
const EROFS: i32 = 30;
const MIB: usize = 1 << 20;

fn volume_json(cluster: &ProcessCluster, name: &str) -> serde_json::Value {
    serde_json::from_str(&ok(cluster, &["volume", "info", name, "--json"])).unwrap()
}

fn errno(result: std::io::Result<()>) -> Option<i32> {
    result.err().and_then(|e| e.raw_os_error())
}

/// Shards held by the six chunk servers, in files or slots.
fn all_shard_files(cluster: &ProcessCluster) -> usize {
    (0..6)
        .map(|i| crate::heal::shard_files(&cluster.chunk_dir(i)).len())
        .sum()
}

#[test]
fn quotas_refuse_growth_with_edquot_and_lose_nothing() {
    let cluster = cluster_with_volume();
    ok(
        &cluster,
        &[
            "volume",
            "create",
            "small",
            "--ec",
            "4+2",
            "--quota-bytes",
            "10M",
            "--quota-inodes",
            "5",
        ],
    );
    let info = ok(&cluster, &["volume", "info", "small"]);
    assert!(info.contains("0 B of 10.0 MiB (0%)"), "{info}");
    assert!(info.contains("0 of 5 (0%)"), "{info}");

    // Through the kernel: the second 6 MiB file passes the quota and fails with EDQUOT.
    let m = Mount::new(&cluster, "small", "small", "").unwrap();
    let first = random_bytes(6 * MIB, 1);
    fs::write(m.path("first"), &first).unwrap();
    let second = random_bytes(6 * MIB, 2);
    assert_eq!(
        errno(fs::write(m.path("second"), &second)),
        Some(EDQUOT),
        "{}",
        cluster.logs()
    );
    // Nothing already written is lost, and the refused write kept what fit.
    assert!(fs::read(m.path("first")).unwrap() == first);
    let kept = fs::read(m.path("second")).unwrap();
    assert!(kept.len() <= 4 * MIB && kept[..] == second[..kept.len()]);
    let used = volume_json(&cluster, "small")["used_bytes"]
        .as_u64()
        .unwrap();
    assert_eq!(used, (first.len() + kept.len()) as u64);
    assert!(used <= 10 * MIB as u64);
    // Growing by truncate is refused by the metadata server itself.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.path("first"))
        .unwrap();
    assert_eq!(
        f.set_len(11 * MIB as u64).unwrap_err().raw_os_error(),
        Some(EDQUOT)
    );
    drop(f);
    // df shows the quota as the volume's size.
    let df = std::process::Command::new("df")
        .args(["-B1", "--output=size,itotal"])
        .arg(&m.dir)
        .output()
        .unwrap();
    let df = String::from_utf8_lossy(&df.stdout);
    let figures: Vec<u64> = df
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(figures, vec![10 * MIB as u64, 5], "{df}");

    // The byte quota is full: one more byte is refused, an empty file is not.
    assert_eq!(errno(fs::write(m.path("byte"), b"1")), Some(EDQUOT));
    fs::remove_file(m.path("byte")).unwrap();
    // Inodes: two files exist; three more fit, the sixth does not.
    fs::create_dir(m.path("dir")).unwrap();
    fs::write(m.path("dir/a"), b"").unwrap();
    std::os::unix::fs::symlink("first", m.path("link")).unwrap();
    assert_eq!(errno(fs::write(m.path("dir/b"), b"")), Some(EDQUOT));
    assert_eq!(errno(fs::create_dir(m.path("d2"))), Some(EDQUOT));
    // Removing one makes room again.
    fs::remove_file(m.path("link")).unwrap();
    fs::write(m.path("dir/b"), b"").unwrap();

    // Through the library, and the metadata server's own check when two clients each stay
    // under the quota in their own view but not together.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let connect = || async {
            Client::connect(
                cluster.meta_addr,
                &cluster.certs.client_identity(),
                ClientOptions::default(),
            )
            .await
            .unwrap()
        };
        let (a, b) = (connect().await, connect().await);
        let volume = a.volume("small").await.unwrap();
        a.set_volume(
            "small",
            VolumeChange {
                quota_bytes: Some(Some(volume.used_bytes + 4 * MIB as u64)),
                quota_inodes: Some(None),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let root = volume.root;
        let mut fa = a.create(root, "from-a", 0o644, 0, 0).await.unwrap();
        let mut fb = b.create(root, "from-b", 0o644, 0, 0).await.unwrap();
        fa.write(0, &random_bytes(3 * MIB, 3)).await.unwrap();
        fb.write(0, &random_bytes(3 * MIB, 4)).await.unwrap();
        fb.close().await.unwrap();
        let err = fa.close().await.unwrap_err();
        assert!(matches!(err, FsError::QuotaExceeded(_)), "{err:?}");
        // Within one client, the write call itself is refused.
        let mut fb2 = b.open(lookup(&b, root, "from-b").await).await.unwrap();
        let err = fb2
            .write(3 * MIB as u64, &random_bytes(2 * MIB, 5))
            .await
            .unwrap_err();
        assert!(matches!(err, FsError::QuotaExceeded(_)), "{err:?}");
        drop(fb2);
        // Lifting the quota lets writes through again.
        a.set_volume(
            "small",
            VolumeChange {
                quota_bytes: Some(None),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let mut fa = a.open(lookup(&a, root, "from-a").await).await.unwrap();
        fa.write(0, &random_bytes(3 * MIB, 3)).await.unwrap();
        fa.close().await.unwrap();
    });
    assert_eq!(
        fs::read(m.path("from-b")).unwrap(),
        random_bytes(3 * MIB, 4)
    );
    assert!(fs::read(m.path("first")).unwrap() == first);
}

async fn lookup(client: &Client, parent: InodeId, name: &str) -> InodeId {
    client.lookup(parent, name).await.unwrap().ino
}

#[test]
fn read_only_volumes_and_volume_deletion() {
    let cluster = cluster_with_volume();
    ok(&cluster, &["volume", "create", "scratch", "--ec", "2+1"]);
    let m = Mount::new(&cluster, "scratch", "scratch", "").unwrap();
    let data = random_bytes(5 * MIB, 7);
    fs::write(m.path("kept"), &data).unwrap();

    // Read-only: every change fails with EROFS, reads go on.
    let out = ok(
        &cluster,
        &["volume", "set", "scratch", "--read-only", "true"],
    );
    assert!(out.contains("read-only"), "{out}");
    assert_eq!(errno(fs::write(m.path("new"), b"x")), Some(EROFS));
    assert_eq!(errno(fs::create_dir(m.path("dir"))), Some(EROFS));
    assert_eq!(errno(fs::remove_file(m.path("kept"))), Some(EROFS));
    assert!(fs::read(m.path("kept")).unwrap() == data);
    ok(
        &cluster,
        &["volume", "set", "scratch", "--read-only", "false"],
    );
    fs::write(m.path("new"), b"x").unwrap();

    // Failure paths of `volume set` and `volume delete`.
    fails(
        &cluster,
        &["volume", "set", "nosuch", "--read-only", "true"],
        1,
        "no volume named \"nosuch\"",
    );
    fails(
        &cluster,
        &["volume", "set", "scratch"],
        1,
        "nothing to change",
    );
    fails(
        &cluster,
        &["volume", "set", "scratch", "--quota-bytes", "12X"],
        2,
        "unknown unit",
    );
    fails(
        &cluster,
        &["volume", "delete", "scratch"],
        1,
        "is not empty (2 inodes",
    );
    fails(
        &cluster,
        &["volume", "delete", "nosuch"],
        1,
        "no volume named",
    );

    // An empty volume goes without --force; a full one with it, and its space comes back.
    ok(&cluster, &["volume", "create", "empty"]);
    ok(&cluster, &["volume", "delete", "empty"]);
    assert!(all_shard_files(&cluster) > 0);
    drop(m);
    let out = ok(&cluster, &["volume", "delete", "scratch", "--force"]);
    assert!(out.contains("deleted volume scratch (2 inodes"), "{out}");
    let list = ok(&cluster, &["volume", "list"]);
    assert!(
        list.contains("default") && !list.contains("scratch") && !list.contains("empty"),
        "{list}"
    );
    fails(
        &cluster,
        &["volume", "info", "scratch"],
        1,
        "no volume named",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while all_shard_files(&cluster) > 0 {
        assert!(
            Instant::now() < deadline,
            "shards of the deleted volume were never collected\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The name can be used again, for a new, empty volume.
    ok(&cluster, &["volume", "create", "scratch"]);
    let v = volume_json(&cluster, "scratch");
    assert_eq!(v["used_inodes"], 0);
    assert_eq!(v["usage"]["files"], 0);
}

#[test]
fn fsck_finds_degraded_blocks_and_corrupt_shards() {
    let mut cluster = cluster_with_volume();
    let m = Mount::new(&cluster, "default", "m", "").unwrap();
    let files: Vec<Vec<u8>> = (0..4)
        .map(|i| random_bytes(3 * MIB + i, 20 + i as u64))
        .collect();
    for (i, f) in files.iter().enumerate() {
        fs::write(m.path(&format!("f{i}")), f).unwrap();
    }
    fs::create_dir(m.path("dir")).unwrap();
    fs::write(m.path("dir/small"), b"small").unwrap();
    drop(m);

    let out = ok(&cluster, &["fsck", "default"]);
    assert!(
        out.contains("7 inodes, 5 files") && out.contains("no problems"),
        "{out}"
    );
    let out = ok(&cluster, &["fsck", "default", "--deep"]);
    assert!(out.contains("no problems"), "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&ok(&cluster, &["fsck", "default", "--deep", "--json"])).unwrap();
    // A block or more per large file (a write-back round may cut one in two); the small one
    // is kept in the metadata store, with no shards to verify.
    let blocks = report["blocks"].as_u64().unwrap();
    assert!(blocks >= 4, "{report}");
    assert_eq!(report["shards_verified"].as_u64().unwrap(), blocks * 6);
    fails(
        &cluster,
        &["fsck", "nosuch"],
        1,
        "no volume named \"nosuch\"",
    );

    // A flipped bit in one shard: only the deep check sees it.
    let victim = (0..6)
        .map(|i| cluster.chunk_dir(i).join("shards"))
        .flat_map(|d| fs::read_dir(d).into_iter().flatten().flatten())
        .flat_map(|sub| fs::read_dir(sub.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .find(|p| fs::metadata(p).is_ok_and(|m| m.len() > 4096))
        .expect("a shard file");
    let mut bytes = fs::read(&victim).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x10;
    fs::write(&victim, &bytes).unwrap();
    ok(&cluster, &["fsck", "default"]);
    let out = dfs(&cluster, &["fsck", "default", "--deep"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("error: shard") && stdout.contains("1 problems"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 problems found"));

    // A chunk server down: blocks are degraded.
    cluster.kill_chunk(5);
    let deadline = Instant::now() + Duration::from_secs(30);
    let stdout = loop {
        let out = dfs(&cluster, &["fsck", "default"]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.code() == Some(1) && stdout.contains("degraded: ") {
            break stdout;
        }
        assert!(
            Instant::now() < deadline,
            "fsck never saw the dead server: {stdout}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(stdout.contains("of 6 shards on live servers"), "{stdout}");
}

#[test]
fn dfs_bench_on_a_volume_and_on_a_mount() {
    let cluster = cluster_with_volume();
    let check = |report: &str| {
        let phases: Vec<serde_json::Value> = serde_json::from_str(report).unwrap();
        let names: Vec<&str> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "write big files",
                "read big files",
                "write small files",
                "read small files",
                "stat files",
                "delete files"
            ]
        );
        assert_eq!(phases[0]["bytes"], 2 * 8 * MIB as u64);
        assert_eq!(phases[1]["bytes"], 2 * 8 * MIB as u64);
        assert_eq!(phases[2]["count"], 2 * 10);
        assert_eq!(phases[3]["bytes"], 2 * 10 * 64 * 1024);
        assert!(phases.iter().all(|p| p["seconds"].as_f64().unwrap() > 0.0));
    };
    let args = [
        "--big-size",
        "8M",
        "--small-files",
        "10",
        "--small-size",
        "64K",
        "--threads",
        "2",
        "--json",
    ];
    let mut volume_args = vec!["bench", "default"];
    volume_args.extend(args);
    check(&ok(&cluster, &volume_args));
    // Through the kernel, on a mount.
    let m = Mount::new(&cluster, "default", "m", "").unwrap();
    let path = m.dir.to_str().unwrap().to_string();
    let mut path_args = vec!["bench", "--path", &path];
    path_args.extend(args);
    check(&ok(&cluster, &path_args));
    // The table, and nothing left behind.
    let table = ok(
        &cluster,
        &["bench", "default", "--big-size", "1M", "--small-files", "2"],
    );
    assert!(
        table.contains("write big files") && table.contains("MiB/s"),
        "{table}"
    );
    assert_eq!(fs::read_dir(&m.dir).unwrap().count(), 0);
    assert_eq!(volume_json(&cluster, "default")["used_inodes"], 0);
    fails(&cluster, &["bench", "nosuch"], 1, "no volume named");
}

#[test]
fn degraded_writes_can_be_switched_off_per_volume() {
    let mut cluster = cluster_with_volume();
    ok(
        &cluster,
        &["volume", "create", "strict", "--degraded-writes", "false"],
    );
    let info = ok(&cluster, &["volume", "info", "strict"]);
    assert!(
        info.lines()
            .any(|l| l.starts_with("degraded writes") && l.ends_with("false")),
        "{info}"
    );
    let m_default = Mount::new(&cluster, "default", "d", "").unwrap();
    let m_strict = Mount::new(&cluster, "strict", "s", "").unwrap();
    let data = random_bytes(5 * MIB, 8);
    fs::write(m_strict.path("before"), &data).unwrap();

    // One of six servers down: 4+2 blocks can only go out with five shards.
    cluster.kill_chunk(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status: serde_json::Value =
            serde_json::from_str(&ok(&cluster, &["cluster", "status", "--json"])).unwrap();
        let up = status["servers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["up"] == true)
            .count();
        if up == 5 {
            break;
        }
        assert!(Instant::now() < deadline, "the server never went down");
        std::thread::sleep(Duration::from_millis(100));
    }
    fs::write(m_default.path("degraded"), &data).unwrap();
    assert!(fs::read(m_default.path("degraded")).unwrap() == data);
    // Written by a child process holding the only descriptor: one of this test process would
    // be inherited and closed (so flushed, and the failure reported there) by every process a
    // concurrent test spawns.
    let dd = std::process::Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", m_strict.path("refused").display()))
        .args(["bs=1M", "count=5", "conv=fsync"])
        .output()
        .expect("dd runs");
    assert!(
        !dd.status.success(),
        "a strict volume must refuse a degraded write"
    );
    let stderr = String::from_utf8_lossy(&dd.stderr);
    assert!(stderr.contains("Input/output error"), "{stderr}");
    assert!(fs::read(m_strict.path("before")).unwrap() == data);

    // Allowing it lets the same write through.
    ok(
        &cluster,
        &["volume", "set", "strict", "--degraded-writes", "true"],
    );
    fs::write(m_strict.path("now"), &data).unwrap();
    assert!(fs::read(m_strict.path("now")).unwrap() == data);
}
