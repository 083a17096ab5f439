//! A file unlinked or replaced on one mount while another mount has it open stays readable and
//! writable there until that mount closes it (or dies), as on a local file system: the
//! metadata server keeps it as an orphan until no mount reports it open.

use crate::heal::wait_until;
use crate::mount::{cluster_with_volume, with_default_volume};
use crate::observe::required_value;
use dfs_tests::process::{Mount, ProcessCluster};
use dfs_tests::random_bytes;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Well past a mount's next call for changes (every second) and a dead mount's lapse (3.5 s),
/// on a busy host.
const LIMIT: Duration = Duration::from_secs(60);

pub(crate) fn reaped(cluster: &ProcessCluster) -> f64 {
    required_value(cluster.meta_http, "dfs_meta_orphans_reaped_total")
}

/// Waits until `n` orphans have been freed in all (`what` names the wait in a failure).
fn wait_until_reaped(cluster: &ProcessCluster, n: f64, what: &str) {
    wait_until(cluster, LIMIT, what, || reaped(cluster) == n);
}

fn kept(cluster: &ProcessCluster) -> f64 {
    required_value(cluster.meta_http, "dfs_meta_orphans_kept_total")
}

fn read_all(file: &mut File) -> Vec<u8> {
    let mut data = Vec::new();
    // From the mount, not from pages the kernel kept of an earlier read.
    // SAFETY: fadvise(2) on a descriptor this test owns.
    let dropped = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(dropped, 0, "dropping the file's cached pages");
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_end(&mut data).unwrap();
    data
}

/// Unlinks a file open nowhere on mount `a`, after whatever the test changed, and waits until
/// an orphan is freed: once that file is, every mount has called for changes after all of
/// those (see `ChangeFeed::may_reap`), so an orphan still kept is kept for the file being
/// open. (Another orphan freed first also ends the wait: the tests read the files they hold
/// back from the mount, which fails for a freed one.)
fn unlink_a_closed_file_and_wait_until_it_is_freed(cluster: &ProcessCluster, a: &Mount) {
    let before = reaped(cluster);
    fs::write(a.path("closed"), b"nobody has me open").unwrap();
    fs::remove_file(a.path("closed")).unwrap();
    wait_until(cluster, LIMIT, "the closed file freed", || {
        reaped(cluster) > before
    });
}

#[test]
fn a_file_unlinked_or_replaced_elsewhere_stays_readable_and_writable_while_open() {
    let cluster = cluster_with_volume();
    let a = Mount::new(&cluster, "default", "a", "").unwrap();
    let b = Mount::new(&cluster, "default", "b", "").unwrap();
    // In erasure-coded blocks, kept inline, and a log written on after its unlink.
    let big = random_bytes(700_000, 1);
    let small = b"version 1\n".to_vec();
    fs::write(a.path("big"), &big).unwrap();
    fs::write(a.path("config"), &small).unwrap();
    fs::write(a.path("log"), b"line 1\n").unwrap();
    let mut held_big = File::open(b.path("big")).unwrap();
    let mut held_config = File::open(b.path("config")).unwrap();
    let mut held_log = OpenOptions::new()
        .read(true)
        .append(true)
        .open(b.path("log"))
        .unwrap();

    fs::remove_file(a.path("big")).unwrap();
    fs::write(a.path("config.new"), b"version 2\n").unwrap();
    fs::rename(a.path("config.new"), a.path("config")).unwrap();
    fs::remove_file(a.path("log")).unwrap();
    unlink_a_closed_file_and_wait_until_it_is_freed(&cluster, &a);
    assert_eq!(reaped(&cluster), 1.0, "only the closed file was freed");
    assert_eq!(kept(&cluster), 4.0);

    // The other mount reads every byte it had open, and writes on.
    assert!(read_all(&mut held_big) == big, "the unlinked file's bytes");
    assert_eq!(
        read_all(&mut held_config),
        small,
        "the replaced file's bytes"
    );
    held_log.write_all(b"line 2\n").unwrap();
    held_log.sync_all().unwrap();
    assert_eq!(read_all(&mut held_log), b"line 1\nline 2\n");
    assert_eq!(held_log.metadata().unwrap().len(), 14);
    // The names are gone or replaced everywhere.
    for m in [&a, &b] {
        assert!(fs::metadata(m.path("big")).is_err());
        assert!(fs::metadata(m.path("log")).is_err());
        assert_eq!(fs::read(m.path("config")).unwrap(), b"version 2\n");
    }

    // Closed: freed.
    drop((held_big, held_config, held_log));
    wait_until_reaped(&cluster, 4.0, "the orphans freed after their close");
    crate::inline::fsck_is_clean(&cluster);
}

