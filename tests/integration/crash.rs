//! Crash tests with the real binaries: chunk servers and the metadata server killed with
//! SIGKILL, then restarted.

use dfs_client::client::ClientOptions;
use dfs_client::Client;
use dfs_common::proto::meta::FileKind;
use dfs_common::{EcPolicy, FsError, InodeId};
use dfs_tests::process::ProcessCluster;
use dfs_tests::{random_bytes, wait_for, wait_for_live_servers};
use std::sync::{Arc, Mutex};
use std::time::Duration;

async fn client_for(cluster: &ProcessCluster) -> Client {
    let identity = cluster.certs.client_identity();
    let addr = cluster.meta_addr;
    // A short chunk timeout keeps reads of blocks whose servers were just killed quick.
    let options = ClientOptions {
        chunk_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    wait_for(
        "the metadata server to answer",
        Duration::from_secs(30),
        || {
            let (identity, options) = (identity.clone(), options.clone());
            async move { Client::connect(addr, &identity, options).await.ok() }
        },
    )
    .await
}

async fn read_all(client: &Client, ino: InodeId) -> Result<Vec<u8>, FsError> {
    let size = client.getattr(ino).await?.size;
    client.read_range(ino, 0, size).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_survive_m_killed_chunk_servers_and_m_plus_one_fails_cleanly() {
    let mut cluster = ProcessCluster::start(6);
    let client = client_for(&cluster).await;
    wait_for_live_servers(&client, 6).await;
    let volume = client
        .create_volume("v", EcPolicy::new(4, 2).unwrap(), 1 << 20)
        .await
        .unwrap();
    let mut files = Vec::new();
    for (i, size) in [1usize, 1000, 1 << 20, (1 << 20) + 1, 5 << 20]
        .into_iter()
        .enumerate()
    {
        let data = random_bytes(size, i as u64);
        let mut f = client
            .create(volume.root, &format!("f{i}"), 0o644, 0, 0)
            .await
            .unwrap();
        f.write(0, &data).await.unwrap();
        let ino = f.ino();
        f.close().await.unwrap();
        files.push((ino, data));
    }
    cluster.kill_chunk(1);
    cluster.kill_chunk(4);
    // Reads work at once (the client skips servers that fail) and after they are marked down.
    for (ino, data) in &files {
        assert!(
            &read_all(&client, *ino).await.unwrap() == data,
            "read with m servers killed"
        );
    }
    wait_for_live_servers(&client, 4).await;
    for (ino, data) in &files {
        assert!(
            &read_all(&client, *ino).await.unwrap() == data,
            "read with m servers down"
        );
    }
    cluster.kill_chunk(2);
    wait_for_live_servers(&client, 3).await;
    let mut failures = 0;
    for (ino, data) in &files {
        match read_all(&client, *ino).await {
            Ok(got) => assert!(
                &got == data,
                "a read with m+1 servers down returned wrong data"
            ),
            Err(e) => {
                assert!(
                    matches!(e, FsError::Unavailable(_)),
                    "unexpected error {e:?}"
                );
                assert!(
                    e.to_string().contains("shards readable"),
                    "unclear error: {e}"
                );
                failures += 1;
            }
        }
    }
    // Every block lost 3 of its 6 shards or fewer; a block that kept k shards still reads, but
    // with 3 of 6 servers gone most blocks lost data shards, so some reads must fail.
    assert!(
        failures > 0,
        "no read failed with m+1 servers down\n{}",
        cluster.logs()
    );
    // Back up: everything reads again.
    cluster.start_chunk(1);
    cluster.start_chunk(2);
    cluster.start_chunk(4);
    wait_for_live_servers(&client, 6).await;
    for (ino, data) in &files {
        assert!(
            &read_all(&client, *ino).await.unwrap() == data,
            "read after restart"
        );
    }
}

/// What the workload saw acknowledged: file name and its full content.
type Acked = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_server_kill_9_keeps_every_acknowledged_operation() {
    let mut cluster = ProcessCluster::start(6);
    let client = client_for(&cluster).await;
    wait_for_live_servers(&client, 6).await;
    let volume = client
        .create_volume("v", EcPolicy::new(4, 2).unwrap(), 256 * 1024)
        .await
        .unwrap();
    let dir = client.mkdir(volume.root, "d", 0o755, 0, 0).await.unwrap();
    let acked: Acked = Arc::default();
    let workload = {
        let (client, acked) = (client.clone(), acked.clone());
        tokio::spawn(async move {
            for i in 0.. {
                let name = format!("file-{i:05}");
                let data = random_bytes(1000 + (i * 7919) % 300_000, i as u64);
                let result = async {
                    let mut f = client.create(dir.ino, &name, 0o644, 0, 0).await?;
                    f.write(0, &data).await?;
                    f.close().await
                }
                .await;
                if result.is_err() {
                    return i;
                }
                acked.lock().unwrap().push((name, data));
            }
            unreachable!()
        })
    };
    wait_for("40 acknowledged files", Duration::from_secs(60), || async {
        (acked.lock().unwrap().len() >= 40).then_some(())
    })
    .await;
    cluster.kill_meta();
    let stopped_at = tokio::time::timeout(Duration::from_secs(60), workload)
        .await
        .expect("the workload notices the dead metadata server")
        .unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 40 && stopped_at >= acked.len());
    // Started again holding no log entry in memory: the entries applied again after the
    // crash, and every later one, are read back from the log's files.
    cluster.meta_args = vec!["--log-memory".into(), "0".into()];
    cluster.start_meta();
    let client = client_for(&cluster).await;
    wait_for_live_servers(&client, 6).await;
    let dir = client.lookup(volume.root, "d").await.unwrap();
    let mut kept_inline = 0;
    for (name, data) in &acked {
        let attr = client
            .lookup(dir.ino, name)
            .await
            .unwrap_or_else(|e| panic!("{name} lost: {e}"));
        assert_eq!(attr.kind, FileKind::File);
        assert!(
            &read_all(&client, attr.ino).await.unwrap() == data,
            "{name} differs"
        );
        let layout = client.layout(attr.ino, 0, u64::MAX).await.unwrap();
        if layout.blocks.iter().any(|b| b.is_inline()) {
            kept_inline += 1;
        }
    }
    // Small files were kept in the metadata store, and survived with it.
    assert!(kept_inline > 0 && kept_inline < acked.len());
    // Nothing torn: a file that was not acknowledged is either absent, empty (created but not
    // committed) or complete.
    let listing = client.readdir_all(dir.ino, true).await.unwrap();
    for entry in listing
        .iter()
        .filter(|e| !acked.iter().any(|(n, _)| n == &e.name))
    {
        let i: usize = entry.name["file-".len()..].parse().unwrap();
        let expected = random_bytes(1000 + (i * 7919) % 300_000, i as u64);
        let got = read_all(&client, entry.ino).await.unwrap();
        assert!(
            got.is_empty() || got == expected,
            "{} is torn ({} bytes)",
            entry.name,
            got.len()
        );
    }
    // The cluster keeps working after the restart.
    let mut f = client.create(dir.ino, "after", 0o644, 0, 0).await.unwrap();
    f.write(0, b"still here").await.unwrap();
    f.close().await.unwrap();
}
