//! Winograd minimal filtering F(m x m, r x r) for stride-1 convolutions: fewer
//! multiplications than im2col + GEMM (F(2x2, 3x3): 2.25x, F(4x4, 3x3): 4x, F(2x2, 5x5):
//! 2.78x, F(4x4, 5x5): 6.25x fewer).
//!
//! Each a x a input tile (a = m + r - 1) goes to the Winograd domain as `V = B^T d B`, each
//! kernel slice as `U = G g G^T`; the a² elementwise products over the channels are a² GEMMs
//! (tiles of a block of examples x in-channels @ in-channels x out-channels), and `Y = A^T M A`
//! gives an m x m output tile. The matrices come from the Toom-Cook construction on the points
//! 0, 1, -1, 1/2, -2 (then 2, -1/2 for 8x8 tiles) and infinity (the ones whose float error
//! stays small).
//!
//! Flipout: the input transform is linear and the input signs are per channel, so
//! `transform(x * s) = transform(x) * s`: each input tile is transformed once and serves the
//! mean product (against `U(mu)`, transformed once per model) and, with its channels' signs,
//! the perturbation product (against `U(sigma * eps)`, once per sample). Output signs, bias
//! and ReLU go on in the output transform.

use super::aligned::grown;
use super::conv::{max_pool_to, Window};
use super::gemm::sgemm_rows;
pub(crate) use tiles::Lanes;
use tiles::{InTile, OutTile, Tile};

mod tiles;

/// Values of one example block's Winograd-domain buffers (V, signed V, the two products):
/// bounds a thread's memory while keeping the GEMMs tall.
const BLOCK_VALUES: usize = 1 << 20;

/// Fewest output tiles per example from which Flipout runs one product per example against
/// that example's signed weights (a² c x k values to form per example, against a product of
/// tiles x a² x c x k saved), instead of the mean and perturbation products over all examples.
/// BNN-Conv's second conv on F(4x4, 5x5) has 16 tiles per example: `eval` 0.23 s per example
/// against 0.42 s stacked; VGG-16's 16x16 layers (16 tiles of F(4x4, 3x3)) time the same
/// either way.
const PER_EXAMPLE_TILES: usize = 16;

/// Values of padding between the Winograd-domain positions of one example's transformed
/// input (per-example path, hand-written transforms): with BNN-Conv's 16 tiles x 32 channels
/// the positions lay exactly 2 KB apart, so the 64 vectors one tile's transform stores fell
/// into 2 of L1's 64 sets and evicted each other on the way in. One cache line apart, they
/// spread over all sets: `eval` 2% faster.
const V_PAD: usize = 16;

/// Fewest input channels for which [`WinogradConv::plan`] uses Winograd: with few channels the
/// GEMMs are too shallow (k = channels) to run near peak, and the transforms dominate.
const MIN_CHANNELS: usize = 16;

/// Fewest output positions per example (8x8): on VGG-16's 4x4 layers (4 tiles of
/// F(2x2, 3x3) per example, 16 examples) Winograd measured no faster than im2col (1.0x,
/// `model/examples/winograd_bench.rs`): the products are few and the a² transformed weight
/// matrices (a² / r² times the kernel) cost as much to stream as the products save.
const MIN_OUTPUTS: usize = 64;

/// How the Winograd-domain products `M` of `rows` tiles (`a²` positions x k channels each) lie
/// in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `[a², rows, k]`: one GEMM's output per position (the stacked products; the generic
    /// output transform's strips).
    ByPosition,
    /// `[rows, a², k]`: each tile's values in one run (the per-example product, read by the
    /// hand-written output transform).
    ByTile,
}

impl Layout {
    /// Where position `xi`'s product starts and the distance between its rows (tiles).
    fn position(self, xi: usize, rows: usize, a: usize, k: usize) -> (usize, usize) {
        match self {
            Layout::ByPosition => (xi * rows * k, k),
            Layout::ByTile => (xi * k, a * a * k),
        }
    }

    /// Where tile `row`'s first position starts and the distance between its positions.
    fn tile(self, row: usize, rows: usize, a: usize, k: usize) -> (usize, usize) {
        match self {
            Layout::ByPosition => (row * k, rows * k),
            Layout::ByTile => (row * a * a * k, k),
        }
    }
}

/// The 1-D transform matrices of F(m, r), row-major f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    /// Outputs per tile (m).
    pub m: usize,
    /// Kernel size (r).
    pub r: usize,
    /// Tile size a = m + r - 1.
    pub a: usize,
    /// Output transform A^T, `[m, a]`.
    pub at: Vec<f32>,
    /// Kernel transform G, `[a, r]`.
    pub g: Vec<f32>,
    /// Input transform B^T, `[a, a]`.
    pub bt: Vec<f32>,
}

/// Coefficients (increasing powers) of `prod (x - p)` over `roots`.
fn poly_from_roots(roots: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut c = vec![1.0];
    for p in roots {
        // (c0 + c1 x + ...) * (x - p)
        let mut next = vec![0.0; c.len() + 1];
        for (i, &v) in c.iter().enumerate() {
            next[i + 1] += v;
            next[i] -= p * v;
        }
        c = next;
    }
    c
}

impl Transform {
    /// F(m, r) by the modified Toom-Cook construction on the points 0, 1, -1, 1/2, -2, 2,
    /// -1/2 (the first a - 1 of them) and infinity: for 6x6 tiles, 1/2 and -2 gave 2-3x
    /// smaller float errors than 2 and -2 (`winograd_convolutions_match_the_direct_convolution`),
    /// as Barabasz et al. found. Correlation `y = A^T ((G g) * (B^T d))` is
    /// the transpose of the polynomial product evaluated at those points and interpolated back.
    ///
    /// # Panics
    /// When a - 1 exceeds the 7 points (m + r > 9): no caller asks for such a tile.
    pub fn new(m: usize, r: usize) -> Transform {
        const POINTS: [f64; 7] = [0.0, 1.0, -1.0, 0.5, -2.0, 2.0, -0.5];
        let a = m + r - 1;
        assert!(m >= 1 && r >= 1 && a - 1 <= POINTS.len(), "Winograd F({m}, {r}) needs more points");
        let p = &POINTS[..a - 1];
        let mut at = vec![0f64; m * a];
        let mut g = vec![0f64; a * r];
        let mut bt = vec![0f64; a * a];
        for (j, &pj) in p.iter().enumerate() {
            for i in 0..m {
                at[i * a + j] = pj.powi(i as i32);
            }
            // Lagrange denominator of point j; it goes into G so that B^T stays integral.
            let f: f64 = p.iter().enumerate().filter(|&(l, _)| l != j).map(|(_, &pl)| pj - pl).product();
            for k in 0..r {
                g[j * r + k] = pj.powi(k as i32) / f;
            }
            let nj = poly_from_roots(p.iter().enumerate().filter(|&(l, _)| l != j).map(|(_, &pl)| pl));
            bt[j * a..j * a + nj.len()].copy_from_slice(&nj);
        }
        // The point at infinity: the leading coefficients.
        at[(m - 1) * a + a - 1] = 1.0;
        g[(a - 1) * r + r - 1] = 1.0;
        bt[(a - 1) * a..].copy_from_slice(&poly_from_roots(p.iter().copied()));
        let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
        Transform { m, r, a, at: f32s(at), g: f32s(g), bt: f32s(bt) }
    }

    /// Multiplications of one output channel over `oh x ow` outputs and one input channel,
    /// against direct convolution's `oh * ow * r²`.
    fn products(&self, out: [usize; 2]) -> usize {
        out[0].div_ceil(self.m) * out[1].div_ceil(self.m) * self.a * self.a
    }
}

