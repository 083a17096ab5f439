//! Small files kept in the metadata store: a file's first 64 KiB written through a mount go
//! into the metadata with their commit, not into shards. Checked through the kernel: files
//! crossing the threshold both ways (writes, truncates, fallocate, mmap), hard links and
//! renames over, a second mount, fsck, and a mount with inline data turned off.

use crate::cli::ok;
use crate::mount::cluster_with_volume_on;
use dfs_tests::process::{Mount, ProcessCluster};
use dfs_tests::random_bytes;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

const KIB: usize = 1024;

/// Blocks and bytes the volume keeps inline, as `dfs volume info` counts them.
fn kept_inline(cluster: &ProcessCluster) -> (u64, u64) {
    let info: serde_json::Value =
        serde_json::from_str(&ok(cluster, &["volume", "info", "default", "--json"])).unwrap();
    let usage = &info["usage"];
    (
        usage["inline_blocks"].as_u64().unwrap(),
        usage["inline_bytes"].as_u64().unwrap(),
    )
}

/// Shard files on every chunk server.
fn shard_files(cluster: &ProcessCluster, servers: usize) -> usize {
    (0..servers)
        .map(|i| cluster.chunk_dir(i).join("shards"))
        .flat_map(|d| fs::read_dir(d).into_iter().flatten().flatten())
        .map(|sub| fs::read_dir(sub.path()).map_or(0, |r| r.count()))
        .sum()
}

fn fsck_is_clean(cluster: &ProcessCluster) {
    let report = ok(cluster, &["fsck", "default"]);
    assert!(report.contains("no problems"), "{report}");
}

/// Writes `data` at `at` through a mapping of the file's first pages, and syncs it.
fn mmap_write(path: &std::path::Path, at: usize, data: &[u8]) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let len = at + data.len();
    // SAFETY: a fresh shared mapping of `len` bytes inside the file's size, unmapped before
    // the function returns.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(map, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        std::slice::from_raw_parts_mut(map as *mut u8, len)[at..].copy_from_slice(data);
        assert_eq!(libc::msync(map, len, libc::MS_SYNC), 0);
        libc::munmap(map, len);
    }
    file.sync_all().unwrap();
}

#[test]
fn small_files_are_kept_inline_and_cross_the_threshold_both_ways() {
    let cluster = cluster_with_volume_on(6);
    let a = Mount::new(&cluster, "default", "a", "").unwrap();
    let b = Mount::new(&cluster, "default", "b", "").unwrap();
    let shards_before = shard_files(&cluster, 6);

    // A small file: one inline block, not one shard written.
    let mut model = random_bytes(10 * KIB, 1);
    fs::write(a.path("f"), &model).unwrap();
    assert_eq!(kept_inline(&cluster), (1, 10 * KIB as u64));
    assert_eq!(
        shard_files(&cluster, 6),
        shards_before,
        "a small file wrote shards"
    );
    assert!(fs::read(b.path("f")).unwrap() == model);

    // Small appends, each made durable, stay inline up to the threshold.
    let mut f = OpenOptions::new().append(true).open(a.path("f")).unwrap();
    for n in 0..20u8 {
        let record = [n; 97];
        f.write_all(&record).unwrap();
        f.sync_all().unwrap();
        model.extend_from_slice(&record);
    }
    drop(f);
    assert_eq!(shard_files(&cluster, 6), shards_before);
    assert!(fs::read(b.path("f")).unwrap() == model);

    // Grown past the threshold: the start stays inline, the rest goes to blocks.
    let tail = random_bytes(200 * KIB, 2);
    let f = OpenOptions::new().write(true).open(a.path("f")).unwrap();
    f.write_all_at(&tail, model.len() as u64).unwrap();
    f.sync_all().unwrap();
    model.extend_from_slice(&tail);
    assert!(shard_files(&cluster, 6) > shards_before, "no block written");
    assert!(fs::read(b.path("f")).unwrap() == model);
    // A write inside the start of a large file is kept inline too.
    f.write_all_at(b"patched", 100).unwrap();
    f.sync_all().unwrap();
    model[100..107].copy_from_slice(b"patched");
    assert!(fs::read(b.path("f")).unwrap() == model);

    // Truncated back under the threshold, then extended by truncate and by fallocate.
    f.set_len(5 * KIB as u64).unwrap();
    model.truncate(5 * KIB);
    assert!(fs::read(b.path("f")).unwrap() == model);
    f.set_len(100 * KIB as u64).unwrap();
    model.resize(100 * KIB, 0);
    // SAFETY: fallocate on a descriptor this test owns.
    assert_eq!(
        unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 150 * KIB as i64) },
        0
    );
    model.resize(150 * KIB, 0);
    drop(f);
    assert!(fs::read(b.path("f")).unwrap() == model);

    // Through a mapping, into the inline start.
    mmap_write(&a.path("f"), 3000, b"mapped bytes");
    model[3000..3012].copy_from_slice(b"mapped bytes");
    assert!(fs::read(b.path("f")).unwrap() == model);

    // Hard links share the inline bytes; a write through one shows through the other.
    fs::hard_link(a.path("f"), a.path("link")).unwrap();
    let f = OpenOptions::new().write(true).open(a.path("link")).unwrap();
    f.write_all_at(b"via link", 10).unwrap();
    drop(f);
    model[10..18].copy_from_slice(b"via link");
    assert!(fs::read(b.path("f")).unwrap() == model);

    // A small file renamed over the large one: the name shows the small file, the other
    // link keeps the old bytes. (The other mount may keep the old name for its attribute
    // timeout, as an NFS client does.)
    let other = random_bytes(3 * KIB, 3);
    fs::write(a.path("other"), &other).unwrap();
    fs::rename(a.path("other"), a.path("f")).unwrap();
    assert!(fs::read(a.path("f")).unwrap() == other);
    assert!(fs::read(b.path("link")).unwrap() == model);
    fsck_is_clean(&cluster);

    // Removed: nothing is referenced inline any more.
    fs::remove_file(a.path("f")).unwrap();
    fs::remove_file(a.path("link")).unwrap();
    assert_eq!(kept_inline(&cluster), (0, 0));
    fsck_is_clean(&cluster);

    // A mount with inline data off writes small files as blocks.
    let c = Mount::new(&cluster, "default", "c", "noinline").unwrap();
    let shards = shard_files(&cluster, 6);
    fs::write(c.path("g"), b"small but coded").unwrap();
    assert_eq!(kept_inline(&cluster), (0, 0));
    assert_eq!(shard_files(&cluster, 6), shards + 6);
    assert_eq!(fs::read(a.path("g")).unwrap(), b"small but coded");
}
