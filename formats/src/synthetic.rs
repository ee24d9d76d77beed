//! Deterministic synthetic BNN checkpoints of any size, for benchmarks and scale tests:
//! Flipout-style dense layers whose mu and rho are drawn from a fixed-seed generator.

use std::path::Path;

use crate::bundle::BundleWriter;
use crate::convert::record_in_state_file;
use crate::dtype::DType;
use crate::error::Result;

/// SplitMix64: a tiny, fast, well-distributed seeded generator for synthetic data and
/// shuffles (statistical quality beyond that is irrelevant here; speed and determinism are not).
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }

    /// Fisher-Yates shuffle of `v`.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// Writes a float32 BNN checkpoint at `prefix` with dense layers `den_1..` of the given
/// `(inputs, outputs)` sizes: mu ~ U(-0.3, 0.3), rho ~ U(-9, -2), bias mu ~ U(-0.1, 0.1),
/// plus `global_step`, and records it in the folder's `checkpoint` file.
pub fn write_synthetic_bnn(prefix: &Path, layers: &[(u64, u64)], seed: u64) -> Result<()> {
    let mut w = BundleWriter::create(prefix)?;
    let mut rng = SplitMix64(seed);
    for (i, &(inputs, outputs)) in layers.iter().enumerate() {
        let layer = format!("den_{}", i + 1);
        let kernel = [inputs, outputs];
        let params: [(&str, &[u64], f32, f32); 3] = [
            ("kernel_posterior_loc", &kernel, -0.3, 0.3),
            ("kernel_posterior_untransformed_scale", &kernel, -9.0, -2.0),
            ("bias_posterior_loc", &kernel[1..], -0.1, 0.1),
        ];
        for (param, shape, lo, hi) in params {
            let count: u64 = shape.iter().product();
            w.add_streamed(&format!("{layer}/{param}"), DType::Float32, shape, |sink| {
                let mut buf = Vec::with_capacity(1 << 20);
                let mut left = count;
                while left > 0 {
                    let n = left.min(1 << 18);
                    buf.clear();
                    for _ in 0..n {
                        buf.extend_from_slice(&rng.uniform(lo, hi).to_le_bytes());
                    }
                    sink(&buf)?;
                    left -= n;
                }
                Ok(())
            })?;
        }
    }
    w.add_bytes("global_step", DType::Int64, &[], &1000i64.to_le_bytes())?;
    w.finish()?;
    record_in_state_file(prefix)
}

/// How many of the pages of `bytes` are mapped in this process (`/proc/self/pagemap`, bit 63):
/// for tests that check a walk over a memory-mapped checkpoint released what it touched.
#[cfg(target_os = "linux")]
pub fn mapped_pages(bytes: &[u8]) -> std::io::Result<usize> {
    use std::io::{Read, Seek, SeekFrom};
    let page = 4096;
    let (start, end) = (bytes.as_ptr() as usize / page, (bytes.as_ptr() as usize + bytes.len()).div_ceil(page));
    let mut f = std::fs::File::open("/proc/self/pagemap")?;
    f.seek(SeekFrom::Start(8 * start as u64))?;
    let mut raw = vec![0u8; 8 * (end - start)];
    f.read_exact(&mut raw)?;
    Ok(raw.chunks_exact(8).filter(|e| e.last().is_some_and(|top| top >> 7 == 1)).count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_reference_values() {
        // First outputs of SplitMix64 seeded with 0 (Vigna's reference implementation).
        let mut r = SplitMix64(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }
}
