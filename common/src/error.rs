//! The error every dfs service returns. It crosses the wire, so it is serializable, and it maps
//! to exactly one errno in [`FsError::errno`], the one place that mapping lives.

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub type FsResult<T> = Result<T, FsError>;

#[derive(Clone, Debug, Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("operation not permitted")]
    NotPermitted,
    #[error("permission denied")]
    AccessDenied,
    #[error("file name too long")]
    NameTooLong,
    #[error("no such attribute")]
    NoAttribute,
    #[error("value too large for the buffer or the limit")]
    Range,
    #[error("argument list too long: {0}")]
    TooBig(String),
    #[error("file too large")]
    FileTooLarge,
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("no space left: {0}")]
    NoSpace(String),
    #[error("read-only file system")]
    ReadOnly,
    #[error("too many levels of symbolic links")]
    Loop,
    #[error("operation not supported: {0}")]
    NotSupported(String),
    #[error("not available: {0}")]
    Unavailable(String),
    #[error("data corrupt: {0}")]
    Corrupt(String),
    #[error("timed out: {0}")]
    TimedOut(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("I/O error: {0}")]
    Io(String),
    #[error("a conflicting lock is held")]
    Locked,
    #[error("waiting for this lock would deadlock")]
    Deadlock,
    #[error("interrupted")]
    Interrupted,
    #[error("file locks lost: {0}")]
    LocksLost(String),
    #[error("disk quota exceeded: {0}")]
    QuotaExceeded(String),
    #[error("access denied: {0}")]
    Denied(String),
    /// The metadata server asked is not the leader of its group; the leader's address, when
    /// it knows one, is given so the caller can go there.
    #[error("not the metadata leader{}", leader_hint(.0))]
    NotLeader(Option<String>),
    /// A guarded change found the file no longer as its caller last saw it; nothing was done.
    #[error("the file changed meanwhile: {0}")]
    Changed(String),
}

fn leader_hint(leader: &Option<String>) -> String {
    match leader {
        Some(addr) => format!(" (the leader is {addr})"),
        None => " (no leader is known: an election is under way)".into(),
    }
}

impl FsError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        FsError::Invalid(msg.into())
    }
    pub fn io(msg: impl std::fmt::Display) -> Self {
        FsError::Io(msg.to_string())
    }
    pub fn unavailable(msg: impl std::fmt::Display) -> Self {
        FsError::Unavailable(msg.to_string())
    }
    pub fn protocol(msg: impl std::fmt::Display) -> Self {
        FsError::Protocol(msg.to_string())
    }

    /// The Linux errno an application sees for this error.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => 2,           // ENOENT
            FsError::Exists => 17,            // EEXIST
            FsError::NotDir => 20,            // ENOTDIR
            FsError::IsDir => 21,             // EISDIR
            FsError::NotEmpty => 39,          // ENOTEMPTY
            FsError::NotPermitted => 1,       // EPERM
            FsError::AccessDenied => 13,      // EACCES
            FsError::NameTooLong => 36,       // ENAMETOOLONG
            FsError::NoAttribute => 61,       // ENODATA
            FsError::Range => 34,             // ERANGE
            FsError::TooBig(_) => 7,          // E2BIG
            FsError::FileTooLarge => 27,      // EFBIG
            FsError::Invalid(_) => 22,        // EINVAL
            FsError::NoSpace(_) => 28,        // ENOSPC
            FsError::ReadOnly => 30,          // EROFS
            FsError::Loop => 40,              // ELOOP
            FsError::NotSupported(_) => 95,   // EOPNOTSUPP
            FsError::Unavailable(_) => 5,     // EIO
            FsError::Corrupt(_) => 5,         // EIO
            FsError::TimedOut(_) => 110,      // ETIMEDOUT
            FsError::Protocol(_) => 71,       // EPROTO
            FsError::Io(_) => 5,              // EIO
            FsError::Locked => 11,            // EAGAIN
            FsError::Deadlock => 35,          // EDEADLK
            FsError::Interrupted => 4,        // EINTR
            FsError::LocksLost(_) => 5,       // EIO
            FsError::QuotaExceeded(_) => 122, // EDQUOT
            FsError::Denied(_) => 13,         // EACCES
            FsError::NotLeader(_) => 5,       // EIO
            FsError::Changed(_) => 116,       // ESTALE
        }
    }
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::NotFound => FsError::NotFound,
            std::io::ErrorKind::TimedOut => FsError::TimedOut(e.to_string()),
            _ => FsError::Io(e.to_string()),
        }
    }
}
