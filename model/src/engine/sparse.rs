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
//! example's signs. A convolution's example has the same signs on all its patch rows, so its
//! weights are formed once per example ([`fold_signs`]); a dense layer's change from column to
//! column, so the kernel picks `mu + D` or `mu - D` per lane by the signs in sign panels
//! ([`Pass::Signed`], [`sign_panels_on`]).
//! [`forward`] runs a whole pruned layer on it.

use super::aligned::{lead, Aligned};
use super::conv::Window;
use super::sampler::{sign_bits_at, Sampler};

/// Sparsity pattern of a kernel stored by output (`rows` = outputs, `cols` = inputs).
#[derive(Debug, Clone, PartialEq)]
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
        Csr { rows, cols, indptr, indices, split, flat }
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

/// 16 floats in registers: the operations the transposed kernel is written in, once for
/// every instruction set.
trait Vector: Copy {
    /// Vectors per column block (of each product) that fit the register file.
    const BLOCK: usize;
    /// All zeros.
    unsafe fn zero() -> Self;
    /// `v` in every lane.
    unsafe fn splat(v: f32) -> Self;
    /// 16 floats from `p` (unaligned).
    unsafe fn load(p: *const f32) -> Self;
    /// `acc + w * x`.
    unsafe fn fma(w: Self, x: Self, acc: Self) -> Self;
    /// `x` with the sign bit flipped in the lanes whose bit of `bits` is set (bit l: lane l).
    unsafe fn flip(x: Self, bits: u16) -> Self;
    /// `b` in the lanes whose bit of `bits` is set (bit l: lane l), `a` in the others.
    unsafe fn blend(bits: u16, a: Self, b: Self) -> Self;
    /// `a + b`.
    unsafe fn add(a: Self, b: Self) -> Self;
    /// `max(a, 0)` (a NaN lane gives 0, like `f32::max`).
    unsafe fn relu(a: Self) -> Self;
    /// 16 floats to `p` (unaligned).
    unsafe fn store(self, p: *mut f32);
}

