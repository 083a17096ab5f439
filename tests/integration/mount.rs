//! The FUSE mount (`dfs-mount`) against real servers: everyday file operations through the
//! kernel, two mounts of one volume, and the mount's failure messages.

use dfs_tests::process::{Mount, ProcessCluster};
use dfs_tests::random_bytes;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::{Duration, Instant};

/// Gives the kernel `advice` about the whole of `file` (`posix_fadvise`). With
/// `POSIX_FADV_DONTNEED` it drops the file's clean cached pages, so the next reads reach the
/// mount: the kernel keeps the pages a mount wrote.
pub(crate) fn fadvise(file: &fs::File, advice: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: advice about a descriptor the caller holds open; no memory is passed.
    match unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, advice) } {
        0 => Ok(()),
        code => Err(std::io::Error::from_raw_os_error(code)),
    }
}

/// A read-only shared mapping of a file's first `len` bytes, unmapped when dropped. It faults
/// nothing in by itself.
pub(crate) struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    pub(crate) fn new(file: &fs::File, len: usize) -> Mapping {
        use std::os::fd::AsRawFd;
        // SAFETY: a read-only shared mapping of a descriptor the caller holds open; the result
        // is checked, and unmapped once, on drop.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(
            addr,
            libc::MAP_FAILED,
            "{}",
            std::io::Error::last_os_error()
        );
        Mapping { addr, len }
    }

    /// Pages of the mapping in the kernel's page cache (`mincore`).
    pub(crate) fn cached_pages(&self) -> usize {
        let mut vec = vec![0u8; self.len.div_ceil(4096)];
        // SAFETY: mincore writes one byte per page of the mapping into a vector of that length.
        let r = unsafe { libc::mincore(self.addr, self.len, vec.as_mut_ptr()) };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        vec.iter().filter(|&&b| b & 1 != 0).count()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped (and so unlocked) once.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// The first `len` bytes of a file held in the kernel's page cache: mapped and locked
/// (`mlock`), so that they stay until the mount drops them (`FUSE_NOTIFY_INVAL_INODE` unmaps
/// them first). A test that shows the kernel serving old pages needs this: the memory
/// manager of a machine may evict page-cache pages it finds cold at any moment (these test
/// machines do, within seconds), and the next read would then reach the mount. Unlocked and
/// unmapped when dropped.
pub(crate) struct PinnedPages {
    _mapping: Mapping,
}

impl PinnedPages {
    pub(crate) fn new(file: &fs::File, len: usize) -> PinnedPages {
        let mapping = Mapping::new(file, len);
        // SAFETY: locks the pages of a mapping that lives as long as the result.
        let locked = unsafe { libc::mlock(mapping.addr, len) };
        assert_eq!(locked, 0, "{}", std::io::Error::last_os_error());
        PinnedPages { _mapping: mapping }
    }
}

pub(crate) fn cluster_with_volume() -> ProcessCluster {
    cluster_with_volume_on(6)
}

/// `chunk_servers` servers and a 4+2 volume named `default`.
pub(crate) fn cluster_with_volume_on(chunk_servers: usize) -> ProcessCluster {
    with_default_volume(ProcessCluster::start(chunk_servers))
}

/// `cluster`, once it has a 4+2 volume named `default`.
pub(crate) fn with_default_volume(cluster: ProcessCluster) -> ProcessCluster {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cluster
            .cli()
            .args(["volume", "create", "default", "--ec", "4+2"])
            .output()
            .unwrap();
        if out.status.success() {
            return cluster;
        }
        assert!(
            Instant::now() < deadline,
            "volume create failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn everyday_file_operations_through_the_kernel() {
    let cluster = cluster_with_volume();
    let m = Mount::new(&cluster, "default", "mnt", "")
        .unwrap_or_else(|e| panic!("mount failed: {e}\n{}", cluster.logs()));

    // Files of several sizes round-trip through write/close/open/read.
    for (i, size) in [0usize, 1, 4095, 4 << 20, (9 << 20) + 7]
        .into_iter()
        .enumerate()
    {
        let data = random_bytes(size, i as u64);
        let p = m.path(&format!("f{i}"));
        fs::write(&p, &data).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().len(), size as u64);
        assert!(fs::read(&p).unwrap() == data, "{size}-byte file differs");
    }
    // Overwrite in the middle, append, truncate.
    let p = m.path("edit");
    fs::write(&p, b"0123456789").unwrap();
    let mut f = fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.seek(SeekFrom::Start(3)).unwrap();
    f.write_all(b"abc").unwrap();
    drop(f);
    let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"XYZ").unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"012abc6789XYZ");
    fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(5)
        .unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"012ab");
    // Read your own writes before close, through the same descriptor.
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("rw"))
        .unwrap();
    f.write_all(b"written").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut back = String::new();
    f.read_to_string(&mut back).unwrap();
    assert_eq!(back, "written");
    f.sync_all().unwrap();
    drop(f);

    // A file unlinked while open stays usable until its last close, then is gone.
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("doomed"))
        .unwrap();
    fs::remove_file(m.path("doomed")).unwrap();
    assert!(fs::metadata(m.path("doomed")).is_err());
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    f.write_all(b"still usable").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut back = String::new();
    f.read_to_string(&mut back).unwrap();
    assert_eq!(back, "still usable");
    let left_behind = |e: std::io::Result<fs::DirEntry>| {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        name.starts_with("doomed") || name.starts_with(".dfs-hidden")
    };
    assert!(
        !fs::read_dir(&m.dir).unwrap().any(left_behind),
        "the unlinked file left a name behind"
    );
    drop(f);

    // Directories, renames, links, symlinks, permissions.
    fs::create_dir_all(m.path("a/b/c")).unwrap();
    fs::write(m.path("a/b/c/file"), b"deep").unwrap();
    fs::rename(m.path("a/b/c/file"), m.path("a/moved")).unwrap();
    assert_eq!(fs::read(m.path("a/moved")).unwrap(), b"deep");
    assert_eq!(
        fs::remove_dir(m.path("a")).unwrap_err().raw_os_error(),
        Some(39 /* ENOTEMPTY */)
    );
    fs::hard_link(m.path("a/moved"), m.path("hard")).unwrap();
    assert_eq!(fs::metadata(m.path("hard")).unwrap().nlink(), 2);
    std::os::unix::fs::symlink("a/moved", m.path("sym")).unwrap();
    assert_eq!(
        fs::read_link(m.path("sym")).unwrap().to_str(),
        Some("a/moved")
    );
    assert_eq!(fs::read(m.path("sym")).unwrap(), b"deep");
    fs::set_permissions(m.path("hard"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        fs::metadata(m.path("a/moved")).unwrap().mode() & 0o777,
        0o600
    );
    fs::remove_file(m.path("hard")).unwrap();
    assert_eq!(fs::metadata(m.path("a/moved")).unwrap().nlink(), 1);
    assert!(fs::metadata(m.path("missing")).unwrap_err().kind() == std::io::ErrorKind::NotFound);

    // A directory listing larger than one page.
    fs::create_dir(m.path("many")).unwrap();
    for i in 0..1500 {
        fs::write(m.path(&format!("many/n{i:04}")), b"").unwrap();
    }
    let mut names: Vec<String> = fs::read_dir(m.path("many"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 1500);
    assert_eq!(names[0], "n0000");
    assert_eq!(names[1499], "n1499");

    // The volume's capacity shows in statfs (df).
    let df = std::process::Command::new("df")
        .arg("-k")
        .arg(&m.dir)
        .output()
        .unwrap();
    assert!(df.status.success() && String::from_utf8_lossy(&df.stdout).contains("default"));
}

#[test]
fn two_mounts_see_each_others_closed_files() {
    let cluster = cluster_with_volume();
    let a = Mount::new(&cluster, "default", "a", "attr_timeout=0.5").unwrap();
    let b = Mount::new(&cluster, "default", "b", "attr_timeout=0.5").unwrap();
    let data = random_bytes(3 << 20, 11);
    fs::write(a.path("shared"), &data).unwrap();
    // Close-to-open: what A wrote and closed, B sees on its next open.
    assert!(fs::read(b.path("shared")).unwrap() == data);
    // Renames and unlinks show up within the attribute-cache lifetime.
    fs::rename(a.path("shared"), a.path("renamed")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::metadata(b.path("renamed")).is_err() || fs::metadata(b.path("shared")).is_ok() {
        assert!(
            Instant::now() < deadline,
            "rename not visible in the second mount"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    fs::remove_file(b.path("renamed")).unwrap();
    while fs::metadata(a.path("renamed")).is_ok() {
        assert!(
            Instant::now() < deadline,
            "unlink not visible in the first mount"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A read-only mount refuses writes with EROFS.
    let ro = Mount::new(&cluster, "default", "ro", "ro").unwrap();
    let err = fs::write(ro.path("nope"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(30), "{err}");
}

#[test]
fn noexec_and_extreme_times_on_a_mount() {
    let cluster = cluster_with_volume();
    let plain = Mount::new(&cluster, "default", "plain", "").unwrap();
    let script = plain.path("run.sh");
    fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    assert!(Command::new(&script).status().unwrap().success());
    // A time at the edge of what the kernel holds is stored and shown without harm.
    let touched = Command::new("touch")
        .args(["-d", "@9223372036854775807"])
        .arg(&script)
        .status()
        .unwrap();
    assert!(touched.success());
    fs::metadata(&script).unwrap().modified().unwrap();
    let noexec = Mount::new(&cluster, "default", "noexec", "noexec").unwrap();
    let err = Command::new(noexec.path("run.sh")).status().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    // The plain mount still works after another mount read the extreme time.
    assert!(fs::metadata(plain.path("run.sh")).is_ok());
}

/// A volume mounted by root is open to every local user, with permissions checked, as an NFS
/// share is; `noallow_other` keeps a mount to root.
#[test]
fn root_mounts_are_shared_with_local_users() {
    use std::os::unix::process::CommandExt;
    let cluster = cluster_with_volume();
    // Other users reach the mount points through the cluster's directory.
    fs::set_permissions(cluster.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let shared = Mount::new(&cluster, "default", "shared", "").unwrap();
    fs::write(shared.path("open"), b"for all").unwrap();
    fs::set_permissions(shared.path("open"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::create_dir(shared.path("private")).unwrap();
    fs::set_permissions(shared.path("private"), fs::Permissions::from_mode(0o700)).unwrap();
    let as_nobody = |script: String| {
        Command::new("sh")
            .args(["-c", &script])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let path = |m: &Mount, rel: &str| m.path(rel).display().to_string();
    let out = as_nobody(format!("cat {}", path(&shared, "open")));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"for all");
    // Permissions are checked: root's private directory and root's file stay closed.
    let out = as_nobody(format!("ls {}", path(&shared, "private")));
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    let out = as_nobody(format!("echo x > {}", path(&shared, "open")));
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(fs::read(shared.path("open")).unwrap(), b"for all");

    let closed = Mount::new(&cluster, "default", "closed", "noallow_other").unwrap();
    let out = as_nobody(format!("cat {}", path(&closed, "open")));
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(fs::read(closed.path("open")).unwrap(), b"for all");
}

#[test]
fn mount_failures_are_one_line_errors() {
    let cluster = cluster_with_volume();
    let err = Mount::new(&cluster, "nosuchvolume", "x", "")
        .err()
        .expect("mounting a missing volume fails");
    assert!(
        err.contains("no volume named") && err.lines().count() == 1,
        "{err}"
    );
    let err = Mount::new(&cluster, "default", "y", "bogus")
        .err()
        .expect("bad option fails");
    assert!(err.contains("unknown mount option"), "{err}");
}

/// Runs a shell command in `dir`, failing the test with its output if it fails.
fn sh(dir: &std::path::Path, script: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{script}` failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn everyday_programs_work_on_the_mount() {
    let cluster = cluster_with_volume();
    let m = Mount::new(&cluster, "default", "mnt", "").unwrap();
    let local = cluster.dir.path().join("local-tree");
    fs::create_dir_all(local.join("src/sub")).unwrap();
    for i in 0..20 {
        fs::write(
            local.join(format!("src/sub/f{i}")),
            random_bytes(1000 * i + 1, i as u64),
        )
        .unwrap();
    }
    fs::write(local.join("src/big"), random_bytes(6 << 20, 99)).unwrap();
    let l = local.display();

    // An archiver: pack onto the mount, unpack on the mount, compare with the original.
    sh(&m.dir, &format!("tar czf tree.tgz -C {l} src && mkdir out && tar xzf tree.tgz -C out && diff -r {l}/src out/src"));

    // Version control: a repository on the mount, commits, history and an integrity check.
    sh(&m.dir, "mkdir repo && cd repo && git init -q && git config user.email t@e.st && git config user.name t \
        && cp -r ../out/src . && git add -A && git commit -qm one && echo change >> src/sub/f1 \
        && git commit -qam two && test $(git rev-list --count HEAD) = 2 && git fsck --strict --no-progress");

    // An embedded database: transactions, a journal, a query.
    let count = sh(&m.dir, "sqlite3 db.sqlite 'create table t(a integer, b text);' \
        && sqlite3 db.sqlite \"begin; $(for i in $(seq 1 500); do printf \"insert into t values($i, 'row $i');\"; done) commit;\" \
        && sqlite3 db.sqlite 'select count(*), sum(a) from t;'");
    assert_eq!(count.trim(), "500|125250");

    // A compiler: build a program on the mount and run it from there.
    fs::write(
        m.path("hello.c"),
        "#include <stdio.h>\nint main(void) { puts(\"hello from dfs\"); return 0; }\n",
    )
    .unwrap();
    let run = sh(&m.dir, "cc -O1 -o hello hello.c && ./hello");
    assert_eq!(run.trim(), "hello from dfs");
}

#[test]
fn a_chunk_server_killed_during_a_large_copy() {
    let mut cluster = cluster_with_volume();
    let m = Mount::new(&cluster, "default", "mnt", "").unwrap();
    const MIB: usize = 1 << 20;
    let data = random_bytes(96 * MIB, 5);
    let mut f = fs::File::create(m.path("big")).unwrap();
    for (i, chunk) in data.chunks(MIB).enumerate() {
        // A third of the way in, one of the six servers of this 4+2 volume dies. Blocks in
        // flight to it are written elsewhere or without that shard; the copy goes on.
        if i == 32 {
            cluster.kill_chunk(2);
        }
        f.write_all(chunk).unwrap();
    }
    f.sync_all()
        .unwrap_or_else(|e| panic!("the copy failed: {e}\n{}", cluster.logs()));
    drop(f);
    let back = fs::read(m.path("big")).unwrap();
    assert!(
        back == data,
        "the copy differs from its source ({} of {} bytes)",
        back.len(),
        data.len()
    );
    // A second mount (no cached state) reads the same bytes.
    let fresh = Mount::new(&cluster, "default", "fresh", "").unwrap();
    assert!(fs::read(fresh.path("big")).unwrap() == data);
}

#[test]
fn mount_t_dfs_and_umount() {
    // mount(8) finds its helper as /sbin/mount.dfs; link it to this build unless something
    // other than a link is there.
    let helper = std::path::Path::new("/sbin/mount.dfs");
    if helper.exists() && !helper.is_symlink() {
        panic!("/sbin/mount.dfs exists and is not a link; cannot test `mount -t dfs`");
    }
    let _ = fs::remove_file(helper);
    std::os::unix::fs::symlink(dfs_tests::process::binary("dfs-mount"), helper).unwrap();

    let cluster = cluster_with_volume();
    let dir = cluster.dir.path().join("by-mount");
    fs::create_dir_all(&dir).unwrap();
    let log = cluster.dir.path().join("mount-by-mount.log");
    let out = std::process::Command::new("mount")
        .args(["-t", "dfs"])
        .arg(format!("{}:/default", cluster.meta_addr))
        .arg(&dir)
        .arg("-o")
        .arg(format!(
            "certs={},log={},_netdev,noatime",
            cluster.certs_dir.display(),
            log.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount -t dfs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // From here the mount is ours to clean up, also if an assertion fails.
    let mounted = Mount { dir: dir.clone() };
    let table = fs::read_to_string("/proc/self/mounts").unwrap();
    let line = table
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(dir.to_str().unwrap()))
        .expect("the mount is in /proc/self/mounts");
    assert!(
        line.contains(&format!("{}:/default", cluster.meta_addr)),
        "{line}"
    );
    fs::write(mounted.path("via-mount-t"), b"written through mount -t dfs").unwrap();

    // umount flushes and detaches; the file is in the cluster.
    let out = std::process::Command::new("umount")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "umount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!table.contains(dir.to_str().unwrap()), "still mounted");
    let other = Mount::new(&cluster, "default", "other", "").unwrap();
    assert_eq!(
        fs::read(other.path("via-mount-t")).unwrap(),
        b"written through mount -t dfs"
    );
}

#[test]
fn files_past_4_gib_and_shared_mmap_writes() {
    let cluster = cluster_with_volume();
    let m = Mount::new(&cluster, "default", "mnt", "").unwrap();

    // A sparse file past 4 GiB: the hole reads as zeros, the tail as written.
    let far = (5u64 << 30) + 123;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(m.path("huge"))
        .unwrap();
    f.seek(SeekFrom::Start(far)).unwrap();
    f.write_all(b"beyond 4 GiB").unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(fs::metadata(m.path("huge")).unwrap().len(), far + 12);
    let mut f = fs::File::open(m.path("huge")).unwrap();
    let mut buf = vec![0xffu8; 4096];
    f.seek(SeekFrom::Start(4 << 30)).unwrap();
    f.read_exact(&mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "the hole is not zeros");
    f.seek(SeekFrom::Start(far)).unwrap();
    let mut tail = String::new();
    f.read_to_string(&mut tail).unwrap();
    assert_eq!(tail, "beyond 4 GiB");

    // A shared writable mapping: stores through memory reach the file after msync.
    let len = 3 * 4096 + 100;
    fs::write(m.path("mapped"), vec![b'.'; len]).unwrap();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("mapped"))
        .unwrap();
    // SAFETY: a fresh shared mapping of `len` bytes of an open file, unmapped below; the
    // slice is only used while the mapping lives.
    unsafe {
        use std::os::fd::AsRawFd;
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        let mem = std::slice::from_raw_parts_mut(p as *mut u8, len);
        assert_eq!(mem[5000], b'.', "mapped read");
        mem[5000..5006].copy_from_slice(b"mapped");
        mem[len - 4..].copy_from_slice(b"tail");
        assert_eq!(libc::msync(p, len, libc::MS_SYNC), 0);
        assert_eq!(libc::munmap(p, len), 0);
    }
    f.sync_all().unwrap();
    drop(f);
    let other = Mount::new(&cluster, "default", "other", "").unwrap();
    let back = fs::read(other.path("mapped")).unwrap();
    assert_eq!(back.len(), len);
    assert_eq!(&back[5000..5006], b"mapped");
    assert_eq!(&back[len - 4..], b"tail");
    assert!(back[..5000].iter().all(|&b| b == b'.'));
}

/// A close, flush, `getattr` or listing call with nothing to wait for is answered on the
/// thread that read it from the kernel, with no hand-off to the mount's runtime; one with
/// writes to commit, a lock to drop or entries to fetch still does its work.
#[test]
fn requests_with_nothing_to_wait_for_are_answered_on_arrival() {
    use crate::group::flock;
    use crate::observe::{scrape, value};
    let cluster = cluster_with_volume();
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], dfs_tests::process::free_tcp_port()));
    let m = Mount::new(&cluster, "default", "m", &format!("metrics={http}")).unwrap();
    let arrived = |op: &str| {
        let series = format!("dfs_fuse_answered_on_arrival_total{{op=\"{op}\"}}");
        value(&scrape(http), &series)
    };
    fs::create_dir(m.path("d")).unwrap();
    let (flushes, releases, getattrs) = (arrived("flush"), arrived("release"), arrived("getattr"));
    for i in 0..10 {
        fs::File::create(m.path(&format!("d/f{i}"))).unwrap();
    }
    // Each close of an empty new file: its flush and release. The kernel asks again for the
    // attributes of the directory each create changed, which came back with the create.
    // close returns once its flush is answered; the release follows it, a moment later.
    assert!(arrived("flush") - flushes >= 10.0, "flushes waited");
    crate::heal::wait_until(
        &cluster,
        std::time::Duration::from_secs(30),
        "releases waited",
        || arrived("release") - releases >= 10.0,
    );
    assert!(
        arrived("getattr") - getattrs >= 1.0,
        "directory attributes waited"
    );

    // A listing: its first call fetches the entries; the calls after it, to the end, are
    // answered from what the first fetched.
    let listed = || arrived("readdirplus") + arrived("readdir");
    let before = listed();
    let mut names: Vec<String> = fs::read_dir(m.path("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
    want.sort();
    assert_eq!(names, want);
    assert!(listed() - before >= 1.0, "the end of a listing waited");

    // Writes to commit: the close's flush commits them, the long way (the release after it
    // has nothing left to do).
    let flushes = arrived("flush");
    fs::write(m.path("d/data"), b"committed by its close").unwrap();
    assert_eq!(
        arrived("flush"),
        flushes,
        "a flush with writes was answered on arrival"
    );
    let other = Mount::new(&cluster, "default", "other", "").unwrap();
    assert_eq!(
        fs::read(other.path("d/data")).unwrap(),
        b"committed by its close"
    );

    // A lock held at the last close is dropped by it: the other mount can take it at once.
    let held = fs::File::open(m.path("d/f0")).unwrap();
    assert_eq!(flock(&held, libc::LOCK_EX | libc::LOCK_NB), Ok(()));
    let wanted = fs::File::open(other.path("d/f0")).unwrap();
    assert_eq!(
        flock(&wanted, libc::LOCK_EX | libc::LOCK_NB),
        Err(libc::EWOULDBLOCK)
    );
    let releases = arrived("release");
    drop(held);
    // The kernel sends the release after close returns: wait until the lock is free.
    crate::heal::wait_until(
        &cluster,
        std::time::Duration::from_secs(30),
        "the lock held at the last close was not dropped",
        || flock(&wanted, libc::LOCK_EX | libc::LOCK_NB) == Ok(()),
    );
    assert_eq!(
        arrived("release"),
        releases,
        "a close holding a lock was answered on arrival"
    );
}

/// A write that only buffers its bytes is answered as it arrives, with no hand-off to the
/// mount's runtime, inside the file or growing it; a write that completes a block (an upload
/// to start) goes the long way. Every byte reaches the cluster either way.
#[test]
fn writes_that_only_buffer_are_answered_on_arrival() {
    use crate::observe::{scrape, value};
    use std::os::unix::fs::FileExt;
    const MIB: usize = 1 << 20;
    let cluster = cluster_with_volume();
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], dfs_tests::process::free_tcp_port()));
    let m = Mount::new(&cluster, "default", "m", &format!("metrics={http}")).unwrap();
    let arrived = || {
        value(
            &scrape(http),
            "dfs_fuse_answered_on_arrival_total{op=\"write\"}",
        )
    };
    let mut want = random_bytes(8 * MIB, 31);
    fs::write(m.path("f"), &want).unwrap();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.path("f"))
        .unwrap();
    let put = |want: &mut Vec<u8>, at: usize, bytes: &[u8]| {
        f.write_all_at(bytes, at as u64).unwrap();
        if want.len() < at + bytes.len() {
            want.resize(at + bytes.len(), 0);
        }
        want[at..at + bytes.len()].copy_from_slice(bytes);
    };

    // Scattered 4 KiB writes inside the file: each only buffers. (A flush of this descriptor
    // by the exec of a concurrent test's child may hold it for a moment: most, not all.)
    let before = arrived();
    for i in 0..16 {
        put(
            &mut want,
            4096 + i * 300_000,
            &random_bytes(4096, 100 + i as u64),
        );
    }
    let answered = arrived() - before;
    assert!(
        answered >= 12.0,
        "only {answered} of 16 writes answered on arrival"
    );

    // Growth too, while the mount's figure of the volume's usage (for its quota) is fresh:
    // it is fetched again, the long way, once it is a second old.
    let before = arrived();
    for i in 0..16 {
        let end = want.len();
        put(&mut want, end, &random_bytes(1000, 300 + i as u64));
    }
    let answered = arrived() - before;
    assert!(
        answered >= 12.0,
        "only {answered} of 16 growing writes answered on arrival"
    );

    // The second block written whole in pieces: the piece that completes it starts its
    // upload, the long way; the pieces before it only buffer.
    let before = arrived();
    for i in 0..16 {
        put(
            &mut want,
            4 * MIB + i * 256 * 1024,
            &random_bytes(256 * 1024, 200 + i as u64),
        );
    }
    let answered = arrived() - before;
    assert!(answered >= 1.0, "no piece answered on arrival");

    // fsync sends what the answered writes buffered; another mount reads it all.
    f.sync_all().unwrap();
    let other = Mount::new(&cluster, "default", "other", "").unwrap();
    assert!(
        fs::read(other.path("f")).unwrap() == want,
        "bytes differ after fsync"
    );
    drop(f);
    assert!(
        fs::read(other.path("f")).unwrap() == want,
        "bytes differ after close"
    );

    // Appends (O_APPEND) only buffer as well; each lands after the one before.
    fs::write(m.path("log"), b"first line\n").unwrap();
    let mut log = fs::OpenOptions::new()
        .append(true)
        .open(m.path("log"))
        .unwrap();
    let mut want = b"first line\n".to_vec();
    let before = arrived();
    for i in 0..16 {
        let line = format!("appended line {i}\n");
        log.write_all(line.as_bytes()).unwrap();
        want.extend_from_slice(line.as_bytes());
    }
    let answered = arrived() - before;
    assert!(
        answered >= 12.0,
        "only {answered} of 16 appends answered on arrival"
    );
    log.sync_all().unwrap();
    assert_eq!(fs::read(other.path("log")).unwrap(), want);
}

/// fsync through one descriptor sends what every descriptor of the file wrote in this mount,
/// and the attribute changes answered for it: the kernel sends the fsync with the one
/// descriptor it came through, but the file's data is all of theirs. An fsync with nothing
/// left to send is answered on arrival.
#[test]
fn an_fsync_sends_what_every_descriptor_of_the_file_wrote() {
    use crate::observe::{scrape, value};
    use std::fs::FileTimes;
    use std::time::SystemTime;
    let cluster = cluster_with_volume();
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], dfs_tests::process::free_tcp_port()));
    let a = Mount::new(&cluster, "default", "a", &format!("metrics={http}")).unwrap();
    let b = Mount::new(&cluster, "default", "b", "").unwrap();
    let past = SystemTime::UNIX_EPOCH + Duration::from_secs(1_153_704_088);
    fs::write(a.path("f"), b"").unwrap();
    let synced = fs::OpenOptions::new()
        .write(true)
        .open(a.path("f"))
        .unwrap();
    let mut writer = fs::OpenOptions::new()
        .write(true)
        .open(a.path("f"))
        .unwrap();
    writer
        .write_all(b"written through another descriptor")
        .unwrap();
    writer
        .set_times(FileTimes::new().set_modified(past))
        .unwrap();
    synced.sync_all().unwrap();
    // The writer is still open: what the other mount sees is at the metadata server.
    assert_eq!(
        fs::read(b.path("f")).unwrap(),
        b"written through another descriptor"
    );
    assert_eq!(fs::metadata(b.path("f")).unwrap().mtime(), 1_153_704_088);

    // Nothing left to send. (A flush of a descriptor by the exec of a concurrent test's
    // child may hold it for a moment: one of two, not both.)
    let arrived = || {
        value(
            &scrape(http),
            "dfs_fuse_answered_on_arrival_total{op=\"fsync\"}",
        )
    };
    let before = arrived();
    synced.sync_all().unwrap();
    writer.sync_all().unwrap();
    assert!(
        arrived() - before >= 1.0,
        "fsyncs with nothing to send waited"
    );
}

/// A write through a descriptor opened O_DSYNC is at the metadata server, durable, when it
/// returns: an O_APPEND one too, whose writes bypass the kernel's pages and so are followed by
/// no fsync from the kernel.
#[test]
fn writes_through_o_dsync_descriptors_are_sent_before_they_return() {
    use std::os::unix::fs::OpenOptionsExt;
    let cluster = cluster_with_volume();
    let a = Mount::new(&cluster, "default", "a", "").unwrap();
    let b = Mount::new(&cluster, "default", "b", "").unwrap();
    for (name, append) in [("appended", true), ("written", false)] {
        fs::write(a.path(name), b"").unwrap();
        let mut f = fs::OpenOptions::new()
            .write(true)
            .append(append)
            .custom_flags(libc::O_DSYNC)
            .open(a.path(name))
            .unwrap();
        let mut want = Vec::new();
        for i in 0..3 {
            let line = format!("line {i}\n");
            f.write_all(line.as_bytes()).unwrap();
            want.extend_from_slice(line.as_bytes());
            // Still open: what the other mount reads is at the metadata server.
            assert_eq!(fs::read(b.path(name)).unwrap(), want, "{name}");
        }
    }
}

/// The kernel looks a directory up before every `mkdir` of it, even when it holds the name:
/// for a directory this mount made and changed since, the mount answers from what it knows
/// (fs_mark does this before every file). Once another mount removed it, `mkdir` makes it
/// again: the change feed drops that knowledge, and the attributes it needs last only the
/// attribute timeout anyway.
#[test]
fn a_directory_made_here_is_looked_up_by_the_mount_until_it_changes_elsewhere() {
    use crate::observe::{scrape, value};
    let cluster = cluster_with_volume();
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], dfs_tests::process::free_tcp_port()));
    // A long attribute timeout (below the lease, so the mount still follows the feed): the
    // answers on arrival must not depend on how fast this test runs, and the second part then
    // depends on the change feed alone.
    let options = format!("metrics={http},attr_timeout=20");
    let m = Mount::new(&cluster, "default", "m", &options).unwrap();
    let arrived = || {
        value(
            &scrape(http),
            "dfs_fuse_answered_on_arrival_total{op=\"lookup\"}",
        )
    };
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/f"), b"a change in d").unwrap();
    for _ in 0..3 {
        let before = arrived();
        let err = fs::create_dir(m.path("d")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(arrived() - before, 1.0, "the lookup of d waited");
    }

    let other = Mount::new(&cluster, "default", "other", "").unwrap();
    fs::remove_file(other.path("d/f")).unwrap();
    fs::remove_dir(other.path("d")).unwrap();
    crate::heal::wait_until(
        &cluster,
        Duration::from_secs(10),
        "mkdir of d again",
        || match fs::create_dir(m.path("d")) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => panic!("mkdir failed: {e}"),
        },
    );
    assert!(other.path("d").is_dir());
}

/// Small reads fetch the whole 64 KiB unit around them and keep it: a read beside an
/// earlier one is answered from the mount's cache as it arrives, with the written bytes. An
/// `O_DIRECT` read keeps nothing. A block's bytes never change, so after another mount
/// rewrites the range (new extents), the next open reads the new bytes, not the cached ones.
#[test]
fn small_reads_near_earlier_ones_come_from_the_read_cache_never_from_a_replaced_block() {
    use crate::observe::{scrape, value};
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let cluster = cluster_with_volume();
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], dfs_tests::process::free_tcp_port()));
    let m = Mount::new(&cluster, "default", "m", &format!("metrics={http}")).unwrap();
    let metric = |series: &str| value(&scrape(http), series);
    let cache = |what: &str| metric(&format!("dfs_fuse_read_cache{{what=\"{what}\"}}"));
    let arrived = || metric("dfs_fuse_answered_on_arrival_total{op=\"read\"}");
    let data = random_bytes(1 << 20, 77);
    fs::write(m.path("f"), &data).unwrap();

    // Without read-ahead, the kernel asks for exactly the pages read; and without the pages
    // it kept from the write, it asks at all.
    let random_reader = || {
        let f = fs::File::open(m.path("f")).unwrap();
        for advice in [libc::POSIX_FADV_DONTNEED, libc::POSIX_FADV_RANDOM] {
            fadvise(&f, advice).unwrap();
        }
        f
    };
    let page_at = |f: &fs::File, at: usize| {
        let mut page = vec![0u8; 4096];
        f.read_exact_at(&mut page, at as u64).unwrap();
        assert_eq!(page, &data[at..at + 4096], "bytes at {at}");
    };
    let f = random_reader();
    let (misses, hits, on_arrival) = (cache("misses"), cache("hits"), arrived());
    page_at(&f, 200 << 10);
    assert_eq!(cache("misses") - misses, 1.0, "the first read fetches");
    assert!(cache("bytes") >= 65536.0, "a whole unit is kept");
    page_at(&f, (200 << 10) + 8192);
    assert_eq!(cache("hits") - hits, 1.0, "the read beside it is a hit");
    assert_eq!(arrived() - on_arrival, 1.0, "and is answered on arrival");

    // O_DIRECT: right bytes, nothing kept.
    let kept = cache("bytes");
    let direct = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.path("f"))
        .unwrap();
    let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
    let buf = unsafe { std::alloc::alloc_zeroed(layout) };
    let page = unsafe { std::slice::from_raw_parts_mut(buf, 4096) };
    let read = direct.read_at(page, 600 << 10);
    let same = page[..] == data[600 << 10..(600 << 10) + 4096];
    unsafe { std::alloc::dealloc(buf, layout) };
    assert_eq!(read.unwrap(), 4096);
    assert!(same, "O_DIRECT read returned other bytes");
    assert_eq!(cache("bytes"), kept, "an O_DIRECT read kept its sub-block");
    drop((f, direct));

    // Another mount rewrites the cached range (too long to keep inline: a new block).
    let other = Mount::new(&cluster, "default", "other", "").unwrap();
    let fresh = random_bytes(128 << 10, 78);
    let w = fs::OpenOptions::new()
        .write(true)
        .open(other.path("f"))
        .unwrap();
    w.write_all_at(&fresh, 128 << 10).unwrap();
    drop(w);
    let f = random_reader();
    let mut page = vec![0u8; 8192];
    f.read_exact_at(&mut page, 200 << 10).unwrap();
    assert_eq!(
        page,
        &fresh[72 << 10..80 << 10],
        "a read after another mount's rewrite saw the old bytes"
    );
}

/// Closing one file never waits for another file's upload: the mount locks only the
/// descriptors of the file it closes. A large file's upload is held at fault points (its
/// first two shards' writes: with one held, the block would be stored without it after a
/// grace), so its writer waits (in its fsync, or in a write behind a flush); a
/// small file (kept inline, so it needs no chunk server) is then written and closed beside
/// it, and must be done while that writer still waits.
///
/// The large file is written and synced on a thread of its own: any process that starts
/// another one (the other tests start servers) closes its inherited descriptors at exec, and
/// each close sends a FLUSH for the open file, which waits for the held upload; a write of the
/// test's own thread caught behind it would wait until the fault is disarmed, which only that
/// thread could do.
#[test]
fn closing_a_file_never_waits_for_another_files_upload() {
    use crate::heal::wait_until;
    use crate::observe::{mount_fault, mount_with_faults};
    let cluster = cluster_with_volume();
    let (m, http) = mount_with_faults(&cluster, "default", "m", "");
    // Both points take each verb; the answer is the first's.
    let control = |verb: &str| {
        mount_fault(http, "client.put_shard.1", verb);
        mount_fault(http, "client.put_shard.0", verb)
    };
    let big_data = random_bytes(6 << 20, 1);
    let big_path = m.path("big");

    control("pause");
    // Buffered; the full block starts uploading and the fsync waits for it.
    let writer = {
        let data = big_data.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            let mut big = fs::File::create(big_path)?;
            big.write_all(&data)?;
            big.sync_all()
        })
    };
    wait_until(
        &cluster,
        Duration::from_secs(20),
        "the large file's upload held",
        || control("hits").trim() != "0",
    );
    let small_path = m.path("small");
    let small = std::thread::spawn(move || fs::write(small_path, b"written beside an upload"));
    wait_until(
        &cluster,
        Duration::from_secs(20),
        "the small file closed while the upload is held",
        || small.is_finished(),
    );
    small.join().unwrap().unwrap();
    assert!(
        !writer.is_finished(),
        "the large file was synced while its upload was held"
    );
    control("disarm");
    if let Err(e) = writer.join().unwrap() {
        panic!("writing the large file failed: {e}\n{}", cluster.logs());
    }
    assert_eq!(
        fs::read(m.path("small")).unwrap(),
        b"written beside an upload"
    );
    assert!(fs::read(m.path("big")).unwrap() == big_data);
}

/// A size answered from the metadata server before a flush commits this mount's buffered
/// writes, and replied after that flush forgot them, does not shrink the file: the mount
/// raises it to what was buffered when it asked. Driven by a fault point that holds a getattr
/// between the server's answer and the reply while an fsync commits. Nothing is kept for
/// any time (no lease, no attribute timeout), so the getattr goes to the server.
#[test]
fn a_size_read_before_a_flush_commits_does_not_hide_the_flushed_writes() {
    use crate::observe::{mount_fault, mount_with_faults};
    let cluster = cluster_with_volume();
    let (m, http) = mount_with_faults(&cluster, "default", "m", "attr_timeout=0,lease=0");
    let control = |verb: &str| mount_fault(http, "mount.getattr_answered", verb);

    let mut file = fs::File::create(m.path("f")).unwrap();
    file.write_all(&[7u8; 100]).unwrap(); // buffered in the mount: the server has 0 bytes
    let syncer = file.try_clone().unwrap();
    control("pause");
    let asking = std::thread::spawn(move || file.metadata().map(|md| md.len()));
    crate::heal::wait_until(&cluster, Duration::from_secs(20), "getattr held", || {
        control("hits").trim() != "0"
    });
    syncer.sync_all().unwrap(); // commits the 100 bytes; the mount forgets its buffered size
    control("disarm");
    let size = asking.join().unwrap().unwrap();
    assert_eq!(
        size, 100,
        "a size read before the commit hid the written bytes"
    );
    assert_eq!(fs::metadata(m.path("f")).unwrap().len(), 100);
}

/// An fsync that follows a failed background write-back reports the failure. The write-back
/// takes the error out of the descriptor with its flush; it must put it back before letting
/// the descriptor go, or an fsync taking it in between finds nothing to do and succeeds.
/// Driven by fault points: every commit fails, and the write-back pauses right after it let
/// the descriptor go, while the fsync runs.
#[test]
fn an_fsync_after_a_failed_write_back_reports_the_failure() {
    use crate::observe::{mount_fault, mount_with_faults};
    let cluster = cluster_with_volume();
    // Writes older than 2 s are written back: long after the write below returned.
    let (m, http) = mount_with_faults(&cluster, "default", "m", "writeback=2");
    mount_fault(http, "client.before_commit", "fail");
    mount_fault(http, "client.written_back", "pause");

    // A block and a tail: buffered and uploaded, committed by nobody yet. Written by a child
    // process that holds the only descriptor: a descriptor of this test process would be
    // inherited (and closed, which flushes it) by every process a concurrent test spawns.
    let script = "import os, sys\n\
                  fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)\n\
                  data = os.urandom(5 << 20)\n\
                  while data:\n    data = data[os.write(fd, data):]\n\
                  print('written', flush=True)\n\
                  sys.stdin.readline()\n\
                  try:\n    os.fsync(fd)\n    print('synced')\n\
                  except OSError as e:\n    print('errno', e.errno)\n";
    let mut writer = Command::new("python3")
        .args(["-c", script])
        .arg(m.path("f"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut out = std::io::BufReader::new(writer.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "written");
    crate::heal::wait_until(&cluster, Duration::from_secs(30), "a write-back", || {
        mount_fault(http, "client.written_back", "hits").trim() != "0"
    });
    writer.stdin.take().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let _ = writer.wait();
    mount_fault(http, "client.written_back", "disarm");
    mount_fault(http, "client.before_commit", "disarm");
    assert_eq!(
        line.trim(),
        format!("errno {}", libc::EIO),
        "the fsync after the failed write-back"
    );
}

/// Runs the Python statements `then` in a child process, after it opened `path` as `fd` and
/// wrote 5 MiB through it, buffered in the mount; `outcome(call)` there gives `ok` or
/// `errno N`, and `sys.argv[2..]` are `args`. Gives what the child printed (and its stderr).
/// The child holds the only descriptors: one of this test process would be inherited (and
/// closed, which flushes it) by every process a concurrent test spawns.
fn after_buffered_writes(path: &std::path::Path, then: &str, args: &[&str]) -> (String, String) {
    let script = format!(
        "import os, sys\n\
         def outcome(call):\n    try:\n        call()\n        return 'ok'\n    \
         except OSError as e:\n        return 'errno %d' % e.errno\n\
         fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)\n\
         data = os.urandom(5 << 20)\n\
         while data:\n    data = data[os.write(fd, data):]\n\
         {then}\n"
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .arg(path)
        .args(args)
        .output()
        .expect("python3 runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    (text(&out.stdout), text(&out.stderr))
}

/// A failed flush at one close of a shared descriptor is reported again at the descriptor's
/// next fsync: the writes it lost are lost for every process sharing it. A child that
/// inherited a descriptor closes it at its `exec` or exit, which flushes the parent's writes
/// and takes their failure; the parent's fsync must not then find nothing to do and report
/// success. Driven by a fault point that fails every commit; `dup` stands for the child's
/// copy.
#[test]
fn an_fsync_after_a_failed_flush_at_another_close_reports_the_failure() {
    use crate::observe::{mount_fault, mount_with_faults};
    let cluster = cluster_with_volume();
    let (m, http) = mount_with_faults(&cluster, "default", "m", "");
    mount_fault(http, "client.before_commit", "fail");
    let then = "copy = os.dup(fd)\n\
                print(outcome(lambda: os.close(copy)), outcome(lambda: os.fsync(fd)), \
                outcome(lambda: os.fsync(fd)))";
    let (said, stderr) = after_buffered_writes(&m.path("f"), then, &[]);
    mount_fault(http, "client.before_commit", "disarm");
    let eio = format!("errno {}", libc::EIO);
    assert_eq!(
        said,
        format!("{eio} {eio} ok"),
        "the close of the copy, then two fsyncs of the descriptor (stderr: {stderr})"
    );
}

/// A read through another descriptor, or a truncate by path or through the writer's own
/// descriptor, first flushes what the file's writers buffered; when that flush fails, the
/// reader or truncater gets the error, and the writer too at its next fsync (its writes are
/// lost for it as much, and the truncate's failure is not the writes'). Driven by a fault
/// point that fails every commit. (The read is `O_DIRECT`: the kernel's cache holds the
/// bytes just written and would answer it without asking the mount.)
#[test]
fn a_writer_hears_of_its_writes_failing_in_a_flush_made_for_a_read_or_truncate() {
    use crate::observe::{mount_fault, mount_with_faults};
    let cluster = cluster_with_volume();
    let (m, http) = mount_with_faults(&cluster, "default", "m", "");
    mount_fault(http, "client.before_commit", "fail");
    // What another process of this mount does to the file while the writer's bytes wait.
    let then = "path, other = sys.argv[1], sys.argv[2]\n\
                if other == 'read':\n    reader = os.open(path, os.O_RDONLY | os.O_DIRECT)\n    \
                done = outcome(lambda: os.pread(reader, 4096, 0))\n\
                elif other == 'truncate':\n    done = outcome(lambda: os.truncate(path, 4096))\n\
                else:\n    done = outcome(lambda: os.ftruncate(fd, 4096))\n\
                print(done, outcome(lambda: os.fsync(fd)), outcome(lambda: os.fsync(fd)))";
    let eio = format!("errno {}", libc::EIO);
    for (other, name) in [("read", "r"), ("truncate", "t"), ("ftruncate", "f")] {
        let (said, stderr) = after_buffered_writes(&m.path(name), then, &[other]);
        assert_eq!(
            said,
            format!("{eio} {eio} ok"),
            "the {other}, then two fsyncs of the writer (stderr: {stderr})"
        );
    }
    mount_fault(http, "client.before_commit", "disarm");
}

/// A file's times set while its writes are still buffered in the mount are the times it
/// keeps: the writes land before the change, not after it with the flush's own time. `tar`
/// writes each file, then sets its mtime, owner and mode through the same descriptor, then
/// closes it: those changes wait in the mount and travel with the flush of the writes, so
/// they cost no request of their own before the close. A change that takes access away goes
/// to the metadata server at once, after the waiting ones; a write after a waiting mtime
/// dates the file anew.
#[test]
fn attribute_changes_after_writes_travel_with_them_and_keep_their_times() {
    use std::fs::FileTimes;
    use std::os::unix::fs::{fchown, OpenOptionsExt};
    use std::time::SystemTime;
    let cluster = cluster_with_volume();
    let a = Mount::new(&cluster, "default", "a", "").unwrap();
    let b = Mount::new(&cluster, "default", "b", "").unwrap();
    let past = SystemTime::UNIX_EPOCH + Duration::from_secs(1_153_704_088);
    let requests = || {
        let page = crate::observe::scrape(cluster.meta_http);
        let count = |op: &str| {
            crate::observe::value(&page, &format!("dfs_meta_requests_total{{op=\"{op}\"}}"))
        };
        let commits = count("WriteInline") + count("CommitWrite") + count("CommitIfUnchanged");
        (count("SetAttr"), commits, count("GetAttr"))
    };
    // Kept inline in the metadata store, and large enough for erasure-coded blocks.
    for (name, len) in [("small", 10_964), ("large", 5 << 20)] {
        let data = random_bytes(len, len as u64);
        // As tar does: created private, opened up once written.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(a.path(name))
            .unwrap();
        file.write_all(&data).unwrap();
        let before = requests();
        file.set_times(FileTimes::new().set_modified(past)).unwrap();
        fchown(&file, Some(0), Some(0)).unwrap();
        file.set_permissions(fs::Permissions::from_mode(0o644))
            .unwrap();
        let mine = fs::metadata(a.path(name)).unwrap();
        assert_eq!((mine.mtime(), mine.mode() & 0o777), (1_153_704_088, 0o644));
        assert_eq!(
            mine.len(),
            len as u64,
            "{name}: size with the buffered writes"
        );
        let waited = requests();
        assert_eq!(
            waited.0 - before.0,
            0.0,
            "{name}: SetAttr requests before the close"
        );
        assert_eq!(
            waited.2 - before.2,
            0.0,
            "{name}: GetAttr requests before the close"
        );
        drop(file);
        let seen = fs::metadata(b.path(name)).unwrap();
        assert_eq!(seen.mtime(), 1_153_704_088, "{name}: mtime after close");
        assert_eq!(seen.mode() & 0o777, 0o644, "{name}: mode");
        assert!(fs::read(b.path(name)).unwrap() == data, "{name}: bytes");
    }

    // Taking access away is not kept waiting: it shows elsewhere before the close, with the
    // waiting mtime and the writes it followed.
    let mut file = fs::File::create(a.path("private")).unwrap();
    file.write_all(b"secret").unwrap();
    file.set_times(FileTimes::new().set_modified(past)).unwrap();
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .unwrap();
    let seen = fs::metadata(b.path("private")).unwrap();
    assert_eq!(
        (seen.mode() & 0o777, seen.mtime(), seen.len()),
        (0o600, 1_153_704_088, 6)
    );
    drop(file);
    // A write after a waiting mtime: the file is dated by that write.
    let mut file = fs::File::create(a.path("later")).unwrap();
    file.write_all(b"first").unwrap();
    file.set_times(FileTimes::new().set_modified(past)).unwrap();
    file.write_all(b" then more").unwrap();
    drop(file);
    let seen = fs::metadata(b.path("later")).unwrap();
    assert!(seen.mtime() > 1_700_000_000, "mtime {}", seen.mtime());
    assert_eq!(fs::read(b.path("later")).unwrap(), b"first then more");

    // The archiver itself: what it unpacks carries the archive's times and modes.
    let local = cluster.dir.path().join("tree");
    fs::create_dir_all(&local).unwrap();
    fs::write(local.join("f"), random_bytes(3000, 7)).unwrap();
    let l = local.display();
    sh(&a.dir, &format!("touch -d @1000000000 {l}/f && chmod 751 {l}/f && tar cf t.tar -C {l} f && mkdir out && tar xf t.tar -C out"));
    let seen = fs::metadata(b.path("out/f")).unwrap();
    assert_eq!((seen.mtime(), seen.mode() & 0o777), (1_000_000_000, 0o751));
    // `cp -a` sets the mode through an ACL when the file system takes one; dfs refuses
    // ACLs (nothing would enforce them), so it sets the mode itself.
    sh(&a.dir, &format!("cp -a {l}/f copied"));
    let seen = fs::metadata(b.path("copied")).unwrap();
    assert_eq!((seen.mtime(), seen.mode() & 0o777), (1_000_000_000, 0o751));
}

/// A mount of volume `default` keeping up to two spare placements, writing every file to
/// blocks (`noinline`); its metrics are served at the address returned.
fn mount_with_spares(cluster: &ProcessCluster) -> (Mount, std::net::SocketAddr) {
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], dfs_tests::process::free_tcp_port()));
    let options = format!("metrics={http},spare_blocks=2,noinline");
    (Mount::new(cluster, "default", "m", &options).unwrap(), http)
}

/// The spare placements a mount serving metrics at `http` has `what` ("fetched" or "used").
fn spare_count(http: std::net::SocketAddr, what: &str) -> f64 {
    use crate::observe::{scrape, value};
    value(
        &scrape(http),
        &format!("dfs_fuse_spare_blocks{{what=\"{what}\"}}"),
    )
}

/// A placement fetched ahead names servers chosen when it was fetched; one of them may die
/// before the placement is used. The upload still commits (the dead server's shard placed
/// elsewhere or left missing, as for a placement asked for at once) and the file reads back.
#[test]
fn an_upload_from_a_placement_fetched_ahead_survives_a_server_killed_since() {
    use crate::heal::wait_until;
    let mut cluster = cluster_with_volume();
    let (m, http) = mount_with_spares(&cluster);
    let spares = |what: &str| spare_count(http, what);
    let files: Vec<Vec<u8>> = (0..3)
        .map(|i| random_bytes(150_000 + i, 100 + i as u64))
        .collect();
    fs::write(m.path("f0"), &files[0]).unwrap();
    fs::write(m.path("f1"), &files[1]).unwrap();
    wait_until(
        &cluster,
        Duration::from_secs(30),
        "a placement fetched ahead",
        || spares("fetched") >= 1.0,
    );
    // Every placement of a 4+2 block on six servers names all six: the spare names this one.
    cluster.kill_chunk(3);
    fs::write(m.path("f2"), &files[2]).unwrap();
    assert_eq!(spares("used"), 1.0, "f2 was not uploaded from the spare");
    // Its write failed, or, unanswered, was left behind once the other five were stored.
    let logs = cluster.logs();
    assert!(
        logs.contains("shard write failed") || logs.contains("shard write left behind"),
        "no shard of f2 went to the killed server\n{logs}"
    );
    for (i, data) in files.iter().enumerate() {
        let name = format!("f{i}");
        assert!(fs::read(m.path(&name)).unwrap() == *data, "{name} here");
    }
    // Read by another mount, from the shards on disk, not from this mount's caches.
    let other = Mount::new(&cluster, "default", "other", "").unwrap();
    assert!(fs::read(other.path("f2")).unwrap() == files[2], "f2 there");
}

/// Uploads that follow each other start from block placements the mount fetched ahead: the
/// close that uploads a block sends its shards at once instead of first waiting for an
/// allocation at the metadata server. A lone upload fetches nothing ahead, so nothing is left
/// allocated and unused when a mount only writes now and then.
#[test]
fn uploads_following_each_other_use_placements_fetched_ahead() {
    use crate::coherence::requests;
    use crate::heal::wait_until;
    let cluster = cluster_with_volume();
    let (m, http) = mount_with_spares(&cluster);
    let spares = |what: &str| spare_count(http, what);
    let files: Vec<Vec<u8>> = (0..4)
        .map(|i| random_bytes(100_000 + i, i as u64))
        .collect();
    let allocations = requests(&cluster, "AllocateBlock");
    let fetched_at_least = |n: f64| {
        wait_until(
            &cluster,
            Duration::from_secs(30),
            "a placement fetched ahead",
            || spares("fetched") >= n,
        )
    };
    // A lone upload asks for its own placement and fetches none ahead.
    fs::write(m.path("f0"), &files[0]).unwrap();
    assert_eq!(
        requests(&cluster, "AllocateBlock") - allocations,
        1.0,
        "a lone upload"
    );
    assert_eq!(spares("fetched"), 0.0);
    // The next one follows it: its own placement, and one fetched for the upload after it.
    fs::write(m.path("f1"), &files[1]).unwrap();
    fetched_at_least(1.0);
    assert_eq!(spares("used"), 0.0);
    // Each later upload starts with the placement fetched before it and fetches the next.
    for (i, data) in files.iter().enumerate().skip(2) {
        fs::write(m.path(&format!("f{i}")), data).unwrap();
        assert_eq!(
            spares("used"),
            (i - 1) as f64,
            "upload f{i} asked for its own"
        );
        fetched_at_least(i as f64);
    }
    assert_eq!(
        requests(&cluster, "AllocateBlock") - allocations,
        5.0,
        "two placements asked for by uploads and three fetched ahead"
    );
    // What was written with placements fetched ahead reads back, here and on another mount.
    let other = Mount::new(&cluster, "default", "other", "").unwrap();
    for (i, data) in files.iter().enumerate() {
        let name = format!("f{i}");
        assert!(fs::read(m.path(&name)).unwrap() == *data, "{name} here");
        assert!(
            fs::read(other.path(&name)).unwrap() == *data,
            "{name} there"
        );
    }
}

/// A file cut short by a call that names no descriptor (`truncate` by path, or the truncate
/// the kernel makes for `open(O_TRUNC)`) or names another one shows the size of what is
/// written after it, at once: the descriptors open on it must not bring back the old size. Measured before the fix: a
/// file of 1,796 bytes rewritten with 31 showed 1,796 (until its attributes expired) after
/// the write, and after a change of its times as `tar x` makes before the close.
#[test]
fn a_file_rewritten_after_a_truncate_by_path_shows_its_new_size_at_once() {
    let cluster = cluster_with_volume();
    let m = Mount::new(&cluster, "default", "mnt", "").unwrap();
    let when = std::time::UNIX_EPOCH + Duration::from_secs(1_200_000_000);
    // Inline (in the metadata store) and in a block.
    for (name, old_len) in [("small", 1796), ("large", 300_000)] {
        let path = m.path(name);
        fs::write(&path, vec![b'x'; old_len]).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), old_len as u64);

        // open(O_TRUNC), a write, the times set before the close.
        let mut f = fs::File::create(&path).unwrap();
        assert_eq!(
            f.metadata().unwrap().len(),
            0,
            "{name}: after open(O_TRUNC)"
        );
        f.write_all(&[b'y'; 31]).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 31, "{name}: after the write");
        f.set_times(fs::FileTimes::new().set_modified(when))
            .unwrap();
        assert_eq!(f.metadata().unwrap().len(), 31, "{name}: after the times");
        drop(f);
        let meta = fs::metadata(&path).unwrap();
        assert_eq!((meta.len(), meta.mtime()), (31, 1_200_000_000), "{name}");
        assert_eq!(fs::read(&path).unwrap(), [b'y'; 31]);

        // A truncate through another descriptor, or by path, while one is open; then a write
        // through that one.
        for how in ["another descriptor", "truncate(1)"] {
            fs::write(&path, vec![b'x'; old_len]).unwrap();
            let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
            assert_eq!(f.metadata().unwrap().len(), old_len as u64);
            if how == "truncate(1)" {
                let status = Command::new("truncate")
                    .args(["-s", "0"])
                    .arg(&path)
                    .status()
                    .unwrap();
                assert!(status.success());
            } else {
                let g = fs::OpenOptions::new().write(true).open(&path).unwrap();
                g.set_len(0).unwrap();
            }
            f.write_all(&[b'z'; 31]).unwrap();
            assert_eq!(f.metadata().unwrap().len(), 31, "{name}: after {how}");
            drop(f);
            assert_eq!(fs::metadata(&path).unwrap().len(), 31, "{name}: {how}");
            assert_eq!(fs::read(&path).unwrap(), [b'z'; 31], "{name}: {how}");
        }
    }
}
