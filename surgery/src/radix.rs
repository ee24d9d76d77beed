//! Exact order statistics of 32-bit keys without holding them: a first pass counts keys by
//! their top 16 bits, a second pass counts, for the few buckets holding the wanted ranks, the
//! low 16 bits. Non-negative f32 values order like their bit patterns, so this finds exact
//! quantiles of f32 SNRs in memory independent of their number.

/// Buckets of the first pass (top 16 bits of a key).
pub const BUCKETS: usize = 1 << 16;

/// First-pass counts by the top 16 bits of a key.
#[derive(Debug, Clone)]
pub struct TopHistogram {
    /// Boxed: 512 KiB.
    counts: Box<[u64; BUCKETS]>,
    total: u64,
}

impl Default for TopHistogram {
    fn default() -> Self {
        // Built on the heap (an array this large would pass through the stack first).
        let counts = vec![0; BUCKETS].into_boxed_slice().try_into().unwrap_or_else(|_| unreachable!("BUCKETS counts"));
        TopHistogram { counts, total: 0 }
    }
}

impl TopHistogram {
    /// Counts `key`.
    #[inline(always)]
    pub fn add(&mut self, key: u32) {
        self.counts[(key >> 16) as usize] += 1;
        self.total += 1;
    }

    /// The counts by bucket, for counting a run of keys in a tight loop (no total kept per key,
    /// no bounds check: indexed by `key >> 16`); [`TopHistogram::counted`] adds them to the total.
    #[inline(always)]
    pub fn buckets_mut(&mut self) -> &mut [u64; BUCKETS] {
        &mut self.counts
    }

    /// Adds `n` keys counted through [`TopHistogram::buckets_mut`] to the total.
    pub fn counted(&mut self, n: u64) {
        self.total += n;
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &TopHistogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
    }

    /// Keys counted.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The bucket holding the key of rank `rank` (0-based, in ascending order) and that key's
    /// rank within the bucket; `None` past the end.
    pub fn locate(&self, rank: u64) -> Option<(u32, u64)> {
        let mut below = 0u64;
        for (top, &c) in self.counts.iter().enumerate() {
            if rank < below + c {
                return Some((top as u32, rank - below));
            }
            below += c;
        }
        None
    }

    /// Keys in buckets below `top`.
    pub fn count_below(&self, top: u32) -> u64 {
        self.counts[..top as usize].iter().sum()
    }
}

/// Second-pass counts of the low 16 bits of keys in a few chosen buckets.
#[derive(Debug, Clone)]
pub struct LowHistograms {
    /// Bucket -> 1 + index into `counts`, 0 for buckets not chosen.
    slot: Vec<u8>,
    counts: Vec<Vec<u64>>,
}

impl LowHistograms {
    /// Counters for the buckets `tops` (duplicates share one; at most 255 distinct).
    pub fn new(tops: impl IntoIterator<Item = u32>) -> LowHistograms {
        let mut h = LowHistograms { slot: vec![0; BUCKETS], counts: Vec::new() };
        for top in tops {
            let s = &mut h.slot[top as usize & (BUCKETS - 1)];
            if *s == 0 && h.counts.len() < 255 {
                h.counts.push(vec![0; BUCKETS]);
                *s = h.counts.len() as u8;
            }
        }
        h
    }

    /// The chosen buckets, ascending.
    pub fn tops(&self) -> impl Iterator<Item = u32> + '_ {
        self.slot.iter().enumerate().filter(|(_, s)| **s != 0).map(|(top, _)| top as u32)
    }

    /// Whether `key`'s bucket was chosen.
    #[inline(always)]
    pub fn wants(&self, key: u32) -> bool {
        self.slot[(key >> 16) as usize] != 0
    }

    /// Counts `key` if its bucket was chosen.
    #[inline(always)]
    pub fn add(&mut self, key: u32) {
        let s = self.slot[(key >> 16) as usize];
        if s != 0 {
            self.counts[s as usize - 1][(key & 0xffff) as usize] += 1;
        }
    }

    /// The key of rank `rank` within chosen bucket `top` (as [`TopHistogram::locate`] gave it).
    pub fn key_at(&self, top: u32, rank: u64) -> Option<u32> {
        let s = *self.slot.get(top as usize)?;
        let counts = self.counts.get((s as usize).checked_sub(1)?)?;
        let mut below = 0u64;
        for (low, &c) in counts.iter().enumerate() {
            if rank < below + c {
                return Some(top << 16 | low as u32);
            }
            below += c;
        }
        None
    }

    /// Keys of chosen bucket `key >> 16` that are smaller than `key`.
    pub fn count_below(&self, key: u32) -> u64 {
        let s = self.slot[(key >> 16) as usize];
        match s.checked_sub(1) {
            Some(i) => self.counts[i as usize][..(key & 0xffff) as usize].iter().sum(),
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rank_resolves_to_the_sorted_key() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let keys: Vec<u32> = (0..50_000)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Clustered keys (few buckets, many ties) and spread ones.
                if i % 3 == 0 { 0x3f80_0000 | (state as u32 & 0x3f) } else { (state >> 33) as u32 }
            })
            .collect();
        let mut top = TopHistogram::default();
        keys.iter().for_each(|k| top.add(*k));
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        let ranks: Vec<u64> = (0..keys.len() as u64).step_by(997).chain([keys.len() as u64 - 1]).collect();
        let located: Vec<(u32, u64)> = ranks.iter().map(|r| top.locate(*r).expect("in range")).collect();
        let mut low = LowHistograms::new(located.iter().map(|l| l.0));
        keys.iter().for_each(|k| low.add(*k));
        for (r, (t, within)) in ranks.iter().zip(&located) {
            let key = low.key_at(*t, *within).expect("resolved");
            assert_eq!(key, sorted[*r as usize], "rank {r}");
            let below = sorted.partition_point(|k| *k < key) as u64;
            assert_eq!(top.count_below(*t) + low.count_below(key), below);
        }
        assert_eq!(top.locate(keys.len() as u64), None);
    }
}
