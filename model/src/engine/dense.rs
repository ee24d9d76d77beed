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
}
