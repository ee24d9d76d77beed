//! CSR (compressed sparse row) kernels for pruned layers: `out = p @ W` touching only the
//! kept weights, for row-major `p` (`[m, k]`: activations, or im2col patch rows of a
//! convolution). The pattern is stored by output: row `c` of the CSR holds the inputs that
//! feed output `c`, so each output accumulates a block of examples in registers.
//!
//! [`Csr::spmm_t`] is the Monte Carlo path's kernel (XNNPACK-style sparse inference): the
//! activations are stored transposed, `[k, columns]` (one column per example, or per output
//! position of a convolution), so that `Y^T[j, :] += W[i, j] * X^T[i, :]` over the kept
//! weights of output `j` runs along the columns, up to 128 of them in registers. Both
//! Flipout products (mean and perturbation, which share the sparsity pattern of a zero-mode
//! pruned kernel, mu = sigma = 0) run as one: `x @ mu + ((x * s_in) @ D) * s_out` is
//! `x @ (mu + s_in * D * s_out)`, a single product against weights that depend on the
//! example's signs. A convolution's example has the same signs on all its patch rows, so
//! where it has many (64 or more) its weights are formed once per example
//! (`forward::fold_signs`); a dense layer's change from column to column, and so do those of
//! a convolution run on blocks of examples, so the kernel picks `mu + D` or `mu - D` per lane
//! by the signs in sign panels ([`Pass::Signed`], [`sign_panels_on`]).
//! `forward` runs a whole pruned layer on it.
//!
//! Modules: the CSR pattern, the panel layout and the row-major kernel here; `kernel` (the
//! transposed kernel and its vector operations), `layout` (transposes and sign panels),
//! `patches` (a convolution's patch rows into panels), `direct` (3 x 3 convolutions on small
//! maps straight from the activations, each weight's value picked once per vector of 16
//! examples for all positions), `forward` (a pruned layer).

use super::aligned::{lead, Aligned};
use super::conv::Window;
use super::sampler::{sign_bits_at, NoiseKey, Sampler};

/// Sparsity pattern of a kernel stored by output (`rows` = outputs, `cols` = inputs).
#[derive(Debug, Clone)]
pub struct Csr {
    /// Number of rows (outputs).
    rows: usize,
    /// Number of columns (inputs).
    cols: usize,
    /// `indptr[i]..indptr[i + 1]` are the entries of row `i`.
    indptr: Vec<usize>,
    /// Column of each entry.
    indices: Vec<u32>,
    /// Where each row's entries of each chunk of [`CHUNK`] columns start: row `i`'s entries
    /// in columns `c * CHUNK..(c + 1) * CHUNK` are `split[i * (m + 1) + c]..split[i * (m + 1)
    /// + c + 1]`, m = [`Csr::chunks`] (for [`Csr::spmm_t`]).
    split: Vec<usize>,
    /// Flat index `i * rows + j` (modulo 2^32) in the `[cols, rows]` kernel of each entry
    /// (input i, output j), in pattern order: where its noise lies in the dense draw
    /// ([`kept_noise`]).
    flat: Vec<u32>,
    /// The direct kernel's order of the kept weights ([`direct::Plan`]), made by the first
    /// prediction of a convolution that runs on it.
    direct: std::sync::OnceLock<Box<direct::Plan>>,
}

impl PartialEq for Csr {
    /// The same pattern (a plan is derived from it).
    fn eq(&self, other: &Csr) -> bool {
        (self.rows, self.cols, &self.indptr, &self.indices, &self.split, &self.flat) == (other.rows, other.cols, &other.indptr, &other.indices, &other.split, &other.flat)
    }
}

/// Inputs per chunk of [`Csr::spmm_t`]: the activation rows of one chunk and column block
/// (64 x 128 floats, 32 KiB) stay in L1 while every output's kept weights in them go by.
pub const CHUNK: usize = 64;

/// Patch rows per block: the transposed block (`[k, BLOCK]`) streams from L1/L2 while one
/// output's 64 partial sums stay in eight AVX registers (eight independent FMA chains).
const BLOCK: usize = 64;

impl Csr {
    /// Pattern of the entries where `keep(i)` holds (i = flat C-order index of `[rows, cols]`).
    pub fn from_mask(rows: usize, cols: usize, keep: impl Fn(usize) -> bool) -> Csr {
        assert!(u32::try_from(cols).is_ok(), "CSR pattern: {cols} columns do not fit its u32 indices");
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
        let m = cols.div_ceil(CHUNK).max(1);
        let mut split = Vec::with_capacity(rows * (m + 1));
        for r in 0..rows {
            let row = &indices[indptr[r]..indptr[r + 1]];
            split.extend((0..=m).map(|c| indptr[r] + row.partition_point(|&i| (i as usize) < c * CHUNK)));
        }
        let flat = (0..rows).flat_map(|r| indices[indptr[r]..indptr[r + 1]].iter().map(move |&i| (i as usize * rows + r) as u32)).collect();
        Csr { rows, cols, indptr, indices, split, flat, direct: std::sync::OnceLock::new() }
    }

