//! Native inference for BNNs: mean and Monte Carlo forward passes (Flipout or
//! reparameterization) of dense and conv layers, batched and multithreaded (rayon), with CSR
//! kernels for pruned layers.
//!
//! Build a [`Model`] from an architecture and its posteriors ([`crate::arch::Arch::bind`]),
//! then call [`Model::predict_mean`] or [`Model::predict_mc`]; [`metrics::evaluate`] scores
//! the result.

mod aligned;
pub mod conv;
pub mod dense;
pub mod gemm;
pub mod image_ops;
pub mod metrics;
pub mod predict;
mod prefetch;
pub mod row_pairs;
pub mod sampler;
pub mod sparse;
pub mod winograd;

pub use predict::{Estimator, McPrediction, Model, SparseKernels, PROBE_BATCH};

/// Errors of the inference engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Architecture and weights do not fit together.
    #[error("architecture does not match the weights: {0}")]
    Shape(String),
    /// The input batch has the wrong size.
    #[error("input has {got} values, not a multiple of the {per_example} values of one example {shape:?}")]
    Input {
        /// Values given.
        got: usize,
        /// Values per example.
        per_example: usize,
        /// The example shape.
        shape: Vec<usize>,
    },
}
