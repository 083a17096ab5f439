//! Shared building blocks of dfs.
//!
//! # Layout
//! - [`capability`]: shard capabilities, the metadata server's permission to store a shard.
//! - [`ids`]: typed identifiers (volumes, inodes, blocks, servers) and timestamps.
//! - [`ec`]: the erasure-coding policy type, validated once when it is built.
//! - [`error`]: the one errno-shaped error that crosses the wire.
//! - [`durable`]: small files (keys, ids) replaced atomically and synced.
//! - [`fault`]: named fault points that tests arm to drive races deterministically.
//! - [`erasure`]: Reed-Solomon encode and reconstruct (the only user of reed-solomon-erasure).
//! - [`checksum`]: blake3 hashes per sub-block of a shard.
//! - [`model`]: plain values shared by the wire protocol and the metadata store.
//! - [`name`]: file names and symlink targets (any bytes) as UTF-8 strings on the wire.
//! - [`proto`]: request and response types of the metadata and chunk services.
//! - [`codec`]: length-prefixed, bounded bincode frames on QUIC streams.
//! - [`net`]: QUIC endpoints, TLS with the cluster CA, the RPC client and server loop.
//! - [`telemetry`]: logging set-up shared by the binaries; [`memory`]: allocator settings.
//! - [`metrics`]: Prometheus counters, histograms and gauges; [`http`] serves them.

pub mod capability;
pub mod checksum;
pub mod codec;
pub mod config;
pub mod disk;
pub mod durable;
pub mod ec;
pub mod erasure;
pub mod error;
pub mod fault;
pub mod http;
pub mod ids;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod name;
pub mod net;
pub mod proto;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;

pub use ec::EcPolicy;
pub use error::{FsError, FsResult};
pub use ids::{BlockId, InodeId, ServerId, Timestamp, VolumeId};
