//! A BNN as a network: its architecture (ops and their shape rules), read from a `.meta` graph,
//! Keras metadata, JSON or a preset; the native Monte Carlo inference engine that runs it; and
//! its ONNX export. File formats live in `formats`; SNR and pruning in `surgery`.
#![warn(missing_docs)]

pub mod arch;
pub mod engine;
pub mod fold;
pub mod keras_metadata;
pub mod meta_graph;
pub mod onnx;
pub mod softplus;
