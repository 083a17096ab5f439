//! Changes made on one mount show on another at once: the metadata server's change feed
//! drops them from the other mount's caches. The watching mount caches entries and attributes
//! for 60 s, so nothing but the feed can make a change show there within the test's limits.

use crate::mount::cluster_with_volume;
use dfs_tests::process::Mount;
use std::fs::{self, File};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::time::{Duration, Instant};

/// Far below the watching mount's 60 s caches, far above a change's trip on a busy host.
const LIMIT: Duration = Duration::from_secs(10);

/// Waits until `check` holds, for at most [`LIMIT`].
fn shows(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what}: not seen by the other mount within {LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_at(file: &File, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let n = file.read_at(&mut buf, 0).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn changes_on_one_mount_show_on_another_long_before_its_caches_expire() {
    let cluster = cluster_with_volume();
    let a = Mount::new(&cluster, "default", "a", "").unwrap();
    let b = Mount::new(&cluster, "default", "b", "attr_timeout=60").unwrap();

    // Rename: the watching mount has the old name and its attributes cached.
    fs::write(a.path("old"), b"one").unwrap();
    assert_eq!(fs::read(b.path("old")).unwrap(), b"one");
    fs::rename(a.path("old"), a.path("new")).unwrap();
    shows("a rename", || {
        fs::metadata(b.path("old")).is_err() && fs::metadata(b.path("new")).is_ok()
    });

    // Chmod of a file whose attributes the watching mount caches.
    let mode = |m: &Mount| fs::metadata(m.path("new")).unwrap().permissions().mode() & 0o777;
    assert_ne!(mode(&b), 0o600);
    fs::set_permissions(a.path("new"), fs::Permissions::from_mode(0o600)).unwrap();
    shows("a chmod", || mode(&b) == 0o600);

    // A write, read through a file the watching mount keeps open with the old bytes cached.
    let held = File::open(b.path("new")).unwrap();
    assert_eq!(read_at(&held, 16), b"one");
    fs::write(a.path("new"), b"two").unwrap();
    shows("a write", || read_at(&held, 16) == b"two");
    drop(held);

    // Unlink.
    fs::remove_file(a.path("new")).unwrap();
    shows("an unlink", || fs::metadata(b.path("new")).is_err());

    // A directory made where the watching mount keeps the name's absence, then removed.
    assert!(fs::metadata(b.path("d")).is_err());
    fs::create_dir(a.path("d")).unwrap();
    shows("a mkdir", || {
        fs::metadata(b.path("d")).is_ok_and(|m| m.is_dir())
    });
    fs::remove_dir(a.path("d")).unwrap();
    shows("an rmdir", || fs::metadata(b.path("d")).is_err());

    // The watching mount's own changes still show on it at once (its caches stay right).
    fs::write(b.path("mine"), b"x").unwrap();
    fs::rename(b.path("mine"), b.path("ours")).unwrap();
    assert!(fs::metadata(b.path("mine")).is_err());
    assert_eq!(fs::read(a.path("ours")).unwrap(), b"x");
}

#[test]
fn a_mount_keeps_a_name_absence_for_the_attribute_timeout() {
    let mut cluster = cluster_with_volume();
    let m = Mount::new(&cluster, "default", "m", "attr_timeout=60,retry=60").unwrap();
    let missing = m.path("missing");
    assert!(fs::metadata(&missing).is_err());
    // With the metadata server gone, only a kept absence can answer at once; a lookup would
    // wait for the server to come back.
    cluster.kill_meta();
    let asked = std::thread::spawn(move || fs::metadata(&missing).is_err());
    let deadline = Instant::now() + LIMIT;
    while !asked.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let answered = asked.is_finished();
    cluster.start_meta();
    assert!(
        answered,
        "the absence was asked of the metadata server again"
    );
    assert!(asked.join().unwrap(), "the name is still absent");
    // The mount's own create replaces the kept absence at once.
    fs::write(m.path("missing"), b"here").unwrap();
    assert_eq!(fs::read(m.path("missing")).unwrap(), b"here");
}

/// The kernel asks for a directory's attributes after every create or unlink in it; the
/// mount answers from the attributes that came back with the change, so a loop of creates
/// costs no `GetAttr` per file, and what it answers is the directory as the change left it.
#[test]
fn a_directory_changed_by_this_mount_is_not_asked_for_again() {
    use std::os::unix::fs::MetadataExt;
    let cluster = cluster_with_volume();
    let m = Mount::new(&cluster, "default", "m", "").unwrap();
    fs::create_dir(m.path("d")).unwrap();
    let before = getattrs(&cluster);
    for i in 0..20 {
        fs::write(m.path(&format!("d/f{i}")), b"x").unwrap();
        fs::remove_file(m.path(&format!("d/f{i}"))).unwrap();
    }
    let asked = getattrs(&cluster) - before;
    assert!(asked < 5.0, "{asked} GetAttr calls for 40 changes");
    // What the mount answers is the directory as the last change left it.
    let earlier = fs::metadata(m.path("d")).unwrap();
    fs::write(m.path("d/last"), b"x").unwrap();
    let dir = fs::metadata(m.path("d")).unwrap();
    assert!((dir.mtime(), dir.mtime_nsec()) > (earlier.mtime(), earlier.mtime_nsec()));
    let other = Mount::new(&cluster, "default", "other", "").unwrap();
    let fresh = fs::metadata(other.path("d")).unwrap();
    assert_eq!(
        (dir.mtime(), dir.mtime_nsec(), dir.nlink()),
        (fresh.mtime(), fresh.mtime_nsec(), fresh.nlink())
    );
}

/// A metadata server asked to stop does not wait out the long polls of the mounts watching its
/// change feed (up to 10 s each): it stops at once, and the poll fails instead of hanging.
/// A fault point holds the poll at the server until the test lets it go into its wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_metadata_server_does_not_wait_for_long_polls() {
    const POINT: &str = "meta.after_authorize.WatchChanges";
    let mut cluster = dfs_tests::TestCluster::start(3).await;
    let client = cluster.client().await;
    let root = cluster.volume(&client, "v", "2+1", 1 << 20).await.root;
    // A new watcher's first poll answers at once with the feed to follow.
    let first = client
        .watch_changes(root, 0, 0, Duration::from_secs(10))
        .await
        .unwrap();
    let faults = cluster.faults.clone();
    faults.arm(POINT, dfs_common::fault::Action::Pause);
    let poll = tokio::spawn(async move {
        client
            .watch_changes(root, first.feed, first.next, Duration::from_secs(10))
            .await
    });
    faults
        .wait_hit(POINT, 1, Duration::from_secs(20))
        .await
        .unwrap();
    let started = Instant::now();
    faults.disarm(POINT);
    cluster.stop_meta().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "stopping took {took:?}: it waited for the long poll"
    );
    let answer = tokio::time::timeout(Duration::from_secs(30), poll)
        .await
        .expect("the poll ended")
        .unwrap();
    assert!(answer.is_err(), "the poll was answered: {answer:?}");
}

