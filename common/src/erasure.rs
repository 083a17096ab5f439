//! Reed-Solomon erasure coding of blocks: the only module that touches reed-solomon-erasure.
//!
//! A block of `len` bytes is cut into k contiguous data shards of `ceil(len / k)` bytes (the
//! last one zero-padded), so a byte range of the block maps to byte ranges of at most k data
//! shards and a healthy read never decodes. Parity is computed byte-column-wise, so any byte
//! range `[a, b)` of a lost shard can be rebuilt from the same range of any k other shards.

use crate::ec::EcPolicy;
use crate::error::FsError;
use bytes::Bytes;
use reed_solomon_erasure::galois_8::ReedSolomon;

/// Encoder and decoder for one policy. Build it once and reuse it: construction inverts matrices.
pub struct Erasure {
    policy: EcPolicy,
    /// `None` when m == 0: there is no parity to compute.
    rs: Option<ReedSolomon>,
}

/// A block cut into its k+m shards, all in one buffer so each shard is a cheap slice.
pub struct EncodedBlock {
    buf: Bytes,
    shard_len: usize,
}

impl EncodedBlock {
    pub fn shard_len(&self) -> usize {
        self.shard_len
    }

    /// Shard `index` (0..k are data, k..k+m parity).
    pub fn shard(&self, index: usize) -> Bytes {
        self.buf
            .slice(index * self.shard_len..(index + 1) * self.shard_len)
    }
}

impl Erasure {
    pub fn new(policy: EcPolicy) -> Result<Self, FsError> {
        let rs = if policy.m() == 0 {
            None
        } else {
            Some(
                ReedSolomon::new(policy.k(), policy.m())
                    .map_err(|e| FsError::invalid(format!("erasure policy {policy}: {e:?}")))?,
            )
        };
        Ok(Erasure { policy, rs })
    }

    pub fn policy(&self) -> EcPolicy {
        self.policy
    }

    /// Encodes `block` into k data and m parity shards.
    pub fn encode(&self, block: &[u8]) -> EncodedBlock {
        let mut buf = Vec::with_capacity(self.encoded_len(block.len()));
        buf.extend_from_slice(block);
        self.encode_owned(buf)
    }

    /// Bytes of a block of `block_len` bytes once encoded (all k+m shards).
    pub fn encoded_len(&self, block_len: usize) -> usize {
        self.policy.shard_len(block_len as u64) as usize * self.policy.total()
    }

    /// Encodes a block held in `buf`, in place: the data stays where it is and the padding and
    /// parity are appended, so a buffer allocated with [`Erasure::encoded_len`] capacity is
    /// never copied.
    pub fn encode_owned(&self, mut buf: Vec<u8>) -> EncodedBlock {
        let k = self.policy.k();
        let shard_len = self.policy.shard_len(buf.len() as u64) as usize;
        buf.resize(shard_len * self.policy.total(), 0);
        if let (Some(rs), true) = (&self.rs, shard_len > 0) {
            let (data, parity) = buf.split_at_mut(k * shard_len);
            let data: Vec<&[u8]> = data.chunks(shard_len).collect();
            let mut parity: Vec<&mut [u8]> = parity.chunks_mut(shard_len).collect();
            // Cannot fail: shard counts and lengths are consistent by construction.
            rs.encode_sep(&data, &mut parity)
                .expect("shard counts and lengths are consistent");
        }
        EncodedBlock {
            buf: Bytes::from(buf),
            shard_len,
        }
    }

    /// Fills in the missing data shards (`None`) from any k present shards of equal length.
    /// Parity shards that are missing stay missing; use [`Erasure::reconstruct_all`] for them.
    pub fn reconstruct_data(&self, shards: &mut [Option<Vec<u8>>]) -> Result<(), FsError> {
        self.check_shards(shards)?;
        match &self.rs {
            Some(rs) => rs
                .reconstruct_data(shards)
                .map_err(|e| FsError::unavailable(format!("cannot reconstruct: {e:?}"))),
            None => Ok(()),
        }
    }

    /// Fills in every missing shard, data and parity, from any k present shards.
    pub fn reconstruct_all(&self, shards: &mut [Option<Vec<u8>>]) -> Result<(), FsError> {
        self.check_shards(shards)?;
        match &self.rs {
            Some(rs) => rs
                .reconstruct(shards)
                .map_err(|e| FsError::unavailable(format!("cannot reconstruct: {e:?}"))),
            None => Ok(()),
        }
    }

    fn check_shards(&self, shards: &[Option<Vec<u8>>]) -> Result<(), FsError> {
        if shards.len() != self.policy.total() {
            return Err(FsError::invalid(format!(
                "expected {} shards, got {}",
                self.policy.total(),
                shards.len()
            )));
        }
        let present = shards.iter().filter(|s| s.is_some()).count();
        if present < self.policy.k() {
            return Err(FsError::unavailable(format!(
                "only {present} of {} shards available, {} needed",
                self.policy.total(),
                self.policy.k()
            )));
        }
        if self.rs.is_none() && present < shards.len() {
            return Err(FsError::unavailable(
                "a shard is missing and the policy has no parity",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 7) as u8).collect()
    }

    #[test]
    fn encode_then_lose_m_shards_and_rebuild() {
        for (k, m) in [(4u8, 2u8), (2, 1), (6, 3), (1, 0), (3, 0)] {
            let policy = EcPolicy::new(k, m).unwrap();
            let ec = Erasure::new(policy).unwrap();
            for len in [1usize, 7, 1000, 65537] {
                let block = sample(len);
                let enc = ec.encode(&block);
                let mut joined = Vec::new();
                for i in 0..policy.k() {
                    joined.extend_from_slice(&enc.shard(i));
                }
                assert_eq!(&joined[..len], &block[..]);
                if m == 0 {
                    continue;
                }
                let mut shards: Vec<Option<Vec<u8>>> = (0..policy.total())
                    .map(|i| Some(enc.shard(i).to_vec()))
                    .collect();
                for lost in shards.iter_mut().take(policy.m()) {
                    *lost = None;
                }
                ec.reconstruct_all(&mut shards).unwrap();
                for (i, s) in shards.iter().enumerate() {
                    assert_eq!(s.as_deref().unwrap(), &enc.shard(i)[..]);
                }
            }
        }
    }

    #[test]
    fn too_few_shards_is_an_error_not_a_panic() {
        let ec = Erasure::new(EcPolicy::new(4, 2).unwrap()).unwrap();
        let enc = ec.encode(&sample(100));
        let mut shards: Vec<Option<Vec<u8>>> =
            (0..6).map(|i| Some(enc.shard(i).to_vec())).collect();
        for s in shards.iter_mut().take(3) {
            *s = None;
        }
        assert!(matches!(
            ec.reconstruct_data(&mut shards),
            Err(FsError::Unavailable(_))
        ));
        assert!(ec.reconstruct_data(&mut shards[..5]).is_err());
    }
}
