//! The transposed kernel ([`Csr::spmm_t`]): its vector operations once per instruction set,
//! the product over the kept weights, and the sign-flipped copies of activation panels.

use super::*;

/// 16 floats in registers: the operations the transposed kernel (and the direct one,
/// [`super::direct`]) is written in, once for every instruction set.
pub(super) trait Vector: Copy {
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
pub(super) struct Avx2(std::arch::x86_64::__m256, std::arch::x86_64::__m256);

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
pub(super) struct Avx512(std::arch::x86_64::__m512);

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
/// unsupported one steps down, [`Isa::supported`]). Padding columns are flipped like the others.
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
        match isa.supported() {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => flip_avx512(x, signs, vectors, dst),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => flip_avx2(x, signs, vectors, dst),
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
    /// [`Csr::spmm_t`]). An unsupported one steps down ([`Isa::supported`]).
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
        // SAFETY: every bound of `spmm`'s contract was checked above (the pattern's hold by
        // construction, `Csr::from_mask`); the instruction set is one the CPU supports (detected).
        unsafe {
            match isa.supported() {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => spmm_avx512(csr, op, &pass),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => spmm_avx2(csr, op, &pass),
                _ => spmm_any::<[f32; LANES]>(csr, op, &pass),
            }
        }
    }
}
