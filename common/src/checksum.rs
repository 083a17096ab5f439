//! blake3 checksums per sub-block of a shard, so a partial read verifies only what it reads.
//! Always hash whole sub-blocks: blake3 is fast on large buffers and slow on packet-sized pieces.

/// Bytes covered by one checksum.
pub const SUB_BLOCK: usize = 64 * 1024;

pub type Hash = [u8; 32];

/// One hash per [`SUB_BLOCK`] of `data` (the last sub-block may be shorter).
pub fn sub_block_hashes(data: &[u8]) -> Vec<Hash> {
    data.chunks(SUB_BLOCK).map(hash).collect()
}

pub fn hash(data: &[u8]) -> Hash {
    *blake3::hash(data).as_bytes()
}

/// Number of sub-blocks a shard of `len` bytes has.
pub fn sub_block_count(len: u64) -> u64 {
    len.div_ceil(SUB_BLOCK as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_hash_per_sub_block() {
        assert_eq!(sub_block_hashes(&[]).len(), 0);
        assert_eq!(sub_block_hashes(&[1]).len(), 1);
        assert_eq!(sub_block_hashes(&vec![0; SUB_BLOCK]).len(), 1);
        assert_eq!(sub_block_hashes(&vec![0; SUB_BLOCK + 1]).len(), 2);
        assert_eq!(sub_block_count(SUB_BLOCK as u64 + 1), 2);
        let a = sub_block_hashes(&vec![0; SUB_BLOCK + 1]);
        assert_ne!(a[0], a[1]);
    }
}
