//! Wire types of the dfs services. Every response on the wire is `Result<Reply, FsError>`: for
//! the chunk servers one reply enum, for the metadata server the reply type of the request
//! ([`meta::MetaRpc`]).

pub mod chunk;
pub mod meta;

#[cfg(test)]
mod fuzz;

/// Longest file name, as on Linux.
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target.
pub const MAX_SYMLINK_LEN: usize = 4096;
/// Longest extended-attribute name and value, as on Linux.
pub const MAX_XATTR_NAME_LEN: usize = 255;
pub const MAX_XATTR_VALUE_LEN: usize = 64 * 1024;
/// Largest block a volume may use; bounds every shard a chunk server accepts.
pub const MAX_BLOCK_SIZE: u64 = 64 * 1024 * 1024;
/// Default block size of a new volume.
pub const DEFAULT_BLOCK_SIZE: u64 = 4 * 1024 * 1024;
/// Largest file size: 2^63 - 1, the largest `off_t`.
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;
/// Most extents one layout reply holds; a reply with this many may end before the range asked.
pub const MAX_LAYOUT_EXTENTS: usize = 4096;
/// Small writes may be kept in the metadata store instead of in erasure-coded blocks
/// ("inline", see `WriteInline`): a small file, or a small append, then costs one metadata
/// commit to write and no shard reads to read. One inline write carries at most this many
/// bytes (and the first format of `WriteInline` only lets them end within a file's first
/// this many bytes).
pub const MAX_INLINE_END: u64 = 64 * 1024;
/// Most bytes of inline blocks one file may refer to: what bounds the metadata a file costs.
/// A writer past it moves the file's inline tail into an erasure-coded block
/// (`CommitIfUnchanged`), which frees the allowance again.
pub const MAX_INLINE_PER_FILE: u64 = 2 * MAX_INLINE_END;
/// Most extents one `CommitWrite` may carry; a writer commits longer streams in steps.
pub const MAX_COMMIT_EXTENTS: usize = 1024;
/// Most shards one `CheckShards` request may ask about.
pub const MAX_CHECK_SHARDS: usize = 4096;
