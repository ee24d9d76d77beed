//! Seeded random numbers for Monte Carlo: one independent stream per (seed, sample), so
//! results do not depend on how samples are spread over threads.
//!
//! Weight noise (millions of normal draws per sample on conv nets) comes from a vectorized
//! generator: a counter-based hash (five keyed AES rounds per 128-bit block of four uniform
//! words, ARS-5's construction, on the CPU's AES instructions) and the Box–Muller transform
//! with branch-free polynomial `ln` (Cephes), and `sin`/`cos` of a 24-bit angle (the quarter
//! turn taken off in integers, Cephes minimax polynomials on [-pi/4, pi/4]), all Horner
//! steps fused multiply-adds (about 1e-7 error), 16 lanes wide with AVX-512. Every path
//! (AVX-512, AVX2, portable) runs the same operations with IEEE fused multiply-adds and
//! the same AES rounds, so all give the same bits.
//! The key of each call comes from the sample's Xoshiro256++ stream, so the draws stay
//! reproducible per (seed, sample).

use super::prefetch::rows_ahead;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;

/// The random source of one Monte Carlo sample.
pub struct Sampler {
    rng: Xoshiro256PlusPlus,
}

/// AES rounds per block of the counter hash: ARS-5 (Salmon et al., "Parallel random numbers:
/// as easy as 1, 2, 3", SC 2011) passes TestU01's BigCrush. One AES round is one instruction
/// on 4 blocks at once with VAES: 16 uniform words for 6 instructions, where the integer
/// mixer before this (two rounds of a 32-bit multiply-xorshift hash per word) took 22, half
/// of the generator's time.
const ROUNDS: usize = 5;

/// The round key schedule's step, added to each 64-bit half of the key per round (ARS's Weyl
/// sequence: the golden ratio and sqrt(3) - 1 in 64-bit fixed point).
const WEYL: [u64; 2] = [0x9E37_79B9_7F4A_7C15, 0xBB67_AE85_84CA_A73B];

/// Block counters are taken modulo 2^30, which is what pairs numbered modulo 2^31 give
/// (flat indices modulo 2^32, 8 pairs per 16 values, 2 pairs per block).
const BLOCK_MASK: u32 = (1 << 30) - 1;

/// The round keys of one weight-noise draw: the key (`[key, 0]`, whitening the counter
/// block), then [`ROUNDS`] keys, each the last plus [`WEYL`].
#[derive(Clone, Copy, Debug)]
struct Keys([u128; ROUNDS + 1]);

impl Keys {
    /// The schedule of a draw's 64-bit key.
    fn new(key: u64) -> Keys {
        let mut halves = [key, 0];
        Keys(std::array::from_fn(|_| {
            let k = u128::from(halves[0]) | u128::from(halves[1]) << 64;
            halves = [halves[0].wrapping_add(WEYL[0]), halves[1].wrapping_add(WEYL[1])];
            k
        }))
    }

    /// The 4 uniform words of counter block `b` (`[b, 0, 0, 0]` as little-endian words: the
    /// 128-bit integer `b`) on any CPU: the `aes` crate's round function, which is
    /// `aesenc` (SubBytes, ShiftRows, MixColumns, then the round key) and bitwise the same
    /// as the AES instructions the vector paths use.
    fn block(&self, b: u32) -> [u32; 4] {
        let mut v = aes::Block::from((u128::from(b) ^ self.0[0]).to_le_bytes());
        for k in &self.0[1..] {
            aes::hazmat::cipher_round(&mut v, &aes::Block::from(k.to_le_bytes()));
        }
        words(u128::from_le_bytes(v.into()))
    }

    /// [`Keys::block`] with AES-NI.
    ///
    /// # Safety
    /// The CPU supports AES-NI.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "aes")]
    #[inline]
    unsafe fn block_aesni(&self, b: u32) -> [u32; 4] {
        use std::arch::x86_64::*;
        let load = |k: u128| _mm_set_epi64x((k >> 64) as i64, k as i64);
        let mut v = _mm_xor_si128(_mm_set_epi32(0, 0, 0, b as i32), load(self.0[0]));
        for &k in &self.0[1..] {
            v = _mm_aesenc_si128(v, load(k));
        }
        words((_mm_extract_epi64::<1>(v) as u64 as u128) << 64 | _mm_cvtsi128_si64(v) as u64 as u128)
    }
}

/// The four little-endian 32-bit words of a block.
#[inline(always)]
fn words(v: u128) -> [u32; 4] {
    std::array::from_fn(|w| (v >> (32 * w)) as u32)
}

/// The counter block of Box–Muller pair `p` (pairs numbered modulo 2^31, two per block) and
/// the word of its `u1` (the angle's is the next).
#[inline(always)]
fn block_of(p: u32) -> (u32, usize) {
    ((p >> 1) & BLOCK_MASK, 2 * (p & 1) as usize)
}

/// Coefficients of Cephes `logf`'s polynomial, highest first.
const LN_P: [f32; 9] = [7.037_683_6e-2, -1.151_461e-1, 1.167_699_9e-1, -1.242_014_1e-1, 1.424_932_3e-1, -1.666_805_8e-1, 2.000_071_5e-1, -2.499_999_4e-1, 3.333_333e-1];
/// Cephes `sinf` on [-pi/4, pi/4]: `sin a = a + a z (S0 + z (S1 + z S2))`, z = a^2.
const SIN_P: [f32; 3] = [-1.951_529_6e-4, 8.332_161e-3, -1.666_665_5e-1];
/// Cephes `cosf` on [-pi/4, pi/4]: `cos a = 1 - z / 2 + z^2 (C0 + z (C1 + z C2))`.
const COS_P: [f32; 3] = [2.443_315_7e-5, -1.388_731_6e-3, 4.166_664_6e-2];
/// Radians per unit of a 24-bit angle (2 pi / 2^24).
const ANGLE_UNIT: f32 = std::f32::consts::TAU / (1u32 << 24) as f32;

/// Natural logarithm of a positive, normal f32 (Cephes `logf` with fused multiply-adds),
/// branch-free. The vector paths repeat it operation for operation: IEEE fused
/// multiply-adds round once everywhere, so every path gives the same bits.
#[inline(always)]
pub(crate) fn ln(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    // m in [sqrt(1/2), sqrt(2)).
    let big = m > std::f32::consts::SQRT_2;
    m = if big { m * 0.5 } else { m };
    e += i32::from(big);
    let e = e as f32;
    let f = m - 1.0;
    let z = f * f;
    let p = LN_P[1..].iter().fold(LN_P[0], |p, &c| p.mul_add(f, c));
    let y = (f * z).mul_add(p, e.mul_add(-2.121_944_4e-4, -0.5 * z));
    e.mul_add(0.693_359_4, f + y)
}

