//! The dfs integration suite: real servers on 127.0.0.1, real QUIC, real files on disk.

mod access;
mod cli;
mod coherence;
mod copies;
mod crash;
mod data;
mod deploy;
mod faults;
mod full_disk;
mod group;
mod heal;
mod inline;
mod integrity;
mod model;
mod mount;
mod names;
mod namespace;
mod observe;
mod orphans;
mod shared_model;
mod sharing;
mod transport;
mod volumes;
