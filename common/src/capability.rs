//! Shard capabilities: the metadata server's written permission to store one shard.
//!
//! With each placement the metadata server hands the writer, per shard, a MAC over (block,
//! shard index, volume, chunk server, expiry) keyed by the cluster's capability key. A chunk
//! server stores a shard only with a valid, unexpired capability for exactly that shard, that
//! volume and itself, and checks it without a round trip (it learns the key from the metadata
//! server when it registers). So a client cannot store shards for blocks that were never
//! allocated to it (for example ids that will later belong to another volume), nor fill disks
//! outside any allocation.

use crate::ids::{ServerId, Timestamp, VolumeId};
use crate::proto::chunk::ShardKey;
use crate::{FsError, FsResult};
use serde::{Deserialize, Serialize};

/// How long a capability stays valid after its placement: far longer than any upload, short
/// enough that a leaked one soon stops working.
pub const CAPABILITY_LIFETIME_SECS: i64 = 3600;

/// Clock difference tolerated between the metadata server and a chunk server.
const CLOCK_SKEW_SECS: i64 = 300;

/// The secret both sides use; 32 random bytes made once per cluster.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilityKey(pub [u8; 32]);

impl std::fmt::Debug for CapabilityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CapabilityKey(..)")
    }
}

/// Permission to store one shard, for its volume, on one server, until `expires`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCapability {
    pub volume: VolumeId,
    pub expires: Timestamp,
    pub mac: [u8; 32],
}

impl CapabilityKey {
    pub fn generate() -> CapabilityKey {
        CapabilityKey(rand::random())
    }

    fn mac(
        &self,
        key: ShardKey,
        volume: VolumeId,
        server: ServerId,
        expires: Timestamp,
    ) -> [u8; 32] {
        let mut message = Vec::with_capacity(48);
        message.extend_from_slice(b"dfs-shard-capability-v1");
        message.extend_from_slice(&key.block.0.to_le_bytes());
        message.push(key.index);
        message.extend_from_slice(&volume.0.to_le_bytes());
        message.extend_from_slice(&server.0.to_le_bytes());
        message.extend_from_slice(&expires.secs.to_le_bytes());
        *blake3::keyed_hash(&self.0, &message).as_bytes()
    }

    /// A capability to store shard `key` of `volume` on `server`, valid from `now` on.
    pub fn grant(
        &self,
        key: ShardKey,
        volume: VolumeId,
        server: ServerId,
        now: Timestamp,
    ) -> ShardCapability {
        let expires = Timestamp {
            secs: now.secs.saturating_add(CAPABILITY_LIFETIME_SECS),
            nanos: 0,
        };
        ShardCapability {
            volume,
            expires,
            mac: self.mac(key, volume, server, expires),
        }
    }

    /// Checks that `cap` allows storing shard `key` of `volume` on `server` at `now`.
    pub fn check(
        &self,
        cap: &ShardCapability,
        key: ShardKey,
        volume: VolumeId,
        server: ServerId,
        now: Timestamp,
    ) -> FsResult<()> {
        if cap.volume != volume {
            return Err(FsError::Denied(format!(
                "the capability for shard {}/{} is for another volume",
                key.block, key.index
            )));
        }
        // blake3::Hash compares in constant time.
        let expected = blake3::Hash::from_bytes(self.mac(key, volume, server, cap.expires));
        if expected != blake3::Hash::from_bytes(cap.mac) {
            return Err(FsError::Denied(format!(
                "no valid capability to store shard {}/{} here",
                key.block, key.index
            )));
        }
        if now.secs > cap.expires.secs.saturating_add(CLOCK_SKEW_SECS) {
            return Err(FsError::Denied(format!(
                "the capability for shard {}/{} expired",
                key.block, key.index
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BlockId;

    #[test]
    fn a_capability_allows_exactly_its_shard_volume_server_and_time() {
        let k = CapabilityKey::generate();
        let key = ShardKey {
            block: BlockId(9),
            index: 2,
        };
        let (volume, server) = (VolumeId(1), ServerId(5));
        let now = Timestamp {
            secs: 1_000_000,
            nanos: 0,
        };
        let cap = k.grant(key, volume, server, now);
        assert!(k.check(&cap, key, volume, server, now).is_ok());
        let other_key = ShardKey { index: 3, ..key };
        assert!(k.check(&cap, other_key, volume, server, now).is_err());
        assert!(k.check(&cap, key, VolumeId(2), server, now).is_err());
        assert!(k.check(&cap, key, volume, ServerId(7), now).is_err());
        let late = Timestamp {
            secs: now.secs + CAPABILITY_LIFETIME_SECS + CLOCK_SKEW_SECS + 1,
            nanos: 0,
        };
        assert!(k.check(&cap, key, volume, server, late).is_err());
        let forged = ShardCapability {
            expires: late,
            ..cap
        };
        assert!(k.check(&forged, key, volume, server, now).is_err());
        assert!(CapabilityKey::generate()
            .check(&cap, key, volume, server, now)
            .is_err());
    }
}
