//! `bnn-train`: a data-parallel Bayesian neural network trainer. TensorFlow Probability's
//! Flipout layers rebuilt on the TensorFlow C API (graph mode, gradients from
//! `TF_AddGradients`), gradients averaged over MPI ranks through fusion buffers, and
//! checkpoints written by TensorFlow's own `SaveV2` with a `.meta` graph and BPrune's
//! manifests, so TensorFlow, BPrune and `bnn-convert` read them.
#![warn(missing_docs)]

pub mod allreduce;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod graph;
pub mod metrics;
pub mod models;
pub mod optimizer;
pub mod trainer;

pub use error::{Result, TrainError};
