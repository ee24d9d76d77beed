//! The weights of one layer, dense or sparse, and their product with row-major activations
//! or patch rows: `out[m, n] = p[m, k] @ W[k, n]`.

use super::gemm::sgemm;
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
        let weights = if sparse {
            let (mu, sigma) = (transposed(&mu, k, n), sigma.map(|s| transposed(&s, k, n)));
            let csr = Csr::from_mask(n, k, |i| mu[i] != 0.0 || sigma.as_ref().is_some_and(|s| s[i] != 0.0));
            let (mu, sigma) = (csr.gather(&mu), sigma.map(|s| csr.gather(&s)));
            Weights::Sparse { csr, mu, sigma }
        } else {
            Weights::Dense { mu, sigma }
        };
        Kernel { k, n, weights }
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

/// One Flipout product of a dense layer with dense weights, for [`flipout_dense`]: for every
/// row r of `x` (`[m, k]`, row-major),
/// `out[r] = x[r] @ mu + (xf[r] @ noise) * s_out[r] + bias` with `xf = x * s_in`, through a
/// ReLU when `relu`.
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
    /// `sigma * eps`, `[k, n]`.
    pub noise: &'a [f32],
    /// `x` times Flipout's input signs, `[m, k]` ([`super::sampler::Sampler::flip_signs_into`]).
    pub xf: &'a [f32],
    /// Output signs, `[m, n]` values in bits: bit j of word i is value 64 i + j's (set: -1),
    /// as [`super::sampler::Sampler::sign_bits_into`] draws them.
    pub s_out: &'a [u64],
    /// Bias, `[n]`.
    pub bias: &'a [f32],
    /// Whether a ReLU follows.
    pub relu: bool,
}

/// Largest input width k for which Flipout uses [`flipout_dense`]: measured by
/// `model/examples/flipout_bench.rs` (one thread), the fused kernel is 1.2-1.5x faster than the
/// unfused GEMMs up to k = 128 and 4-18% slower from k = 256, where its weight panels
/// (k x 64 values) no longer fit in L1.
pub const FUSED_MAX_K: usize = 128;

/// Computes `f` into `out` (`[m, n]`) in one pass over `x`: both products in one register
/// tile (`x` and `xf` broadcast from memory: load ports, not the shuffle port that the FMAs
/// share), the output signs, bias and ReLU applied as the tile is stored. On small dense layers
/// (BNN-FC: 360 x 64 x 64 per sample) the GEMM library spent as long packing `x` twice and
/// in the separate flip, combine and bias passes as in the products themselves. `panel` is
/// scratch for the weights' column panels, the only data copied (k x n per call).
///
/// # Panics
/// When a slice is shorter than the shapes say (a caller's bug: the shapes come from the
/// shape-checked architecture).
pub fn flipout_dense(f: &FlipoutDense, out: &mut [f32], panel: &mut Vec<f32>) {
    let (m, k, n) = (f.m, f.k, f.n);
    assert!(
        f.x.len() >= m * k && f.noise.len() >= k * n && f.xf.len() >= m * k && f.s_out.len() * 64 >= m * n && f.bias.len() >= n && out.len() >= m * n,
        "flipout_dense: slices shorter than {m}x{k}x{n}"
    );
    assert!(f.mean.map_or(f.mu.len() >= k * n, |v| v.len() >= m * n), "flipout_dense: means shorter than {m}x{k}x{n}");
    let xf = f.xf;
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above); the lengths were checked.
            return drive(f, avx512::L, avx512::NV, avx512::MR, panel, |pn, r, rows, c0, cw| unsafe { avx512::tile_any(f, xf, pn, r, rows, c0, cw, out) });
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above); lengths as above.
            return drive(f, avx2::L, avx2::NV, avx2::MR, panel, |pn, r, rows, c0, cw| unsafe { avx2::tile_any(f, xf, pn, r, rows, c0, cw, out) });
        }
    }
    portable(f, xf, out, panel)
}

