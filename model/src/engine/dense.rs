//! The weights of one layer, dense or sparse, and their product with row-major activations
//! or patch rows: `out[m, n] = p[m, k] @ W[k, n]`.

use super::aligned::{grown, Aligned};
use super::gemm::sgemm;
use super::row_pairs::{RowPairs, WEAVE};
use super::prefetch::rows_ahead;
use super::sampler::{flip_by_bits, sign_bits_at, NoiseKey, Runs};
#[cfg(target_arch = "x86_64")]
use super::sampler::with_flips_avx512;
use super::sparse::Csr;

/// A `[k, n]` kernel's posterior, as a dense matrix or on a CSR pattern.
#[derive(Debug, Clone)]
pub enum Weights {
    /// Full matrices W `[k, n]` (TF order, C order): products run on the GEMM.
    Dense {
        /// Means.
        mu: Vec<f32>,
        /// Scales, when Bayesian.
        sigma: Option<Vec<f32>>,
    },
    /// Kept weights only, on the pattern of W^T (`[n, k]`, by output).
    Sparse {
        /// The pattern.
        csr: Csr,
        /// Means of the kept weights.
        mu: Vec<f32>,
        /// Scales of the kept weights, when Bayesian.
        sigma: Option<Vec<f32>>,
    },
}

/// A linear map `p @ W` with W `[k, n]`.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// Inputs.
    pub k: usize,
    /// Outputs.
    pub n: usize,
    /// Values.
    pub weights: Weights,
}

/// `[rows, cols]` to `[cols, rows]`.
fn transposed(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

impl Kernel {
    /// Builds the kernel from W `[k, n]`; CSR when `sparse` is set (weights with mu == 0 and
    /// sigma == 0 are dropped, which is what pruning leaves).
    pub fn new(k: usize, n: usize, mu: Vec<f32>, sigma: Option<Vec<f32>>, sparse: bool) -> Kernel {
        if sparse {
            return Kernel::sparse(k, n, &mu, sigma.as_deref());
        }
        Kernel { k, n, weights: Weights::Dense { mu, sigma } }
    }

    /// The `[k, n]` kernel with means `mu` and scales `sigma` in CSR form (only the weights
    /// with mu or sigma non-zero kept), read from borrowed weights: the CSR values are a new,
    /// smaller copy anyway, so a caller that also keeps the dense form need not clone it.
    pub fn sparse(k: usize, n: usize, mu: &[f32], sigma: Option<&[f32]>) -> Kernel {
        let (mu, sigma) = (transposed(mu, k, n), sigma.map(|s| transposed(s, k, n)));
        let csr = Csr::from_mask(n, k, |i| mu[i] != 0.0 || sigma.as_ref().is_some_and(|s| s[i] != 0.0));
        let (mu, sigma) = (csr.gather(&mu), sigma.map(|s| csr.gather(&s)));
        Kernel { k, n, weights: Weights::Sparse { csr, mu, sigma } }
    }

    /// Whether the kernel is stored in CSR form.
    pub fn is_sparse(&self) -> bool {
        matches!(self.weights, Weights::Sparse { .. })
    }

    /// Means and scales, in storage order.
    pub fn values(&self) -> (&[f32], Option<&[f32]>) {
        match &self.weights {
            Weights::Dense { mu, sigma } | Weights::Sparse { mu, sigma, .. } => (mu, sigma.as_deref()),
        }
    }

    /// `out[m, n] (+)= p[m, k] @ W` where W's stored values are `vals` (means, or a sample of
    /// the same layout); `accumulate` adds instead of overwriting. `tbuf` is scratch.
    pub fn matmul(&self, p: &[f32], m: usize, vals: &[f32], out: &mut [f32], accumulate: bool, tbuf: &mut Vec<f32>) {
        match &self.weights {
            Weights::Dense { .. } => sgemm(m, self.k, self.n, p, vals, out, accumulate),
            Weights::Sparse { csr, .. } => csr.matmul(p, m, vals, out, accumulate, tbuf),
        }
    }
}

/// The perturbation weights `sigma * eps` (`[k, n]`) of a [`FlipoutDense`].
#[derive(Clone, Copy, Debug)]
pub enum Noise<'a> {
    /// Drawn already.
    Values(&'a [f32]),
    /// Drawn by the kernel as it packs its weight panels, from the draw `key` of the
    /// weights with scales `sigma` (`[k, n]`): each panel row is computed straight into the
    /// packed panel, where no `[k, n]` noise array is written, read back and copied. The
    /// values are bitwise those of [`super::sampler::Sampler::noise_into`] with that key.
    Draw {
        /// The draw.
        key: NoiseKey,
        /// Scales `[k, n]`.
        sigma: &'a [f32],
    },
}

/// One Flipout product of a dense layer with dense weights, for [`flipout_dense`]: for every
/// row r of `x` (`[m, k]`, row-major),
/// `out[r] = x[r] @ mu + (xf[r] @ noise) * s_out[r] + bias` with `xf = x * s_in`, through a
/// ReLU when `relu`. The input signs come as bits: the kernel flips `x` only where its tile
/// reads `xf` (the pairs of rows flip the values they pack).
#[derive(Clone, Copy)]
pub struct FlipoutDense<'a> {
    /// Input rows, `[m, k]`.
    pub x: &'a [f32],
    /// Rows.
    pub m: usize,
    /// Inputs.
    pub k: usize,
    /// Outputs.
    pub n: usize,
    /// Means `[k, n]`; unused when `mean` is given.
    pub mu: &'a [f32],
    /// `x @ mu` already computed (`[m, n]`, no bias): the first layer's, shared by the samples.
    pub mean: Option<&'a [f32]>,
    /// Which inputs are not zero ([`nonzero_bits`] of `x`): with the mean given, the register
    /// tile then steps over only the inputs that are not zero in one of its rows. The first
    /// layer's, made once per batch (its input is the same for every sample).
    pub x_nonzero: Option<&'a [u64]>,
    /// `sigma * eps`, `[k, n]`: given, or drawn by the kernel.
    pub noise: Noise<'a>,
    /// Flipout's input signs, `[m, k]` values in bits: bit j of word i is value 64 i + j's
    /// (set: -1), as [`super::sampler::Sampler::sign_bits_into`] draws them.
    pub s_in: &'a [u64],
    /// Output signs, `[m, n]` values in bits: bit j of word i is value 64 i + j's (set: -1),
    /// as [`super::sampler::Sampler::sign_bits_into`] draws them.
    pub s_out: &'a [u64],
    /// Bias, `[n]`.
    pub bias: &'a [f32],
    /// Whether a ReLU follows.
    pub relu: bool,
}

/// Share of zero inputs below which [`nonzero_bits`] gives no bits: the tile's steps over
/// the inputs that are not zero then save little.
const SKIP_ZEROS_FROM: f64 = 0.125;

/// Bit `p` of word `r * k.div_ceil(64) + p / 64` set where `x[r * k + p]` (of `[m, k]`) is
/// not zero, for [`FlipoutDense::x_nonzero`]; `None` when fewer than [`SKIP_ZEROS_FROM`] of
/// the inputs are zero. On the digits (8 x 8 images, half their pixels zero) a tile of 6
/// rows skips 26% of the inputs.
pub fn nonzero_bits(x: &[f32], m: usize, k: usize) -> Option<Vec<u64>> {
    let words = k.div_ceil(64);
    let mut bits = vec![0u64; m * words];
    for (row, b) in x.chunks_exact(k.max(1)).take(m).zip(bits.chunks_exact_mut(words.max(1))) {
        for (chunk, w) in row.chunks(64).zip(b.iter_mut()) {
            *w = chunk.iter().enumerate().fold(0u64, |a, (j, &v)| a | u64::from(v != 0.0) << j);
        }
    }
    let kept: u64 = bits.iter().map(|w| u64::from(w.count_ones())).sum();
    ((m * k) as f64 - kept as f64 >= SKIP_ZEROS_FROM * (m * k) as f64 && m * k > 0).then_some(bits)
}

/// Scratch of [`flipout_dense`], reused between calls.
#[derive(Debug, Default)]
pub struct Buffers {
    /// Packed weight panel blocks and the row tiles' partial sums.
    panel: Aligned,
    /// The whole noise of a layer whose panel rows do not start on the noise generator's
    /// 16-value steps (n not a multiple of 16: BNN-FC's 10 logits), drawn before packing.
    noise: Vec<f32>,
    /// The input's pairs of rows, when the product skips their shared zeros ([`PAIRED_DENSITY`]).
    pairs: RowPairs,
    /// The input flipped by its signs, for the register tile.
    flipped: Vec<f32>,
}

/// Share of a pair of rows' inputs, non-zero in either row, up to which [`flipout_dense`]
/// runs the pairs over those inputs only. `flipout_bench`, one thread, 360 x 256 x 256
/// against the register tile: 0.88x the time at 75% (a ReLU's output, half zeros),
/// the same at 84%, 1.03x at 91%.
const PAIRED_DENSITY: f64 = 0.8;