/// `(sin, cos)` of the angle `2 pi h / 2^24` for `h < 2^24`, branch-free: the nearest
/// quarter turn is taken off in integers (exact), the rest, in [-pi/4, pi/4], goes through
/// Cephes' minimax polynomials (degree 7 and 8: half the work of Taylor series over
/// [-pi/2, pi/2]), and the quarter turn swaps and negates.
#[inline(always)]
pub(crate) fn sin_cos_turn(h: u32) -> (f32, f32) {
    let q = (h + (1 << 21)) >> 22;
    let a = (h as i32 - (q << 22) as i32) as f32 * ANGLE_UNIT;
    let z = a * a;
    let s = (a * z).mul_add(SIN_P[1..].iter().fold(SIN_P[0], |p, &c| p.mul_add(z, c)), a);
    let c = (z * z).mul_add(COS_P[1..].iter().fold(COS_P[0], |p, &c| p.mul_add(z, c)), (-0.5f32).mul_add(z, 1.0));
    // Quarter turns 0..3: (s, c), (c, -s), (-s, -c), (-c, s).
    let (s, c) = if q & 1 == 0 { (s, c) } else { (c, s) };
    (f32::from_bits(s.to_bits() ^ ((q & 2) << 30)), f32::from_bits(c.to_bits() ^ (((q + 1) & 2) << 30)))
}

/// The Box–Muller pair `(z0, z1)` of the uniform words `h1` (the radius) and `h2` (the angle),
/// 24 bits of each.
#[inline(always)]
fn box_muller(h1: u32, h2: u32) -> (f32, f32) {
    let scale = 1.0 / (1u32 << 24) as f32;
    // u1 in (0, 1] (ln finite), the angle in [0, 2 pi).
    let u1 = 1.0 - (h1 >> 8) as f32 * scale;
    let r = (-2.0 * ln(u1)).sqrt();
    let (s, co) = sin_cos_turn(h2 >> 8);
    (r * co, r * s)
}

/// How a path computes the hash's counter blocks: [`Keys::block`], or [`Keys::block_aesni`]
/// where the CPU has AES-NI.
trait Blocks: Fn(&Keys, u32) -> [u32; 4] {}
impl<F: Fn(&Keys, u32) -> [u32; 4]> Blocks for F {}

/// Where one weight-noise draw writes: `rows` runs of `len` values, run r being values
/// `start + r * stride ..` of the layer's stream (the noise of the weights with those flat
/// indices: `sigma` is read at the same indices) and stored at `out[r * out_stride..]`. A
/// whole layer is one run; [`super::dense::flipout_dense`] draws a column panel's rows
/// straight into its packed panel. Every run starts on a 16-value step (`start` and
/// `stride` multiples of 16), so each value is the one the
/// whole-layer draw gives at its index.
#[derive(Clone, Copy, Debug)]
pub struct Runs {
    /// Stream index of run 0's first value.
    pub start: usize,
    /// Runs.
    pub rows: usize,
    /// Values per run.
    pub len: usize,
    /// Stream (and `sigma`) distance between runs.
    pub stride: usize,
    /// `out` distance between runs.
    pub out_stride: usize,
}

impl Runs {
    /// The first values of the stream, `len` of them, in order.
    pub fn whole(len: usize) -> Runs {
        Runs { start: 0, rows: 1, len, stride: 0, out_stride: 0 }
    }
}

/// `out[i] = sigma[i] * eps_i` over the runs of `at`.
#[inline(always)]
fn noise_impl(keys: &Keys, block: impl Blocks, sigma: &[f32], out: &mut [f32], at: Runs) {
    for r in 0..at.rows {
        let s0 = at.start + r * at.stride;
        debug_assert!(s0.is_multiple_of(16), "a run starts off a step");
        noise_run(keys, &block, s0 / 16, &sigma[s0..s0 + at.len], &mut out[r * at.out_stride..][..at.len]);
    }
}

/// `out[i] = sigma[i] * eps_i` for values `16 * step + i` of the stream: 16 values are 8
/// Box–Muller pairs (the 8 `z0`, then the 8 `z1`), pair `p` from words `2 (p & 1)` and
/// `2 (p & 1) + 1` of counter block `p / 2` ([`block_of`]).
#[inline(always)]
fn noise_run(keys: &Keys, block: &impl Blocks, step: usize, sigma: &[f32], out: &mut [f32]) {
    const PAIRS: usize = 8;
    for (i, (sc, oc)) in sigma.chunks(2 * PAIRS).zip(out.chunks_mut(2 * PAIRS)).enumerate() {
        let b0 = ((step + i) as u32).wrapping_mul(PAIRS as u32 / 2) & BLOCK_MASK;
        let blocks: [[u32; 4]; PAIRS / 2] = std::array::from_fn(|t| block(keys, b0 + t as u32));
        let mut z = [0f32; 2 * PAIRS];
        let (first, second) = z.split_at_mut(PAIRS);
        for (l, (z0, z1)) in first.iter_mut().zip(second.iter_mut()).enumerate() {
            let w = &blocks[l / 2][2 * (l & 1)..];
            (*z0, *z1) = box_muller(w[0], w[1]);
        }
        for (o, (&s, &e)) in oc.iter_mut().zip(sc.iter().zip(&z)) {
            *o = s * e;
        }
    }
}

/// The pair behind value `i` of [`noise_impl`]'s stream (16 values per step: value `16 j + p`
/// is `z0` of pair `8 j + p` for p < 8, else `z1` of pair `8 j + p - 8`), modulo 2^31.
#[inline(always)]
fn pair_of(i: u32) -> u32 {
    (((i >> 4) << 3) | (i & 7)) & 0x7fff_ffff
}

