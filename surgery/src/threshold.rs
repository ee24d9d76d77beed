//! Which float32 weights have `SNR <= T`, decided exactly as [`crate::snr::snr_values`] would,
//! but fast: a branch-free (vectorizable) softplus approximation settles every weight whose
//! SNR is clearly above or below T, and only the few near T get the exact libm computation.
//! This is what lets `prune --threshold` run near the speed of copying the checkpoint.

use rayon::prelude::*;

use crate::mask::KeepMask;
use crate::posterior::{is_pruned_f32, ZERO_SOFTPLUS_RHO_F32};
use model::softplus::softplus_f32;

/// Half-width of the "undecided" band around T, relative. The approximation's error is under
/// 3e-5 (fitted polynomials, checked in the tests), so a decision outside the band is exact.
const BAND: f64 = 2e-3;
/// Beyond this |rho| the approximation's exponent trick would leave f32's normal range.
const MAX_ABS_RHO: f32 = 80.0;
/// Weights per parallel work item (a multiple of 64).
const CHUNK: usize = 64 * 256;

/// softplus(rho) to within relative 3e-5 for |rho| <= 80; branch-free so that it vectorizes.
/// softplus(rho) = max(rho, 0) + ln(1 + z) with z = e^-|rho| = 2^y, y <= 0.
#[inline(always)]
fn softplus_approx(rho: f32) -> f32 {
    // `min` drops a NaN operand, so y is finite, in [-116, 0], for every rho.
    let y = -rho.abs().min(MAX_ABS_RHO) * std::f32::consts::LOG2_E;
    // Truncates toward zero: f = y - n lies in (-1, 0]. Not `as i32`, whose NaN and overflow
    // handling keeps the loop from vectorizing.
    // SAFETY: y is finite and within i32's range (above).
    let n: i32 = unsafe { y.to_int_unchecked() };
    let f = y - n as f32;
    // 2^f on [-1, 0] and ln(1 + z) / z on [0, 1]: Chebyshev fits (numpy), errors 7e-6 and 2e-5.
    let p = 0.999_996_1 + f * (0.693_029_3 + f * (0.239_385_04 + f * (0.053_186_5 + f * 0.006_838_265)));
    let z = f32::from_bits(((n + 127) as u32) << 23) * p;
    let g = 0.999_981_9 + z * (-0.499_188_05 + z * (0.324_412_7 + z * (-0.208_671_26 + z * (0.100_288_44 - z * 0.023_689_57))));
    rho.max(0.0) + z * g
}

/// The SNR a pruning decision compares, exactly: 0 for an already-pruned weight (mu = 0 with
/// rho = 0 or softplus(rho) = 0, see [`crate::posterior::Weight::Pruned`]), NaN (so never
/// `<= T`: never pruned) for a weight whose mu or rho is NaN or infinite, else
/// `|mu| / softplus_f32(rho)` as [`crate::snr::snr_values`] computes it.
#[inline]
pub fn decision_snr(mu: f32, rho: f32) -> f32 {
    if !mu.is_finite() || !rho.is_finite() {
        return f32::NAN;
    }
    if is_pruned_f32(mu, rho) {
        return 0.0;
    }
    mu.abs() / softplus_f32(rho)
}

/// Whether the weight (mu, rho) is pruned at threshold t: its [`decision_snr`] compared in f64.
#[cfg(test)]
fn pruned_exact(mu: f32, rho: f32, t: f64) -> bool {
    (decision_snr(mu, rho) as f64) <= t
}

/// The smallest f32 at or above `x`.
fn f32_at_or_above(x: f64) -> f32 {
    let f = x as f32;
    if f as f64 >= x || f.is_nan() {
        f
    } else if f == 0.0 {
        f32::from_bits(1)
    } else if f > 0.0 {
        f32::from_bits(f.to_bits() + 1)
    } else {
        f32::from_bits(f.to_bits() - 1)
    }
}

/// Below this the approximate SNR may be subnormal, where relative error bounds do not hold:
/// such weights are decided exactly.
const TINY: f64 = 1e-37;

