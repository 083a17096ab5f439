//! The `dfs` CLI against a cluster of real processes: every command, its output, its failure
//! messages and exit codes.

use dfs_tests::process::ProcessCluster;
use dfs_tests::random_bytes;
use std::process::Output;
use std::time::{Duration, Instant};

pub(crate) fn run(cluster: &ProcessCluster, args: &[&str]) -> Output {
    cluster.cli().args(args).output().expect("run dfs")
}

pub(crate) fn ok(cluster: &ProcessCluster, args: &[&str]) -> String {
    let out = run(cluster, args);
    assert!(
        out.status.success(),
        "dfs {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail with exit code `code` and a message containing `message`;
/// returns its stderr.
pub(crate) fn fails_with(
    cluster: &ProcessCluster,
    args: &[&str],
    code: i32,
    message: &str,
) -> String {
    let out = run(cluster, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "dfs {args:?}: {stderr}");
    assert!(
        stderr.contains(message),
        "dfs {args:?}: expected {message:?} in {stderr:?}"
    );
    stderr
}

/// Runs a command that must fail with exit code 1 and a one-line message containing `message`.
fn fails(cluster: &ProcessCluster, args: &[&str], message: &str) {
    let stderr = fails_with(cluster, args, 1, message);
    assert_eq!(
        stderr.lines().count(),
        1,
        "one-line error expected: {stderr:?}"
    );
}

/// The names `dfs ls` lists in a remote directory.
fn names(cluster: &ProcessCluster, remote: &str) -> Vec<String> {
    ok(cluster, &["ls", remote])
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().last().map(str::to_owned))
        .collect()
}

#[test]
fn cli_commands_and_their_failures() {
    let cluster = ProcessCluster::start(6);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = run(&cluster, &["cluster", "status", "--json"]);
        if out.status.success() {
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let up = status["servers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["up"] == true)
                .count();
            if up == 6 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "cluster did not come up\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let table = ok(&cluster, &["cluster", "status"]);
    assert!(table.contains("6/6 servers up"), "{table}");

    // A lone metadata server is the leader of a group of one, which applies its log to the
    // end (a write may be on its way: wait for it).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let members: serde_json::Value =
            serde_json::from_str(&ok(&cluster, &["meta", "status", "--json"])).unwrap();
        let members = members.as_array().unwrap();
        assert_eq!(members.len(), 1, "{members:?}");
        let me = &members[0];
        assert_eq!(me["role"], "leader");
        assert_eq!(me["answering"], true);
        assert!(me["term"].as_u64().unwrap() >= 1, "{me}");
        let last = me["last_index"].as_u64().unwrap();
        let applied = me["applied_index"].as_u64().unwrap();
        assert!(last >= 1 && applied <= last, "{me}");
        if applied == last {
            break;
        }
        assert!(Instant::now() < deadline, "log not applied: {me}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let table = ok(&cluster, &["meta", "status"]);
    assert!(table.contains("leader (answering)"), "{table}");

    ok(&cluster, &["volume", "create", "default", "--ec", "4+2"]);
    fails(&cluster, &["volume", "create", "default"], "already exists");
    fails(
        &cluster,
        &["volume", "create", "bad", "--ec", "4-2"],
        "bad erasure-coding policy",
    );
    fails(
        &cluster,
        &["volume", "create", "big", "--ec", "8+4"],
        "only 6 are up",
    );
    fails(
        &cluster,
        &["volume", "create", "bad/name"],
        "invalid volume name",
    );
    let list: serde_json::Value =
        serde_json::from_str(&ok(&cluster, &["volume", "list", "--json"])).unwrap();
    assert_eq!(list[0]["name"], "default");
    assert!(ok(&cluster, &["volume", "list"]).contains("4+2"));

    let local = cluster.dir.path().join("in.bin");
    let data = random_bytes(9 * 1024 * 1024 + 17, 3);
    std::fs::write(&local, &data).unwrap();
    let l = local.to_str().unwrap();
    ok(&cluster, &["mkdir", "-p", "default:/a/b"]);
    ok(&cluster, &["put", l, "default:/a/b/file"]);
    fails(&cluster, &["put", l, "default:/a/b/file"], "exists");
    ok(&cluster, &["put", "--force", l, "default:/a/b/file"]);
    let back = cluster.dir.path().join("out.bin");
    ok(
        &cluster,
        &["get", "default:/a/b/file", back.to_str().unwrap()],
    );
    assert!(
        std::fs::read(&back).unwrap() == data,
        "get returned other bytes than put"
    );
    let stat: serde_json::Value =
        serde_json::from_str(&ok(&cluster, &["stat", "--json", "default:/a/b/file"])).unwrap();
    assert_eq!(stat["size"], data.len() as u64);
    // volume info counts what the volume holds: root, a, b and the 9 MiB file in 3 blocks.
    let info: serde_json::Value =
        serde_json::from_str(&ok(&cluster, &["volume", "info", "default", "--json"])).unwrap();
    assert_eq!(info["name"], "default");
    assert_eq!(info["usage"]["files"], 1);
    assert_eq!(info["usage"]["directories"], 3);
    assert_eq!(info["usage"]["bytes"], data.len() as u64);
    assert_eq!(info["usage"]["blocks"], 3);
    assert_eq!(info["usage"]["degraded_blocks"], 0);
    assert!(ok(&cluster, &["volume", "info", "default"]).contains("erasure coding"));
    fails(&cluster, &["volume", "info", "nope"], "no volume named");
    let ls = ok(&cluster, &["ls", "default:/a/b"]);
    assert!(
        ls.contains("file") && ls.contains(&data.len().to_string()),
        "{ls}"
    );
    assert_eq!(names(&cluster, "default:/a/b"), ["file"]);

    // A put's file takes its name only once complete: a put that fails leaves nothing behind,
    // and a failed `--force` leaves the old file whole (here, the volume's quota stops them).
    ok(
        &cluster,
        &[
            "volume",
            "create",
            "small",
            "--ec",
            "4+2",
            "--quota-bytes",
            "1M",
        ],
    );
    let little = cluster.dir.path().join("little.bin");
    let little_data = random_bytes(10_000, 4);
    std::fs::write(&little, &little_data).unwrap();
    ok(&cluster, &["put", little.to_str().unwrap(), "small:/f"]);
    fails(&cluster, &["put", l, "small:/g"], "quota");
    fails(&cluster, &["put", "--force", l, "small:/f"], "quota");
    assert_eq!(names(&cluster, "small:/"), ["f"]);
    ok(&cluster, &["get", "small:/f", back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == little_data);
    let other = random_bytes(20_000, 5);
    std::fs::write(&little, &other).unwrap();
    ok(
        &cluster,
        &["put", "--force", little.to_str().unwrap(), "small:/f"],
    );
    ok(&cluster, &["get", "small:/f", back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == other);
    assert_eq!(names(&cluster, "small:/"), ["f"]);

    fails(&cluster, &["rm", "default:/a"], "directory not empty");
    fails(
        &cluster,
        &["rm", "default:/nope"],
        "no such file or directory",
    );
    fails(
        &cluster,
        &["get", "default:/nope", back.to_str().unwrap()],
        "no such file or directory",
    );
    fails(&cluster, &["ls", "other:/"], "no volume named");
    fails(
        &cluster,
        &["put", "/definitely/missing", "default:/x"],
        "cannot open",
    );
    fails(&cluster, &["ls", "no-colon"], "not a remote path");
    fails(&cluster, &["mkdir", "default:/a"], "already exists");
    ok(&cluster, &["rm", "default:/a/b/file"]);
    ok(&cluster, &["rm", "default:/a/b"]);
    assert!(!ok(&cluster, &["ls", "default:/a"]).contains('b'));

    // Unreachable cluster and missing settings.
    let out = cluster
        .cli()
        .env("DFS_META", "127.0.0.1:1")
        .args(["volume", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the metadata server"));
    let out = cluster
        .cli()
        .env_remove("DFS_META")
        .args(["volume", "list"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--meta"));
    let out = cluster.cli().args(["frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "bad usage exits with 2");
}
