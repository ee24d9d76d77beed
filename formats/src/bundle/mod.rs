//! TensorFlow's tensor bundle (checkpoint V2 format): a `<prefix>.index` table mapping tensor
//! names to `BundleEntryProto`s, and `<prefix>.data-K-of-N` shards holding the bytes.

mod entry;
mod reader;
mod slice_key;
mod strings;
mod writer;

use std::path::{Path, PathBuf};

pub use entry::{shape_from_proto, shape_to_proto, Entry};
pub use reader::{BundleHeader, BundleReader};
pub use slice_key::{encode_slice_key, is_slice_key, Extent};
pub use crate::output_file::write_atomically;
pub use writer::{BundleWriter, CopiedTensor};

/// `<prefix>.index`.
pub fn index_path(prefix: &Path) -> PathBuf {
    with_suffix(prefix, ".index")
}

/// `<prefix>.data-<id>-of-<num_shards>`, numbers padded to five digits as TensorFlow does.
pub fn data_shard_path(prefix: &Path, id: u32, num_shards: u32) -> PathBuf {
    with_suffix(prefix, &format!(".data-{id:05}-of-{num_shards:05}"))
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}
