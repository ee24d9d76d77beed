//! The columns where either row of a pair of row-major activation rows is not zero: what a
//! product skips the shared zeros of a ReLU's output with ([`super::dense::flipout_dense`]).
//! Half of a hidden layer's activations are zeros, so a quarter of a pair's columns would be
//! zero in both rows if the rows were independent; a unit's zeros follow the input, and on
//! BNN-FC's hidden layer 38% are.

use super::sampler::sign_bits_at;
#[cfg(target_arch = "x86_64")]
use super::sampler::with_flips_avx512;

/// Rows `2 i` and `2 i + 1` of an `[m, k]` row-major `x` as pair `i` (an odd last row pairs
/// with a row of zeros): the columns where either is not zero, in order, with both rows'
/// values there, in `x` and flipped by Flipout's input signs (`y = x * s_in`, made here
/// from the signs' bits: no flipped copy of `x` is written). Each row's two values of a
/// column lie side by side, `(x, y)`: one 64-bit broadcast gives a product both
/// ([`super::dense::flipout_dense`]'s pairs kernel).
#[derive(Debug, Default)]
pub struct RowPairs {
    /// The columns (`cap` values), then the first row's `(x, y)` values (bits) of each
    /// column side by side (`2 cap`), then the second row's (`2 cap`).
    data: Vec<u32>,
    /// Positions room is made for: the columns' length (each row's values take twice it).
    cap: usize,
    /// Columns.
    k: usize,
    /// Where pair `i`'s columns from `16 g` on start, `g = 0..groups` (`groups` = k / 16
    /// rounded up, at least 1), at `i * groups + g`; the next pair's first is this one's end.
    splits: Vec<usize>,
}

/// One row of a pair: its values and where its signs start in the sign words.
#[derive(Clone, Copy)]
struct Row<'a> {
    x: &'a [f32],
    signs: &'a [u64],
    bit0: usize,
}

/// Lane indices that weave two vectors of 16 (the second's lanes numbered 16..32): the first
/// halves' lanes `a0, b0, a1, b1, ...`, then the second halves'.
pub(crate) const WEAVE: [[i32; 16]; 2] = {
    let mut idx = [[0; 16]; 2];
    let mut i = 0;
    while i < 16 {
        idx[i / 8][2 * (i % 8)] = i as i32;
        idx[i / 8][2 * (i % 8) + 1] = i as i32 + 16;
        i += 1;
    }
    idx
};

/// Length of [`RowPairs::data`] in units of its `cap`.
const ARRAYS: usize = 5;

/// Extra room at the end of each array: the vector fill stores whole vectors.
const ROOM: usize = 16;

/// Columns per split point: one vector of the fill.
const GROUP: usize = 16;

impl RowPairs {
    /// Refills from `x` (`[m, k]`) and its signs `s_in` (bit g of word g / 64 for value g,
    /// set: -1, as [`super::sampler::Sampler::sign_bits_into`] draws them); returns the
    /// number of columns kept, summed over the pairs. A column is kept where either row's `x`
    /// is not zero (NaN included).
    ///
    /// # Panics
    /// When `x` holds fewer than `m * k` values or `s_in` fewer bits, or k does not fit in a
    /// `u32`.
    pub fn fill(&mut self, x: &[f32], s_in: &[u64], m: usize, k: usize) -> usize {
        #[cfg(target_arch = "x86_64")]
        let vector = std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("popcnt");
        #[cfg(not(target_arch = "x86_64"))]
        let vector = false;
        self.fill_on(x, s_in, m, k, vector)
    }

