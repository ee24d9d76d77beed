//! CSR (compressed sparse row) kernels for pruned layers: `out += x @ W` touching only the
//! kept weights. W is `[k, n]`; row `i` of W holds the weights from input `i`.

use super::dense::axpy;

/// Sparsity pattern of a `[k, n]` kernel: which weights are kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Csr {
    /// Number of rows (inputs).
    pub rows: usize,
    /// Number of columns (outputs).
    pub cols: usize,
    /// `indptr[i]..indptr[i + 1]` are the entries of row `i`.
    pub indptr: Vec<usize>,
    /// Column of each entry.
    pub indices: Vec<u32>,
}

impl Csr {
    /// Pattern of the entries where `keep(i)` holds (i = flat C-order index).
    pub fn from_mask(rows: usize, cols: usize, keep: impl Fn(usize) -> bool) -> Csr {
        let mut indptr = Vec::with_capacity(rows + 1);
        let mut indices = Vec::new();
        indptr.push(0);
        for r in 0..rows {
            for c in 0..cols {
                if keep(r * cols + c) {
                    indices.push(c as u32);
                }
            }
            indptr.push(indices.len());
        }
        Csr { rows, cols, indptr, indices }
    }

    /// Number of kept weights.
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    /// The kept entries of a dense `[rows, cols]` tensor, in pattern order.
    pub fn gather(&self, dense: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.nnz());
        for r in 0..self.rows {
            for &c in &self.indices[self.indptr[r]..self.indptr[r + 1]] {
                out.push(dense[r * self.cols + c as usize]);
            }
        }
        out
    }

    /// `out[m, cols] += x[m, rows] @ W` with W's kept values `vals` (pattern order).
    ///
    /// Works on blocks of examples transposed to feature-major order, so that each kept
    /// weight is one vectorized axpy over the block: cost ~ nnz * m, at dense-kernel speed
    /// per multiply (a row-wise CSR scatter would not vectorize).
    #[inline(always)]
    pub fn matmul_acc<const FMA: bool>(&self, x: &[f32], vals: &[f32], out: &mut [f32]) {
        // 64 examples: the transposed block and its output stay in L1 for layers up to ~64 wide.
        const BLOCK: usize = 64;
        let m = x.len() / self.rows.max(1);
        let mut xt = vec![0f32; self.rows * BLOCK];
        let mut ot = vec![0f32; self.cols * BLOCK];
        for start in (0..m).step_by(BLOCK) {
            let b = BLOCK.min(m - start);
            let xb = &x[start * self.rows..(start + b) * self.rows];
            for k in 0..self.rows {
                for (t, row) in xt[k * b..(k + 1) * b].iter_mut().zip(xb.chunks_exact(self.rows)) {
                    *t = row[k];
                }
            }
            ot[..self.cols * b].iter_mut().for_each(|v| *v = 0.0);
            for k in 0..self.rows {
                let xk = &xt[k * b..(k + 1) * b];
                let (s, e) = (self.indptr[k], self.indptr[k + 1]);
                for (&c, &w) in self.indices[s..e].iter().zip(&vals[s..e]) {
                    axpy::<FMA>(&mut ot[c as usize * b..][..b], w, xk);
                }
            }
            let outb = &mut out[start * self.cols..(start + b) * self.cols];
            for c in 0..self.cols {
                for (row, &v) in outb.chunks_exact_mut(self.cols).zip(&ot[c * b..(c + 1) * b]) {
                    row[c] += v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_product_matches_hand_computation() {
        // W = [[1, 0, 2], [0, 0, 3]], x = [[1, 2], [0, -1]]
        let w = [1.0, 0.0, 2.0, 0.0, 0.0, 3.0];
        let csr = Csr::from_mask(2, 3, |i| w[i] != 0.0);
        assert_eq!(csr.nnz(), 3);
        let vals = csr.gather(&w);
        let mut out = vec![0.0; 6];
        csr.matmul_acc::<false>(&[1.0, 2.0, 0.0, -1.0], &vals, &mut out);
        assert_eq!(out, vec![1.0, 0.0, 8.0, 0.0, 0.0, -3.0]);
    }
}
