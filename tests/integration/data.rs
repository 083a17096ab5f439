//! File data through the client library: exact round trips under several policies, and random
//! writes, overwrites and truncates checked against an in-memory model.

use dfs_client::Client;
use dfs_common::proto::meta::VolumeInfo;
use dfs_common::InodeId;
use dfs_tests::{random_bytes, TestCluster};
use rand::{Rng, SeedableRng};

const MIB: u64 = 1024 * 1024;

async fn write_file(
    client: &Client,
    volume: &VolumeInfo,
    name: &str,
    data: &[u8],
    chunk: usize,
) -> InodeId {
    let mut f = client.create(volume.root, name, 0o644, 0, 0).await.unwrap();
    let mut off = 0;
    for piece in data.chunks(chunk.max(1)) {
        f.write(off, piece).await.unwrap();
        off += piece.len() as u64;
    }
    let ino = f.ino();
    f.close().await.unwrap();
    ino
}

async fn read_all(client: &Client, ino: InodeId) -> Vec<u8> {
    let size = client.getattr(ino).await.unwrap().size;
    let mut out = Vec::with_capacity(size as usize);
    while (out.len() as u64) < size {
        let piece = client
            .read_range(ino, out.len() as u64, 16 * MIB)
            .await
            .unwrap();
        assert!(!piece.is_empty(), "short read at {}", out.len());
        out.extend_from_slice(&piece);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_round_trip_bit_exact_under_each_policy() {
    let cluster = TestCluster::start(9).await;
    let client = cluster.client().await;
    let block = 4 * MIB;
    for (i, policy) in ["4+2", "2+1", "6+3"].iter().enumerate() {
        let volume = cluster
            .volume(&client, &format!("v{i}"), policy, block)
            .await;
        let sizes = [0, 1, block - 1, block, block + 1, 100 * MIB];
        for (j, &size) in sizes.iter().enumerate() {
            let data = random_bytes(size as usize, (i * 10 + j) as u64);
            let ino = write_file(&client, &volume, &format!("f{j}"), &data, 1 << 20).await;
            let attr = client.getattr(ino).await.unwrap();
            assert_eq!(attr.size, size, "{policy} size {size}");
            let back = read_all(&client, ino).await;
            assert!(
                back == data,
                "{policy}: {size}-byte file differs after round trip"
            );
            // A read in the middle, across a block boundary.
            if size > block {
                let mid = client.read_range(ino, block - 10, 20).await.unwrap();
                assert_eq!(
                    mid,
                    &data[(block - 10) as usize..(block + 10).min(size) as usize]
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_writes_overwrites_and_truncates_match_a_model() {
    let cluster = TestCluster::start(6).await;
    let client = cluster.client().await;
    // Small blocks so that writes span and split many blocks.
    let volume = cluster.volume(&client, "rand", "4+2", 64 * 1024).await;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
    let mut model: Vec<u8> = Vec::new();
    let mut f = client
        .create(volume.root, "model", 0o644, 0, 0)
        .await
        .unwrap();
    let ino = f.ino();
    for step in 0..120 {
        match rng.random_range(0..10) {
            0 => {
                let size = rng.random_range(0..400_000u64);
                f.truncate(size).await.unwrap();
                model.resize(size as usize, 0);
            }
            1 => {
                f.flush().await.unwrap();
            }
            2 => {
                let off = rng.random_range(0..=model.len() as u64 + 1000);
                let len = rng.random_range(0..100_000u64);
                let got = f.read(off, len).await.unwrap();
                let start = (off as usize).min(model.len());
                let end = (off + len).min(model.len() as u64) as usize;
                assert_eq!(got, &model[start..end.max(start)], "read at step {step}");
            }
            _ => {
                let off = rng.random_range(0..300_000usize);
                let len = rng.random_range(1..150_000usize);
                let data = random_bytes(len, step);
                f.write(off as u64, &data).await.unwrap();
                if model.len() < off + len {
                    model.resize(off + len, 0);
                }
                model[off..off + len].copy_from_slice(&data);
            }
        }
        assert_eq!(f.size(), model.len() as u64, "size at step {step}");
    }
    f.close().await.unwrap();
    // A fresh client sees exactly the model.
    let other = cluster.client().await;
    assert_eq!(other.getattr(ino).await.unwrap().size, model.len() as u64);
    assert!(
        read_all(&other, ino).await == model,
        "file differs from the model"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scattered_small_writes_share_blocks() {
    let cluster = TestCluster::start(6).await;
    let client = cluster.client().await;
    let volume = cluster.volume(&client, "small", "4+2", 4 * MIB).await;
    let before = client.cluster_status().await.unwrap().blocks;
    let mut model = vec![0u8; 8 * MIB as usize];
    let mut f = client
        .create(volume.root, "scattered", 0o644, 0, 0)
        .await
        .unwrap();
    f.truncate(model.len() as u64).await.unwrap();
    // 512 writes of 4 KiB at scattered, non-adjacent offsets: 2 MiB of data in 512 runs.
    for i in 0..512u64 {
        let off = (i * 7919 % 1024) * 8192;
        let data = random_bytes(4096, i);
        f.write(off, &data).await.unwrap();
        model[off as usize..off as usize + 4096].copy_from_slice(&data);
    }
    f.close().await.unwrap();
    let written = client.cluster_status().await.unwrap().blocks - before;
    assert_eq!(
        written, 1,
        "512 small runs should fill one block, not {written}"
    );
    let ino = client.lookup(volume.root, "scattered").await.unwrap().ino;
    assert!(read_all(&client, ino).await == model, "file differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bit_on_disk_is_detected_and_read_is_still_correct() {
    let cluster = TestCluster::start(6).await;
    let client = cluster.client().await;
    let volume = cluster.volume(&client, "bits", "4+2", 4 * MIB).await;
    let data = random_bytes(3 * MIB as usize, 9);
    let ino = write_file(&client, &volume, "f", &data, 1 << 20).await;
    let layout = client.layout(ino, 0, u64::MAX).await.unwrap();
    let block = &layout.blocks[0];
    // Flip one bit in data shard 0's file, wherever that server keeps it.
    let server = block.shards[0].server;
    let node = cluster.chunks.iter().find(|c| c.id == server).unwrap();
    let sub = format!("{:02x}", block.block.0 & 0xff);
    let path = node
        .data_dir
        .join("shards")
        .join(sub)
        .join(format!("{:016x}-00", block.block.0));
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 1000;
    bytes[at] ^= 0x04;
    std::fs::write(&path, &bytes).unwrap();
    // The chunk server refuses to return the damaged range...
    let store = dfs_chunk::store::ShardStore::open(&node.data_dir).unwrap();
    let key = dfs_common::proto::chunk::ShardKey {
        block: block.block,
        index: 0,
    };
    assert!(matches!(
        store.verify(&key),
        Err(dfs_common::FsError::Corrupt(_))
    ));
    // ...and the client still reads the right bytes, through reconstruction.
    assert!(read_all(&client, ino).await == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_servers_are_tolerated_up_to_m() {
    let mut cluster = TestCluster::start(6).await;
    let client = cluster.client().await;
    let volume = cluster.volume(&client, "deg", "4+2", MIB).await;
    let data = random_bytes(5 * MIB as usize + 123, 5);
    let ino = write_file(&client, &volume, "f", &data, 1 << 20).await;
    cluster.stop_chunk(0).await;
    cluster.stop_chunk(3).await;
    assert!(
        read_all(&client, ino).await == data,
        "read with m servers stopped"
    );
    // New blocks go to the remaining servers only when they are enough: 4 live < 6 needed.
    dfs_tests::wait_for_live_servers(&client, 4).await;
    let mut f = client.create(volume.root, "g", 0o644, 0, 0).await.unwrap();
    f.write(0, &data[..100 * 1024]).await.unwrap();
    let err = f.close().await.unwrap_err();
    assert!(
        matches!(err, dfs_common::FsError::Unavailable(_)),
        "{err:?}"
    );
    // A small file is kept in the metadata store: it needs no chunk server.
    let small = write_file(&client, &volume, "small", b"hello", 1 << 20).await;
    assert_eq!(read_all(&client, small).await, b"hello");
    cluster.restart_chunk(0).await;
    cluster.restart_chunk(3).await;
    dfs_tests::wait_for_live_servers(&client, 6).await;
    let ino2 = write_file(&client, &volume, "h", &data, 1 << 20).await;
    assert!(read_all(&client, ino2).await == data);
    assert!(read_all(&client, ino).await == data);
}