/// `dst[p] = sum_i mat[p, i] * src[i]` over vectors of `len` values, `mat` row-major with
/// `rows_in` columns, vector i of `src` at `i * ss`, vector p of `dst` at `p * ds`: both passes
/// of every 2-D transform are this, on long slabs (a strip of tiles x channels). Zero and unit
/// coefficients (most of them) cost no multiplication.
#[inline(always)]
fn apply(mat: &[f32], rows_in: usize, src: &[f32], ss: usize, len: usize, dst: &mut [f32], ds: usize) {
    for (p, row) in mat.chunks_exact(rows_in).enumerate() {
        let d = &mut dst[p * ds..p * ds + len];
        let mut first = true;
        for (i, &c) in row.iter().enumerate() {
            if c == 0.0 {
                continue;
            }
            let s = &src[i * ss..i * ss + len];
            match (first, c) {
                (true, 1.0) => d.copy_from_slice(s),
                (true, _) => d.iter_mut().zip(s).for_each(|(d, s)| *d = c * s),
                (false, 1.0) => d.iter_mut().zip(s).for_each(|(d, s)| *d += s),
                (false, -1.0) => d.iter_mut().zip(s).for_each(|(d, s)| *d -= s),
                (false, _) => d.iter_mut().zip(s).for_each(|(d, s)| *d += c * s),
            }
            first = false;
        }
        if first {
            d.fill(0.0);
        }
    }
}

/// Columns of [`small_gemm`]'s register block (4 AVX-512 vectors).
const NR: usize = 64;

/// `c[m, n] = a[m, k] @ b[k, n]`, row-major, for the Winograd-domain products (few rows or
/// shallow: k = in-channels): without packing either matrix, which took as long as the
/// products in `matrixmultiply` at 49 x 32 x 64 (BNN-Conv's per-example products). An AVX-512 register block of 4 rows x 64 columns where
/// the CPU has it and n is a multiple of 64; the engine's GEMM otherwise. The rows of `c` lie
/// `ldc` values apart (`ldc >= n`).
///
/// # Panics
/// When a slice is shorter than its shape says (a bug in the caller).
#[allow(clippy::too_many_arguments)]
pub fn small_gemm(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32], ldc: usize) {
    assert!(a.len() >= m * k && b.len() >= k * n && ldc >= n && c.len() >= m.saturating_sub(1) * ldc + n, "small_gemm: slices shorter than {m}x{k}x{n}");
    #[cfg(target_arch = "x86_64")]
    if n.is_multiple_of(NR) && k > 0 && std::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is available (checked just above) and the lengths were checked.
        unsafe { small_gemm_avx512(m, k, n, a, b, c, ldc) };
        return;
    }
    sgemm_rows(m, k, n, a, b, c, ldc, false);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn small_gemm_avx512(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32], ldc: usize) {
    for j0 in (0..n).step_by(NR) {
        let mut i0 = 0;
        while i0 + 4 <= m {
            block::<4>(i0, j0, k, n, a, b, c, ldc);
            i0 += 4;
        }
        match m - i0 {
            3 => block::<3>(i0, j0, k, n, a, b, c, ldc),
            2 => block::<2>(i0, j0, k, n, a, b, c, ldc),
            1 => block::<1>(i0, j0, k, n, a, b, c, ldc),
            _ => {}
        }
    }
}

/// Rows `i0..i0 + MR`, columns `j0..j0 + 64` of [`small_gemm`]: 4 x MR accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn block<const MR: usize>(i0: usize, j0: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32], ldc: usize) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 4]; MR];
    let (ap, bp) = (a.as_ptr().add(i0 * k), b.as_ptr().add(j0));
    for p in 0..k {
        // SAFETY (all loads): row p < k of b holds columns j0..j0 + 64 <= n, and rows
        // i0..i0 + MR <= m of a hold column p < k; the caller checked the lengths.
        let row = bp.add(p * n);
        let bv = [_mm512_loadu_ps(row), _mm512_loadu_ps(row.add(16)), _mm512_loadu_ps(row.add(32)), _mm512_loadu_ps(row.add(48))];
        for (r, acc) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*ap.add(r * k + p));
            for (acc, &bv) in acc.iter_mut().zip(&bv) {
                *acc = _mm512_fmadd_ps(av, bv, *acc);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: row i0 + r < m of c (ldc apart) holds columns j0..j0 + 64 <= n.
        let out = c.as_mut_ptr().add((i0 + r) * ldc + j0);
        for (q, &v) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.add(16 * q), v);
        }
    }
}

/// One example's Flipout product at one Winograd-domain position:
/// `c[m, n] = a[m, k] @ w` for the example's weights `w[i, j] = mu[i, j] + s_in[i] s_out[j]
/// noise[i, j]` (signs as masks: 0 or the f32 sign bit), all row-major. On AVX-512 (n a
/// multiple of 16) each weight vector is formed in a register right where the product uses
/// it, for 8 rows of `a` at once (8 rows x 2 vectors of accumulators), instead of being
/// stored to a block and read back by [`small_gemm`] for every 4 rows: bit for bit the same
/// operations in the same order, 1.1-1.2x faster on BNN-Conv's 16 x 32 x 64 (`eval` 3-7%).
/// The first block of 8 rows keeps the weights it formed in `wb` (`[k, 32]`, in L1), and the
/// further row blocks of that column block read them back instead of forming them again (one
/// load for two loads, a ternary XOR and an add: `eval` 4% less CPU on BNN-Conv's 16 rows).
/// Elsewhere the weights go to `wb` (`[k, n]`) first. The rows of `c` lie `ldc` values apart
/// (`ldc >= n`).
///
/// # Panics
/// When a slice is shorter than its shape says (a bug in the caller).
#[allow(clippy::too_many_arguments)]
pub fn signed_gemm(m: usize, k: usize, n: usize, a: &[f32], mu: &[f32], noise: &[f32], s_in: &[u32], s_out: &[u32], c: &mut [f32], ldc: usize, wb: &mut Vec<f32>) {
    assert!(
        a.len() >= m * k && mu.len() >= k * n && noise.len() >= k * n && s_in.len() >= k && s_out.len() >= n && ldc >= n && c.len() >= m.saturating_sub(1) * ldc + n,
        "signed_gemm: slices shorter than {m}x{k}x{n}"
    );
    #[cfg(target_arch = "x86_64")]
    if n.is_multiple_of(16) && k > 0 && std::is_x86_feature_detected!("avx512f") {
        // The first row block's formed weights, kept for the others (k x 2 vectors).
        wb.resize(k * 32, 0.0);
        // SAFETY: AVX-512F is available (checked just above) and the lengths were checked.
        unsafe { signed_gemm_avx512(m, k, n, a, mu, noise, s_in, s_out, c, ldc, wb) };
        return;
    }
    form_signed(k, n, mu, noise, |i| s_in[i], s_out, wb);
    small_gemm(m, k, n, a, wb, c, ldc);
}