/// What deciding a run of weights found, besides the keep bits.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Decided {
    /// Kept weights.
    pub kept: usize,
    /// Kept weights with a non-zero mu (BPrune's count).
    pub nonzero: usize,
    /// Weights that were already pruned (mu = 0 with rho = 0 or softplus(rho) = 0); they are
    /// pruned again whatever the threshold.
    pub already: usize,
    /// Weights with a NaN or infinite mu (kept).
    pub undefined_mu: usize,
    /// Weights with a NaN or infinite rho (kept).
    pub undefined_rho: usize,
}

impl std::ops::Add for Decided {
    type Output = Decided;
    fn add(self, o: Decided) -> Decided {
        Decided {
            kept: self.kept + o.kept,
            nonzero: self.nonzero + o.nonzero,
            already: self.already + o.already,
            undefined_mu: self.undefined_mu + o.undefined_mu,
            undefined_rho: self.undefined_rho + o.undefined_rho,
        }
    }
}

/// The kept weights (`!(decision SNR <= t)`, and not already pruned) of a float32 posterior
/// given as little-endian mu and rho bytes, and how many of them have a non-zero mu.
pub fn keep_f32(mu: &[u8], rho: &[u8], t: f64) -> (KeepMask, usize) {
    let n = mu.len().min(rho.len()) / 4;
    let mut words = vec![0u64; n.div_ceil(64)];
    let mut equal = vec![0u64; n.div_ceil(64)];
    let d = decide_f32(mu, rho, t, &mut words, &mut equal);
    (KeepMask::from_words(words, n), d.nonzero)
}

/// Decides the float32 weights given as little-endian `mu` and `rho` bytes at threshold `t`:
/// sets bit `i` of `keep` for each kept weight and bit `i` of `equal` for each weight whose
/// [`decision_snr`] equals `t` exactly (pruned, for tie-breaking by a caller that prunes only
/// some of them). Both slices hold at least `n.div_ceil(64)` words for `n` weights.
pub fn decide_f32(mu: &[u8], rho: &[u8], t: f64, keep: &mut [u64], equal: &mut [u64]) -> Decided {
    let n = mu.len().min(rho.len()) / 4;
    let words = n.div_ceil(64);
    // Approximate SNRs above `hi` are certainly kept, below `lo` certainly pruned.
    let hi = f32_at_or_above(t * (1.0 + BAND) + TINY);
    let lo = -f32_at_or_above(-(t * (1.0 - BAND) - TINY));
    #[cfg(target_arch = "x86_64")]
    let avx2 = is_x86_feature_detected!("avx2");
    keep[..words]
        .par_chunks_mut(CHUNK / 64)
        .zip(equal[..words].par_chunks_mut(CHUNK / 64))
        .enumerate()
        .map(|(c, (out, eq))| {
            let first = c * CHUNK;
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the CPU has AVX2 (checked above).
                return unsafe { decide_words_avx2(mu, rho, n, first, out, eq, t, lo, hi) };
            }
            decide_words(mu, rho, n, first, out, eq, t, lo, hi)
        })
        .reduce(Decided::default, |a, b| a + b)
}

/// Fills `out` and `eq` with the keep and equal words of weights `first..`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn decide_words(mu: &[u8], rho: &[u8], n: usize, first: usize, out: &mut [u64], eq: &mut [u64], t: f64, lo: f32, hi: f32) -> Decided {
    let mut d = Decided::default();
    for (w, (word, eq)) in out.iter_mut().zip(eq.iter_mut()).enumerate() {
        let start = first + 64 * w;
        let len = (n - start).min(64);
        let (mu, rho) = (&mu[4 * start..4 * (start + len)], &rho[4 * start..4 * (start + len)]);
        let bits = decide_word(mu, rho, t, lo, hi);
        *word = bits.keep;
        *eq = bits.equal;
        d.kept += bits.keep.count_ones() as usize;
        d.nonzero += (bits.keep & bits.nonzero_mu).count_ones() as usize;
        d.already += bits.already.count_ones() as usize;
        d.undefined_mu += bits.undefined_mu.count_ones() as usize;
        d.undefined_rho += bits.undefined_rho.count_ones() as usize;
    }
    d
}

