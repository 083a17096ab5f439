//! Two mounts of one volume as two clients: locks that exclude across them, appends that
//! never overwrite each other, and a mount that outlives a metadata-server restart.

use crate::mount::cluster_with_volume;
use dfs_tests::process::Mount;
use dfs_tests::random_bytes;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn flock(f: &File, op: i32) -> std::io::Result<()> {
    // SAFETY: flock on an open descriptor owned by `f`.
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// fcntl F_SETLK / F_SETLKW / F_GETLK on `len` bytes at `start`; returns the (possibly
/// rewritten, for F_GETLK) lock description.
fn fcntl_lock(f: &File, cmd: i32, typ: i32, start: i64, len: i64) -> std::io::Result<libc::flock> {
    // SAFETY: a zeroed `struct flock` is valid; every field used is set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: fcntl with a pointer to a live, initialised `struct flock`.
    if unsafe { libc::fcntl(f.as_raw_fd(), cmd, &mut fl) } == 0 {
        Ok(fl)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn would_block(r: std::io::Result<impl Sized>) -> bool {
    matches!(r, Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK))
}

/// Waits until `done` is set, failing the test after `limit`.
fn wait_flag(done: &AtomicBool, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    while !done.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn locks_exclude_across_mounts() {
    let cluster = cluster_with_volume();
    let a = Mount::new(&cluster, "default", "a", "").unwrap();
    let b = Mount::new(&cluster, "default", "b", "").unwrap();
    fs::write(a.path("locked"), b"lock me").unwrap();
    let fa = OpenOptions::new()
        .read(true)
        .write(true)
        .open(a.path("locked"))
        .unwrap();
    let fb = Arc::new(
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(b.path("locked"))
            .unwrap(),
    );

    // flock: exclusive on A keeps B out, shared or exclusive.
    flock(&fa, libc::LOCK_EX | libc::LOCK_NB).unwrap();
    assert!(would_block(flock(&fb, libc::LOCK_EX | libc::LOCK_NB)));
    assert!(would_block(flock(&fb, libc::LOCK_SH | libc::LOCK_NB)));
    // A blocking flock on B waits until A unlocks, then gets the lock.
    let got = Arc::new(AtomicBool::new(false));
    let waiter = {
        let (fb, got) = (fb.clone(), got.clone());
        std::thread::spawn(move || {
            flock(&fb, libc::LOCK_EX).unwrap();
            got.store(true, Ordering::SeqCst);
        })
    };
    // Give a broken implementation the chance to grant the lock early.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !got.load(Ordering::SeqCst),
        "B got the lock while A held it"
    );
    flock(&fa, libc::LOCK_UN).unwrap();
    wait_flag(
        &got,
        Duration::from_secs(20),
        "B never got the lock A released",
    );
    waiter.join().unwrap();
    assert!(would_block(flock(&fa, libc::LOCK_SH | libc::LOCK_NB)));
    flock(&fb, libc::LOCK_UN).unwrap();
    // Shared locks share.
    flock(&fa, libc::LOCK_SH | libc::LOCK_NB).unwrap();
    flock(&fb, libc::LOCK_SH | libc::LOCK_NB).unwrap();
    flock(&fa, libc::LOCK_UN).unwrap();
    flock(&fb, libc::LOCK_UN).unwrap();

    // fcntl byte ranges: A write-locks bytes 0..100; B conflicts inside, not outside.
    fcntl_lock(&fa, libc::F_SETLK, libc::F_WRLCK, 0, 100).unwrap();
    assert!(matches!(
        fcntl_lock(&fb, libc::F_SETLK, libc::F_RDLCK, 50, 10),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES))
    ));
    fcntl_lock(&fb, libc::F_SETLK, libc::F_WRLCK, 100, 100).unwrap();
    let seen = fcntl_lock(&fb, libc::F_GETLK, libc::F_RDLCK, 0, 10).unwrap();
    assert_eq!(
        (seen.l_type as i32, seen.l_start, seen.l_len),
        (libc::F_WRLCK, 0, 100),
        "F_GETLK reports A's lock"
    );
    // Closing A's descriptor drops its locks (POSIX), and B may lock the range.
    drop(fa);
    fcntl_lock(&fb, libc::F_SETLK, libc::F_WRLCK, 0, 100).unwrap();
    let seen = fcntl_lock(&fb, libc::F_GETLK, libc::F_WRLCK, 0, 0).unwrap();
    assert_eq!(
        seen.l_type as i32,
        libc::F_UNLCK,
        "B's own locks never conflict"
    );
}