    /// [`RowPairs::fill`], packing each pair with AVX-512 and POPCNT when `vector` (which the
    /// CPU must support) or portably.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    fn fill_on(&mut self, x: &[f32], s_in: &[u64], m: usize, k: usize, vector: bool) -> usize {
        assert!(x.len() >= m * k && s_in.len() * 64 >= m * k, "row pairs: slices shorter than {m}x{k}");
        assert!(u32::try_from(k).is_ok(), "row pairs: {k} columns");
        self.cap = self.cap.max(m.div_ceil(2) * k + ROOM);
        if self.data.len() < ARRAYS * self.cap {
            self.data.resize(ARRAYS * self.cap, 0);
        }
        self.k = k;
        self.splits.clear();
        // An odd last row's partner: zeros, unflipped (its signs: the zero words).
        let zeros = vec![0f32; if m % 2 == 1 { k } else { 0 }];
        let no_signs = vec![0u64; if m % 2 == 1 { k.div_ceil(64) + 1 } else { 0 }];
        let mut n = 0;
        for i in 0..m.div_ceil(2) {
            let a = Row { x: &x[2 * i * k..][..k], signs: s_in, bit0: 2 * i * k };
            let b = if 2 * i + 1 < m { Row { x: &x[(2 * i + 1) * k..][..k], signs: s_in, bit0: (2 * i + 1) * k } } else { Row { x: &zeros, signs: &no_signs, bit0: 0 } };
            #[cfg(target_arch = "x86_64")]
            if vector {
                // SAFETY: AVX-512F and POPCNT are present (the caller's word, from detection); each array
                // holds `n + k + ROOM` values.
                n = unsafe { self.pair_avx512(a, b, n) };
                continue;
            }
            n = self.pair_portable(a, b, n);
        }
        self.splits.push(n);
        n
    }

    /// Appends one pair's columns from position `n` (and its split points), without a
    /// branch per column (which columns are kept follows no order a predictor could
    /// learn); returns the new end.
    fn pair_portable(&mut self, a: Row, b: Row, mut n: usize) -> usize {
        let cap = self.cap;
        for p in 0..a.x.len() {
            if p % GROUP == 0 {
                self.splits.push(n);
            }
            self.data[n] = p as u32;
            for (r, row) in [a, b].into_iter().enumerate() {
                self.data[value_at(cap, 2 * r, n)] = row.x[p].to_bits();
                self.data[value_at(cap, 2 * r + 1, n)] = row.x[p].to_bits() ^ (sign_bits_at(row.signs, row.bit0 + p, 1) as u32 & 1) << 31;
            }
            n += usize::from(a.x[p] != 0.0 || b.x[p] != 0.0);
        }
        if a.x.is_empty() {
            self.splits.push(n);
        }
        n
    }

    /// [`RowPairs::pair_portable`] 16 columns at a time: each vector's kept lanes packed
    /// together (`vcompressps` into a register) and stored whole at `n`, each row's `x` and
    /// `y` woven into `(x, y)` pairs (two permutes, two stores).
    ///
    /// # Safety
    /// The CPU supports AVX-512F and POPCNT; `cap >= n + a.x.len() + ROOM`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,popcnt")]
    unsafe fn pair_avx512(&mut self, a: Row, b: Row, mut n: usize) -> usize {
        use std::arch::x86_64::*;
        let k = a.x.len();
        debug_assert!(b.x.len() == k && self.cap >= n + k + ROOM && self.data.len() >= ARRAYS * self.cap);
        let (cap, data) = (self.cap, self.data.as_mut_ptr());
        let step = _mm512_set1_epi32(GROUP as i32);
        // Lanes 0..8 and 8..16 of two vectors woven: x0, y0, x1, y1, ...
        let [low, high] = WEAVE.map(|i| _mm512_loadu_si512(i.as_ptr().cast()));
        let mut iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        if k == 0 {
            self.splits.push(n);
        }
        let mut p = 0;
        // SAFETY: loads within the rows (the last vector masked to them); each store of 16
        // columns at `n <= n0 + p` stays within `n0 + k + ROOM` of its array, each of 32
        // woven values at `2 n` within `2 (n0 + k + ROOM)` of its.
        unsafe {
            while p < k {
                self.splits.push(n);
                let live: __mmask16 = if k - p >= GROUP { !0 } else { (1u16 << (k - p)) - 1 };
                // Not a closure over [a, b]: it was not inlined, and its vectors went through
                // the stack (a third of the packing's time).
                let rows = [with_flips_avx512(a.x.as_ptr().add(p), live, a.signs, a.bit0 + p), with_flips_avx512(b.x.as_ptr().add(p), live, b.signs, b.bit0 + p)];
                let zero = _mm512_setzero_ps();
                let keep = _mm512_mask_cmp_ps_mask::<_CMP_NEQ_UQ>(live, rows[0][0], zero) | _mm512_mask_cmp_ps_mask::<_CMP_NEQ_UQ>(live, rows[1][0], zero);
                _mm512_storeu_si512(data.add(n).cast(), _mm512_maskz_compress_epi32(keep, iota));
                for (row, &[x, y]) in rows.iter().enumerate() {
                    let [x, y] = [x, y].map(|v| _mm512_maskz_compress_epi32(keep, _mm512_castps_si512(v)));
                    let at = data.add(value_at(cap, 2 * row, n));
                    _mm512_storeu_si512(at.cast(), _mm512_permutex2var_epi32(x, low, y));
                    _mm512_storeu_si512(at.add(GROUP).cast(), _mm512_permutex2var_epi32(x, high, y));
                }
                n += keep.count_ones() as usize;
                iota = _mm512_add_epi32(iota, step);
                p += GROUP;
            }
        }
        n
    }

    /// Split points per pair.
    fn groups(&self) -> usize {
        self.k.div_ceil(GROUP).max(1)
    }

    /// Pairs filled.
    pub fn pairs(&self) -> usize {
        self.splits.len().saturating_sub(1) / self.groups()
    }

    /// Position of pair `i`'s first column from `p` on (`p <= k`).
    #[inline]
    fn first_at(&self, i: usize, p: usize) -> usize {
        let g = self.groups();
        let mut q = self.splits[i * g + p.div_ceil(GROUP).min(g)];
        if !p.is_multiple_of(GROUP) {
            // Back from the next group's start over the columns >= p.
            let low = self.splits[i * g + p / GROUP];
            while q > low && self.data[q - 1] as usize >= p {
                q -= 1;
            }
        }
        q
    }

    /// Positions of pair `i`'s columns in `p0..p1` (`p0 <= p1 <= k`).
    #[inline]
    pub fn range(&self, i: usize, p0: usize, p1: usize) -> std::ops::Range<usize> {
        self.first_at(i, p0)..self.first_at(i, p1)
    }

    /// The start of the data and its `cap`: position `q`'s column is at `q`, the first row's
    /// `(x, y)` values at `cap + 2 q` and `cap + 2 q + 1`, the second row's at `3 cap + 2 q`
    /// and `3 cap + 2 q + 1`.
    pub fn raw(&self) -> (*const u32, usize) {
        (self.data.as_ptr(), self.cap)
    }

    /// Pair `i`'s columns in `p0..p1` with both rows' values: `(column, [xa, ya, xb, yb])`.
    pub fn entries(&self, i: usize, p0: usize, p1: usize) -> impl Iterator<Item = (u32, [f32; 4])> + '_ {
        self.range(i, p0, p1).map(|q| (self.data[q], std::array::from_fn(|a| f32::from_bits(self.data[value_at(self.cap, a, q)]))))
    }
}