/// [`decide_words`] compiled for AVX2: twice the lanes for the softplus approximation.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn decide_words_avx2(mu: &[u8], rho: &[u8], n: usize, first: usize, out: &mut [u64], eq: &mut [u64], t: f64, lo: f32, hi: f32) -> Decided {
    decide_words(mu, rho, n, first, out, eq, t, lo, hi)
}

/// The decisions about up to 64 weights, one bit each.
struct WordBits {
    keep: u64,
    nonzero_mu: u64,
    equal: u64,
    already: u64,
    undefined_mu: u64,
    undefined_rho: u64,
}

/// Loads up to 64 little-endian f32 bit patterns.
#[inline(always)]
fn load_bits(bytes: &[u8]) -> [u32; 64] {
    let mut out = [0u32; 64];
    // Plain copies (they compile to memcpy), then arithmetic on whole arrays (SIMD).
    for (d, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *d = u32::from_le_bytes(c.try_into().unwrap_or_default());
    }
    out
}

/// Bits of weights already pruned, and of those with a non-finite mu or rho.
#[inline(always)]
fn special_bits(mu_bits: &[u32; 64], rho_bits: &[u32; 64], len: usize) -> (u64, u64, u64) {
    // Flags for all 64 lanes (vectorized), packed, then cut to the `len` weights there are
    // (the lanes past them hold zeros, which would read as pruned).
    let (mut already, mut undefined_mu, mut undefined_rho) = ([0u8; 64], [0u8; 64], [0u8; 64]);
    for i in 0..64 {
        let (m, r) = (mu_bits[i], f32::from_bits(rho_bits[i]));
        already[i] = u8::from(m & 0x7fff_ffff == 0 && (r == 0.0 || r <= ZERO_SOFTPLUS_RHO_F32));
        undefined_mu[i] = u8::from(m & 0x7f80_0000 == 0x7f80_0000);
        undefined_rho[i] = u8::from(rho_bits[i] & 0x7f80_0000 == 0x7f80_0000);
    }
    let valid = if len == 0 { 0 } else { u64::MAX >> (64 - len.min(64)) };
    (pack(&already) & valid, pack(&undefined_mu) & valid, pack(&undefined_rho) & valid)
}

/// Decides up to 64 weights.
#[inline(always)]
fn decide_word(mu: &[u8], rho: &[u8], t: f64, lo: f32, hi: f32) -> WordBits {
    let len = mu.len() / 4;
    let (mu_bits, rho_bits) = (load_bits(mu), load_bits(rho));
    let mut snr = [0f32; 64];
    let mut rho_abs = [0f32; 64];
    for i in 0..64 {
        let (m, r) = (f32::from_bits(mu_bits[i]), f32::from_bits(rho_bits[i]));
        snr[i] = m.abs() / softplus_approx(r);
        rho_abs[i] = r.abs();
    }
    let (mut keep, mut unsure, nonzero_mu) = if len == 64 {
        classify_64(&snr, &rho_abs, &mu_bits, lo, hi)
    } else {
        classify(&snr[..len], &rho_abs, &mu_bits, lo, hi)
    };
    let (already, undefined_mu, undefined_rho) = special_bits(&mu_bits, &rho_bits, len);
    // Non-finite weights were never decided by the approximation (NaN or out of range) except
    // an infinite mu over a finite scale, which it keeps, as decision_snr does.
    let mut equal = 0u64;
    while unsure != 0 {
        let i = unsure.trailing_zeros() as usize;
        let s = decision_snr(f32::from_bits(mu_bits[i]), f32::from_bits(rho_bits[i])) as f64;
        // NaN (undefined) is kept.
        if s.partial_cmp(&t).is_none_or(|o| o.is_gt()) {
            keep |= 1 << i;
        }
        equal |= u64::from(s == t) << i;
        unsure &= unsure - 1;
    }
    WordBits { keep: keep & !already, nonzero_mu, equal, already, undefined_mu, undefined_rho }
}