/// `f` with its noise drawn into `buf` unless `drive` can draw it panel row by panel row
/// for full panels `nr` wide: every panel row, values `p * n + c0 ..` of the draw, must start
/// on a 16-value step of the generator (n and `nr` multiples of 16; panels start at multiples
/// of `nr`).
fn drawable<'b>(f: &FlipoutDense<'b>, nr: usize, buf: &'b mut Vec<f32>) -> FlipoutDense<'b> {
    match f.noise {
        Noise::Draw { key, sigma } if !f.n.is_multiple_of(16) || !nr.is_multiple_of(16) => {
            buf.resize(f.k * f.n, 0.0);
            key.fill(sigma, buf, Runs::whole(f.k * f.n));
            FlipoutDense { noise: Noise::Values(buf), ..*f }
        }
        _ => *f,
    }
}

/// Bytes of one packed weight panel block of [`flipout_dense`] on few rows (below
/// [`BLOCKED_MAX_ROWS`]): k is cut into blocks whose panel (block rows x panel width) fits in
/// L1 (32 KiB of the 48 KiB L1d, beside the rows of `x` being broadcast), so that each block
/// is packed into L1 and read there by the few row tiles. `flipout_bench`, one thread, fused
/// against the unfused GEMMs: VGG-16's 512 x 512 at 16 rows 0.86x unblocked, 1.1-1.2x in
/// 32 KiB blocks (16 and 64 KiB: 1.1x).
const PANEL_BYTES: usize = 32 * 1024;

/// Rows from which [`flipout_dense`] does not block k: with tens of row tiles per panel, the
/// panel streams from L2 in order as fast as the FMAs consume it (4 vector loads per 24 FMAs)
/// and blocking only adds the partial sums' round trips and shorter runs over `x`:
/// `flipout_bench`, BNN-FC's 256 x 256 at 360 rows, 163-166 GFLOP/s unblocked (1.13x the
/// unfused GEMMs) against 142-151 in 32 KiB blocks (0.98-1.03x).
const BLOCKED_MAX_ROWS: usize = 96;

/// Panel block size of [`flipout_dense`] on `m` rows.
fn panel_bytes(m: usize) -> usize {
    if m < BLOCKED_MAX_ROWS {
        PANEL_BYTES
    } else {
        usize::MAX
    }
}

/// Tile stage within the k blocks of a row tile: whether the accumulators start at zero or
/// from the scratch, and whether the block ends in the final store (signs, bias, ReLU) or in
/// the scratch. Summation order over k is that of one unblocked pass (the scratch holds f32
/// partial sums exactly), so blocking changes no result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stage {
    /// Accumulators are loaded from the scratch (not the first k block).
    load: bool,
    /// The last k block: store the output row, not the scratch.
    last: bool,
}

/// Computes `f` into `out` (`[m, n]`) in one pass over `x`: both products in one register
/// tile (`x` and `xf` broadcast from memory: load ports, not the shuffle port that the FMAs
/// share), the output signs, bias and ReLU applied as the tile is stored. On small dense layers
/// (BNN-FC: 360 x 64 x 64 per sample) the GEMM library spent as long packing `x` twice and
/// in the separate flip, combine and bias passes as in the products themselves. For wide k
/// on few rows the panels are cut into L1-sized k blocks ([`panel_bytes`]); a row tile's partial sums
/// wait between blocks in a small scratch (rows x panel width). `bufs` is scratch for the
/// weights' column panel blocks (the only data copied, k x n per call; the noise drawn into
/// them when `f.noise` is [`Noise::Draw`]) and those sums, and the pairs of rows below.
///
/// Where a ReLU left many zeros in `x` (`runs_paired`), the rows go by pairs instead, each
/// pair over only the inputs where either row is not zero (38% of the inputs
/// are zero in both rows of BNN-FC's hidden layer), every sum bit for bit the tile's. Their
/// panel rows hold mu and the noise woven lane by lane, and each row's `x` and `x * s_in`
/// lie side by side: one 64-bit broadcast per row and input feeds both products (2
/// broadcasts and 8 panel loads per 16 FMAs on AVX-512, against 4 and 8 unwoven: each
/// 512-bit load costs FMA issue on this Xeon, docs/performance.md, session 18).
///
/// # Panics
/// When a slice is shorter than the shapes say (a caller's bug: the shapes come from the
/// shape-checked architecture).
pub fn flipout_dense(f: &FlipoutDense, out: &mut [f32], bufs: &mut Buffers) {
    let (m, k, n) = (f.m, f.k, f.n);
    let noise_len = match f.noise {
        Noise::Values(v) => v.len(),
        Noise::Draw { sigma, .. } => sigma.len(),
    };
    assert!(
        f.x.len() >= m * k && noise_len >= k * n && f.s_in.len() * 64 >= m * k && f.s_out.len() * 64 >= m * n && f.bias.len() >= n && out.len() >= m * n,
        "flipout_dense: slices shorter than {m}x{k}x{n}"
    );
    assert!(f.mean.map_or(f.mu.len() >= k * n, |v| v.len() >= m * n), "flipout_dense: means shorter than {m}x{k}x{n}");
    let Buffers { panel, noise, pairs, flipped } = bufs;
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            if runs_paired(f, avx512::L * avx512::NV_PAIRED, pairs) {
                let f = &drawable(f, avx512::L * avx512::NV_PAIRED, noise);
                // SAFETY: as below; `pairs` was just filled from `f.x` and `f.s_in`, the mean is
                // computed and the panels are full ones of `NV_PAIRED` vectors.
                return drive_arranged(f, avx512::L, avx512::NV_PAIRED, PAIRED_TILE, PANEL_BYTES, panel, |p| unsafe { avx512::weave_panel::<{ avx512::NV_PAIRED }>(p) }, |t| unsafe { avx512::paired(f, pairs, t, out) });
            }
            if f.mean.is_none() && n <= avx512::L {
                let f = &drawable(f, avx512::L, noise);
                // SAFETY: as below; the mean is computed and the panels are one vector of
                // both products, woven.
                return drive_arranged(f, avx512::L, 1, [avx512::MR, avx512::MR_NARROW], panel_bytes(m), panel, |p| unsafe { avx512::weave_panel::<1>(p) }, |t| unsafe { avx512::narrow(f, t, out) });
            }
            let (nv, xf) = (avx512::nv(f), flip_input(f, flipped));
            let f = &drawable(f, avx512::L * nv, noise);
            // SAFETY: the CPU supports AVX-512F (checked just above); the lengths were checked.
            return drive(f, avx512::L, nv, [avx512::MR, avx512::MR_NARROW], panel_bytes(m), panel, |t| unsafe { avx512::tile_any(f, xf, t, out) });
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            if runs_paired(f, avx2::L * avx2::NV_PAIRED, pairs) {
                let f = &drawable(f, avx2::L * avx2::NV_PAIRED, noise);
                // SAFETY: as below; `pairs` was just filled from `f.x` and `f.s_in`, the mean is
                // computed and the panels are full ones of `NV_PAIRED` vectors.
                return drive_arranged(f, avx2::L, avx2::NV_PAIRED, PAIRED_TILE, PANEL_BYTES, panel, |p| unsafe { avx2::weave_panel::<{ avx2::NV_PAIRED }>(p) }, |t| unsafe { avx2::paired(f, pairs, t, out) });
            }
            if f.mean.is_none() && n <= avx2::L {
                let f = &drawable(f, avx2::L, noise);
                // SAFETY: as above.
                return drive_arranged(f, avx2::L, 1, [avx2::MR, avx2::MR_NARROW], panel_bytes(m), panel, |p| unsafe { avx2::weave_panel::<1>(p) }, |t| unsafe { avx2::narrow(f, t, out) });
            }
            let (nv, xf) = (avx2::nv(f), flip_input(f, flipped));
            let f = &drawable(f, avx2::L * nv, noise);
            // SAFETY: the CPU supports AVX2 and FMA (checked just above); lengths as above.
            return drive(f, avx2::L, nv, [avx2::MR, avx2::MR_NARROW], panel_bytes(m), panel, |t| unsafe { avx2::tile_any(f, xf, t, out) });
        }
    }
    let xf = flip_input(f, flipped);
    portable(&drawable(f, PORTABLE_NR, noise), xf, out, panel, panel_bytes(m))
}

/// `x * s_in` of `f` in `buf`, for the register tiles (the pairs of rows flip what they pack).
fn flip_input<'b>(f: &FlipoutDense, buf: &'b mut Vec<f32>) -> &'b [f32] {
    let len = f.m * f.k;
    let out = grown(buf, len);
    flip_by_bits(&f.x[..len], f.s_in, out);
    out
}

/// Inputs `p..p + len` of row `r` of `f` (`len` <= [`WOVEN_INPUTS`]) into `out`, each
/// beside its flip (`x, x * s_in`): what [`avx512::narrow`]'s 64-bit broadcasts read.
///
/// # Safety
/// Row `r` of `f.x` holds inputs `p..p + len` and `f.s_in` their bits; `out` has room for
/// `2 len` values.
#[inline(always)]
unsafe fn weave_inputs_portable(f: &FlipoutDense, r: usize, p: usize, len: usize, out: *mut f32) {
    let g0 = r * f.k + p;
    for j in 0..len {
        // SAFETY: the caller's contract.
        unsafe {
            let v = *f.x.get_unchecked(g0 + j);
            let sign = (sign_bits_at(f.s_in, g0 + j, 1) & 1) as u32;
            *out.add(2 * j) = v;
            *out.add(2 * j + 1) = f32::from_bits(v.to_bits() ^ sign << 31);
        }
    }
}

