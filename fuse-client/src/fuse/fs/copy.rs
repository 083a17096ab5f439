//! `copy_file_range` within the mount as new references to the source's blocks (see
//! [`crate::client::clone`]).

use super::Shared;
use crate::client::clone::extents_for_copy;
use crate::fuse::attr::errno;
use dfs_common::proto::meta::req;
use dfs_common::{FsError, Timestamp};
use fuser::{Errno, FileHandle};

impl Shared {
    /// Copies `len` bytes from `offset_in` of one open file to `offset_out` of another by
    /// committing extents that name the source's blocks; the bytes copied (fewer at the
    /// source's end of file), or EOPNOTSUPP for a range that holds holes or inline bytes.
    pub(super) async fn copy_by_reference(
        &self,
        fh_in: FileHandle,
        offset_in: u64,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
    ) -> Result<u32, Errno> {
        let (src, dst) = (self.file(fh_in)?, self.file(fh_out)?);
        // The copy comes after every write this mount holds for either file.
        self.files.sync(&src).await.map_err(|e| errno(&e))?;
        if dst.ino() != src.ino() {
            self.files.sync(&dst).await.map_err(|e| errno(&e))?;
        }
        // At most what one reply can count, in whole pages (as the kernel asks).
        let len = len.min(u64::from(u32::MAX) & !0xfff);
        let layout = self
            .client
            .layout(src.ino(), offset_in, len)
            .await
            .map_err(|e| errno(&e))?;
        let len = len.min(layout.size.saturating_sub(offset_in));
        if len == 0 {
            return Ok(0);
        }
        let not_here = |e: FsError| match e {
            // The destination changed since it was found empty there: the kernel copies.
            FsError::Changed(_) => Errno::EOPNOTSUPP,
            e => errno(&e),
        };
        let (extents, copied, unless_grown) =
            match extents_for_copy(&layout, offset_in, len, offset_out, false) {
                Some((extents, copied)) => (extents, copied, None),
                // Holes: copied as nothing only where the destination holds nothing.
                None => {
                    let size = self
                        .client
                        .getattr(dst.ino())
                        .await
                        .map_err(|e| errno(&e))?
                        .size;
                    if offset_out < size {
                        return Err(Errno::EOPNOTSUPP);
                    }
                    let (extents, copied) =
                        extents_for_copy(&layout, offset_in, len, offset_out, true)
                            .ok_or(Errno::EOPNOTSUPP)?;
                    (extents, copied, Some(size))
                }
            };
        if extents.len() > dfs_common::proto::MAX_COMMIT_EXTENTS {
            return Err(Errno::EOPNOTSUPP);
        }
        let asked = self.client.file_attrs().epoch();
        let (ino, mtime) = (dst.ino(), Timestamp::now());
        let committed = match unless_grown {
            None => {
                let commit = req::CommitWrite {
                    ino,
                    extents,
                    mtime,
                    append: false,
                };
                self.client.call(commit).await
            }
            // Only while the file is still `size` long: nothing from `offset_out` on.
            Some(size) => {
                let commit = req::CommitIfUnchanged {
                    ino,
                    extents,
                    mtime,
                    size,
                    from: offset_out,
                    expect: Vec::new(),
                };
                self.client.call(commit).await
            }
        };
        let after = committed.map_err(not_here)?.after;
        self.client.file_attrs().note(&after, asked);
        self.files.resized(ino, after.size, after.ctime).await;
        Ok(copied as u32)
    }
}