    /// Chunks of [`CHUNK`] inputs (at least one).
    pub fn chunks(&self) -> usize {
        self.cols.div_ceil(CHUNK).max(1)
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

/// Floats per vector of the transposed kernels: columns are padded to a multiple of this.
pub const LANES: usize = 16;

/// Vectors per column block of [`Csr::spmm_t`]: 64 columns, whose partial sums of both
/// products (eight 16-float vectors) stay in registers while the kept weights stream by.
const VECS: usize = 8;

/// `len` rounded up to a whole number of vectors: the row length of the transposed
/// products of `len` columns.
pub fn padded(len: usize) -> usize {
    len.div_ceil(LANES) * LANES
}

/// Columns per panel of transposed activations: `X^T` (`[k, columns]`) is stored as panels of
/// 64 columns, each `[k, 64]` and contiguous, so that the rows one column block reads are
/// 256 bytes apart in one stretch of memory (rows of a whole `[k, columns]` matrix, a power
/// of two apart, fell into the same cache sets).
pub const PANEL: usize = VECS * LANES;

/// Values of transposed activations with `k` rows and `cols` columns, in panels.
pub fn panels_len(k: usize, cols: usize) -> usize {
    k * cols.div_ceil(PANEL) * PANEL
}

/// Index of `X^T[i, c]` in the panels of a `k`-row matrix.
pub fn at(k: usize, i: usize, c: usize) -> usize {
    (c / PANEL) * k * PANEL + i * PANEL + c % PANEL
}

/// The instruction set a transposed kernel runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F: one 16-float register per vector.
    Avx512,
    /// AVX2 and FMA: two 8-float registers per vector.
    Avx2,
    /// Plain Rust (whatever the compiler makes of 16-float arrays).
    Portable,
}

impl Isa {
    /// The best instruction set this CPU supports.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
        Isa::Portable
    }

    /// The instruction set a kernel asked to run on `self` runs on: `self` where the CPU
    /// supports it, else the best one below it that the CPU has (AVX-512, AVX2, portable).
    pub fn supported(self) -> Isa {
        match (self, Isa::detect()) {
            (Isa::Portable, _) | (_, Isa::Portable) => Isa::Portable,
            (Isa::Avx512, Isa::Avx512) => Isa::Avx512,
            _ => Isa::Avx2,
        }
    }
}

/// The products one pass of [`Csr::spmm_t`] accumulates over the kept weights (values in
/// pattern order).
#[derive(Debug, Clone, Copy)]
pub enum Pass<'a> {
    /// `ya = A x`.
    One(&'a [f32]),
    /// Flipout's two products of a dense layer in one: `ya[j] = sum_i W_s[j, i] x_i` with
    /// `W_s = plus` where the input sign of (i, column) equals the output sign of (j, column)
    /// and `minus` where they differ, i.e. `mu + s_in * s_out * D` for `plus = mu + D` and
    /// `minus = mu - D`: one fused multiply-add per kept weight and vector instead of one per
    /// product, the signs picked per lane by a blend (and no sign-flipped copy of `X^T`).
    Signed {
        /// `mu + D` of the kept weights, pattern order.
        plus: &'a [f32],
        /// `mu - D` of the kept weights, pattern order.
        minus: &'a [f32],
        /// The input signs in sign panels of the `k` inputs ([`sign_panels_on`]).
        s_in: &'a [u16],
        /// The output signs in sign panels of the outputs (one row per output).
        s_out: &'a [u16],
    },
}

/// Sign masks per row of a panel: one 16-bit lane mask per vector of [`LANES`] columns.
const MASKS: usize = PANEL / LANES;

/// Masks of sign panels for `k` rows and `cols` columns: the layout of `X^T`'s panels with a
/// `u16` lane mask per vector of [`LANES`] columns.
pub fn sign_panels_len(k: usize, cols: usize) -> usize {
    k * cols.div_ceil(PANEL) * MASKS
}

/// Index in the sign panels of a `k`-row matrix of the mask of row `i`, columns
/// `c - c % 16..c - c % 16 + 16` (bit `c % 16` is column `c`'s).
pub fn sign_at(k: usize, i: usize, c: usize) -> usize {
    (c / PANEL) * k * MASKS + i * MASKS + (c % PANEL) / LANES
}


mod direct;
mod forward;
mod kernel;
mod layout;
mod patches;
#[cfg(test)]
mod tests;

// The layout's 16 x 16 tiles and sign-bit helpers, for the kernel and the layer code.
use layout::*;

pub use kernel::{flip_panels_on, Epilogue};
pub use layout::{sign_panels_on, transpose_into, transpose_on};
pub(crate) use direct::direct_tiles;
pub(crate) use forward::{conv_on_blocks, forward, kept_noise, one_product, rows_of_transposed_blocks, transposed_blocks, transposed_blocks_into, transposed_len, Flip, Job, KeptNoise, Scratch, Signs};
pub(crate) use patches::{patches_t, PatchScratch};
