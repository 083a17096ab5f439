//! Small writes kept in the metadata store: flushes of up to 64 KiB written through a mount go
//! into the metadata with their commit, not into shards, up to 128 KiB per file, after which a
//! file's inline tail moves into a block. Checked through the kernel: files crossing the
//! threshold both ways (writes, truncates, fallocate, mmap), hard links and renames over, a
//! log of small fsynced appends, a second mount changing a tail while it moves, fsck, and a
//! mount with inline data turned off.

use crate::cli::ok;
use crate::mount::cluster_with_volume_on;
use dfs_tests::process::{Mount, ProcessCluster};
use dfs_tests::random_bytes;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

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
    shard_paths(cluster, servers).len()
}

/// The shard files of the first `servers` chunk servers.
fn shard_paths(cluster: &ProcessCluster, servers: usize) -> std::collections::HashSet<PathBuf> {
    (0..servers)
        .flat_map(|i| crate::heal::shard_files(&cluster.chunk_dir(i)))
        .collect()
}

pub(crate) fn fsck_is_clean(cluster: &ProcessCluster) {
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

    // Removed: nothing is referenced inline any more, once the file is freed (it is kept
    // until the mounts have said they do not have it open).
    fs::remove_file(a.path("f")).unwrap();
    fs::remove_file(a.path("link")).unwrap();
    crate::heal::wait_until(&cluster, Duration::from_secs(30), "the file freed", || {
        kept_inline(&cluster) == (0, 0)
    });
    fsck_is_clean(&cluster);

    // A mount with inline data off writes small files as blocks.
    let c = Mount::new(&cluster, "default", "c", "noinline").unwrap();
    // Counted by name: the collector may meanwhile delete the removed files' shards.
    let shards = shard_paths(&cluster, 6);
    fs::write(c.path("g"), b"small but coded").unwrap();
    assert_eq!(kept_inline(&cluster), (0, 0));
    assert_eq!(shard_paths(&cluster, 6).difference(&shards).count(), 6);
    assert_eq!(fs::read(a.path("g")).unwrap(), b"small but coded");
}

/// A log written in small fsynced appends: each append is one inline commit, and every
/// 128 KiB the file's inline tail moves into one erasure-coded block, so the log costs one
/// block per 128 KiB instead of one per append, and the file never keeps more than its
/// allowance inline.
#[test]
fn a_log_of_small_fsynced_appends_moves_its_inline_tail_into_one_block_at_a_time() {
    const ALLOWANCE: u64 = dfs_common::proto::MAX_INLINE_PER_FILE;
    let cluster = cluster_with_volume_on(6);
    let a = Mount::new(&cluster, "default", "a", "").unwrap();
    let b = Mount::new(&cluster, "default", "b", "").unwrap();
    let shards_before = shard_files(&cluster, 6);
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(a.path("log"))
        .unwrap();
    let mut model = Vec::new();
    let mut most_inline = 0;
    // 2,000 records of 97 bytes: 194 KB, past the allowance once.
    for n in 0..2000u32 {
        let record = random_bytes(97, u64::from(n));
        log.write_all(&record).unwrap();
        log.sync_all().unwrap();
        model.extend_from_slice(&record);
        if n % 250 == 0 {
            most_inline = most_inline.max(kept_inline(&cluster).1);
        }
    }
    drop(log);
    let (blocks, bytes) = kept_inline(&cluster);
    assert!(
        most_inline.max(bytes) <= ALLOWANCE,
        "{most_inline} bytes inline"
    );
    // What did not move yet is inline: the records after the move, one block each.
    let moved = model.len() as u64 - bytes;
    assert!(
        moved > ALLOWANCE - 97 && moved <= ALLOWANCE + 97,
        "{moved} bytes moved"
    );
    assert_eq!(blocks, bytes / 97);
    assert_eq!(
        shard_files(&cluster, 6),
        shards_before + 6,
        "the moved tail is one block of six shards"
    );
    assert!(fs::read(b.path("log")).unwrap() == model);
    fsck_is_clean(&cluster);
    // Truncated into the moved part and appended again: still whole.
    let f = OpenOptions::new().append(true).open(a.path("log")).unwrap();
    f.set_len(1000).unwrap();
    model.truncate(1000);
    (&f).write_all(b"after the truncate").unwrap();
    f.sync_all().unwrap();
    model.extend_from_slice(b"after the truncate");
    assert!(fs::read(b.path("log")).unwrap() == model);
    fsck_is_clean(&cluster);
}