/// [`weave_inputs_portable`] 16 inputs at a time: a masked XOR of the sign bits and two
/// permutes. Writes whole vectors: `out` needs room for `2 len` rounded up to 32 values.
///
/// # Safety
/// As [`weave_inputs_portable`]'s; the CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn weave_inputs_avx512(f: &FlipoutDense, r: usize, p: usize, len: usize, out: *mut f32) {
    use std::arch::x86_64::*;
    let g0 = r * f.k + p;
    // SAFETY: the caller's contract: loads are masked to the row's inputs, stores within room.
    unsafe {
        for q in 0..len.div_ceil(16) {
            let lanes = (len - 16 * q).min(16);
            let live: __mmask16 = if lanes == 16 { !0 } else { (1u16 << lanes) - 1 };
            let [v, flipped] = with_flips_avx512(f.x.as_ptr().add(g0 + 16 * q), live, f.s_in, g0 + 16 * q);
            let [lo, hi] = weave_avx512(v, flipped);
            _mm512_storeu_ps(out.add(32 * q), lo);
            _mm512_storeu_ps(out.add(32 * q + 16), hi);
        }
    }
}

/// Inputs per chunk that the narrow kernels weave at a time, per row (on the stack: 12 rows
/// of 64 take 6 KiB of L1; a woven copy of a whole `[m, k]` input went to L2 and took 3/4
/// of the kernel's time writing it).
const WOVEN_INPUTS: usize = 64;

/// Rows of `drive`'s tiles for the kernels' `paired` (even: whole pairs).
const PAIRED_TILE: [usize; 2] = [8, 8];

/// Whether `f`'s product runs on pairs of rows over the inputs where either is not zero:
/// its mean product is computed here (with the mean given, the first layer's, the noise
/// drawn into the panels takes as long as the product: `flipout_bench`, no gain), its panels
/// of `nr` columns are all full, and pairs of rows keep at most [`PAIRED_DENSITY`] of the
/// inputs. Fills `rp` from them.
fn runs_paired(f: &FlipoutDense, nr: usize, rp: &mut RowPairs) -> bool {
    let total = f.m.div_ceil(2) * f.k;
    f.mean.is_none() && f.n > 0 && f.n.is_multiple_of(nr) && total > 0 && rp.fill(f.x, f.s_in, f.m, f.k) as f64 <= PAIRED_DENSITY * total as f64
}

/// Columns of a panel of [`portable`].
const PORTABLE_NR: usize = 8;

/// [`flipout_dense`] in plain Rust, 4 rows x 8 columns per tile (the fallback without AVX2,
/// and the reference of the vector kernels' test).
/// `panel_bytes` is the k blocks' panel size ([`PANEL_BYTES`]; the test makes it small).
fn portable(f: &FlipoutDense, xf: &[f32], out: &mut [f32], panel: &mut Aligned, panel_bytes: usize) {
    const NR: usize = PORTABLE_NR;
    drive(f, NR, 1, [4, 4], panel_bytes, panel, |t| {
        let w = if f.mean.is_some() { NR } else { 2 * NR };
        for (i, r) in (t.r..t.r + t.rows).enumerate() {
            let (mut ap, mut am) = ([0f32; NR], [0f32; NR]);
            let acc = &mut t.acc[i * w..][..w];
            if t.stage.load {
                ap.copy_from_slice(&acc[..NR]);
                am[..w - NR].copy_from_slice(&acc[NR..]);
            }
            for (p, b) in t.panel.chunks_exact(w).enumerate() {
                let (a, sa) = (f.x[r * f.k + t.p0 + p], xf[r * f.k + t.p0 + p]);
                ap.iter_mut().zip(b).for_each(|(acc, &v)| *acc += sa * v);
                am.iter_mut().zip(&b[NR.min(b.len())..]).for_each(|(acc, &v)| *acc += a * v);
            }
            if t.stage.last {
                store_row(f, r, t.c0, &ap[..t.cw], f.mean.is_none().then_some(&am[..t.cw]), out);
            } else {
                acc[..NR].copy_from_slice(&ap);
                acc[NR..].copy_from_slice(&am[..w - NR]);
            }
        }
    })
}

/// One call of a register tile: rows `r..r + rows` of columns `c0..c0 + cw`, over the k block
/// `p0..p0 + panel.len() / width` of the packed panel block.
struct Tile<'a> {
    /// The packed panel block: noise columns, then mu's when the mean is computed here.
    panel: &'a [f32],
    /// The panel's width (columns of noise, twice that with mu).
    width: usize,
    /// First input of the block.
    p0: usize,
    /// Rows of the block.
    kc: usize,
    /// First row.
    r: usize,
    /// Rows (the kernel's tile height, or 1).
    rows: usize,
    /// First column.
    c0: usize,
    /// Columns to store.
    cw: usize,
    /// Partial sums of these rows, `rows x width` (pert then mean per row).
    acc: &'a mut [f32],
    /// Where the block stands among the row tile's k blocks.
    stage: Stage,
}

/// The loop of [`flipout_dense`] over column panels of `nv` vectors of `lanes` columns (one
/// vector for a last panel that fits in one: the 10 logits of a classifier), k blocks whose
/// panel block takes at most `panel_bytes`, and row tiles of `mr` rows (`mr_narrow` on a
/// one-vector panel, in the portable kernel too): packs each panel block
/// (the noise's columns, then mu's when the mean is computed here, zero-padded to the panel
/// width) into `scratch`, then calls `tile` for every `mr` rows (fewer in the last tile).
/// With more than one k block, every row's partial sums wait in `scratch` behind the
/// panel block (`m x width` values: 92 KB for 360 rows, in L2).
fn drive(f: &FlipoutDense, lanes: usize, nv: usize, tile_rows: [usize; 2], panel_bytes: usize, scratch: &mut Aligned, tile: impl FnMut(Tile)) {
    drive_arranged(f, lanes, nv, tile_rows, panel_bytes, scratch, |_| {}, tile)
}

/// [`drive`] with `arrange` applied to each panel block once it is packed (the pairs' kernel
/// weaves its rows).
#[allow(clippy::too_many_arguments)]
fn drive_arranged(f: &FlipoutDense, lanes: usize, nv: usize, [mr, mr_narrow]: [usize; 2], panel_bytes: usize, scratch: &mut Aligned, mut arrange: impl FnMut(&mut [f32]), mut tile: impl FnMut(Tile)) {
    let (m, k, n) = (f.m, f.k, f.n);
    if m == 0 || n == 0 {
        return;
    }
    let mut c0 = 0;
    while c0 < n {
        let nr = if n - c0 <= lanes { lanes } else { lanes * nv };
        let cw = nr.min(n - c0);
        let w = if f.mean.is_some() { nr } else { 2 * nr };
        // Equal blocks of at most `panel_bytes`: 256 = 2 x 128, not 192 + 64.
        let blocks = (k * w * 4).div_ceil(panel_bytes.max(1)).max(1);
        let kc_max = k.div_ceil(blocks).max(1);
        let acc_len = if blocks > 1 { m * w } else { mr.max(mr_narrow) * w };
        // Not cleared: packing writes every panel value (the padding too), and partial sums
        // are read only after they were stored (zero-filling was 5% of BNN-FC's profile).
        // The panel on a cache line boundary (rows of 64 or 128 bytes): vector loads that
        // straddle two lines cost two L1 reads.
        let (pn, acc) = scratch.get(kc_max * w + acc_len).split_at_mut(kc_max * w);
        let mut p0 = 0;
        while p0 < k.max(1) {
            let kc = kc_max.min(k - p0);
            let stage = Stage { load: p0 > 0, last: p0 + kc >= k };
            let pn = &mut pn[..kc * w];
            match f.noise {
                Noise::Values(noise) => {
                    for (p, row) in pn.chunks_exact_mut(w).enumerate() {
                        copy_padded(&mut row[..nr], &noise[(p0 + p) * n + c0..][..cw]);
                    }
                }
                Noise::Draw { key, sigma } => {
                    // Rows p0..p0 + kc, columns c0..c0 + cw: runs n apart in the draw
                    // (`drawable` saw that they start on the generator's steps).
                    key.fill(sigma, pn, Runs { start: p0 * n + c0, rows: kc, len: cw, stride: n, out_stride: w });
                    if cw < nr {
                        pn.chunks_exact_mut(w).for_each(|row| row[cw..nr].fill(0.0));
                    }
                }
            }
            if f.mean.is_none() {
                for (p, row) in pn.chunks_exact_mut(w).enumerate() {
                    rows_ahead(f.mu, (p0 + p) * n + c0, n, cw);
                    copy_padded(&mut row[nr..], &f.mu[(p0 + p) * n + c0..][..cw]);
                }
            }
            arrange(pn);
            let mut r = 0;
            while r < m {
                // Taller tiles on a one-vector panel (as many accumulators); the tail in
                // tiles of at most `mr` rows.
                let full = if nr == lanes { mr_narrow } else { mr };
                let rows = if m - r >= full { full } else { mr.min(m - r) };
                // One block: the tile's sums never leave the registers, one scratch serves.
                let a0 = if blocks > 1 { r * w } else { 0 };
                tile(Tile { panel: pn, width: w, p0, kc, r, rows, c0, cw, acc: &mut acc[a0..a0 + rows * w], stage });
                r += rows;
            }
            p0 += kc;
            if k == 0 {
                break;
            }
        }
        c0 += nr;
    }
}

