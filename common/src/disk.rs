//! What a server's own disk has room for.

use std::path::Path;

/// Bytes free on the disk holding `path`, as `df` shows them (blocks kept for root do not
/// count).
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(path)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}
