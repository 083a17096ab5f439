//! Small files written so that a crash leaves either the old contents or the new, never part.

use crate::error::FsError;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Replaces `path` with `bytes` (mode 0600: these files hold secrets and identities): written
/// to a temporary file, synced, renamed over, and the directory synced.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
