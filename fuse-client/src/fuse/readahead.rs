//! The kernel's read-ahead window for a FUSE mount. The kernel reads ahead of sequential
//! readers at most 128 KiB by default, whatever the file system offers at INIT; a dfs read of
//! 128 KiB is one small piece of one shard, so sequential reads through the mount ran at half
//! the speed of the client library, which fetches whole blocks. The window is a property of the
//! mount's backing device (`/sys/class/bdi/MAJOR:MINOR/read_ahead_kb`), which root may set.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Sets the read-ahead window of the file system mounted at `mountpoint` to `kib` KiB.
pub fn set(mountpoint: &Path, kib: u32) -> std::io::Result<()> {
    let dev = std::fs::metadata(mountpoint)?.dev();
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    std::fs::write(
        format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"),
        kib.to_string(),
    )
}

/// The read-ahead window of the file system mounted at `mountpoint`, in KiB.
pub fn get(mountpoint: &Path) -> std::io::Result<u32> {
    let dev = std::fs::metadata(mountpoint)?.dev();
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let text = std::fs::read_to_string(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"))?;
    text.trim()
        .parse()
        .map_err(|_| std::io::Error::other(format!("read_ahead_kb: {text:?}")))
}
