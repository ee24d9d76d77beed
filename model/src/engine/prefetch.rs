//! Software prefetch of weights read row by row.
//!
//! The dense kernels copy a column block of a layer's weights (`mu`, and `sigma` for the
//! noise) into their panels one row at a time: a few cache lines, then a jump of a whole
//! weight row. On BNN-FC the first loads of each row waited on L2 and L3 (a fifth of the
//! noise draw's time, most of the panel copy's), which the hardware prefetchers did not
//! hide; asking for the row a few rows ahead does.

/// Rows ahead that [`rows_ahead`] asks for: 8 and 16 measured the same on BNN-FC.
const AHEAD: usize = 8;

/// Asks the CPU to bring `values` into L1, one hint per 64-byte line (nothing where there
/// is no prefetch instruction). A hint: it changes no value.
#[inline(always)]
fn prefetch(values: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in values.chunks(16) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a hint about an address inside `values`; it reads nothing.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

/// [`prefetch`] of the run of `len` values starting at `start + AHEAD * stride` in `values`,
/// if it lies inside: row [`AHEAD`] rows on of a block read a row at a time.
#[inline(always)]
pub(crate) fn rows_ahead(values: &[f32], start: usize, stride: usize, len: usize) {
    let at = start + AHEAD * stride;
    if let Some(run) = values.get(at..at + len) {
        prefetch(run);
    }
}