/// Flipout's weights of one example, `w = mu + s_in * noise * s_out` (`[k, n]`, signs as
/// masks: `s_in(i)` for row i, `s_out` per column), into `w`: [`signed_gemm`]'s where they are
/// not formed in registers, and a one-channel conv's (one input sign for all rows).
pub(crate) fn form_signed(k: usize, n: usize, mu: &[f32], noise: &[f32], s_in: impl Fn(usize) -> u32, s_out: &[u32], w: &mut Vec<f32>) {
    w.resize(k * n, 0.0);
    for (i, ((w, m), p)) in w.chunks_exact_mut(n).zip(mu.chunks_exact(n)).zip(noise.chunks_exact(n)).enumerate() {
        let si = s_in(i);
        for (((w, &m), &p), &so) in w.iter_mut().zip(m).zip(p).zip(s_out) {
            *w = m + f32::from_bits(p.to_bits() ^ si ^ so);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn signed_gemm_avx512(m: usize, k: usize, n: usize, a: &[f32], mu: &[f32], noise: &[f32], s_in: &[u32], s_out: &[u32], c: &mut [f32], ldc: usize, kept: &mut [f32]) {
    let op = SignedOp { k, n, a: a.as_ptr(), mu: mu.as_ptr(), noise: noise.as_ptr(), s_in: s_in.as_ptr(), s_out: s_out.as_ptr(), c: c.as_mut_ptr(), ldc, kept: kept.as_mut_ptr() };
    // The common channel counts as constants: the rows of `a` a fixed distance apart, so
    // that each broadcast is one pointer plus a constant (no address arithmetic per row).
    match k {
        16 => signed_blocks::<16>(&op, m),
        32 => signed_blocks::<32>(&op, m),
        64 => signed_blocks::<64>(&op, m),
        128 => signed_blocks::<128>(&op, m),
        _ => signed_blocks::<0>(&op, m),
    }
}

/// All of [`signed_gemm_avx512`]'s blocks, for `K` in-channels (0: `op.k`, any).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn signed_blocks<const K: usize>(op: &SignedOp, m: usize) {
    // Two vectors of columns at a time where n allows, else one.
    let mut j0 = 0;
    while j0 < op.n {
        let two = j0 + 32 <= op.n;
        let mut i0 = 0;
        while i0 + 8 <= m {
            // The first block forms the weights (and keeps them when more blocks follow).
            match (i0 > 0, m > 8) {
                (true, _) => signed_rows::<K, REUSE>(op, 8, two, i0, j0),
                (false, true) => signed_rows::<K, KEEP>(op, 8, two, i0, j0),
                (false, false) => signed_rows::<K, FORM>(op, 8, two, i0, j0),
            }
            i0 += 8;
        }
        // The rest in blocks of 4, 2, 1 rows (on kept weights after a block of 8).
        for mr in [4, 2, 1] {
            if m - i0 >= mr {
                if m > 8 {
                    signed_rows::<K, REUSE>(op, mr, two, i0, j0);
                } else {
                    signed_rows::<K, FORM>(op, mr, two, i0, j0);
                }
                i0 += mr;
            }
        }
        j0 += if two { 32 } else { 16 };
    }
}

/// [`signed_block`] for `mr` rows (8, 4, 2 or 1) and two vectors of columns (`two`) or one.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn signed_rows<const K: usize, const W: u8>(op: &SignedOp, mr: usize, two: bool, i0: usize, j0: usize) {
    match (mr, two) {
        (8, true) => signed_block::<8, 2, K, W>(op, i0, j0),
        (8, false) => signed_block::<8, 1, K, W>(op, i0, j0),
        (4, true) => signed_block::<4, 2, K, W>(op, i0, j0),
        (4, false) => signed_block::<4, 1, K, W>(op, i0, j0),
        (2, true) => signed_block::<2, 2, K, W>(op, i0, j0),
        (2, false) => signed_block::<2, 1, K, W>(op, i0, j0),
        (_, true) => signed_block::<1, 2, K, W>(op, i0, j0),
        (_, false) => signed_block::<1, 1, K, W>(op, i0, j0),
    }
}

/// Raw operands of [`signed_gemm_avx512`], lengths checked by [`signed_gemm`].
#[cfg(target_arch = "x86_64")]
struct SignedOp {
    k: usize,
    n: usize,
    a: *const f32,
    mu: *const f32,
    noise: *const f32,
    s_in: *const u32,
    s_out: *const u32,
    c: *mut f32,
    /// Values between rows of `c`.
    ldc: usize,
    /// The current column block's formed weights, `[k, 16 NV]`, for the row blocks after the
    /// first.
    kept: *mut f32,
}

/// [`signed_block`] forms its weights in registers.
const FORM: u8 = 0;
/// ... and keeps them for the next row blocks.
const KEEP: u8 = 1;
/// ... or reads the kept ones.
const REUSE: u8 = 2;

/// Rows `i0..i0 + MR`, columns `j0..j0 + 16 NV` of [`signed_gemm`] (`K` in-channels, 0:
/// any): MR x NV accumulators, and per row of the weights NV vectors formed
/// (`mu + (noise ^ s_in ^ s_out)`) and used by all MR rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn signed_block<const MR: usize, const NV: usize, const K: usize, const W: u8>(op: &SignedOp, i0: usize, j0: usize) {
    use std::arch::x86_64::*;
    let k = if K > 0 { K } else { op.k };
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    // SAFETY (all accesses): rows i0..i0 + MR <= m of a hold columns p < k, rows p < k of mu
    // and noise columns j0..j0 + 16 NV <= n, s_in k masks and s_out n; `signed_gemm` checked
    // the lengths, and sized `kept` to k x 32 >= k x 16 NV values.
    let mut so = [_mm512_setzero_si512(); NV];
    for (v, so) in so.iter_mut().enumerate() {
        *so = _mm512_loadu_si512(op.s_out.add(j0 + 16 * v).cast());
    }
    let a = op.a.add(i0 * k);
    for p in 0..k {
        let row = p * op.n + j0;
        let si = _mm512_set1_epi32(*op.s_in.add(p) as i32);
        let mut w = [_mm512_setzero_ps(); NV];
        let kept = op.kept.add(p * 16 * NV);
        for (v, w) in w.iter_mut().enumerate() {
            if W == REUSE {
                *w = _mm512_loadu_ps(kept.add(16 * v));
                continue;
            }
            let flipped = _mm512_ternarylogic_epi32(_mm512_loadu_si512(op.noise.add(row + 16 * v).cast()), so[v], si, 0x96);
            *w = _mm512_add_ps(_mm512_loadu_ps(op.mu.add(row + 16 * v)), _mm512_castsi512_ps(flipped));
            if W == KEEP {
                _mm512_storeu_ps(kept.add(16 * v), *w);
            }
        }
        let ap = a.add(p);
        for (r, acc) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*ap.add(r * k));
            for (acc, &w) in acc.iter_mut().zip(&w) {
                *acc = _mm512_fmadd_ps(av, w, *acc);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (v, &x) in acc.iter().enumerate() {
            _mm512_storeu_ps(op.c.add((i0 + r) * op.ldc + j0 + 16 * v), x);
        }
    }
}

/// Flipout's perturbation of one sample: the weight noise (HWIO, `[r * r * c, k]`) and the
/// sign masks (0 or the f32 sign bit) per example and in-channel, and per example and
/// out-channel.
#[derive(Debug, Clone, Copy)]
pub struct Flipout<'a> {
    /// `sigma * eps`, the kernel's layout.
    pub noise: &'a [f32],
    /// Input sign masks `[n, c]`.
    pub s_in: &'a [u32],
    /// Output sign masks `[n, k]`.
    pub s_out: &'a [u32],
}

/// Reusable buffers of one thread's Winograd convolutions.
#[derive(Debug, Default)]
pub struct Buffers {
    v: Vec<f32>,
    vs: Vec<f32>,
    mm: Vec<f32>,
    mp: Vec<f32>,
    u_main: Vec<f32>,
    u_pert: Vec<f32>,
    /// One example's Flipout weights at one Winograd-domain position (`[c, k]`).
    wb: Vec<f32>,
    tile: Vec<f32>,
    tmp: Vec<f32>,
    /// One example's output before the max pool fused into the per-example path.
    unpooled: Vec<f32>,
}

/// A stride-1 convolution run by Winograd minimal filtering, with its mean kernel already in
/// the Winograd domain.
#[derive(Debug, Clone)]
pub struct WinogradConv {
    t: Transform,
    win: Window,
    /// Out-channels.
    k: usize,
    /// Output tiles per example, `[rows, cols]`.
    tiles: [usize; 2],
    /// `U(mu)`, `[a², c, k]`.
    u_mu: Vec<f32>,
    /// The hand-written transforms of this tile, if it has them.
    tile: Option<Tile>,
}

