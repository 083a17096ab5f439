//! Reads served from the page cache alone, into buffers that are not zeroed first.
//!
//! A read on the network thread must not wait for the disk, so it asks for what the page cache
//! holds (`RWF_NOWAIT`) and leaves anything else to the disk threads. The bytes land in a new
//! vector's spare capacity: zeroing a shard's worth of buffer that the read then overwrites
//! cost a few percent of a chunk server's CPU in a `dfs get`.

use std::fs::File;
use std::os::fd::AsRawFd;

/// `len` bytes at `offset` of `file`, if all of them are in the page cache; `None` when some
/// are not (or the file is shorter, or the read failed): the caller reads from the disk then.
pub fn read_cached(file: &File, offset: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = Vec::<u8>::with_capacity(len);
    let spare = buf.spare_capacity_mut();
    let iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: len,
    };
    let offset = libc::off_t::try_from(offset).ok()?;
    // SAFETY: the one iovec covers `len` bytes of the vector's spare capacity, which lives
    // across the call; the kernel writes at most that many bytes there.
    let read = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    if usize::try_from(read).ok()? != len {
        return None;
    }
    // SAFETY: the kernel wrote all `len` bytes.
    unsafe { buf.set_len(len) };
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_what_the_page_cache_holds_and_nothing_past_the_end() {
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        file.write_all(&data).unwrap();
        // Just written, so in the page cache.
        assert_eq!(read_cached(&file, 0, data.len()).unwrap(), data);
        assert_eq!(
            read_cached(&file, 1_000, 5_000).unwrap(),
            &data[1_000..6_000]
        );
        assert_eq!(read_cached(&file, 0, 0).unwrap(), Vec::<u8>::new());
        // A read past the end is short: refused, not padded.
        assert_eq!(read_cached(&file, 99_000, 2_000), None);
        assert_eq!(read_cached(&file, u64::MAX, 10), None);
    }
}