/// Holds the mount serving metrics at `http` (with `DFS_FAULTS=enabled`) before its next call
/// for changes: the fault point is armed, and a change made through `writer` ends the call
/// in progress.
pub(crate) fn hold_before_next_poll(
    cluster: &dfs_tests::process::ProcessCluster,
    http: std::net::SocketAddr,
    writer: &Mount,
) {
    use crate::observe::mount_fault;
    let control = |verb: &str| mount_fault(http, "mount.watch_changes", verb);
    control("pause");
    fs::write(writer.path(".nudge"), b"x").unwrap();
    crate::heal::wait_until(cluster, Duration::from_secs(30), "the watcher held", || {
        control("hits").trim() != "0"
    });
}

/// Lookups and attribute requests the metadata server has answered so far (all clients).
fn lookups_and_getattrs(cluster: &dfs_tests::process::ProcessCluster) -> f64 {
    use crate::observe::{scrape, value};
    let samples = scrape(cluster.meta_http);
    value(&samples, "dfs_meta_requests_total{op=\"Lookup\"}")
        + value(&samples, "dfs_meta_requests_total{op=\"GetAttr\"}")
}

/// Requests of kind `op` the metadata server has answered so far (all clients).
pub(crate) fn requests(cluster: &dfs_tests::process::ProcessCluster, op: &str) -> f64 {
    use crate::observe::{scrape, value};
    let name = format!("dfs_meta_requests_total{{op=\"{op}\"}}");
    value(&scrape(cluster.meta_http), &name)
}

/// Attribute requests the metadata server has answered so far (all clients).
fn getattrs(cluster: &dfs_tests::process::ProcessCluster) -> f64 {
    requests(cluster, "GetAttr")
}

/// While a mount follows the change feed, the kernel keeps names and attributes for the
/// lease, not the attribute timeout: stats of files already seen cost no round trip. A mount
/// without a lease asks every time.
#[test]
fn names_and_attributes_seen_while_the_feed_is_followed_cost_no_round_trip() {
    let cluster = cluster_with_volume();
    let leased = Mount::new(&cluster, "default", "leased", "attr_timeout=0").unwrap();
    let asking = Mount::new(&cluster, "default", "asking", "attr_timeout=0,lease=0").unwrap();
    let names: Vec<String> = (0..40).map(|i| format!("f{i}")).collect();
    for name in &names {
        fs::write(leased.path(name), b"x").unwrap();
    }
    let stat_all = |m: &Mount| {
        let before = lookups_and_getattrs(&cluster);
        for name in &names {
            assert_eq!(fs::metadata(m.path(name)).unwrap().len(), 1);
        }
        lookups_and_getattrs(&cluster) - before
    };
    // The first grants come once the mount's first call for changes is answered.
    shows("stats answered by the kernel", || stat_all(&leased) == 0.0);
    let asked = stat_all(&asking);
    assert!(
        asked >= names.len() as f64,
        "{asked} requests for {} stats",
        names.len()
    );
    // A change elsewhere still shows at once.
    fs::write(asking.path("f3"), b"longer").unwrap();
    shows("a write from the other mount", || {
        fs::metadata(leased.path("f3")).unwrap().len() == 6
    });
}

