//! The metadata server's disk filling up: growth is refused with ENOSPC within the reserve
//! while everything else goes on, and a log that finds its disk full anyway stops the server
//! (exit status 1, for its supervisor) instead of leaving it running without a log, and every
//! acknowledged change is there after the restart.

use crate::heal::wait_until;
use crate::mount::with_default_volume;
use crate::observe::required_value;
use dfs_tests::process::{Mount, ProcessCluster};
use dfs_tests::random_bytes;
use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const LIMIT: Duration = Duration::from_secs(60);

/// A small file system of its own (tmpfs) for the metadata server's data, unmounted when
/// dropped (also when the test fails).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs");
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn free(&self) -> u64 {
        let path = std::ffi::CString::new(self.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statvfs(3) into a zeroed struct, with a NUL-terminated path.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut s) }, 0);
        s.f_bavail * s.f_frsize
    }

    /// Fills the disk with a file of its own until `left` bytes are free; returns its path.
    fn fill_until(&self, left: u64) -> PathBuf {
        let filler = self.path().join("filler");
        let len = self.free().saturating_sub(left);
        fs::write(&filler, vec![0u8; len as usize]).unwrap();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: a metadata server of a failed test may still hold files there.
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// A cluster whose metadata server keeps its data on `disk`, with `meta_args`.
fn cluster_on(disk: &SmallDisk, meta_args: &[&str]) -> ProcessCluster {
    with_default_volume(ProcessCluster::start_with(6, |c| {
        symlink(disk.path(), c.dir.path().join("meta")).unwrap();
        c.meta_args = meta_args.iter().map(|a| a.to_string()).collect();
    }))
}

/// Writes a file and fsyncs it: `Ok` only once its bytes are committed (a plain
/// `fs::write` drops the error of its `close`).
fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut file = fs::File::create(path)?;
    file.write_all(data)?;
    file.sync_all()
}

fn enospc(r: std::io::Result<()>) -> bool {
    r.is_err_and(|e| e.raw_os_error() == Some(libc::ENOSPC))
}

#[test]
fn growth_is_refused_with_enospc_within_the_reserve_while_the_rest_goes_on() {
    let disk = SmallDisk::new("160m");
    let mut cluster = cluster_on(&disk, &["--min-free-space", "64M"]);
    let m = Mount::new(&cluster, "default", "m", "").unwrap();
    let small = random_bytes(10_000, 1);
    let big = random_bytes(1_500_000, 2);
    fs::write(m.path("small"), &small).unwrap();
    fs::write(m.path("big"), &big).unwrap();
    fs::write(m.path("doomed"), b"to be removed").unwrap();

    // 4 MiB above the reserve: files of 16 KiB (kept inline) until refused.
    let filler = disk.fill_until(68 * MIB);
    let file = random_bytes(16_384, 3);
    let mut made = 0;
    let refused = loop {
        match write_synced(&m.path(&format!("f{made}")), &file) {
            Ok(()) => made += 1,
            Err(e) => break e,
        }
        assert!(made < 10_000, "never refused");
    };
    assert_eq!(refused.raw_os_error(), Some(libc::ENOSPC), "{refused}");
    // Operators see it coming: the disk's free bytes and the reserve are metrics.
    let disk = |kind: &str| {
        required_value(
            cluster.meta_http,
            &format!("dfs_meta_disk_bytes{{kind=\"{kind}\"}}"),
        )
    };
    assert_eq!(disk("reserve"), (64 * MIB) as f64);
    assert!(disk("free") < (64 * MIB) as f64, "{}", disk("free"));
    // Whatever grows the metadata is refused at once, with ENOSPC.
    assert!(enospc(fs::create_dir(m.path("dir"))));
    assert!(enospc(symlink("small", m.path("link"))));
    assert!(enospc(fs::hard_link(m.path("small"), m.path("hard"))));
    // Everything else goes on: reads, listings, truncates, renames and unlinks.
    assert_eq!(fs::read(m.path("small")).unwrap(), small);
    assert!(fs::read(m.path("big")).unwrap() == big);
    for i in 0..made {
        assert!(fs::read(m.path(&format!("f{i}"))).unwrap() == file, "f{i}");
    }
    // (The refused file's name stays if its create went through and its write did not.)
    let refused_name = usize::from(m.path(&format!("f{made}")).exists());
    assert_eq!(
        fs::read_dir(m.path("")).unwrap().count(),
        made + 3 + refused_name
    );
    fs::rename(m.path("small"), m.path("small.renamed")).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(m.path("big"))
        .unwrap()
        .set_len(1000)
        .unwrap();
    fs::remove_file(m.path("doomed")).unwrap();
    assert!(!cluster.member_exited(0), "the metadata server runs on");

    // Room made: creates and writes go on.
    fs::remove_file(filler).unwrap();
    wait_until(&cluster, LIMIT, "a create after room was made", || {
        fs::write(m.path("after"), &file).is_ok()
    });
    fs::create_dir(m.path("dir")).unwrap();
    assert!(fs::read(m.path("after")).unwrap() == file);
    assert_eq!(fs::read(m.path("small.renamed")).unwrap(), small);
    assert!(fs::read(m.path("big")).unwrap() == big[..1000]);
}

