//! Choosing chunk servers for the shards of a block: a pure function of the candidates.
//!
//! Every shard of a block goes to a distinct server. Servers with more free space are preferred
//! (coarsely, in 5% steps of fullness), and a per-block hash breaks ties, so equal servers share
//! the load instead of the same few taking every block.

use dfs_common::{FsError, FsResult, ServerId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: ServerId,
    pub capacity: u64,
    pub used: u64,
}

impl Candidate {
    fn free(&self) -> u64 {
        self.capacity.saturating_sub(self.used)
    }

    /// Fullness in 5% steps (0..=20).
    fn fullness_step(&self) -> u64 {
        if self.capacity == 0 {
            return 20;
        }
        (self.used.min(self.capacity) as u128 * 20 / self.capacity as u128) as u64
    }
}

fn mix(seed: u64, id: ServerId) -> u64 {
    // splitmix64 of seed and id: cheap, well spread, deterministic.
    let mut z = seed ^ id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Picks `count` distinct servers from `candidates`, skipping `exclude` and servers without
/// `min_free` bytes free.
pub fn place(
    candidates: &[Candidate],
    count: usize,
    min_free: u64,
    seed: u64,
    exclude: &[ServerId],
) -> FsResult<Vec<ServerId>> {
    let eligible: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| !exclude.contains(&c.id))
        .collect();
    if eligible.len() < count {
        return Err(FsError::unavailable(format!(
            "need {count} more live chunk servers for this block, {} available",
            eligible.len()
        )));
    }
    let mut usable: Vec<&Candidate> = eligible
        .into_iter()
        .filter(|c| c.free() >= min_free)
        .collect();
    if usable.len() < count {
        return Err(FsError::NoSpace(format!(
            "need {count} chunk servers with free space, {} have it",
            usable.len()
        )));
    }
    usable.sort_by_key(|c| (c.fullness_step(), mix(seed, c.id)));
    Ok(usable.into_iter().take(count).map(|c| c.id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn servers(n: u64) -> Vec<Candidate> {
        (1..=n)
            .map(|i| Candidate {
                id: ServerId(i),
                capacity: 1000,
                used: 0,
            })
            .collect()
    }

    #[test]
    fn distinct_and_spread() {
        let c = servers(9);
        let mut uses: HashMap<ServerId, u32> = HashMap::new();
        for seed in 0..900 {
            let p = place(&c, 6, 1, seed, &[]).unwrap();
            let mut d = p.clone();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 6);
            for s in p {
                *uses.entry(s).or_default() += 1;
            }
        }
        // 900 blocks x 6 shards over 9 servers: 600 each on average.
        for (_, n) in uses {
            assert!((450..=750).contains(&n), "uneven placement: {n}");
        }
    }

    #[test]
    fn skips_full_and_excluded_and_prefers_empty() {
        let mut c = servers(4);
        c[0].used = 1000;
        let p = place(&c, 3, 1, 7, &[]).unwrap();
        assert!(!p.contains(&ServerId(1)));
        assert!(place(&c, 3, 1, 7, &[ServerId(2)]).is_err());
        c[0].used = 900;
        c[1].used = 500;
        let p = place(&c, 2, 1, 7, &[]).unwrap();
        let mut p2 = p.clone();
        p2.sort();
        assert_eq!(p2, vec![ServerId(3), ServerId(4)]);
    }
}