/// [`flipout_dense`] in plain Rust, 4 rows x 8 columns per tile (the fallback without AVX2,
/// and the reference of the vector kernels' test).
fn portable(f: &FlipoutDense, xf: &[f32], out: &mut [f32], panel: &mut Vec<f32>) {
    const NR: usize = 8;
    drive(f, NR, 1, 4, panel, |pn, r, rows, c0, cw| {
        for r in r..r + rows {
            let (mut ap, mut am) = ([0f32; NR], [0f32; NR]);
            let w = if f.mean.is_some() { NR } else { 2 * NR };
            for (p, b) in pn.chunks_exact(w).enumerate() {
                let (a, sa) = (f.x[r * f.k + p], xf[r * f.k + p]);
                ap.iter_mut().zip(b).for_each(|(acc, &v)| *acc += sa * v);
                am.iter_mut().zip(&b[NR.min(b.len())..]).for_each(|(acc, &v)| *acc += a * v);
            }
            store_row(f, r, c0, &ap[..cw], f.mean.is_none().then_some(&am[..cw]), out);
        }
    })
}

/// The loop of [`flipout_dense`] over column panels of `nv` vectors of `lanes` columns (one
/// vector for a last panel that fits in one: the 10 logits of a classifier) and row tiles of
/// `mr` rows: packs each panel (the noise's columns, then mu's when the mean is computed here,
/// zero-padded to the panel width) into `panel`, then calls
/// `tile(panel, first row, rows, first column, columns)` for every `mr` rows, and for single
/// rows at the end; the panel's width is `panel.len() / k` (or twice it with mu).
fn drive(f: &FlipoutDense, lanes: usize, nv: usize, mr: usize, panel: &mut Vec<f32>, mut tile: impl FnMut(&[f32], usize, usize, usize, usize)) {
    let (m, k, n) = (f.m, f.k, f.n);
    if m == 0 || n == 0 {
        return;
    }
    let mut c0 = 0;
    while c0 < n {
        let nr = if n - c0 <= lanes { lanes } else { lanes * nv };
        let cw = nr.min(n - c0);
        let w = if f.mean.is_some() { nr } else { 2 * nr };
        panel.clear();
        panel.resize(k * w, 0.0);
        for (p, row) in panel.chunks_exact_mut(w).enumerate() {
            row[..cw].copy_from_slice(&f.noise[p * n + c0..][..cw]);
            if f.mean.is_none() {
                row[nr..nr + cw].copy_from_slice(&f.mu[p * n + c0..][..cw]);
            }
        }
        let full = m - m % mr;
        for r in (0..full).step_by(mr) {
            tile(panel, r, mr, c0, cw);
        }
        for r in full..m {
            tile(panel, r, 1, c0, cw);
        }
        c0 += nr;
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
    // The sign bits of values o0..o0 + cw (cw <= 64), from one or two words.
    let (w, b) = (o0 / 64, o0 % 64);
    let mut bits = f.s_out[w] >> b;
    if b + cw > 64 {
        bits |= f.s_out[w + 1] << (64 - b);
    }
    let signs = (0..cw as u32).map(|j| ((bits >> j) as u32 & 1) << 31);
    let vals = out[o0..][..cw].iter_mut().zip(mean).zip(pert).zip(signs).zip(&f.bias[c0..][..cw]);
    if f.relu {
        vals.for_each(|((((o, &m), &p), s), &b)| *o = (m + f32::from_bits(p.to_bits() ^ s) + b).max(0.0));
    } else {
        vals.for_each(|((((o, &m), &p), s), &b)| *o = m + f32::from_bits(p.to_bits() ^ s) + b);
    }
}

/// A register tile of [`flipout_dense`] on one x86-64 vector width: `MR` rows by `NV`
/// vectors of `L` lanes, accumulators of the perturbation product (and of the mean product
/// when `MEAN`) in registers over the whole k.
macro_rules! simd_tile {
    ($name:ident, $feat:literal, $v:ty, $lanes:literal, $nv:literal, $mr:literal, $zero:ident, $set1:ident, $load:ident, $fma:ident, $store:ident) => {
        #[cfg(target_arch = "x86_64")]
        mod $name {
            use super::{store_row, FlipoutDense};
            use std::arch::x86_64::*;
            /// Lanes per vector.
            pub(super) const L: usize = $lanes;
            /// Vectors per row of a full panel.
            pub(super) const NV: usize = $nv;
            /// Rows per tile.
            pub(super) const MR: usize = $mr;

            /// The tile of `rows` rows (`MR` or 1) on a panel of `drive`: full width, or one
            /// vector wide.
            ///
            /// # Safety
            /// As [`tile`]'s.
            #[allow(clippy::too_many_arguments)]
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn tile_any(f: &FlipoutDense, xf: &[f32], panel: &[f32], r: usize, rows: usize, c0: usize, cw: usize, out: &mut [f32]) {
                let w = panel.len() / f.k.max(1);
                let mean = f.mean.is_none();
                let narrow = w == if mean { 2 * L } else { L } && NV > 1;
                match (rows == MR, narrow, mean) {
                    (true, false, false) => tile::<MR, NV, false>(f, xf, panel, r, c0, cw, out),
                    (true, false, true) => tile::<MR, NV, true>(f, xf, panel, r, c0, cw, out),
                    (true, true, false) => tile::<MR, 1, false>(f, xf, panel, r, c0, cw, out),
                    (true, true, true) => tile::<MR, 1, true>(f, xf, panel, r, c0, cw, out),
                    (false, false, false) => tile::<1, NV, false>(f, xf, panel, r, c0, cw, out),
                    (false, false, true) => tile::<1, NV, true>(f, xf, panel, r, c0, cw, out),
                    (false, true, false) => tile::<1, 1, false>(f, xf, panel, r, c0, cw, out),
                    (false, true, true) => tile::<1, 1, true>(f, xf, panel, r, c0, cw, out),
                }
            }

            /// Rows `r..r + ROWS`, columns `c0..c0 + cw` from a panel of `V` vectors packed by
            /// `drive`.
            ///
            /// # Safety
            /// The CPU has the target features; `f`'s slices hold their shapes (checked by
            /// `flipout_dense`), `xf` is `[m, k]`, `panel` holds k rows of the panel width,
            /// `r + ROWS <= f.m`.
            #[target_feature(enable = $feat)]
            unsafe fn tile<const ROWS: usize, const V: usize, const MEAN: bool>(f: &FlipoutDense, xf: &[f32], panel: &[f32], r: usize, c0: usize, cw: usize, out: &mut [f32]) {
                let (k, nr) = (f.k, V * L);
                let w = if MEAN { 2 * nr } else { nr };
                debug_assert!(panel.len() >= k * w && (r + ROWS) * k <= f.x.len().min(xf.len()));
                let mut ap = [[$zero(); V]; ROWS];
                let mut am = [[$zero(); V]; ROWS];
                let (x, xf, b) = (f.x.as_ptr().add(r * k), xf.as_ptr().add(r * k), panel.as_ptr());
                for p in 0..k {
                    let bp = b.add(p * w);
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
                        let sa = $set1(*xf.add(i * k + p));
                        let a = $set1(*x.add(i * k + p));
                        for v in 0..V {
                            ap[i][v] = $fma(sa, vp[v], ap[i][v]);
                            if MEAN {
                                am[i][v] = $fma(a, vm[v], am[i][v]);
                            }
                        }
                    }
                }
                let (mut rp, mut rm) = ([0f32; L * NV], [0f32; L * NV]);
                for i in 0..ROWS {
                    for v in 0..V {
                        $store(rp.as_mut_ptr().add(v * L), ap[i][v]);
                        $store(rm.as_mut_ptr().add(v * L), am[i][v]);
                    }
                    store_row(f, r + i, c0, &rp[..cw], MEAN.then_some(&rm[..cw]), out);
                }
            }
        }
    };
}

