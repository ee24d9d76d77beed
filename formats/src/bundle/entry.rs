//! What the index says about one tensor: the decoded `BundleEntryProto`.

use std::path::Path;

use protobuf::Message;

use super::slice_key::Extent;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::proto::tensor_bundle::BundleEntryProto;
use crate::proto::types::{tensor_slice_proto, TensorShapeProto, TensorSliceProto};

/// One tensor's record in a checkpoint index.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Element type.
    pub dtype: DType,
    /// Dimensions (empty for a scalar).
    pub shape: Vec<u64>,
    /// Which `.data-K-of-N` file holds the bytes.
    pub shard_id: u32,
    /// Byte offset in that shard.
    pub offset: u64,
    /// Number of bytes in that shard.
    pub size: u64,
    /// Masked CRC32C of the stored bytes, as written.
    pub masked_crc32c: u32,
    /// For a partitioned variable: the slices stored under their own keys (no bytes of its own).
    pub slices: Vec<Vec<Extent>>,
}

impl Entry {
    /// Number of elements, or `None` if the product overflows.
    pub fn num_elements(&self) -> Option<u64> {
        self.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
    }

    /// Bytes of the tensor in memory (`None` for strings, whose size is only known from the data).
    pub fn dense_bytes(&self) -> Option<u64> {
        self.num_elements()?.checked_mul(self.dtype.size()? as u64)
    }

    /// Decodes a `BundleEntryProto`; `index` and `key` only name the entry in errors.
    pub fn decode(index: &Path, key: &str, bytes: &[u8]) -> Result<Entry> {
        let corrupt = |what: String| Error::corrupt(index, format!("entry '{key}': {what}"));
        let proto = BundleEntryProto::parse_from_bytes(bytes).map_err(|e| corrupt(format!("not a BundleEntryProto ({e})")))?;
        let raw_dtype = proto.dtype.value();
        let dtype = DType::from_tf(raw_dtype)
            .ok_or_else(|| Error::unsupported(index, format!("entry '{key}': TensorFlow dtype {raw_dtype}")))?;
        let shape = shape_from_proto(&proto.shape).map_err(corrupt)?;
        let non_negative = |v: i64, what: &str| u64::try_from(v).map_err(|_| corrupt(format!("negative {what} {v}")));
        let entry = Entry {
            dtype,
            shape,
            shard_id: u32::try_from(proto.shard_id).map_err(|_| corrupt(format!("negative shard id {}", proto.shard_id)))?,
            offset: non_negative(proto.offset, "offset")?,
            size: non_negative(proto.size, "size")?,
            masked_crc32c: proto.crc32c,
            slices: proto.slices.iter().map(extents_from_proto).collect(),
        };
        // A declared size that disagrees with dtype x shape means a damaged or hostile index.
        if entry.slices.is_empty() {
            match (entry.dense_bytes(), entry.num_elements()) {
                (Some(n), _) if n != entry.size => {
                    return Err(corrupt(format!(
                        "declares {} bytes but {} {:?} needs {n}",
                        entry.size, entry.dtype, entry.shape
                    )))
                }
                (None, None) => return Err(corrupt(format!("shape {:?} has too many elements", entry.shape))),
                _ => {}
            }
        }
        Ok(entry)
    }

    /// Encodes the entry as TensorFlow writes it.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = BundleEntryProto::new();
        p.dtype = protobuf::EnumOrUnknown::from_i32(self.dtype.tf_enum());
        p.shape = protobuf::MessageField::some(shape_to_proto(&self.shape));
        p.shard_id = self.shard_id as i32;
        p.offset = self.offset as i64;
        p.size = self.size as i64;
        p.crc32c = self.masked_crc32c;
        p.slices = self.slices.iter().map(|s| extents_to_proto(s)).collect();
        p.write_to_bytes().unwrap_or_default()
    }
}

/// Dimensions of a `TensorShapeProto`; unknown rank or negative sizes are errors in a checkpoint.
pub fn shape_from_proto(shape: &TensorShapeProto) -> std::result::Result<Vec<u64>, String> {
    if shape.unknown_rank {
        return Err("shape of unknown rank".into());
    }
    shape
        .dim
        .iter()
        .map(|d| u64::try_from(d.size).map_err(|_| format!("negative dimension {}", d.size)))
        .collect()
}

/// A `TensorShapeProto` with these dimensions.
pub fn shape_to_proto(dims: &[u64]) -> TensorShapeProto {
    let mut shape = TensorShapeProto::new();
    shape.dim = dims
        .iter()
        .map(|&d| {
            let mut dim = crate::proto::types::tensor_shape_proto::Dim::new();
            dim.size = d as i64;
            dim
        })
        .collect();
    shape
}

fn extents_from_proto(slice: &TensorSliceProto) -> Vec<Extent> {
    slice
        .extent
        .iter()
        .map(|e| Extent {
            start: e.start,
            length: e.has_length.as_ref().map(|tensor_slice_proto::extent::Has_length::Length(n)| *n),
        })
        .collect()
}

fn extents_to_proto(extents: &[Extent]) -> TensorSliceProto {
    let mut slice = TensorSliceProto::new();
    slice.extent = extents
        .iter()
        .map(|e| {
            let mut x = tensor_slice_proto::Extent::new();
            x.start = e.start;
            if let Some(n) = e.length {
                x.set_length(n);
            }
            x
        })
        .collect();
    slice
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trip_and_size_check() {
        let e = Entry {
            dtype: DType::Float32,
            shape: vec![3, 4],
            shard_id: 1,
            offset: 96,
            size: 48,
            masked_crc32c: 0xdead_beef,
            slices: vec![],
        };
        let bytes = e.encode();
        assert_eq!(Entry::decode(Path::new("i"), "k", &bytes).expect("decodes"), e);
        let bad = Entry { size: 47, ..e };
        let err = Entry::decode(Path::new("m.index"), "k", &bad.encode()).unwrap_err().to_string();
        assert!(err.contains("m.index") && err.contains("declares 47 bytes"), "{err}");
    }

    #[test]
    fn absurd_shapes_are_rejected() {
        let e = Entry {
            dtype: DType::Float64,
            shape: vec![u64::MAX / 2, 4],
            shard_id: 0,
            offset: 0,
            size: 8,
            masked_crc32c: 0,
            slices: vec![],
        };
        assert!(Entry::decode(Path::new("i"), "k", &e.encode()).is_err());
        assert!(Entry::decode(Path::new("i"), "k", b"\xff\xff\xff").is_err());
    }
}