/// `src` into the start of `dst`, zeros after it: one panel row. Full rows of the kernels'
/// widths are copied as fixed-size arrays (inlined moves; a `memmove` call per 32 values was
/// 4% of BNN-FC's profile).
#[inline(always)]
fn copy_padded(dst: &mut [f32], src: &[f32]) {
    fn fixed<const N: usize>(dst: &mut [f32], src: &[f32]) -> bool {
        match (<&mut [f32; N]>::try_from(dst), <&[f32; N]>::try_from(src)) {
            (Ok(d), Ok(s)) => {
                *d = *s;
                true
            }
            _ => false,
        }
    }
    // Wider rows (the pairs' 64 columns) 32 at a time: an array move of 64 is a call again.
    if dst.len() == src.len() && dst.len() > 32 && dst.len().is_multiple_of(32) {
        for (d, s) in dst.chunks_exact_mut(32).zip(src.chunks_exact(32)) {
            fixed::<32>(d, s);
        }
        return;
    }
    if !(fixed::<32>(dst, src) || fixed::<16>(dst, src) || fixed::<8>(dst, src)) {
        let (head, tail) = dst.split_at_mut(src.len());
        head.copy_from_slice(src);
        tail.fill(0.0);
    }
}

/// Stores columns `c0..` of row `r`: `out = mean + pert * s_out + bias` (ReLU when asked),
/// summed as the unfused passes did; `mean` is the computed mean product, else `f.mean`'s.
#[inline(always)]
fn store_row(f: &FlipoutDense, r: usize, c0: usize, pert: &[f32], mean: Option<&[f32]>, out: &mut [f32]) {
    let cw = pert.len();
    let o0 = r * f.n + c0;
    let mean = match (mean, f.mean) {
        (Some(v), _) => v,
        (None, Some(v)) => &v[o0..][..cw],
        (None, None) => return,
    };
    let bits = sign_bits_at(f.s_out, o0, cw);
    let signs = (0..cw as u32).map(|j| ((bits >> j) as u32 & 1) << 31);
    let vals = out[o0..][..cw].iter_mut().zip(mean).zip(pert).zip(signs).zip(&f.bias[c0..][..cw]);
    if f.relu {
        vals.for_each(|((((o, &m), &p), s), &b)| *o = (m + f32::from_bits(p.to_bits() ^ s) + b).max(0.0));
    } else {
        vals.for_each(|((((o, &m), &p), s), &b)| *o = m + f32::from_bits(p.to_bits() ^ s) + b);
    }
}

/// The output of one tile row, columns `c0..c0 + cw` of row `r` (`cw <= 16 V`), from the
/// row's accumulators in AVX-512 registers, in vectors: [`store_row`]'s sums in its order,
/// the output signs as lane masks of an XOR of the sign bit, the partial last vector by
/// masked loads and stores (a scalar pass over each row was 6% of the kernel's time on
/// BNN-FC).
///
/// Inlined into the tile (a call per row spilled the accumulators: 5% of the run); its
/// intrinsics are inlined there, in the tile's target features.
///
/// # Safety
/// The CPU supports AVX-512F; `f`'s slices hold their shapes, `r < f.m`, `c0 + cw <= f.n`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn epilogue_avx512<const V: usize, const MEAN: bool>(f: &FlipoutDense, r: usize, c0: usize, cw: usize, pert: &[std::arch::x86_64::__m512; V], mean: &[std::arch::x86_64::__m512; V], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let o0 = r * f.n + c0;
    debug_assert!(cw <= 16 * V && c0 + cw <= f.n && o0 + cw <= out.len());
    let sign = _mm512_set1_epi32(i32::MIN);
    // The row's sign bits (cw <= 16 V <= 64), read once per row: with per-vector reads and a
    // loop bound of cw's vectors the vector loop stayed a loop and the epilogues were 5% of
    // BNN-FC's run. With the constant bound V it is unrolled, and with the tile's rows
    // unrolled around it (`unrolled!`) the sums stay in registers.
    let bits = sign_bits_at(f.s_out, o0, cw);
    for v in 0..V {
        if 16 * v >= cw {
            break;
        }
        let (g, lanes) = (o0 + 16 * v, cw - 16 * v);
        let m: __mmask16 = if lanes >= 16 { !0 } else { (1u16 << lanes) - 1 };
        let p = _mm512_castsi512_ps(_mm512_mask_xor_epi32(_mm512_castps_si512(pert[v]), (bits >> (16 * v)) as u16, _mm512_castps_si512(pert[v]), sign));
        let mv = match (MEAN, f.mean) {
            (true, _) => mean[v],
            (false, Some(given)) => _mm512_maskz_loadu_ps(m, given.as_ptr().add(g)),
            (false, None) => return,
        };
        let mut y = _mm512_add_ps(_mm512_add_ps(mv, p), _mm512_maskz_loadu_ps(m, f.bias.as_ptr().add(c0 + 16 * v)));
        if f.relu {
            y = _mm512_max_ps(y, _mm512_setzero_ps());
        }
        _mm512_mask_storeu_ps(out.as_mut_ptr().add(g), m, y);
    }
}

/// [`epilogue_avx512`] for AVX2 registers: spilled, then [`store_row`].
///
/// # Safety
/// The CPU supports AVX2 and FMA; as [`store_row`]'s.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn epilogue_avx2<const V: usize, const MEAN: bool>(f: &FlipoutDense, r: usize, c0: usize, cw: usize, pert: &[std::arch::x86_64::__m256; V], mean: &[std::arch::x86_64::__m256; V], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let (mut rp, mut rm) = ([[0f32; 8]; V], [[0f32; 8]; V]);
    for v in 0..V {
        _mm256_storeu_ps(rp[v].as_mut_ptr(), pert[v]);
        _mm256_storeu_ps(rm[v].as_mut_ptr(), mean[v]);
    }
    store_row(f, r, c0, &rp.as_flattened()[..cw], MEAN.then_some(&rm.as_flattened()[..cw]), out);
}

/// Two floats side by side at `p` (a pair's `(x, x * s_in)`, [`RowPairs::raw`]) in every
/// pair of lanes: one 64-bit broadcast.
///
/// # Safety
/// The CPU supports AVX-512F; `p` points to two readable values.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn pair_avx512(p: *const u32) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract; an unaligned read (positions are 4-byte aligned).
    unsafe { _mm512_castpd_ps(_mm512_set1_pd(p.cast::<f64>().read_unaligned())) }
}

/// [`pair_avx512`] for AVX2 registers.
///
/// # Safety
/// The CPU supports AVX2; `p` points to two readable values.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn pair_avx2(p: *const u32) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: as [`pair_avx512`]'s.
    unsafe { _mm256_castpd_ps(_mm256_set1_pd(p.cast::<f64>().read_unaligned())) }
}

/// `(a, b)` woven lane by lane, `a0, b0, a1, b1, ...`: the first half's lanes, then the
/// second half's (a pairs' panel row: mu beside the noise, [`flipout_dense`]).
///
/// # Safety
/// The CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn weave_avx512(a: std::arch::x86_64::__m512, b: std::arch::x86_64::__m512) -> [std::arch::x86_64::__m512; 2] {
    // SAFETY: the caller's contract.
    unsafe { permute_pair_avx512(a, b, &WEAVE) }
}

/// [`weave_avx512`] for AVX2 registers.
///
/// # Safety
/// The CPU supports AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn weave_avx2(a: std::arch::x86_64::__m256, b: std::arch::x86_64::__m256) -> [std::arch::x86_64::__m256; 2] {
    use std::arch::x86_64::*;
    let (lo, hi) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
    [_mm256_permute2f128_ps::<0x20>(lo, hi), _mm256_permute2f128_ps::<0x31>(lo, hi)]
}

/// The inverse of [`weave_avx512`]: the even lanes of `a` then `b`, and the odd ones.
///
/// # Safety
/// The CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn unweave_avx512(a: std::arch::x86_64::__m512, b: std::arch::x86_64::__m512) -> [std::arch::x86_64::__m512; 2] {
    // SAFETY: the caller's contract.
    unsafe { permute_pair_avx512(a, b, &UNWEAVE) }
}

/// The even lanes of 32, then the odd ones ([`unweave_avx512`]).
const UNWEAVE: [[i32; 16]; 2] = {
    let mut idx = [[0; 16]; 2];
    let mut i = 0;
    while i < 16 {
        idx[0][i] = 2 * i as i32;
        idx[1][i] = 2 * i as i32 + 1;
        i += 1;
    }
    idx
};