/// Where value `a` of position `q` lies ([`RowPairs::raw`]): `a` = 0, 1 the first row's `x`
/// and `y`, 2, 3 the second row's.
#[inline(always)]
fn value_at(cap: usize, a: usize, q: usize) -> usize {
    cap * (1 + 2 * (a / 2)) + 2 * q + a % 2
}

#[cfg(test)]
mod tests {
    use super::RowPairs;

    #[test]
    fn keeps_the_columns_where_either_row_is_not_zero_in_order() {
        // 5 rows (the last pair has one) of 37 columns (two full vectors and a partial one):
        // zeros (and -0) in one row or both, a NaN (kept: the product must see it), an
        // all-zero row.
        let (m, k): (usize, usize) = (5, 37);
        let x: Vec<f32> = (0..m * k)
            .map(|i| match i {
                _ if i % 3 == 0 || i % 7 == 2 || i == 40 || (74..111).contains(&i) => 0.0,
                41 => -0.0,
                50 => f32::NAN,
                _ => i as f32,
            })
            .collect();
        // Signs from a fixed bit pattern (rows start mid-word: k = 37); y = x flipped by
        // them, computed here value by value.
        let s_in: Vec<u64> = (0..(m * k).div_ceil(64)).map(|w| 0x9e37_79b9_7f4a_7c15u64.rotate_left(w as u32 * 7)).collect();
        let y: Vec<f32> = x.iter().enumerate().map(|(g, &v)| if s_in[g / 64] >> (g % 64) & 1 == 1 { -v } else { v }).collect();
        assert!(y.iter().zip(&x).any(|(a, b)| a.to_bits() != b.to_bits()) && y.iter().zip(&x).any(|(a, b)| *a != 0.0 && a == b), "both signs");
        let at = |r: usize, p: usize| if r < m { (x[r * k + p], y[r * k + p]) } else { (0.0, 0.0) };
        let want = |i: usize, p0: usize, p1: usize| -> Vec<(u32, [u32; 4])> {
            (p0..p1)
                .filter_map(|p| {
                    let ((xa, ya), (xb, yb)) = (at(2 * i, p), at(2 * i + 1, p));
                    (xa != 0.0 || xb != 0.0).then_some((p as u32, [xa, ya, xb, yb].map(f32::to_bits)))
                })
                .collect()
        };
        let got = |rp: &RowPairs, i: usize, p0: usize, p1: usize| -> Vec<(u32, [u32; 4])> { rp.entries(i, p0, p1).map(|(c, v)| (c, v.map(f32::to_bits))).collect() };
        let mut rp = RowPairs::default();
        // Twice: a refill leaves nothing of the first behind.
        for _ in 0..2 {
            assert_eq!(rp.fill(&x, &s_in, m, k), (0..3).map(|i| want(i, 0, k).len()).sum::<usize>());
            assert_eq!(rp.pairs(), 3);
            // Blocks of columns, on and off the 16-column groups.
            for (p0, p1) in [(0, k), (0, 16), (5, 16), (16, 37), (3, 20), (17, 17), (33, 37)] {
                for i in 0..3 {
                    assert_eq!(got(&rp, i, p0, p1), want(i, p0, p1), "pair {i}, columns {p0}..{p1}");
                }
            }
        }
        // The portable fill gives the same.
        let mut portable = RowPairs::default();
        assert_eq!(portable.fill_on(&x, &s_in, m, k, false), rp.splits[rp.splits.len() - 1]);
        assert_eq!(portable.splits, rp.splits);
        for (p0, p1) in [(0, k), (5, 16), (3, 20)] {
            for i in 0..3 {
                assert_eq!(got(&portable, i, p0, p1), want(i, p0, p1), "portable: pair {i}, columns {p0}..{p1}");
            }
        }
    }
}
