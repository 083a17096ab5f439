//! Room on the metadata server's disk.
//!
//! An append to the metadata log, or a store commit, that finds the disk full stops the log
//! for good: the Raft core takes a failed write as fatal (it cannot tell what reached the
//! disk), and the server then exits to be restarted (see `service::follow_leadership`). So
//! while the disk holding the server's data has less than a reserve free
//! (`--min-free-space`), requests that grow the metadata (creates, links, extended
//! attributes, writes, block allocations) are refused with ENOSPC before they reach the log.
//! Everything else goes on into the reserve: reads, and the unlinks, truncates and renames
//! that make room.

use dfs_common::proto::meta::MetaRequest;
use dfs_common::{FsError, FsResult};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The reserve by default: room for the log to grow by several segments and for the store
/// to grow with it, taken only by requests that do not grow the metadata.
pub const DEFAULT_RESERVE: u64 = 256 << 20;
/// How long one reading of the free space is used: the disk is asked at most this often.
const FRESH_FOR: Duration = Duration::from_millis(100);

pub struct Space {
    /// The server's data directory.
    dir: PathBuf,
    reserve: u64,
    /// The last reading: when, and the bytes free then.
    last: Mutex<Option<(Instant, u64)>>,
}

impl Space {
    pub fn new(dir: PathBuf, reserve: u64) -> Space {
        Space {
            dir,
            reserve,
            last: Mutex::new(None),
        }
    }

    /// Refuses `request` with ENOSPC if it grows the metadata and the disk is within the
    /// reserve.
    pub fn check(&self, request: &MetaRequest) -> FsResult<()> {
        if self.reserve == 0 || !grows(request) {
            return Ok(());
        }
        let free = self.free();
        if free >= self.reserve {
            return Ok(());
        }
        Err(FsError::NoSpace(format!(
            "the metadata server's disk has {free} bytes free, less than its reserve of {} \
             (--min-free-space): make room on it",
            self.reserve
        )))
    }

    /// The reserve, in bytes (0: not checked).
    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Bytes free for the server's data, read at most every [`FRESH_FOR`]. A disk that
    /// cannot be asked counts as roomy: the log's own errors still stop the server.
    pub fn free(&self) -> u64 {
        let mut last = self.last.lock().expect("space");
        if let Some((at, free)) = *last {
            if at.elapsed() < FRESH_FOR {
                return free;
            }
        }
        let free = free_bytes(&self.dir);
        *last = Some((Instant::now(), free));
        free
    }
}

/// Bytes free on the disk of `path` ([`dfs_common::disk::free_bytes`]); a disk that cannot
/// be asked counts as roomy.
pub fn free_bytes(path: &Path) -> u64 {
    dfs_common::disk::free_bytes(path).unwrap_or(u64::MAX)
}

/// Whether `request` adds to what the metadata holds: a new inode or name, extended
/// attributes, bytes kept inline, extents or blocks.
fn grows(request: &MetaRequest) -> bool {
    matches!(
        request,
        MetaRequest::MakeNode(_)
            | MetaRequest::Symlink(_)
            | MetaRequest::Link(_)
            | MetaRequest::SetXattr(_)
            | MetaRequest::WriteInline(_)
            | MetaRequest::CommitWrite(_)
            | MetaRequest::CommitIfUnchanged(_)
            | MetaRequest::AllocateBlock(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfs_common::proto::meta::req;
    use dfs_common::InodeId;

    fn make_node() -> MetaRequest {
        MetaRequest::MakeNode(req::MakeNode {
            parent: InodeId(1),
            name: "f".into(),
            kind: dfs_common::model::FileKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
        })
    }

    fn unlink() -> MetaRequest {
        MetaRequest::Unlink(req::Unlink {
            parent: InodeId(1),
            name: "f".into(),
        })
    }

    #[test]
    fn growth_is_refused_within_the_reserve_and_the_rest_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let roomy = Space::new(dir.path().into(), 1);
        assert!(roomy.check(&make_node()).is_ok());
        let full = Space::new(dir.path().into(), u64::MAX);
        let refused = full.check(&make_node()).unwrap_err();
        assert_eq!(refused.errno(), 28, "ENOSPC");
        assert!(
            refused.to_string().contains("--min-free-space"),
            "{refused}"
        );
        assert!(full.check(&unlink()).is_ok());
        assert!(Space::new(dir.path().into(), 0).check(&make_node()).is_ok());
    }
}