/// Two permutes of the 32 lanes of `(a, b)` (`b`'s are 16..32) by the two rows of `idx`.
///
/// # Safety
/// The CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn permute_pair_avx512(a: std::arch::x86_64::__m512, b: std::arch::x86_64::__m512, idx: &[[i32; 16]; 2]) -> [std::arch::x86_64::__m512; 2] {
    use std::arch::x86_64::*;
    // SAFETY: each row of `idx` is 16 readable i32s.
    idx.map(|i| unsafe { _mm512_permutex2var_ps(a, _mm512_loadu_si512(i.as_ptr().cast()), b) })
}

/// [`unweave_avx512`] for AVX2 registers.
///
/// # Safety
/// The CPU supports AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn unweave_avx2(a: std::arch::x86_64::__m256, b: std::arch::x86_64::__m256) -> [std::arch::x86_64::__m256; 2] {
    use std::arch::x86_64::*;
    // Within 128-bit halves, then the 64-bit quarters back in order: 0, 2, 1, 3.
    let (even, odd) = (_mm256_shuffle_ps::<0b10_00_10_00>(a, b), _mm256_shuffle_ps::<0b11_01_11_01>(a, b));
    let order = |v: __m256| _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)));
    [order(even), order(odd)]
}

/// `$body` for `$i` in `0..$n` (`$n <= 12`, a constant), unrolled: the indices are constants,
/// and register arrays indexed by them stay in registers (a loop over a tile's rows read its
/// sums back from the stack; a closure per row was not always inlined).
macro_rules! unrolled {
    ($n:expr, $i:ident => $body:expr) => {
        unrolled!(@ $n, $i => $body; 0 1 2 3 4 5 6 7 8 9 10 11)
    };
    (@ $n:expr, $i:ident => $body:expr; $($k:literal)*) => {{
        debug_assert!($n <= 12, "unrolled: {} rows", $n);
        $( if $k < $n {
            let $i: usize = $k;
            $body;
        } )*
    }};
}