/// After this mount writes a file and closes it, `stat` is answered from the attributes the
/// close's commit returned: no `GetAttr` reaches the metadata server. What changes them
/// without returning them still shows at once: an unlink of another name of the file here
/// (its link count), and another mount's chmod and write.
#[test]
fn a_stat_after_writes_here_costs_no_round_trip_and_shows_every_change() {
    use std::os::unix::fs::MetadataExt;
    let cluster = cluster_with_volume();
    let m = Mount::new(&cluster, "default", "m", "").unwrap();
    let other = Mount::new(&cluster, "default", "other", "").unwrap();
    let before = getattrs(&cluster);
    for i in 0..20 {
        let path = m.path(&format!("f{i}"));
        fs::write(&path, vec![b'x'; 1000 + i]).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 1000 + i as u64);
    }
    assert_eq!(
        getattrs(&cluster),
        before,
        "stats after writes asked the server"
    );

    // A second name, and a write through the first: the close's commit answers with two
    // links. Unlinking the second name here must not leave that count shown.
    fs::hard_link(m.path("f0"), m.path("g0")).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(m.path("f0"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"more"))
        .unwrap();
    assert_eq!(fs::metadata(m.path("f0")).unwrap().nlink(), 2);
    fs::remove_file(m.path("g0")).unwrap();
    assert_eq!(
        fs::metadata(m.path("f0")).unwrap().nlink(),
        1,
        "after the unlink"
    );
    assert_eq!(fs::metadata(m.path("f0")).unwrap().len(), 1004);

    // A truncate here answers with the file's new attributes: a stat after it and a write
    // through the same descriptor (which drops the kernel's copy) is answered from them.
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("f3"))
        .unwrap();
    f.set_len(10).unwrap();
    f.write_at(b"abc", 0).unwrap();
    let before = getattrs(&cluster);
    assert_eq!(f.metadata().unwrap().len(), 10);
    assert_eq!(
        getattrs(&cluster),
        before,
        "a stat after a truncate and a write asked the server"
    );
    drop(f);

    // Another mount's changes.
    fs::set_permissions(other.path("f1"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(other.path("f2"), b"short").unwrap();
    shows("another mount's chmod", || {
        fs::metadata(m.path("f1")).unwrap().permissions().mode() & 0o777 == 0o600
    });
    shows("another mount's write", || {
        fs::metadata(m.path("f2")).unwrap().len() == 5
    });
}

/// While the feed is followed, the attributes this mount's own close returned answer the
/// kernel for the lease, not only for the attribute timeout (here zero): a stat after a write
/// here costs no round trip. Another mount's write still shows at once.
#[test]
fn attributes_kept_from_this_mounts_writes_serve_for_the_lease_while_the_feed_is_followed() {
    let cluster = cluster_with_volume();
    let m = Mount::new(&cluster, "default", "m", "attr_timeout=0,lease=600").unwrap();
    let other = Mount::new(&cluster, "default", "other", "").unwrap();
    let mut written = 0;
    // Once the mount's first call for changes is answered.
    shows("a stat after a write answered by the mount", || {
        written += 1;
        let path = m.path(&format!("f{written}"));
        fs::write(&path, vec![b'x'; written]).unwrap();
        let before = getattrs(&cluster);
        assert_eq!(fs::metadata(&path).unwrap().len(), written as u64);
        getattrs(&cluster) == before
    });
    let path = format!("f{written}");
    fs::write(other.path(&path), b"written elsewhere").unwrap();
    shows("another mount's write", || {
        fs::metadata(m.path(&path)).unwrap().len() == 17
    });
}

/// A rename answers with its directories' new attributes and the inodes it changed: the
/// kernel's next stat of either directory is answered by the mount, and the attributes it
/// keeps of other files stay. What the rename changed shows at once, as another mount sees
/// it: both directories' link counts and times, a moved directory's new parent, and the link
/// a replaced file lost.
#[test]
fn a_rename_keeps_its_directories_attributes_and_shows_what_it_changed() {
    use std::os::unix::fs::MetadataExt;
    let cluster = cluster_with_volume();
    let m = Mount::new(&cluster, "default", "m", "attr_timeout=0,lease=600").unwrap();
    let other = Mount::new(&cluster, "default", "other", "").unwrap();
    for dir in ["a", "b", "a/sub"] {
        fs::create_dir(m.path(dir)).unwrap();
    }
    fs::write(m.path("a/f"), b"new").unwrap();
    fs::write(m.path("b/g"), b"old").unwrap();
    fs::hard_link(m.path("b/g"), m.path("b/g2")).unwrap();
    assert_eq!(fs::metadata(m.path("b/g2")).unwrap().nlink(), 2);

    // Once the mount's first call for changes is answered, kept attributes serve the lease
    // (the kernel keeps none: attr_timeout=0).
    let mut round = 0;
    shows("stats after a rename answered by the mount", || {
        round += 1;
        let (from, to) = (
            m.path(&format!("a/r{round}")),
            m.path(&format!("b/r{round}")),
        );
        fs::write(&from, b"r").unwrap();
        assert_eq!(fs::metadata(&from).unwrap().len(), 1);
        fs::rename(&from, &to).unwrap();
        let before = getattrs(&cluster);
        fs::metadata(m.path("a")).unwrap();
        fs::metadata(m.path("b")).unwrap();
        assert_eq!(fs::metadata(&to).unwrap().len(), 1);
        getattrs(&cluster) == before
    });

    fs::rename(m.path("a/sub"), m.path("b/sub")).unwrap();
    fs::rename(m.path("a/f"), m.path("b/g")).unwrap();
    let here = |path: &str| fs::metadata(m.path(path)).unwrap();
    let there = |path: &str| fs::metadata(other.path(path)).unwrap();
    assert_eq!((here("a").nlink(), here("b").nlink()), (2, 3));
    assert_eq!(here("b/sub/..").ino(), here("b").ino());
    assert_eq!(here("b/g2").nlink(), 1, "the replaced file's links");
    assert_eq!(fs::read(m.path("b/g")).unwrap(), b"new");
    for path in ["a", "b", "b/sub", "b/g", "b/g2"] {
        let (h, t) = (here(path), there(path));
        assert_eq!(
            (
                h.ino(),
                h.nlink(),
                h.mtime(),
                h.mtime_nsec(),
                h.ctime(),
                h.ctime_nsec()
            ),
            (
                t.ino(),
                t.nlink(),
                t.mtime(),
                t.mtime_nsec(),
                t.ctime(),
                t.ctime_nsec()
            ),
            "{path} here and on another mount"
        );
    }
    assert!(fs::metadata(m.path("a/sub")).is_err());
}

/// The attributes a close's commit returns and those a later open asks for (close-to-open)
/// describe one state of the file and say the same, extended attributes included: the mount
/// keeps them, and a stat after the reopen costs no round trip.
#[test]
fn a_stat_after_reopening_a_file_written_here_costs_no_round_trip() {
    let cluster = cluster_with_volume();
    let m = Mount::new(&cluster, "default", "m", "attr_timeout=0,lease=600").unwrap();
    let mut round = 0;
    shows(
        "a stat after a write, a close and a reopen answered by the mount",
        || {
            round += 1;
            let path = m.path(&format!("f{round}"));
            fs::write(&path, vec![b'x'; round]).unwrap();
            let reopened = File::open(&path).unwrap();
            let before = getattrs(&cluster);
            assert_eq!(reopened.metadata().unwrap().len(), round as u64);
            assert_eq!(fs::metadata(&path).unwrap().len(), round as u64);
            getattrs(&cluster) == before
        },
    );
}

/// A hard link changes the one inode it names, and its answer carries that inode's new
/// attributes: the attributes the mount keeps of other files stay (a stat of a file written
/// to here, which the kernel asks the mount for, costs no round trip after it), and both
/// names show two links.
#[test]
fn a_link_keeps_other_files_attributes() {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    let cluster = cluster_with_volume();
    let m = Mount::new(&cluster, "default", "m", "attr_timeout=0,lease=600").unwrap();
    let mut round = 0;
    shows("a stat after a link answered by the mount", || {
        round += 1;
        let name = |prefix: &str| m.path(&format!("{prefix}{round}"));
        fs::write(name("f"), b"linked").unwrap();
        fs::write(name("other"), b"other").unwrap();
        let mut other = fs::OpenOptions::new()
            .append(true)
            .open(name("other"))
            .unwrap();
        // The kernel drops its copy of the file's attributes after a write through it.
        other.write_all(b"!").unwrap();
        fs::hard_link(name("f"), name("g")).unwrap();
        let before = getattrs(&cluster);
        assert_eq!(other.metadata().unwrap().len(), 6);
        for path in [name("f"), name("g")] {
            let md = fs::metadata(&path).unwrap();
            assert_eq!((md.nlink(), md.len()), (2, 6), "{path:?}");
        }
        getattrs(&cluster) == before
    });
}

/// An unlink is one request, whether or not files are open here: the metadata server keeps a
/// file open here that loses its last name (no lookup or rename sent first, no name left
/// behind), and its answer names the inode, so the attributes the mount keeps of other files
/// stay: a stat of a file just written here still costs no round trip after an unlink.
#[test]
fn an_unlink_is_one_request_and_keeps_other_files_attributes() {
    use std::io::{Read, Write};
    let cluster = cluster_with_volume();
    let m = Mount::new(&cluster, "default", "m", "").unwrap();
    for name in ["kept", "held", "other", "third"] {
        fs::write(m.path(name), name).unwrap();
    }
    let held = File::open(m.path("held")).unwrap();
    let counts =
        || ["Lookup", "Rename", "Move", "Unlink", "UnlinkOrHide"].map(|op| requests(&cluster, op));
    let before = counts();
    fs::remove_file(m.path("other")).unwrap();
    fs::remove_file(m.path("held")).unwrap();
    let [lookup, rename, moved, unlink, unlink_or_hide] = before;
    assert_eq!(
        counts(),
        [lookup, rename, moved, unlink, unlink_or_hide + 2.0],
        "requests (Lookup, Rename, Move, Unlink, UnlinkOrHide) for two unlinks, one file held open"
    );
    assert!(fs::metadata(m.path("other")).is_err());
    assert!(fs::metadata(m.path("held")).is_err());
    let mut back = String::new();
    (&held).read_to_string(&mut back).unwrap();
    assert_eq!(back, "held", "the file unlinked while open");
    assert_eq!(names_in(&m.dir), ["kept", "third"], "no name left behind");
    drop(held);

    // The kernel asks for a file's attributes after a write to it; the mount answers from
    // those the close's commit returned, and an unlink of another file keeps them.
    fs::OpenOptions::new()
        .append(true)
        .open(m.path("kept"))
        .and_then(|mut f| f.write_all(b" more"))
        .unwrap();
    let before = getattrs(&cluster);
    fs::remove_file(m.path("third")).unwrap();
    assert_eq!(fs::metadata(m.path("kept")).unwrap().len(), 9);
    assert_eq!(
        getattrs(&cluster),
        before,
        "a stat after an unlink of another file asked the server"
    );
}

/// Directory listing requests the metadata server has answered so far (all clients).
fn listings(cluster: &dfs_tests::process::ProcessCluster) -> f64 {
    requests(cluster, "ReadDir")
}

fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// While a mount follows the change feed, the kernel lists a directory it listed before from
/// its own copy: no request reaches the metadata server. Changes still show at once: this
/// mount's own (the kernel drops its copy) and another mount's (the feed), here with a lease
/// long enough that nothing else could make them show. A mount without a lease asks every
/// time.
#[test]
fn a_directory_listed_while_the_feed_is_followed_is_listed_again_without_a_round_trip() {
    let cluster = cluster_with_volume();
    let leased = Mount::new(&cluster, "default", "leased", "lease=600").unwrap();
    let asking = Mount::new(&cluster, "default", "asking", "lease=0").unwrap();
    fs::create_dir(leased.path("d")).unwrap();
    for i in 0..5 {
        fs::write(leased.path(&format!("d/f{i}")), b"x").unwrap();
    }
    let expected: Vec<String> = (0..5).map(|i| format!("f{i}")).collect();
    let list_thrice = |m: &Mount| {
        let before = listings(&cluster);
        for _ in 0..3 {
            assert_eq!(names_in(&m.path("d")), expected);
        }
        listings(&cluster) - before
    };
    // Kept once the mount's first call for changes is answered and the directory was listed.
    shows("listings answered by the kernel", || {
        list_thrice(&leased) == 0.0
    });
    let asked = list_thrice(&asking);
    assert!(asked >= 3.0, "{asked} listing requests for 3 listings");

    // This mount's own create and unlink show in its next listing.
    fs::write(leased.path("d/mine"), b"x").unwrap();
    assert!(names_in(&leased.path("d")).contains(&"mine".to_string()));
    fs::remove_file(leased.path("d/mine")).unwrap();
    assert_eq!(names_in(&leased.path("d")), expected);

    // Another mount's create, rename and unlink show through the feed.
    let listed = |name: &str| names_in(&leased.path("d")).contains(&name.to_string());
    shows("the listing kept again", || list_thrice(&leased) == 0.0);
    fs::write(asking.path("d/theirs"), b"x").unwrap();
    shows("a create in a listed directory", || listed("theirs"));
    fs::rename(asking.path("d/theirs"), asking.path("d/moved")).unwrap();
    shows("a rename in a listed directory", || {
        listed("moved") && !listed("theirs")
    });
    fs::remove_file(asking.path("d/moved")).unwrap();
    shows("an unlink in a listed directory", || !listed("moved"));
    assert_eq!(names_in(&leased.path("d")), expected);
}

/// What a listing shows of each entry, as `ls -l` would print it.
#[derive(Debug, PartialEq)]
struct Shown {
    name: String,
    ino: u64,
    kind: String,
    mode: u32,
    nlink: u64,
    size: u64,
    mtime: (i64, i64),
}

fn shown_in(dir: &std::path::Path) -> Vec<Shown> {
    use std::os::unix::fs::{DirEntryExt, MetadataExt};
    let mut shown: Vec<Shown> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            Shown {
                name: e.file_name().into_string().unwrap(),
                ino: e.ino(),
                kind: format!("{:?}", e.file_type().unwrap()),
                mode: meta.mode(),
                nlink: meta.nlink(),
                size: meta.size(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
            }
        })
        .collect();
    shown.sort_by(|a, b| a.name.cmp(&b.name));
    shown
}

