//! Rewriting a tensor while it is copied.

/// A new value for a stored tensor, made chunk by chunk while the stored value streams to the
/// output, so that editing a large checkpoint never holds a whole tensor in memory.
pub trait TensorEdit: Send + Sync + std::fmt::Debug {
    /// Writes into `dst` the new bytes for `src`, the stored bytes that start `offset` bytes
    /// into the tensor. `dst` is as long as `src`, and both hold whole elements; writers in
    /// this crate start every chunk at a multiple of 64 elements.
    fn apply(&self, offset: u64, src: &[u8], dst: &mut [u8]);

    /// Called once the whole tensor has passed through [`TensorEdit::apply`], before the output
    /// is committed: an error (what went wrong) fails the conversion and discards the output.
    fn finished(&self) -> Result<(), String> {
        Ok(())
    }
}
