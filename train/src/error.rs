//! The trainer's error type.

use std::path::PathBuf;

/// What can go wrong building, running or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// TensorFlow refused an op or a run.
    #[error("TensorFlow: {0}")]
    Tf(#[from] tensorflow::Status),
    /// A dataset file could not be read.
    #[error(transparent)]
    Dataset(#[from] formats::dataset::DatasetError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Input that makes no sense (shapes, flags, data).
    #[error("{0}")]
    Invalid(String),
    /// A protobuf message could not be encoded or decoded.
    #[error("protobuf: {0}")]
    Proto(#[from] protobuf::Error),
    /// A checkpoint-side file (state file, manifest) could not be read.
    #[error(transparent)]
    Formats(#[from] formats::Error),
    /// A name TensorFlow returned or was given is not valid text.
    #[error("bad name: {0}")]
    Name(String),
    /// The MPI layer reported a problem.
    #[error("MPI: {0}")]
    Mpi(String),
}

impl From<std::ffi::NulError> for TrainError {
    fn from(e: std::ffi::NulError) -> Self {
        TrainError::Name(e.to_string())
    }
}

impl From<std::str::Utf8Error> for TrainError {
    fn from(e: std::str::Utf8Error) -> Self {
        TrainError::Name(e.to_string())
    }
}

impl TrainError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io { path: path.into(), source }
    }
}

/// Result of the trainer's library functions.
pub type Result<T> = std::result::Result<T, TrainError>;