/// Approximate SNR keys (f32 bit patterns of the [`decision_snr`]) of the weights given as
/// little-endian f32 `mu` and `rho` bytes, into `keys`: exact for already-pruned weights (0),
/// tiny or huge SNRs and scales outside the approximation's range, within [`KEY_SLACK`] of the
/// exact key otherwise; `u32::MAX` for weights with a NaN or infinite mu or rho.
pub fn approx_keys(mu: &[u8], rho: &[u8], keys: &mut Vec<u32>) {
    approx_keys_then(mu, rho, keys, |_, _| {});
}

/// [`approx_keys`], calling `then(first, keys)` on each run of up to 64 keys just computed
/// (`first`: the index of the run's first weight) while they are in cache, in the same
/// (vectorized) code.
pub(crate) fn approx_keys_then<F: Fn(usize, &mut [u32]) + Sync>(mu: &[u8], rho: &[u8], keys: &mut Vec<u32>, then: F) {
    let n = mu.len().min(rho.len()) / 4;
    keys.resize(n, 0);
    let kernel = Kernel::detect();
    keys.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| kernel.run(mu, rho, c * CHUNK, out, &then));
}

/// The approximate keys of [`approx_keys_then`] (with `word` in its place), without a buffer of
/// them all: each block of up to 16 Ki weights (64 KiB of keys, which stay in the core's L2
/// cache) is handed to `block(first, keys)` right after its words are done, so every further
/// look at the keys reads the cache rather than memory.
pub(crate) fn approx_blocks<W, B>(mu: &[u8], rho: &[u8], word: W, block: B)
where
    W: Fn(usize, &mut [u32]) + Sync,
    B: Fn(usize, &mut [u32]) + Sync,
{
    let n = mu.len().min(rho.len()) / 4;
    let kernel = Kernel::detect();
    (0..n.div_ceil(CHUNK)).into_par_iter().for_each_init(Vec::new, |buf: &mut Vec<u32>, c| {
        let first = c * CHUNK;
        buf.resize(CHUNK.min(n - first), 0);
        kernel.run(mu, rho, first, buf, &word);
        block(first, buf);
    });
}

/// The widest [`approx_run`] the CPU runs; every width gives the same keys bit for bit (the
/// same IEEE operations lane by lane, no fused multiply-adds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// Whatever the baseline target vectorizes (SSE2 on x86-64).
    Portable,
    /// 8 lanes.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// 16 lanes, mask registers.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernel {
    /// The widest kernel this CPU has.
    pub(crate) fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl") && is_x86_feature_detected!("avx512dq") {
                return Kernel::Avx512;
            }
            if is_x86_feature_detected!("avx2") {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    /// [`approx_run`] with this kernel (which the CPU must have: [`Kernel::detect`]).
    #[inline(always)]
    pub(crate) fn run<F: Fn(usize, &mut [u32])>(self, mu: &[u8], rho: &[u8], first: usize, out: &mut [u32], then: &F) {
        match self {
            Kernel::Portable => approx_run(mu, rho, first, out, then),
            // SAFETY: detect() found the features.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { approx_run_avx2(mu, rho, first, out, then) },
            // SAFETY: detect() found the features.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { approx_run_avx512(mu, rho, first, out, then) },
        }
    }
}

/// [`approx_run`] compiled for AVX2: twice the lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn approx_run_avx2<F: Fn(usize, &mut [u32])>(mu: &[u8], rho: &[u8], first: usize, out: &mut [u32], then: &F) {
    approx_run(mu, rho, first, out, then)
}

/// [`approx_run`] compiled for AVX-512: four times the lanes, and `then` (the exact-key fix-ups
/// of the callers) with mask compares.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2")]
unsafe fn approx_run_avx512<F: Fn(usize, &mut [u32])>(mu: &[u8], rho: &[u8], first: usize, out: &mut [u32], then: &F) {
    approx_run(mu, rho, first, out, then)
}