/// Which code runs the transforms: the hand-written ones on AVX-512, AVX2 + FMA or plain f32
/// lanes, or the generic matrix passes (the reference, and the only code for other tiles).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    /// 16 channels per vector.
    Avx512,
    /// 8 channels per vector.
    Avx2,
    /// One channel at a time, any CPU.
    Portable,
    /// `apply` with the matrices of [`Transform::new`].
    Generic,
}

impl Path {
    /// The paths this CPU can run, fastest first.
    pub(crate) fn available() -> Vec<Path> {
        let mut paths = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                paths.push(Path::Avx512);
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                paths.push(Path::Avx2);
            }
        }
        paths.extend([Path::Portable, Path::Generic]);
        paths
    }
}

impl WinogradConv {
    /// The Winograd form of the convolution `win` with kernel means `mu` (HWIO, `[r*r*c, k]`),
    /// when one fits: square 3x3 or 5x5 kernels at stride 1, at least [`MIN_CHANNELS`]
    /// in-channels and [`MIN_OUTPUTS`] output positions per example (where it was measured faster
    /// than im2col + GEMM on the benchmark models); the tile that needs fewest products.
    pub fn plan(win: &Window, k: usize, mu: &[f32]) -> Option<WinogradConv> {
        let r = win.size[0];
        if win.strides != [1, 1] || win.size[1] != r || !(r == 3 || r == 5) || win.input[2] < MIN_CHANNELS || k == 0 {
            return None;
        }
        let out = win.output();
        if out[0] * out[1] < MIN_OUTPUTS {
            return None;
        }
        let best = [2, 4].into_iter().map(|m| Transform::new(m, r)).min_by_key(|t| t.products(out))?;
        // At least 1.5x fewer products than the direct convolution.
        if best.products(out) * 3 > out[0] * out[1] * r * r * 2 {
            return None;
        }
        Some(WinogradConv::new(best, *win, k, mu))
    }

    /// The convolution `win` (stride 1, square kernel of `t.r`) with kernel means `mu`, run
    /// on the tile `t`.
    ///
    /// # Panics
    /// When the window does not fit the transform or `mu` is not `[r*r*c, k]` (a bug in the
    /// caller: the shapes come from the checked architecture).
    pub fn new(t: Transform, win: Window, k: usize, mu: &[f32]) -> WinogradConv {
        assert!(win.strides == [1, 1] && win.size == [t.r, t.r] && mu.len() == t.r * t.r * win.input[2] * k, "Winograd: shapes do not fit");
        let out = win.output();
        let tiles = [out[0].div_ceil(t.m), out[1].div_ceil(t.m)];
        // Hand-written transforms only where they are this transform's matrices.
        let tile = Tile::of(t.m, t.r).filter(|_| t == Transform::new(t.m, t.r));
        let mut conv = WinogradConv { t, win, k, tiles, u_mu: Vec::new(), tile };
        let mut u = Vec::new();
        conv.kernel_transform(mu, &mut u, &mut Vec::new());
        conv.u_mu = u;
        conv
    }

    /// The tile in use.
    pub fn transform(&self) -> &Transform {
        &self.t
    }

    /// Multiply-adds of the GEMM phase for `n` examples: the mean product, and with Flipout
    /// the perturbation product too, unless it runs as one product per example
    /// ([`PER_EXAMPLE_TILES`]).
    pub fn gemm_macs(&self, n: usize, flipout: bool) -> u64 {
        let tpe = self.tiles[0] * self.tiles[1];
        let products = if flipout && tpe < PER_EXAMPLE_TILES { 2 } else { 1 };
        (products * n * tpe * self.t.a * self.t.a * self.win.input[2] * self.k) as u64
    }

    /// Whether [`WinogradConv::forward`] with Flipout (or not) pools into its output when
    /// given the max pool `pool` (the per-example Flipout path does).
    pub fn pools(&self, flipout: bool, pool: Option<&Window>) -> bool {
        flipout && pool.is_some() && self.tiles[0] * self.tiles[1] >= PER_EXAMPLE_TILES
    }

    /// `U = G g G^T` of every (in, out) channel pair of an HWIO kernel `w`, into `u`
    /// (`[a², c, k]`, one GEMM operand per Winograd-domain position).
    fn kernel_transform(&self, w: &[f32], u: &mut Vec<f32>, tmp: &mut Vec<f32>) {
        let (r, a, c, k) = (self.t.r, self.t.a, self.win.input[2], self.k);
        // A thread's Winograd layers share these buffers (grown, never shrunk). Every value of
        // `u` up to a² c k is written below.
        let u = grown(u, a * a * c * k);
        // Per in-channel: g [r, r, k] gathered, G g [a, r, k], then G (G g)^T per row [a, k].
        let tmp = grown(tmp, r * r * k + a * r * k + a * k);
        let (g, rest) = tmp.split_at_mut(r * r * k);
        let (gg, row) = rest.split_at_mut(a * r * k);
        for ci in 0..c {
            for (t, dst) in g.chunks_exact_mut(k).enumerate() {
                dst.copy_from_slice(&w[(t * c + ci) * k..][..k]);
            }
            apply(&self.t.g, r, g, r * k, r * k, gg, r * k);
            for p in 0..a {
                apply(&self.t.g, r, &gg[p * r * k..], k, k, row, k);
                for (q, src) in row.chunks_exact(k).enumerate() {
                    u[((p * a + q) * c + ci) * k..][..k].copy_from_slice(src);
                }
            }
        }
    }

