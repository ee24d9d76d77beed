//! Dense kernels: `out += x @ W` for a row-major `[k, n]` W, and the weights of one layer
//! stored dense or sparse.

use super::sparse::Csr;

/// `out[m, n] += x[m, k] @ w[k, n]`, row by row as axpy updates (vectorizes well).
#[inline(always)]
pub fn matmul_acc<const FMA: bool>(x: &[f32], k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    for (xr, or) in x.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
        for (&a, wr) in xr.iter().zip(w.chunks_exact(n)) {
            // ReLU outputs are often exactly zero: skip their rows.
            if a == 0.0 {
                continue;
            }
            axpy::<FMA>(or, a, wr);
        }
    }
}

/// Examples per block of the feature-major products: one output's block accumulates in
/// 8 AVX registers (or 16 SSE registers) while the inputs stream from L1.
pub const FM_BLOCK: usize = 32;

/// `y += a * x`; with `FMA` as fused multiply-adds (only call that variant from code compiled
/// with the `fma` target feature: elsewhere `mul_add` is a slow library call).
#[inline(always)]
pub fn axpy<const FMA: bool>(y: &mut [f32], a: f32, x: &[f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = if FMA { a.mul_add(v, *o) } else { *o + a * v };
    }
}

/// A `[k, n]` kernel's posterior, as a dense matrix or on a CSR pattern.
#[derive(Debug, Clone)]
pub enum Weights {
    /// Full matrices (C order).
    Dense {
        /// Means.
        mu: Vec<f32>,
        /// Scales, when Bayesian.
        sigma: Option<Vec<f32>>,
    },
    /// Kept weights only.
    Sparse {
        /// The pattern.
        csr: Csr,
        /// Means of the kept weights.
        mu: Vec<f32>,
        /// Scales of the kept weights, when Bayesian.
        sigma: Option<Vec<f32>>,
    },
}

/// How a kernel's values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// W `[k, n]` (TF order; CSR rows = inputs): for row-major products ([`Kernel::matmul_acc`]).
    ByInput,
    /// W^T `[n, k]` (CSR rows = outputs): for feature-major products ([`Kernel::matmul_fm`]),
    /// which accumulate each output in registers.
    ByOutput,
}

