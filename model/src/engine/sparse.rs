//! CSR (compressed sparse row) kernels for pruned layers: `out = p @ W` touching only the
//! kept weights, for row-major `p` (`[m, k]`: activations, or im2col patch rows of a
//! convolution). The pattern is stored by output: row `c` of the CSR holds the inputs that
//! feed output `c`, so each output accumulates a block of examples in registers.

/// Sparsity pattern of a kernel stored by output (`rows` = outputs, `cols` = inputs).
#[derive(Debug, Clone, PartialEq)]
pub struct Csr {
    /// Number of rows (outputs).
    pub rows: usize,
    /// Number of columns (inputs).
    pub cols: usize,
    /// `indptr[i]..indptr[i + 1]` are the entries of row `i`.
    pub indptr: Vec<usize>,
    /// Column of each entry.
    pub indices: Vec<u32>,
}

/// Patch rows per block: the transposed block (`[k, BLOCK]`) streams from L1/L2 while one
/// output's 64 partial sums stay in eight AVX registers (eight independent FMA chains).
const BLOCK: usize = 64;

impl Csr {
    /// Pattern of the entries where `keep(i)` holds (i = flat C-order index of `[rows, cols]`).
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

    /// `out[m, rows] (+)= p[m, cols] @ W^T` where W (`[rows, cols]`) has the kept values
    /// `vals` (pattern order); `accumulate` adds to `out` instead of overwriting it.
    /// `tbuf` is scratch for the transposed block.
    pub fn matmul(&self, p: &[f32], m: usize, vals: &[f32], out: &mut [f32], accumulate: bool, tbuf: &mut Vec<f32>) {
        assert!(p.len() >= m * self.cols && out.len() >= m * self.rows && vals.len() >= self.nnz(), "csr: slices too short");
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { self.matmul_avx2(p, m, vals, out, accumulate, tbuf) };
        }
        self.matmul_impl::<false>(p, m, vals, out, accumulate, tbuf)
    }

    /// [`Csr::matmul`] with AVX2 + FMA intrinsics: a block's 64 partial sums in eight `ymm`
    /// registers, one broadcast weight and eight fused multiply-adds per kept weight (LLVM
    /// does not vectorize the portable loop: it unrolls it into scalar FMAs).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn matmul_avx2(&self, p: &[f32], m: usize, vals: &[f32], out: &mut [f32], accumulate: bool, tbuf: &mut Vec<f32>) {
        use std::arch::x86_64::*;
        self.blocks(p, m, out, accumulate, tbuf, |tbuf, c, acc| {
            let mut r = [_mm256_setzero_ps(); BLOCK / 8];
            let (s, e) = (self.indptr[c], self.indptr[c + 1]);
            for (&i, &w) in self.indices[s..e].iter().zip(&vals[s..e]) {
                let x = &tbuf[i as usize * BLOCK..][..BLOCK];
                let wv = _mm256_set1_ps(w);
                for (l, rl) in r.iter_mut().enumerate() {
                    // SAFETY: `x` holds BLOCK values (sliced above), so lane group l is in bounds.
                    *rl = _mm256_fmadd_ps(wv, unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * l)) }, *rl);
                }
            }
            for (l, rl) in r.iter().enumerate() {
                // SAFETY: `acc` holds BLOCK values.
                unsafe { _mm256_storeu_ps(acc.as_mut_ptr().add(8 * l), *rl) };
            }
        })
    }

    /// Portable [`Csr::matmul`].
    fn matmul_impl<const FMA: bool>(&self, p: &[f32], m: usize, vals: &[f32], out: &mut [f32], accumulate: bool, tbuf: &mut Vec<f32>) {
        self.blocks(p, m, out, accumulate, tbuf, |tbuf, c, acc| {
            acc.fill(0.0);
            let (s, e) = (self.indptr[c], self.indptr[c + 1]);
            for (&i, &w) in self.indices[s..e].iter().zip(&vals[s..e]) {
                let x = &tbuf[i as usize * BLOCK..][..BLOCK];
                for (a, &v) in acc.iter_mut().zip(x) {
                    *a = if FMA { w.mul_add(v, *a) } else { *a + w * v };
                }
            }
        })
    }

    /// Blocks of BLOCK patch rows, transposed to `[k, BLOCK]` in `tbuf`; `column(tbuf, c, acc)`
    /// fills `acc` with output `c` of the block's rows, which is then stored (or added) to `out`.
    #[inline(always)]
    fn blocks(&self, p: &[f32], m: usize, out: &mut [f32], accumulate: bool, tbuf: &mut Vec<f32>, mut column: impl FnMut(&[f32], usize, &mut [f32; BLOCK])) {
        let (k, n) = (self.cols, self.rows);
        // Tiles of TILE columns keep both sides of each transpose inside L1 (a plain strided
        // scatter missed L1 on every store and dominated the kernel).
        const TILE: usize = 16;
        tbuf.clear();
        tbuf.resize((k + n) * BLOCK, 0.0);
        let (xt, ot) = tbuf.split_at_mut(k * BLOCK);
        for r0 in (0..m).step_by(BLOCK) {
            let b = BLOCK.min(m - r0);
            // Transpose the block to [k, BLOCK] (a partial block is zero-padded).
            if b < BLOCK {
                xt.fill(0.0);
            }
            let pb = &p[r0 * k..(r0 + b) * k];
            for i0 in (0..k).step_by(TILE) {
                let i1 = (i0 + TILE).min(k);
                for r in 0..b {
                    for (i, &v) in (i0..i1).zip(&pb[r * k + i0..r * k + i1]) {
                        xt[i * BLOCK + r] = v;
                    }
                }
            }
            let mut acc = [0f32; BLOCK];
            for c in 0..n {
                column(xt, c, &mut acc);
                ot[c * BLOCK..(c + 1) * BLOCK].copy_from_slice(&acc);
            }
            let ob = &mut out[r0 * n..(r0 + b) * n];
            for c0 in (0..n).step_by(TILE) {
                let c1 = (c0 + TILE).min(n);
                for (r, orow) in ob.chunks_exact_mut(n).enumerate() {
                    for (c, o) in (c0..c1).zip(&mut orow[c0..c1]) {
                        let a = ot[c * BLOCK + r];
                        *o = if accumulate { *o + a } else { a };
                    }
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
        // W^T (by output) = [[1, 0], [0, 0], [2, 3]], i.e. W = [[1, 0, 2], [0, 0, 3]];
        // p = [[1, 2], [0, -1]] -> p @ W = [[1, 0, 8], [0, 0, -3]].
        let wt = [1.0, 0.0, 0.0, 0.0, 2.0, 3.0];
        let csr = Csr::from_mask(3, 2, |i| wt[i] != 0.0);
        assert_eq!(csr.nnz(), 3);
        let vals = csr.gather(&wt);
        let mut out = vec![5.0; 6];
        let mut t = Vec::new();
        csr.matmul(&[1.0, 2.0, 0.0, -1.0], 2, &vals, &mut out, false, &mut t);
        assert_eq!(out, vec![1.0, 0.0, 8.0, 0.0, 0.0, -3.0]);
        csr.matmul(&[1.0, 2.0, 0.0, -1.0], 2, &vals, &mut out, true, &mut t);
        assert_eq!(out, vec![2.0, 0.0, 16.0, 0.0, 0.0, -6.0]);
    }

    #[test]
    fn sparse_product_matches_dense_on_many_rows() {
        // 150 rows (two full blocks and a partial one), against a plain triple loop.
        let (m, k, n) = (150, 7, 5);
        let p: Vec<f32> = (0..m * k).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
        let w: Vec<f32> = (0..k * n).map(|i| if i % 3 == 0 { 0.0 } else { (i % 7) as f32 * 0.5 - 1.0 }).collect();
        let wt: Vec<f32> = (0..n * k).map(|j| w[(j % k) * n + j / k]).collect();
        let csr = Csr::from_mask(n, k, |i| wt[i] != 0.0);
        let mut out = vec![0.0; m * n];
        csr.matmul(&p, m, &csr.gather(&wt), &mut out, false, &mut Vec::new());
        for r in 0..m {
            for c in 0..n {
                let want: f32 = (0..k).map(|i| p[r * k + i] * w[i * n + c]).sum();
                assert!((out[r * n + c] - want).abs() < 1e-4, "{r} {c}");
            }
        }
    }
}