impl Vector for [f32; LANES] {
    const BLOCK: usize = 2;
    #[inline(always)]
    unsafe fn zero() -> Self {
        [0.0; LANES]
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        [v; LANES]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller passes 16 readable floats.
        unsafe { p.cast::<[f32; LANES]>().read_unaligned() }
    }
    #[inline(always)]
    unsafe fn fma(w: Self, x: Self, mut acc: Self) -> Self {
        for ((a, w), x) in acc.iter_mut().zip(w).zip(x) {
            *a += w * x;
        }
        acc
    }
    #[inline(always)]
    unsafe fn flip(mut x: Self, bits: u16) -> Self {
        for (l, v) in x.iter_mut().enumerate() {
            *v = f32::from_bits(v.to_bits() ^ (u32::from(bits >> l) & 1) << 31);
        }
        x
    }
    #[inline(always)]
    unsafe fn blend(bits: u16, mut a: Self, b: Self) -> Self {
        for (l, (v, &w)) in a.iter_mut().zip(&b).enumerate() {
            if bits >> l & 1 == 1 {
                *v = w;
            }
        }
        a
    }
    #[inline(always)]
    unsafe fn add(mut a: Self, b: Self) -> Self {
        a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
        a
    }
    #[inline(always)]
    unsafe fn relu(mut a: Self) -> Self {
        a.iter_mut().for_each(|a| *a = a.max(0.0));
        a
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller passes 16 writable floats.
        unsafe { p.cast::<[f32; LANES]>().write_unaligned(self) }
    }
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Avx2(std::arch::x86_64::__m256, std::arch::x86_64::__m256);

// SAFETY (every method): called only from `spmm_avx2`, which has AVX2 and FMA enabled, on
// pointers to 16 floats (the caller's contract).
#[cfg(target_arch = "x86_64")]
impl Vector for Avx2 {
    // 16 ymm registers: 2 x 2 x 2 accumulators, 4 for the activations.
    const BLOCK: usize = 2;
    #[inline(always)]
    unsafe fn zero() -> Self {
        use std::arch::x86_64::*;
        unsafe { Avx2(_mm256_setzero_ps(), _mm256_setzero_ps()) }
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        use std::arch::x86_64::*;
        unsafe { Avx2(_mm256_set1_ps(v), _mm256_set1_ps(v)) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        use std::arch::x86_64::*;
        unsafe { Avx2(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))) }
    }
    #[inline(always)]
    unsafe fn fma(w: Self, x: Self, acc: Self) -> Self {
        use std::arch::x86_64::*;
        unsafe { Avx2(_mm256_fmadd_ps(w.0, x.0, acc.0), _mm256_fmadd_ps(w.1, x.1, acc.1)) }
    }
    #[inline(always)]
    unsafe fn flip(x: Self, bits: u16) -> Self {
        use std::arch::x86_64::*;
        // Lane l's bit shifted up to the sign bit (bit l of each half: shift by 31 - l),
        // the rest cleared, then XOR-ed in.
        unsafe {
            let b = _mm256_set1_epi32(i32::from(bits));
            let sign = _mm256_set1_epi32(i32::MIN);
            let lo = _mm256_and_si256(_mm256_sllv_epi32(b, _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24)), sign);
            let hi = _mm256_and_si256(_mm256_sllv_epi32(b, _mm256_setr_epi32(23, 22, 21, 20, 19, 18, 17, 16)), sign);
            Avx2(_mm256_xor_ps(x.0, _mm256_castsi256_ps(lo)), _mm256_xor_ps(x.1, _mm256_castsi256_ps(hi)))
        }
    }
    #[inline(always)]
    unsafe fn blend(bits: u16, a: Self, b: Self) -> Self {
        use std::arch::x86_64::*;
        // Lane l's bit shifted up to the sign bit, which is all `blendv` reads.
        unsafe {
            let m = _mm256_set1_epi32(i32::from(bits));
            let lo = _mm256_sllv_epi32(m, _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24));
            let hi = _mm256_sllv_epi32(m, _mm256_setr_epi32(23, 22, 21, 20, 19, 18, 17, 16));
            Avx2(_mm256_blendv_ps(a.0, b.0, _mm256_castsi256_ps(lo)), _mm256_blendv_ps(a.1, b.1, _mm256_castsi256_ps(hi)))
        }
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        use std::arch::x86_64::*;
        unsafe { Avx2(_mm256_add_ps(a.0, b.0), _mm256_add_ps(a.1, b.1)) }
    }
    #[inline(always)]
    unsafe fn relu(a: Self) -> Self {
        use std::arch::x86_64::*;
        // `max(a, 0)` returns its second operand where either is NaN: 0, as `f32::max` does.
        unsafe { Avx2(_mm256_max_ps(a.0, _mm256_setzero_ps()), _mm256_max_ps(a.1, _mm256_setzero_ps())) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        use std::arch::x86_64::*;
        unsafe {
            _mm256_storeu_ps(p, self.0);
            _mm256_storeu_ps(p.add(8), self.1);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Avx512(std::arch::x86_64::__m512);

// SAFETY (every method): called only from `spmm_avx512`, which has AVX-512F enabled, on
// pointers to 16 floats (the caller's contract).
#[cfg(target_arch = "x86_64")]
impl Vector for Avx512 {
    // 32 zmm registers: 2 x 8 accumulators, 8 for the activations, 2 for the weights.
    const BLOCK: usize = VECS;
    #[inline(always)]
    unsafe fn zero() -> Self {
        use std::arch::x86_64::*;
        unsafe { Avx512(_mm512_setzero_ps()) }
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        use std::arch::x86_64::*;
        unsafe { Avx512(_mm512_set1_ps(v)) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        use std::arch::x86_64::*;
        unsafe { Avx512(_mm512_loadu_ps(p)) }
    }
    #[inline(always)]
    unsafe fn fma(w: Self, x: Self, acc: Self) -> Self {
        use std::arch::x86_64::*;
        unsafe { Avx512(_mm512_fmadd_ps(w.0, x.0, acc.0)) }
    }
    #[inline(always)]
    unsafe fn flip(x: Self, bits: u16) -> Self {
        use std::arch::x86_64::*;
        unsafe {
            let v = _mm512_castps_si512(x.0);
            Avx512(_mm512_castsi512_ps(_mm512_mask_xor_epi32(v, bits, v, _mm512_set1_epi32(i32::MIN))))
        }
    }
    #[inline(always)]
    unsafe fn blend(bits: u16, a: Self, b: Self) -> Self {
        use std::arch::x86_64::*;
        unsafe { Avx512(_mm512_mask_blend_ps(bits, a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        use std::arch::x86_64::*;
        unsafe { Avx512(_mm512_add_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn relu(a: Self) -> Self {
        use std::arch::x86_64::*;
        // `max(a, 0)` returns its second operand where either is NaN: 0, as `f32::max` does.
        unsafe { Avx512(_mm512_max_ps(a.0, _mm512_setzero_ps())) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        use std::arch::x86_64::*;
        unsafe { _mm512_storeu_ps(p, self.0) }
    }
}

/// Raw operands of one [`Csr::spmm_t`] call, checked by it.
#[derive(Clone, Copy)]
struct Operands {
    xa: *const f32,
    a: *const f32,
    b: *const f32,
    ya: *mut f32,
    /// Sign panels of the inputs and of the outputs ([`Pass::Signed`], or with `flip_out`;
    /// else unused).
    s_in: *const u16,
    s_out: *const u16,
    /// Columns to compute, a multiple of [`LANES`].
    cols: usize,
    /// The [`Epilogue`]: its bias (null: none, and no epilogue), its base laid out like the
    /// output (null: none), whether `s_out` flips the sums (a [`Pass::One`]'s output signs)
    /// and whether a ReLU ends it.
    bias: *const f32,
    base: *const f32,
    flip_out: bool,
    relu: bool,
}

/// What [`Csr::spmm_t_then`] does to each output vector once its sum is complete, before
/// the one store of it: `y = bias[j] + sum * s_out + base` (each term where there is one, in
/// that order, as the row-major output pass adds them), then the ReLU when `relu`. The
/// output pass of a dense layer whose output stays transposed, with no pass of its own over
/// the output.
#[derive(Debug, Clone, Copy)]
pub struct Epilogue<'a> {
    /// One value per output row.
    pub bias: &'a [f32],
    /// Output signs in sign panels of the outputs (one row per output); only with
    /// [`Pass::One`] ([`Pass::Signed`] folds them into its weights).
    pub s_out: Option<&'a [u16]>,
    /// A term laid out like the output (panels of the outputs).
    pub base: Option<&'a [f32]>,
    /// Whether a ReLU ends it.
    pub relu: bool,
}

/// Every output of `csr` on columns `0..op.cols`, in blocks of `VECS` vectors: the kept
/// weights of output `j` stream by once per block, each one a broadcast and one load and
/// fused multiply-add per vector (`SIGNED`: two broadcasts, and per vector the weight picked
/// from them by the lanes' input and output signs, [`Pass::Signed`]); the [`Epilogue`], if
/// any, on each output vector after its last chunk.
///
/// # Safety
/// `op` must hold what [`Csr::spmm_t_on`] checks: `csr`'s indices below `k`, panels of `k`
/// rows and `op.cols` columns behind `xa` and of `rows` rows behind `ya`, `nnz` values behind
/// `a` (and `b`), `op.cols` a multiple of [`LANES`]; with `SIGNED` or `flip_out`, sign panels
/// of `k` rows behind `s_in` (`SIGNED`) and of `rows` rows behind `s_out`, of `op.cols`
/// columns; a non-null `bias` holds `rows` values, a non-null `base` panels of `rows` rows.
#[inline(always)]
unsafe fn spmm<V: Vector, const SIGNED: bool>(csr: &Csr, op: Operands) {
    #[inline(always)]
    unsafe fn block<V: Vector, const NV: usize, const SIGNED: bool>(csr: &Csr, op: Operands, c0: usize) {
        // SAFETY: the caller's contract (see `spmm`); offsets stay inside the panels because
        // indices < k and c0 + NV * LANES <= cols, within one panel.
        // Row i of the block lies at `at(k, i, c0) = base + i * PANEL` (its masks at
        // `sign_at(k, i, c0) = s_base + i * MASKS`); output j's at `out_base + j * PANEL`.
        let (base, s_base) = (at(csr.cols, 0, c0), sign_at(csr.cols, 0, c0));
        let (out_base, o_base) = (at(csr.rows, 0, c0), sign_at(csr.rows, 0, c0));
        unsafe {
            // Chunk by chunk of inputs, so that their activation rows stay in L1; the partial
            // sums go to the outputs in between.
            let m = csr.chunks();
            for ch in 0..m {
                // The sums are complete after the last chunk: the epilogue, if any, then.
                let last = ch + 1 == m && !op.bias.is_null();
                for j in 0..csr.rows {
                    let (s, e) = (csr.split[j * (m + 1) + ch], csr.split[j * (m + 1) + ch + 1]);
                    if ch > 0 && s == e && !last {
                        continue;
                    }
                    let oa = op.ya.add(out_base + j * PANEL);
                    let mut ra = [V::zero(); NV];
                    if ch > 0 {
                        for (l, r) in ra.iter_mut().enumerate() {
                            *r = V::load(oa.add(l * LANES));
                        }
                    }
                    // Output j's signs on the block's columns.
                    let so: [u16; NV] = std::array::from_fn(|l| if SIGNED { *op.s_out.add(o_base + j * MASKS + l) } else { 0 });
                    for nz in s..e {
                        let i = *csr.indices.get_unchecked(nz) as usize;
                        let pa = op.xa.add(base + i * PANEL);
                        let wa = V::splat(*op.a.add(nz));
                        if SIGNED {
                            let wb = V::splat(*op.b.add(nz));
                            let si = op.s_in.add(s_base + i * MASKS);
                            for (l, r) in ra.iter_mut().enumerate() {
                                let w = V::blend(*si.add(l) ^ so[l], wa, wb);
                                *r = V::fma(w, V::load(pa.add(l * LANES)), *r);
                            }
                        } else {
                            for (l, r) in ra.iter_mut().enumerate() {
                                *r = V::fma(wa, V::load(pa.add(l * LANES)), *r);
                            }
                        }
                    }
                    if last {
                        let bias = V::splat(*op.bias.add(j));
                        for (l, r) in ra.iter_mut().enumerate() {
                            let mut v = if op.flip_out { V::flip(*r, *op.s_out.add(o_base + j * MASKS + l)) } else { *r };
                            v = V::add(bias, v);
                            if !op.base.is_null() {
                                v = V::add(v, V::load(op.base.add(out_base + j * PANEL + l * LANES)));
                            }
                            *r = if op.relu { V::relu(v) } else { v };
                        }
                    }
                    for (l, r) in ra.iter().enumerate() {
                        r.store(oa.add(l * LANES));
                    }
                }
            }
        }
    }
    let mut c0 = 0;
    // SAFETY: as above, each block within `op.cols` and within one panel (PANEL is a
    // multiple of every BLOCK * LANES).
    unsafe {
        while c0 < op.cols {
            match ((op.cols - c0) / LANES).min(V::BLOCK) {
                1 => block::<V, 1, SIGNED>(csr, op, c0),
                2 => block::<V, 2, SIGNED>(csr, op, c0),
                3 => block::<V, 3, SIGNED>(csr, op, c0),
                4 => block::<V, 4, SIGNED>(csr, op, c0),
                5 => block::<V, 5, SIGNED>(csr, op, c0),
                6 => block::<V, 6, SIGNED>(csr, op, c0),
                7 => block::<V, 7, SIGNED>(csr, op, c0),
                _ => block::<V, VECS, SIGNED>(csr, op, c0),
            }
            c0 += V::BLOCK * LANES;
        }
    }
}

/// [`spmm`] for both kinds of [`Pass`].
#[inline(always)]
unsafe fn spmm_any<V: Vector>(csr: &Csr, op: Operands, pass: &Pass) {
    // SAFETY: the caller's contract.
    unsafe {
        match pass {
            Pass::One(_) => spmm::<V, false>(csr, op),
            Pass::Signed { .. } => spmm::<V, true>(csr, op),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn spmm_avx512(csr: &Csr, op: Operands, pass: &Pass) {
    // SAFETY: the caller's contract; AVX-512F is enabled here.
    unsafe { spmm_any::<Avx512>(csr, op, pass) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn spmm_avx2(csr: &Csr, op: Operands, pass: &Pass) {
    // SAFETY: the caller's contract; AVX2 and FMA are enabled here.
    unsafe { spmm_any::<Avx2>(csr, op, pass) }
}

/// `dst = x` with the input signs of `signs` applied ([`flip_panels_on`]): vector `q` of the
/// panels XOR-ed with mask `q` (the sign panels have one mask per vector, in the same order).
///
/// # Safety
/// `x` and `dst` hold `16 * vectors` floats and `signs` `vectors` masks; the CPU runs `V`.
#[inline(always)]
unsafe fn flip_all<V: Vector>(x: *const f32, signs: *const u16, vectors: usize, dst: *mut f32) {
    for q in 0..vectors {
        // SAFETY: q < vectors (the caller's contract).
        unsafe { V::flip(V::load(x.add(q * LANES)), *signs.add(q)).store(dst.add(q * LANES)) };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn flip_avx512(x: *const f32, signs: *const u16, vectors: usize, dst: *mut f32) {
    // SAFETY: the caller's contract; AVX-512F is enabled here.
    unsafe { flip_all::<Avx512>(x, signs, vectors, dst) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn flip_avx2(x: *const f32, signs: *const u16, vectors: usize, dst: *mut f32) {
    // SAFETY: the caller's contract; AVX2 and FMA are enabled here.
    unsafe { flip_all::<Avx2>(x, signs, vectors, dst) }
}

/// `dst = X^T * s_in` for transposed activations `x` (`k` rows, `cols` columns, in panels)
/// and their input signs in sign panels ([`sign_panels_on`]): the sign-flipped copy that a
/// product with one activation stream per pass reads, from one streaming pass of masked
/// XORs (instead of a second transpose of the rows), on a given instruction set (an
/// unsupported one runs portably). Padding columns are flipped like the others.
///
/// # Panics
/// When a slice is shorter than its shape says.
pub fn flip_panels_on(isa: Isa, x: &[f32], signs: &[u16], k: usize, cols: usize, dst: &mut [f32]) {
    let vectors = sign_panels_len(k, cols);
    assert!(x.len() >= vectors * LANES && dst.len() >= vectors * LANES && signs.len() >= vectors, "flip panels: slices too short");
    let (x, signs, dst) = (x.as_ptr(), signs.as_ptr(), dst.as_mut_ptr());
    // SAFETY: the lengths were checked above; each kernel runs on an instruction set the CPU
    // supports (detected).
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if Isa::detect() == Isa::Avx512 => flip_avx512(x, signs, vectors, dst),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx2 if Isa::detect() != Isa::Portable => flip_avx2(x, signs, vectors, dst),
            _ => flip_all::<[f32; LANES]>(x, signs, vectors, dst),
        }
    }
}

impl Csr {
    /// Transposed sparse product: for every output `j` and column `c < cols`,
    /// `ya[at(rows, j, c)] = sum_i A[j, i] * X^T[i, c]` over the kept weights (A's values in
    /// pattern order; for [`Pass::Signed`] each value picked by the signs): `Y^T` in panels
    /// like `X^T`, which `x` holds (`[k, cols]`, [`at`]); columns up to `padded(cols)` are
    /// computed (padding columns hold whatever their inputs give, which must be finite), the
    /// rest of the last panel is not written.
    ///
    /// # Panics
    /// When a slice is shorter than its shape says (a bug in the caller: the shapes come from
    /// the shape-checked architecture).
    pub fn spmm_t(&self, x: &[f32], cols: usize, pass: Pass, ya: &mut [f32]) {
        self.spmm_t_on(Isa::detect(), x, cols, pass, None, ya)
    }

    /// [`Csr::spmm_t`] with the output pass `then` applied to each output vector in
    /// registers before it is stored (instead of a pass of its own over the output).
    ///
    /// # Panics
    /// As [`Csr::spmm_t`]; also when `then`'s slices are shorter than the output's shape
    /// says, or it has output signs for a [`Pass::Signed`].
    pub fn spmm_t_then(&self, x: &[f32], cols: usize, pass: Pass, then: Epilogue, ya: &mut [f32]) {
        self.spmm_t_on(Isa::detect(), x, cols, pass, Some(then), ya)
    }

    /// [`Csr::spmm_t`] (or with `then`, [`Csr::spmm_t_then`]) on a given instruction set
    /// (which the CPU must support: tests compare the kernels; anything else calls
    /// [`Csr::spmm_t`]). An unsupported one runs portably.
    ///
    /// The pattern's bounds (indices in range, row and chunk bounds) are not scanned here:
    /// the fields are private and only [`Csr::from_mask`] builds a pattern, so they hold by
    /// construction; debug builds check them again (in release builds that scan of every kept
    /// weight, once per layer and sample, was 0.9% of a pruned BNN-FC's time).
    pub fn spmm_t_on(&self, isa: Isa, x: &[f32], cols: usize, pass: Pass, then: Option<Epilogue>, ya: &mut [f32]) {
        let csr = self;
        let (k, n, nnz) = (csr.cols, csr.rows, csr.nnz());
        debug_assert!(csr.indptr.len() == n + 1 && csr.indptr.windows(2).all(|w| w[0] <= w[1]) && csr.indptr[n] == nnz, "spmm_t: bad pattern");
        debug_assert!(nnz == 0 || (csr.indices.iter().fold(0, |a, &i| a.max(i)) as usize) < k, "spmm_t: an index is out of range");
        debug_assert!(csr.split.len() == n * (csr.chunks() + 1) && csr.split.iter().fold(0, |a, &p| a.max(p)) <= nnz, "spmm_t: bad chunk bounds");
        let len = panels_len(k, cols);
        let (a, b, s_in, s_out) = match pass {
            Pass::One(a) => (a, a, &[][..], &[][..]),
            Pass::Signed { plus, minus, s_in, s_out } => {
                assert!(s_in.len() >= sign_panels_len(k, cols) && s_out.len() >= sign_panels_len(n, cols), "spmm_t: sign panels too short");
                (plus, minus, s_in, s_out)
            }
        };
        assert!(x.len() >= len && a.len() >= nnz && b.len() >= nnz, "spmm_t: operands too short");
        assert!(ya.len() >= panels_len(n, cols), "spmm_t: output too short");
        if let Some(t) = then {
            assert!(t.bias.len() >= n && t.base.is_none_or(|b| b.len() >= panels_len(n, cols)), "spmm_t: epilogue too short");
            assert!(t.s_out.is_none_or(|s| s.len() >= sign_panels_len(n, cols)) && (t.s_out.is_none() || matches!(pass, Pass::One(_))), "spmm_t: bad epilogue signs");
        }
        let cols = padded(cols);
        if cols == 0 || n == 0 {
            return;
        }
        let flip_out = then.is_some_and(|t| t.s_out.is_some());
        let s_out = then.and_then(|t| t.s_out).unwrap_or(s_out);
        let op = Operands {
            xa: x.as_ptr(),
            a: a.as_ptr(),
            b: b.as_ptr(),
            ya: ya.as_mut_ptr(),
            s_in: s_in.as_ptr(),
            s_out: s_out.as_ptr(),
            cols,
            bias: then.map_or(std::ptr::null(), |t| t.bias.as_ptr()),
            base: then.and_then(|t| t.base).map_or(std::ptr::null(), |b| b.as_ptr()),
            flip_out,
            relu: then.is_some_and(|t| t.relu),
        };
        let isa = if isa == Isa::Portable || Isa::detect() == Isa::Portable { Isa::Portable } else { isa };
        // SAFETY: every bound of `spmm`'s contract was checked above (the pattern's hold by
        // construction, `Csr::from_mask`); the instruction set is one the CPU supports (detected).
        unsafe {
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 if Isa::detect() == Isa::Avx512 => spmm_avx512(csr, op, &pass),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 | Isa::Avx2 => spmm_avx2(csr, op, &pass),
                _ => spmm_any::<[f32; LANES]>(csr, op, &pass),
            }
        }
    }
}

/// `dst[c * ld + r] = src[r * cols + c]` for `r < rows`, `c < cols` (XOR-ed with
/// `mask[r * cols + c]` when given: Flipout's sign masks), 16 x 16 blocks in registers.
pub fn transpose_into(src: &[f32], mask: Option<&[u32]>, rows: usize, cols: usize, dst: &mut [f32], ld: usize) {
    transpose_on(Isa::detect(), src, mask, cols, rows, cols, dst, ld)
}

/// `dst[c * ld_d + r] = src[r * ld_s + c]` (XOR-ed with `mask[r * ld_s + c]` when given) for
/// `r < rows`, `c < cols`, on a given instruction set (an unsupported one runs portably):
/// whole 16 x 16 blocks transposed in registers on AVX-512 (the scalar strided copy it
/// replaces cost about 1 ns per value, a fifth of a pruned BNN-FC's time), the edges by value.
///
/// # Panics
/// When a slice is shorter than its shape says.
#[allow(clippy::too_many_arguments)]
pub fn transpose_on(isa: Isa, src: &[f32], mask: Option<&[u32]>, ld_s: usize, rows: usize, cols: usize, dst: &mut [f32], ld_d: usize) {
    if rows == 0 || cols == 0 {
        return;
    }
    let need_s = (rows - 1) * ld_s + cols;
    assert!(cols <= ld_s && rows <= ld_d && src.len() >= need_s && mask.is_none_or(|m| m.len() >= need_s) && dst.len() >= (cols - 1) * ld_d + rows, "transpose: slices too short");
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && Isa::detect() == Isa::Avx512 {
        // SAFETY: AVX-512F is supported (detected); the bounds were checked above.
        return unsafe { transpose_avx512(src, mask, ld_s, rows, cols, dst, ld_d) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 && Isa::detect() != Isa::Portable {
        // SAFETY: AVX2 is supported (detected).
        return unsafe { transpose_avx2(src, mask, ld_s, rows, cols, dst, ld_d) };
    }
    transpose_tiles(src, mask, ld_s, rows, cols, dst, ld_d, 0, 0);
}

/// Side of the blocks of [`transpose_on`].
const TB: usize = 16;

/// The portable transpose of rows `r_from..rows` and columns `c_from..cols` (the edges the
/// vector code leaves), in TB x TB tiles so that both sides stay in L1, plus the corner
/// where both are below: the whole matrix for `r_from = c_from = 0`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn transpose_tiles(src: &[f32], mask: Option<&[u32]>, ld_s: usize, rows: usize, cols: usize, dst: &mut [f32], ld_d: usize, r_from: usize, c_from: usize) {
    for_edge_tiles(rows, cols, r_from, c_from, |r, c| {
        let v = src[r * ld_s + c].to_bits() ^ mask.map_or(0, |m| m[r * ld_s + c]);
        dst[c * ld_d + r] = f32::from_bits(v);
    });
}

/// Calls `one(r, c)` for every element of a `rows x cols` matrix outside the blocks the
/// vector code did (those wholly below both `r_from` and `c_from`), in TB x TB tiles, column
/// by column within a tile, so that both sides of a transpose stay in L1.
#[inline(always)]
fn for_edge_tiles(rows: usize, cols: usize, r_from: usize, c_from: usize, mut one: impl FnMut(usize, usize)) {
    for r0 in (0..rows).step_by(TB) {
        let r1 = (r0 + TB).min(rows);
        for c0 in (0..cols).step_by(TB) {
            let c1 = (c0 + TB).min(cols);
            if r1 <= r_from && c1 <= c_from {
                continue;
            }
            for c in c0..c1 {
                for r in r0..r1 {
                    one(r, c);
                }
            }
        }
    }
}

/// [`transpose_tiles`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_avx2(src: &[f32], mask: Option<&[u32]>, ld_s: usize, rows: usize, cols: usize, dst: &mut [f32], ld_d: usize) {
    transpose_tiles(src, mask, ld_s, rows, cols, dst, ld_d, 0, 0)
}

/// [`transpose_on`] on AVX-512: each whole 16 x 16 block loaded as 16 rows, transposed in
/// four rounds of shuffles (32-bit pairs, 64-bit pairs, then 128-bit lanes twice), stored as
/// 16 rows; the edges by [`transpose_tiles`].
///
/// # Safety
/// AVX-512F is supported and the slices hold what [`transpose_on`] checks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_avx512(src: &[f32], mask: Option<&[u32]>, ld_s: usize, rows: usize, cols: usize, dst: &mut [f32], ld_d: usize) {
    use std::arch::x86_64::*;
    let (rb, cb) = (rows / TB * TB, cols / TB * TB);
    for r0 in (0..rb).step_by(TB) {
        for c0 in (0..cb).step_by(TB) {
            let mut v = [_mm512_setzero_ps(); TB];
            for (i, vi) in v.iter_mut().enumerate() {
                let o = (r0 + i) * ld_s + c0;
                // SAFETY: row r0 + i < rows, columns c0..c0 + 16 <= cols: inside `src`
                // (and `mask`, of the same length), as checked by the caller.
                unsafe {
                    *vi = _mm512_loadu_ps(src.as_ptr().add(o));
                    if let Some(m) = mask {
                        let bits = _mm512_xor_si512(_mm512_castps_si512(*vi), _mm512_loadu_si512(m.as_ptr().add(o).cast()));
                        *vi = _mm512_castsi512_ps(bits);
                    }
                }
            }
            // SAFETY: columns c0..c0 + 16 <= cols, rows r0..r0 + 16 <= rows: inside `dst`,
            // as checked by the caller.
            unsafe { store_t16(v, dst.as_mut_ptr().add(c0 * ld_d + r0), ld_d) };
        }
    }
    transpose_tiles(src, mask, ld_s, rows, cols, dst, ld_d, rb, cb);
}

/// Stores the transpose of the 16 x 16 block `v` (16 rows of 16) at `dst`, rows `ld` apart.
///
/// # Safety
/// AVX-512F is supported; `dst` holds 16 rows of 16 values, `ld` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_t16(v: [std::arch::x86_64::__m512; TB], dst: *mut f32, ld: usize) {
    use std::arch::x86_64::*;
    for (j, row) in t16(v).into_iter().enumerate() {
        // SAFETY: row j of the block, inside `dst` by the caller's contract.
        unsafe { _mm512_storeu_ps(dst.add(j * ld), row) };
    }
}

/// The transpose of the 16 x 16 block `v` (16 rows of 16) in registers: four rounds of
/// shuffles (32-bit pairs, 64-bit pairs, then 128-bit lanes twice).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn t16(mut v: [std::arch::x86_64::__m512; TB]) -> [std::arch::x86_64::__m512; TB] {
    use std::arch::x86_64::*;
    // Within each 128-bit lane: rows 4q..4q+4 of column 4L + t gathered into vector
    // 4q + t (two rounds), then the lanes of every column brought together.
    let mut t = [_mm512_setzero_ps(); TB];
    for q in 0..TB / 2 {
        t[2 * q] = _mm512_unpacklo_ps(v[2 * q], v[2 * q + 1]);
        t[2 * q + 1] = _mm512_unpackhi_ps(v[2 * q], v[2 * q + 1]);
    }
    for q in 0..TB / 4 {
        let b = 4 * q;
        v[b] = _mm512_shuffle_ps::<0x44>(t[b], t[b + 2]);
        v[b + 1] = _mm512_shuffle_ps::<0xEE>(t[b], t[b + 2]);
        v[b + 2] = _mm512_shuffle_ps::<0x44>(t[b + 1], t[b + 3]);
        v[b + 3] = _mm512_shuffle_ps::<0xEE>(t[b + 1], t[b + 3]);
    }
    // v[4q + t]: column 4L + t of rows 4q..4q+4 in lane L.
    for h in 0..2 {
        for t4 in 0..4 {
            let (a, b) = (v[8 * h + t4], v[8 * h + 4 + t4]);
            t[8 * h + t4] = _mm512_shuffle_f32x4::<0x88>(a, b);
            t[8 * h + 4 + t4] = _mm512_shuffle_f32x4::<0xDD>(a, b);
        }
    }
    let mut rows = [_mm512_setzero_ps(); TB];
    for j in 0..TB / 2 {
        let (a, b) = (t[j], t[8 + j]);
        rows[j] = _mm512_shuffle_f32x4::<0x88>(a, b);
        rows[j + 8] = _mm512_shuffle_f32x4::<0xDD>(a, b);
    }
    rows
}

/// The sign mask (0 or the f32 sign bit) of bit `p` of `bits`.
#[inline(always)]
fn sign_bit(bits: &[u64], p: usize) -> u32 {
    (((bits[p / 64] >> (p % 64)) & 1) as u32) << 31
}

/// Bits `p..p + 16` of `bits`: the lane mask of 16 values' signs.
#[inline(always)]
fn bits16(bits: &[u64], p: usize) -> u16 {
    sign_bits_at(bits, p, 16) as u16
}

/// The sign panels ([`sign_at`]) of `cols` columns and `k` rows: the mask of row `i` and
/// columns `c..c + 16` (c a multiple of 16) has bit `l` = bit `bit0 + (c + l) * k + i` of
/// `bits`, i.e. the input signs of a dense layer (row-major per example and input, as the
/// sampler draws them, [`Sampler::sign_bits_into`]) laid out like the transposed activations'
/// panels, for [`Pass::Signed`] and [`flip_panels_on`]. Bits of columns from `cols` on are 0. A bit-matrix transpose
/// in 16 x 16 blocks: 16 columns' 16 bits as the lanes of one vector, then one mask per
/// row (on AVX-512 a test instruction per row).
///
/// # Panics
/// When a slice is shorter than its shape says.
pub fn sign_panels_on(isa: Isa, bits: &[u64], bit0: usize, cols: usize, k: usize, dst: &mut [u16]) {
    assert!(bits.len() * 64 >= bit0 + cols * k && dst.len() >= sign_panels_len(k, cols), "sign panels: slices too short");
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && Isa::detect() == Isa::Avx512 {
        // SAFETY: AVX-512F is supported (detected).
        return unsafe { sign_panels_avx512(bits, bit0, cols, k, dst) };
    }
    sign_blocks(bits, bit0, cols, k, dst, |w| {
        let mut m = [0u16; TB];
        for (j, mj) in m.iter_mut().enumerate() {
            *mj = w.iter().enumerate().fold(0, |a, (r, &v)| a | (((v >> j) & 1) as u16) << r);
        }
        m
    });
}

/// [`sign_panels_on`] on AVX-512: each block's 16 rows' masks by one `vptestmd` each.
///
/// # Safety
/// AVX-512F is supported.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sign_panels_avx512(bits: &[u64], bit0: usize, cols: usize, k: usize, dst: &mut [u16]) {
    use std::arch::x86_64::*;
    // Every column's rows starting on a 32-bit word (the sampler's words seen as u32, little
    // endian): 32 rows of 16 columns by one gather, not 16 scalar shifts across words (the
    // bit walk below took 5% of the pruned BNN-FC's time, BNN-FC's 256-wide layers are so).
    if bit0.is_multiple_of(32) && k.is_multiple_of(32) && (bit0 + cols * k) / 32 < i32::MAX as usize {
        let words = bits.as_ptr().cast::<i32>();
        let stride = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32((k / 32) as i32));
        for c0 in (0..cols).step_by(TB) {
            let lanes = (u32::MAX >> (32 - TB.min(cols - c0))) as u16;
            for i0 in (0..k).step_by(32) {
                let idx = _mm512_add_epi32(stride, _mm512_set1_epi32(((bit0 + c0 * k + i0) / 32) as i32));
                // SAFETY: lane l reads u32 word (bit0 + (c0 + l) * k + i0) / 32, whose 32 bits
                // lie below bit0 + cols * k <= 64 * bits.len() (checked by the caller); lanes
                // past the columns are not read.
                let v = unsafe { _mm512_mask_i32gather_epi32::<4>(_mm512_setzero_si512(), lanes, idx, words) };
                let first = sign_at(k, i0, c0);
                for j in 0..32 {
                    dst[first + j * MASKS] = _mm512_test_epi32_mask(v, _mm512_set1_epi32(1 << j));
                }
            }
        }
        return;
    }
    sign_blocks(bits, bit0, cols, k, dst, |w| {
        // SAFETY: `w` holds 16 u32.
        let v = unsafe { _mm512_loadu_si512(w.as_ptr().cast()) };
        std::array::from_fn(|j| _mm512_test_epi32_mask(v, _mm512_set1_epi32(1 << j)))
    });
}

/// The walk of [`sign_panels_on`] over 16 x 16 blocks (16 columns, 16 rows): `masks(w)`,
/// given column `l`'s 16 bits in `w[l]` (0 beyond the columns and rows), returns row `j`'s
/// lane mask at `[j]`.
#[inline(always)]
fn sign_blocks(bits: &[u64], bit0: usize, cols: usize, k: usize, dst: &mut [u16], masks: impl Fn(&[u32; TB]) -> [u16; TB]) {
    for c0 in (0..cols).step_by(TB) {
        let nc = TB.min(cols - c0);
        for i0 in (0..k).step_by(TB) {
            let ni = TB.min(k - i0);
            let mut w = [0u32; TB];
            for (l, wl) in w.iter_mut().enumerate().take(nc) {
                *wl = sign_bits_at(bits, bit0 + (c0 + l) * k + i0, ni) as u32 & ((1u32 << ni) - 1);
            }
            for (j, &m) in masks(&w).iter().enumerate().take(ni) {
                dst[sign_at(k, i0 + j, c0)] = m;
            }
        }
    }
}

/// Scratch of [`patches_t`]: channel planes, a row, and the column masks of a geometry.
#[derive(Default)]
pub(crate) struct PatchScratch {
    planes: Vec<f32>,
    line: Vec<f32>,
    /// Per dx, all bits set at the output positions whose input column is in the image.
    masks: Vec<u32>,
    /// The geometry `masks` were made for.
    masks_for: Option<Window>,
}

/// Transposed patch rows of examples `b0..b1` of `x` (`[n, h, w, c]`) for the convolution
/// `win`: `X^T[i, (b - b0) * R + oy * ow + ox]` (in panels, [`at`]) = the input under patch
/// entry `i = (dy * kw + dx) * c + ch` (0 where padded), R = oh * ow. With `signs`
/// (Flipout's input masks, `[n, c]`), the same with every (example, channel) plane flipped by
/// its sign into `xs`. Each row is copied from the example's channel plane.
pub(crate) fn patches_t(x: &[f32], win: &Window, b0: usize, b1: usize, ps: &mut PatchScratch, xt: &mut [f32], xs: Option<(&mut [f32], &[u32])>) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { patches_avx2(x, win, b0, b1, ps, xt, xs) };
    }
    patches_impl(x, win, b0, b1, ps, xt, xs)
}

/// [`patches_t`] compiled for AVX2 (its copies and masks run 8 lanes wide).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn patches_avx2(x: &[f32], win: &Window, b0: usize, b1: usize, ps: &mut PatchScratch, xt: &mut [f32], xs: Option<(&mut [f32], &[u32])>) {
    patches_impl(x, win, b0, b1, ps, xt, xs)
}

#[inline(always)]
fn patches_impl(x: &[f32], win: &Window, b0: usize, b1: usize, ps: &mut PatchScratch, xt: &mut [f32], mut xs: Option<(&mut [f32], &[u32])>) {
    let PatchScratch { planes, line, masks, masks_for } = ps;
    let [h, w, c] = win.input;
    let ([oh, ow], [ph, pw]) = win.geometry();
    let ([kh, kw], [sy, sx]) = (win.size, win.strides);
    let (r, k) = (oh * ow, kh * kw * c);
    // Planes with zero margins of w + kw values on both sides: the shifted copies below may
    // read a little before or after a plane (what they read there is masked off).
    let margin = w + kw;
    let stride = h * w + 2 * margin;
    planes.clear();
    planes.resize(c * stride, 0.0);
    line.resize(r, 0.0);
    // Output columns whose input column ox * sx + dx - pw lies inside the image.
    let span = |dx: usize| -> (usize, usize) {
        let lo = pw.saturating_sub(dx).div_ceil(sx.max(1)).min(ow);
        let hi = if w + pw > dx { ((w + pw - dx - 1) / sx.max(1) + 1).min(ow) } else { 0 };
        (lo, hi.max(lo))
    };
    // Output rows whose input row oy * sy + dy - ph lies inside the image.
    let rows_in = |dy: usize| -> (usize, usize) {
        let lo = ph.saturating_sub(dy).div_ceil(sy.max(1)).min(oh);
        let hi = if h + ph > dy { ((h + ph - dy - 1) / sy.max(1) + 1).min(oh) } else { 0 };
        (lo, hi.max(lo))
    };
    let contiguous = sx == 1 && sy == 1 && ow == w;
    // Any geometry: one output row at a time.
    let general = |row: &mut [f32], plane: &[f32], dy: usize, dx: usize, lo: usize, hi: usize| {
        for (oy, out) in row.chunks_exact_mut(ow.max(1)).enumerate() {
            let Some(y) = (oy * sy + dy).checked_sub(ph).filter(|&y| y < h) else {
                out.fill(0.0);
                continue;
            };
            out[..lo].fill(0.0);
            out[hi..].fill(0.0);
            let src = &plane[y * w..(y + 1) * w];
            out[lo..hi].iter_mut().zip(lo..hi).for_each(|(v, ox)| *v = src[ox * sx + dx - pw]);
        }
    };
    // Per dx, the output positions whose input column lies inside the image (all bits set).
    if contiguous && *masks_for != Some(*win) {
        *masks_for = Some(*win);
        masks.clear();
        masks.resize(kw * r, 0u32);
        for dx in 0..kw {
            let (lo, hi) = span(dx);
            masks[dx * r..(dx + 1) * r].iter_mut().enumerate().for_each(|(p, m)| *m = if (lo..hi).contains(&(p % w)) { u32::MAX } else { 0 });
        }
    }
    for b in b0..b1 {
        transpose_into(&x[b * h * w * c..(b + 1) * h * w * c], None, h * w, c, &mut planes[margin..], stride);
        let col0 = (b - b0) * r;
        for dy in 0..kh {
            for dx in 0..kw {
                let (lo, hi) = span(dx);
                for ch in 0..c {
                    let i = (dy * kw + dx) * c + ch;
                    let row = &mut line[..];
                    let plane = &planes[ch * stride + margin..ch * stride + margin + h * w];
                    let (ylo, yhi) = rows_in(dy);
                    if contiguous && ylo < yhi && lo < hi && xs.is_none() {
                        // As below, straight into the panels (no copy through `line`), the
                        // padded columns masked off in the same vectorized pass.
                        let (p0, p1) = (ylo * w, yhi * w);
                        // Plane value under position p (p0 <= p < p1): index (oy + dy - ph) * w
                        // + ox + dx - pw of the plane, between -pw and h * w + kw: inside the
                        // margins; `src` starts at position p0's.
                        let src = &planes[ch * stride + margin + (ylo + dy - ph) * w + dx - pw..];
                        let mask = &masks[dx * r..(dx + 1) * r];
                        pieces(xt, k, i, col0, p0, p1, |d, p| {
                            let len = d.len();
                            d.iter_mut().zip(&src[p - p0..p - p0 + len]).zip(&mask[p..p + len]).for_each(|((d, &v), &m)| *d = f32::from_bits(v.to_bits() & m));
                        });
                        pieces(xt, k, i, col0, 0, p0, |d, _| d.fill(0.0));
                        pieces(xt, k, i, col0, p1, r, |d, _| d.fill(0.0));
                        continue;
                    }
                    if contiguous && ylo < yhi && lo < hi {
                        // Stride 1 and ow == w: the row is the plane shifted by a constant
                        // offset, one copy, then the wrapped-around and padded positions zeroed.
                        let (p0, p1) = (ylo * w + lo, (yhi - 1) * w + hi);
                        let s0 = (ylo + dy - ph) * w + lo + dx - pw;
                        row[p0..p1].copy_from_slice(&plane[s0..s0 + p1 - p0]);
                        row[..p0].fill(0.0);
                        row[p1..].fill(0.0);
                        for oy in ylo..yhi - 1 {
                            row[oy * w + hi..(oy + 1) * w + lo].fill(0.0);
                        }
                    } else {
                        general(row, plane, dy, dx, lo, hi);
                    }
                    put(line, k, i, col0, 0, xt);
                    if let Some((xs, signs)) = xs.as_mut() {
                        put(line, k, i, col0, signs[b * c + ch], xs);
                    }
                }
            }
        }
    }
}

/// `f(piece, p)` for the pieces of `X^T[i, col0 + p0..col0 + p1]` (panels of `k` rows) that
/// lie in one panel each; `p` is a piece's first position.
#[inline(always)]
fn pieces(x: &mut [f32], k: usize, i: usize, col0: usize, p0: usize, p1: usize, mut f: impl FnMut(&mut [f32], usize)) {
    let mut p = p0;
    while p < p1 {
        let c = col0 + p;
        let take = (p1 - p).min(PANEL - c % PANEL);
        f(&mut x[at(k, i, c)..at(k, i, c) + take], p);
        p += take;
    }
}

/// `X^T[i, col0..col0 + line.len()] = line` (XOR-ed with `mask`) in panels of `k` rows.
fn put(line: &[f32], k: usize, i: usize, col0: usize, mask: u32, x: &mut [f32]) {
    let mut c = col0;
    for seg in line.chunks(PANEL) {
        // A segment may straddle two panels.
        let mut seg = seg;
        while !seg.is_empty() {
            let take = seg.len().min(PANEL - c % PANEL);
            let d = &mut x[at(k, i, c)..at(k, i, c) + take];
            if mask == 0 {
                d.copy_from_slice(&seg[..take]);
            } else {
                d.iter_mut().zip(&seg[..take]).for_each(|(d, &v)| *d = f32::from_bits(v.to_bits() ^ mask));
            }
            c += take;
            seg = &seg[take..];
        }
    }
}

/// Patch rows (columns) per transposed block of the batch-wide path: the activations of a
/// block (`[k, 256]`, and their sign-flipped copy) stay in L2 while every output uses them.
const BATCH_COLS: usize = 256;

/// Output positions per example from which a Flipout convolution runs one example at a time
/// with the input signs folded into the perturbation's kept values (one load per activation
/// vector for both products) instead of on a sign-flipped copy of the activations (two). Folding
/// costs a pass over the kept weights per example; at 64 positions (VGG-16's 8 x 8 blocks)
/// it still paid: 128 made the 70%-pruned VGG-16 spend 9% more CPU time.
const PER_EXAMPLE_ROWS: usize = 64;

/// Flipout's perturbation of a pruned layer for one sample.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flip<'a> {
    /// `sigma * eps` of the kept weights, in pattern order.
    pub noise: &'a [f32],
    /// Input signs, `[n, channels]` (a dense layer's channels are its inputs).
    pub s_in: Signs<'a>,
    /// Output signs, `[n, units]`.
    pub s_out: Signs<'a>,
}

/// Flipout's input or output signs of a pruned layer, in one of the two forms the sampler
/// draws (same stream, same signs: [`Sampler::sign_masks_into`], [`Sampler::sign_bits_into`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Signs<'a> {
    /// One XOR mask per value (0 or the f32 sign bit).
    Masks(&'a [u32]),
    /// One bit per value (set: -1), 64 per word, applied as lane masks (no mask array
    /// written and read back); input signs of a dense layer only.
    Bits(&'a [u64]),
}

impl<'a> Signs<'a> {
    /// Whether at least `len` signs are held.
    fn covers(&self, len: usize) -> bool {
        match self {
            Signs::Masks(m) => m.len() >= len,
            Signs::Bits(b) => b.len() * 64 >= len,
        }
    }

    /// The sign of value `p` as an XOR mask (0 or the f32 sign bit).
    #[inline(always)]
    fn mask(&self, p: usize) -> u32 {
        match self {
            Signs::Masks(m) => m[p],
            Signs::Bits(b) => sign_bit(b, p),
        }
    }

    /// The masks of a convolution's signs, which its patch code and weight folding apply per value.
    ///
    /// # Panics
    /// When the signs are bits (the layer's caller draws masks for convolutions).
    fn conv_masks(self) -> &'a [u32] {
        match self {
            Signs::Masks(m) => m,
            Signs::Bits(_) => panic!("sparse conv: input signs must be masks"),
        }
    }
}

/// One pruned layer on `n` examples: `out = [base] + [x @ A] + [((x * s_in) @ D) * s_out] +
/// bias`, through a ReLU when `relu`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Job<'a> {
    /// The kernel's pattern (by output).
    pub csr: &'a Csr,
    /// The convolution; `None` for a dense layer.
    pub conv: Option<&'a Window>,
    /// Activations, `[n, ...]` row-major.
    pub x: &'a [f32],
    /// Examples.
    pub n: usize,
    /// Values of the first product (means, or means + noise), pattern order; `None` when
    /// `base` holds it.
    pub a: Option<&'a [f32]>,
    /// Flipout's perturbation product.
    pub flip: Option<Flip<'a>>,
    /// A precomputed term (the shared mean product of a first layer): `[rows, units]`
    /// row-major, or with `out_t` in the layout of the transposed output.
    pub base: Option<&'a [f32]>,
    /// A dense layer's transposed activations as [`transposed_blocks`] lays them out (a
    /// first layer's input, the same for every sample); `None`: transposed here.
    pub xt: Option<&'a [f32]>,
    /// Bias (sampled or mean).
    pub bias: &'a [f32],
    /// Whether a ReLU follows (fused into the output pass).
    pub relu: bool,
    /// Whether to write the output as a following pruned dense layer takes its input
    /// ([`Job::xt`]): transposed, in [`transposed_blocks`]' layout (bias and ReLU applied;
    /// [`transposed_len`] values from the output's first 64-byte boundary, [`lead`]: the
    /// next layer's kernel loads them whole vectors at a time), instead of row-major. Only
    /// for a dense layer whose products run as one: one product of its own
    /// ([`one_product`]), or beside `base` one product (Flipout's perturbation, or the noise
    /// of reparameterization).
    pub out_t: bool,
}

/// Values of a dense layer's output of `units` for `n` examples written transposed
/// ([`Job::out_t`]), which is also the layout of [`transposed_blocks`].
pub(crate) fn transposed_len(n: usize, units: usize) -> usize {
    n.div_ceil(BATCH_COLS) * panels_len(units, BATCH_COLS)
}

/// Whether a dense layer's products run as one product on this CPU (Flipout's through
/// [`Pass::Signed`], when `flipout`), so that its output can stay transposed
/// ([`Job::out_t`]). Portable code has no blend instruction: there the signed pass ran 4.6x
/// slower than two passes over a sign-flipped copy (1.4x faster on AVX2, 1.5x on AVX-512,
/// BNN-FC's 256 x 256 at 24% kept), which it keeps.
pub(crate) fn one_product(flipout: bool) -> bool {
    !flipout || Isa::detect() != Isa::Portable
}

/// Reusable buffers of [`forward`].
#[derive(Default)]
pub(crate) struct Scratch {
    patches: PatchScratch,
    xt: Aligned,
    xs: Aligned,
    /// Input signs of a dense layer in sign panels ([`sign_panels_on`]).
    signs: Vec<u16>,
    ya: Aligned,
    yb: Aligned,
    signed: Vec<f32>,
    /// `mu + D` and `mu - D` of the kept weights ([`Pass::Signed`]).
    plus: Vec<f32>,
    minus: Vec<f32>,
    /// Output signs of a dense layer in sign panels.
    out_signs: Vec<u16>,
    chan: Vec<u32>,
    /// The perturbation of 16 output rows ([`finish`]).
    tile: Vec<f32>,
}

/// `out[nz] = sigma[nz] * eps[i * n + j]` for each kept weight nz (input i, output j; pattern
/// order), eps being the standard normals that [`Sampler::noise_into`] draws for the whole
/// `[k, n]` kernel: the noise the dense kernel gets from the same stream, so a layer's
/// Monte Carlo draws do not depend on its kernel (pruned weights have sigma = 0 there). Only
/// the kept weights' normals are computed, by random access into the counter-based stream
/// ([`Sampler::noise_at_into`]).
pub(crate) fn kept_noise(s: &mut Sampler, csr: &Csr, sigma: &[f32], out: &mut [f32]) {
    let nnz = csr.nnz();
    assert!(sigma.len() >= nnz && out.len() >= nnz && csr.flat.len() == nnz, "kept noise: slices too short");
    s.noise_at_into(&csr.flat, &sigma[..nnz], &mut out[..nnz]);
}

/// Runs `job` into `out` (`[n * rows per example, units]`) on the transposed kernel.
pub(crate) fn forward(job: &Job, out: &mut [f32], ws: &mut Scratch) {
    let (k, u) = (job.csr.cols, job.csr.rows);
    let csr = job.csr;
    let rpe = job.conv.map_or(1, |w| w.output().iter().product());
    let cin = job.conv.map_or(k, |w| w.input[2]);
    let per = job.conv.map_or(k, |w| w.input.iter().product());
    let skip = if job.out_t { lead(out).min(out.len()) } else { 0 };
    let out = &mut out[skip..];
    let out_len = if job.out_t { transposed_len(job.n, u) } else { job.n * rpe * u };
    assert!(job.x.len() >= job.n * per && out.len() >= out_len && job.bias.len() >= u, "sparse layer: slices too short");
    let one = match job.base {
        Some(b) => job.a.is_none() != job.flip.is_none() && b.len() >= out_len,
        None => job.a.is_some() && one_product(job.flip.is_some()),
    };
    let bits = job.flip.is_none_or(|f| matches!(f.s_out, Signs::Bits(_)));
    assert!(!job.out_t || (job.conv.is_none() && one && bits), "sparse layer: a transposed output needs one product of a dense layer");
    if let Some(f) = job.flip {
        assert!(f.s_in.covers(job.n * cin) && f.s_out.covers(job.n * u), "sparse layer: too few signs");
    }
    // A given `X^T` is a dense layer's, whose input signs (if any) are bits: masks would need
    // the flipped copy made with it.
    assert!(job.xt.is_none() || (job.conv.is_none() && !matches!(job.flip, Some(Flip { s_in: Signs::Masks(_), .. }))), "sparse layer: a given X^T needs a dense layer with sign bits");
    let (Some(win), Some(flip)) = (job.conv, job.flip) else { return batched(job, csr, rpe, out, ws) };
    if rpe < PER_EXAMPLE_ROWS {
        return batched(job, csr, rpe, out, ws);
    }
    // One example at a time, its signs folded into its weights: the input signs are per
    // channel and the output signs per unit, the same on every patch row of the example, so
    // P @ mu + ((P * s_in) @ D) * s_out = P @ (mu + s_in * D * s_out): one product.
    ws.chan.clear();
    ws.chan.extend(job.csr.indices.iter().map(|&i| i % cin as u32));
    ws.signed.resize(job.csr.nnz(), 0.0);
    let xt = pad_columns(&mut ws.xt, k, rpe);
    let ya = ws.ya.get(panels_len(u, rpe));
    let (s_in, s_out) = (flip.s_in.conv_masks(), flip.s_out.conv_masks());
    for b in 0..job.n {
        patches_t(job.x, win, b, b + 1, &mut ws.patches, xt, None);
        let signs = (&s_in[b * cin..(b + 1) * cin], &s_out[b * u..(b + 1) * u]);
        fold_signs(job.a, flip.noise, &job.csr.indptr, &ws.chan, signs, &mut ws.signed);
        csr.spmm_t(xt, rpe, Pass::One(&ws.signed), ya);
        finish(job, b * rpe, rpe, rpe, Sums { mean: Some(ya), pert: None }, &mut ws.tile, out);
    }
}

/// `out[nz] = [a[nz] +] noise[nz] * s_in[chan[nz]] * s_out[j]` for the kept weights nz of
/// each output j (rows `indptr[j]..indptr[j + 1]`), the signs as XOR masks: an example's
/// Flipout weights of a convolution, both products in one.
fn fold_signs(a: Option<&[f32]>, noise: &[f32], indptr: &[usize], chan: &[u32], signs: (&[u32], &[u32]), out: &mut [f32]) {
    #[inline(always)]
    fn fold(a: Option<&[f32]>, noise: &[f32], indptr: &[usize], chan: &[u32], (s_in, s_out): (&[u32], &[u32]), out: &mut [f32]) {
        for (w, &so) in indptr.windows(2).zip(s_out) {
            let r = w[0]..w[1];
            let terms = out[r.clone()].iter_mut().zip(&noise[r.clone()]).zip(&chan[r.clone()]);
            match a {
                Some(a) => terms.zip(&a[r]).for_each(|(((d, &v), &ch), &m)| *d = m + f32::from_bits(v.to_bits() ^ s_in[ch as usize] ^ so)),
                None => terms.for_each(|((d, &v), &ch)| *d = f32::from_bits(v.to_bits() ^ s_in[ch as usize] ^ so)),
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn fold_avx2(a: Option<&[f32]>, noise: &[f32], indptr: &[usize], chan: &[u32], signs: (&[u32], &[u32]), out: &mut [f32]) {
        fold(a, noise, indptr, chan, signs, out)
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { fold_avx2(a, noise, indptr, chan, signs, out) };
    }
    fold(a, noise, indptr, chan, signs, out)
}

/// Transposed activations of `k` rows and `cols` columns in `buf`, whose padding columns (up
/// to the end of the last panel) are zero; the other values are for the caller to overwrite.
fn pad_columns(buf: &mut Aligned, k: usize, cols: usize) -> &mut [f32] {
    let buf = buf.get(panels_len(k, cols));
    let pad = cols.div_ceil(PANEL) * PANEL - cols;
    if pad > 0 {
        for i in 0..k {
            buf[at(k, i, cols)..at(k, i, cols) + pad].fill(0.0);
        }
    }
    buf
}

/// `X^T` of a dense layer's input `x` (`n` examples of `k` values) in the blocks that
/// [`forward`] runs: block `b` (examples `b * 256..`, [`BATCH_COLS`]) at `b * panels_len(k,
/// 256)`, in panels, padding columns zero. A first layer's input is the same for every Monte
/// Carlo sample: transposed once, each sample then only transposes its sign bits.
pub(crate) fn transposed_blocks(x: &[f32], n: usize, k: usize) -> Vec<f32> {
    let mut out = Vec::new();
    transposed_blocks_into(x, n, k, &mut out);
    out
}

/// [`transposed_blocks`] into `out` (resized to [`transposed_len`]).
pub(crate) fn transposed_blocks_into(x: &[f32], n: usize, k: usize, out: &mut Vec<f32>) {
    assert!(x.len() >= n * k, "transposed blocks: slices too short");
    let size = panels_len(k, BATCH_COLS);
    out.clear();
    out.resize(transposed_len(n, k), 0.0);
    for (b0, block) in (0..n).step_by(BATCH_COLS).zip(out.chunks_mut(size)) {
        transpose_block(x, k, b0, (b0 + BATCH_COLS).min(n), block, None);
    }
}

/// The rows (`[n, units]`) of values in [`transposed_blocks`]' layout.
pub(crate) fn rows_of_transposed_blocks(t: &[f32], n: usize, units: usize) -> Vec<f32> {
    assert!(t.len() >= transposed_len(n, units), "transposed rows: slices too short");
    let mut rows = vec![0f32; n * units];
    for (q, r0) in (0..n).step_by(PANEL).enumerate() {
        let cols = PANEL.min(n - r0);
        transpose_on(Isa::detect(), &t[q * units * PANEL..], None, PANEL, units, cols, &mut rows[r0 * units..], units);
    }
    rows
}

/// `X^T` of examples `b0..b1` of a dense layer's input (`k` values each) into `xt`, in panels
/// (a panel is a `[k, PANEL]` row-major matrix), and with `masks` (the input signs as XOR
/// masks, `[n, k]`) the sign-flipped copy into the second slice.
fn transpose_block(x: &[f32], k: usize, b0: usize, b1: usize, xt: &mut [f32], mut masks: Option<(&[u32], &mut [f32])>) {
    for (p, r0) in (b0..b1).step_by(PANEL).enumerate() {
        let r1 = (r0 + PANEL).min(b1);
        let xb = &x[r0 * k..r1 * k];
        transpose_into(xb, None, r1 - r0, k, &mut xt[p * k * PANEL..(p + 1) * k * PANEL], PANEL);
        if let Some((s, xs)) = masks.as_mut() {
            transpose_into(xb, Some(&s[r0 * k..r1 * k]), r1 - r0, k, &mut xs[p * k * PANEL..(p + 1) * k * PANEL], PANEL);
        }
    }
}

/// [`forward`] on blocks of whole examples (all their patch rows). A dense layer's Flipout
/// products with a mean product run as one ([`Pass::Signed`], its signs in sign panels);
/// otherwise the input signs, when any, are on a sign-flipped copy of the transposed
/// activations (made with them from masks, or from them and the sign panels of bits).
fn batched(job: &Job, csr: &Csr, rpe: usize, out: &mut [f32], ws: &mut Scratch) {
    let (k, u) = (job.csr.cols, job.csr.rows);
    let per_block = (BATCH_COLS / rpe.max(1)).max(1);
    let signed = match (job.conv, job.a, job.flip) {
        (None, Some(a), Some(Flip { noise, s_in: Signs::Bits(s_in), s_out: Signs::Bits(s_out) })) if one_product(true) => {
            ws.plus.clear();
            ws.plus.extend(a.iter().zip(noise).map(|(&m, &d)| m + d));
            ws.minus.clear();
            ws.minus.extend(a.iter().zip(noise).map(|(&m, &d)| m - d));
            Some((s_in, s_out))
        }
        _ => None,
    };
    for b0 in (0..job.n).step_by(per_block) {
        let b1 = (b0 + per_block).min(job.n);
        let cols = (b1 - b0) * rpe;
        let signs = job.flip.map(|f| f.s_in);
        let bits = match signs {
            Some(Signs::Bits(s)) => Some(s),
            _ => None,
        };
        // The sign-flipped copy: built with `xt` for masks, from the sign panels for bits
        // (every value, padding included, is written there).
        let xs = match (job.flip, bits) {
            _ if signed.is_some() => &mut [],
            (Some(_), None) => pad_columns(&mut ws.xs, k, cols),
            (Some(_), Some(_)) => ws.xs.get(panels_len(k, cols)),
            _ => &mut [],
        };
        let xt: &[f32] = match (job.conv, job.xt) {
            (Some(win), _) => {
                // Every column below `cols` is written below: only the padding is zeroed.
                let xt = pad_columns(&mut ws.xt, k, cols);
                patches_t(job.x, win, b0, b1, &mut ws.patches, xt, signs.map(|s| (&mut xs[..], s.conv_masks())));
                xt
            }
            (None, Some(t)) => &t[b0 / BATCH_COLS * panels_len(k, BATCH_COLS)..][..panels_len(k, cols)],
            (None, None) => {
                let xt = pad_columns(&mut ws.xt, k, cols);
                let masks = match signs {
                    Some(Signs::Masks(s)) => Some((s, &mut xs[..])),
                    _ => None,
                };
                transpose_block(job.x, k, b0, b1, xt, masks);
                xt
            }
        };
        if let (None, Some(s)) = (job.conv, bits) {
            ws.signs.resize(sign_panels_len(k, cols), 0);
            sign_panels_on(Isa::detect(), s, b0 * k, cols, k, &mut ws.signs);
            // The perturbation on a flipped copy, one load and fused multiply-add per vector
            // (signs applied in the kernel cost a vector operation more: 1.4-1.5x slower
            // without a mean product, session s10a, d935b5e).
            if signed.is_none() {
                flip_panels_on(Isa::detect(), xt, &ws.signs, k, cols, xs);
            }
        }
        // The block's output signs in sign panels, from bits.
        let out_sign_panels = |s_out: &[u64], out_signs: &mut Vec<u16>| {
            out_signs.resize(sign_panels_len(u, cols), 0);
            sign_panels_on(Isa::detect(), s_out, b0 * u, cols, u, out_signs);
        };
        let signed_pass = |y: &mut [f32], s_out: &[u64], out_signs: &mut Vec<u16>, then: Option<Epilogue>| {
            out_sign_panels(s_out, out_signs);
            let pass = Pass::Signed { plus: &ws.plus, minus: &ws.minus, s_in: &ws.signs, s_out: out_signs };
            csr.spmm_t_on(Isa::detect(), xt, cols, pass, then, y);
        };
        if job.out_t {
            // The product straight into its block of the transposed output (one product,
            // `forward` checked), the output pass applied before each vector is stored.
            let block = (b0 / BATCH_COLS) * panels_len(u, BATCH_COLS)..;
            let y = &mut out[block.clone()][..panels_len(u, cols)];
            let base = job.base.map(|b| &b[block][..panels_len(u, cols)]);
            let then = Epilogue { bias: job.bias, s_out: None, base, relu: job.relu };
            match (signed, job.a, job.flip) {
                (Some((_, s_out)), _, _) => signed_pass(y, s_out, &mut ws.out_signs, Some(then)),
                (None, Some(a), None) => csr.spmm_t_then(xt, cols, Pass::One(a), then, y),
                // Beside a shared mean product: the perturbation, its output signs applied
                // with the base.
                (None, None, Some(Flip { noise, s_out: Signs::Bits(s_out), .. })) => {
                    out_sign_panels(s_out, &mut ws.out_signs);
                    csr.spmm_t_then(xs, cols, Pass::One(noise), Epilogue { s_out: Some(&ws.out_signs), ..then }, y);
                }
                _ => unreachable!("checked by `forward`"),
            }
            continue;
        }
        let (ya, yb) = (ws.ya.get(panels_len(u, cols)), ws.yb.get(panels_len(u, cols)));
        let sums = match (job.a, job.flip, signed) {
            (_, _, Some((_, s_out))) => {
                signed_pass(ya, s_out, &mut ws.out_signs, None);
                Sums { mean: Some(ya), pert: None }
            }
            // A convolution's (or any, portably): two passes, each with one activation stream
            // (they ran 1.2-1.4x faster than one pass over both streams: two loads per pair
            // of fused multiply-adds).
            (Some(a), Some(f), None) => {
                csr.spmm_t(xt, cols, Pass::One(a), ya);
                csr.spmm_t(xs, cols, Pass::One(f.noise), yb);
                Sums { mean: Some(ya), pert: Some((yb, f.s_out)) }
            }
            (Some(a), None, None) => {
                csr.spmm_t(xt, cols, Pass::One(a), ya);
                Sums { mean: Some(ya), pert: None }
            }
            // The mean product is the job's `base` (a first layer's, shared by the samples).
            (None, Some(f), None) => {
                csr.spmm_t(xs, cols, Pass::One(f.noise), yb);
                Sums { mean: None, pert: Some((yb, f.s_out)) }
            }
            (None, None, None) => Sums { mean: None, pert: None },
        };
        finish(job, b0 * rpe, cols, rpe, sums, &mut ws.tile, out);
    }
}

/// What the transposed products (`[units, columns]` in panels, [`at`]) of a block of
/// [`batched`] or of an example hold, for [`finish`].
#[derive(Clone, Copy)]
struct Sums<'a> {
    /// The term added as it is: the mean product (with Flipout's perturbation and its signs
    /// folded in where they were: [`Pass::Signed`], [`fold_signs`]); `None` where the job's
    /// `base` holds the mean product.
    mean: Option<&'a [f32]>,
    /// Flipout's perturbation product before its output signs, and those signs (`[n, units]`).
    pert: Option<(&'a [f32], Signs<'a>)>,
}

/// Output rows `r0..r0 + cols` from the transposed products `sums` (column `c` = row
/// `r0 + c`): `base + mean + pert * s_out + bias`, each term where there is one, then the
/// ReLU. Strips of 16 rows: on AVX-512 each 16 x 16 block transposed and combined in
/// registers ([`finish_strip_avx512`]); else the mean's columns transposed straight into the
/// output rows and the perturbation's into a `[16, units]` tile in L1 ([`transpose_on`]), then
/// one pass along each row, where the output signs, bias and base lie in row-major order (no
/// per-column gathers of signs).
#[allow(clippy::too_many_arguments)]
fn finish(job: &Job, r0: usize, cols: usize, rpe: usize, sums: Sums, tile: &mut Vec<f32>, out: &mut [f32]) {
    let u = job.csr.rows;
    let isa = Isa::detect();
    let Sums { mean, pert } = sums;
    // One row's output signs as masks, where they are bits (the edge strip).
    let mut row_masks = Vec::new();
    // Whole 16-row strips on AVX-512: fused (below).
    #[cfg(target_arch = "x86_64")]
    let fused = isa == Isa::Avx512 && {
        // The bounds `finish_strip_avx512` relies on (the callers' shapes give them).
        let last = r0 + cols;
        let len = panels_len(u, cols);
        assert!(mean.is_none_or(|y| y.len() >= len) && pert.is_none_or(|(y, _)| y.len() >= len) && out.len() >= last * u && job.bias.len() >= u, "sparse output: slices too short");
        assert!(pert.is_none_or(|(_, s)| s.covers(last.div_ceil(rpe.max(1)) * u)) && job.base.is_none_or(|b| b.len() >= last * u), "sparse output: too few signs");
        true
    };
    for c0 in (0..cols).step_by(LANES) {
        let w = LANES.min(cols - c0);
        #[cfg(target_arch = "x86_64")]
        if fused && w == LANES {
            // SAFETY: AVX-512F is supported (detected); the bounds were checked above and
            // c0 + 16 <= cols.
            unsafe { finish_strip_avx512(job, r0 + c0, c0, rpe, sums, out) };
            continue;
        }
        let rows = &mut out[(r0 + c0) * u..(r0 + c0 + w) * u];
        // Unit j's values of these columns lie at `at(u, j, c0) = s0 + j * PANEL`.
        let s0 = at(u, 0, c0);
        // The first term straight into the rows; with both, the perturbation into the tile.
        match (mean, pert) {
            (Some(ya), Some((yb, _))) => {
                transpose_on(isa, &ya[s0..], None, PANEL, u, w, rows, u);
                tile.resize(w * u, 0.0);
                transpose_on(isa, &yb[s0..], None, PANEL, u, w, tile, u);
            }
            (None, Some((y, _))) | (Some(y), None) => transpose_on(isa, &y[s0..], None, PANEL, u, w, rows, u),
            (None, None) => {}
        }
        for (i, row) in rows.chunks_exact_mut(u.max(1)).enumerate() {
            let r = r0 + c0 + i;
            let bias = &job.bias[..u];
            let p0 = (r / rpe) * u;
            let s_row = match pert.map(|(_, s)| s) {
                None => None,
                Some(Signs::Masks(m)) => Some(&m[p0..p0 + u]),
                Some(bits @ Signs::Bits(_)) => {
                    row_masks.clear();
                    row_masks.extend((p0..p0 + u).map(|p| bits.mask(p)));
                    Some(&row_masks[..])
                }
            };
            match s_row {
                Some(s) if mean.is_some() => {
                    let pert = &tile[i * u..(i + 1) * u];
                    row.iter_mut().zip(pert).zip(s).zip(bias).for_each(|(((o, &p), &m), &b)| *o = b + *o + f32::from_bits(p.to_bits() ^ m));
                }
                Some(s) => row.iter_mut().zip(s).zip(bias).for_each(|((o, &m), &b)| *o = b + f32::from_bits(o.to_bits() ^ m)),
                None if mean.is_some() => row.iter_mut().zip(bias).for_each(|(o, &b)| *o += b),
                None => row.copy_from_slice(bias),
            }
            if let Some(base) = job.base {
                row.iter_mut().zip(&base[r * u..(r + 1) * u]).for_each(|(o, &m)| *o += m);
            }
            if job.relu {
                row.iter_mut().for_each(|o| *o = o.max(0.0));
            }
        }
    }
}

/// [`finish`] of output rows `r..r + 16` (columns `c0..c0 + 16` of the products) on AVX-512:
/// each 16 x 16 block of the products transposed in registers and combined there with the
/// output signs, bias, base and ReLU, one store per output vector (the rows and the
/// perturbation tile were written and read back before).
///
/// # Safety
/// AVX-512F is supported; the products in `sums` hold panels of `units` rows with column
/// `c0 + 15` in them;
/// `out` (and `job.base`) hold `(r + 16) * units` values, the output signs
/// `((r + 15) / rpe + 1) * units`, the bias `units`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn finish_strip_avx512(job: &Job, r: usize, c0: usize, rpe: usize, sums: Sums, out: &mut [f32]) {
    // One copy per kind of sums: the transposed blocks stay in registers (an `Option` of
    // them went to the stack, and the strip cost twice as much).
    // SAFETY: the caller's contract.
    unsafe {
        match sums {
            Sums { mean: Some(m), pert: Some((p, s)) } => strip::<true, true>(job, r, c0, rpe, m, p, Some(s), out),
            Sums { mean: Some(m), pert: None } => strip::<true, false>(job, r, c0, rpe, m, &[], None, out),
            Sums { mean: None, pert: Some((p, s)) } => strip::<false, true>(job, r, c0, rpe, &[], p, Some(s), out),
            Sums { mean: None, pert: None } => strip::<false, false>(job, r, c0, rpe, &[], &[], None, out),
        }
    }
}

/// [`finish_strip_avx512`] with a mean (`MEAN`) and a perturbation (`PERT`, output signs
/// `s_out`) or without.
///
/// # Safety
/// As [`finish_strip_avx512`]'s, for the products given.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn strip<const MEAN: bool, const PERT: bool>(job: &Job, r: usize, c0: usize, rpe: usize, ya: &[f32], yb: &[f32], s_out: Option<Signs>, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let u = job.csr.rows;
    let ub = u / TB * TB;
    let sign_of = |m: u32, v: f32| f32::from_bits(v.to_bits() ^ m);
    // SAFETY: every offset below is inside the slices by the contract above.
    unsafe {
        let (zero, sign) = (_mm512_setzero_ps(), _mm512_set1_epi32(i32::MIN));
        // 16 units' values of column block c0 from `y`, transposed: [i] = output row r + i.
        let block = |y: &[f32], j0: usize| {
            let mut v = [zero; TB];
            for (l, v) in v.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(y.as_ptr().add(at(u, j0 + l, c0)));
            }
            t16(v)
        };
        for j0 in (0..ub).step_by(TB) {
            let ta = if MEAN { block(ya, j0) } else { [zero; TB] };
            let tb = if PERT { block(yb, j0) } else { [zero; TB] };
            let bias = _mm512_loadu_ps(job.bias.as_ptr().add(j0));
            for i in 0..TB {
                let row = r + i;
                // The same order of additions as the row pass: bias + mean + perturbation.
                let mut o = if MEAN { _mm512_add_ps(bias, ta[i]) } else { bias };
                if let (true, Some(s_out)) = (PERT, s_out) {
                    let (p, y) = ((row / rpe) * u + j0, _mm512_castps_si512(tb[i]));
                    let pert = _mm512_castsi512_ps(match s_out {
                        Signs::Masks(m) => _mm512_xor_si512(y, _mm512_loadu_si512(m.as_ptr().add(p).cast())),
                        Signs::Bits(b) => _mm512_mask_xor_epi32(y, bits16(b, p), y, sign),
                    });
                    o = _mm512_add_ps(o, pert);
                }
                if let Some(base) = job.base {
                    o = _mm512_add_ps(o, _mm512_loadu_ps(base.as_ptr().add(row * u + j0)));
                }
                if job.relu {
                    o = _mm512_max_ps(o, zero);
                }
                _mm512_storeu_ps(out.as_mut_ptr().add(row * u + j0), o);
            }
        }
        // The last units (fewer than 16) by value.
        for i in 0..TB {
            let row = r + i;
            for j in ub..u {
                let mut o = *job.bias.get_unchecked(j);
                if MEAN {
                    o += *ya.get_unchecked(at(u, j, c0) + i);
                }
                if let (true, Some(s_out)) = (PERT, s_out) {
                    o += sign_of(s_out.mask((row / rpe) * u + j), *yb.get_unchecked(at(u, j, c0) + i));
                }
                if let Some(base) = job.base {
                    o += *base.get_unchecked(row * u + j);
                }
                if job.relu {
                    o = o.max(0.0);
                }
                *out.get_unchecked_mut(row * u + j) = o;
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

#[cfg(test)]
mod transposed_tests {
    use super::*;
    use crate::arch::Padding;
    use crate::engine::conv::im2col;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = formats::synthetic::SplitMix64(seed);
        (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
    }

    /// A `[k, n]` kernel with about `kept` of its weights nonzero, and its CSR pattern.
    fn pruned(k: usize, n: usize, kept: f32, seed: u64) -> (Vec<f32>, Csr) {
        let w: Vec<f32> = values(k * n, seed).iter().map(|&v| if v.abs() < 1.0 - kept { 0.0 } else { v }).collect();
        let csr = Csr::from_mask(n, k, |i| w[(i % k) * n + i / k] != 0.0);
        (w, csr)
    }

    /// The kept values of W (`[k, n]`) in pattern order.
    fn kept(csr: &Csr, w: &[f32]) -> Vec<f32> {
        (0..csr.rows).flat_map(|j| csr.indices[csr.indptr[j]..csr.indptr[j + 1]].iter().map(move |&i| w[i as usize * csr.rows + j])).collect()
    }

    fn isas() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        if Isa::detect() != Isa::Portable {
            v.push(Isa::Avx2);
        }
        if Isa::detect() == Isa::Avx512 {
            v.push(Isa::Avx512);
        }
        v
    }

    /// Random sign words covering bits `0..bit0 + len`.
    fn sign_words(bit0: usize, len: usize, seed: u64) -> Vec<u64> {
        let mut rng = formats::synthetic::SplitMix64(seed);
        (0..(bit0 + len).div_ceil(64)).map(|_| rng.next_u64()).collect()
    }

    /// Bit `p` of `bits`.
    fn bit(bits: &[u64], p: usize) -> bool {
        (bits[p / 64] >> (p % 64)) & 1 == 1
    }

    #[test]
    fn sign_panels_are_the_transposed_bits_on_every_isa() {
        // Whole 16 x 16 blocks and edges in both directions (columns and rows not multiples
        // of 16, columns past a panel), sign bits starting mid-word, 16-bit windows that
        // straddle two words; rows on 32-bit words (AVX-512 gathers them), a partial last
        // column block among them.
        for (cols, k, bit0) in [(1, 1, 0), (16, 16, 0), (45, 37, 5), (130, 64, 63), (360, 256, 0), (17, 100, 17), (256, 10, 64), (200, 33, 3), (45, 64, 32), (33, 96, 64), (7, 32, 96)] {
            let bits = sign_words(bit0, cols * k, 6);
            for isa in isas() {
                let mut dst = vec![0xA5A5u16; sign_panels_len(k, cols)];
                sign_panels_on(isa, &bits, bit0, cols, k, &mut dst);
                for i in 0..k {
                    for c in (0..cols).step_by(LANES) {
                        let want = (0..LANES).filter(|l| c + l < cols && bit(&bits, bit0 + (c + l) * k + i)).fold(0u16, |m, l| m | 1 << l);
                        assert_eq!(dst[sign_at(k, i, c)], want, "{isa:?} {cols}x{k}+{bit0}: row {i}, columns {c}..");
                    }
                }
            }
        }
    }

    #[test]
    fn flipped_panels_are_the_activations_times_their_signs_on_every_isa() {
        for (k, cols) in [(1, 1), (37, 45), (64, 130), (10, 300)] {
            let x = values(panels_len(k, cols), 7);
            let bits = sign_words(3, cols * k, 8);
            let mut signs = vec![0u16; sign_panels_len(k, cols)];
            sign_panels_on(Isa::Portable, &bits, 3, cols, k, &mut signs);
            for isa in isas() {
                let mut dst = vec![f32::NAN; x.len()];
                flip_panels_on(isa, &x, &signs, k, cols, &mut dst);
                for i in 0..k {
                    for c in 0..cols {
                        let v = x[at(k, i, c)];
                        let want = if bit(&bits, 3 + c * k + i) { -v } else { v };
                        assert_eq!(dst[at(k, i, c)].to_bits(), want.to_bits(), "{isa:?} {k}x{cols}: [{i}, {c}]");
                    }
                }
            }
        }
    }

    #[test]
    fn transposed_kernel_matches_a_direct_f64_product() {
        // Several chunks of inputs (some empty at 5% kept; at 2%, the last chunk of 2 inputs
        // is empty in most rows, whose epilogue must still run), column blocks and panels.
        for (k, n, cols, kept_frac) in [(7, 5, 1, 0.5), (33, 9, 17, 0.3), (64, 20, 100, 0.7), (50, 3, 200, 0.1), (10, 4, 64, 1.0), (150, 6, 280, 0.3), (300, 5, 130, 0.05), (130, 8, 40, 0.02)] {
            let (wa, csr) = pruned(k, n, kept_frac, 1);
            // A second kernel on the same pattern (the perturbation: pruned where mu is).
            let wb: Vec<f32> = wa.iter().zip(values(k * n, 2)).map(|(&a, b)| if a == 0.0 { 0.0 } else { b }).collect();
            let (a, b) = (kept(&csr, &wa), kept(&csr, &wb));
            let mut x = values(panels_len(k, cols), 3);
            // Padding columns: whatever they hold must not reach the real columns.
            x.iter_mut().enumerate().filter(|(i, _)| (i / (k * PANEL)) * PANEL + i % PANEL >= cols).for_each(|(_, v)| *v = 1e30);
            // Input and output signs of every column ([cols, k] and [cols, n] bits, from bit 5).
            let (in_bits, out_bits) = (sign_words(5, cols * k, 4), sign_words(5, cols * n, 5));
            let (mut s_in, mut s_out) = (vec![0u16; sign_panels_len(k, cols)], vec![0u16; sign_panels_len(n, cols)]);
            sign_panels_on(Isa::Portable, &in_bits, 5, cols, k, &mut s_in);
            sign_panels_on(Isa::Portable, &out_bits, 5, cols, n, &mut s_out);
            let direct = |j: usize, c: usize, signed: bool| {
                (0..k)
                    .map(|i| {
                        let w = if !signed || bit(&in_bits, 5 + c * k + i) == bit(&out_bits, 5 + c * n + j) { wa[i * n + j] } else { wb[i * n + j] };
                        f64::from(w) * f64::from(x[at(k, i, c)])
                    })
                    .sum::<f64>()
            };
            // Epilogues: bias, output signs (of a plain pass), base and ReLU, or bias alone.
            let (bias, base) = (values(n, 6), values(panels_len(n, cols), 7));
            for isa in isas() {
                for pass in [Pass::One(&a), Pass::Signed { plus: &a, minus: &b, s_in: &s_in, s_out: &s_out }] {
                    let signed = matches!(pass, Pass::Signed { .. });
                    let mut y = vec![0f32; panels_len(n, cols)];
                    csr.spmm_t_on(isa, &x, cols, pass, None, &mut y);
                    for j in 0..n {
                        for c in 0..cols {
                            let want = direct(j, c, signed);
                            let got = y[at(n, j, c)];
                            assert!((f64::from(got) - want).abs() < 1e-5, "{isa:?} {k}x{n} signed {signed} [{j}, {c}]: {got} vs {want}");
                        }
                    }
                    let full = Epilogue { bias: &bias, s_out: (!signed).then_some(&s_out[..]), base: Some(&base), relu: true };
                    for then in [full, Epilogue { bias: &bias, s_out: None, base: None, relu: false }] {
                        let mut z = vec![0f32; panels_len(n, cols)];
                        csr.spmm_t_on(isa, &x, cols, pass, Some(then), &mut z);
                        for (j, &bj) in bias.iter().enumerate() {
                            for c in 0..cols {
                                let o = at(n, j, c);
                                let flip = then.s_out.is_some() && bit(&out_bits, 5 + c * n + j);
                                // The sums above with the epilogue applied after them, in its order.
                                let mut v = bj + if flip { -y[o] } else { y[o] };
                                if then.base.is_some() {
                                    v += base[o];
                                }
                                let want = if then.relu { v.max(0.0) } else { v };
                                assert_eq!(z[o].to_bits(), want.to_bits(), "{isa:?} {k}x{n} signed {signed} {then:?} [{j}, {c}]");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn transposes_match_the_definition_on_every_path() {
        // Whole 16 x 16 blocks and every kind of edge, row strides wider than the rows, with
        // and without sign masks.
        for (rows, cols, ld_s, ld_d) in [(1, 1, 1, 1), (16, 16, 16, 16), (33, 47, 50, 40), (10, 256, 300, 16), (256, 10, 10, 256), (17, 31, 31, 17), (48, 64, 64, 100)] {
            let src = values(rows * ld_s, 21);
            let mask: Vec<u32> = (0..rows * ld_s).map(|i| if (i * 7) % 3 == 0 { 1 << 31 } else { 0 }).collect();
            for isa in isas() {
                for m in [None, Some(&mask[..])] {
                    let mut dst = vec![f32::NAN; cols * ld_d];
                    transpose_on(isa, &src, m, ld_s, rows, cols, &mut dst, ld_d);
                    for r in 0..ld_d {
                        for c in 0..cols {
                            let got = dst[c * ld_d + r];
                            if r >= rows {
                                assert!(got.is_nan(), "{isa:?} {rows}x{cols}: ({r}, {c}) beyond the rows was written");
                                continue;
                            }
                            let v = f64::from(src[r * ld_s + c]);
                            let want = if m.is_some() && mask[r * ld_s + c] != 0 { -v } else { v };
                            assert_eq!(f64::from(got), want, "{isa:?} {rows}x{cols} masked {}: ({r}, {c})", m.is_some());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn kept_noise_is_the_dense_draw_at_the_kept_weights() {
        // Kernels whose flat sizes end in every kind of tail of the 16-value steps.
        for (k, n, kept_frac) in [(64, 256, 0.56), (7, 5, 0.5), (33, 9, 0.3), (256, 10, 0.23)] {
            let (w, csr) = pruned(k, n, kept_frac, 31);
            let sigma_dense: Vec<f32> = w.iter().zip(values(k * n, 32)).map(|(&a, s)| if a == 0.0 { 0.0 } else { s.abs() + 0.1 }).collect();
            let sigma = kept(&csr, &sigma_dense);
            let mut got = vec![0f32; csr.nnz()];
            kept_noise(&mut Sampler::new(9, 4), &csr, &sigma, &mut got);
            let dense = Sampler::new(9, 4).noise(&sigma_dense);
            assert_eq!(got, kept(&csr, &dense), "{k}x{n}");
        }
    }

    #[test]
    fn transposed_patches_are_im2col_transposed() {
        let geoms = [
            ([5, 5, 3], [3, 3], [1, 1], Padding::Same),
            ([6, 7, 2], [3, 3], [1, 1], Padding::Valid),
            ([7, 6, 2], [3, 2], [2, 2], Padding::Same),
            ([8, 8, 1], [5, 5], [2, 1], Padding::Valid),
            ([4, 4, 4], [5, 5], [1, 1], Padding::Same),
            ([3, 3, 2], [2, 2], [1, 2], Padding::Same),
        ];
        for (input, size, strides, padding) in geoms {
            let win = Window { input, size, strides, padding };
            let n = 3;
            let [oh, ow] = win.output();
            let (r, k, c) = (oh * ow, size[0] * size[1] * input[2], input[2]);
            let x = values(n * input.iter().product::<usize>(), 5);
            let p = im2col(&x, n, &win);
            let mut signs = Vec::new();
            crate::engine::sampler::Sampler::new(1, 1).sign_masks_into(n * c, &mut signs);
            // Examples 1..3 into one block.
            let (mut xt, mut xs) = (vec![9f32; panels_len(k, 2 * r)], vec![9f32; panels_len(k, 2 * r)]);
            patches_t(&x, &win, 1, 3, &mut PatchScratch::default(), &mut xt, Some((&mut xs, &signs)));
            // Without the signed copy (straight into the panels where the geometry allows).
            let mut alone = vec![7f32; xt.len()];
            patches_t(&x, &win, 1, 3, &mut PatchScratch::default(), &mut alone, None);
            let real = |i: usize| (i / (k * PANEL)) * PANEL + i % PANEL < 2 * r;
            assert!(alone.iter().zip(&xt).enumerate().all(|(i, (a, b))| !real(i) || a == b), "{win:?} without signs");
            for i in 0..k {
                for col in 0..2 * r {
                    let (b, pos) = (1 + col / r, col % r);
                    let want = p[(b * r + pos) * k + i];
                    assert_eq!(xt[at(k, i, col)], want, "{win:?} entry {i} column {col}");
                    let flip = if signs[b * c + i % c] != 0 { -1.0 } else { 1.0 };
                    assert_eq!(xs[at(k, i, col)], flip * want, "{win:?} signed entry {i} column {col}");
                }
            }
        }
    }

    /// The definition of a pruned Flipout layer, in f64: dense `[k, n]` mu and noise (zero
    /// where pruned), patches from im2col, signs as masks.
    #[allow(clippy::too_many_arguments)]
    fn reference(p: &[f32], rpe: usize, k: usize, n: usize, mu: &[f32], noise: &[f32], s_in: &[u32], cin: usize, s_out: &[u32], bias: &[f32], base: Option<&[f32]>, use_mu: bool, relu: bool) -> Vec<f64> {
        let sign = |m: u32| if m == 0 { 1.0 } else { -1.0 };
        let rows = p.len() / k;
        let mut out = Vec::with_capacity(rows * n);
        for r in 0..rows {
            let b = r / rpe;
            for j in 0..n {
                let mut v = f64::from(bias[j]) + base.map_or(0.0, |m| f64::from(m[r * n + j]));
                let mut pert = 0.0;
                for i in 0..k {
                    let x = f64::from(p[r * k + i]);
                    if use_mu {
                        v += x * f64::from(mu[i * n + j]);
                    }
                    pert += x * sign(s_in[b * cin + i % cin]) * f64::from(noise[i * n + j]);
                }
                v += pert * sign(s_out[b * n + j]);
                out.push(if relu { v.max(0.0) } else { v });
            }
        }
        out
    }

    #[test]
    fn pruned_flipout_layers_match_the_definition() {
        // Convs with many output positions (one example at a time, signs on the noise) and
        // with few (blocks of examples, signs on the activations), SAME and VALID, strides;
        // dense layers; with and without the mean product (a first layer's shared mean).
        let convs = [
            Some(Window { input: [12, 12, 3], size: [3, 3], strides: [1, 1], padding: Padding::Same }),
            Some(Window { input: [11, 9, 2], size: [3, 3], strides: [1, 1], padding: Padding::Valid }),
            Some(Window { input: [17, 17, 4], size: [5, 5], strides: [2, 2], padding: Padding::Same }),
            Some(Window { input: [4, 4, 5], size: [3, 3], strides: [1, 1], padding: Padding::Same }),
            Some(Window { input: [5, 6, 3], size: [2, 2], strides: [2, 1], padding: Padding::Valid }),
            None,
        ];
        for conv in convs {
            // Dense: more examples than a panel holds, and than a block of BATCH_COLS.
            let nb = if conv.is_some() { 5 } else { 300 };
            // Units: a tail only, and whole 16-unit blocks plus a tail (fused output pass).
            let (k, units) = match conv {
                Some(w) => (w.size[0] * w.size[1] * w.input[2], if w.input[0] > 10 { 21 } else { 7 }),
                None => (40, 37),
            };
            let (rpe, cin, per) = match conv {
                Some(w) => (w.output().iter().product::<usize>(), w.input[2], w.input.iter().product::<usize>()),
                None => (1, k, k),
            };
            let (mu, csr) = pruned(k, units, 0.3, 11);
            let sigma: Vec<f32> = mu.iter().zip(values(k * units, 12)).map(|(&m, s)| if m == 0.0 { 0.0 } else { s }).collect();
            let x = values(nb * per, 13);
            let p = match &conv {
                Some(w) => im2col(&x, nb, w),
                None => x.clone(),
            };
            let mut sampler = crate::engine::sampler::Sampler::new(3, 4);
            let (mut s_in, mut s_out) = (Vec::new(), Vec::new());
            sampler.sign_masks_into(nb * cin, &mut s_in);
            sampler.sign_masks_into(nb * units, &mut s_out);
            // The same signs as bits (same stream), which dense layers take.
            let (mut in_bits, mut out_bits) = (Vec::new(), Vec::new());
            let mut again = crate::engine::sampler::Sampler::new(3, 4);
            again.sign_bits_into(nb * cin, &mut in_bits);
            again.sign_bits_into(nb * units, &mut out_bits);
            let masks = (Signs::Masks(&s_in), Signs::Masks(&s_out));
            let forms = if conv.is_some() { vec![masks] } else { vec![masks, (Signs::Bits(&in_bits), Signs::Bits(&out_bits))] };
            let bias = values(units, 14);
            let base = values(nb * rpe * units, 15);
            let (a, d) = (kept(&csr, &mu), kept(&csr, &sigma));
            for (form, (use_mu, with_base, relu)) in forms.iter().flat_map(|f| [(true, false, false), (true, false, true), (false, true, false), (false, true, true)].map(|c| (*f, c))) {
                let want = reference(&p, rpe, k, units, &mu, &sigma, &s_in, cin, &s_out, &bias, with_base.then_some(&base[..]), use_mu, relu);
                let job = Job {
                    csr: &csr,
                    conv: conv.as_ref(),
                    x: &x,
                    n: nb,
                    a: use_mu.then_some(&a[..]),
                    flip: Some(Flip { noise: &d, s_in: form.0, s_out: form.1 }),
                    base: with_base.then_some(&base[..]),
                    xt: None,
                    bias: &bias,
                    relu,
                    out_t: false,
                };
                let mut out = vec![f32::NAN; nb * rpe * units];
                forward(&job, &mut out, &mut Scratch::default());
                for (i, (g, w)) in out.iter().zip(&want).enumerate() {
                    assert!((f64::from(*g) - w).abs() < 1e-5, "{conv:?} {form:?} mu {use_mu} relu {relu}: output {i}: {g} vs {w}");
                }
                // A dense layer with sign bits on `X^T` transposed once (a first layer's):
                // the same outputs bit for bit.
                if let (None, Signs::Bits(_)) = (conv, form.0) {
                    let xt = transposed_blocks(&x, nb, k);
                    let mut again = vec![f32::NAN; out.len()];
                    forward(&Job { xt: Some(&xt), ..job }, &mut again, &mut Scratch::default());
                    assert!(again.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()), "mu {use_mu} relu {relu}: given X^T");
                }
            }
            // Without a perturbation (mean network): x @ mu + bias.
            let job = Job { csr: &csr, conv: conv.as_ref(), x: &x, n: nb, a: Some(&a), flip: None, base: None, xt: None, bias: &bias, relu: false, out_t: false };
            let mut out = vec![f32::NAN; nb * rpe * units];
            forward(&job, &mut out, &mut Scratch::default());
            let zero = vec![0f32; k * units];
            let want = reference(&p, rpe, k, units, &mu, &zero, &s_in, cin, &s_out, &bias, None, true, false);
            assert!(out.iter().zip(&want).all(|(g, w)| (f64::from(*g) - w).abs() < 1e-5), "{conv:?}: mean network");
        }
    }
}