/// Approximate keys of weights `first..first + out.len()`, 64 at a time.
#[inline(always)]
fn approx_run<F: Fn(usize, &mut [u32])>(mu: &[u8], rho: &[u8], first: usize, out: &mut [u32], then: &F) {
    for (w, out) in out.chunks_mut(64).enumerate() {
        let start = first + 64 * w;
        let len = out.len();
        let (mu_bits, rho_bits) = (load_bits(&mu[4 * start..4 * (start + len)]), load_bits(&rho[4 * start..4 * (start + len)]));
        let mut exact = 0u64;
        for i in 0..len {
            let (m, r) = (f32::from_bits(mu_bits[i]), f32::from_bits(rho_bits[i]));
            let s = m.abs() / softplus_approx(r);
            out[i] = s.to_bits();
            let trusted = r.abs() <= MAX_ABS_RHO && s >= 2.0 * TINY as f32 && s <= f32::MAX / 4.0;
            exact |= u64::from(!trusted) << i;
        }
        while exact != 0 {
            let i = exact.trailing_zeros() as usize;
            let s = decision_snr(f32::from_bits(mu_bits[i]), f32::from_bits(rho_bits[i]));
            out[i] = if s.is_nan() { u32::MAX } else { s.to_bits() };
            exact &= exact - 1;
        }
        then(start, out);
    }
}

/// Bit `i` set where `flags[i]` is 1 (each flag 0 or 1).
#[inline(always)]
pub(crate) fn pack(flags: &[u8; 64]) -> u64 {
    let mut bits = 0u64;
    for (j, eight) in flags.chunks_exact(8).enumerate() {
        let x = u64::from_le_bytes(eight.try_into().unwrap_or_default());
        // Gathers byte i's low bit into bit 56 + i (no carries: each byte is 0 or 1).
        bits |= (x.wrapping_mul(0x0102_0408_1020_4080) >> 56) << (8 * j);
    }
    bits
}

/// Bit `i` set where `keys[i]` (up to 64) lies in one of `ranges` (first key, length - 1).
pub(crate) fn in_ranges(keys: &[u32], ranges: &[(u32, u32)]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked).
        return unsafe { in_ranges_avx2(keys, ranges) };
    }
    in_ranges_generic(keys, ranges)
}

/// [`in_ranges`] compiled for AVX2 (unsigned 32-bit compares).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn in_ranges_avx2(keys: &[u32], ranges: &[(u32, u32)]) -> u64 {
    in_ranges_generic(keys, ranges)
}

#[inline(always)]
fn in_ranges_generic(keys: &[u32], ranges: &[(u32, u32)]) -> u64 {
    let mut near = [0u8; 64];
    let keys = &keys[..keys.len().min(64)];
    for &(first, span) in ranges {
        for (n, &a) in near.iter_mut().zip(keys) {
            *n |= u8::from(a.wrapping_sub(first) <= span);
        }
    }
    pack(&near)
}

/// Largest distance between an approximate key of [`approx_keys`] and the exact one. Checked
/// over every f32 rho in [-80, 80] (`approximation_error_over_every_f32_rho`, run by hand: it
/// takes a minute in release): `softplus_approx` is within relative 2.41e-5 of `softplus_f32`,
/// so an approximate SNR key is within 2.41e-5 * 2^24 + 2 < 407 units in the last place of the
/// exact one (an f32's unit is at least 2^-24 of it, plus a rounding of each quotient). The
/// test `approximation_error_is_within_the_band` keeps the error under 3e-5, i.e. 506 units;
/// 512 is the next power of two, so a bucket edge (every 65536 units) and a limit call for
/// exact keys of 1.6% of the weights.
pub const KEY_SLACK: u32 = 512;