    /// The convolution of `x` (`n` examples, NHWC) into `out` (`[n, oh, ow, k]`): with the
    /// kernel `weights` (HWIO; `None` = the means, already transformed), plus Flipout's
    /// perturbation when given, plus `bias`, through a ReLU when `relu`. With `pool` (the max
    /// pool that follows), the per-example Flipout path pools each example's output while it
    /// is in cache into `out` (`[n, ph, pw, k]`) and returns true; otherwise `out` is the
    /// unpooled `[n, oh, ow, k]` and the result false.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(&self, x: &[f32], n: usize, weights: Option<&[f32]>, flipout: Option<Flipout>, bias: &[f32], relu: bool, pool: Option<&Window>, out: &mut [f32], ws: &mut Buffers) -> bool {
        let path = Path::available()[0];
        self.forward_on(path, x, n, weights, flipout, bias, relu, pool, out, ws)
    }

    /// [`WinogradConv::forward`] on the transforms' code `path` (one of [`Path::available`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_on(&self, path: Path, x: &[f32], n: usize, weights: Option<&[f32]>, flipout: Option<Flipout>, bias: &[f32], relu: bool, pool: Option<&Window>, out: &mut [f32], ws: &mut Buffers) -> bool {
        #[cfg(target_arch = "x86_64")]
        match path {
            // SAFETY: `Path::available` lists these paths only where the CPU has the features.
            Path::Avx512 => return unsafe { self.forward_avx512(x, n, weights, flipout, bias, relu, pool, out, ws) },
            Path::Avx2 => return unsafe { self.forward_avx2(x, n, weights, flipout, bias, relu, pool, out, ws, false) },
            Path::Generic if Path::available().contains(&Path::Avx2) => return unsafe { self.forward_avx2(x, n, weights, flipout, bias, relu, pool, out, ws, true) },
            Path::Portable | Path::Generic => {}
        }
        // SAFETY: f32 lanes need no CPU feature.
        unsafe { self.forward_impl::<f32>(x, n, weights, flipout, bias, relu, pool, out, ws, path == Path::Generic) }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn forward_avx512(&self, x: &[f32], n: usize, weights: Option<&[f32]>, flipout: Option<Flipout>, bias: &[f32], relu: bool, pool: Option<&Window>, out: &mut [f32], ws: &mut Buffers) -> bool {
        self.forward_impl::<std::arch::x86_64::__m512>(x, n, weights, flipout, bias, relu, pool, out, ws, false)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn forward_avx2(&self, x: &[f32], n: usize, weights: Option<&[f32]>, flipout: Option<Flipout>, bias: &[f32], relu: bool, pool: Option<&Window>, out: &mut [f32], ws: &mut Buffers, generic: bool) -> bool {
        self.forward_impl::<std::arch::x86_64::__m256>(x, n, weights, flipout, bias, relu, pool, out, ws, generic)
    }

    /// The convolution with the hand-written transforms on lanes `V` (unless `generic` or the
    /// tile has none).
    ///
    /// # Safety
    /// `V`'s CPU features are enabled in the caller.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn forward_impl<V: Lanes>(&self, x: &[f32], n: usize, weights: Option<&[f32]>, flipout: Option<Flipout>, bias: &[f32], relu: bool, pool: Option<&Window>, out: &mut [f32], ws: &mut Buffers, generic: bool) -> bool {
        let (a, c, k) = (self.t.a, self.win.input[2], self.k);
        let fast = self.tile.filter(|_| !generic);
        let [h, w, _] = self.win.input;
        assert!(x.len() >= n * h * w * c && bias.len() == k, "Winograd: input or bias shorter than the shapes say");
        let mut u_main = std::mem::take(&mut ws.u_main);
        let mut u_pert = std::mem::take(&mut ws.u_pert);
        if let Some(w) = weights {
            self.kernel_transform(w, &mut u_main, &mut ws.tmp);
        }
        if let Some(f) = &flipout {
            self.kernel_transform(f.noise, &mut u_pert, &mut ws.tmp);
        }
        let um = if weights.is_some() { &u_main[..] } else { &self.u_mu[..] };
        let tpe = self.tiles[0] * self.tiles[1];
        if let Some(f) = flipout.filter(|_| tpe >= PER_EXAMPLE_TILES) {
            // One product per example against its own weights
            // `U(mu) + s_in * U(noise) * s_out`: V_b @ U(mu) + ((V_b * s_in) @ U(noise)) * s_out
            // in half the multiplications, for the price of forming a² c x k weights. Each
            // position's weights are formed in registers by the product ([`signed_gemm`]; a
            // whole example's a² blocks, 512 KB for BNN-Conv's 8x8 tiles, had gone out to L2
            // and back).
            let (c_k, [oh, ow]) = (c * k, self.win.output());
            let mut wb = std::mem::take(&mut ws.wb);
            let mut unpooled = std::mem::take(&mut ws.unpooled);
            let (per_out, pooled_len) = (oh * ow * k, pool.map_or(0, |p| p.output().iter().product::<usize>() * k));
            // A 2x2 stride-2 max pool without padding goes into the hand-written output
            // transform: the tiles' sides (m) are even, so each pool window lies in one tile.
            let pool2 = pool.filter(|p| fast.is_some() && p.is_unpadded_2x2() && self.t.m.is_multiple_of(2)).map(Window::output);
            if pool.is_some() && pool2.is_none() {
                unpooled.resize(per_out, 0.0);
            }
            let vpad = if fast.is_some() { V_PAD } else { 0 };
            for b in 0..n {
                let (si, so) = (&f.s_in[b * c..(b + 1) * c], &f.s_out[b * k..(b + 1) * k]);
                self.input_transform::<V>(x, b, b + 1, None, ws, generic, vpad);
                ws.mm.resize(a * a * tpe * k, 0.0);
                // Tile by tile where the hand-written output transform reads them: each tile's
                // a² x k products in one run, not a² values 4 KB apart (BNN-Conv).
                let layout = if fast.is_some() { Layout::ByTile } else { Layout::ByPosition };
                // The next example's input, a slice per position: it comes from memory (the
                // previous layer wrote all examples), and the prefetcher cannot know.
                let next = x.get((b + 1) * h * w * c..(b + 2) * h * w * c).unwrap_or_default();
                let per = next.len().div_ceil(a * a);
                for xi in 0..a * a {
                    #[cfg(target_arch = "x86_64")]
                    for line in next.get(xi * per..((xi + 1) * per).min(next.len())).unwrap_or_default().chunks(16) {
                        // SAFETY: a prefetch reads nothing; the address is inside `x`.
                        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr().cast()) };
                    }
                    let at = xi * c_k..(xi + 1) * c_k;
                    let (first, ldc) = layout.position(xi, tpe, a, k);
                    signed_gemm(tpe, c, k, &ws.v[xi * (tpe * c + vpad)..], &um[at.clone()], &u_pert[at], si, so, &mut ws.mm[first..], ldc, &mut wb);
                }
                match pool {
                    Some(_) if pool2.is_some() => self.output_transform::<V>(b, b + 1, layout, None, bias, relu, pool2, &mut out[b * pooled_len..(b + 1) * pooled_len], ws, generic),
                    Some(p) => {
                        self.output_transform::<V>(b, b + 1, layout, None, bias, relu, None, &mut unpooled, ws, generic);
                        max_pool_to(&unpooled, 1, p, &mut out[b * pooled_len..(b + 1) * pooled_len]);
                    }
                    None => self.output_transform::<V>(b, b + 1, layout, None, bias, relu, None, &mut out[b * per_out..(b + 1) * per_out], ws, generic),
                }
            }
            ws.unpooled = unpooled;
            ws.wb = wb;
            ws.u_main = u_main;
            ws.u_pert = u_pert;
            debug_assert_eq!(pool.is_some(), self.pools(true, pool));
            return pool.is_some();
        }
        let per_example = tpe * a * a * (c + k) * if flipout.is_some() { 2 } else { 1 };
        let block = (BLOCK_VALUES / per_example.max(1)).clamp(1, n.max(1));
        let [oh, ow] = self.win.output();
        for b0 in (0..n).step_by(block) {
            let b1 = (b0 + block).min(n);
            let rows = (b1 - b0) * tpe;
            self.input_transform::<V>(x, b0, b1, flipout.map(|f| f.s_in), ws, generic, 0);
            ws.mm.resize(a * a * rows * k, 0.0);
            for xi in 0..a * a {
                small_gemm(rows, c, k, &ws.v[xi * rows * c..], &um[xi * c * k..], &mut ws.mm[xi * rows * k..], k);
            }
            if flipout.is_some() {
                ws.mp.resize(a * a * rows * k, 0.0);
                for xi in 0..a * a {
                    small_gemm(rows, c, k, &ws.vs[xi * rows * c..], &u_pert[xi * c * k..], &mut ws.mp[xi * rows * k..], k);
                }
            }
            let ob = &mut out[b0 * oh * ow * k..b1 * oh * ow * k];
            self.output_transform::<V>(b0, b1, Layout::ByPosition, flipout.map(|f| f.s_out), bias, relu, None, ob, ws, generic);
        }
        ws.u_main = u_main;
        ws.u_pert = u_pert;
        false
    }

    /// `V = B^T d B` of every tile of examples `b0..b1` into `ws.v` (`[a², rows, c]`, with
    /// `vpad` values after each position: only with the hand-written transforms), and
    /// with the examples' channel signs into `ws.vs` when `s_in` is given. One strip (a row of
    /// tiles of one example) at a time, so that each pass runs on vectors of tiles x channels.
    /// With the hand-written transforms (unless `generic`), one tile at a time, the zero
    /// padding and the signs in the same pass.
    ///
    /// # Safety
    /// `V`'s CPU features are enabled in the caller.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn input_transform<V: Lanes>(&self, x: &[f32], b0: usize, b1: usize, s_in: Option<&[u32]>, ws: &mut Buffers, generic: bool, vpad: usize) {
        let (a, m) = (self.t.a, self.t.m);
        let [h, w, c] = self.win.input;
        let (_, [ph, pw]) = self.win.geometry();
        let [ty_n, tx_n] = self.tiles;
        let rows = (b1 - b0) * ty_n * tx_n;
        let len = tx_n * c;
        ws.v.resize(a * a * (rows * c + vpad), 0.0);
        if s_in.is_some() {
            ws.vs.resize(a * a * (rows * c + vpad), 0.0);
        }
        if let Some(tile) = self.tile.filter(|_| !generic) {
            for b in b0..b1 {
                let img = &x[b * h * w * c..(b + 1) * h * w * c];
                for (ty, tx) in (0..ty_n).flat_map(|ty| (0..tx_n).map(move |tx| (ty, tx))) {
                    let row = ((b - b0) * ty_n + ty) * tx_n + tx;
                    let origin = [(ty * m) as isize - ph as isize, (tx * m) as isize - pw as isize];
                    let signed = s_in.map(|s| (&mut ws.vs[row * c..], &s[b * c..(b + 1) * c]));
                    let mut t = InTile { img, shape: [h, w, c], origin, v: &mut ws.v[row * c..], signed, stride: rows * c + vpad };
                    tiles::input::<V>(tile, &mut t);
                }
            }
            return;
        }
        assert_eq!(vpad, 0, "Winograd: padded positions need the hand-written transforms");
        // The strip's input `[a, a, tiles, c]` (zeros outside the image: padding and partial
        // tiles), and B^T applied along its rows.
        ws.tile.resize(a * a * len, 0.0);
        ws.tmp.resize(a * a * len, 0.0);
        for b in b0..b1 {
            let img = &x[b * h * w * c..(b + 1) * h * w * c];
            for ty in 0..ty_n {
                let row0 = ((b - b0) * ty_n + ty) * tx_n;
                for i in 0..a {
                    let y = (ty * m + i).checked_sub(ph).filter(|&y| y < h);
                    for j in 0..a {
                        let dst = &mut ws.tile[(i * a + j) * len..][..len];
                        for (t, px) in dst.chunks_exact_mut(c).enumerate() {
                            match (y, (t * m + j).checked_sub(pw).filter(|&xx| xx < w)) {
                                (Some(y), Some(xx)) => px.copy_from_slice(&img[(y * w + xx) * c..][..c]),
                                _ => px.fill(0.0),
                            }
                        }
                    }
                }
                apply(&self.t.bt, a, &ws.tile, a * len, a * len, &mut ws.tmp, a * len);
                for p in 0..a {
                    apply(&self.t.bt, a, &ws.tmp[p * a * len..], len, len, &mut ws.v[(p * a * rows + row0) * c..], rows * c);
                }
                if let Some(s) = s_in {
                    let signs = &s[b * c..(b + 1) * c];
                    for xi in 0..a * a {
                        let at = (xi * rows + row0) * c;
                        for (d, src) in ws.vs[at..at + len].chunks_exact_mut(c).zip(ws.v[at..at + len].chunks_exact(c)) {
                            for ((d, &v), &m) in d.iter_mut().zip(src).zip(signs) {
                                *d = f32::from_bits(v.to_bits() ^ m);
                            }
                        }
                    }
                }
            }
        }
    }

    /// `Y = A^T M A` of every tile of examples `b0..b1` (M = `ws.mm` in `layout`, plus `ws.mp`
    /// with the output signs when `s_out` is given: the signs are per example and channel, so
    /// they commute with the transform and go on after its first pass) into `out`
    /// (`[b1 - b0, oh, ow, k]`), plus `bias`, through a ReLU when `relu`. One strip at a time.
    /// With the hand-written transforms (unless `generic`), one tile at a time; with `pool2`
    /// (`[ph, pw]`: only there) each example's 2x2 stride-2 unpadded max pool instead.
    ///
    /// # Safety
    /// `V`'s CPU features are enabled in the caller.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn output_transform<V: Lanes>(&self, b0: usize, b1: usize, layout: Layout, s_out: Option<&[u32]>, bias: &[f32], relu: bool, pool2: Option<[usize; 2]>, out: &mut [f32], ws: &mut Buffers, generic: bool) {
        let (a, m, k) = (self.t.a, self.t.m, self.k);
        let [oh, ow] = self.win.output();
        let [ty_n, tx_n] = self.tiles;
        let rows = (b1 - b0) * ty_n * tx_n;
        if let Some(tile) = self.tile.filter(|_| !generic) {
            let per_out = pool2.map_or(oh * ow, |[ph, pw]| ph * pw) * k;
            for b in b0..b1 {
                let img = &mut out[(b - b0) * per_out..(b - b0 + 1) * per_out];
                for (ty, tx) in (0..ty_n).flat_map(|ty| (0..tx_n).map(move |tx| (ty, tx))) {
                    let row = ((b - b0) * ty_n + ty) * tx_n + tx;
                    let (first, stride) = layout.tile(row, rows, a, k);
                    let mp = s_out.map(|s| (&ws.mp[first..], &s[b * k..(b + 1) * k]));
                    let mut t = OutTile { mm: &ws.mm[first..], mp, stride, bias, relu, out: &mut *img, size: [oh, ow], origin: [ty * m, tx * m], pool2 };
                    tiles::output::<V>(tile, &mut t);
                }
            }
            return;
        }
        assert!(pool2.is_none() && layout == Layout::ByPosition, "Winograd: the fused pool and the products by tile need the hand-written transforms");
        let len = tx_n * k;
        // A^T along the tile's rows `[m, a, tiles, k]` (mean, then perturbation), then along
        // its columns `[m, m, tiles, k]`.
        ws.tile.resize(2 * m * a * len, 0.0);
        ws.tmp.resize(m * m * len, 0.0);
        let (am, ap) = ws.tile.split_at_mut(m * a * len);
        for b in b0..b1 {
            let img = &mut out[(b - b0) * oh * ow * k..(b - b0 + 1) * oh * ow * k];
            for ty in 0..ty_n {
                let row0 = ((b - b0) * ty_n + ty) * tx_n;
                for q in 0..a {
                    apply(&self.t.at, a, &ws.mm[(q * rows + row0) * k..], a * rows * k, len, &mut am[q * len..], a * len);
                }
                if let Some(s) = s_out {
                    let signs = &s[b * k..(b + 1) * k];
                    for q in 0..a {
                        apply(&self.t.at, a, &ws.mp[(q * rows + row0) * k..], a * rows * k, len, &mut ap[q * len..], a * len);
                    }
                    for (d, p) in am.chunks_exact_mut(k).zip(ap.chunks_exact(k)) {
                        for ((d, &p), &sg) in d.iter_mut().zip(p).zip(signs) {
                            *d += f32::from_bits(p.to_bits() ^ sg);
                        }
                    }
                }
                for i in 0..m {
                    apply(&self.t.at, a, &am[i * a * len..], len, len, &mut ws.tmp[i * m * len..], len);
                }
                for i in 0..m.min(oh - ty * m) {
                    let orow = &mut img[(ty * m + i) * ow * k..][..ow * k];
                    for j in 0..m {
                        let src = &ws.tmp[(i * m + j) * len..][..len];
                        for (t, v) in src.chunks_exact(k).enumerate() {
                            let ox = t * m + j;
                            if ox >= ow {
                                break;
                            }
                            let dst = &mut orow[ox * k..][..k];
                            if relu {
                                dst.iter_mut().zip(v).zip(bias).for_each(|((d, &v), &bb)| *d = (v + bb).max(0.0));
                            } else {
                                dst.iter_mut().zip(v).zip(bias).for_each(|((d, &v), &bb)| *d = v + bb);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Padding;

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = formats::synthetic::SplitMix64(seed);
        (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
    }

    #[test]
    fn f2x3_matrices_are_the_textbook_ones_up_to_row_scaling() {
        // Lavin & Gray's F(2, 3) on points 0, 1, -1: A^T = [[1, 1, 1, 0], [0, 1, -1, -1]] up to
        // the sign of the last column, B^T rows up to sign, G rows up to the inverse sign.
        let t = Transform::new(2, 3);
        assert_eq!(t.at, vec![1., 1., 1., 0., 0., 1., -1., 1.]);
        assert_eq!(t.bt, vec![-1., 0., 1., 0., 0., 1., 1., 0., 0., -1., 1., 0., 0., -1., 0., 1.]);
        assert_eq!(t.g, vec![-1., 0., 0., 0.5, 0.5, 0.5, 0.5, -0.5, 0.5, 0., 0., 1.]);
    }

    /// 1-D correlation of `d` (a values) with `g` (r values) by the transform, in f64.
    fn winograd_1d(t: &Transform, d: &[f64], g: &[f64]) -> Vec<f64> {
        let (m, r, a) = (t.m, t.r, t.a);
        let gg: Vec<f64> = (0..a).map(|j| (0..r).map(|k| f64::from(t.g[j * r + k]) * g[k]).sum()).collect();
        let bd: Vec<f64> = (0..a).map(|j| (0..a).map(|i| f64::from(t.bt[j * a + i]) * d[i]).sum()).collect();
        (0..m).map(|i| (0..a).map(|j| f64::from(t.at[i * a + j]) * gg[j] * bd[j]).sum()).collect()
    }

    #[test]
    fn one_dimensional_transforms_compute_the_correlation() {
        for (m, r) in [(2, 3), (4, 3), (2, 5), (3, 3), (4, 5)] {
            let t = Transform::new(m, r);
            let d: Vec<f64> = values(t.a, 11).into_iter().map(f64::from).collect();
            let g: Vec<f64> = values(r, 12).into_iter().map(f64::from).collect();
            let y = winograd_1d(&t, &d, &g);
            for (i, &yi) in y.iter().enumerate() {
                let direct: f64 = (0..r).map(|k| d[i + k] * g[k]).sum();
                assert!((yi - direct).abs() < 1e-6, "F({m}, {r}) output {i}: {yi} vs {direct}");
            }
        }
    }

    /// Direct convolution in f64 (TF's cross-correlation, NHWC, HWIO), the definition.
    #[allow(clippy::too_many_arguments)]
    fn direct(x: &[f32], n: usize, win: &Window, w: &[f32], k: usize, s_in: Option<&[u32]>, s_out: Option<&[u32]>) -> Vec<f64> {
        let [h, wd, c] = win.input;
        let ([oh, ow], [ph, pw]) = win.geometry();
        let r = win.size[0];
        let sign = |s: Option<&[u32]>, i: usize| s.map_or(1.0, |s| if s[i] == 0 { 1.0 } else { -1.0 });
        let mut out = vec![0f64; n * oh * ow * k];
        for b in 0..n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for o in 0..k {
                        let mut acc = 0f64;
                        for dy in 0..r {
                            for dx in 0..r {
                                let (y, xx) = ((oy + dy) as isize - ph as isize, (ox + dx) as isize - pw as isize);
                                if y < 0 || xx < 0 || y >= h as isize || xx >= wd as isize {
                                    continue;
                                }
                                for ch in 0..c {
                                    let v = f64::from(x[((b * h + y as usize) * wd + xx as usize) * c + ch]) * sign(s_in, b * c + ch);
                                    acc += v * f64::from(w[((dy * r + dx) * c + ch) * k + o]);
                                }
                            }
                        }
                        out[((b * oh + oy) * ow + ox) * k + o] = acc * sign(s_out, b * k + o);
                    }
                }
            }
        }
        out
    }

    fn masks(len: usize, seed: u64) -> Vec<u32> {
        values(len, seed).iter().map(|&v| if v < 0.0 { 0x8000_0000 } else { 0 }).collect()
    }

    /// Largest absolute error of `got` against `want`, relative to want's largest magnitude.
    fn max_rel_err(got: &[f32], want: &[f64]) -> f64 {
        let scale = want.iter().fold(0f64, |s, v| s.max(v.abs()));
        got.iter().zip(want).map(|(&g, &w)| (f64::from(g) - w).abs()).fold(0f64, f64::max) / scale
    }

    #[test]
    fn winograd_convolutions_match_the_direct_convolution() {
        // (m, r, h, w, c, k, padding, n): odd sizes leave partial tiles; batch > 1.
        let cases = [
            (2, 3, 7, 5, 3, 4, Padding::Same, 2),
            (4, 3, 9, 11, 5, 6, Padding::Same, 3),
            (4, 3, 8, 8, 16, 8, Padding::Valid, 2),
            (2, 5, 7, 9, 4, 3, Padding::Same, 2),
            (2, 5, 14, 14, 32, 16, Padding::Same, 2),
            (2, 3, 6, 7, 2, 2, Padding::Valid, 1),
            // 64 out-channels: the AVX-512 products where the CPU has them; per-example
            // weights (49 tiles) and stacked products (9 tiles).
            (2, 5, 14, 14, 32, 64, Padding::Same, 2),
            (4, 3, 12, 12, 16, 64, Padding::Valid, 3),
            // Channels with vector tails on AVX-512 (16 + 5, 16 + 3) and AVX2 (2 x 8 + 5,
            // 2 x 8 + 3); per-example paths with partial tiles and odd outputs (the fused
            // pool's last row and column).
            (2, 3, 9, 9, 21, 19, Padding::Same, 2),
            (2, 5, 13, 13, 20, 24, Padding::Same, 2),
            (4, 3, 23, 23, 17, 9, Padding::Same, 1),
            // F(4, 5): BNN-Conv's second conv (16 tiles: per-example weights, partial tiles
            // at 14), stacked products (9 tiles), tails with odd outputs.
            (4, 5, 14, 14, 32, 64, Padding::Same, 2),
            (4, 5, 10, 11, 5, 6, Padding::Same, 2),
            (4, 5, 13, 13, 20, 24, Padding::Same, 2),
            (4, 5, 12, 12, 16, 8, Padding::Valid, 1),
        ];
        for (m, r, h, w, c, k, padding, n) in cases {
            let win = Window { input: [h, w, c], size: [r, r], strides: [1, 1], padding };
            let [oh, ow] = win.output();
            let x = values(n * h * w * c, 1 + h as u64);
            let mu = values(r * r * c * k, 2 + c as u64);
            let noise = values(r * r * c * k, 3 + k as u64);
            let bias = values(k, 4);
            let (s_in, s_out) = (masks(n * c, 5), masks(n * k, 6));
            let conv = WinogradConv::new(Transform::new(m, r), win, k, &mu);
            let mean = direct(&x, n, &win, &mu, k, None, None);
            let pert = direct(&x, n, &win, &noise, k, Some(&s_in), Some(&s_out));
            let mut ws = Buffers::default();
            // Float error (largest absolute error over the largest output): measured 2e-7 for
            // F(2, 3), 0.6-1.5e-6 for the 6x6 tiles, 3.9-4.7e-6 for the 8x8 ones of F(4, 5)
            // (f32 im2col: ~1e-7).
            let bound = match m + r - 1 {
                4 => 5e-7,
                6 => 4e-6,
                _ => 1e-5,
            };
            // Every code path of the transforms: AVX-512, AVX2 and portable lanes (with
            // channel tails: c and k of 3-6 are below one vector), and the generic passes.
            for (path, relu) in Path::available().into_iter().flat_map(|p| [(p, false), (p, true)]) {
                let finish = |v: f64, o: usize| {
                    let y = v + f64::from(bias[o % k]);
                    if relu {
                        y.max(0.0)
                    } else {
                        y
                    }
                };
                // The mean kernel (pre-transformed), given weights, and Flipout.
                let want_mean: Vec<f64> = mean.iter().enumerate().map(|(o, &v)| finish(v, o)).collect();
                let want_noise: Vec<f64> = direct(&x, n, &win, &noise, k, None, None).iter().enumerate().map(|(o, &v)| finish(v, o)).collect();
                let want_flip: Vec<f64> = mean.iter().zip(&pert).enumerate().map(|(o, (&a, &p))| finish(a + p, o)).collect();
                let flip = Flipout { noise: &noise, s_in: &s_in, s_out: &s_out };
                for (weights, f, want) in [(None, None, &want_mean), (Some(&noise[..]), None, &want_noise), (None, Some(flip), &want_flip)] {
                    let mut out = vec![f32::NAN; n * oh * ow * k];
                    conv.forward_on(path, &x, n, weights, f, &bias, relu, None, &mut out, &mut ws);
                    let err = max_rel_err(&out, want);
                    assert!(err < bound, "F({m}, {r}) {h}x{w}x{c}->{k} {padding:?} {path:?}: relative error {err}");
                }
                // The max pool fused into the per-example Flipout path (the stacked products
                // decline it), against the f64 output pooled by the definition.
                for pool_padding in [Padding::Valid, Padding::Same] {
                    let pw = Window { input: [oh, ow, k], size: [2, 2], strides: [2, 2], padding: pool_padding };
                    let ([poh, pow], [pph, ppw]) = pw.geometry();
                    let mut out = vec![f32::NAN; n * oh * ow * k];
                    let pooled = conv.forward_on(path, &x, n, None, Some(flip), &bias, relu, Some(&pw), &mut out, &mut ws);
                    assert_eq!(pooled, conv.tiles[0] * conv.tiles[1] >= PER_EXAMPLE_TILES);
                    assert_eq!(pooled, conv.pools(true, Some(&pw)));
                    if !pooled {
                        continue;
                    }
                    let mut want = Vec::new();
                    for b in 0..n {
                        for (py, px, o) in (0..poh).flat_map(|py| (0..pow).flat_map(move |px| (0..k).map(move |o| (py, px, o)))) {
                            let taps = [(0, 0), (0, 1), (1, 0), (1, 1)].map(|(dy, dx)| ((2 * py + dy).checked_sub(pph), (2 * px + dx).checked_sub(ppw)));
                            let inside = taps.iter().filter_map(|&(y, xx)| Some((y.filter(|&y| y < oh)?, xx.filter(|&v| v < ow)?)));
                            want.push(inside.map(|(y, xx)| want_flip[((b * oh + y) * ow + xx) * k + o]).fold(f64::NEG_INFINITY, f64::max));
                        }
                    }
                    let err = max_rel_err(&out[..want.len()], &want);
                    assert!(err < bound, "pooled F({m}, {r}) {h}x{w}x{c}->{k} {pool_padding:?} {path:?}: relative error {err}");
                }
            }
        }
    }

    #[test]
    fn small_gemm_matches_a_direct_product() {
        // Row counts that leave 1, 2 and 3 rows after the blocks of 4; n a multiple of 64
        // takes the AVX-512 path where the CPU has it, the others the engine's GEMM. Rows of
        // `c` packed, and 5 values apart beyond n (the gaps must stay untouched).
        for ((m, k, n), gap) in [(49, 32, 64), (6, 7, 128), (3, 1, 64), (2, 5, 48), (1, 300, 64), (10, 3, 192)].into_iter().flat_map(|s| [(s, 0), (s, 5)]) {
            let (a, b, ldc) = (values(m * k, 1), values(k * n, 2), n + gap);
            let mut c = vec![f32::NAN; (m - 1) * ldc + n];
            small_gemm(m, k, n, &a, &b, &mut c, ldc);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|p| f64::from(a[i * k + p]) * f64::from(b[p * n + j])).sum();
                    assert!((f64::from(c[i * ldc + j]) - want).abs() < 1e-5, "{m}x{k}x{n} [{i}, {j}]: {} vs {want}", c[i * ldc + j]);
                }
            }
            assert!(c.chunks(ldc).all(|row| row[n..].iter().all(|v| v.is_nan())), "{m}x{k}x{n}: wrote between the rows");
        }
    }

    #[test]
    fn signed_gemm_forms_each_examples_weights_and_matches_the_unfused_product() {
        // Rows leaving 4, 2 and 1 after the blocks of 8; channel counts on the constant
        // paths (16, 32, 64, 128) and off them; n with a one-vector tail (48), and not a
        // multiple of 16 (40: formed into a block, then `small_gemm`).
        // Rows of `c` packed, and (as the per-example path writes them) far apart.
        for ((m, k, n), gap) in [(16, 32, 64), (15, 16, 48), (9, 64, 32), (3, 128, 16), (1, 7, 64), (23, 5, 40)].into_iter().flat_map(|s| [(s, 0), (s, 7)]) {
            let (a, mu, noise, ldc) = (values(m * k, 3), values(k * n, 4), values(k * n, 5), n + gap);
            let (s_in, s_out) = (masks(k, 6), masks(n, 7));
            let mut c = vec![f32::NAN; (m - 1) * ldc + n];
            signed_gemm(m, k, n, &a, &mu, &noise, &s_in, &s_out, &mut c, ldc, &mut Vec::new());
            let sign = |s: u32| if s == 0 { 1.0 } else { -1.0 };
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|p| f64::from(a[i * k + p]) * (f64::from(mu[p * n + j]) + sign(s_in[p]) * sign(s_out[j]) * f64::from(noise[p * n + j]))).sum();
                    assert!((f64::from(c[i * ldc + j]) - want).abs() < 1e-5, "{m}x{k}x{n} [{i}, {j}]: {} vs {want}", c[i * ldc + j]);
                }
            }
            assert!(c.chunks(ldc).all(|row| row[n..].iter().all(|v| v.is_nan())), "{m}x{k}x{n}: wrote between the rows");
            // Bit for bit the weights formed into a block and `small_gemm` on them.
            let mut w = Vec::new();
            form_signed(k, n, &mu, &noise, |i| s_in[i], &s_out, &mut w);
            let mut unfused = vec![f32::NAN; (m - 1) * ldc + n];
            small_gemm(m, k, n, &a, &w, &mut unfused, ldc);
            assert!(c.iter().zip(&unfused).all(|(x, y)| x.to_bits() == y.to_bits()), "{m}x{k}x{n}: fused and unfused differ");
        }
    }

    #[test]
    fn plan_picks_the_tile_and_declines_unfit_layers() {
        let win = |h: usize, c: usize, r: usize| Window { input: [h, h, c], size: [r, r], strides: [1, 1], padding: Padding::Same };
        let plan = |w: Window, k: usize| WinogradConv::plan(&w, k, &vec![0.0; w.size[0] * w.size[1] * w.input[2] * k]);
        // BNN-Conv's second conv: F(4, 5) (16 tiles of 64 products against 49 of 36);
        // VGG-16's 32x32 and 16x16 blocks: F(4, 3).
        assert_eq!(plan(win(14, 32, 5), 64).map(|p| (p.t.m, p.t.r)), Some((4, 5)));
        assert_eq!(plan(win(32, 64, 3), 64).map(|p| (p.t.m, p.t.r)), Some((4, 3)));
        // 8x8: F(4, 3) (4 tiles of 36 products against 64 x 9).
        assert_eq!(plan(win(8, 256, 3), 256).map(|p| (p.t.m, p.t.r)), Some((4, 3)));
        // One input channel, a 4x4 image, a 1x1 or strided kernel: not worth it or unfit.
        assert!(plan(win(28, 1, 5), 32).is_none());
        assert!(plan(win(4, 512, 3), 512).is_none());
        assert!(plan(Window { size: [1, 1], ..win(16, 64, 1) }, 64).is_none());
        assert!(plan(Window { strides: [2, 2], ..win(16, 64, 3) }, 64).is_none());
    }
}
