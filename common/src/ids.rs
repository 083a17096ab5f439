//! Typed identifiers, so a block id can never be passed where an inode id is expected.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// A volume: a namespace with its own root and erasure-coding policy.
    VolumeId
);
id_type!(
    /// An inode, unique across the whole cluster (not only within a volume).
    InodeId
);
id_type!(
    /// An immutable block of file data, stored as k+m shards.
    BlockId
);
id_type!(
    /// A chunk server. Chosen at random by the server on its first start and kept in its data
    /// directory, so it survives restarts and address changes.
    ServerId
);

impl ServerId {
    /// No server: the shard of that index is missing (it could not be written, or is lost).
    /// Real ids are odd, so this never names a server.
    pub const NONE: ServerId = ServerId(0);
}

/// Wall-clock time as seconds and nanoseconds since the Unix epoch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn now() -> Self {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                Timestamp {
                    secs: -(d.as_secs() as i64),
                    nanos: 0,
                }
            }
        }
    }

    pub fn as_system_time(self) -> SystemTime {
        if self.secs >= 0 {
            UNIX_EPOCH + std::time::Duration::new(self.secs as u64, self.nanos)
        } else {
            UNIX_EPOCH - std::time::Duration::new(self.secs.unsigned_abs(), 0)
        }
    }

    pub fn from_system_time(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => Timestamp {
                secs: -(e.duration().as_secs() as i64),
                nanos: 0,
            },
        }
    }
}