/// (certainly kept, undecided, non-zero mu) bits from approximate SNRs: undecided are those
/// outside the approximation's range, NaN, or too close to call.
#[inline(always)]
fn classify(snr: &[f32], rho_abs: &[f32; 64], mu_bits: &[u32; 64], lo: f32, hi: f32) -> (u64, u64, u64) {
    let (mut keep, mut unsure, mut nonzero) = (0u64, 0u64, 0u64);
    for (i, &s) in snr.iter().enumerate() {
        let in_range = rho_abs[i] <= MAX_ABS_RHO;
        let (above, below) = (s > hi, s < lo);
        keep |= u64::from(in_range & above) << i;
        unsure |= u64::from(!(in_range & (above | below))) << i;
        nonzero |= u64::from(mu_bits[i] & 0x7fff_ffff != 0) << i;
    }
    (keep, unsure, nonzero)
}

/// [`classify`] of a full word, four weights per SSE2 compare (SSE2 is part of x86-64).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn classify_64(snr: &[f32; 64], rho_abs: &[f32; 64], mu_bits: &[u32; 64], lo: f32, hi: f32) -> (u64, u64, u64) {
    use std::arch::x86_64::*;
    let (mut keep, mut unsure, mut zero) = (0u64, 0u64, 0u64);
    // SAFETY: SSE2 is always present on x86-64; every load reads 4 lanes inside a 64-lane array.
    unsafe {
        let (hi, lo, max) = (_mm_set1_ps(hi), _mm_set1_ps(lo), _mm_set1_ps(MAX_ABS_RHO));
        let magnitude = _mm_set1_epi32(0x7fff_ffff);
        for q in 0..16 {
            let s = _mm_loadu_ps(snr.as_ptr().add(4 * q));
            let in_range = _mm_cmple_ps(_mm_loadu_ps(rho_abs.as_ptr().add(4 * q)), max);
            let above = _mm_cmpgt_ps(s, hi);
            let decided = _mm_and_ps(in_range, _mm_or_ps(above, _mm_cmplt_ps(s, lo)));
            let m = _mm_and_si128(_mm_loadu_si128(mu_bits.as_ptr().add(4 * q).cast()), magnitude);
            keep |= (_mm_movemask_ps(_mm_and_ps(in_range, above)) as u64) << (4 * q);
            unsure |= (_mm_movemask_ps(decided) as u64 ^ 0xf) << (4 * q);
            zero |= (_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(m, _mm_setzero_si128()))) as u64) << (4 * q);
        }
    }
    (keep, unsure, !zero)
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn classify_64(snr: &[f32; 64], rho_abs: &[f32; 64], mu_bits: &[u32; 64], lo: f32, hi: f32) -> (u64, u64, u64) {
    classify(snr, rho_abs, mu_bits, lo, hi)
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
            // Against the f32 softplus the exact SNRs use (KEY_SLACK depends on this bound).
            let exact = softplus_f32(rho) as f64;
            worst = worst.max((softplus_approx(rho) as f64 / exact - 1.0).abs());
            rho += 0.000_37;
        }
        assert!(worst < 3e-5, "worst relative error {worst}");
    }

    /// The bound [`KEY_SLACK`] rests on, over every f32 rho the approximation is used for.
    /// Slow (two billion libm softplus): `cargo test --release -p bnn-surgery -- --ignored
    /// approximation_error_over_every_f32_rho`.
    #[test]
    #[ignore]
    fn approximation_error_over_every_f32_rho() {
        let (top, bottom) = (MAX_ABS_RHO.to_bits(), (-MAX_ABS_RHO).to_bits());
        let ranges: Vec<(u32, u32)> = (0..=top).step_by(1 << 20).map(|a| (a, (a + (1 << 20)).min(top + 1))).chain((0x8000_0000..=bottom).step_by(1 << 20).map(|a| (a, (a + (1 << 20)).min(bottom + 1)))).collect();
        let worst = ranges
            .par_iter()
            .map(|&(a, b)| {
                (a..b).fold(0f64, |w, bits| {
                    let rho = f32::from_bits(bits);
                    let exact = softplus_f32(rho) as f64;
                    w.max((softplus_approx(rho) as f64 / exact - 1.0).abs())
                })
            })
            .reduce(|| 0.0, f64::max);
        // (KEY_SLACK - 2) / 2^24 = 3.04e-5 would still do; the documented bound is 2.41e-5.
        assert!(worst < 2.42e-5, "worst relative error {worst}");
        assert!(worst * (1u64 << 24) as f64 + 2.0 < KEY_SLACK as f64);
    }

    #[test]
    fn packed_flags_are_the_bits_in_order() {
        let mut state = 0x5151_2323_7777_0101u64;
        for _ in 0..1000 {
            let mut flags = [0u8; 64];
            flags.iter_mut().for_each(|f| *f = u8::from(uniform(&mut state) < 0.3));
            let want = flags.iter().enumerate().fold(0u64, |b, (i, &f)| b | u64::from(f) << i);
            assert_eq!(pack(&flags), want);
        }
        assert_eq!(pack(&[1; 64]), u64::MAX);
    }

    #[test]
    fn vector_and_scalar_classification_agree() {
        let mut state = 0x1234_5678_9abc_def0u64;
        for _ in 0..2000 {
            let mut snr = [0f32; 64];
            let mut rho_abs = [0f32; 64];
            let mut mu_bits = [0u32; 64];
            for i in 0..64 {
                snr[i] = match i % 9 {
                    0 => f32::NAN,
                    1 => 1.0,
                    _ => uniform(&mut state) * 3.0,
                };
                rho_abs[i] = if i % 11 == 0 { 100.0 } else { uniform(&mut state) * 90.0 };
                mu_bits[i] = match i % 5 {
                    0 => 0,
                    1 => 0x8000_0000,
                    _ => (uniform(&mut state) * 1e6) as u32,
                };
            }
            assert_eq!(classify_64(&snr, &rho_abs, &mu_bits, 0.998, 1.002), classify(&snr, &rho_abs, &mu_bits, 0.998, 1.002));
        }
    }

    #[test]
    fn approximate_keys_are_within_the_slack_of_exact_ones() {
        let mut state = 0x0123_4567_89ab_cdefu64;
        let (mut mu, mut rho) = (Vec::new(), Vec::new());
        let mut pairs: Vec<(f32, f32)> = (0..300_000)
            .map(|i| {
                let m = (uniform(&mut state) - 0.5) * if i % 3 == 0 { 1e-6 } else { 2.0 };
                let r = (uniform(&mut state) - 0.5) * 170.0;
                (m, r)
            })
            .collect();
        pairs.extend([(0.0, -1000.0), (-0.0, 0.0), (0.0, 3.0), (1e-45, -5.0), (3e38, -79.0), (f32::NAN, 1.0), (1.0, f32::INFINITY)]);
        for (m, r) in &pairs {
            mu.extend_from_slice(&m.to_le_bytes());
            rho.extend_from_slice(&r.to_le_bytes());
        }
        let mut keys = Vec::new();
        approx_keys(&mu, &rho, &mut keys);
        for ((m, r), a) in pairs.iter().zip(&keys) {
            let e = decision_snr(*m, *r);
            if e.is_nan() {
                assert_eq!(*a, u32::MAX);
            } else {
                assert!(a.abs_diff(e.to_bits()) <= KEY_SLACK, "({m}, {r}): {a:#x} vs {:#x}", e.to_bits());
            }
        }
    }

    /// Every kernel the CPU has gives the portable kernel's keys bit for bit, for every tail
    /// length of a 64-weight word and whatever its `then` does to them.
    #[test]
    fn every_kernel_gives_the_portable_keys() {
        let mut state = 0x7a5c_1e3d_9b2f_4681u64;
        let n = 3 * CHUNK + 64 * 7 + 63;
        let (mut mu, mut rho) = (Vec::new(), Vec::new());
        for i in 0..n {
            let m = match i % 13 {
                0 => 0.0,
                1 => f32::NAN,
                2 => 1e-40,
                _ => (uniform(&mut state) - 0.5) * if i % 3 == 0 { 1e-6 } else { 2.0 },
            };
            let r = match i % 17 {
                0 => 95.0,
                1 => f32::INFINITY,
                2 => -1000.0,
                _ => (uniform(&mut state) - 0.5) * 170.0,
            };
            mu.extend_from_slice(&m.to_le_bytes());
            rho.extend_from_slice(&r.to_le_bytes());
        }
        let mut kernels = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") {
                kernels.push(Kernel::Avx2);
            }
            if Kernel::detect() == Kernel::Avx512 {
                kernels.push(Kernel::Avx512);
            }
        }
        // `then` sees each word once, at its first weight (tagged in the top bit's stead).
        let then = |first: usize, word: &mut [u32]| word.iter_mut().enumerate().for_each(|(i, k)| *k ^= (first + i) as u32);
        for len in (0..=130).chain([CHUNK, n - 1, n]) {
            let (mu, rho) = (&mu[..4 * len], &rho[..4 * len]);
            let mut want = vec![0u32; len];
            Kernel::Portable.run(mu, rho, 0, &mut want, &then);
            for (i, k) in want.iter().enumerate() {
                let e = decision_snr(f32::from_le_bytes(mu[4 * i..4 * i + 4].try_into().unwrap_or_default()), f32::from_le_bytes(rho[4 * i..4 * i + 4].try_into().unwrap_or_default()));
                let k = k ^ i as u32;
                assert!(if e.is_nan() { k == u32::MAX } else { k.abs_diff(e.to_bits()) <= KEY_SLACK }, "weight {i}");
            }
            for kernel in &kernels {
                let mut got = vec![0u32; len];
                kernel.run(mu, rho, 0, &mut got, &then);
                assert_eq!(got, want, "{kernel:?}, {len} weights");
            }
            // Blocks: the same keys, each block handed over once.
            let seen = std::sync::Mutex::new(vec![0u32; len]);
            approx_blocks(mu, rho, then, |first, keys| {
                let mut seen = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                seen[first..first + keys.len()].iter_mut().zip(keys.iter()).for_each(|(s, k)| *s ^= *k);
            });
            assert_eq!(seen.into_inner().unwrap_or_default(), want, "blocks of {len} weights");
        }
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
        // Edge cases: pruned weights of both modes (pruned again), huge rho, NaN, -0, infinities.
        pairs.extend([(0.0, -1000.0), (-0.0, 0.0), (0.1, -1000.0), (0.1, 90.0), (f32::NAN, 0.0), (-0.0, -3.0), (1e-3, f32::INFINITY)]);
        pairs.extend([(f32::INFINITY, 0.5), (0.0, f32::NEG_INFINITY), (f32::NEG_INFINITY, f32::INFINITY), (0.0, -103.0), (0.0, -104.0)]);
        // Subnormal SNRs, for BPrune's T = 0 (1e-44).
        pairs.extend([(1.4e-45, 0.0), (1e-44, 0.5), (7e-45, -0.3), (3e-44, 1.0), (1e-38, 20.0)]);
        for (m, r) in &pairs {
            mu.extend_from_slice(&m.to_le_bytes());
            rho.extend_from_slice(&r.to_le_bytes());
        }
        for t in [0.0, 1e-44, 0.5, 1.0, 2.0, 10.0, f64::INFINITY] {
            let (fast, nonzero) = keep_f32(&mu, &rho, t);
            let exact: Vec<bool> = pairs.iter().map(|(m, r)| !pruned_exact(*m, *r, t) && !is_pruned_f32(*m, *r)).collect();
            assert_eq!(fast.iter().collect::<Vec<_>>(), exact, "threshold {t}");
            let exact_nonzero = pairs.iter().zip(&exact).filter(|((m, _), k)| **k && *m != 0.0).count();
            assert_eq!(nonzero, exact_nonzero, "threshold {t}");
            assert!(t == 0.0 || t.is_infinite() || fast.kept() > 0 && fast.kept() < fast.len());
        }
    }
}