/// The kernel drops its kept listing of a directory at every change it makes there, and
/// programs such as dbench list a directory right after changing it. A mount that knows the
/// directory's contents and holds its entries' attributes answers that listing itself: no
/// request reaches the metadata server through a run of creates, writes, renames (within the
/// directory, in from another and over a name), a hard link, a symlink, mkdir, rmdir, a
/// truncate, a chmod and an unlink, and each listing shows what a mount without a lease gets
/// from the server, entry by entry. A rename in from a directory whose contents it does not
/// know, and another mount's change, show too; a subdirectory's attributes from a listing's
/// answer serve the next listing, until another mount changes it.
#[test]
fn a_listing_after_this_mounts_own_changes_costs_no_round_trip_and_shows_them_all() {
    use crate::observe::{scrape, value};
    let cluster = cluster_with_volume();
    let (knowing, http) =
        crate::observe::mount_with_faults(&cluster, "default", "knowing", "lease=600");
    let asking = Mount::new(&cluster, "default", "asking", "lease=0").unwrap();
    let from_memory = || value(&scrape(http), "dfs_fuse_listings_from_memory_total");
    // The feed answers for a mount from its start: a directory made here is listed by it.
    let mut probes = 0..;
    shows("a directory made here listed from memory", || {
        let dir = knowing.path(&format!("probe{}", probes.next().unwrap()));
        fs::create_dir(&dir).unwrap();
        let before = listings(&cluster);
        names_in(&dir).is_empty() && listings(&cluster) == before
    });
    fs::create_dir(knowing.path("d")).unwrap();
    fs::create_dir(knowing.path("other")).unwrap();
    fs::write(knowing.path("other/incoming"), b"from next door").unwrap();
    let (asked_before, memory_before) = (listings(&cluster), from_memory());
    let steps = std::cell::Cell::new(0.0);
    let step = |what: &str, change: &dyn Fn()| {
        change();
        let here = shown_in(&knowing.path("d"));
        let truth = shown_in(&asking.path("d"));
        assert_eq!(here, truth, "after {what}");
        steps.set(steps.get() + 1.0);
    };
    let write = |name: &str, bytes: &[u8]| fs::write(knowing.path(&format!("d/{name}")), bytes);
    step("creates", &|| {
        for i in 0..6 {
            write(&format!("f{i}"), &vec![b'x'; i * 1000]).unwrap();
        }
    });
    step("an append", &|| {
        fs::OpenOptions::new()
            .append(true)
            .open(knowing.path("d/f1"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"more"))
            .unwrap()
    });
    step("an unlink", &|| {
        fs::remove_file(knowing.path("d/f0")).unwrap()
    });
    step("a rename within", &|| {
        fs::rename(knowing.path("d/f1"), knowing.path("d/g1")).unwrap()
    });
    step("a rename over a name", &|| {
        fs::rename(knowing.path("d/f2"), knowing.path("d/f3")).unwrap()
    });
    step("a rename in", &|| {
        fs::rename(knowing.path("other/incoming"), knowing.path("d/incoming")).unwrap()
    });
    step("a hard link", &|| {
        fs::hard_link(knowing.path("d/f4"), knowing.path("d/h4")).unwrap()
    });
    step("a symlink", &|| {
        std::os::unix::fs::symlink("f4", knowing.path("d/s4")).unwrap()
    });
    step("a mkdir", &|| {
        fs::create_dir(knowing.path("d/sub")).unwrap()
    });
    step("a mkdir below", &|| {
        fs::create_dir(knowing.path("d/sub/deeper")).unwrap()
    });
    step("a truncate", &|| {
        File::options()
            .write(true)
            .open(knowing.path("d/f5"))
            .and_then(|f| f.set_len(7))
            .unwrap()
    });
    step("a chmod", &|| {
        fs::set_permissions(knowing.path("d/g1"), fs::Permissions::from_mode(0o600)).unwrap()
    });
    step("an rmdir", &|| {
        fs::remove_dir(knowing.path("d/sub/deeper")).unwrap()
    });
    assert_eq!(
        listings(&cluster) - asked_before,
        steps.get(),
        "listing requests: only the mount without a lease asks"
    );
    // The kernel itself kept its listing through the changes of entries alone (an append, a
    // truncate, a chmod, a mkdir and rmdir below): eight changed the names in `d`.
    let answered = from_memory() - memory_before;
    assert!(answered >= 8.0, "{answered} listings answered from memory");

    // A rename in from a directory this mount never listed: what moved is not known here.
    fs::create_dir(asking.path("unknown")).unwrap();
    fs::write(asking.path("unknown/stranger"), b"who").unwrap();
    let before = listings(&cluster);
    step("a rename in from a directory not known", &|| {
        fs::rename(knowing.path("unknown/stranger"), knowing.path("d/stranger")).unwrap()
    });
    assert_eq!(listings(&cluster) - before, 2.0, "both mounts asked");

    // Another mount's change shows through the feed.
    fs::write(asking.path("d/theirs"), b"x").unwrap();
    shows("another mount's create", || {
        names_in(&knowing.path("d")).contains(&"theirs".to_string())
    });
    assert_eq!(shown_in(&knowing.path("d")), shown_in(&asking.path("d")));

    // A listing's answer holds every entry's attributes, a subdirectory's too: after a change
    // here, the next listing is answered from memory with them.
    fs::create_dir(asking.path("d/their_dir")).unwrap();
    shows("another mount's mkdir", || {
        names_in(&knowing.path("d")).contains(&"their_dir".to_string())
    });
    let before = listings(&cluster);
    fs::write(knowing.path("d/after"), b"x").unwrap();
    assert_eq!(shown_in(&knowing.path("d")), shown_in(&asking.path("d")));
    assert_eq!(
        listings(&cluster) - before,
        1.0,
        "only the mount without a lease asked"
    );
    // Until another mount changes that subdirectory: its new link count shows.
    fs::create_dir(asking.path("d/their_dir/inner")).unwrap();
    shows("another mount's mkdir in a subdirectory", || {
        shown_in(&knowing.path("d")) == shown_in(&asking.path("d"))
    });
}

