//! Activations and signs in the transposed kernel's layout: 16 x 16 transposes between rows
//! and panels, and sign bits gathered into sign panels.

use super::*;

/// `dst[c * ld + r] = src[r * cols + c]` for `r < rows`, `c < cols` (XOR-ed with
/// `mask[r * cols + c]` when given: Flipout's sign masks), 16 x 16 blocks in registers.
pub fn transpose_into(src: &[f32], mask: Option<&[u32]>, rows: usize, cols: usize, dst: &mut [f32], ld: usize) {
    transpose_on(Isa::detect(), src, mask, cols, rows, cols, dst, ld)
}

/// `dst[c * ld_d + r] = src[r * ld_s + c]` (XOR-ed with `mask[r * ld_s + c]` when given) for
/// `r < rows`, `c < cols`, on a given instruction set (an unsupported one steps down,
/// [`Isa::supported`]; every one gives the same values):
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
    match isa.supported() {
        // SAFETY: AVX-512F is supported (detected); the bounds were checked above.
        Isa::Avx512 => return unsafe { transpose_avx512(src, mask, ld_s, rows, cols, dst, ld_d) },
        // SAFETY: AVX2 is supported (detected).
        Isa::Avx2 => return unsafe { transpose_avx2(src, mask, ld_s, rows, cols, dst, ld_d) },
        Isa::Portable => {}
    }
    transpose_tiles(src, mask, ld_s, rows, cols, dst, ld_d, 0, 0);
}

/// Side of the blocks of [`transpose_on`].
pub(super) const TB: usize = 16;

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
pub(super) fn t16(mut v: [std::arch::x86_64::__m512; TB]) -> [std::arch::x86_64::__m512; TB] {
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
pub(super) fn sign_bit(bits: &[u64], p: usize) -> u32 {
    (((bits[p / 64] >> (p % 64)) & 1) as u32) << 31
}

/// Bits `p..p + 16` of `bits`: the lane mask of 16 values' signs.
#[inline(always)]
pub(super) fn bits16(bits: &[u64], p: usize) -> u16 {
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
    if isa.supported() == Isa::Avx512 {
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