/// `out[t] = sigma[t] * eps_idx[t]` for the values `idx` of [`noise_impl`]'s stream (flat
/// indices modulo 2^32): random access, bit for bit the same values. 16 values at a time,
/// their blocks first and then the transform, in a loop of its own that LLVM vectorizes
/// (a block and a transform per value in one loop ran 7x slower with AVX2).
#[inline(always)]
fn noise_at_impl(keys: &Keys, block: impl Blocks, idx: &[u32], sigma: &[f32], out: &mut [f32]) {
    const STEP: usize = 16;
    for ((oc, sc), ic) in out.chunks_mut(STEP).zip(sigma.chunks(STEP)).zip(idx.chunks(STEP)) {
        let (mut h1, mut h2) = ([0u32; STEP], [0u32; STEP]);
        for ((a, b), &i) in h1.iter_mut().zip(&mut h2).zip(ic) {
            let (blk, w) = block_of(pair_of(i));
            let h = block(keys, blk);
            (*a, *b) = (h[w], h[w + 1]);
        }
        for ((((o, &s), &i), &a), &b) in oc.iter_mut().zip(sc).zip(ic).zip(&h1).zip(&h2) {
            let (z0, z1) = box_muller(a, b);
            *o = s * if i & 8 == 0 { z0 } else { z1 };
        }
    }
}

/// # Safety
/// The CPU supports AVX2, FMA and AES-NI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,aes")]
unsafe fn noise_at_avx2(keys: &Keys, idx: &[u32], sigma: &[f32], out: &mut [f32]) {
    // SAFETY: AES-NI is enabled here.
    noise_at_impl(keys, |k: &Keys, b| unsafe { k.block_aesni(b) }, idx, sigma, out)
}

/// # Safety
/// The CPU supports AVX2, FMA and AES-NI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,aes")]
unsafe fn noise_avx2(keys: &Keys, sigma: &[f32], out: &mut [f32], at: Runs) {
    // SAFETY: AES-NI is enabled here.
    noise_impl(keys, |k: &Keys, b| unsafe { k.block_aesni(b) }, sigma, out, at)
}

/// The 64 sign masks of one random word: bit i becomes the f32 sign bit of mask i. A test
/// against a constant vector per bit (no per-lane variable shift), so it vectorizes on plain
/// SSE2: Flipout draws a mask per example and unit, as many as the weights on small nets.
#[inline(always)]
fn word_masks(bits: u64) -> [u32; 64] {
    let mut out = [0u32; 64];
    for (half, word) in out.chunks_exact_mut(32).zip([bits as u32, (bits >> 32) as u32]) {
        for (o, &b) in half.iter_mut().zip(&BITS) {
            *o = u32::from(word & b != 0) << 31;
        }
    }
    out
}

/// Bit i set in value i.
const BITS: [u32; 32] = {
    let mut b = [0; 32];
    let mut i = 0;
    while i < 32 {
        b[i] = 1 << i;
        i += 1;
    }
    b
};

/// [`word_masks`] written straight into `out` (at most 64 values, possibly uninitialized):
/// no 256-byte array returned and copied per word.
#[inline(always)]
fn word_masks_into(bits: u64, out: &mut [std::mem::MaybeUninit<u32>]) {
    for (half, word) in out.chunks_mut(32).zip([bits as u32, (bits >> 32) as u32]) {
        for (o, &b) in half.iter_mut().zip(&BITS) {
            o.write(u32::from(word & b != 0) << 31);
        }
    }
}

/// The signs of values `p..p + len` (`len <= 64`) of [`Sampler::sign_bits_into`]'s words as
/// the low bits of one word (set: -1), read from one or two words (the second only when the
/// window reaches into it); the bits above `len` are the stream's next ones.
///
/// # Panics
/// When `words` does not hold bit `p + len - 1`.
#[inline(always)]
pub(crate) fn sign_bits_at(words: &[u64], p: usize, len: usize) -> u64 {
    debug_assert!(len <= 64);
    let (w, b) = (p / 64, p % 64);
    let bits = words[w] >> b;
    if b + len > 64 {
        bits | words[w + 1] << (64 - b)
    } else {
        bits
    }
}

/// `out = x * s`, s the signs of [`Sampler::sign_bits_into`]'s words `bits` (bit i of word
/// i / 64 for value i; set: -1): Flipout's input flip, a sign-bit XOR per value.
///
/// # Panics
/// When `out` is shorter than `x` or `bits` holds fewer than `x.len()` bits.
pub(crate) fn flip_by_bits(x: &[f32], bits: &[u64], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    let vector = std::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    let vector = false;
    flip_by_bits_on(x, bits, out, vector)
}

/// [`flip_by_bits`], the whole words with AVX-512 when `vector` (which the CPU must support)
/// or all of it portably.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn flip_by_bits_on(x: &[f32], bits: &[u64], out: &mut [f32], vector: bool) {
    assert!(out.len() >= x.len() && bits.len() * 64 >= x.len(), "flip: slices too short");
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if vector {
        // SAFETY: AVX-512F is present (the caller's word, from detection); lengths checked above.
        done = unsafe { flip_by_bits_avx512(x, bits, out) };
    }
    for (c, (xc, oc)) in x[done..].chunks(64).zip(out[done..].chunks_mut(64)).enumerate() {
        let masks = word_masks(bits[done / 64 + c]);
        for ((o, &v), &m) in oc.iter_mut().zip(xc).zip(&masks) {
            *o = f32::from_bits(v.to_bits() ^ m);
        }
    }
}

/// [`flip_by_bits`] for the whole words of `x` (64 values per word): 16 bits of a word are
/// the lane mask of one XOR of the sign bit. Returns the values done.
///
/// # Safety
/// The CPU supports AVX-512F; `out` and `bits` hold what [`flip_by_bits`] checks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn flip_by_bits_avx512(x: &[f32], bits: &[u64], out: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let sign = _mm512_set1_epi32(i32::MIN);
    let words = x.len() / 64;
    for (c, (xc, oc)) in x.chunks_exact(64).zip(out.chunks_exact_mut(64)).enumerate() {
        for q in 0..4 {
            // SAFETY: within the 64 values of `xc` and `oc`.
            unsafe {
                let v = _mm512_castps_si512(_mm512_loadu_ps(xc.as_ptr().add(16 * q)));
                let r = _mm512_mask_xor_epi32(v, (bits[c] >> (16 * q)) as u16, v, sign);
                _mm512_storeu_ps(oc.as_mut_ptr().add(16 * q), _mm512_castsi512_ps(r));
            }
        }
    }
    words * 64
}