/// A register tile of [`flipout_dense`] on one x86-64 vector width: `MR` rows by `NV`
/// vectors of `L` lanes, accumulators of the perturbation product (and of the mean product
/// when `MEAN`) in registers over the whole k.
macro_rules! simd_tile {
    ($name:ident, $feat:literal, $v:ty, $lanes:literal, $nv:literal, $nv_given:literal, $mr:literal, $mr_narrow:literal, $nv_paired:literal, $zero:ident, $set1:ident, $load:ident, $fma:ident, $store:ident, $epilogue:ident, $pair:ident, $weave:ident, $unweave:ident, $weave_inputs:ident) => {
        #[cfg(target_arch = "x86_64")]
        mod $name {
            use super::{FlipoutDense, RowPairs, Tile};
            #[allow(unused_imports)]
            use super::{store_row, $epilogue, $pair, $weave, $unweave, $weave_inputs};
            use std::arch::x86_64::*;
            /// Lanes per vector.
            pub(super) const L: usize = $lanes;
            /// Vectors per row of a full panel.
            pub(super) const NV: usize = $nv;
            /// Vectors per row of a full panel when the mean product is given (one product:
            /// the accumulators of both fit).
            pub(super) const NV_GIVEN: usize = $nv_given;

            /// Vectors per row of a full panel for `f`.
            pub(super) fn nv(f: &FlipoutDense) -> usize {
                if f.mean.is_some() {
                    NV_GIVEN
                } else {
                    NV
                }
            }
            /// Rows per tile.
            pub(super) const MR: usize = $mr;
            /// Rows per tile on a one-vector panel (BNN-FC's 10 logits).
            pub(super) const MR_NARROW: usize = $mr_narrow;
            /// Output vectors per row of [`paired`]'s panels, each of both products (two rows
            /// of `2 NV_PAIRED` woven vectors: 16 accumulators on AVX-512).
            pub(super) const NV_PAIRED: usize = $nv_paired;

            /// The tile of `t.rows` rows (1 to `MR`) on a panel block of `drive`: full width,
            /// or one vector wide.
            ///
            /// # Safety
            /// As [`tile`]'s.
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn tile_any(f: &FlipoutDense, xf: &[f32], t: Tile, out: &mut [f32]) {
                if let (Some(nz), Some(_)) = (f.x_nonzero, f.mean) {
                    if t.rows == MR && t.width == NV_GIVEN * L && t.p0 == 0 && t.kc == f.k {
                        return tile_skipping(f, nz, xf, t, out);
                    }
                }
                match (f.mean.is_none(), t.width / L) {
                    (true, 2) => rows::<1, true>(f, xf, t, out),
                    (true, _) => rows::<NV, true>(f, xf, t, out),
                    (false, 1) => rows::<1, false>(f, xf, t, out),
                    (false, _) => rows::<NV_GIVEN, false>(f, xf, t, out),
                }
            }

            /// [`tile`] of `MR` rows with the mean given, full panels and k in one block, over
            /// only the inputs that are not zero in one of the rows (`nz`, [`super::nonzero_bits`]
            /// of `f.x`): a zero input adds a zero product to a sum that cannot be -0, so every
            /// sum is the tile's bit for bit.
            ///
            /// # Safety
            /// As [`tile`]'s; `nz` holds the bits of `f.x`'s rows; `t.p0` is 0 and `t.kc` is `f.k`.
            #[target_feature(enable = $feat)]
            unsafe fn tile_skipping(f: &FlipoutDense, nz: &[u64], xf: &[f32], t: Tile, out: &mut [f32]) {
                const V: usize = NV_GIVEN;
                let (k, w) = (f.k, V * L);
                let words = k.div_ceil(64);
                debug_assert!(t.rows == MR && t.width == w && t.p0 == 0 && t.kc == k && nz.len() >= (t.r + MR) * words);
                debug_assert!((t.r + MR) * k <= xf.len() && t.panel.len() >= k * w);
                let mut ap = [[$zero(); V]; MR];
                let x0 = xf.as_ptr().add(t.r * k);
                let panel = t.panel.as_ptr();
                for q in 0..words {
                    let mut bits = 0u64;
                    for i in 0..MR {
                        bits |= *nz.get_unchecked((t.r + i) * words + q);
                    }
                    while bits != 0 {
                        let p = q * 64 + bits.trailing_zeros() as usize;
                        bits &= bits - 1;
                        let bp = panel.add(p * w);
                        let mut vp = [$zero(); V];
                        for v in 0..V {
                            vp[v] = $load(bp.add(v * L));
                        }
                        for i in 0..MR {
                            let sa = $set1(*x0.add(i * k + p));
                            for v in 0..V {
                                ap[i][v] = $fma(sa, vp[v], ap[i][v]);
                            }
                        }
                    }
                }
                let am = [[$zero(); V]; MR];
                unrolled!(MR, i => $epilogue::<V, false>(f, t.r + i, t.c0, t.cw, &ap[i], &am[i], out));
            }

            /// [`tile`] for `t.rows` rows: the row tail of a batch (VGG-16's 16 rows = 6 + 6
            /// + 4) in one tile, not row by row.
            ///
            /// # Safety
            /// As [`tile`]'s.
            #[target_feature(enable = $feat)]
            unsafe fn rows<const V: usize, const MEAN: bool>(f: &FlipoutDense, xf: &[f32], t: Tile, out: &mut [f32]) {
                debug_assert!(t.rows <= MR || V == 1 && t.rows == MR_NARROW, "no tile of {} rows", t.rows);
                match t.rows {
                    12 if V == 1 && MR_NARROW >= 12 => tile::<12, 1, MEAN>(f, xf, t, out),
                    6 if MR >= 6 || V == 1 && MR_NARROW >= 6 => tile::<6, V, MEAN>(f, xf, t, out),
                    5 if MR >= 5 => tile::<5, V, MEAN>(f, xf, t, out),
                    4 if MR >= 4 => tile::<4, V, MEAN>(f, xf, t, out),
                    3 if MR >= 3 => tile::<3, V, MEAN>(f, xf, t, out),
                    2 => tile::<2, V, MEAN>(f, xf, t, out),
                    _ => tile::<1, V, MEAN>(f, xf, t, out),
                }
            }

            /// Rows `t.r..t.r + ROWS`, columns `t.c0..t.c0 + t.cw` over the k block of a panel
            /// block of `V` vectors packed by `drive`.
            ///
            /// # Safety
            /// The CPU has the target features; `f`'s slices hold their shapes (checked by
            /// `flipout_dense`), `xf` is `[m, k]`, `t.panel` holds `t.kc` rows of `t.width`,
            /// `t.acc` `ROWS` rows of it, `t.r + ROWS <= f.m`, `t.p0 + t.kc <= f.k`.
            #[target_feature(enable = $feat)]
            unsafe fn tile<const ROWS: usize, const V: usize, const MEAN: bool>(f: &FlipoutDense, xf: &[f32], t: Tile, out: &mut [f32]) {
                let (k, nr) = (f.k, V * L);
                let w = if MEAN { 2 * nr } else { nr };
                debug_assert!(w == t.width && t.panel.len() >= t.kc * w && t.acc.len() >= ROWS * w);
                debug_assert!((t.r + ROWS) * k <= f.x.len().min(xf.len()) && t.p0 + t.kc <= k);
                let mut ap = [[$zero(); V]; ROWS];
                let mut am = [[$zero(); V]; ROWS];
                let acc = t.acc.as_mut_ptr();
                if t.stage.load {
                    for i in 0..ROWS {
                        for v in 0..V {
                            ap[i][v] = $load(acc.add(i * w + v * L));
                            if MEAN {
                                am[i][v] = $load(acc.add(i * w + nr + v * L));
                            }
                        }
                    }
                }
                // Row pointers, advanced with k: no per-step address arithmetic.
                let mut x: [*const f32; ROWS] = std::array::from_fn(|i| f.x.as_ptr().add((t.r + i) * k + t.p0));
                let mut xf: [*const f32; ROWS] = std::array::from_fn(|i| xf.as_ptr().add((t.r + i) * k + t.p0));
                let mut bp = t.panel.as_ptr();
                for _ in 0..t.kc {
                    let mut vp = [$zero(); V];
                    let mut vm = [$zero(); V];
                    for v in 0..V {
                        vp[v] = $load(bp.add(v * L));
                        if MEAN {
                            vm[v] = $load(bp.add(nr + v * L));
                        }
                    }
                    for i in 0..ROWS {
                        // Broadcasts from memory (load ports), not from a register (the
                        // shuffle port that the FMAs share).
                        let sa = $set1(*xf[i]);
                        xf[i] = xf[i].add(1);
                        for v in 0..V {
                            ap[i][v] = $fma(sa, vp[v], ap[i][v]);
                        }
                        if MEAN {
                            let a = $set1(*x[i]);
                            for v in 0..V {
                                am[i][v] = $fma(a, vm[v], am[i][v]);
                            }
                        }
                        x[i] = x[i].add(1);
                    }
                    bp = bp.add(w);
                }
                if !t.stage.last {
                    for i in 0..ROWS {
                        for v in 0..V {
                            $store(acc.add(i * w + v * L), ap[i][v]);
                            if MEAN {
                                $store(acc.add(i * w + nr + v * L), am[i][v]);
                            }
                        }
                    }
                    return;
                }
                unrolled!(ROWS, i => $epilogue::<V, MEAN>(f, t.r + i, t.c0, t.cw, &ap[i], &am[i], out));
            }

            /// [`tile`] for the pairs of rows of `t` (`t.r` even), each pair over the inputs
            /// where either row is not zero (`rp`, filled from `f.x` and `f.s_in`), on full
            /// panels of [`NV_PAIRED`] vectors of both products (the mean product computed)
            /// woven by [`weave_panel`]: lane `2 j` of a row's sums is output j's mean
            /// product, lane `2 j + 1` its perturbation, each the tile's sum bit for bit,
            /// since an input that is zero adds a zero product to a sum that cannot be -0.
            ///
            /// # Safety
            /// As [`tile`]'s; `rp` holds the pairs of rows of `f.x` and `f.s_in`; `f.mean` is
            /// `None`, `t.width` is `2 * NV_PAIRED * L` and the panel is woven.
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn paired(f: &FlipoutDense, rp: &RowPairs, t: Tile, out: &mut [f32]) {
                // Vectors per row: V of outputs, each of both products, woven.
                const V: usize = NV_PAIRED;
                const W: usize = 2 * V;
                let w = W * L;
                debug_assert!(f.mean.is_none() && t.r % 2 == 0 && w == t.width && t.panel.len() >= t.kc * w && t.acc.len() >= t.rows * w);
                let (data, cap) = rp.raw();
                // Panel row of input p: `panel + (p - p0) * w`.
                let panel = t.panel.as_ptr().wrapping_sub(t.p0 * w);
                for i in (0..t.rows).step_by(2) {
                    let r = t.r + i;
                    // The pair's rows that are the tile's (the second may not be).
                    let rows = if i + 1 < t.rows { 2 } else { 1 };
                    let mut acc = [[$zero(); W]; 2];
                    let sums = t.acc.as_mut_ptr().add(i * w);
                    if t.stage.load {
                        for j in 0..rows {
                            for v in 0..W {
                                acc[j][v] = $load(sums.add(j * w + v * L));
                            }
                        }
                    }
                    let cols = rp.range(r / 2, t.p0, t.p0 + t.kc);
                    let c0 = data.add(cols.start);
                    // Each row's `(x, x * s_in)` side by side: one broadcast per row.
                    let [xa, xb] = [1, 3].map(|a| data.add(a * cap + 2 * cols.start));
                    for q in 0..cols.len() {
                        let b = panel.wrapping_add(*c0.add(q) as usize * w);
                        let (a, bb) = ($pair(xa.add(2 * q)), $pair(xb.add(2 * q)));
                        for v in 0..W {
                            let pv = $load(b.add(v * L));
                            acc[0][v] = $fma(a, pv, acc[0][v]);
                            acc[1][v] = $fma(bb, pv, acc[1][v]);
                        }
                    }
                    for j in 0..rows {
                        if t.stage.last {
                            // Woven `(mean, pert)` sums back to the epilogue's vectors.
                            let (mut mean, mut pert) = ([$zero(); V], [$zero(); V]);
                            for v in 0..V {
                                [mean[v], pert[v]] = $unweave(acc[j][2 * v], acc[j][2 * v + 1]);
                            }
                            $epilogue::<V, true>(f, r + j, t.c0, t.cw, &pert, &mean, out);
                            continue;
                        }
                        for v in 0..W {
                            $store(sums.add(j * w + v * L), acc[j][v]);
                        }
                    }
                }
            }

            /// Both products of a layer whose outputs fit one vector (BNN-FC's 10 logits), on
            /// the one-vector panels of `drive` woven by [`weave_panel`]: the tile's rows'
            /// inputs woven with their flips, `x, x * s_in`, [`super::WOVEN_INPUTS`] at a time
            /// on the stack, and one 64-bit broadcast per row and input feeding both products
            /// (a tile of `MR_NARROW` rows: 2 panel loads and `MR_NARROW` broadcasts per
            /// `2 MR_NARROW` FMAs, where [`tile`] takes twice the broadcasts). Lane `2 j` of a
            /// row's sums is output j's mean product, lane `2 j + 1` its perturbation, each
            /// summed in [`tile`]'s order: the same bits.
            ///
            /// # Safety
            /// As [`tile`]'s; `f.mean` is `None`, `t.width` is `2 L` and the panel is woven.
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn narrow(f: &FlipoutDense, t: Tile, out: &mut [f32]) {
                debug_assert!(t.rows <= MR || t.rows == MR_NARROW, "no tile of {} rows", t.rows);
                match t.rows {
                    12 if MR_NARROW >= 12 => narrow_rows::<12>(f, t, out),
                    6 if MR_NARROW >= 6 => narrow_rows::<6>(f, t, out),
                    5 if MR >= 5 => narrow_rows::<5>(f, t, out),
                    4 if MR >= 4 => narrow_rows::<4>(f, t, out),
                    3 if MR >= 3 => narrow_rows::<3>(f, t, out),
                    2 => narrow_rows::<2>(f, t, out),
                    _ => narrow_rows::<1>(f, t, out),
                }
            }

            /// [`narrow`] on `ROWS` rows.
            ///
            /// # Safety
            /// As [`narrow`]'s; `t.rows` is `ROWS`.
            #[target_feature(enable = $feat)]
            unsafe fn narrow_rows<const ROWS: usize>(f: &FlipoutDense, t: Tile, out: &mut [f32]) {
                const CHUNK: usize = super::WOVEN_INPUTS;
                let w = 2 * L;
                debug_assert!(f.mean.is_none() && w == t.width && t.panel.len() >= t.kc * w && t.acc.len() >= ROWS * w);
                debug_assert!((t.r + ROWS) * f.k <= f.x.len() && t.p0 + t.kc <= f.k);
                let mut acc = [[$zero(); 2]; ROWS];
                let sums = t.acc.as_mut_ptr();
                if t.stage.load {
                    for i in 0..ROWS {
                        for v in 0..2 {
                            acc[i][v] = $load(sums.add(i * w + v * L));
                        }
                    }
                }
                // Each row's woven chunk: written before it is read (only what was written).
                let mut woven = std::mem::MaybeUninit::<[[f32; 2 * CHUNK]; ROWS]>::uninit();
                let woven = woven.as_mut_ptr().cast::<f32>();
                let mut bp = t.panel.as_ptr();
                for c in (0..t.kc).step_by(CHUNK) {
                    let len = CHUNK.min(t.kc - c);
                    for i in 0..ROWS {
                        $weave_inputs(f, t.r + i, t.p0 + c, len, woven.add(i * 2 * CHUNK));
                    }
                    for q in 0..len {
                        let pv = [$load(bp), $load(bp.add(L))];
                        for i in 0..ROWS {
                            let a = $pair(woven.add(i * 2 * CHUNK + 2 * q).cast::<u32>());
                            for v in 0..2 {
                                acc[i][v] = $fma(a, pv[v], acc[i][v]);
                            }
                        }
                        bp = bp.add(w);
                    }
                }
                if !t.stage.last {
                    for i in 0..ROWS {
                        for v in 0..2 {
                            $store(sums.add(i * w + v * L), acc[i][v]);
                        }
                    }
                    return;
                }
                unrolled!(ROWS, i => {
                    let [mean, pert] = $unweave(acc[i][0], acc[i][1]);
                    $epilogue::<1, true>(f, t.r + i, t.c0, t.cw, &[pert], &[mean], out)
                });
            }

            /// A k block of panel rows as [`paired`] (`V` = [`NV_PAIRED`]) and [`narrow`]
            /// (`V` = 1) read them: each row's noise (`V` vectors) and mu (`V` more) woven,
            /// `mu0, noise0, mu1, noise1, ...`, so that a row's `(x, x * s_in)` broadcast feeds
            /// both products in one FMA.
            ///
            /// # Safety
            /// The CPU has the target features; `panel` holds whole rows of `2 V L`.
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn weave_panel<const V: usize>(panel: &mut [f32]) {
                for row in panel.chunks_exact_mut(2 * V * L) {
                    let p = row.as_mut_ptr();
                    let noise: [$v; V] = std::array::from_fn(|v| $load(p.add(v * L)));
                    let mu: [$v; V] = std::array::from_fn(|v| $load(p.add((V + v) * L)));
                    for v in 0..V {
                        let [lo, hi] = $weave(mu[v], noise[v]);
                        $store(p.add(2 * v * L), lo);
                        $store(p.add((2 * v + 1) * L), hi);
                    }
                }
            }
        }
    };
}