/// An orphan is opened again only by a client that reports it open: another reached it through
/// a name it had not dropped yet, and the file could be freed under that open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_is_opened_again_only_by_a_client_that_reports_it_open() {
    use dfs_common::proto::meta::req::OpenReport;
    use dfs_common::{proto::meta::FileKind, FsError};
    let cluster = dfs_tests::TestCluster::start(3).await;
    let holder = cluster.client().await;
    let other = cluster.client().await;
    let root = cluster.volume(&holder, "v", "2+1", 1 << 20).await.root;
    let file = holder
        .make_node(root, "f", FileKind::File, 0o644, 0, 0, 0)
        .await
        .unwrap();
    let report = OpenReport {
        all: true,
        opened: vec![file.ino],
        released: Vec::new(),
    };
    holder
        .watch_open(root, 0, 0, Duration::ZERO, report)
        .await
        .unwrap();
    assert_eq!(other.open_attr(file.ino, false).await.unwrap().nlink, 1);
    other.unlink(root, "f").await.unwrap();
    assert_eq!(
        other.open_attr(file.ino, false).await,
        Err(FsError::NotFound)
    );
    assert_eq!(holder.open_attr(file.ino, false).await.unwrap().nlink, 0);
}

/// Stops a process until dropped (a paused VM, a mount cut off the network).
struct Paused(i32);