/// The values at `x` in the lanes of `live` (a run from lane 0; the other lanes zero) and
/// the same flipped by their signs, bits `bit0..` of the sign words `words` (set: -1): one
/// vector of inputs beside its Flipout flip, for the kernels that pack both side by side.
///
/// # Safety
/// The CPU supports AVX-512F; `x` holds the lanes of `live` and `words` their bits.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn with_flips_avx512(x: *const f32, live: std::arch::x86_64::__mmask16, words: &[u64], bit0: usize) -> [std::arch::x86_64::__m512; 2] {
    use std::arch::x86_64::*;
    let lanes = 16 - live.leading_zeros() as usize;
    let signs = sign_bits_at(words, bit0, lanes) as u16 & live;
    // SAFETY: the caller's contract; the load is masked to the lanes of `live`.
    unsafe {
        let v = _mm512_castps_si512(_mm512_maskz_loadu_ps(live, x));
        [v, _mm512_mask_xor_epi32(v, signs, v, _mm512_set1_epi32(i32::MIN))].map(|v| _mm512_castsi512_ps(v))
    }
}

/// [`Keys::block`] of the 4 counter blocks in `v` (one per 128-bit lane, `[b, 0, 0, 0]`).
///
/// # Safety
/// The CPU supports AVX-512F and VAES.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,vaes")]
#[inline]
unsafe fn blocks_avx512(keys: &Keys, v: std::arch::x86_64::__m512i) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let key = |k: u128| _mm512_broadcast_i32x4(_mm_set_epi64x((k >> 64) as i64, k as i64));
    let mut v = _mm512_xor_si512(v, key(keys.0[0]));
    for &k in &keys.0[1..] {
        v = _mm512_aesenc_epi128(v, key(k));
    }
    v
}

/// The Box–Muller pairs of the 16 lanes' uniform words `h1` and `h2`, as [`box_muller`]
/// computes them, operation for operation (fused multiply-adds where it has them): bitwise the
/// same `(z0, z1)`.
///
/// # Safety
/// The CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn box_muller_avx512(h1: std::arch::x86_64::__m512i, h2: std::arch::x86_64::__m512i) -> (std::arch::x86_64::__m512, std::arch::x86_64::__m512) {
    use std::arch::x86_64::*;
    use std::f32::consts::SQRT_2;
    let f = _mm512_set1_ps;
    let (add, sub, mul) = (|a, b| _mm512_add_ps(a, b), |a, b| _mm512_sub_ps(a, b), |a, b| _mm512_mul_ps(a, b));
    let fma = |a, b, c| _mm512_fmadd_ps(a, b, c);
    let uniform = |h: __m512i| mul(_mm512_cvtepi32_ps(_mm512_srli_epi32::<8>(h)), f(1.0 / (1u32 << 24) as f32));
    let one = f(1.0);
    let u1 = sub(one, uniform(h1));
    // ln(u1), as `ln`.
    let bits = _mm512_castps_si512(u1);
    let e = _mm512_sub_epi32(_mm512_and_si512(_mm512_srli_epi32::<23>(bits), _mm512_set1_epi32(0xff)), _mm512_set1_epi32(127));
    let m = _mm512_castsi512_ps(_mm512_or_si512(_mm512_and_si512(bits, _mm512_set1_epi32(0x007f_ffff)), _mm512_set1_epi32(0x3f80_0000)));
    let big = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(m, f(SQRT_2));
    let m = _mm512_mask_mul_ps(m, big, m, f(0.5));
    let e = _mm512_cvtepi32_ps(_mm512_mask_add_epi32(e, big, e, _mm512_set1_epi32(1)));
    let x = sub(m, one);
    let z = mul(x, x);
    let p = LN_P[1..].iter().fold(f(LN_P[0]), |p, &k| fma(p, x, f(k)));
    let y = fma(mul(x, z), p, fma(e, f(-2.121_944_4e-4), mul(f(-0.5), z)));
    let ln = fma(e, f(0.693_359_4), add(x, y));
    let r = _mm512_sqrt_ps(mul(f(-2.0), ln));
    // sin_cos_turn(h >> 8), as there.
    let h = _mm512_srli_epi32::<8>(h2);
    let q = _mm512_srli_epi32::<22>(_mm512_add_epi32(h, _mm512_set1_epi32(1 << 21)));
    let a = mul(_mm512_cvtepi32_ps(_mm512_sub_epi32(h, _mm512_slli_epi32::<22>(q))), f(ANGLE_UNIT));
    let z = mul(a, a);
    let s = fma(mul(a, z), SIN_P[1..].iter().fold(f(SIN_P[0]), |p, &k| fma(p, z, f(k))), a);
    let co = fma(mul(z, z), COS_P[1..].iter().fold(f(COS_P[0]), |p, &k| fma(p, z, f(k))), fma(f(-0.5), z, one));
    let swap = _mm512_test_epi32_mask(q, _mm512_set1_epi32(1));
    let (s, co) = (_mm512_mask_blend_ps(swap, s, co), _mm512_mask_blend_ps(swap, co, s));
    let two = _mm512_set1_epi32(2);
    let s = _mm512_xor_si512(_mm512_castps_si512(s), _mm512_slli_epi32::<30>(_mm512_and_si512(q, two)));
    let co = _mm512_xor_si512(_mm512_castps_si512(co), _mm512_slli_epi32::<30>(_mm512_and_si512(_mm512_add_epi32(q, _mm512_set1_epi32(1)), two)));
    (mul(r, _mm512_castsi512_ps(co)), mul(r, _mm512_castsi512_ps(s)))
}

