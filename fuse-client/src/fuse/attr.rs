//! Translation between dfs types and fuser's: inode numbers, attributes, errors.

use dfs_common::proto::meta::{Attr, FileKind};
use dfs_common::{FsError, InodeId};
use fuser::{Errno, FileAttr, FileType, INodeNo};

/// Maps inode numbers: the kernel knows the volume root as inode 1; dfs never hands out 1.
#[derive(Clone, Copy, Debug)]
pub struct InodeMap {
    pub root: InodeId,
}

impl InodeMap {
    pub fn to_dfs(&self, ino: INodeNo) -> InodeId {
        if ino.0 == 1 {
            self.root
        } else {
            InodeId(ino.0)
        }
    }

    pub fn to_fuse(&self, ino: InodeId) -> INodeNo {
        if ino == self.root {
            INodeNo(1)
        } else {
            INodeNo(ino.0)
        }
    }

    pub fn file_attr(&self, a: &Attr) -> FileAttr {
        FileAttr {
            ino: self.to_fuse(a.ino),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: a.atime.as_system_time(),
            mtime: a.mtime.as_system_time(),
            ctime: a.ctime.as_system_time(),
            crtime: a.crtime.as_system_time(),
            kind: file_type(a.kind),
            perm: (a.mode & 0o7777) as u16,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev,
            blksize: 1 << 20,
            flags: 0,
        }
    }
}

/// Attributes that carry only an inode number and the directory type, for the "." and ".."
/// entries of readdirplus, which the kernel does not cache.
pub fn dir_stub(ino: INodeNo) -> FileAttr {
    let epoch = std::time::UNIX_EPOCH;
    FileAttr {
        ino,
        size: 0,
        blocks: 0,
        atime: epoch,
        mtime: epoch,
        ctime: epoch,
        crtime: epoch,
        kind: FileType::Directory,
        perm: 0o755,
        nlink: 2,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 1 << 20,
        flags: 0,
    }
}

pub fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

/// The kind encoded in the `S_IFMT` bits of a mode.
pub fn kind_from_mode(mode: u32) -> Option<FileKind> {
    Some(match mode & libc::S_IFMT {
        libc::S_IFREG | 0 => FileKind::File,
        libc::S_IFDIR => FileKind::Dir,
        libc::S_IFLNK => FileKind::Symlink,
        libc::S_IFIFO => FileKind::Fifo,
        libc::S_IFSOCK => FileKind::Socket,
        libc::S_IFCHR => FileKind::CharDevice,
        libc::S_IFBLK => FileKind::BlockDevice,
        _ => return None,
    })
}

pub fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}