impl Paused {
    fn new(pid: i32) -> Paused {
        // SAFETY: kill(2) of a process this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        Paused(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        // SAFETY: as in `new`.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// A mount silent for a while (cut off the network, its VM paused) is not waited for, but the
/// files it had open and that were unlinked meanwhile are kept for the orphan hold: back, it
/// goes on using them (a temporary file opened and unlinked at once, say).
#[test]
fn a_mount_silent_past_its_lapse_keeps_the_unlinked_files_it_holds() {
    let cluster = cluster_with_volume();
    let a = Mount::new(&cluster, "default", "a", "").unwrap();
    let b = Mount::new(&cluster, "default", "b", "").unwrap();
    let data = random_bytes(200_000, 3);
    fs::write(b.path("scratch"), &data).unwrap();
    let mut held = OpenOptions::new()
        .read(true)
        .append(true)
        .open(b.path("scratch"))
        .unwrap();
    fs::remove_file(b.path("scratch")).unwrap();
    unlink_a_closed_file_and_wait_until_it_is_freed(&cluster, &a);
    assert_eq!(reaped(&cluster), 1.0, "the open file is kept");
    {
        let _silent = Paused::new(crate::inline::mount_process(&b.dir));
        // Freed only once the silent mount is no longer waited for.
        unlink_a_closed_file_and_wait_until_it_is_freed(&cluster, &a);
        assert_eq!(reaped(&cluster), 2.0, "the silent mount's file is kept");
    }
    assert!(read_all(&mut held) == data, "the bytes after the silence");
    held.write_all(b"more").unwrap();
    held.sync_all().unwrap();
    assert_eq!(held.metadata().unwrap().len(), 200_004);
    drop(held);
    wait_until_reaped(&cluster, 3.0, "the orphan freed after its close");
}

/// A mount silent past the transport's idle timeout (its connection closed by the metadata
/// server meanwhile, a network cut or a paused VM of more than 15 s) comes back on a new
/// connection: the unlinked file it holds is still there, a rename made meanwhile shows, and
/// it goes on writing.
#[test]
fn a_mount_silent_past_the_connection_timeout_comes_back_on_a_new_connection() {
    let cluster = cluster_with_volume();
    let a = Mount::new(&cluster, "default", "a", "").unwrap();
    let b = Mount::new(&cluster, "default", "b", "").unwrap();
    let data = random_bytes(120_000, 5);
    fs::write(b.path("scratch"), &data).unwrap();
    let mut held = OpenOptions::new()
        .read(true)
        .append(true)
        .open(b.path("scratch"))
        .unwrap();
    fs::remove_file(b.path("scratch")).unwrap();
    fs::write(a.path("old"), b"renamed while b is away").unwrap();
    assert!(b.path("old").exists(), "b knows the name");
    let timed_out = || cluster.meta_logs().contains("connection timed out");
    assert!(!timed_out(), "no connection timed out yet");
    {
        let _silent = Paused::new(crate::inline::mount_process(&b.dir));
        wait_until(&cluster, LIMIT, "b's connection timed out", timed_out);
        fs::rename(a.path("old"), a.path("new")).unwrap();
        unlink_a_closed_file_and_wait_until_it_is_freed(&cluster, &a);
    }
    assert!(
        read_all(&mut held) == data,
        "the held file after the silence"
    );
    held.write_all(b"more").unwrap();
    held.sync_all().unwrap();
    assert_eq!(held.metadata().unwrap().len(), 120_004);
    wait_until(&cluster, LIMIT, "the rename shown on b", || {
        !b.path("old").exists() && b.path("new").exists()
    });
    fs::write(b.path("after"), b"written once back").unwrap();
    assert_eq!(fs::read(a.path("after")).unwrap(), b"written once back");
    drop(held);
    wait_until_reaped(&cluster, 2.0, "the held file freed after its close");
}

/// A mount that falls silent before it reported the files it opened last (its call for
/// changes held at a fault point) still keeps them when they are unlinked: the metadata server
/// holds the files a mount opened or created through calls as if reported.
#[test]
fn files_opened_just_before_a_mount_falls_silent_are_kept() {
    let cluster = cluster_with_volume();
    let a = Mount::new(&cluster, "default", "a", "").unwrap();
    let (b, http) = crate::observe::mount_with_faults(&cluster, "default", "b", "");
    let data = random_bytes(150_000, 4);
    fs::write(a.path("shared"), &data).unwrap();
    crate::coherence::hold_before_next_poll(&cluster, http, &a);

    // Opened on b, unlinked on a; created and unlinked at once on b (a temporary file).
    let mut opened = File::open(b.path("shared")).unwrap();
    let mut created = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(b.path("scratch"))
        .unwrap();
    created.write_all(b"scratch bytes").unwrap();
    fs::remove_file(a.path("shared")).unwrap();
    fs::remove_file(b.path("scratch")).unwrap();
    // Freed only once the silent mount is no longer waited for.
    unlink_a_closed_file_and_wait_until_it_is_freed(&cluster, &a);
    assert_eq!(reaped(&cluster), 1.0, "the files b opened are kept");

    crate::observe::mount_fault(http, "mount.watch_changes", "disarm");
    assert!(read_all(&mut opened) == data, "the unlinked file's bytes");
    created.sync_all().unwrap();
    assert_eq!(read_all(&mut created), b"scratch bytes");
    drop((opened, created));
    wait_until_reaped(&cluster, 3.0, "both freed after their close");
}

/// A mount is known to the metadata server before the kernel sends it a request: a file it
/// opens before its first call for changes from the feed's follower (held at a fault point
/// from the start) is kept when another mount unlinks it.
#[test]
fn a_file_opened_by_a_new_mount_before_it_first_followed_the_feed_is_kept() {
    let cluster = cluster_with_volume();
    let a = Mount::new(&cluster, "default", "a", "").unwrap();
    let data = random_bytes(150_000, 8);
    fs::write(a.path("shared"), &data).unwrap();
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], dfs_tests::process::free_tcp_port()));
    let env = [("DFS_FAULTS", "mount.watch_changes=pause")];
    let b = Mount::with_env(&cluster, "default", "b", &format!("metrics={http}"), &env).unwrap();

    let mut opened = File::open(b.path("shared")).unwrap();
    fs::remove_file(a.path("shared")).unwrap();
    // Freed only once the silent mount is no longer waited for.
    unlink_a_closed_file_and_wait_until_it_is_freed(&cluster, &a);
    assert_eq!(reaped(&cluster), 1.0, "the file b opened is kept");

    crate::observe::mount_fault(http, "mount.watch_changes", "disarm");
    assert!(read_all(&mut opened) == data, "the unlinked file's bytes");
    drop(opened);
    wait_until_reaped(&cluster, 2.0, "freed after its close");
}

