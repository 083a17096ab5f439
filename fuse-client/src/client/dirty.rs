//! Written bytes not yet sent to the cluster, as non-overlapping runs keyed by file offset.
//! Overlapping and adjacent writes merge into one run; newer bytes win.

use std::collections::BTreeMap;

#[derive(Default, Debug)]
pub struct DirtyBuffer {
    runs: BTreeMap<u64, Vec<u8>>,
    bytes: usize,
    /// Room a run is given once it grows past [`GROW_TO_BLOCK`]: a block and its parity, so
    /// that a run cut into a block is encoded in place, never copied to a larger buffer.
    run_capacity: usize,
}

/// A run growing past this many bytes is given its whole `run_capacity` at once (smaller ones
/// grow as vectors do, so small files do not hold a block's worth of memory).
const GROW_TO_BLOCK: usize = 1 << 20;

impl DirtyBuffer {
    /// A buffer whose runs grow straight to `run_capacity` bytes once past 1 MiB (see
    /// [`FileHandle::write_buffer`](super::file::FileHandle::write_buffer)).
    pub fn with_run_capacity(run_capacity: usize) -> Self {
        DirtyBuffer {
            run_capacity,
            ..DirtyBuffer::default()
        }
    }

    /// Makes room in `run` for `len` bytes in all.
    fn reserve(&self, run: &mut Vec<u8>, len: usize) {
        if len <= run.capacity() {
            return;
        }
        let target = if len >= GROW_TO_BLOCK && len <= self.run_capacity {
            self.run_capacity
        } else {
            len.max(run.capacity() * 2)
        };
        run.reserve_exact(target - run.len());
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Where the last buffered byte ends; 0 when nothing is buffered.
    pub fn end(&self) -> u64 {
        self.runs
            .last_key_value()
            .map_or(0, |(&start, run)| start + run.len() as u64)
    }

    /// Takes ownership of `data`: when it touches no buffered run it is kept as it is, with
    /// no copy (the common case of a large sequential write).
    pub fn write_owned(&mut self, offset: u64, data: Vec<u8>) {
        let end = offset + data.len() as u64;
        let touches_before = self
            .runs
            .range(..=offset)
            .next_back()
            .is_some_and(|(&s, r)| s + r.len() as u64 >= offset);
        let touches_after = self.runs.range(offset + 1..=end).next().is_some();
        if data.is_empty() || touches_before || touches_after {
            self.write(offset, &data);
        } else {
            self.bytes += data.len();
            self.runs.insert(offset, data);
        }
    }

    /// The length of the run a write of `len` bytes at `offset` would leave (it merges with
    /// every run it overlaps or touches), without writing.
    pub fn run_len_after(&self, offset: u64, len: usize) -> u64 {
        let end = offset + len as u64;
        let start = match self.runs.range(..=offset).next_back() {
            Some((&s, run)) if s + run.len() as u64 >= offset => s,
            _ => offset,
        };
        let last_end = self
            .runs
            .range(start..=end)
            .map(|(&s, run)| s + run.len() as u64)
            .max()
            .unwrap_or(end);
        last_end.max(end) - start
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        // Runs that overlap or touch [offset, end).
        let mut touching: Vec<u64> = Vec::new();
        if let Some((&start, run)) = self.runs.range(..=offset).next_back() {
            if start + run.len() as u64 >= offset {
                touching.push(start);
            }
        }
        touching.extend(self.runs.range(offset + 1..=end).map(|(&s, _)| s));
        touching.dedup();
        let Some(&first) = touching.first() else {
            self.runs.insert(offset, data.to_vec());
            self.bytes += data.len();
            return;
        };
        let new_start = first.min(offset);
        let mut new_end = end;
        for s in &touching {
            new_end = new_end.max(s + self.runs[s].len() as u64);
        }
        let mut merged = if first <= offset {
            self.runs.remove(&first).expect("run exists")
        } else {
            Vec::new()
        };
        self.bytes -= merged.len();
        let new_len = (new_end - new_start) as usize;
        self.reserve(&mut merged, new_len);
        if touching.len() == 1 && first <= offset && end == new_end {
            // The common case, a write at or over the end of one run: copied once, no zeroing.
            merged.truncate((offset - first) as usize);
            merged.extend_from_slice(data);
            self.bytes += merged.len();
            self.runs.insert(new_start, merged);
            return;
        }
        merged.resize(new_len, 0);
        for s in touching.iter().filter(|&&s| s != first || first > offset) {
            let run = self.runs.remove(s).expect("run exists");
            self.bytes -= run.len();
            let at = (s - new_start) as usize;
            merged[at..at + run.len()].copy_from_slice(&run);
        }
        let at = (offset - new_start) as usize;
        merged[at..at + data.len()].copy_from_slice(data);
        self.bytes += merged.len();
        self.runs.insert(new_start, merged);
    }

    /// Removes and returns every whole `block_size` piece from the front of each run.
    pub fn take_full_blocks(&mut self, block_size: usize) -> Vec<(u64, Vec<u8>)> {
        let full: Vec<u64> = self
            .runs
            .iter()
            .filter(|(_, r)| r.len() >= block_size)
            .map(|(&s, _)| s)
            .collect();
        let mut out = Vec::new();
        for start in full {
            self.split_run(start, block_size, &mut out);
        }
        out
    }

    /// [`DirtyBuffer::take_full_blocks`] of the one run holding `offset`: after a write at
    /// `offset`, the only run that can have grown to a block. Costs a lookup, not a walk over
    /// every run (thousands after scattered small writes).
    pub fn take_full_blocks_at(&mut self, offset: u64, block_size: usize) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let holding = self
            .runs
            .range(..=offset)
            .next_back()
            .filter(|(_, r)| r.len() >= block_size)
            .map(|(&s, _)| s);
        if let Some(start) = holding {
            self.split_run(start, block_size, &mut out);
        }
        out
    }

