//! Dense products on a tuned kernel library (`matrixmultiply`'s packed, blocked SGEMM with
//! runtime-selected AVX2/FMA micro-kernels), behind a safe, bounds-checked wrapper.

/// `c[m, n] = a[m, k] @ b[k, n]` (or `c += ...` when `accumulate`), all row-major.
///
/// # Panics
/// When a slice is shorter than its shape says (a bug in the caller, never input data: every
/// shape here comes from the shape-checked architecture).
pub fn sgemm(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32], accumulate: bool) {
    sgemm_rows(m, k, n, a, b, c, n, accumulate);
}

/// [`sgemm`] with the rows of `c` `ldc` values apart (`ldc >= n`): into a block of a larger
/// matrix.
///
/// # Panics
/// As [`sgemm`], and when `ldc < n`.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_rows(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32], ldc: usize, accumulate: bool) {
    assert!(a.len() >= m * k && b.len() >= k * n && ldc >= n && c.len() >= m.saturating_sub(1) * ldc + n, "sgemm: slices shorter than {m}x{k}x{n}");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.chunks_mut(ldc).take(m).for_each(|row| row[..n].fill(0.0));
        }
        return;
    }
    let beta = if accumulate { 1.0 } else { 0.0 };
    // SAFETY: the lengths were checked above, the strides describe row-major matrices
    // inside those lengths, and `c` does not alias `a` or `b` (distinct borrows).
    unsafe {
        matrixmultiply::sgemm(m, k, n, 1.0, a.as_ptr(), k as isize, 1, b.as_ptr(), n as isize, 1, beta, c.as_mut_ptr(), ldc as isize, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgemm_matches_hand_product_and_accumulates() {
        // [[1, 2, 3], [4, 5, 6]] @ [[1, 0], [0, 1], [1, 1]] = [[4, 5], [10, 11]]
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let mut c = [9.0; 4];
        sgemm(2, 3, 2, &a, &b, &mut c, false);
        assert_eq!(c, [4.0, 5.0, 10.0, 11.0]);
        sgemm(2, 3, 2, &a, &b, &mut c, true);
        assert_eq!(c, [8.0, 10.0, 20.0, 22.0]);
        // Rows 3 apart: the third value of each row is not touched.
        let mut c = [9.0; 5];
        sgemm_rows(2, 3, 2, &a, &b, &mut c, 3, false);
        assert_eq!(c, [4.0, 5.0, 9.0, 10.0, 11.0]);
    }
}
