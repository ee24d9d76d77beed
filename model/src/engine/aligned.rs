//! Scratch memory for vector kernels: buffers that only ever grow, handed out on cache-line
//! boundaries where the kernels need it.

/// The first `len` values of `buf`, grown to hold them and never shrunk: layers of different
/// sizes share a thread's scratch buffers, and resizing one to each layer's size zero-filled
/// the difference again on every larger layer (7% of a pruned BNN-FC's time, 1% of a pruned
/// VGG-16's). What the values hold is unspecified: the caller overwrites them.
pub(crate) fn grown(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// A reusable float buffer handed out at a 64-byte boundary: the vector kernels' loads
/// and stores (64 bytes, at offsets that are multiples of 16 values) then never straddle
/// two cache lines (a heap block starts 16 bytes past one: split loads made
/// [`super::sparse::Csr::spmm_t`] twice as slow and the fused dense kernel 1.2x).
#[derive(Debug, Default)]
pub(crate) struct Aligned(pub(crate) Vec<f32>);

/// Values a buffer needs beyond `len` so that `len` of them fit from its first 64-byte
/// boundary ([`lead`]).
pub(crate) const SLACK: usize = 64 / std::mem::size_of::<f32>() - 1;

/// Index of the first value of `v` on a 64-byte boundary (at most [`SLACK`]): where a
/// buffer that is not [`Aligned`] (activations handed from layer to layer) holds values
/// that vector kernels load.
pub(crate) fn lead(v: &[f32]) -> usize {
    (64 - v.as_ptr() as usize % 64) % 64 / std::mem::size_of::<f32>()
}

impl Aligned {
    /// `len` values starting at a 64-byte boundary; what they hold is unspecified (earlier
    /// contents, possibly shifted, or zeros): the caller overwrites them.
    pub(crate) fn get(&mut self, len: usize) -> &mut [f32] {
        grown(&mut self.0, len + SLACK);
        let off = lead(&self.0);
        &mut self.0[off..off + len]
    }
}

#[cfg(test)]
mod tests {
    use super::Aligned;

    #[test]
    fn every_slice_starts_on_a_cache_line_and_has_the_asked_length() {
        let mut a = Aligned::default();
        // Growing, shrinking and growing again (the buffer moves when it grows).
        for len in [1, 15, 16, 17, 1000, 3, 100_000, 64] {
            let s = a.get(len);
            assert_eq!(s.len(), len);
            assert_eq!(s.as_ptr() as usize % 64, 0, "len {len}");
            s.fill(1.0);
        }
    }
}
