//! Seeded random numbers for Monte Carlo: one independent stream per (seed, sample), so
//! results do not depend on how samples are spread over threads.

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;

/// `SIGN_MASKS[b][i]` is the f32 sign bit when bit `i` of `b` is set: 8 random signs per byte.
static SIGN_MASKS: [[u32; 8]; 256] = {
    let mut t = [[0u32; 8]; 256];
    let mut b = 0;
    while b < 256 {
        let mut i = 0;
        while i < 8 {
            t[b][i] = (((b >> i) & 1) as u32) << 31;
            i += 1;
        }
        b += 1;
    }
    t
};

/// The random source of one Monte Carlo sample.
pub struct Sampler {
    rng: Xoshiro256PlusPlus,
}

impl Sampler {
    /// Stream `sample` of run `seed`.
    pub fn new(seed: u64, sample: u64) -> Sampler {
        // SplitMix-style mixing so that neighbouring (seed, sample) pairs give unrelated states.
        let mut z = seed ^ sample.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Sampler { rng: Xoshiro256PlusPlus::seed_from_u64(z ^ (z >> 31)) }
    }

    /// `mu + sigma * eps`, eps ~ N(0, 1), elementwise.
    pub fn gaussian(&mut self, mu: &[f32], sigma: &[f32]) -> Vec<f32> {
        mu.iter().zip(sigma).map(|(&m, &s)| m + s * self.rng.sample::<f32, _>(StandardNormal)).collect()
    }

    /// `out += sigma * eps`, eps ~ N(0, 1), elementwise (same draws as [`Sampler::noise`]).
    pub fn add_noise(&mut self, sigma: &[f32], out: &mut [f32]) {
        for (o, &s) in out.iter_mut().zip(sigma) {
            *o += s * self.rng.sample::<f32, _>(StandardNormal);
        }
    }

    /// `sigma * eps`, eps ~ N(0, 1), elementwise.
    pub fn noise(&mut self, sigma: &[f32]) -> Vec<f32> {
        sigma.iter().map(|&s| s * self.rng.sample::<f32, _>(StandardNormal)).collect()
    }

    /// `out[i] += s_i * v[i]` with independent random signs s_i (same signs as
    /// [`Sampler::signs`]).
    pub fn add_flipped(&mut self, v: &[f32], out: &mut [f32]) {
        self.signed(v, out, |o, x| *o += x);
    }

    /// `out[i] = s_i * v[i]` with independent random signs s_i (same signs as
    /// [`Sampler::signs`]).
    pub fn flipped_into(&mut self, v: &[f32], out: &mut [f32]) {
        self.signed(v, out, |o, x| *o = x);
    }

    /// Calls `f(out[i], s_i * v[i])`: the sign bit is flipped through a mask table, 8 values
    /// per byte of a 64-bit draw, without a sign array.
    #[inline(always)]
    fn signed(&mut self, v: &[f32], out: &mut [f32], f: impl Fn(&mut f32, f32)) {
        for (chunk, oc) in v.chunks(64).zip(out.chunks_mut(64)) {
            let bits: u64 = self.rng.random();
            for (j, (part, op)) in chunk.chunks(8).zip(oc.chunks_mut(8)).enumerate() {
                let mask = &SIGN_MASKS[((bits >> (8 * j)) & 0xFF) as usize];
                for ((x, m), o) in part.iter().zip(mask).zip(op) {
                    f(o, f32::from_bits(x.to_bits() ^ m));
                }
            }
        }
    }

    /// `out = sigma * eps`, eps ~ N(0, 1), elementwise (same draws as [`Sampler::noise`]).
    pub fn noise_into(&mut self, sigma: &[f32], out: &mut [f32]) {
        for (o, &s) in out.iter_mut().zip(sigma) {
            *o = s * self.rng.sample::<f32, _>(StandardNormal);
        }
    }

    /// `len` random signs (+1 / -1, Rademacher), 64 per draw.
    pub fn signs(&mut self, len: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let bits: u64 = self.rng.random();
            // Bit i becomes the sign bit of 1.0: branch-free, so it vectorizes.
            out.extend((0..64.min(len - out.len())).map(|i| f32::from_bits(0x3F80_0000 | (((bits >> i) & 1) as u32) << 31)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a = Sampler::new(7, 0).noise(&[1.0; 1000]);
        assert_eq!(a, Sampler::new(7, 0).noise(&[1.0; 1000]));
        assert_ne!(a, Sampler::new(7, 1).noise(&[1.0; 1000]));
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / 1000.0;
        let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 1000.0;
        // N(0, 1) sample of 1000: mean within 4 sd (0.13), variance within 0.8..1.2.
        assert!(mean.abs() < 0.13 && (0.8..1.2).contains(&var), "{mean} {var}");
        let mut f = vec![0.0f32; 1000];
        Sampler::new(1, 2).flipped_into(&[2.0; 1000], &mut f);
        let signs = Sampler::new(1, 2).signs(1000);
        assert_eq!(f.iter().map(|v| v / 2.0).collect::<Vec<_>>(), signs, "same stream, same signs");
        let mut acc = vec![1.0f32; 1000];
        Sampler::new(1, 2).add_flipped(&[2.0; 1000], &mut acc);
        assert!(acc.iter().zip(&signs).all(|(a, s)| *a == 1.0 + 2.0 * s));
        let s = Sampler::new(1, 2).signs(1000);
        assert!(s.iter().all(|&v| v == 1.0 || v == -1.0));
        let pos = s.iter().filter(|&&v| v > 0.0).count();
        assert!((420..580).contains(&pos), "{pos}");
    }
}