/// A linear map `x @ W` with W `[k, n]`.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// Inputs.
    pub k: usize,
    /// Outputs.
    pub n: usize,
    /// Storage order.
    pub layout: Layout,
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
    /// Builds the kernel; CSR when `sparse` is set (weights with mu == 0 and sigma == 0 are
    /// dropped, which is what pruning leaves).
    pub fn new(k: usize, n: usize, mu: Vec<f32>, sigma: Option<Vec<f32>>, sparse: bool, layout: Layout) -> Kernel {
        let (mu, sigma, rows, cols) = match layout {
            Layout::ByInput => (mu, sigma, k, n),
            Layout::ByOutput => (transposed(&mu, k, n), sigma.map(|s| transposed(&s, k, n)), n, k),
        };
        let weights = if sparse {
            let csr = Csr::from_mask(rows, cols, |i| mu[i] != 0.0 || sigma.as_ref().is_some_and(|s| s[i] != 0.0));
            let (mu, sigma) = (csr.gather(&mu), sigma.map(|s| csr.gather(&s)));
            Weights::Sparse { csr, mu, sigma }
        } else {
            Weights::Dense { mu, sigma }
        };
        Kernel { k, n, layout, weights }
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

    /// Feature-major product, assigned: `ot[c, :] = bias[c] + sum_k W[k, c] * xt[k, :]`
    /// (`bias` None: 0) for `xt` `[k, m]`, W's stored values `vals` (ByOutput layout). Each
    /// output accumulates a block of examples in registers; zero weights are skipped.
    pub fn matmul_fm(&self, xt: &[f32], m: usize, vals: &[f32], bias: Option<&[f32]>, ot: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { self.matmul_fm_avx2(xt, m, vals, bias, ot) };
        }
        self.matmul_fm_impl::<false>(xt, m, vals, bias, ot)
    }

    /// [`Kernel::matmul_fm`] compiled for AVX2 + FMA: the default x86-64 target has only
    /// SSE2, and the plain loops below vectorize 8 wide once inlined here.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn matmul_fm_avx2(&self, xt: &[f32], m: usize, vals: &[f32], bias: Option<&[f32]>, ot: &mut [f32]) {
        self.matmul_fm_impl::<true>(xt, m, vals, bias, ot)
    }

    #[inline(always)]
    fn matmul_fm_impl<const FMA: bool>(&self, xt: &[f32], m: usize, vals: &[f32], bias: Option<&[f32]>, ot: &mut [f32]) {
        debug_assert_eq!(self.layout, Layout::ByOutput);
        let b0 = |c: usize| bias.map_or(0.0, |b| b[c]);
        let mut r0 = 0;
        while r0 + FM_BLOCK <= m {
            self.fm_rows(|c, acc: &mut [f32; FM_BLOCK]| {
                *acc = [b0(c); FM_BLOCK];
                self.for_inputs(c, vals, |kk, w| {
                    let x = &xt[kk * m + r0..kk * m + r0 + FM_BLOCK];
                    for (a, &v) in acc.iter_mut().zip(x) {
                        *a = if FMA { w.mul_add(v, *a) } else { *a + w * v };
                    }
                });
                ot[c * m + r0..][..FM_BLOCK].copy_from_slice(acc);
            });
            r0 += FM_BLOCK;
        }
        // The last partial block: plain axpys.
        if r0 < m {
            let b = m - r0;
            for c in 0..self.n {
                ot[c * m + r0..][..b].fill(b0(c));
                self.for_inputs(c, vals, |kk, w| axpy::<FMA>(&mut ot[c * m + r0..][..b], w, &xt[kk * m + r0..][..b]));
            }
        }
    }

    /// Calls `f(c, acc)` for every output `c` with an accumulator block.
    #[inline(always)]
    fn fm_rows(&self, mut f: impl FnMut(usize, &mut [f32; FM_BLOCK])) {
        for c in 0..self.n {
            let mut acc = [0f32; FM_BLOCK];
            f(c, &mut acc);
        }
    }

    /// Calls `f(input, weight)` for the non-zero weights of output `c` (ByOutput layout).
    #[inline(always)]
    fn for_inputs(&self, c: usize, vals: &[f32], mut f: impl FnMut(usize, f32)) {
        match &self.weights {
            Weights::Dense { .. } => {
                for (kk, &w) in vals[c * self.k..(c + 1) * self.k].iter().enumerate() {
                    if w != 0.0 {
                        f(kk, w);
                    }
                }
            }
            Weights::Sparse { csr, .. } => {
                let (s, e) = (csr.indptr[c], csr.indptr[c + 1]);
                for (&kk, &w) in csr.indices[s..e].iter().zip(&vals[s..e]) {
                    f(kk as usize, w);
                }
            }
        }
    }

    /// `out += x @ W` (row-major) where W's stored values are `vals` (means, or a sample).
    pub fn matmul_acc(&self, x: &[f32], vals: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { self.matmul_acc_avx2(x, vals, out) };
        }
        self.matmul_acc_impl::<false>(x, vals, out)
    }

    /// [`Kernel::matmul_acc`] compiled for AVX2 + FMA (see [`Kernel::matmul_fm_avx2`]).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn matmul_acc_avx2(&self, x: &[f32], vals: &[f32], out: &mut [f32]) {
        self.matmul_acc_impl::<true>(x, vals, out)
    }

    #[inline(always)]
    fn matmul_acc_impl<const FMA: bool>(&self, x: &[f32], vals: &[f32], out: &mut [f32]) {
        match &self.weights {
            Weights::Dense { .. } => matmul_acc::<FMA>(x, self.k, vals, self.n, out),
            Weights::Sparse { csr, .. } => csr.matmul_acc::<FMA>(x, vals, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_and_sparse_kernels_agree_with_hand_values() {
        // x = [[1, 2]], W = [[1, 0], [3, 0.5]] -> [7, 1]
        let mu = vec![1.0, 0.0, 3.0, 0.5];
        for sparse in [false, true] {
            let k = Kernel::new(2, 2, mu.clone(), Some(vec![0.1, 0.0, 0.1, 0.1]), sparse, Layout::ByInput);
            let mut out = vec![0.0; 2];
            k.matmul_acc(&[1.0, 2.0], k.values().0, &mut out);
            assert_eq!(out, vec![7.0, 1.0]);
        }
        assert_eq!(Kernel::new(2, 2, mu.clone(), Some(vec![0.0; 4]), true, Layout::ByInput).values().0.len(), 3);
        // Feature-major: xt = [[1], [2]] (2 inputs x 1 example) gives the same [7, 1].
        for sparse in [false, true] {
            let k = Kernel::new(2, 2, mu.clone(), None, sparse, Layout::ByOutput);
            let mut ot = vec![0.0; 2];
            k.matmul_fm(&[1.0, 2.0], 1, k.values().0, Some(&[0.5, -1.0]), &mut ot);
            assert_eq!(ot, vec![7.5, 0.0]);
        }
    }
}