#[test]
fn appends_from_two_mounts_never_overwrite_each_other() {
    let cluster = cluster_with_volume();
    let a = Mount::new(&cluster, "default", "a", "").unwrap();
    let b = Mount::new(&cluster, "default", "b", "").unwrap();
    fs::write(a.path("log"), b"").unwrap();
    const RECORDS: usize = 40;
    const LEN: usize = 64;
    let writers: Vec<_> = [("A", a.path("log")), ("B", b.path("log"))]
        .into_iter()
        .map(|(who, path)| {
            std::thread::spawn(move || {
                for i in 0..RECORDS {
                    let mut record = format!("{who}-{i:04}-").into_bytes();
                    record.resize(LEN - 1, b'.');
                    record.push(b'\n');
                    // Each record: open for append, write, close (a commit per record).
                    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
                    f.write_all(&record).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let mut text = String::new();
    File::open(a.path("log"))
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text.len(), 2 * RECORDS * LEN, "appends were lost");
    let mut lines: Vec<&str> = text.lines().collect();
    assert!(lines.iter().all(|l| l.len() == LEN - 1), "a record is torn");
    lines.sort();
    let mut expected: Vec<String> = ["A", "B"]
        .iter()
        .flat_map(|who| (0..RECORDS).map(move |i| format!("{who}-{i:04}-")))
        .collect();
    expected.sort();
    for (line, prefix) in lines.iter().zip(&expected) {
        assert!(line.starts_with(prefix.as_str()), "{line} is not {prefix}");
    }
    // A plain (not O_APPEND) writer in the same file still writes where it seeks.
    let mut f = OpenOptions::new().write(true).open(b.path("log")).unwrap();
    f.write_all(b"X").unwrap();
    drop(f);
    let back = fs::read(a.path("log")).unwrap();
    assert_eq!((back.len(), back[0]), (2 * RECORDS * LEN, b'X'));
}

#[test]
fn a_mount_rides_out_a_metadata_server_restart() {
    let mut cluster = cluster_with_volume();
    let waits = Mount::new(&cluster, "default", "waits", "retry=120").unwrap();
    let fails = Mount::new(&cluster, "default", "fails", "soft").unwrap();
    let before = random_bytes(5 << 20, 1);
    fs::write(waits.path("before"), &before).unwrap();

    cluster.kill_meta();
    // The waiting mount's work blocks until the metadata server is back, then completes.
    let during = random_bytes(3 << 20, 2);
    let writer = {
        let (dir, data) = (waits.dir.clone(), during.clone());
        std::thread::spawn(move || {
            fs::create_dir(dir.join("made-during"))?;
            // fsync reports what close would (and `fs::write` would drop): the commit result.
            let mut f = File::create(dir.join("made-during/file"))?;
            f.write_all(&data)?;
            f.sync_all()
        })
    };
    // The soft mount fails with EIO instead of waiting.
    let err = fs::metadata(fails.path("never-seen")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        !writer.is_finished(),
        "the write finished without a metadata server"
    );

    cluster.start_meta();
    writer
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("write across the restart failed: {e}\n{}", cluster.logs()));
    let back = fs::read(waits.path("made-during/file")).unwrap();
    assert!(
        back == during,
        "read back {} of {} bytes, first difference at {:?}\n{}",
        back.len(),
        during.len(),
        back.iter().zip(&during).position(|(x, y)| x != y),
        cluster.logs()
    );
    assert!(fs::read(waits.path("before")).unwrap() == before);
    // Both mounts work again, and see the same tree.
    assert!(fs::read(fails.path("made-during/file")).unwrap() == during);
    fs::write(fails.path("after"), b"after").unwrap();
    assert_eq!(fs::read(waits.path("after")).unwrap(), b"after");
}

#[test]
fn writes_to_a_file_held_open_are_written_back() {
    let cluster = cluster_with_volume();
    let a = Mount::new(&cluster, "default", "a", "writeback=0.5").unwrap();
    let b = Mount::new(&cluster, "default", "b", "attr_timeout=0").unwrap();
    let data = random_bytes((1 << 20) + 10, 21);
    let mut f = File::create(a.path("held-open")).unwrap();
    f.write_all(&data).unwrap();
    // No flush, fsync or close: the write-back timer commits it, and the other client sees it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while fs::read(b.path("held-open")).map_or(true, |got| got != data) {
        assert!(
            Instant::now() < deadline,
            "the held-open file was never written back\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    f.sync_all().unwrap();
}

/// The kernel's view of where `pid` sleeps (`/proc/PID/wchan`).
fn wchan(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default()
}

#[test]
fn blocking_locks_end_in_edeadlk_or_a_signal_never_a_hang() {
    let cluster = cluster_with_volume();
    let m = Mount::new(&cluster, "default", "mnt", "").unwrap();
    fs::write(m.path("shared"), b"0123456789").unwrap();

    // Parent and child whose blocking locks cross: one is told EDEADLK, both finish.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/lock_cycle.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .arg(m.path("shared"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("parent and child with crossing locks hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "{out}");
    let mut results: Vec<&str> = out
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap_or(""))
        .collect();
    results.sort_unstable();
    assert_eq!(results, ["EDEADLK", "granted"], "{out}");

    // A process waiting for a lock another holds ends at once on SIGKILL.
    let holder = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("shared"))
        .unwrap();
    fcntl_lock(&holder, libc::F_SETLK, libc::F_WRLCK, 0, 0).unwrap();
    let mut waiter = std::process::Command::new("python3")
        .args([
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.lockf(fd, fcntl.LOCK_EX)",
        ])
        .arg(m.path("shared"))
        .spawn()
        .expect("python3 runs");
    // Blocked inside the FUSE request (the kernel's wait for the mount's answer).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !wchan(waiter.id()).contains("request_wait_answer") {
        assert!(
            Instant::now() < deadline,
            "the waiter never blocked in the lock request (wchan {:?})",
            wchan(waiter.id())
        );
        assert!(
            waiter.try_wait().unwrap().is_none(),
            "the waiter did not wait"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let killed = Instant::now();
    waiter.kill().unwrap();
    let limit = killed + Duration::from_secs(1);
    while waiter.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < limit,
            "a process waiting for a lock outlived SIGKILL by a second"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The lock still works: released by its holder, taken by another descriptor's owner.
    fcntl_lock(&holder, libc::F_SETLK, libc::F_UNLCK, 0, 0).unwrap();
    let other = std::process::Command::new("python3")
        .args([
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)",
        ])
        .arg(m.path("shared"))
        .status()
        .unwrap();
    assert!(
        other.success(),
        "the lock was not free after the waiter died"
    );
}

/// Sequential reads through the kernel's read-ahead window (4 MiB, set by the mount) return
/// exactly the file: nothing past its end, and after another mount rewrites it (shorter, then
/// longer) and the file is opened again, the new bytes, never the cached ones of the old layout.
#[test]
fn read_ahead_stops_at_end_of_file_and_never_serves_a_stale_layout() {
    let cluster = cluster_with_volume();
    let a = Mount::new(&cluster, "default", "a", "").unwrap();
    let b = Mount::new(&cluster, "default", "b", "").unwrap();
    assert_eq!(
        dfs_client::fuse::readahead::get(&a.path("")).unwrap(),
        dfs_client::fuse::options::MAX_READAHEAD_KIB,
        "the mount widened the kernel's read-ahead window"
    );
    let read_all = |path: &std::path::Path| {
        let mut out = Vec::new();
        let mut f = File::open(path).unwrap();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    };
    // Not a multiple of the block, the page or the read size.
    let first = random_bytes(9 * (1 << 20) + 12_345, 1);
    fs::write(a.path("f"), &first).unwrap();
    assert!(read_all(&b.path("f")) == first, "first read through b");
    // b has the whole file cached; a rewrites it shorter.
    let shorter = random_bytes(5 * (1 << 20) + 77, 2);
    fs::write(a.path("f"), &shorter).unwrap();
    let got = read_all(&b.path("f"));
    assert_eq!(got.len(), shorter.len(), "nothing past the new end of file");
    assert!(got == shorter, "the rewritten bytes, not the cached ones");
    // And longer again, rewritten in place from another mount.
    let longer = random_bytes(11 * (1 << 20) + 3, 3);
    fs::write(a.path("f"), &longer).unwrap();
    assert!(
        read_all(&b.path("f")) == longer,
        "the rewrite that grew the file"
    );
}

/// A file this mount has just written is read back from the kernel's pages: its own commits
/// are not a change that drops them (no read reaches the mount), while a rewrite by another
/// mount is, at the next open.
#[test]
fn a_file_written_here_is_read_back_from_the_page_cache() {
    use crate::observe::{scrape, value};
    let cluster = cluster_with_volume();
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], dfs_tests::process::free_tcp_port()));
    let a = Mount::new(&cluster, "default", "a", &format!("metrics={http}")).unwrap();
    let b = Mount::new(&cluster, "default", "b", "").unwrap();
    let reads = || value(&scrape(http), "dfs_fuse_seconds_count{op=\"read\"}");
    // Whole pages: the kernel writes through, and keeps only pages written whole.
    let first = random_bytes(64 * 4096, 1);
    fs::write(a.path("f"), &first).unwrap();
    let before = reads();
    assert!(fs::read(a.path("f")).unwrap() == first, "read back here");
    // Fresh attributes (the mtime of the commit) do not drop them either.
    assert_eq!(fs::metadata(a.path("f")).unwrap().len(), first.len() as u64);
    assert!(
        fs::read(a.path("f")).unwrap() == first,
        "read back after a stat"
    );
    // Nor does a rewrite in place from here.
    let mut second = first.clone();
    second[4096..8192].fill(7);
    fs::OpenOptions::new()
        .write(true)
        .open(a.path("f"))
        .and_then(|f| {
            use std::os::unix::fs::FileExt;
            f.write_all_at(&second[4096..8192], 4096)
        })
        .unwrap();
    assert!(
        fs::read(a.path("f")).unwrap() == second,
        "the rewrite read back"
    );
    assert_eq!(reads(), before, "reads of what this mount wrote reached it");
    // Another mount's rewrite: the pages here go.
    let third = random_bytes(64 * 4096, 3);
    fs::write(b.path("f"), &third).unwrap();
    assert!(
        fs::read(a.path("f")).unwrap() == third,
        "the other mount's rewrite"
    );
    // A read handed to the mount's runtime is counted once its reply is sent: the count may
    // trail the read's return by a moment.
    crate::heal::wait_until(
        &cluster,
        Duration::from_secs(10),
        "the other mount's rewrite was not read from the cluster",
        || reads() > before,
    );
}

