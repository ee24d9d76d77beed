//! The one error type of this crate: every variant names the file it is about, so that a user
//! sees a single line saying which file is wrong and how.

use std::path::{Path, PathBuf};

/// Result alias used across `formats`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while reading or writing checkpoint-related files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error while opening, reading, mapping or writing a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file the operation was about.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but its bytes are not what the format requires.
    #[error("{}: {what}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong, in a few words.
        what: String,
    },
    /// A stored checksum does not match the bytes it covers.
    #[error("{}: CRC32C mismatch in {what} (stored {stored:#010x}, computed {computed:#010x})", path.display())]
    Checksum {
        /// The file holding the damaged bytes.
        path: PathBuf,
        /// Which bytes: a block, a tensor.
        what: String,
        /// Checksum stored in the file (unmasked).
        stored: u32,
        /// Checksum of the bytes as read.
        computed: u32,
    },
    /// The input is valid but uses something this crate does not handle.
    #[error("{}: unsupported: {what}", path.display())]
    Unsupported {
        /// The file using the feature.
        path: PathBuf,
        /// The feature.
        what: String,
    },
    /// A data shard named by an index is not on disk.
    #[error("{}: missing data shard (checkpoint index {} names {num_shards} shard(s))", shard.display(), index.display())]
    MissingShard {
        /// The shard file that should exist.
        shard: PathBuf,
        /// The index that names it.
        index: PathBuf,
        /// How many shards the index declares.
        num_shards: u32,
    },
    /// No tensor of that name is in the file.
    #[error("{}: no tensor named '{name}'", path.display())]
    NoSuchTensor {
        /// The checkpoint or safetensors file searched.
        path: PathBuf,
        /// The requested name.
        name: String,
    },
    /// A path given by the user does not lead to a checkpoint.
    #[error("{}: {what}", path.display())]
    NotFound {
        /// The path as given.
        path: PathBuf,
        /// Why nothing was found there.
        what: String,
    },
    /// A request that cannot be carried out with this input (wrong names, shapes, options).
    #[error("{}: {what}", path.display())]
    Invalid {
        /// The file the request was about.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }

    /// An [`Error::Corrupt`] for `path`.
    pub fn corrupt(path: impl AsRef<Path>, what: impl Into<String>) -> Self {
        Error::Corrupt { path: path.as_ref().to_path_buf(), what: what.into() }
    }

    /// An [`Error::Unsupported`] for `path`.
    pub fn unsupported(path: impl AsRef<Path>, what: impl Into<String>) -> Self {
        Error::Unsupported { path: path.as_ref().to_path_buf(), what: what.into() }
    }

    /// An [`Error::Invalid`] for `path`.
    pub fn invalid(path: impl AsRef<Path>, what: impl Into<String>) -> Self {
        Error::Invalid { path: path.as_ref().to_path_buf(), what: what.into() }
    }
}