/// A second mount overwrites bytes of a file's inline tail while the writer is moving that
/// tail into a block (held between reading the tail and committing): the writer's guarded
/// commit is refused and its own bytes go the usual way, so the other mount's bytes stay.
#[test]
fn a_tail_changed_by_another_mount_while_it_moves_keeps_the_newer_bytes() {
    use crate::observe::http_get;
    let cluster = cluster_with_volume_on(6);
    let (a, http) = crate::observe::mount_with_faults(&cluster, "default", "a", "");
    let b = Mount::new(&cluster, "default", "b", "").unwrap();
    let control = |path: &str| {
        let (status, body) = http_get(http, &format!("/faults/client.inline_tail_read/{path}"));
        assert_eq!(status, 200, "{body}");
        body
    };
    // A file whose allowance is nearly spent: 128 KiB less 1,000 bytes, inline.
    let allowance = dfs_common::proto::MAX_INLINE_PER_FILE as usize;
    let mut model = random_bytes(allowance - 1000, 7);
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(a.path("log"))
        .unwrap();
    for piece in model.chunks(60 * KIB) {
        log.write_all(piece).unwrap();
        log.sync_all().unwrap();
    }
    assert_eq!(kept_inline(&cluster).1, model.len() as u64);

    control("pause");
    let appender = std::thread::spawn(move || {
        let mut appended = Vec::new();
        // The first records fit; the one past the allowance starts the move, and is held.
        for n in 0..20u8 {
            let record = [n; 97];
            log.write_all(&record).unwrap();
            log.sync_all().unwrap();
            appended.extend_from_slice(&record);
        }
        appended
    });
    crate::heal::wait_until(&cluster, Duration::from_secs(30), "tail move held", || {
        control("hits").trim() != "0"
    });
    // Another mount overwrites bytes inside the tail being moved, durably.
    let f = OpenOptions::new().write(true).open(b.path("log")).unwrap();
    f.write_all_at(b"newer bytes", 5000).unwrap();
    f.sync_all().unwrap();
    drop(f);
    control("disarm");
    let appended = appender.join().unwrap();
    model[5000..5011].copy_from_slice(b"newer bytes");
    model.extend_from_slice(&appended);
    let seen = fs::read(a.path("log")).unwrap();
    assert_eq!(
        &seen[5000..5011],
        b"newer bytes",
        "the move brought back older bytes"
    );
    assert!(seen == model);
    assert!(fs::read(b.path("log")).unwrap() == model);
    fsck_is_clean(&cluster);
}

/// The process serving the mount at `dir` (the daemonized `dfs-mount`).
pub(crate) fn mount_process(dir: &std::path::Path) -> i32 {
    let wanted = dir.to_str().unwrap();
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"dfs-mount"))
                && args.contains(&wanted.as_bytes())
        })
        .expect("the mount's process")
}

/// What the workload saw acknowledged: file name and content.
type Acked = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

#[test]
fn a_mount_killed_mid_write_loses_nothing_it_acknowledged() {
    let cluster = cluster_with_volume_on(6);
    let a = Mount::new(&cluster, "default", "a", "").unwrap();
    // Files of both kinds: kept inline, and in blocks.
    let content = |i: usize| {
        random_bytes(
            if i.is_multiple_of(2) {
                1 + i * 997 % 60_000
            } else {
                100_000 + i * 7919 % 200_000
            },
            i as u64,
        )
    };
    let acked: Acked = Default::default();
    let writer = {
        let (dir, acked) = (a.dir.clone(), acked.clone());
        std::thread::spawn(move || {
            for i in 0.. {
                let name = format!("file-{i:04}");
                let data = content(i);
                let written = (|| {
                    let mut f = fs::File::create(dir.join(&name))?;
                    f.write_all(&data)?;
                    f.sync_all()
                })();
                if written.is_err() {
                    return i;
                }
                acked.lock().unwrap().push((name, data));
            }
            unreachable!()
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while acked.lock().unwrap().len() < 30 {
        assert!(
            std::time::Instant::now() < deadline,
            "the workload stalled\n{}",
            cluster.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: kill(2) of the mount's process, which this test started.
    assert_eq!(
        unsafe { libc::kill(mount_process(&a.dir), libc::SIGKILL) },
        0
    );
    let stopped_at = writer.join().unwrap();
    drop(a);

    let b = Mount::new(&cluster, "default", "b", "").unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(stopped_at >= acked.len());
    for (name, data) in &acked {
        let got = fs::read(b.path(name)).unwrap_or_else(|e| panic!("{name} lost: {e}"));
        assert!(
            &got == data,
            "{name} differs ({} bytes, {} expected)",
            got.len(),
            data.len()
        );
    }
    // The file being written when the mount died is absent, empty or whole: never torn.
    let name = format!("file-{stopped_at:04}");
    if let Ok(got) = fs::read(b.path(&name)) {
        assert!(
            got.is_empty() || got == content(stopped_at),
            "{name} is torn ({} bytes)",
            got.len()
        );
    }
    fsck_is_clean(&cluster);
}