#[test]
fn a_log_that_finds_its_disk_full_stops_the_server_and_nothing_acknowledged_is_lost() {
    let disk = SmallDisk::new("64m");
    let mut cluster = cluster_on(&disk, &["--min-free-space", "0"]);
    let acknowledged = {
        // `soft`: once the server is gone, calls fail at once instead of waiting for it.
        let m = Mount::new(&cluster, "default", "m", "soft").unwrap();
        let filler = disk.fill_until(0);
        let mut acknowledged = Vec::new();
        for i in 0..10_000 {
            let name = format!("f{i}");
            let data = random_bytes(16_384, i);
            if write_synced(&m.path(&name), &data).is_err() {
                break;
            }
            acknowledged.push((name, data));
        }
        let deadline = Instant::now() + LIMIT;
        let status = loop {
            if let Some(status) = cluster.member_exit_status(0) {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the metadata server runs on without its log"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(
            status.code(),
            Some(1),
            "an exit for its supervisor to restart it"
        );
        assert!(cluster.logs().contains("the metadata log stopped"));
        fs::remove_file(filler).unwrap();
        acknowledged
    };
    assert!(
        !acknowledged.is_empty(),
        "the log filled its zeroed space first"
    );

    cluster.start_meta();
    let m = Mount::new(&cluster, "default", "again", "").unwrap();
    for (name, data) in &acknowledged {
        assert!(&fs::read(m.path(name)).unwrap() == data, "{name}");
    }
    fs::write(m.path("after"), b"room again").unwrap();
    assert_eq!(fs::read(m.path("after")).unwrap(), b"room again");
}

/// A snapshot (a copy of the store) that would not fit on the disk waits for room instead of
/// failing: Raft takes a failed build as fatal, and the server would stop, and stop again at
/// every restart while its log is long.
#[test]
fn a_snapshot_without_room_waits_for_it_instead_of_stopping_the_server() {
    let disk = SmallDisk::new("160m");
    let mut cluster = cluster_on(&disk, &["--min-free-space", "0", "--snapshot-every", "300"]);
    let m = Mount::new(&cluster, "default", "m", "").unwrap();
    // A store of some 20 MiB: files of 60 KiB kept inline.
    let file = random_bytes(60_000, 4);
    for i in 0..350 {
        fs::write(m.path(&format!("big{i}")), &file).unwrap();
    }
    // Less room than a copy of the store needs; small files until a snapshot is due.
    let filler = disk.fill_until(8 * MIB);
    let put_off = |cluster: &ProcessCluster| cluster.logs().contains("snapshot put off");
    let mut made = 0;
    while !put_off(&cluster) {
        write_synced(&m.path(&format!("small{made}")), b"small").unwrap();
        made += 1;
        assert!(made < 2_000, "no snapshot was put off");
    }
    assert!(!cluster.member_exited(0), "the metadata server runs on");
    write_synced(&m.path("meanwhile"), b"still served").unwrap();

    fs::remove_file(filler).unwrap();
    wait_until(
        &cluster,
        LIMIT,
        "the snapshot made once there is room",
        || cluster.logs().contains("room for the snapshot now"),
    );
    assert!(!cluster.member_exited(0));
    assert!(fs::read(m.path("big0")).unwrap() == file);
    assert_eq!(fs::read(m.path("meanwhile")).unwrap(), b"still served");
}
