//! Work on BNN checkpoints: signal-to-noise statistics, pruning, sparse storage, batch
//! and batch processing of checkpoint archives.
#![warn(missing_docs)]

pub mod batch;
mod cut;
pub mod error;
pub mod mask;
pub mod posterior;
pub mod prune;
pub mod radix;
pub mod snr;
mod snr_stream;
pub mod sparse;
pub mod threshold;
pub mod values;

pub use error::{Error, Result};
