//! Integrity under races, retries and faults: a read returns the bytes written or an error,
//! never invented zeros; garbage collection, scrubbing and failed shard writes never cost a
//! block its shards or its redundancy without the metadata server knowing. Races are driven
//! by the cluster's fault points, never by sleeps.

use dfs_client::client::ClientOptions;
use dfs_client::Client;
use dfs_common::capability::{CapabilityKey, ShardCapability};
use dfs_common::fault::Action;
use dfs_common::net::chunks::ChunkPool;
use dfs_common::net::endpoint::client_endpoint;
use dfs_common::net::tls::{issue, Fingerprint, Identity, Role};
use dfs_common::net::Peer;
use dfs_common::proto::chunk::{ChunkReply, ChunkRequest, ShardKey, ShardOwner};
use dfs_common::proto::meta::{
    req, FileKind, LockKind, LockRange, MetaCall, MetaRpc, VolumeInfo, RENAME_EXCHANGE,
};
use dfs_common::proto::MAX_LAYOUT_EXTENTS;
use dfs_common::{BlockId, FsError, InodeId, ServerId, Timestamp};
use dfs_tests::{random_bytes, wait_for, TestCluster};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::time::Duration;

const MIB: u64 = 1024 * 1024;
/// Long enough for any step on a loaded 2-core machine; a wait that runs out is a failure.
const WAIT: Duration = Duration::from_secs(60);

/// Where chunk server `server` keeps shard `key`.
fn shard_file(cluster: &TestCluster, server: ServerId, key: ShardKey) -> Option<PathBuf> {
    let node = cluster.chunks.iter().find(|c| c.id == server)?;
    Some(
        node.data_dir
            .join("shards")
            .join(format!("{:02x}", key.block.0 & 0xff))
            .join(format!("{:016x}-{:02}", key.block.0, key.index)),
    )
}

/// Whether every shard the layout of `ino` names is a file on the server it names.
async fn every_placed_shard_exists(cluster: &TestCluster, client: &Client, ino: InodeId) -> bool {
    let layout = client.layout(ino, 0, u64::MAX).await.unwrap();
    layout.blocks.iter().all(|b| {
        b.shards.iter().enumerate().all(|(index, s)| {
            let key = ShardKey {
                block: b.block,
                index: index as u8,
            };
            s.server != ServerId::NONE
                && shard_file(cluster, s.server, key).is_some_and(|p| p.exists())
        })
    })
}