pub(crate) fn get_xattr(path: &std::path::Path, name: &str) -> std::io::Result<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the length passed.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

pub(crate) fn set_xattr(path: &std::path::Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C strings and a value of the length passed.
    let r = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A mount remembers for a moment that a file has no such attribute (writes ask the kernel's
/// `security.capability` question each time), but its own setxattr shows at once and another
/// mount's within the attribute timeout.
#[test]
fn absent_xattrs_are_remembered_only_briefly() {
    let cluster = cluster_with_volume();
    let a = Mount::new(&cluster, "default", "a", "").unwrap();
    let b = Mount::new(&cluster, "default", "b", "").unwrap();
    fs::write(a.path("f"), b"data").unwrap();
    let no_data = |r: std::io::Result<Vec<u8>>| matches!(r, Err(e) if e.raw_os_error() == Some(libc::ENODATA));
    assert!(no_data(get_xattr(&a.path("f"), "user.tag")));
    assert!(no_data(get_xattr(&b.path("f"), "user.tag")));
    // This mount's own change: visible at once.
    set_xattr(&a.path("f"), "user.tag", b"one").unwrap();
    assert_eq!(get_xattr(&a.path("f"), "user.tag").unwrap(), b"one");
    // The other mount's: within the attribute timeout (1 s), waited for, not slept.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match get_xattr(&b.path("f"), "user.tag") {
            Ok(v) => {
                assert_eq!(v, b"one");
                break;
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENODATA));
                assert!(Instant::now() < deadline, "b never saw a's attribute");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Pages of `file` in the kernel's page cache, of its first `len` bytes.
fn cached_pages(file: &File, len: usize) -> usize {
    crate::mount::Mapping::new(file, len).cached_pages()
}

/// A file this mount wrote keeps its pages in the kernel's cache at the next open (only this
/// mount changed it), and loses them at the open after another mount changed it.
#[test]
fn own_writes_keep_the_page_cache_and_another_mounts_drop_it() {
    let cluster = cluster_with_volume();
    let a = Mount::new(&cluster, "default", "a", "").unwrap();
    let b = Mount::new(&cluster, "default", "b", "").unwrap();
    let len = 2 << 20;
    let mine = random_bytes(len, 5);
    {
        let mut f = File::create(a.path("f")).unwrap();
        f.write_all(&mine).unwrap();
        f.write_all(&mine[..4096]).unwrap(); // a second commit-worthy write
    }
    let mine = [&mine[..], &mine[..4096]].concat();
    let f = File::open(a.path("f")).unwrap();
    let kept = cached_pages(&f, mine.len());
    assert!(
        kept * 10 >= mine.len() / 4096 * 9,
        "the pages this mount wrote stay cached: {kept} of {}",
        mine.len() / 4096
    );
    drop(f);
    // Another mount rewrites the file in place (same size, so only the contents differ).
    let theirs = random_bytes(mine.len(), 6);
    {
        let mut f = OpenOptions::new().write(true).open(b.path("f")).unwrap();
        f.write_all(&theirs).unwrap();
    }
    let mut f = File::open(a.path("f")).unwrap();
    assert_eq!(
        cached_pages(&f, theirs.len()),
        0,
        "another mount's change drops them"
    );
    let mut got = Vec::new();
    f.read_to_end(&mut got).unwrap();
    assert!(
        got == theirs,
        "and the next reads see the other mount's bytes"
    );
}

/// A truncate made by another mount reaches the descriptors held open here: a write through
/// one of them afterwards (at the start of the file) leaves the file at the truncated size,
/// as it shows here and at the other mount, and reads through it find only what is left.
/// Before, the descriptor kept the old size, which the write brought back to this mount
/// until its flush: 99,990 bytes read that were no longer there. Once with the truncate
/// seen here (a stat) before the write, once with the write first.
#[test]
fn a_truncate_by_another_mount_reaches_the_descriptors_held_open_here() {
    use std::os::unix::fs::FileExt;
    let cluster = cluster_with_volume();
    let a = Mount::new(&cluster, "default", "a", "").unwrap();
    let b = Mount::new(&cluster, "default", "b", "").unwrap();
    let mut want = random_bytes(100_000, 7);
    fs::write(a.path("f"), &want).unwrap();
    let held = OpenOptions::new()
        .read(true)
        .write(true)
        .open(a.path("f"))
        .unwrap();
    let truncate_on_b = |size: u64| {
        let f = OpenOptions::new().write(true).open(b.path("f")).unwrap();
        f.set_len(size).unwrap();
    };
    // Within the time the change feed takes to bring a change to another mount.
    let wait_for_size = |size: u64, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = held.metadata().unwrap().len();
            if seen == size {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: size {seen}, not {size}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let check = |want: &[u8], what: &str| {
        let mut got = vec![0u8; 200_000];
        let n = held.read_at(&mut got, 0).unwrap();
        assert!(
            &got[..n] == want,
            "{what}: read {n} bytes, not {}",
            want.len()
        );
        assert_eq!(fs::read(b.path("f")).unwrap(), want, "{what}: on mount b");
    };

    truncate_on_b(10);
    wait_for_size(10, "the truncate, seen on mount a");
    held.write_all_at(b"hello", 0).unwrap();
    want.truncate(10);
    want[..5].copy_from_slice(b"hello");
    assert_eq!(held.metadata().unwrap().len(), 10, "after the write");
    held.sync_all().unwrap();
    check(&want, "a write after a truncate seen");

    truncate_on_b(7);
    held.write_all_at(b"xy", 0).unwrap();
    want.truncate(7);
    want[..2].copy_from_slice(b"xy");
    wait_for_size(7, "a write after a truncate not yet seen");
    held.sync_all().unwrap();
    check(&want, "a write after a truncate not yet seen");
}
