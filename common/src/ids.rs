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
        Self::from_system_time(SystemTime::now())
    }

    /// As a `SystemTime`; a time the platform cannot represent (near `i64::MAX`, or nanoseconds
    /// out of range, from a hostile peer) comes out clamped, never as a panic.
    pub fn as_system_time(self) -> SystemTime {
        let nanos = self.nanos.min(999_999_999);
        let time = if self.secs >= 0 {
            UNIX_EPOCH.checked_add(std::time::Duration::new(self.secs as u64, nanos))
        } else {
            UNIX_EPOCH.checked_sub(std::time::Duration::new(self.secs.unsigned_abs(), 0))
        };
        time.unwrap_or_else(|| {
            // The largest span every platform's SystemTime holds (about 292 billion years).
            let far = std::time::Duration::from_secs(i64::MAX as u64 / 1_000_000_000);
            if self.secs >= 0 {
                UNIX_EPOCH + far
            } else {
                UNIX_EPOCH - far
            }
        })
    }

    /// Whether the time is well-formed (nanoseconds below one second).
    pub fn is_valid(self) -> bool {
        self.nanos < 1_000_000_000
    }

    /// From a `SystemTime`, saturating at the ends of the `i64` range.
    pub fn from_system_time(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: d.subsec_nanos(),
            },
            Err(e) => Timestamp {
                secs: i64::try_from(-i128::from(e.duration().as_secs())).unwrap_or(i64::MIN),
                nanos: 0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extreme_timestamps_convert_without_panicking() {
        for secs in [i64::MAX, i64::MAX - 1, i64::MIN, -1, 0, 1 << 62] {
            for nanos in [0, 999_999_999, u32::MAX] {
                let t = Timestamp { secs, nanos }.as_system_time();
                let _ = Timestamp::from_system_time(t);
            }
        }
        let t = Timestamp {
            secs: 1_700_000_000,
            nanos: 5,
        };
        assert_eq!(Timestamp::from_system_time(t.as_system_time()), t);
        assert!(!Timestamp {
            secs: 0,
            nanos: 1_000_000_000
        }
        .is_valid());
    }
}
