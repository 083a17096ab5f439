//! The erasure-coding policy of a volume: k data shards and m parity shards per block.

use crate::error::FsError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Largest number of data shards a policy may have.
pub const MAX_DATA_SHARDS: u8 = 32;
/// Largest number of parity shards a policy may have.
pub const MAX_PARITY_SHARDS: u8 = 16;

/// A validated `k+m` policy. Fields are private so every value went through [`EcPolicy::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "(u8, u8)", into = "(u8, u8)")]
pub struct EcPolicy {
    k: u8,
    m: u8,
}

impl EcPolicy {
    pub fn new(k: u8, m: u8) -> Result<Self, FsError> {
        if k == 0 || k > MAX_DATA_SHARDS {
            return Err(FsError::invalid(format!(
                "k must be between 1 and {MAX_DATA_SHARDS}, got {k}"
            )));
        }
        if m > MAX_PARITY_SHARDS {
            return Err(FsError::invalid(format!(
                "m must be between 0 and {MAX_PARITY_SHARDS}, got {m}"
            )));
        }
        Ok(EcPolicy { k, m })
    }

    /// Data shards per block.
    pub fn k(self) -> usize {
        self.k as usize
    }

    /// Parity shards per block: how many shards (servers) a block may lose and still be read.
    pub fn m(self) -> usize {
        self.m as usize
    }

    /// All shards of a block.
    pub fn total(self) -> usize {
        self.k as usize + self.m as usize
    }

    /// Shards a block write must store to succeed: k + 1 (one failure still survivable), or all
    /// of them when there is no parity. With fewer servers up, writes go on with less
    /// redundancy rather than fail, down to this floor; repair restores the rest.
    pub fn min_write_shards(self) -> usize {
        (self.k() + 1).min(self.total())
    }

    /// Bytes each shard holds for a block of `block_len` bytes (data shards are zero-padded).
    pub fn shard_len(self, block_len: u64) -> u64 {
        block_len.div_ceil(self.k as u64)
    }
}

impl TryFrom<(u8, u8)> for EcPolicy {
    type Error = FsError;
    fn try_from((k, m): (u8, u8)) -> Result<Self, FsError> {
        EcPolicy::new(k, m)
    }
}

impl From<EcPolicy> for (u8, u8) {
    fn from(p: EcPolicy) -> (u8, u8) {
        (p.k, p.m)
    }
}

impl fmt::Display for EcPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{}", self.k, self.m)
    }
}

impl FromStr for EcPolicy {
    type Err = FsError;
    fn from_str(s: &str) -> Result<Self, FsError> {
        let bad = || {
            FsError::invalid(format!(
                "bad erasure-coding policy {s:?}: expected K+M, e.g. 4+2"
            ))
        };
        let (k, m) = s.split_once('+').ok_or_else(bad)?;
        let k: u8 = k.trim().parse().map_err(|_| bad())?;
        let m: u8 = m.trim().parse().map_err(|_| bad())?;
        EcPolicy::new(k, m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let p: EcPolicy = "4+2".parse().unwrap();
        assert_eq!((p.k(), p.m(), p.total()), (4, 2, 6));
        assert_eq!(p.min_write_shards(), 5);
        assert_eq!(EcPolicy::new(3, 0).unwrap().min_write_shards(), 3);
        assert_eq!(p.to_string(), "4+2");
        assert!("0+2".parse::<EcPolicy>().is_err());
        assert!("4-2".parse::<EcPolicy>().is_err());
        assert!("40+2".parse::<EcPolicy>().is_err());
        assert!("4+17".parse::<EcPolicy>().is_err());
        assert_eq!(p.shard_len(0), 0);
        assert_eq!(p.shard_len(1), 1);
        assert_eq!(p.shard_len(9), 3);
    }

    #[test]
    fn deserialize_rejects_invalid() {
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec((0u8, 2u8), cfg).unwrap();
        let r: Result<(EcPolicy, usize), _> = bincode::serde::decode_from_slice(&bytes, cfg);
        assert!(r.is_err());
    }
}
