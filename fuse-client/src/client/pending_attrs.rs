//! Attribute changes that travel with a file's unflushed writes.
//!
//! An archiver writes each file, then sets its mtime, owner and mode, then closes it: three
//! metadata commits after the data's own. While the file's writes are still buffered in this
//! mount (invisible to other clients until the flush, by close-to-open), changes that take
//! nobody's access away wait with them and reach the metadata server at that flush: a new
//! time, permission bits added, an owner or group set to what it already is. The mount
//! answers for them meanwhile. Anything else (bits removed, setuid bits, a new owner, a size)
//! goes to the server at once, after the waiting changes.

use dfs_common::model::{SetAttr, TimeSet};
use dfs_common::proto::meta::Attr;
use dfs_common::Timestamp;

/// The special bits: setuid, setgid, sticky.
const SPECIAL: u32 = 0o7000;

/// Whether `set` may wait for the flush of a file whose attributes are `base`: it takes no
/// access away from anyone and changes no size.
pub fn may_wait(set: &SetAttr, base: &Attr) -> bool {
    let mode_ok = set.mode.is_none_or(|mode| {
        let old = base.mode & 0o7777;
        old & SPECIAL == 0 && mode & SPECIAL == 0 && mode & old == old
    });
    set.size.is_none()
        && mode_ok
        && set.uid.is_none_or(|uid| uid == base.uid)
        && set.gid.is_none_or(|gid| gid == base.gid)
}

/// Adds `later` to the changes waiting in `waiting`; the later value of a field wins.
pub fn merge(waiting: &mut SetAttr, later: &SetAttr) {
    waiting.mode = later.mode.or(waiting.mode);
    waiting.uid = later.uid.or(waiting.uid);
    waiting.gid = later.gid.or(waiting.gid);
    waiting.atime = later.atime.or(waiting.atime);
    waiting.mtime = later.mtime.or(waiting.mtime);
}

/// `attr` with the waiting changes made, as they were made at `at` (the time a change to
/// "now" takes, and the change time).
pub fn apply(waiting: &SetAttr, mut attr: Attr, at: Timestamp) -> Attr {
    let time = |t: TimeSet| match t {
        TimeSet::Now => at,
        TimeSet::At(t) => t,
    };
    if let Some(mode) = waiting.mode {
        attr.mode = mode & 0o7777;
    }
    attr.uid = waiting.uid.unwrap_or(attr.uid);
    attr.gid = waiting.gid.unwrap_or(attr.gid);
    if let Some(t) = waiting.atime {
        attr.atime = time(t);
    }
    if let Some(t) = waiting.mtime {
        attr.mtime = time(t);
    }
    attr.ctime = attr.ctime.max(at);
    attr
}

/// Whether `set` changes nothing.
pub fn is_empty(set: &SetAttr) -> bool {
    *set == SetAttr::default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use dfs_common::proto::meta::FileKind;
    use dfs_common::{InodeId, VolumeId};

    /// Attributes of inode `ino` whose times are all `secs`.
    pub(crate) fn attr(ino: u64, kind: FileKind, mode: u32, secs: i64) -> Attr {
        let t = Timestamp { secs, nanos: 0 };
        Attr {
            ino: InodeId(ino),
            volume: VolumeId(1),
            kind,
            mode,
            uid: 0,
            gid: 0,
            nlink: 1,
            size: 10,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            rdev: 0,
            has_xattrs: false,
        }
    }

    fn file(mode: u32) -> Attr {
        attr(7, FileKind::File, mode, 100)
    }

    fn mode(m: u32) -> SetAttr {
        SetAttr {
            mode: Some(m),
            ..SetAttr::default()
        }
    }

    #[test]
    fn only_changes_that_take_no_access_away_wait() {
        let base = file(0o600);
        assert!(may_wait(&mode(0o644), &base), "bits added");
        assert!(may_wait(&mode(0o600), &base), "nothing changed");
        assert!(!may_wait(&mode(0o640), &file(0o644)), "bits removed");
        assert!(!may_wait(&mode(0o4755), &file(0o755)), "setuid added");
        assert!(!may_wait(&mode(0o755), &file(0o4755)), "setuid removed");
        let owner = |uid, gid| SetAttr {
            uid: Some(uid),
            gid: Some(gid),
            ..SetAttr::default()
        };
        assert!(may_wait(&owner(0, 0), &base), "the same owner");
        assert!(!may_wait(&owner(1000, 0), &base), "a new owner");
        assert!(!may_wait(&owner(0, 1000), &base), "a new group");
        let size = SetAttr {
            size: Some(0),
            ..SetAttr::default()
        };
        assert!(!may_wait(&size, &base), "a truncate");
        let times = SetAttr {
            atime: Some(TimeSet::Now),
            mtime: Some(TimeSet::At(Timestamp { secs: 5, nanos: 0 })),
            ..SetAttr::default()
        };
        assert!(may_wait(&times, &base), "times");
    }

    #[test]
    fn waiting_changes_merge_and_show_in_the_attributes() {
        let mut waiting = SetAttr::default();
        assert!(is_empty(&waiting));
        let then = Timestamp { secs: 5, nanos: 0 };
        merge(
            &mut waiting,
            &SetAttr {
                mtime: Some(TimeSet::At(then)),
                mode: Some(0o640),
                ..SetAttr::default()
            },
        );
        merge(&mut waiting, &mode(0o644));
        assert_eq!(waiting.mode, Some(0o644), "the later mode wins");
        assert_eq!(waiting.mtime, Some(TimeSet::At(then)), "the time stays");
        let at = Timestamp {
            secs: 200,
            nanos: 0,
        };
        let shown = apply(&waiting, file(0o600), at);
        assert_eq!((shown.mode, shown.mtime, shown.ctime), (0o644, then, at));
        assert_eq!(shown.atime, file(0o600).atime, "atime untouched");
        let now = SetAttr {
            atime: Some(TimeSet::Now),
            ..SetAttr::default()
        };
        assert_eq!(apply(&now, file(0o600), at).atime, at);
    }
}
