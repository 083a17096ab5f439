//! The dfs client: everything an application-facing front end (the FUSE mount, the `dfs` CLI)
//! needs to talk to a cluster.
//!
//! # Layout
//! - [`client`]: connection to the cluster, typed metadata calls, path resolution.
//! - [`client::file`]: open files: buffered, erasure-coded writes; direct and degraded reads.

pub mod client;
pub mod fuse;

pub use client::file::FileHandle;
pub use client::Client;
