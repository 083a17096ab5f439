//! `copy_file_range` within a mount (what `cp` uses): new references to the source's blocks
//! where the range is in erasure-coded blocks (holes too, into a destination that holds
//! nothing there), the kernel's own copy elsewhere.

use crate::coherence::requests;
use crate::mount::cluster_with_volume;
use dfs_tests::process::Mount;
use dfs_tests::random_bytes;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;

/// `copy_file_range` of `len` bytes at the given offsets, repeated until all are copied or the
/// source ends, as `cp` does; the bytes copied.
fn copy_range(from: &File, mut off_in: i64, to: &File, mut off_out: i64, len: usize) -> usize {
    let mut done = 0;
    while done < len {
        // SAFETY: both descriptors are open for the call; the offsets are live locals.
        let n = unsafe {
            libc::copy_file_range(
                from.as_raw_fd(),
                &mut off_in,
                to.as_raw_fd(),
                &mut off_out,
                len - done,
                0,
            )
        };
        assert!(
            n >= 0,
            "copy_file_range: {}",
            std::io::Error::last_os_error()
        );
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    done
}

fn open_rw(path: std::path::PathBuf) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap()
}

/// Waits until the other mount reads `want` at `path` (it hears of the commit through its
/// change feed).
fn reads_back(mount: &Mount, path: &str, want: &[u8]) {
    crate::names::eventually(&format!("{path} read back on the other mount"), || {
        fs::read(mount.path(path)).unwrap() == want
    });
}

#[test]
fn a_copy_within_the_mount_shares_the_source_blocks_and_reads_back_exactly() {
    let cluster = cluster_with_volume();
    // No placements fetched ahead in the background: every block allocation counted below
    // is one a write needed.
    let a = Mount::new(&cluster, "default", "a", "spare_blocks=0").unwrap();
    let b = Mount::new(&cluster, "default", "b", "").unwrap();
    // Two whole 4 MiB blocks and a tail too long to be kept inline: all erasure-coded.
    let src = random_bytes((9 << 20) + 4097, 7);
    fs::write(a.path("src"), &src).unwrap();

    // A whole-file copy, as `cp` makes it: no block written, no byte sent.
    let (allocs, commits) = (
        requests(&cluster, "AllocateBlock"),
        requests(&cluster, "CommitWrite"),
    );
    let from = File::open(a.path("src")).unwrap();
    let to = open_rw(a.path("copy"));
    assert_eq!(copy_range(&from, 0, &to, 0, src.len() + 100), src.len());
    drop(to);
    assert_eq!(requests(&cluster, "AllocateBlock"), allocs);
    assert!(requests(&cluster, "CommitWrite") > commits);
    assert_eq!(fs::read(a.path("copy")).unwrap(), src);
    reads_back(&b, "copy", &src);

    // An unaligned range into the middle of a file with bytes of its own, and past its end.
    let mut want = vec![0xAAu8; 5 << 20];
    fs::write(a.path("middle"), &want).unwrap();
    let to = open_rw(a.path("middle"));
    let (at, len, into) = (1_000_001usize, 3_000_000usize, 777_777usize);
    assert_eq!(copy_range(&from, at as i64, &to, into as i64, len), len);
    want[into..into + len].copy_from_slice(&src[at..at + len]);
    let tail_at = (5 << 20) - 10;
    assert_eq!(copy_range(&from, 0, &to, tail_at as i64, 1 << 20), 1 << 20);
    want.truncate(tail_at);
    want.extend_from_slice(&src[..1 << 20]);
    drop(to);
    assert_eq!(fs::read(a.path("middle")).unwrap(), want);
    reads_back(&b, "middle", &want);

    // Blocks referred to by two files count both references.
    crate::inline::fsck_is_clean(&cluster);

    // The copy and the source share blocks, not bytes: overwriting one leaves the other.
    let mut copy = src.clone();
    let to = open_rw(a.path("copy"));
    std::os::unix::fs::FileExt::write_all_at(&to, &[0x55; 8192], 4 << 20).unwrap();
    drop(to);
    copy[4 << 20..(4 << 20) + 8192].fill(0x55);
    assert_eq!(fs::read(a.path("copy")).unwrap(), copy);
    assert_eq!(fs::read(a.path("src")).unwrap(), src);
    // Nor does the copy need the source to stay.
    drop(from);
    fs::remove_file(a.path("src")).unwrap();
    reads_back(&b, "copy", &copy);
    crate::inline::fsck_is_clean(&cluster);

    // Inline bytes and holes are copied by the kernel itself: the bytes are the same.
    let small = random_bytes(1000, 8);
    fs::write(a.path("small"), &small).unwrap();
    let sparse_file = open_rw(a.path("sparse"));
    std::os::unix::fs::FileExt::write_all_at(&sparse_file, &[0x11; 4096], 6 << 20).unwrap();
    drop(sparse_file);
    let mut sparse = vec![0u8; 6 << 20];
    sparse.extend_from_slice(&[0x11; 4096]);
    let allocs = requests(&cluster, "AllocateBlock");
    for (name, bytes) in [("small", &small), ("sparse", &sparse)] {
        let from = File::open(a.path(name)).unwrap();
        // Over a file of other bytes: where the source has a hole, the copy has zeros.
        let target = format!("{name}-copy");
        fs::write(a.path(&target), vec![0x77u8; bytes.len()]).unwrap();
        let to = open_rw(a.path(&target));
        assert_eq!(copy_range(&from, 0, &to, 0, bytes.len()), bytes.len());
        drop(to);
        assert_eq!(&fs::read(a.path(&target)).unwrap(), bytes, "{name}");
        reads_back(&b, &target, bytes);
    }
    assert!(
        requests(&cluster, "AllocateBlock") > allocs,
        "the sparse file's copy over older bytes is written as new blocks"
    );

    // Into a new file, where nothing is, holes need no bytes: copied by reference too.
    let data = random_bytes(2 << 20, 9);
    let holed_file = open_rw(a.path("holed"));
    std::os::unix::fs::FileExt::write_all_at(&holed_file, &data[..1 << 20], 0).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&holed_file, &data[1 << 20..], 8 << 20).unwrap();
    drop(holed_file);
    let mut holed = vec![0u8; 9 << 20];
    holed[..1 << 20].copy_from_slice(&data[..1 << 20]);
    holed[8 << 20..].copy_from_slice(&data[1 << 20..]);
    let allocs = requests(&cluster, "AllocateBlock");
    let from = File::open(a.path("holed")).unwrap();
    let to = open_rw(a.path("holed-copy"));
    assert_eq!(copy_range(&from, 0, &to, 0, holed.len()), holed.len());
    drop(to);
    assert_eq!(requests(&cluster, "AllocateBlock"), allocs);
    assert_eq!(fs::read(a.path("holed-copy")).unwrap(), holed);
    reads_back(&b, "holed-copy", &holed);
    // A trailing hole: the blocks by reference, then the kernel's zeros to the end.
    let grown = open_rw(a.path("holed"));
    grown.set_len(12 << 20).unwrap();
    drop(grown);
    holed.resize(12 << 20, 0);
    let from = File::open(a.path("holed")).unwrap();
    let to = open_rw(a.path("holed-copy2"));
    assert_eq!(copy_range(&from, 0, &to, 0, holed.len()), holed.len());
    drop(to);
    assert_eq!(fs::read(a.path("holed-copy2")).unwrap(), holed);
    reads_back(&b, "holed-copy2", &holed);
    crate::inline::fsck_is_clean(&cluster);
}