// 32 columns = 2 zmm per row and product: 6 rows keep 24 accumulators in the 32 registers.
simd_tile!(avx512, "avx512f,avx2,fma", __m512, 16, 2, 6, _mm512_setzero_ps, _mm512_set1_ps, _mm512_loadu_ps, _mm512_fmadd_ps, _mm512_storeu_ps);
// 16 columns = 2 ymm per row and product: 3 rows, 12 accumulators of the 16 registers.
simd_tile!(avx2, "avx2,fma", __m256, 8, 2, 3, _mm256_setzero_ps, _mm256_set1_ps, _mm256_loadu_ps, _mm256_fmadd_ps, _mm256_storeu_ps);

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
    /// [`FlipoutDense`] from its definition, in f64.
    fn naive(f: &FlipoutDense) -> Vec<f64> {
        let sign = |m: u32| if m == 0 { 1.0 } else { -1.0 };
        let mut out = Vec::new();
        for r in 0..f.m {
            for j in 0..f.n {
                let (mut mean, mut pert) = (0f64, 0f64);
                for p in 0..f.k {
                    let x = f64::from(f.x[r * f.k + p]);
                    mean += x * f64::from(f.mu[p * f.n + j]);
                    pert += f64::from(f.xf[r * f.k + p]) * f64::from(f.noise[p * f.n + j]);
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
    fn fused_flipout_dense_equals_the_definition() {
        let mut rng = formats::synthetic::SplitMix64(11);
        let mut vals = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect() };
        let mut words = formats::synthetic::SplitMix64(12);
        // Row and column counts off the tile sizes (tails of 1..5 rows, partial panels), the
        // first layer's given mean and a computed one, with and without ReLU.
        for (m, k, n) in [(13, 5, 10), (7, 64, 37), (1, 3, 1), (20, 17, 64), (6, 1, 33)] {
            let (x, mu, noise, bias) = (vals(m * k), vals(k * n), vals(k * n), vals(n));
            let flipped: Vec<f32> = x.iter().zip(vals(m * k)).map(|(&a, s)| if s < 0.0 { -a } else { a }).collect();
            let s_out: Vec<u64> = (0..(m * n).div_ceil(64)).map(|_| words.next_u64()).collect();
            let given = vals(m * n);
            for (mean, relu) in [(None, false), (None, true), (Some(&given[..]), false), (Some(&given[..]), true)] {
                let f = FlipoutDense { x: &x, xf: &flipped, m, k, n, mu: &mu, mean, noise: &noise, s_out: &s_out, bias: &bias, relu };
                let want = naive(&f);
                for name in ["dispatch", "portable", "avx2"] {
                    let mut out = vec![f32::NAN; m * n];
                    match name {
                        "dispatch" => flipout_dense(&f, &mut out, &mut Vec::new()),
                        "portable" => portable(&f, &flipped, &mut out, &mut Vec::new()),
                        // The AVX2 kernel, which the dispatch skips on an AVX-512 machine.
                        #[cfg(target_arch = "x86_64")]
                        _ if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") => {
                            // SAFETY: the CPU has AVX2 and FMA; the slices hold their shapes.
                            drive(&f, avx2::L, avx2::NV, avx2::MR, &mut Vec::new(), |pn, r, rows, c0, cw| unsafe { avx2::tile_any(&f, &flipped, pn, r, rows, c0, cw, &mut out) })
                        }
                        _ => continue,
                    }
                    for (i, (g, e)) in out.iter().zip(&want).enumerate() {
                        assert!((f64::from(*g) - e).abs() < 1e-5 * (1.0 + e.abs()), "{name} {m}x{k}x{n} mean given {} relu {relu} [{i}]: {g} vs {e}", mean.is_some());
                    }
                }
            }
        }
    }
}