/// A mount that reopens files under its open delegations (no call to the metadata server)
/// and falls silent before it reports them still keeps them when another mount unlinks them,
/// whether the unlink comes before its delegations lapsed (and waits for that) or after: what
/// a lapsed delegation covered is held as if opened.
#[test]
fn files_reopened_under_a_delegation_just_before_a_mount_falls_silent_are_kept() {
    use crate::coherence::{opens, wait_for_delegation};
    use crate::observe::{mount_fault, scrape, value};
    let cluster = cluster_with_volume();
    let a = Mount::new(&cluster, "default", "a", "").unwrap();
    let (b, http) = crate::observe::mount_with_faults(&cluster, "default", "b", "");
    let early_data = random_bytes(150_000, 6);
    let late_data = random_bytes(3_000, 7);
    fs::write(a.path("early"), &early_data).unwrap();
    fs::write(a.path("late"), &late_data).unwrap();
    wait_for_delegation(&cluster, &b, "early");
    wait_for_delegation(&cluster, &b, "late");
    // The kernel sends a close's release on its own time: once b took them all, its second
    // call for changes from now reports both files closed. Its third is held.
    wait_until(&cluster, LIMIT, "b released the files it read", || {
        let samples = scrape(http);
        let count = |op: &str| value(&samples, &format!("dfs_fuse_requests_total{{op=\"{op}\"}}"));
        count("open") == count("release")
    });
    let watch = |verb: &str| mount_fault(http, "mount.watch_changes", verb);
    let held = |n: u32| {
        wait_until(&cluster, LIMIT, "b's call for changes held", || {
            watch("hits").trim() == n.to_string()
        })
    };
    watch("pause");
    for n in 1..=2 {
        held(n);
        watch("release");
    }
    held(3);

    // Its delegations hold at the mount for a second or more: its last answered call was sent
    // that recently.
    let before = opens(&cluster);
    let mut early = File::open(b.path("early")).unwrap();
    let mut late = File::open(b.path("late")).unwrap();
    assert_eq!(opens(&cluster), before, "both reopened under delegations");
    // Answered once b's delegation has lapsed; the next one after that.
    fs::remove_file(a.path("early")).unwrap();
    fs::remove_file(a.path("late")).unwrap();
    unlink_a_closed_file_and_wait_until_it_is_freed(&cluster, &a);
    assert_eq!(reaped(&cluster), 1.0, "the files b reopened are kept");

    watch("disarm");
    assert!(
        read_all(&mut early) == early_data,
        "the first unlinked file"
    );
    assert!(read_all(&mut late) == late_data, "the second unlinked file");
    drop((early, late));
    wait_until_reaped(&cluster, 3.0, "both freed after their close");
}

