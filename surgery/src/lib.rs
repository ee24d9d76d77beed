//! Work on BNN checkpoints: signal-to-noise statistics, pruning, sparse storage, batch
//! processing of checkpoint archives, and native Monte Carlo inference.
#![warn(missing_docs)]

pub mod batch;
pub mod engine;
pub mod error;
pub mod mask;
pub mod posterior;
pub mod prune;
pub mod radix;
pub mod snr;
mod snr_stream;
pub mod softplus;
pub mod sparse;
pub mod threshold;
pub mod values;

pub use error::{Error, Result};
