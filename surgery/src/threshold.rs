//! Which float32 weights have `SNR <= T`, decided exactly as [`crate::snr::snr_values`] would,
//! but fast: a branch-free (vectorizable) softplus approximation settles every weight whose
//! SNR is clearly above or below T, and only the few near T get the exact libm computation.
//! This is what lets `prune --threshold` run near the speed of copying the checkpoint.

use rayon::prelude::*;

use crate::softplus::softplus_f32;

/// Half-width of the "undecided" band around T, relative. The approximation's error is under
/// 3e-5 (fitted polynomials, checked in the tests), so a decision outside the band is exact.
const BAND: f64 = 2e-3;
/// Beyond this |rho| the approximation's exponent trick would leave f32's normal range.
const MAX_ABS_RHO: f32 = 80.0;
/// Weights per parallel work item (a chunk of SNRs stays in L1 cache).
const CHUNK: usize = 1024;

/// softplus(rho) to within relative 3e-5 for |rho| <= 80; branch-free so that it vectorizes.
/// softplus(rho) = max(rho, 0) + ln(1 + z) with z = e^-|rho| = 2^y, y <= 0.
#[inline(always)]
fn softplus_approx(rho: f32) -> f32 {
    let y = -rho.abs().min(MAX_ABS_RHO) * std::f32::consts::LOG2_E;
    let n = y as i32; // truncates toward zero: f = y - n lies in (-1, 0]
    let f = y - n as f32;
    // 2^f on [-1, 0] and ln(1 + z) / z on [0, 1]: Chebyshev fits (numpy), errors 7e-6 and 2e-5.
    let p = 0.999_996_1 + f * (0.693_029_3 + f * (0.239_385_04 + f * (0.053_186_5 + f * 0.006_838_265)));
    let z = f32::from_bits(((n + 127) as u32) << 23) * p;
    let g = 0.999_981_9 + z * (-0.499_188_05 + z * (0.324_412_7 + z * (-0.208_671_26 + z * (0.100_288_44 - z * 0.023_689_57))));
    rho.max(0.0) + z * g
}

/// Whether the weight (mu, rho) has SNR <= t, exactly as `|mu| / softplus_f32(rho)` compared in
/// f64 (so a NaN SNR is kept).
#[inline]
fn pruned_exact(mu: f32, rho: f32, t: f64) -> bool {
    ((mu.abs() / softplus_f32(rho)) as f64) <= t
}

/// Keep mask (`!(SNR <= t)`) of a float32 posterior given as little-endian mu and rho bytes.
pub fn keep_f32(mu: &[u8], rho: &[u8], t: f64) -> Vec<bool> {
    let n = mu.len().min(rho.len()) / 4;
    let mut keep = vec![false; n];
    let (lo, hi) = (t * (1.0 - BAND), t * (1.0 + BAND));
    keep.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
        let at = c * CHUNK * 4;
        let (mu, rho) = (&mu[at..at + out.len() * 4], &rho[at..at + out.len() * 4]);
        let mut approx = [0f32; CHUNK];
        for ((a, m), r) in approx.iter_mut().zip(mu.chunks_exact(4)).zip(rho.chunks_exact(4)) {
            let (m, r) = (f32::from_le_bytes([m[0], m[1], m[2], m[3]]), f32::from_le_bytes([r[0], r[1], r[2], r[3]]));
            *a = m.abs() / softplus_approx(r);
        }
        for (i, k) in out.iter_mut().enumerate() {
            let s = approx[i] as f64;
            let r = f32::from_le_bytes([rho[4 * i], rho[4 * i + 1], rho[4 * i + 2], rho[4 * i + 3]]);
            // Outside the approximation's range, NaN, or too close to call: exact.
            *k = if r.abs() <= MAX_ABS_RHO && s > hi.max(lo) {
                true
            } else if r.abs() <= MAX_ABS_RHO && s < lo.min(hi) {
                false
            } else {
                let m = f32::from_le_bytes([mu[4 * i], mu[4 * i + 1], mu[4 * i + 2], mu[4 * i + 3]]);
                !pruned_exact(m, r, t)
            };
        }
    });
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), so the test needs no extra crate.
    fn uniform(state: &mut u64) -> f32 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state >> 40) as f32 / (1u64 << 24) as f32
    }

    #[test]
    fn approximation_error_is_within_the_band() {
        let mut worst = 0f64;
        let mut rho = -80.0f32;
        while rho <= 80.0 {
            let exact = crate::softplus::softplus(rho as f64);
            worst = worst.max((softplus_approx(rho) as f64 / exact - 1.0).abs());
            rho += 0.001;
        }
        assert!(worst < 5e-5, "worst relative error {worst}");
    }

    #[test]
    fn fast_decisions_equal_exact_ones() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let (mut mu, mut rho, mut pairs) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..200_000 {
            let m = (uniform(&mut state) - 0.5) * 0.4;
            let r = (uniform(&mut state) - 0.5) * 24.0;
            // Every 7th weight sits exactly on an SNR of 1 or 2 (the thresholds tested).
            let m = if i % 7 == 0 { softplus_f32(r) * (1 + i % 2) as f32 } else { m };
            pairs.push((m, r));
        }
        // Edge cases: zero-mode pruned weights (0 / 0 is NaN: kept), huge rho, NaN, -0.
        pairs.extend([(0.0, -1000.0), (0.1, -1000.0), (0.1, 90.0), (f32::NAN, 0.0), (-0.0, -3.0), (1e-3, f32::INFINITY)]);
        for (m, r) in &pairs {
            mu.extend_from_slice(&m.to_le_bytes());
            rho.extend_from_slice(&r.to_le_bytes());
        }
        for t in [0.0, 1e-44, 0.5, 1.0, 2.0, 10.0, f64::INFINITY] {
            let fast = keep_f32(&mu, &rho, t);
            let exact: Vec<bool> = pairs.iter().map(|(m, r)| !pruned_exact(*m, *r, t)).collect();
            assert_eq!(fast, exact, "threshold {t}");
            assert!(t == 0.0 || t.is_infinite() || fast.iter().any(|k| *k) && fast.iter().any(|k| !*k));
        }
    }
}