/// A mount the restarted metadata server has not heard from yet (its first call, which
/// reports every file it has open, held at a fault point) keeps the file it holds open when
/// another mount unlinks it right after the restart: the orphans made before every mount can
/// have reported wait the hold, as those found at the restart do.
#[test]
fn a_file_unlinked_before_a_mount_reported_to_a_restarted_server_is_kept() {
    let mut cluster = with_default_volume(ProcessCluster::start_with(6, |c| {
        c.meta_args = vec!["--orphan-hold-secs".into(), "20".into()];
    }));
    let a = Mount::new(&cluster, "default", "a", "").unwrap();
    let (b, http) = crate::observe::mount_with_faults(&cluster, "default", "b", "");
    let data = random_bytes(150_000, 8);
    fs::write(a.path("f"), &data).unwrap();
    let mut held = File::open(b.path("f")).unwrap();
    crate::coherence::hold_before_next_poll(&cluster, http, &a);

    cluster.kill_meta();
    cluster.start_meta();
    fs::remove_file(a.path("f")).unwrap();
    // Only a calls for changes now: past its second call since the restart, only the wait
    // keeps the file.
    wait_until(&cluster, LIMIT, "two calls of a on the new server", || {
        std::net::TcpStream::connect(cluster.meta_http).is_ok()
            && crate::coherence::requests(&cluster, "WatchOpen") >= 2.0
    });
    crate::observe::mount_fault(http, "mount.watch_changes", "disarm");
    unlink_a_closed_file_and_wait_until_it_is_freed(&cluster, &a);
    assert_eq!(reaped(&cluster), 1.0, "the file b holds is kept");
    assert!(read_all(&mut held) == data, "the held file");
    drop(held);
    wait_until_reaped(&cluster, 2.0, "the held file freed after its close");
}

/// A mount that dies keeps the files it had open only for the orphan hold.
#[test]
fn a_file_open_on_a_mount_that_dies_is_freed_after_the_orphan_hold() {
    let cluster = with_default_volume(ProcessCluster::start_with(6, |c| {
        c.meta_args = vec!["--orphan-hold-secs".into(), "6".into()];
    }));
    let a = Mount::new(&cluster, "default", "a", "").unwrap();
    let b = Mount::new(&cluster, "default", "b", "").unwrap();
    fs::write(a.path("f"), b"held").unwrap();
    let held = File::open(b.path("f")).unwrap();
    fs::remove_file(a.path("f")).unwrap();
    unlink_a_closed_file_and_wait_until_it_is_freed(&cluster, &a);
    assert_eq!(reaped(&cluster), 1.0, "the open file is kept");

    // SAFETY: kill(2) of the mount's process, which this test started.
    let pid = crate::inline::mount_process(&b.dir);
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    wait_until_reaped(&cluster, 2.0, "the file of the dead mount freed");
    drop(held);
}

#[test]
fn a_file_held_open_survives_a_restart_of_the_metadata_server() {
    // The orphans a restarted server finds wait the hold: 20 s here.
    let mut cluster = with_default_volume(ProcessCluster::start_with(6, |c| {
        c.meta_args = vec!["--orphan-hold-secs".into(), "20".into()];
    }));
    let a = Mount::new(&cluster, "default", "a", "").unwrap();
    let b = Mount::new(&cluster, "default", "b", "").unwrap();
    let data = random_bytes(300_000, 2);
    fs::write(a.path("held"), &data).unwrap();
    fs::write(a.path("dropped"), b"closed before the restart").unwrap();
    let mut held = File::open(b.path("held")).unwrap();
    fs::remove_file(a.path("held")).unwrap();
    fs::remove_file(a.path("dropped")).unwrap();

    // Both orphans are in the store when the server dies; the new process knows no mount's
    // open files and waits for the mounts to report them again.
    cluster.kill_meta();
    cluster.start_meta();
    wait_until(&cluster, LIMIT, "the orphan nobody holds freed", || {
        std::net::TcpStream::connect(cluster.meta_http).is_ok() && reaped(&cluster) >= 1.0
    });
    assert_eq!(reaped(&cluster), 1.0, "the held file is kept");
    unlink_a_closed_file_and_wait_until_it_is_freed(&cluster, &a);
    assert_eq!(reaped(&cluster), 2.0, "the held file is kept");
    assert!(read_all(&mut held) == data);
    drop(held);
    wait_until_reaped(&cluster, 3.0, "the held file freed after its close");
}