// 32 columns = 2 zmm per row and product: 6 rows keep 24 accumulators in the 32 registers
// (64 columns = 4 zmm with the mean given: the first layer's 12 accumulators were 0.xx of
// the FMA rate).
simd_tile!(avx512, "avx512f,avx2,fma", __m512, 16, 2, 4, 6, 12, 4, _mm512_setzero_ps, _mm512_set1_ps, _mm512_loadu_ps, _mm512_fmadd_ps, _mm512_storeu_ps, epilogue_avx512, pair_avx512, weave_avx512, unweave_avx512, weave_inputs_avx512);
// 16 columns = 2 ymm per row and product: 3 rows, 12 accumulators of the 16 registers.
simd_tile!(avx2, "avx2,fma", __m256, 8, 2, 2, 3, 6, 2, _mm256_setzero_ps, _mm256_set1_ps, _mm256_loadu_ps, _mm256_fmadd_ps, _mm256_storeu_ps, epilogue_avx2, pair_avx2, weave_avx2, unweave_avx2, weave_inputs_portable);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_and_sparse_kernels_agree_with_hand_values() {
        // x = [[1, 2]], W = [[1, 0], [3, 0.5]] -> [7, 1]
        let mu = vec![1.0, 0.0, 3.0, 0.5];
        for sparse in [false, true] {
            let k = Kernel::new(2, 2, mu.clone(), Some(vec![0.1, 0.0, 0.1, 0.1]), sparse);
            let mut out = vec![0.0; 2];
            k.matmul(&[1.0, 2.0], 1, k.values().0, &mut out, false, &mut Vec::new());
            assert_eq!(out, vec![7.0, 1.0]);
        }
        assert_eq!(Kernel::new(2, 2, mu.clone(), Some(vec![0.0; 4]), true).values().0.len(), 3);
    }
    /// [`FlipoutDense`] with the noise `noise` from its definition, in f64.
    fn naive(f: &FlipoutDense, noise: &[f32]) -> Vec<f64> {
        let sign = |m: u32| if m == 0 { 1.0 } else { -1.0 };
        let mut out = Vec::new();
        for r in 0..f.m {
            for j in 0..f.n {
                let (mut mean, mut pert) = (0f64, 0f64);
                for p in 0..f.k {
                    let x = f64::from(f.x[r * f.k + p]);
                    mean += x * f64::from(f.mu[p * f.n + j]);
                    let g = r * f.k + p;
                    pert += x * sign((f.s_in[g / 64] >> (g % 64) & 1) as u32) * f64::from(noise[p * f.n + j]);
                }
                if let Some(v) = f.mean {
                    mean = f64::from(v[r * f.n + j]);
                }
                let g = r * f.n + j;
                let y = mean + pert * sign((f.s_out[g / 64] >> (g % 64) & 1) as u32) + f64::from(f.bias[j]);
                out.push(if f.relu { y.max(0.0) } else { y });
            }
        }
        out
    }

    #[test]
    fn woven_inputs_lie_beside_their_flips() {
        // Row 1 of two rows of 45 inputs, from input 3: two groups of 16 for the vector path,
        // then a tail of 10 (its bits read across a word boundary); signs of every third input
        // set, 0 and -0 among the values.
        let (k, r, p, len) = (45, 1, 3, 42);
        let x: Vec<f32> = (0..2 * k).map(|i| if i % 7 == 0 { 0.0 } else if i == 50 { -0.0 } else { i as f32 - 60.5 }).collect();
        let s_in: Vec<u64> = (0..2).map(|w| (0..64).filter(|i| (64 * w + i) % 3 == 0).fold(0u64, |a, i| a | 1 << i)).collect();
        let f = FlipoutDense { x: &x, s_in: &s_in, m: 2, k, n: 1, mu: &[], mean: None, x_nonzero: None, s_out: &[], noise: Noise::Values(&[]), bias: &[], relu: false };
        let want: Vec<u32> = (r * k + p..r * k + p + len).flat_map(|g| [x[g].to_bits(), if g % 3 == 0 { (-x[g]).to_bits() } else { x[g].to_bits() }]).collect();
        let mut out = vec![f32::NAN; 2 * WOVEN_INPUTS];
        // SAFETY: row 1 holds inputs 3..45 and `s_in` their bits; `out` has room for 2 x 64.
        unsafe { weave_inputs_portable(&f, r, p, len, out.as_mut_ptr()) };
        assert_eq!(out[..2 * len].iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            let mut out = vec![f32::NAN; 2 * WOVEN_INPUTS];
            // SAFETY: as above; the CPU has AVX-512F (the function is inlined into this test,
            // whose code may use it only after the check: the intrinsics need the feature).
            unsafe { weave_avx512_for_test(&f, r, p, len, out.as_mut_ptr()) };
            assert_eq!(out[..2 * len].iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
        }
    }

    /// [`weave_inputs_avx512`] compiled with AVX-512F.
    ///
    /// # Safety
    /// As [`weave_inputs_avx512`]'s.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn weave_avx512_for_test(f: &FlipoutDense, r: usize, p: usize, len: usize, out: *mut f32) {
        // SAFETY: the caller's contract.
        unsafe { weave_inputs_avx512(f, r, p, len, out) }
    }

    #[test]
    fn nonzero_bits_mark_the_inputs_that_are_not_zero() {
        // Rows of 70 inputs: two words each, the second holding inputs 64..70.
        let mut x = vec![0f32; 2 * 70];
        for p in [1, 63, 64, 69, 70 + 5, 70 + 66] {
            x[p] = 0.5;
        }
        x[7] = -0.0;
        x[8] = f32::NAN;
        let want = vec![1 << 1 | 1 << 8 | 1 << 63, 1 | 1 << 5, 1 << 5, 1 << 2];
        assert_eq!(nonzero_bits(&x, 2, 70), Some(want));
        // Too few zeros to pay: no bits.
        assert_eq!(nonzero_bits(&[1.0, 2.0, 0.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0], 1, 9), None);
        assert_eq!(nonzero_bits(&[], 0, 4), None);
    }

    #[test]
    fn fused_flipout_dense_equals_the_definition() {
        let mut rng = formats::synthetic::SplitMix64(11);
        let mut vals = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect() };
        let mut words = formats::synthetic::SplitMix64(12);
        // Row and column counts off the tile sizes (tails of 1..5 rows, partial panels), the
        // first layer's given mean and a computed one, with and without ReLU.
        // Row tails of 1 to 5 rows; k above one L1 panel block (300: 3 blocks of 100 at 64
        // columns); every kernel also with 1000-byte panel blocks, so that short k runs
        // through several blocks and a tail.
        // Scratch left over from an earlier call: nothing may depend on it.
        let dirty = || vec![f32::NAN; 3000];
        // The noise drawn beforehand, and drawn by the kernel into its panels (n = 64, 48, 96,
        // 112: on the generator's 32- and 16-value steps; the others drawn whole first).
        // n <= 16 (10, 7, 16, ...): one-vector panels, woven for the narrow kernels, over several
        // k blocks (30 x 300 x 10) and row tails after tiles of 12 (130 rows).
        // n = 200: full 64-column panels (mean given) whose rows' 64 sign bits start mid-word
        // (the epilogue reads them once per row, from two words), then an 8-column one.
        for (m, k, n) in [(13, 5, 10), (7, 64, 37), (1, 3, 1), (20, 17, 64), (6, 1, 33), (9, 300, 70), (16, 40, 20), (11, 130, 48), (7, 0, 5), (100, 70, 96), (8, 150, 112), (5, 9, 200), (13, 300, 128), (9, 33, 64), (6, 20, 256), (30, 300, 10), (25, 41, 7), (130, 66, 16)] {
            let (mut x, mu, sigma, bias) = (vals(m * k), vals(k * n), vals(k * n), vals(n));
            // Half the inputs zero, as after a ReLU (and whole zero rows), for the kernels
            // that skip them.
            for (i, v) in x.iter_mut().enumerate() {
                if *v < 0.0 || (i / k.max(1)) % 5 == 3 {
                    *v = 0.0;
                }
            }
            let key = crate::engine::sampler::Sampler::new(m as u64, k as u64).noise_key();
            let mut noise = vec![0f32; k * n];
            key.fill(&sigma, &mut noise, Runs::whole(k * n));
            let s_in: Vec<u64> = (0..(m * k).div_ceil(64)).map(|_| words.next_u64()).collect();
            let flipped: Vec<f32> = x.iter().enumerate().map(|(g, &a)| if s_in[g / 64] >> (g % 64) & 1 == 1 { -a } else { a }).collect();
            let s_out: Vec<u64> = (0..(m * n).div_ceil(64)).map(|_| words.next_u64()).collect();
            let given = vals(m * n);
            let nonzero = nonzero_bits(&x, m, k);
            let cases = [(None, false), (None, true), (Some(&given[..]), false), (Some(&given[..]), true)];
            for ((mean, relu), drawn) in cases.into_iter().flat_map(|c| [(c, Noise::Values(&noise)), (c, Noise::Draw { key, sigma: &sigma })]) {
                let f = FlipoutDense { x: &x, s_in: &s_in, m, k, n, mu: &mu, mean, x_nonzero: None, s_out: &s_out, noise: drawn, bias: &bias, relu };
                let want = naive(&f, &noise);
                let (mut buf, mut pairs) = (Vec::new(), RowPairs::default());
                let mut by_tile: Vec<Vec<f32>> = Vec::new();
                for (name, bytes) in [("dispatch", PANEL_BYTES), ("portable", PANEL_BYTES), ("portable", 1000), ("avx2", PANEL_BYTES), ("avx2", 1000), ("avx512", PANEL_BYTES), ("avx512", 1000), ("avx2-pairs", PANEL_BYTES), ("avx2-pairs", 1000), ("avx512-pairs", PANEL_BYTES), ("avx512-pairs", 1000), ("avx2-skip", PANEL_BYTES), ("avx2-skip", usize::MAX), ("avx512-skip", PANEL_BYTES), ("avx512-skip", usize::MAX), ("avx2-narrow", PANEL_BYTES), ("avx2-narrow", 1000), ("avx512-narrow", PANEL_BYTES), ("avx512-narrow", 1000)] {
                    let mut out = vec![f32::NAN; m * n];
                    match name {
                        "dispatch" => flipout_dense(&f, &mut out, &mut Buffers { panel: Aligned(dirty()), noise: dirty(), pairs: RowPairs::default(), flipped: dirty() }),
                        "portable" => portable(&drawable(&f, PORTABLE_NR, &mut buf), &flipped, &mut out, &mut Aligned(dirty()), bytes),
                        // The AVX2 kernel, which the dispatch skips on an AVX-512 machine.
                        #[cfg(target_arch = "x86_64")]
                        "avx2" if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") => {
                            let f = drawable(&f, avx2::L * avx2::nv(&f), &mut buf);
                            // SAFETY: the CPU has AVX2 and FMA; the slices hold their shapes.
                            drive(&f, avx2::L, avx2::nv(&f), [avx2::MR, avx2::MR_NARROW], bytes, &mut Aligned(dirty()), |t| unsafe { avx2::tile_any(&f, &flipped, t, &mut out) })
                        }
                        // The pairs' kernels, on the layers they take.
                        #[cfg(target_arch = "x86_64")]
                        "avx2-pairs" if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && mean.is_none() && n % (avx2::L * avx2::NV_PAIRED) == 0 => {
                            let f = drawable(&f, avx2::L * avx2::NV_PAIRED, &mut buf);
                            pairs.fill(f.x, f.s_in, m, k);
                            // SAFETY: the CPU has AVX2 and FMA; the slices hold their shapes; `pairs` holds f's rows; mean computed, full panels.
                            drive_arranged(&f, avx2::L, avx2::NV_PAIRED, PAIRED_TILE, bytes, &mut Aligned(dirty()), |p| unsafe { avx2::weave_panel::<{ avx2::NV_PAIRED }>(p) }, |t| unsafe { avx2::paired(&f, &pairs, t, &mut out) })
                        }
                        #[cfg(target_arch = "x86_64")]
                        "avx512-pairs" if std::is_x86_feature_detected!("avx512f") && mean.is_none() && n % (avx512::L * avx512::NV_PAIRED) == 0 => {
                            let f = drawable(&f, avx512::L * avx512::NV_PAIRED, &mut buf);
                            pairs.fill(f.x, f.s_in, m, k);
                            // SAFETY: the CPU has AVX-512F; the slices hold their shapes; `pairs` holds f's rows; mean computed, full panels.
                            drive_arranged(&f, avx512::L, avx512::NV_PAIRED, PAIRED_TILE, bytes, &mut Aligned(dirty()), |p| unsafe { avx512::weave_panel::<{ avx512::NV_PAIRED }>(p) }, |t| unsafe { avx512::paired(&f, &pairs, t, &mut out) })
                        }
                        #[cfg(target_arch = "x86_64")]
                        "avx512" if std::is_x86_feature_detected!("avx512f") => {
                            let f = drawable(&f, avx512::L * avx512::nv(&f), &mut buf);
                            // SAFETY: the CPU has AVX-512F; the slices hold their shapes.
                            drive(&f, avx512::L, avx512::nv(&f), [avx512::MR, avx512::MR_NARROW], bytes, &mut Aligned(dirty()), |t| unsafe { avx512::tile_any(&f, &flipped, t, &mut out) })
                        }
                        // The tiles over the inputs that are not zero (a given mean, one k block).
                        #[cfg(target_arch = "x86_64")]
                        "avx2-skip" if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && mean.is_some() && nonzero.is_some() => {
                            let f = FlipoutDense { x_nonzero: nonzero.as_deref(), ..drawable(&f, avx2::L * avx2::nv(&f), &mut buf) };
                            // SAFETY: the CPU has AVX2 and FMA; the slices hold their shapes; the bits are x's.
                            drive(&f, avx2::L, avx2::nv(&f), [avx2::MR, avx2::MR_NARROW], bytes, &mut Aligned(dirty()), |t| unsafe { avx2::tile_any(&f, &flipped, t, &mut out) })
                        }
                        #[cfg(target_arch = "x86_64")]
                        "avx512-skip" if std::is_x86_feature_detected!("avx512f") && mean.is_some() && nonzero.is_some() => {
                            let f = FlipoutDense { x_nonzero: nonzero.as_deref(), ..drawable(&f, avx512::L * avx512::nv(&f), &mut buf) };
                            // SAFETY: the CPU has AVX-512F; the slices hold their shapes; the bits are x's.
                            drive(&f, avx512::L, avx512::nv(&f), [avx512::MR, avx512::MR_NARROW], bytes, &mut Aligned(dirty()), |t| unsafe { avx512::tile_any(&f, &flipped, t, &mut out) })
                        }
                        // The woven tiles of a layer whose outputs fit one vector.
                        #[cfg(target_arch = "x86_64")]
                        "avx2-narrow" if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && mean.is_none() && n <= avx2::L => {
                            let f = drawable(&f, avx2::L, &mut buf);
                            // SAFETY: the CPU has AVX2 and FMA; the slices hold their shapes; mean computed, one-vector panels.
                            drive_arranged(&f, avx2::L, 1, [avx2::MR, avx2::MR_NARROW], bytes, &mut Aligned(dirty()), |p| unsafe { avx2::weave_panel::<1>(p) }, |t| unsafe { avx2::narrow(&f, t, &mut out) })
                        }
                        #[cfg(target_arch = "x86_64")]
                        "avx512-narrow" if std::is_x86_feature_detected!("avx512f") && mean.is_none() && n <= avx512::L => {
                            let f = drawable(&f, avx512::L, &mut buf);
                            // SAFETY: the CPU has AVX-512F; the slices hold their shapes; mean computed, one-vector panels.
                            drive_arranged(&f, avx512::L, 1, [avx512::MR, avx512::MR_NARROW], bytes, &mut Aligned(dirty()), |p| unsafe { avx512::weave_panel::<1>(p) }, |t| unsafe { avx512::narrow(&f, t, &mut out) })
                        }
                        _ => continue,
                    }
                    for (i, (g, e)) in out.iter().zip(&want).enumerate() {
                        assert!((f64::from(*g) - e).abs() < 1e-5 * (1.0 + e.abs()), "{name} ({bytes} B blocks) {m}x{k}x{n} mean given {} relu {relu} {:?} [{i}]: {g} vs {e}", mean.is_some(), matches!(drawn, Noise::Draw { .. }));
                    }
                    // Skipping the zeros changes no bit of what the same instruction set's tile sums.
                    match name {
                        "avx2" | "avx512" => by_tile.push(out),
                        "avx2-pairs" | "avx512-pairs" | "avx2-skip" | "avx512-skip" | "avx2-narrow" | "avx512-narrow" => {
                            let tile = by_tile.iter().find(|t| t.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()));
                            assert!(tile.is_some(), "{name} ({bytes} B blocks) {m}x{k}x{n} mean given {} relu {relu}: not bit for bit a tile's sums", mean.is_some());
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}