/// A file unlinked while open here has no name left anywhere, while it stays readable, and
/// its last close changes nothing in the listing the kernel keeps of its directory.
#[test]
fn a_file_unlinked_while_open_leaves_no_name_and_the_kept_listing_alone() {
    let cluster = cluster_with_volume();
    let m = Mount::new(&cluster, "default", "m", "lease=600").unwrap();
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/f"), b"x").unwrap();
    let held = File::open(m.path("d/f")).unwrap();
    fs::remove_file(m.path("d/f")).unwrap();
    shows("the empty listing kept by the kernel", || {
        let before = listings(&cluster);
        names_in(&m.path("d")).is_empty() && listings(&cluster) == before
    });
    assert_eq!(read_at(&held, 4), b"x");
    drop(held);
    let before = listings(&cluster);
    assert!(names_in(&m.path("d")).is_empty());
    assert_eq!(
        listings(&cluster),
        before,
        "the last close dropped the listing"
    );
}

/// Lookup requests the metadata server has answered so far (all clients).
fn lookups(cluster: &dfs_tests::process::ProcessCluster) -> f64 {
    requests(cluster, "Lookup")
}

/// A mount that knows a directory's whole contents (it made the directory, or listed it)
/// answers a lookup of a name not there itself: a create, which the kernel precedes with a
/// lookup of the new name, costs one request, not two. Its own changes keep what it knows
/// right, and another mount's create shows through the feed.
#[test]
fn a_name_not_in_a_directory_known_whole_is_found_absent_without_a_round_trip() {
    let cluster = cluster_with_volume();
    let knowing = Mount::new(&cluster, "default", "knowing", "lease=600").unwrap();
    let asking = Mount::new(&cluster, "default", "asking", "lease=0").unwrap();
    // The feed answers for a mount from its start (its first call is made before it mounts).
    let mut probes = 0..;
    shows("a directory made here known empty", || {
        let name = format!("probe{}", probes.next().unwrap());
        let dir = knowing.path(&name);
        fs::create_dir(&dir).unwrap();
        let before = lookups(&cluster);
        let absent = fs::metadata(dir.join("nothing")).is_err();
        absent && lookups(&cluster) == before
    });
    let creates = |m: &Mount, dir: &str| {
        fs::create_dir(m.path(dir)).unwrap();
        let before = lookups(&cluster);
        for i in 0..20 {
            File::options()
                .write(true)
                .create_new(true)
                .open(m.path(&format!("{dir}/f{i}")))
                .unwrap();
        }
        lookups(&cluster) - before
    };
    assert_eq!(creates(&knowing, "made"), 0.0, "lookups for 20 creates");
    let asked = creates(&asking, "asked");
    assert!(
        asked >= 20.0,
        "{asked} lookups for 20 creates without a lease"
    );

    // Its own changes: what it made is found, what it removed or renamed away is not. (The
    // kernel keeps the names it was told of; those it dropped, it asks the mount for.)
    fs::remove_file(knowing.path("made/f3")).unwrap();
    fs::rename(knowing.path("made/f4"), knowing.path("made/g4")).unwrap();
    fs::create_dir(knowing.path("made/sub")).unwrap();
    fs::create_dir(knowing.path("made/gone")).unwrap();
    fs::remove_dir(knowing.path("made/gone")).unwrap();
    fs::hard_link(knowing.path("made/f5"), knowing.path("made/h5")).unwrap();
    std::os::unix::fs::symlink("f6", knowing.path("made/s6")).unwrap();
    for present in ["f0", "f19", "g4", "sub", "h5", "s6"] {
        let path = knowing.path(&format!("made/{present}"));
        assert!(fs::symlink_metadata(path).is_ok(), "{present}");
    }
    let before = lookups(&cluster);
    for absent in ["f3", "f4", "gone", "never"] {
        let path = knowing.path(&format!("made/{absent}"));
        assert!(fs::symlink_metadata(path).is_err(), "{absent}");
    }
    assert_eq!(lookups(&cluster), before, "lookups of names it removed");

    // A directory another mount filled, known once listed here.
    let listed: Vec<String> = names_in(&knowing.path("asked"));
    assert_eq!(listed.len(), 20);
    let before = lookups(&cluster);
    assert!(fs::metadata(knowing.path("asked/missing")).is_err());
    assert_eq!(lookups(&cluster), before, "a lookup in a listed directory");
    assert_eq!(fs::read(knowing.path("asked/f7")).unwrap(), b"");

    // Another mount's create of a name found absent here shows through the feed.
    assert!(fs::metadata(knowing.path("made/theirs")).is_err());
    fs::write(asking.path("made/theirs"), b"x").unwrap();
    shows("a create elsewhere in a known directory", || {
        fs::read(knowing.path("made/theirs")).is_ok_and(|b| b == b"x")
    });
}