/// [`noise_at_impl`] in AVX-512, 16 indices per step: their pairs' counter blocks spread over
/// 4 vectors of 4 blocks, hashed by [`blocks_avx512`], each lane's two words gathered back,
/// the pairs by [`box_muller_avx512`], `z0` or `z1` picked by bit 3 of the index; the tail
/// under a lane mask.
///
/// # Safety
/// The CPU supports AVX-512F and VAES; `sigma` and `out` hold at least `idx.len()` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,vaes")]
unsafe fn noise_at_avx512(keys: &Keys, idx: &[u32], sigma: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let len = idx.len();
    debug_assert!(sigma.len() >= len && out.len() >= len);
    let set = |v: [i32; 16]| _mm512_loadu_si512(v.as_ptr().cast());
    // Lane t's block to word 0 of 128-bit lane t % 4 of vector t / 4.
    let spread: [__m512i; 4] = std::array::from_fn(|q| set(std::array::from_fn(|l| (4 * q + l / 4) as i32)));
    // Then lane t reads word 4 (t % 8) + w of vectors (0, 1) for t < 8, (2, 3) for the rest.
    let slot = set(std::array::from_fn(|t| 4 * (t % 8) as i32));
    for t0 in (0..len).step_by(16) {
        let lanes: __mmask16 = if len - t0 >= 16 { 0xffff } else { (1u16 << (len - t0)) - 1 };
        // SAFETY: the lanes under the mask are below len, inside all three slices.
        unsafe {
            let i = _mm512_maskz_loadu_epi32(lanes, idx.as_ptr().add(t0).cast());
            // pair_of(i), then block_of.
            let p = _mm512_and_si512(_mm512_or_si512(_mm512_slli_epi32::<3>(_mm512_srli_epi32::<4>(i)), _mm512_and_si512(i, _mm512_set1_epi32(7))), _mm512_set1_epi32(0x7fff_ffff));
            let b = _mm512_and_si512(_mm512_srli_epi32::<1>(p), _mm512_set1_epi32(BLOCK_MASK as i32));
            let h: [__m512i; 4] = std::array::from_fn(|q| blocks_avx512(keys, _mm512_maskz_permutexvar_epi32(0x1111, spread[q], b)));
            let w = _mm512_add_epi32(slot, _mm512_slli_epi32::<1>(_mm512_and_si512(p, _mm512_set1_epi32(1))));
            let word = |w| _mm512_mask_blend_epi32(0xff00, _mm512_permutex2var_epi32(h[0], w, h[1]), _mm512_permutex2var_epi32(h[2], w, h[3]));
            let (z0, z1) = box_muller_avx512(word(w), word(_mm512_add_epi32(w, _mm512_set1_epi32(1))));
            let second = _mm512_test_epi32_mask(i, _mm512_set1_epi32(8));
            let eps = _mm512_mask_blend_ps(second, z0, z1);
            let s = _mm512_maskz_loadu_ps(lanes, sigma.as_ptr().add(t0));
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(t0), lanes, _mm512_mul_ps(s, eps));
        }
    }
}

/// [`noise_impl`] written out in AVX-512 (LLVM vectorized it only 8 lanes wide, and spent
/// 2.3 ns per normal): 16 pairs per step from 8 counter blocks in two vectors, their `u1`
/// words (even) and angle words (odd) gathered into one vector each, every operation in
/// [`noise_impl`]'s order, so the values are bitwise the same.
///
/// Runs that start off a 32-value step (a 16-value one) take the scalar code (on AES-NI).
///
/// # Safety
/// The CPU supports AVX-512F, VAES and AES-NI; the runs of `at` lie within `sigma` and `out`
/// (full 32-value chunks are read and written with vector loads and stores, the rest by index).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,vaes,aes")]
unsafe fn noise_avx512(keys: &Keys, sigma: &[f32], out: &mut [f32], at: Runs) {
    use std::arch::x86_64::*;
    // Word 0 of each 128-bit lane: blocks 0..4 of the step's 8.
    let first = _mm512_setr_epi32(0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0);
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    for run in 0..at.rows {
        let s0 = at.start + run * at.stride;
        if at.rows > 1 {
            rows_ahead(sigma, s0, at.stride, at.len);
        }
        let (sigma, out) = (&sigma[s0..s0 + at.len], &mut out[run * at.out_stride..][..at.len]);
        if !s0.is_multiple_of(32) {
            // SAFETY: AES-NI is enabled here.
            noise_run(keys, &|k: &Keys, b| unsafe { k.block_aesni(b) }, s0 / 16, sigma, out);
            continue;
        }
        for (i, (sc, oc)) in sigma.chunks(32).zip(out.chunks_mut(32)).enumerate() {
            let b0 = ((s0 / 32 + i) as u32).wrapping_mul(8) & BLOCK_MASK;
            let lo = _mm512_mask_add_epi32(first, 0x1111, first, _mm512_set1_epi32(b0 as i32));
            let hi = _mm512_mask_add_epi32(lo, 0x1111, lo, _mm512_set1_epi32(4));
            let (lo, hi) = (blocks_avx512(keys, lo), blocks_avx512(keys, hi));
            let (z0, z1) = box_muller_avx512(_mm512_permutex2var_epi32(lo, even, hi), _mm512_permutex2var_epi32(lo, odd, hi));
            // Runs of 16: cosines then sines of pairs 0..8, then of pairs 8..16.
            let runs = [_mm512_shuffle_f32x4::<0b01_00_01_00>(z0, z1), _mm512_shuffle_f32x4::<0b11_10_11_10>(z0, z1)];
            if sc.len() == 32 && oc.len() == 32 {
                for (h, eps) in runs.into_iter().enumerate() {
                    let v = _mm512_mul_ps(_mm512_loadu_ps(sc.as_ptr().add(16 * h)), eps);
                    _mm512_storeu_ps(oc.as_mut_ptr().add(16 * h), v);
                }
            } else {
                let mut eps = [0f32; 32];
                _mm512_storeu_ps(eps.as_mut_ptr(), runs[0]);
                _mm512_storeu_ps(eps.as_mut_ptr().add(16), runs[1]);
                for (o, (&s, &e)) in oc.iter_mut().zip(sc.iter().zip(&eps)) {
                    *o = s * e;
                }
            }
        }
    }
}

/// One weight-noise draw of a [`Sampler`]: its values at any flat index, computed on demand
/// (counter-based), bitwise those of [`Sampler::noise_into`].
#[derive(Clone, Copy, Debug)]
pub struct NoiseKey {
    keys: Keys,
}

/// The code paths of the weight-noise generator, all giving the same bits.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    /// 16 lanes, 4 AES blocks per instruction: AVX-512F, VAES and AES-NI.
    Avx512,
    /// Scalar AES-NI blocks, the rest as LLVM vectorizes it for AVX2 and FMA.
    Avx2,
    /// Any CPU (the `aes` crate's rounds).
    Portable,
}

impl Path {
    /// The fastest path this CPU runs.
    fn detect() -> Path {
        #[cfg(target_arch = "x86_64")]
        {
            let aes = std::is_x86_feature_detected!("aes");
            if aes && std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("vaes") {
                return Path::Avx512;
            }
            if aes && std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Path::Avx2;
            }
        }
        Path::Portable
    }

    /// Whether this CPU runs `self`.
    fn supported(self) -> bool {
        match (self, Path::detect()) {
            (Path::Portable, _) | (_, Path::Avx512) => true,
            (p, d) => p == d,
        }
    }
}

