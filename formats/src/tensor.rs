//! Tensor values and descriptions shared by every container format.

use std::borrow::Cow;

use serde::Serialize;

use crate::dtype::DType;

/// How far before a released range pages are released too. A page fault on a file mapping
/// also maps the neighbouring cached pages in its aligned 64 KiB window (Linux's
/// `fault_around_bytes`, default 64 KiB; `MADV_POPULATE_READ` faults the same way), so the
/// first touch of a chunk maps back pages of the previous, already released chunk; a reader
/// that releases chunk after chunk would keep up to 15 such pages per chunk resident, its
/// memory growing with the tensor (seen on a 4 GiB checkpoint: 41 MiB of them).
pub const FAULT_AROUND: usize = 64 << 10;

/// The largest stretch that one page fault maps: since Linux 6.x a fault on a file mapping maps
/// the whole large folio of the page cache that holds the page, up to 2 MiB (on x86-64), not
/// just the [`FAULT_AROUND`] window. A reader that touches a tensor out of order (blocks copied
/// in parallel, a strided sample) maps back parts of those folios it already released; it
/// releases whole windows of this size, widened by one window on either side, once it is done
/// with them ([`crate::checkpoint::WindowedRelease`]).
pub const FOLIO_MAX: usize = 2 << 20;

/// The values of one tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData<'a> {
    /// Fixed-size elements, little-endian, row-major: borrowed from a memory map where possible.
    Bytes(Cow<'a, [u8]>),
    /// The elements of a string tensor, row-major.
    Strings(Vec<Vec<u8>>),
}

impl TensorData<'_> {
    /// The raw bytes of a fixed-size tensor (`None` for strings).
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            TensorData::Bytes(b) => Some(b),
            TensorData::Strings(_) => None,
        }
    }

    /// Total bytes of the values (for strings, of all strings together).
    pub fn nbytes(&self) -> u64 {
        match self {
            TensorData::Bytes(b) => b.len() as u64,
            TensorData::Strings(s) => s.iter().map(|x| x.len() as u64).sum(),
        }
    }

    /// Takes ownership of the values.
    pub fn into_owned(self) -> TensorData<'static> {
        match self {
            TensorData::Bytes(b) => TensorData::Bytes(Cow::Owned(b.into_owned())),
            TensorData::Strings(s) => TensorData::Strings(s),
        }
    }
}

/// What a container says about a tensor without reading its values.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorInfo {
    /// The tensor's name in the container (left out of JSON: owners print it as their key).
    #[serde(skip)]
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions.
    pub shape: Vec<u64>,
    /// Stored bytes (for strings: the encoded size in the shard).
    pub nbytes: u64,
    /// Which data shard holds it (`None` for safetensors, or a partitioned variable's parts).
    pub shard: Option<u32>,
}

/// Reads `f32` values from little-endian bytes (any trailing partial element is ignored).
pub fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Little-endian bytes of `f32` values.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Where streamed tensor bytes go, a chunk at a time. A sink's errors name its own file (the
/// output), so that a full disk is reported against the file being written, not the input.
pub type Sink<'a> = dyn FnMut(&[u8]) -> crate::error::Result<()> + 'a;