    /// Cuts whole `block_size` pieces from the front of the run at `start` into `out`.
    fn split_run(&mut self, start: u64, block_size: usize, out: &mut Vec<(u64, Vec<u8>)>) {
        let mut run = self.runs.remove(&start).expect("run exists");
        self.bytes -= run.len();
        let mut at = start;
        while run.len() >= block_size {
            let rest = run.split_off(block_size);
            out.push((at, run));
            at += block_size as u64;
            run = rest;
        }
        if !run.is_empty() {
            self.bytes += run.len();
            self.runs.insert(at, run);
        }
    }

    /// Removes and returns everything, cut into pieces of at most `block_size`.
    pub fn take_all(&mut self, block_size: usize) -> Vec<(u64, Vec<u8>)> {
        let mut out = self.take_full_blocks(block_size);
        out.extend(std::mem::take(&mut self.runs));
        self.bytes = 0;
        out
    }

    /// Drops everything at or beyond `size` (a truncate).
    pub fn truncate(&mut self, size: u64) {
        let beyond: Vec<u64> = self.runs.range(size..).map(|(&s, _)| s).collect();
        for s in beyond {
            self.bytes -= self.runs.remove(&s).expect("run exists").len();
        }
        if let Some((&start, run)) = self.runs.range_mut(..size).next_back() {
            let keep = (size - start) as usize;
            if run.len() > keep {
                self.bytes -= run.len() - keep;
                run.truncate(keep);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_apply(model: &mut Vec<Option<u8>>, offset: usize, data: &[u8]) {
        if model.len() < offset + data.len() {
            model.resize(offset + data.len(), None);
        }
        for (i, b) in data.iter().enumerate() {
            model[offset + i] = Some(*b);
        }
    }

    fn flatten(buf: &mut DirtyBuffer, bs: usize, len: usize) -> Vec<Option<u8>> {
        let mut out = vec![None; len];
        for (off, data) in buf.take_all(bs) {
            assert!(data.len() <= bs);
            for (i, b) in data.iter().enumerate() {
                assert!(out[off as usize + i].is_none(), "pieces overlap");
                out[off as usize + i] = Some(*b);
            }
        }
        out
    }

    #[test]
    fn random_writes_match_a_model() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        for _ in 0..200 {
            let mut buf = DirtyBuffer::default();
            let mut model = Vec::new();
            for _ in 0..20 {
                let off = rng.random_range(0..300usize);
                let len = rng.random_range(1..60usize);
                let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                buf.write(off as u64, &data);
                model_apply(&mut model, off, &data);
            }
            let total = model.iter().filter(|b| b.is_some()).count();
            assert_eq!(buf.bytes(), total);
            let got = flatten(&mut buf, 16, model.len());
            assert_eq!(got, model);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn the_run_a_write_leaves_is_known_before_it() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        for _ in 0..200 {
            let mut buf = DirtyBuffer::default();
            for _ in 0..20 {
                let off = rng.random_range(0..300u64);
                let len = rng.random_range(1..60usize);
                let predicted = buf.run_len_after(off, len);
                buf.write(off, &vec![1; len]);
                let (start, run) = buf.runs.range(..=off).next_back().expect("a run holds it");
                assert!(start + run.len() as u64 >= off + len as u64);
                assert_eq!(predicted, run.len() as u64, "write of {len} at {off}");
            }
        }
    }

    #[test]
    fn a_block_written_in_pieces_has_room_for_its_parity() {
        const MIB: usize = 1 << 20;
        let (block, encoded) = (4 * MIB, 6 * MIB);
        let mut buf = DirtyBuffer::with_run_capacity(encoded);
        let mut want = Vec::new();
        for i in 0..4u8 {
            let piece = vec![i; MIB];
            want.extend_from_slice(&piece);
            buf.write_owned(u64::from(i) * MIB as u64, piece);
        }
        let blocks = buf.take_full_blocks_at(0, block);
        assert_eq!(blocks.len(), 1);
        assert!(blocks[0].1 == want);
        assert!(blocks[0].1.capacity() >= encoded, "encoding would copy it");

        // Small files keep small runs.
        let mut small = DirtyBuffer::with_run_capacity(encoded);
        for i in 0..16u64 {
            small.write(i * 4096, &[1; 4096]);
        }
        let runs = small.take_all(block);
        assert_eq!(runs.len(), 1);
        assert!(runs[0].1.capacity() < MIB);
    }

    #[test]
    fn full_blocks_and_truncate() {
        let mut buf = DirtyBuffer::default();
        buf.write(0, &[1; 10]);
        buf.write(10, &[2; 10]);
        assert!(
            buf.take_full_blocks_at(0, 32).is_empty(),
            "no run of 32 bytes"
        );
        let blocks = buf.take_full_blocks_at(3, 8);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[1].0, 8);
        assert_eq!(buf.bytes(), 4);
        assert_eq!(buf.end(), 20);
        buf.truncate(18);
        assert_eq!(buf.bytes(), 2);
        assert_eq!(buf.end(), 18);
        buf.truncate(0);
        assert!(buf.is_empty());
    }
}