impl NoiseKey {
    /// `out[r * at.out_stride + i] = sigma[v] * eps_v` for the values `v` of the runs of `at`
    /// (`v = at.start + r * at.stride + i`).
    ///
    /// # Panics
    /// When a run lies outside `sigma` or `out` (a caller's bug).
    pub fn fill(&self, sigma: &[f32], out: &mut [f32], at: Runs) {
        self.fill_on(Path::detect(), sigma, out, at)
    }

    /// [`NoiseKey::fill`] on `path`, which the CPU must run (tests compare the paths).
    fn fill_on(&self, path: Path, sigma: &[f32], out: &mut [f32], at: Runs) {
        if at.rows == 0 || at.len == 0 {
            return;
        }
        let last = at.start + (at.rows - 1) * at.stride;
        assert!(
            last + at.len <= sigma.len() && (at.rows - 1) * at.out_stride + at.len <= out.len() && at.start.is_multiple_of(16) && (at.rows == 1 || at.stride.is_multiple_of(16)),
            "noise runs off their slices or off the 16-value steps"
        );
        assert!(path.supported(), "noise: {path:?} does not run on this CPU");
        let keys = &self.keys;
        match path {
            // SAFETY: the CPU runs the path (asserted above); the runs lie within both slices
            // (asserted above).
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => unsafe { noise_avx512(keys, sigma, out, at) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => unsafe { noise_avx2(keys, sigma, out, at) },
            _ => noise_impl(keys, Keys::block, sigma, out, at),
        }
    }

    /// `out[t] = sigma[t] * eps[idx[t]]`: the draw's values at the flat indices `idx`
    /// (random access, bitwise those of [`NoiseKey::fill`] at the same indices).
    ///
    /// # Panics
    /// When `sigma` or `out` is shorter than `idx` (a caller's bug).
    pub fn fill_at(&self, idx: &[u32], sigma: &[f32], out: &mut [f32]) {
        self.fill_at_on(Path::detect(), idx, sigma, out)
    }

    /// [`NoiseKey::fill_at`] on `path`, which the CPU must run.
    fn fill_at_on(&self, path: Path, idx: &[u32], sigma: &[f32], out: &mut [f32]) {
        assert!(sigma.len() >= idx.len() && out.len() >= idx.len(), "noise_at_into: slices too short");
        assert!(path.supported(), "noise: {path:?} does not run on this CPU");
        let keys = &self.keys;
        match path {
            // SAFETY: the CPU runs the path (asserted above); lengths checked above.
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => unsafe { noise_at_avx512(keys, idx, sigma, out) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => unsafe { noise_at_avx2(keys, idx, sigma, out) },
            _ => noise_at_impl(keys, Keys::block, idx, sigma, out),
        }
    }
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

    /// `mu + sigma * eps`, eps ~ N(0, 1), elementwise (few values: biases).
    pub fn gaussian(&mut self, mu: &[f32], sigma: &[f32]) -> Vec<f32> {
        mu.iter().zip(sigma).map(|(&m, &s)| m + s * self.rng.sample::<f32, _>(StandardNormal)).collect()
    }

    /// `sigma * eps`, eps ~ N(0, 1), elementwise (same draws as [`Sampler::noise_into`]).
    pub fn noise(&mut self, sigma: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; sigma.len()];
        self.noise_into(sigma, &mut out);
        out
    }

    /// `out = sigma * eps`, eps ~ N(0, 1), elementwise, with the vectorized generator.
    pub fn noise_into(&mut self, sigma: &[f32], out: &mut [f32]) {
        let len = sigma.len().min(out.len());
        self.noise_key().fill(sigma, out, Runs::whole(len));
    }

    /// The key of the next weight-noise draw ([`Sampler::noise_into`] takes the same one
    /// from the stream): the caller computes the draw's values where and when it needs them
    /// with [`NoiseKey::fill`].
    pub fn noise_key(&mut self) -> NoiseKey {
        NoiseKey { keys: Keys::new(self.rng.random()) }
    }

    /// `out[t] = sigma[t] * eps[idx[t]]`, eps being the standard normals that
    /// [`Sampler::noise_into`] would draw in place of this call for a tensor holding every
    /// flat index of `idx` (same key from the stream, bit for bit the same values): the
    /// noise of a pruned kernel's kept weights without drawing the pruned ones.
    ///
    /// # Panics
    /// When `sigma` or `out` is shorter than `idx`.
    pub fn noise_at_into(&mut self, idx: &[u32], sigma: &[f32], out: &mut [f32]) {
        self.noise_key().fill_at(idx, sigma, out)
    }

    /// `len` random sign masks (0 or the f32 sign bit, each with probability 1/2), 64 per
    /// draw, into `out`: XOR-ing a value's bits with one multiplies it by a Rademacher sign.
    /// Same stream as [`Sampler::signs`].
    pub fn sign_masks_into(&mut self, len: usize, out: &mut Vec<u32>) {
        out.clear();
        out.reserve(len);
        // Written in place: extending by each word's 64 masks went through a memmove call
        // per word (as much time as making the masks).
        for chunk in out.spare_capacity_mut()[..len].chunks_mut(64) {
            word_masks_into(self.rng.random(), chunk);
        }
        // SAFETY: the first `len` values were written just above, within the capacity.
        unsafe { out.set_len(len) };
    }

    /// The random words behind [`Sampler::sign_masks_into`]`(len)` (same stream): bit j of
    /// word i is the sign of value 64 i + j (set: -1).
    pub fn sign_bits_into(&mut self, len: usize, out: &mut Vec<u64>) {
        out.clear();
        out.extend((0..len.div_ceil(64)).map(|_| self.rng.random::<u64>()));
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

    /// FIPS-197 Appendix C.1 (AES-128): the state at the start of round 1, round 1's key and
    /// the state at the start of round 2, as big-endian hex (byte 0 first).
    const FIPS_ROUND_1: [u128; 3] = [0x0010_2030_4050_6070_8090_a0b0_c0d0_e0f0, 0xd6aa_74fd_d2af_72fa_daa6_78f1_d6ab_76fe, 0x89d8_10e8_855a_ce68_2d18_43d8_cb12_8fe4];

    #[test]
    fn the_round_function_is_fips_197s_aes_round() {
        let [start, key, next] = FIPS_ROUND_1.map(u128::to_be_bytes);
        let mut v = aes::Block::from(start);
        aes::hazmat::cipher_round(&mut v, &aes::Block::from(key));
        assert_eq!(<[u8; 16]>::from(v), next, "aes crate");
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("aes") {
            use std::arch::x86_64::*;
            // SAFETY: the CPU supports AES-NI; 16-byte unaligned loads and stores.
            let got = unsafe {
                let r = _mm_aesenc_si128(_mm_loadu_si128(start.as_ptr().cast()), _mm_loadu_si128(key.as_ptr().cast()));
                let mut out = [0u8; 16];
                _mm_storeu_si128(out.as_mut_ptr().cast(), r);
                out
            };
            assert_eq!(got, next, "aesenc");
        }
    }

    #[test]
    fn polynomial_ln_sin_cos_match_libm() {
        for i in 1..=100_000u32 {
            let x = i as f32 / 100_000.0;
            assert!((ln(x) - x.ln()).abs() <= 2e-7 * x.ln().abs().max(1.0), "ln({x})");
        }
        // Every 24-bit angle near the quarter-turn seams and a stride over the rest, against
        // f64 libm: 1e-7 absolute is a few float ulps of 1.
        let seams = (0..5u32).flat_map(|q| (0..2000u32).map(move |d| (q << 22).wrapping_add(d).wrapping_sub(1000) & 0xff_ffff));
        for h in seams.chain((0..1 << 24).step_by(97)) {
            let t = std::f64::consts::TAU * f64::from(h) / f64::from(1u32 << 24);
            let (s, c) = sin_cos_turn(h);
            assert!((f64::from(s) - t.sin()).abs() < 1.2e-7 && (f64::from(c) - t.cos()).abs() < 1.2e-7, "sin_cos_turn({h}) = {s}, {c}");
        }
        assert!((ln(1e-30) - 1e-30f32.ln()).abs() < 1e-5);
    }

    /// erfc to 1.2e-7 relative (Numerical Recipes' Chebyshev fit), in f64: the reference
    /// normal CDF of the statistical tests.
    fn erfc(x: f64) -> f64 {
        let z = x.abs();
        let t = 1.0 / (1.0 + 0.5 * z);
        let c = [-1.265_512_23, 1.000_023_68, 0.374_091_96, 0.096_784_18, -0.186_288_06, 0.278_868_07, -1.135_203_98, 1.488_515_87, -0.822_152_23, 0.170_872_77];
        let poly = c.iter().rev().fold(0.0, |acc, &k| acc * t + k);
        let r = t * (-z * z + poly).exp();
        if x >= 0.0 {
            r
        } else {
            2.0 - r
        }
    }

    /// The standard normal CDF.
    fn phi(x: f64) -> f64 {
        0.5 * erfc(-x / std::f64::consts::SQRT_2)
    }

    #[test]
    fn four_million_draws_are_standard_normal_and_independent() {
        // Four draws (keys) of 2^20 values each, as layers draw them.
        let per = 1 << 20;
        let mut a = Vec::new();
        let mut s = Sampler::new(2026, 12);
        for _ in 0..4 {
            let mut out = vec![0f32; per];
            s.noise_into(&vec![1.0; per], &mut out);
            a.extend(out.into_iter().map(f64::from));
        }
        let n = a.len() as f64;
        // Moments against 5 standard errors (1/sqrt n, sqrt(2/n), sqrt(6/n), sqrt(24/n)).
        let moment = |p: i32| a.iter().map(|v| v.powi(p)).sum::<f64>() / n;
        let se = |v: f64| 5.0 * (v / n).sqrt();
        assert!(moment(1).abs() < se(1.0), "mean {}", moment(1));
        assert!((moment(2) - 1.0).abs() < se(2.0), "variance {}", moment(2));
        assert!(moment(3).abs() < se(15.0), "third moment {}", moment(3));
        assert!((moment(4) - 3.0).abs() < se(96.0), "fourth moment {}", moment(4));
        // Two-sided tails beyond 3, 4 and 5 sigma against the exact normal, at 5 binomial
        // standard errors (about 270 draws beyond 4 sigma, 2.4 beyond 5).
        for k in [3.0, 4.0, 5.0] {
            let p = 2.0 * phi(-k);
            let got = a.iter().filter(|v| v.abs() > k).count() as f64;
            assert!((got - n * p).abs() < 5.0 * (n * p).sqrt() + 3.0, "beyond {k} sigma: {got} draws, expected {}", n * p);
        }
        // Kolmogorov-Smirnov against the normal CDF: the 0.1% critical value is 1.95 / sqrt n.
        let mut sorted = a.clone();
        sorted.sort_by(f64::total_cmp);
        let d = sorted.iter().enumerate().map(|(i, &v)| {
            let f = phi(v);
            (f - i as f64 / n).abs().max(((i + 1) as f64 / n - f).abs())
        });
        let d = d.fold(0.0, f64::max);
        assert!(d < 1.95 / n.sqrt(), "KS distance {d}");
        // Independence of neighbours: the quartile cells of (a[i], a[i + lag]) are
        // equiprobable under independence; chi-square with 15 degrees of freedom, 0.1%
        // critical value 37.7. Lag 8 pairs the two values of one Box-Muller pair; 16 and 32
        // cross the generator's steps.
        let q = 0.674_489_750_196_081_7;
        let cell = |v: f64| usize::from(v > -q) + usize::from(v > 0.0) + usize::from(v > q);
        for lag in [1, 7, 8, 9, 16, 32] {
            let mut counts = [0f64; 16];
            for (x, y) in a.iter().zip(&a[lag..]) {
                counts[4 * cell(*x) + cell(*y)] += 1.0;
            }
            let e = (n - lag as f64) / 16.0;
            let chi2 = counts.iter().map(|c| (c - e).powi(2) / e).sum::<f64>();
            assert!(chi2 < 37.7, "lag {lag}: chi-square {chi2}");
        }
    }

    #[test]
    fn streams_are_reproducible_distinct_and_standard_normal() {
        let n = 200_000;
        let a = Sampler::new(7, 0).noise(&vec![1.0; n]);
        assert_eq!(a, Sampler::new(7, 0).noise(&vec![1.0; n]));
        assert_ne!(a, Sampler::new(7, 1).noise(&vec![1.0; n]));
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        // Standard errors: mean 0.0022, variance 0.0032; bounds at about 5 sigma.
        assert!(mean.abs() < 0.011 && (var - 1.0).abs() < 0.016, "{mean} {var}");
        // Normal CDF at 1 and 2 sigma (0.682689, 0.954500) and the 4th moment (3).
        let within = |k: f32| a.iter().filter(|v| v.abs() < k).count() as f64 / n as f64;
        assert!((within(1.0) - 0.682_689).abs() < 0.006, "{}", within(1.0));
        assert!((within(2.0) - 0.954_500).abs() < 0.003, "{}", within(2.0));
        let kurt = a.iter().map(|&v| (v as f64).powi(4)).sum::<f64>() / n as f64;
        assert!((kurt - 3.0).abs() < 0.12, "{kurt}");
        // Neighbouring draws are uncorrelated (pairs of one Box-Muller step and across steps).
        let lag = |d: usize| a.iter().zip(&a[d..]).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>() / (n - d) as f64;
        for d in [1, 8, 16] {
            assert!(lag(d).abs() < 0.012, "lag {d}: {}", lag(d));
        }
        // Sigma scales elementwise.
        let b = Sampler::new(7, 0).noise(&vec![2.0; n]);
        assert!(a.iter().zip(&b).all(|(x, y)| *y == 2.0 * x));
        let signs = Sampler::new(1, 2).signs(1000);
        let mut masks = Vec::new();
        Sampler::new(1, 2).sign_masks_into(1000, &mut masks);
        assert!(masks.iter().zip(&signs).all(|(&m, &s)| f32::from_bits(1f32.to_bits() ^ m) == s), "same stream, same signs");
        let mut words = Vec::new();
        Sampler::new(1, 2).sign_bits_into(1000, &mut words);
        assert_eq!(words.len(), 16);
        assert!(signs.iter().enumerate().all(|(i, &s)| (words[i / 64] >> (i % 64) & 1 == 1) == (s < 0.0)), "bits are the same signs");
        // Flips by the bits: 1000 values = 15 whole words (the vector path) and a tail.
        let x: Vec<f32> = (0..1000).map(|i| i as f32 - 500.5).collect();
        let mut flipped = vec![0f32; 1000];
        flip_by_bits(&x, &words, &mut flipped);
        assert!(flipped.iter().zip(&x).zip(&signs).all(|((&f, &v), &s)| f == v * s), "flips are the same signs");
        let mut portable = vec![0f32; 1000];
        flip_by_bits_on(&x, &words, &mut portable, false);
        assert_eq!(portable, flipped, "the portable flips are the vector ones");
        // Every vector path of the noise gives the portable values, bit for bit (lengths with
        // tails of every kind).
        let paths: Vec<Path> = [Path::Avx512, Path::Avx2].into_iter().filter(|p| p.supported()).collect();
        let key = NoiseKey { keys: Keys::new(0x0123_4567_89ab_cdef) };
        for len in [1, 15, 16, 17, 31, 32, 33, 1000, 4096] {
            let sigma: Vec<f32> = (0..len).map(|i| 0.5 + i as f32 * 1e-3).collect();
            let (mut want, mut got) = (vec![0f32; len], vec![0f32; len]);
            key.fill_on(Path::Portable, &sigma, &mut want, Runs::whole(len));
            for &path in &paths {
                got.fill(f32::NAN);
                key.fill_on(path, &sigma, &mut got, Runs::whole(len));
                assert_eq!(got, want, "{path:?}, {len}");
            }
        }
        // Runs (a column panel's rows, as the fused dense kernel draws them) give the whole
        // draw's values at their indices, on every path: runs on 32-value steps and off them
        // (start 16), lengths with tails, `out` strides wider than the runs.
        let (k, n) = (37, 96);
        let sigma: Vec<f32> = (0..k * n).map(|i| 0.5 + i as f32 * 1e-4).collect();
        let mut whole = vec![0f32; k * n];
        Sampler::new(5, 6).noise_into(&sigma, &mut whole);
        for (start, rows, len, stride, out_stride) in [(0, 37, 32, 96, 64), (32, 36, 32, 96, 40), (16, 37, 16, 96, 16), (64, 37, 32, 96, 32), (48, 5, 21, 96, 30), (0, 1, 37 * 96, 0, 0), (80, 2, 7, 2048, 7)] {
            let at = Runs { start, rows, len, stride, out_stride };
            let want = |out: &[f32]| (0..rows).all(|r| out[r * out_stride..][..len] == whole[start + r * stride..][..len]);
            let mut out = vec![f32::NAN; (rows - 1) * out_stride + len];
            Sampler::new(5, 6).noise_key().fill(&sigma, &mut out, at);
            assert!(want(&out), "dispatch {at:?}");
            let key = Sampler::new(5, 6).noise_key();
            for &path in paths.iter().chain(&[Path::Portable]) {
                out.fill(f32::NAN);
                key.fill_on(path, &sigma, &mut out, at);
                assert!(want(&out), "{path:?} {at:?}");
            }
        }
        // Random access into the stream: every path gives the values of the whole draw at
        // the asked indices, bit for bit (scattered, repeated, out of order, every tail).
        for len in [1, 15, 16, 17, 33, 300] {
            let total = 4096;
            let idx: Vec<u32> = (0..len).map(|t| ((t * 2654435761usize) % total) as u32).collect();
            let sigma: Vec<f32> = (0..len).map(|t| 0.25 + t as f32 * 1e-2).collect();
            let all = Sampler::new(5, 6).noise(&vec![1.0; total]);
            let want: Vec<f32> = idx.iter().zip(&sigma).map(|(&i, &s)| s * all[i as usize]).collect();
            let mut got = vec![0f32; len];
            Sampler::new(5, 6).noise_at_into(&idx, &sigma, &mut got);
            assert_eq!(got, want, "noise_at_into, {len}");
            let mut dense = vec![0f32; total];
            key.fill_on(Path::Portable, &vec![1.0; total], &mut dense, Runs::whole(total));
            let want: Vec<f32> = idx.iter().zip(&sigma).map(|(&i, &s)| s * dense[i as usize]).collect();
            for &path in paths.iter().chain(&[Path::Portable]) {
                got.fill(0.0);
                key.fill_at_on(path, &idx, &sigma, &mut got);
                assert_eq!(got, want, "{path:?}, {len}");
            }
        }
        // Flat indices past 2^32 wrap as the dense draw's counters do: the last index's pair
        // is the last of 2^31 pairs, in the last of 2^30 blocks.
        assert_eq!(block_of(pair_of(u32::MAX)), (BLOCK_MASK, 2));
        assert!(signs.iter().all(|&v| v == 1.0 || v == -1.0));
        let pos = signs.iter().filter(|&&v| v > 0.0).count();
        assert!((420..580).contains(&pos), "{pos}");
    }
}