async fn write_file(client: &Client, volume: &VolumeInfo, name: &str, data: &[u8]) -> InodeId {
    let mut f = client.create(volume.root, name, 0o644, 0, 0).await.unwrap();
    f.write(0, data).await.unwrap();
    let ino = f.ino();
    f.close().await.unwrap();
    ino
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_with_more_extents_than_one_layout_reply_reads_back_exactly() {
    let cluster = TestCluster::start(6).await;
    let client = cluster.client().await;
    let volume = cluster.volume(&client, "v", "4+2", 4 * MIB).await;
    // 97-byte runs with 3-byte holes between them: one packed block, one extent per run,
    // a layout longer than one reply holds.
    let runs = MAX_LAYOUT_EXTENTS + 900;
    let mut model = vec![0u8; runs * 100];
    let mut f = client
        .create(volume.root, "log", 0o644, 0, 0)
        .await
        .unwrap();
    for i in 0..runs {
        let run = random_bytes(97, i as u64 + 1);
        f.write(i as u64 * 100, &run).await.unwrap();
        model[i * 100..i * 100 + 97].copy_from_slice(&run);
    }
    let ino = f.ino();
    f.close().await.unwrap();
    model.truncate((runs - 1) * 100 + 97);
    let layout = client.layout(ino, 0, u64::MAX).await.unwrap();
    assert_eq!(
        layout.extents.len(),
        MAX_LAYOUT_EXTENTS,
        "the layout is paged"
    );
    assert!(layout.complete_to < model.len() as u64);

    // Through the library without a handle (`dfs get`).
    let whole = client.read_range(ino, 0, u64::MAX).await.unwrap();
    assert!(whole == model, "read_range differs from what was written");
    // Through an open handle, whole and in pieces that straddle the page boundary.
    let mut h = client.open(ino).await.unwrap();
    let whole = h.read(0, model.len() as u64).await.unwrap();
    assert!(
        whole == model,
        "a handle's read differs from what was written"
    );
    let edge = layout.complete_to;
    for (start, len) in [
        (edge - 150, 300),
        (edge, 5000),
        (0, edge + 1),
        (edge + 3, 7),
    ] {
        let got = h.read(start, len).await.unwrap();
        let end = (start + len).min(model.len() as u64);
        assert!(
            got == model[start as usize..end as usize],
            "read of {len} bytes at {start} differs"
        );
    }
    // Random reads all over the file: served from cached layout pages, which must each
    // describe exactly what they cover.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
    for _ in 0..300 {
        let start = rng.random_range(0..model.len() as u64);
        let len = rng.random_range(1..700u64);
        let got = h.read(start, len).await.unwrap();
        let end = (start + len).min(model.len() as u64);
        assert!(
            got == model[start as usize..end as usize],
            "random read of {len} bytes at {start} differs"
        );
    }
    // A write through the handle drops its cached pages: the next reads see it.
    h.write(edge - 10, b"changed").await.unwrap();
    model[edge as usize - 10..edge as usize - 3].copy_from_slice(b"changed");
    let got = h.read(edge - 20, 40).await.unwrap();
    assert!(got == model[edge as usize - 20..edge as usize + 20]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_keeps_the_shards_of_a_block_committed_meanwhile() {
    // Blocks not yet committed are collectable at once: the race is between the collector's
    // scan and a writer's commit.
    let cluster = TestCluster::start_with(6, |c| c.repair.pending_grace = Duration::ZERO).await;
    let faults = cluster.faults.clone();
    let client = cluster.client().await;
    let volume = cluster.volume(&client, "v", "4+2", 4 * MIB).await;
    let data = random_bytes(3 * MIB as usize, 7);

    // Every collection stops before its drop, from the start: the block must not be
    // collected before the race is set up.
    faults.arm("gc.before_drop", Action::Pause);
    // The writer uploads its block, then stops before committing it.
    faults.arm("client.before_commit", Action::Pause);
    let writer = {
        let (client, data) = (client.clone(), data.clone());
        tokio::spawn(async move {
            let mut f = client.create(volume.root, "f", 0o644, 0, 0).await?;
            f.write(0, &data).await?;
            let ino = f.ino();
            f.close().await.map(|_| ino)
        })
    };
    faults
        .wait_hit("client.before_commit", 1, WAIT)
        .await
        .unwrap();
    // The collector scans, finds the uncommitted block unreferenced, and stops before its drop.
    faults.wait_hit("gc.before_drop", 1, WAIT).await.unwrap();
    let scans = client.repair_status().await.unwrap().scans;
    // The commit lands between the scan and the drop.
    faults.disarm("client.before_commit");
    let ino = writer.await.unwrap().unwrap();
    // The drop goes on; the block has a reference now and must keep its shards.
    faults.disarm("gc.before_drop");
    wait_for("the paused collection to finish", WAIT, || async {
        (client.repair_status().await.ok()?.scans > scans).then_some(())
    })
    .await;
    assert!(
        every_placed_shard_exists(&cluster, &client, ino).await,
        "a shard of the committed block was deleted"
    );
    let back = client.read_range(ino, 0, u64::MAX).await.unwrap();
    assert!(back == data, "the committed file does not read back");
    assert_eq!(client.repair_status().await.unwrap().blocks_collected, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_cannot_be_stored_is_recorded_missing_and_repaired() {
    // Seven servers: every failed attempt at shard 2 finds another server to try.
    let cluster = TestCluster::start(7).await;
    let faults = cluster.faults.clone();
    let client = cluster.client().await;
    let volume = cluster.volume(&client, "v", "4+2", 4 * MIB).await;
    faults.arm(
        "client.put_shard.2",
        Action::Fail(FsError::io("injected shard write failure")),
    );
    let data = random_bytes(MIB as usize, 11);
    let ino = write_file(&client, &volume, "f", &data).await;
    assert!(
        faults.hits("client.put_shard.2") >= 3,
        "every attempt failed"
    );
    faults.disarm("client.put_shard.2");
    // The block went out degraded (5 of 6 shards); the metadata server must know, repair it,
    // and afterwards every shard it places must really be where it says.
    wait_for("the degraded block to be repaired", WAIT, || async {
        every_placed_shard_exists(&cluster, &client, ino)
            .await
            .then_some(())
    })
    .await;
    assert!(client.repair_status().await.unwrap().shards_done >= 1);
    wait_for("a scan to find the block healthy", WAIT, || async {
        let health = client.cluster_status().await.ok()?.health;
        (health.healthy == 1 && health.degraded == 0).then_some(())
    })
    .await;
    assert!(client.read_range(ino, 0, u64::MAX).await.unwrap() == data);
}

/// A chunk server that stops answering without closing its connection (frozen, overloaded)
/// holds a write no longer than a grace once enough of the block's shards are stored: the
/// late shard is left behind, recorded missing, and repaired. Its write is held at a fault
/// point for the whole write: without the grace the write waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_is_stored_without_a_shard_whose_server_does_not_answer() {
    let cluster = TestCluster::start(6).await;
    let faults = cluster.faults.clone();
    let client = cluster.client().await;
    let volume = cluster.volume(&client, "v", "4+2", 4 * MIB).await;
    faults.arm("client.put_shard.5", Action::Pause);
    let data = random_bytes(3 * MIB as usize, 12);
    let ino = tokio::time::timeout(WAIT, write_file(&client, &volume, "f", &data))
        .await
        .expect("the write waited for the held shard");
    assert_eq!(faults.hits("client.put_shard.5"), 1);
    assert_eq!(client.shard_writes_left(), 1);
    let layout = client.layout(ino, 0, u64::MAX).await.unwrap();
    assert_eq!(layout.blocks.len(), 1);
    assert_eq!(
        layout.blocks[0].shards[5].server,
        ServerId::NONE,
        "the shard left behind is recorded missing"
    );
    assert!(client.read_range(ino, 0, u64::MAX).await.unwrap() == data);
    faults.disarm("client.put_shard.5");
    wait_for("the block to be repaired", WAIT, || async {
        every_placed_shard_exists(&cluster, &client, ino)
            .await
            .then_some(())
    })
    .await;
    assert!(client.read_range(ino, 0, u64::MAX).await.unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_reader_follows_shards_that_moved() {
    let mut cluster = TestCluster::start(9).await;
    let client = cluster.client().await;
    let volume = cluster.volume(&client, "v", "4+2", MIB).await;
    let data = random_bytes(2 * MIB as usize, 5);
    let ino = write_file(&client, &volume, "f", &data).await;
    let mut h = client.open(ino).await.unwrap();
    assert!(h.read(0, 2 * MIB).await.unwrap() == data);
    // Move everything off three servers that hold shards of the first block (more than m),
    // then stop them: the handle's cached layout now names three servers that are gone.
    let layout = client.layout(ino, 0, u64::MAX).await.unwrap();
    let drained: Vec<ServerId> = layout.blocks[0].shards[..3]
        .iter()
        .map(|s| s.server)
        .collect();
    for &s in &drained {
        client.drain_server(s, true).await.unwrap();
    }
    wait_for("the drained servers to be emptied", WAIT, || async {
        let status = client.cluster_status().await.ok()?;
        let empty = status
            .servers
            .iter()
            .filter(|s| drained.contains(&s.id))
            .all(|s| s.placed == 0);
        (empty && status.repair.shards_left == 0).then_some(())
    })
    .await;
    for i in 0..cluster.chunks.len() {
        if drained.contains(&cluster.chunks[i].id) {
            cluster.stop_chunk(i).await;
        }
    }
    let back = h.read(0, 2 * MIB).await.unwrap();
    assert!(back == data, "the long-lived handle read wrong data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_leaves_shards_it_cannot_read_alone() {
    let cluster = TestCluster::start(6).await;
    let faults = cluster.faults.clone();
    let client = cluster.client().await;
    let volume = cluster.volume(&client, "v", "4+2", MIB).await;
    let data = random_bytes(2 * MIB as usize, 9);
    let ino = write_file(&client, &volume, "f", &data).await;
    // Every read the scrubbers make fails with EIO: a sick disk, not bad data.
    faults.arm("scrub.verify", Action::Fail(FsError::io("injected EIO")));
    let chunk = &cluster.chunks[0];
    let addr = chunk.addr.to_string();
    let reply = client
        .chunk_request(&addr, &ChunkRequest::ScrubStart)
        .await
        .unwrap();
    assert!(matches!(reply, ChunkReply::Scrub(_)), "{reply:?}");
    let progress = wait_for("the scrub pass to end", WAIT, || async {
        match client
            .chunk_request(&addr, &ChunkRequest::ScrubStatus)
            .await
        {
            Ok(ChunkReply::Scrub(p)) if p.passes >= 1 && !p.running => Some(p),
            _ => None,
        }
    })
    .await;
    faults.disarm("scrub.verify");
    assert!(progress.errors >= 1, "{progress:?}");
    assert_eq!(progress.corrupt, 0, "{progress:?}");
    assert!(
        every_placed_shard_exists(&cluster, &client, ino).await,
        "a shard that could not be read was deleted or unplaced"
    );
    let health = client.cluster_status().await.unwrap().health;
    assert_eq!(health.degraded, 0, "{health:?}");
    assert!(client.read_range(ino, 0, u64::MAX).await.unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_mutations_whose_replies_were_lost_apply_once() {
    let cluster = TestCluster::start(6).await;
    let faults = cluster.faults.clone();
    let client = cluster
        .client_with(ClientOptions {
            faults: faults.clone(),
            meta_retry: Some(Duration::from_secs(30)),
            ..ClientOptions::default()
        })
        .await;
    let volume = cluster.volume(&client, "v", "4+2", MIB).await;
    let root = volume.root;
    // Each mutation below is applied by the metadata server, its reply lost on the way back,
    // and the call retried by the client.
    let lose_next = |kind: &str| {
        faults.arm(
            &format!("client.lose_reply.{kind}"),
            Action::FailNth(1, FsError::io("reply lost")),
        )
    };
    let lost = |kind: &str| faults.hits(&format!("client.lose_reply.{kind}"));

    // An append commits once: a small one kept inline, and one of blocks.
    let mut log = client.create(root, "log", 0o644, 0, 0).await.unwrap();
    let ino = log.ino();
    log.set_append();
    log.write(0, b"hello").await.unwrap();
    lose_next("WriteInline");
    log.flush().await.unwrap();
    assert!(lost("WriteInline") >= 1);
    assert_eq!(client.getattr(ino).await.unwrap().size, 5);
    assert_eq!(client.read_range(ino, 0, 100).await.unwrap(), b"hello");
    let large = random_bytes(100 * 1024, 4);
    log.write(0, &large).await.unwrap();
    lose_next("CommitWrite");
    log.close().await.unwrap();
    assert!(lost("CommitWrite") >= 1);
    let mut whole = b"hello".to_vec();
    whole.extend_from_slice(&large);
    assert!(client.read_range(ino, 0, u64::MAX).await.unwrap() == whole);

    // A create reports success, not "exists".
    lose_next("MakeNode");
    let created = client.create(root, "new", 0o644, 0, 0).await.unwrap();
    drop(created);
    assert_eq!(
        lost("MakeNode"),
        2,
        "the create's reply was lost and retried"
    );

    // An exchange swaps once.
    write_file(&client, &volume, "a", b"A").await;
    write_file(&client, &volume, "b", b"B").await;
    lose_next("Move");
    client
        .rename(root, "a", root, "b", RENAME_EXCHANGE)
        .await
        .unwrap();
    let read = |name: &'static str| {
        let client = client.clone();
        async move {
            let ino = client.lookup(root, name).await.unwrap().ino;
            client.read_range(ino, 0, 10).await.unwrap()
        }
    };
    assert_eq!(read("a").await, b"B");
    assert_eq!(read("b").await, b"A");

    // An unlink and a rename report success, not ENOENT.
    lose_next("Unlink");
    client.unlink(root, "new").await.unwrap();
    assert_eq!(client.lookup(root, "new").await, Err(FsError::NotFound));
    lose_next("Move");
    client.rename(root, "a", root, "c", 0).await.unwrap();
    assert_eq!(read("c").await, b"B");
    assert_eq!(client.lookup(root, "a").await, Err(FsError::NotFound));
    assert_eq!(lost("Unlink"), 2);
    assert_eq!(lost("Move"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_reach_an_inode_created_in_another_volume_after_its_check() {
    let cluster = TestCluster::start(6).await;
    let faults = cluster.faults.clone();
    let admin = cluster.client().await;
    let a = cluster.volume(&admin, "a", "4+2", MIB).await;
    let b = cluster.volume(&admin, "b", "4+2", MIB).await;
    // Alice may use volume a only.
    let pair = issue(&cluster.certs.ca, "alice", Role::Client, &[]).unwrap();
    let fingerprint = Fingerprint::of_pem(&pair.cert_pem).unwrap();
    admin
        .add_client("alice", fingerprint.0, vec![("a".into(), true)])
        .await
        .unwrap();
    let identity = Identity::from_pairs(&cluster.certs.ca, &pair).unwrap();
    let alice = Client::connect(cluster.meta_addr, &identity, ClientOptions::default())
        .await
        .unwrap();
    // A usage count reads every inode and block of the cluster: administrators only, even
    // for the client's own volume.
    assert!(matches!(
        alice.volume_usage("a").await,
        Err(FsError::Denied(_))
    ));
    // Inode ids are global and sequential: the next one is predictable.
    let probe = admin
        .make_node(a.root, "probe", FileKind::File, 0o644, 0, 0, 0)
        .await
        .unwrap();
    let next = InodeId(probe.ino.0 + 1);
    // Alice names that inode before it exists; her request stops after its access check...
    let point = "meta.after_authorize.SetXattr";
    faults.arm(point, Action::Pause);
    let mut attempt =
        tokio::spawn(async move { alice.setxattr(next, "user.planted", b"x", 0).await });
    let refused_at_once = tokio::select! {
        result = &mut attempt => Some(result.unwrap()),
        hit = faults.wait_hit(point, 1, WAIT) => { hit.unwrap(); None }
    };
    let paused = refused_at_once.is_none();
    // ...while the inode comes to life in volume b.
    let victim = admin
        .make_node(b.root, "victim", FileKind::File, 0o644, 0, 0, 0)
        .await
        .unwrap();
    assert_eq!(victim.ino, next);
    faults.disarm(point);
    let result = match refused_at_once {
        Some(result) => result,
        None => attempt.await.unwrap(),
    };
    assert_eq!(
        result,
        Err(FsError::NotFound),
        "paused after the check: {paused}"
    );
    assert_eq!(
        admin.getxattr(victim.ino, "user.planted").await,
        Err(FsError::NoAttribute),
        "a client of volume a changed an inode of volume b"
    );
}

/// A leader that has not yet loaded the recorded locks (at start, or after an election) takes
/// no lock call: a lock granted then would be wiped by the load, and another client could take
/// it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lock_is_granted_before_the_recorded_locks_are_loaded() {
    let point = "meta.take_over";
    let cluster = TestCluster::start_with(6, |c| c.faults.arm(point, Action::Pause)).await;
    cluster
        .faults
        .wait_hit(point, 1, WAIT)
        .await
        .expect("the server takes over at start");
    let a = cluster.client().await;
    let b = cluster.client().await;
    let volume = cluster.volume(&a, "v", "4+2", MIB).await;
    let ino = write_file(&a, &volume, "locked", b"0123456789").await;
    let range = LockRange { start: 0, end: 9 };
    // (A client whose lock call failed counts the lock as possibly held, and is told it lost
    // it at its next call: the early attempt is made by a client of its own.)
    let early = cluster
        .client()
        .await
        .set_lock(ino, 3, 300, range, LockKind::Write, false)
        .await;
    assert!(
        early.is_err(),
        "a lock was granted before the take-over: {early:?}"
    );
    cluster.faults.disarm(point);
    wait_for("the lock once the take-over is done", WAIT, || async {
        a.set_lock(ino, 1, 100, range, LockKind::Write, false)
            .await
            .ok()
    })
    .await;
    assert_eq!(
        b.set_lock(ino, 7, 200, range, LockKind::Write, false).await,
        Err(FsError::Locked)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_locks_expired_is_told_instead_of_sharing_them() {
    // A one-second lease, shorter than the clients' five-second renewal: a client that holds
    // a lock loses it as one cut off by a partition would.
    let cluster = TestCluster::start_with(6, |c| c.lock_lease = Duration::from_secs(1)).await;
    let a = cluster.client().await;
    let b = cluster.client().await;
    let volume = cluster.volume(&a, "v", "4+2", MIB).await;
    let ino = write_file(&a, &volume, "locked", b"0123456789").await;
    let range = LockRange { start: 0, end: 9 };
    a.set_lock(ino, 1, 100, range, LockKind::Write, false)
        .await
        .unwrap();
    let mut file = a.open(ino).await.unwrap();
    // Once the lease has run out, another client gets the lock...
    wait_for(
        "the lock to become free for another client",
        WAIT,
        || async {
            b.set_lock(ino, 7, 200, range, LockKind::Write, false)
                .await
                .ok()
        },
    )
    .await;
    // ...and the first one is told, at its next lock call and on the file's I/O (EIO), instead
    // of believing it still holds the lock.
    let next = LockRange { start: 20, end: 29 };
    let lost = a.set_lock(ino, 1, 100, next, LockKind::Write, false).await;
    assert!(matches!(lost, Err(FsError::LocksLost(_))), "{lost:?}");
    let read = file.read(0, 10).await;
    assert!(matches!(&read, Err(FsError::LocksLost(_))), "{read:?}");
    assert_eq!(read.unwrap_err().errno(), libc::EIO);
    assert!(matches!(
        file.write(0, b"x").await,
        Err(FsError::LocksLost(_))
    ));
    // Closing the descriptor that held the lock ends it; the file is usable again.
    a.release_locks(ino, 1).await.unwrap();
    assert_eq!(file.read(0, 10).await.unwrap(), b"0123456789");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_writes_of_many_files_stay_within_the_client_budget() {
    let cluster = TestCluster::start(6).await;
    let budget = 8 * MIB as usize;
    let client = cluster
        .client_with(ClientOptions {
            max_dirty_total: budget,
            max_upload_bytes: 16 * MIB as usize,
            ..ClientOptions::default()
        })
        .await;
    let volume = cluster.volume(&client, "v", "4+2", 4 * MIB).await;
    // Six files, 3 MiB each in 64 KiB writes: under a block each, so nothing is uploaded for
    // being full; together they would hold 18 MiB.
    let mut files = Vec::new();
    let mut contents = Vec::new();
    for i in 0..6 {
        files.push(
            client
                .create(volume.root, &format!("f{i}"), 0o644, 0, 0)
                .await
                .unwrap(),
        );
        contents.push(random_bytes(3 * MIB as usize, 100 + i as u64));
    }
    let piece = 64 * 1024;
    let mut most = 0;
    for at in (0..3 * MIB as usize).step_by(piece) {
        for (f, data) in files.iter_mut().zip(&contents) {
            f.write(at as u64, &data[at..at + piece]).await.unwrap();
            most = most.max(client.dirty_bytes());
        }
    }
    assert!(
        most <= budget + piece,
        "{most} bytes buffered, budget {budget}"
    );
    let mut inos = Vec::new();
    for f in files {
        inos.push(f.ino());
        f.close().await.unwrap();
    }
    assert_eq!(client.dirty_bytes(), 0);
    for (ino, data) in inos.into_iter().zip(&contents) {
        assert!(client.read_range(ino, 0, u64::MAX).await.unwrap() == *data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_servers_store_only_shards_the_metadata_server_allowed() {
    let cluster = TestCluster::start(6).await;
    let admin = cluster.client().await;
    let a = cluster.volume(&admin, "a", "4+2", MIB).await;
    let b = cluster.volume(&admin, "b", "4+2", MIB).await;
    // The cluster's key, as the metadata server keeps it, to make capabilities as it would.
    let secret = std::fs::read(cluster.dir.path().join("meta/capability-key")).unwrap();
    let secret = CapabilityKey(secret.try_into().unwrap());
    let pool = ChunkPool::new(
        client_endpoint(&cluster.certs.client_identity()).unwrap(),
        Duration::from_secs(10),
    );
    let (first, second) = (&cluster.chunks[0], &cluster.chunks[1]);
    let addr = first.addr.to_string();
    // A block id nobody allocated (say, one a future block of volume b will get).
    let key = ShardKey {
        block: BlockId(1 << 40),
        index: 0,
    };
    let policy = "4+2".parse().unwrap();
    let owner = |volume| ShardOwner {
        volume,
        policy,
        block_len: 4096,
    };
    let data = bytes::Bytes::from(vec![7u8; 1024]);
    let now = Timestamp::now();
    let denied = |r: Result<(), FsError>| matches!(r, Err(FsError::Denied(_)));
    let forged = ShardCapability {
        volume: a.id,
        expires: now,
        mac: [0; 32],
    };
    let put = |addr: String, owner, cap| {
        let (pool, data) = (&pool, data.clone());
        async move { pool.put_shard(&addr, key, owner, cap, data).await }
    };
    assert!(denied(put(addr.clone(), owner(a.id), forged).await));
    let for_a = secret.grant(key, a.id, first.id, now);
    // A capability for volume a does not store a shard claiming volume b...
    assert!(denied(put(addr.clone(), owner(b.id), for_a).await));
    // ...nor the shard on another server...
    assert!(denied(
        put(second.addr.to_string(), owner(a.id), for_a).await
    ));
    // ...nor after it expired.
    let long_ago = Timestamp {
        secs: now.secs - 3 * 3600,
        nanos: 0,
    };
    let expired = secret.grant(key, a.id, first.id, long_ago);
    assert!(denied(put(addr.clone(), owner(a.id), expired).await));
    // The capability the metadata server would have issued stores it.
    put(addr, owner(a.id), for_a).await.unwrap();
    // Ordinary writes carry their placements' capabilities.
    let data = random_bytes(3 * MIB as usize, 21);
    let ino = write_file(&admin, &a, "f", &data).await;
    assert!(admin.read_range(ino, 0, u64::MAX).await.unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_speaks_only_for_the_chunk_servers_it_registered() {
    let cluster = TestCluster::start(6).await;
    let admin = cluster.client().await;
    // Another valid server certificate of the same cluster (another host's).
    let other = issue(
        &cluster.certs.ca,
        "other-server",
        Role::Server,
        &["127.0.0.1".into()],
    )
    .unwrap();
    let identity = Identity::from_pairs(&cluster.certs.ca, &other).unwrap();
    let peer = Peer::new(client_endpoint(&identity).unwrap(), cluster.meta_addr);
    async fn ask<Q: MetaRpc>(peer: &Peer, request: Q) -> Result<Q::Reply, FsError> {
        let call = MetaCall::untracked(request.into());
        peer.call(&call, None, 1 << 20)
            .await
            .map(|(reply, _)| reply)
    }
    let victim = cluster.chunks[0].id;
    let heartbeat = |server| req::Heartbeat {
        server,
        addr: "127.0.0.1:9".into(),
        capacity: 1 << 30,
        used: 0,
        shards: 0,
    };
    fn denied<T>(r: Result<T, FsError>) -> bool {
        matches!(r, Err(FsError::Denied(_)))
    }
    // It cannot heartbeat, report bad shards or reconcile as a server registered by another.
    assert!(denied(ask(&peer, heartbeat(victim)).await));
    let key = ShardKey {
        block: BlockId(1),
        index: 0,
    };
    assert!(denied(
        ask(
            &peer,
            req::ReportBadShard {
                server: victim,
                key
            }
        )
        .await
    ));
    assert!(denied(
        ask(
            &peer,
            req::CheckShards {
                server: victim,
                keys: vec![key]
            }
        )
        .await
    ));
    let status = admin.cluster_status().await.unwrap();
    let seen = status.servers.iter().find(|s| s.id == victim).unwrap();
    assert_eq!(
        seen.addr,
        cluster.chunks[0].addr.to_string(),
        "address hijacked"
    );
    // Its own new server registers, and is its own from then on.
    let fresh = ServerId(0x5eed_0001);
    assert!(ask(&peer, heartbeat(fresh)).await.is_ok());
    assert!(ask(
        &peer,
        req::CheckShards {
            server: fresh,
            keys: vec![key]
        }
    )
    .await
    .is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_metadata_server_directs_chunk_servers() {
    let cluster = TestCluster::start(6).await;
    let admin = cluster.client().await;
    let volume = cluster.volume(&admin, "v", "4+2", MIB).await;
    let data = random_bytes(MIB as usize, 31);
    let ino = write_file(&admin, &volume, "f", &data).await;
    let layout = admin.layout(ino, 0, u64::MAX).await.unwrap();
    let shard = &layout.blocks[0].shards[0];
    let key = ShardKey {
        block: layout.blocks[0].block,
        index: 0,
    };
    // A chunk server's certificate may read shards (rebuilds do), not delete them.
    let chunk_cert = ChunkPool::new(
        client_endpoint(&cluster.certs.server_identity()).unwrap(),
        Duration::from_secs(10),
    );
    assert!(chunk_cert.get_shard(&shard.addr, key, 0, 16).await.is_ok());
    let deleted = chunk_cert.delete_shard(&shard.addr, key).await;
    assert!(matches!(deleted, Err(FsError::Denied(_))), "{deleted:?}");
    assert!(admin.read_range(ino, 0, u64::MAX).await.unwrap() == data);
    // The metadata server's own certificate does direct them: deleting the file has its
    // shards collected after the grace period.
    admin.unlink(volume.root, "f").await.unwrap();
    wait_for("the collector to delete the shard", WAIT, || async {
        let gone = !shard_file(&cluster, shard.server, key).is_some_and(|p| p.exists());
        gone.then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_one_open_file_go_to_the_network_side_by_side() {
    let cluster = TestCluster::start(6).await;
    let faults = cluster.faults.clone();
    let client = cluster.client().await;
    let volume = cluster.volume(&client, "v", "4+2", MIB).await;
    let data = random_bytes(4 * MIB as usize, 41);
    let ino = write_file(&client, &volume, "f", &data).await;
    let file = std::sync::Arc::new(tokio::sync::Mutex::new(client.open(ino).await.unwrap()));
    // The first read stops in the middle of its network fetch...
    faults.arm("client.read_piece", Action::Pause);
    let read = |offset: u64| {
        let file = file.clone();
        tokio::spawn(async move {
            dfs_client::client::file::FileHandle::read_shared(
                &file,
                offset,
                4096,
                dfs_client::client::reader::CacheUse::Fill,
            )
            .await
        })
    };
    let first = read(0);
    faults.wait_hit("client.read_piece", 1, WAIT).await.unwrap();
    // ...and a second read of the same open file still reaches the network meanwhile.
    let second = read(2 * MIB);
    faults.wait_hit("client.read_piece", 2, WAIT).await.unwrap();
    faults.disarm("client.read_piece");
    assert_eq!(first.await.unwrap().unwrap(), &data[..4096]);
    assert_eq!(
        second.await.unwrap().unwrap(),
        &data[2 * MIB as usize..2 * MIB as usize + 4096]
    );
}
