//! The FUSE front end: a thin adapter from fuser's callbacks to the client library.
//!
//! Every callback translates its arguments, spawns the work on the tokio runtime and replies
//! from there, so a slow cluster call never blocks fuser's request loop.
//!
//! - [`fs`]: the `fuser::Filesystem` implementation.
//! - [`attr`]: attribute and errno translation.
//! - [`coherence`]: drops what other clients changed from this mount's caches.
//! - [`dir_names`]: the names in directories whose whole contents the mount knows.
//! - [`leases`]: how long the kernel may keep names and attributes.
//! - [`options`]: mount specs and `-o` options, as `mount -t dfs` passes them.
//! - [`metrics`]: FUSE operation counts and latencies, and bytes, for `metrics=ADDR`.
//! - [`readahead`]: the kernel's read-ahead window for the mount.
//! - [`xattrs`]: extended attributes recently found absent, so writes need not ask each time.

pub mod attr;
pub mod coherence;
pub mod dir_names;
pub mod fs;
pub mod leases;
pub mod metrics;
pub mod options;
pub mod readahead;
pub mod signals;
pub mod xattrs;