/// Another mount's unlink of one name of a file, or a rename over it, changes the file's
/// link count: a mount that keeps the file's attributes for a long lease sees the new count
/// through another name at once, though no name it looked up changed.
#[test]
fn a_link_removed_elsewhere_shows_in_the_attributes_kept_here() {
    use std::os::unix::fs::MetadataExt;
    let cluster = cluster_with_volume();
    let watcher = Mount::new(&cluster, "default", "watcher", "lease=600").unwrap();
    let other = Mount::new(&cluster, "default", "other", "").unwrap();
    fs::write(other.path("a"), b"x").unwrap();
    fs::hard_link(other.path("a"), other.path("b")).unwrap();
    fs::hard_link(other.path("a"), other.path("c")).unwrap();
    let links = || fs::metadata(watcher.path("b")).unwrap().nlink();
    shows("the attributes kept by the watcher's kernel", || {
        let before = lookups_and_getattrs(&cluster);
        links() == 3 && lookups_and_getattrs(&cluster) == before
    });
    fs::remove_file(other.path("a")).unwrap();
    shows("an unlink of another name", || links() == 2);
    fs::write(other.path("x"), b"y").unwrap();
    fs::rename(other.path("x"), other.path("c")).unwrap();
    shows("a rename over another name", || links() == 1);
}

