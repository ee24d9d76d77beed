//! Errors of the surgery library.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while analysing, pruning or batch-processing checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a checkpoint failed.
    #[error(transparent)]
    Format(#[from] formats::Error),
    /// The request does not fit the checkpoint (no Bayesian layers, unknown layer, bad option).
    #[error("{}: {what}", path.display())]
    Invalid {
        /// The checkpoint concerned.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A file operation outside the checkpoint formats failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An [`Error::Invalid`] about `path`.
    pub fn invalid(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::Invalid { path: path.into(), what: what.into() }
    }

    /// An [`Error::Io`] about `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
