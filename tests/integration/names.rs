//! Names as Linux has them: any bytes but `/` and NUL, UTF-8 or not, through real mounts.

use crate::mount::cluster_with_volume;
use dfs_tests::process::Mount;
use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn at(mount: &Mount, dir: &str, name: &[u8]) -> PathBuf {
    mount.path(dir).join(OsStr::from_bytes(name))
}

fn listing(mount: &Mount, dir: &str) -> BTreeSet<Vec<u8>> {
    fs::read_dir(mount.path(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_vec())
        .collect()
}

/// Waits until `check` holds, failing the test after 10 s (another mount hears of a change
/// through its change feed, well inside that).
pub(crate) fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn names_and_symlink_targets_that_are_not_utf8_work_as_on_linux() {
    let cluster = cluster_with_volume();
    let a = Mount::new(&cluster, "default", "a", "").unwrap();
    let b = Mount::new(&cluster, "default", "b", "").unwrap();
    fs::create_dir(a.path("d")).unwrap();

    // Latin-1 "café", the UTF-8 "café", and a UTF-8 name holding one of the characters that
    // stand for raw bytes on the wire: three different names, three files.
    let latin1: &[u8] = b"caf\xe9";
    let utf8 = "café".as_bytes();
    let escape_char = "caf\u{10FFE9}".as_bytes();
    for (name, body) in [(latin1, "latin1"), (utf8, "utf8"), (escape_char, "escape")] {
        fs::write(at(&a, "d", name), body).unwrap();
    }
    let all: BTreeSet<Vec<u8>> = [latin1, utf8, escape_char].map(<[u8]>::to_vec).into();
    assert_eq!(listing(&a, "d"), all);
    eventually("the other mount lists the three names", || {
        listing(&b, "d") == all
    });
    for (name, body) in [(latin1, "latin1"), (utf8, "utf8"), (escape_char, "escape")] {
        assert_eq!(fs::read_to_string(at(&b, "d", name)).unwrap(), body);
    }

    // A symlink whose target is not UTF-8 reads back byte for byte, its size counting bytes.
    let target: &[u8] = b"../\xff\xfe/x";
    std::os::unix::fs::symlink(OsStr::from_bytes(target), at(&a, "d", b"link\xa0")).unwrap();
    let read = |m: &Mount| fs::read_link(at(m, "d", b"link\xa0")).map(|p| p.into_os_string());
    assert_eq!(read(&a).unwrap().into_vec(), target);
    eventually("the other mount reads the symlink", || {
        read(&b).ok().map(OsString::into_vec).as_deref() == Some(target)
    });
    let size = fs::symlink_metadata(at(&b, "d", b"link\xa0"))
        .unwrap()
        .len();
    assert_eq!(size, target.len() as u64);

    // Renamed on one mount: gone under the old name and there under the new one on the other.
    fs::rename(at(&a, "d", latin1), at(&a, "d", b"\xe9t\xe9")).unwrap();
    eventually("the other mount sees the rename", || {
        !at(&b, "d", latin1).exists() && at(&b, "d", b"\xe9t\xe9").exists()
    });
    assert_eq!(
        fs::read_to_string(at(&b, "d", b"\xe9t\xe9")).unwrap(),
        "latin1"
    );

    // The length limit counts bytes, as Linux does: 255 one-byte Latin-1 letters fit.
    let longest = vec![0xe9u8; 255];
    fs::write(at(&a, "d", &longest), b"").unwrap();
    eventually("the other mount finds the longest name", || {
        at(&b, "d", &longest).exists()
    });
    let err = fs::write(at(&a, "d", &[0xe9u8; 256]), b"").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG), "{err}");

    // A directory with such a name holds files and goes when empty.
    let dir = at(&a, "d", b"dir\x80");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join(OsStr::from_bytes(b"in\x81")), b"x").unwrap();
    let err = fs::remove_dir(&dir).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTEMPTY), "{err}");
    fs::remove_file(dir.join(OsStr::from_bytes(b"in\x81"))).unwrap();
    fs::remove_dir(&dir).unwrap();

    // Unlinked on one mount, gone on the other.
    fs::remove_file(at(&a, "d", escape_char)).unwrap();
    eventually("the other mount sees the unlink", || {
        !at(&b, "d", escape_char).exists()
    });
    assert_eq!(fs::read_to_string(at(&b, "d", utf8)).unwrap(), "utf8");

    // `dfs ls` shows a name that is not UTF-8 as text, with U+FFFD for its stray bytes.
    let out = cluster.cli().args(["ls", "default:/d"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(shown.contains("\u{FFFD}t\u{FFFD}"), "{shown}");
    assert!(shown.contains("café"), "{shown}");
}
