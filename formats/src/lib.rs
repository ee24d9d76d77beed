//! Pure-Rust readers and writers for the files a TensorFlow Probability BNN leaves behind:
//! checkpoint bundles (`.index` + `.data-*`), the `checkpoint` state file, BPrune manifests,
//! TF2 object graphs, and safetensors. No TensorFlow needed.
#![warn(missing_docs)]

pub mod block_copy;
pub mod bundle;
pub mod checkpoint;
pub mod checkpoint_state;
pub mod coding;
pub mod convert;
pub mod dataset;
pub mod dtype;
pub mod edit;
pub mod error;
pub mod input_files;
pub mod layout;
pub mod manifest;
pub mod naming;
pub mod object_graph;
pub mod output_file;
#[allow(renamed_and_removed_lints)]
pub mod proto;
pub mod safetensors_file;
pub mod sparse;
pub mod synthetic;
pub mod table;
pub mod tensor;

pub use dtype::DType;
pub use error::{Error, Result};
pub use tensor::{TensorData, TensorInfo};