/// `df` asks the mount for the volume's usage; within the attribute timeout the mount answers
/// again what the metadata server said (a mount with `attr_timeout=0` asks every time).
#[test]
fn usage_is_asked_of_the_metadata_server_once_per_attribute_timeout() {
    use crate::observe::{scrape, value};
    let cluster = cluster_with_volume();
    let keeping = Mount::new(&cluster, "default", "keeping", "attr_timeout=600").unwrap();
    let asking = Mount::new(&cluster, "default", "asking", "attr_timeout=0").unwrap();
    let asked = |m: &Mount| {
        let count = || {
            value(
                &scrape(cluster.meta_http),
                "dfs_meta_requests_total{op=\"StatFs\"}",
            )
        };
        let before = count();
        for _ in 0..3 {
            let df = std::process::Command::new("df")
                .arg(&m.dir)
                .output()
                .unwrap();
            assert!(df.status.success(), "{df:?}");
        }
        count() - before
    };
    assert!(asked(&keeping) <= 1.0);
    assert_eq!(asked(&asking), 3.0);
}

/// A mount whose change feed reports missed changes (here: a restarted metadata server
/// starts a new feed) drops from its kernel every name and attribute it granted for long,
/// and the pages of files open here; otherwise they would stay stale for the rest of the
/// lease (the pages until the file is opened again).
#[test]
fn a_mount_that_missed_changes_drops_the_names_and_attributes_it_granted() {
    use crate::observe::{mount_fault, mount_with_faults};
    let mut cluster = cluster_with_volume();
    let (watcher, http) =
        mount_with_faults(&cluster, "default", "watcher", "attr_timeout=0,lease=600");
    let writer = Mount::new(&cluster, "default", "writer", "").unwrap();
    let control = |verb: &str| mount_fault(http, "mount.watch_changes", verb);
    let mode = |m: &Mount| fs::metadata(m.path("f")).unwrap().permissions().mode() & 0o777;
    fs::write(writer.path("f"), b"x").unwrap();
    fs::set_permissions(writer.path("f"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(writer.path("data"), [b'a'; 8192]).unwrap();
    // No late news of the writes above may drop what the watcher's kernel is granted next.
    hold_before_next_poll(&cluster, http, &writer);
    // A file the watcher keeps open, its pages in the watcher's kernel.
    let open = fs::File::open(watcher.path("data")).unwrap();
    let contents = || {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 8192];
        open.read_exact_at(&mut buf, 0).unwrap();
        buf
    };
    assert_eq!(contents(), [b'a'; 8192]);
    let _pinned = crate::mount::PinnedPages::new(&open, 8192);
    shows("the watcher's kernel keeps f", || {
        mode(&watcher) == 0o644 && {
            let before = lookups_and_getattrs(&cluster);
            mode(&watcher);
            lookups_and_getattrs(&cluster) == before
        }
    });
    let root = watcher.path("");
    let has = |name: &str| names_in(&root).iter().any(|n| n == name);
    shows("the watcher's kernel keeps the listing", || {
        let before = listings(&cluster);
        has("f") && !has("g") && listings(&cluster) == before
    });
    // A new feed, and a chmod and a create the watcher does not hear of.
    cluster.kill_meta();
    cluster.start_meta();
    fs::set_permissions(writer.path("f"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(writer.path("g"), b"x").unwrap();
    fs::write(writer.path("data"), [b'b'; 8192]).unwrap();
    assert_eq!(
        mode(&watcher),
        0o644,
        "the watcher's kernel keeps the old mode"
    );
    assert_eq!(
        contents(),
        [b'a'; 8192],
        "the watcher's kernel keeps the old pages"
    );
    // (Whether the listing still lacks g here depends on whether the kernel asks for the
    // directory's attributes meanwhile: a new mtime makes it list afresh.)
    control("disarm");
    shows("the chmod after the missed changes", || {
        mode(&watcher) == 0o600
    });
    shows("the create after the missed changes", || {
        has("g") && fs::metadata(watcher.path("g")).is_ok()
    });
    shows(
        "the rewrite of a file open here after the missed changes",
        || contents() == [b'b'; 8192],
    );
}

/// An unlink costs the unlink alone, no lookup, whether or not files are open here.
#[test]
fn an_unlink_while_no_file_is_open_costs_no_lookup() {
    use crate::observe::{scrape, value};
    let cluster = cluster_with_volume();
    let m = Mount::new(&cluster, "default", "m", "").unwrap();
    let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    for name in &names {
        fs::write(m.path(name), b"x").unwrap();
    }
    let lookups = || {
        value(
            &scrape(cluster.meta_http),
            "dfs_meta_requests_total{op=\"Lookup\"}",
        )
    };
    // The kernel keeps the names once the feed is followed, so it asks no lookup either.
    shows("names kept by the kernel", || {
        let before = lookups();
        for name in &names {
            fs::metadata(m.path(name)).unwrap();
        }
        lookups() == before
    });
    let before = lookups();
    for name in &names[..10] {
        fs::remove_file(m.path(name)).unwrap();
    }
    let asked = lookups() - before;
    assert!(
        asked < 3.0,
        "{asked} lookups for 10 unlinks with no file open"
    );
    // With a file open, its unlink is no different (the file stays readable).
    let held = File::open(m.path("f10")).unwrap();
    fs::remove_file(m.path("f10")).unwrap();
    assert_eq!(read_at(&held, 4), b"x");
    assert!(fs::metadata(m.path("f10")).is_err());
    fs::remove_file(m.path("f11")).unwrap();
    drop(held);
    assert!(fs::metadata(m.path("f11")).is_err());
}

/// Requests a mount makes to open a file: `OpenAttr` (or `GetAttr`, asked of an older server).
pub(crate) fn opens(cluster: &dfs_tests::process::ProcessCluster) -> f64 {
    requests(cluster, "OpenAttr") + requests(cluster, "GetAttr")
}

/// Waits until `holder` reopens `name` without asking the metadata server: it holds an open
/// delegation of the file (granted once its change feed has answered a call).
pub(crate) fn wait_for_delegation(
    cluster: &dfs_tests::process::ProcessCluster,
    holder: &Mount,
    name: &str,
) {
    shows("a reopen answered by the mount itself", || {
        fs::read(holder.path(name)).unwrap();
        let before = opens(cluster);
        fs::read(holder.path(name)).unwrap();
        opens(cluster) == before
    });
}

/// Open delegations: a mount reopens a file it opened without a round trip, and still sees
/// every change another mount closed before the open (close-to-open), not some time after:
/// the writer's close is answered only once the holder has taken the change from its feed.
#[test]
fn a_reopen_under_an_open_delegation_costs_no_round_trip_and_sees_every_change_closed_before() {
    let cluster = cluster_with_volume();
    let holder = Mount::new(&cluster, "default", "holder", "").unwrap();
    let writer = Mount::new(&cluster, "default", "writer", "").unwrap();
    fs::write(writer.path("f"), b"one").unwrap();
    wait_for_delegation(&cluster, &holder, "f");
    for round in 0..20u32 {
        let text = format!("round {round}{}", ".".repeat(round as usize));
        fs::write(writer.path("f"), &text).unwrap();
        // At once: no waiting for the change to show.
        let seen = fs::read_to_string(holder.path("f")).unwrap();
        assert_eq!(seen, text, "the holder's open after the writer's close");
    }
}

/// A mount that stops following the feed cannot be told of a change: the change waits until
/// its delegation has lapsed, and its next open asks the metadata server again.
#[test]
fn a_change_to_a_file_delegated_to_a_mount_not_listening_waits_for_the_delegation_to_lapse() {
    use crate::observe::{mount_fault, mount_with_faults};
    let cluster = cluster_with_volume();
    let (holder, http) = mount_with_faults(&cluster, "default", "holder", "");
    let writer = Mount::new(&cluster, "default", "writer", "").unwrap();
    fs::write(writer.path("f"), b"one").unwrap();
    wait_for_delegation(&cluster, &holder, "f");
    hold_before_next_poll(&cluster, http, &writer);
    fs::write(writer.path("f"), b"two").unwrap();
    assert_eq!(
        fs::read(holder.path("f")).unwrap(),
        b"two",
        "the open after the change, its feed held"
    );
    assert_eq!(delegation_lapses(&cluster), 1.0, "the change waited");
    mount_fault(http, "mount.watch_changes", "disarm");
}

/// A restarted metadata server does not know the delegations it granted before: changes to
/// files wait until those have lapsed at their mounts.
#[test]
fn a_restarted_metadata_server_waits_out_the_delegations_granted_before() {
    let mut cluster = cluster_with_volume();
    let holder = Mount::new(&cluster, "default", "holder", "").unwrap();
    let writer = Mount::new(&cluster, "default", "writer", "").unwrap();
    fs::write(writer.path("f"), b"one").unwrap();
    wait_for_delegation(&cluster, &holder, "f");
    cluster.kill_meta();
    cluster.start_meta();
    fs::write(writer.path("f"), b"two").unwrap();
    assert_eq!(
        fs::read(holder.path("f")).unwrap(),
        b"two",
        "the open after the change"
    );
}

/// A mount that ends cleanly tells the metadata server so: a change to a file it held a
/// delegation of is answered without waiting for the delegation to lapse.
#[test]
fn a_change_to_a_file_delegated_to_an_unmounted_mount_does_not_wait_for_the_lapse() {
    let cluster = cluster_with_volume();
    let holder = Mount::new(&cluster, "default", "holder", "").unwrap();
    let writer = Mount::new(&cluster, "default", "writer", "").unwrap();
    fs::write(writer.path("f"), b"one").unwrap();
    wait_for_delegation(&cluster, &holder, "f");
    drop(holder);
    shows("the unmounted holder's goodbye", || {
        requests(&cluster, "StopWatching") >= 1.0
    });
    fs::write(writer.path("f"), b"two").unwrap();
    assert_eq!(
        delegation_lapses(&cluster),
        0.0,
        "the change waited for the holder's lease"
    );
    assert_eq!(fs::read(writer.path("f")).unwrap(), b"two");
}

/// Changes the metadata server answered only once a holder's delegation lapsed.
fn delegation_lapses(cluster: &dfs_tests::process::ProcessCluster) -> f64 {
    crate::observe::required_value(cluster.meta_http, "dfs_meta_delegation_lapses_total")
}

/// A file another mount shortened is opened and read on a mount whose change feed lags (held
/// at a fault point): the open shows the new file, and the feed's late news of the change
/// leaves the kernel's state of the file alone. Dropping it then could cut into the reads
/// begun since: the kernel learns the new end of file from the short read there, and ignores
/// it if the file's attributes were dropped meanwhile, keeping zeros past the end as the
/// file's bytes (seen once in a full run of the suite, with the drop made).
#[test]
fn late_news_of_a_change_an_open_already_showed_leaves_the_kernel_alone() {
    use crate::observe::{mount_fault, mount_with_faults, scrape, value};
    let cluster = cluster_with_volume();
    let (lagging, http) = mount_with_faults(&cluster, "default", "lagging", "");
    let writer = Mount::new(&cluster, "default", "writer", "").unwrap();
    let skipped = || value(&scrape(http), "dfs_fuse_kernel_drops_skipped_total");
    let first = dfs_tests::random_bytes(9 * (1 << 20) + 12_345, 1);
    fs::write(writer.path("f"), &first).unwrap();
    hold_before_next_poll(&cluster, http, &writer);
    let shorter = dfs_tests::random_bytes(5 * (1 << 20) + 77, 2);
    fs::write(writer.path("f"), &shorter).unwrap();
    let before = skipped();
    assert!(
        fs::read(lagging.path("f")).unwrap() == shorter,
        "the new file"
    );

    mount_fault(http, "mount.watch_changes", "disarm");
    shows("the late news of the rewrite skipped", || {
        skipped() > before
    });
    assert!(
        fs::read(lagging.path("f")).unwrap() == shorter,
        "nothing past the end"
    );
}
