//! Writing a single-shard tensor bundle that TensorFlow's `BundleReader` accepts.
//!
//! Data goes to an output file next to the target as it arrives, each tensor `pwrite`n at its
//! offset (large ones a block at a time on every core: [`crate::block_copy`]), so memory stays
//! bounded; `finish` writes the index and moves both into place, index last, so a reader never
//! sees a half-written checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use protobuf::Message;

use super::entry::Entry;
use super::strings::encode_strings;
use super::{data_shard_path, index_path};
use crate::block_copy::{copy_together, write_all_at, Piece};
use crate::coding::mask_crc;
use crate::dtype::DType;
use crate::edit::TensorEdit;
use crate::error::{Error, Result};
use crate::output_file::OutputFile;
use crate::tensor::Sink;
use crate::proto::tensor_bundle::{bundle_header_proto::Endianness, BundleHeaderProto};
use crate::proto::types::VersionDef;
use crate::table::TableBuilder;

/// Version of the bundle format written (TensorFlow's `kTensorBundleVersion`).
const BUNDLE_VERSION: i32 = 1;

/// A tensor for [`BundleWriter::add_copied`]: its name, type and shape in the bundle, its stored
/// bytes, its edit if any, and what to call with each block's byte range of `src` once written.
pub struct CopiedTensor<'a> {
    /// Name in the bundle.
    pub name: &'a str,
    /// Element type.
    pub dtype: DType,
    /// Dimensions.
    pub shape: &'a [u64],
    /// The stored bytes.
    pub src: &'a [u8],
    /// How they are rewritten.
    pub edit: Option<&'a dyn TensorEdit>,
    /// Called with each block's range of `src` once it is written.
    pub release: &'a (dyn Fn(std::ops::Range<usize>) + Sync),
}

/// Builds a checkpoint `<prefix>.index` + `<prefix>.data-00000-of-00001`.
pub struct BundleWriter {
    prefix: PathBuf,
    data_path: PathBuf,
    data: OutputFile,
    offset: u64,
    entries: BTreeMap<String, Entry>,
    /// Reused for edited chunks of [`BundleWriter::add_edited`].
    edited: Vec<u8>,
}

impl BundleWriter {
    /// Starts a bundle at `prefix`; its folder must exist. Nothing is visible there until
    /// [`BundleWriter::finish`].
    pub fn create(prefix: impl AsRef<Path>) -> Result<BundleWriter> {
        let prefix = prefix.as_ref().to_path_buf();
        let data_path = data_shard_path(&prefix, 0, 1);
        let data = OutputFile::create(&data_path)?;
        Ok(BundleWriter { prefix, data_path, data, offset: 0, entries: BTreeMap::new(), edited: Vec::new() })
    }

    /// Allocates `bytes` of data file up front (where the file system can), so that a disk
    /// without room for the whole checkpoint fails here, before anything is written.
    pub fn reserve(&mut self, bytes: u64) -> Result<()> {
        self.data.allocate(bytes)
    }

    fn check_new(&self, name: &str) -> Result<()> {
        if name.is_empty() || name.as_bytes()[0] == 0 {
            return Err(Error::invalid(&self.prefix, format!("'{name}' cannot be a tensor name in a checkpoint")));
        }
        if self.entries.contains_key(name) {
            return Err(Error::invalid(&self.prefix, format!("tensor '{name}' added twice")));
        }
        Ok(())
    }

    /// Adds a fixed-size tensor whose `size` bytes `produce` passes, in any number of chunks, to
    /// the sink it is given.
    pub fn add_streamed<F>(&mut self, name: &str, dtype: DType, shape: &[u64], produce: F) -> Result<()>
    where
        F: FnOnce(&mut Sink) -> Result<()>,
    {
        self.add_fixed(name, dtype, shape, |file, path, at, crc| {
            let mut written = 0u64;
            produce(&mut |chunk: &[u8]| {
                *crc = crc32c::crc32c_append(*crc, chunk);
                write_all_at(file, chunk, at + written).map_err(|e| Error::io(path, e))?;
                written += chunk.len() as u64;
                Ok(())
            })?;
            Ok(written)
        })
    }

    /// Adds a fixed-size tensor whose stored bytes `produce` passes in chunks of whole
    /// elements (each starting at a multiple of 64 elements but the last), rewritten by `edit`.
    pub fn add_edited<F>(&mut self, name: &str, dtype: DType, shape: &[u64], edit: &dyn TensorEdit, produce: F) -> Result<()>
    where
        F: FnOnce(&mut Sink) -> Result<()>,
    {
        let mut edited = std::mem::take(&mut self.edited);
        let added = self.add_fixed(name, dtype, shape, |file, path, at, crc| {
            let mut written = 0u64;
            produce(&mut |chunk: &[u8]| {
                edited.resize(chunk.len(), 0);
                edit.apply(written, chunk, &mut edited);
                *crc = crc32c::crc32c_append(*crc, &edited);
                write_all_at(file, &edited, at + written).map_err(|e| Error::io(path, e))?;
                written += chunk.len() as u64;
                Ok(())
            })?;
            Ok(written)
        });
        self.edited = edited;
        added
    }

    /// Adds fixed-size tensors, one after the other, copied from their stored bytes (e.g. where
    /// a source file is mapped) and rewritten by their edits, a block at a time on every core,
    /// block `b` of each tensor in one job (see [`copy_together`]). Returns the CRC32C of each
    /// source, for the caller to verify against its source.
    pub fn add_copied(&mut self, tensors: &[CopiedTensor]) -> Result<Vec<u32>> {
        let (mut entries, mut pieces, mut at) = (Vec::new(), Vec::new(), self.offset);
        for (i, t) in tensors.iter().enumerate() {
            self.check_new(t.name)?;
            if tensors[..i].iter().any(|u| u.name == t.name) {
                return Err(Error::invalid(&self.prefix, format!("tensor '{}' added twice", t.name)));
            }
            let (dtype, shape) = (t.dtype, t.shape);
            let entry = Entry { dtype, shape: shape.to_vec(), shard_id: 0, offset: at, size: t.src.len() as u64, masked_crc32c: 0, slices: vec![] };
            let expected = entry.dense_bytes();
            if expected != Some(entry.size) {
                return Err(Error::invalid(&self.prefix, format!("tensor '{}' of {dtype} {shape:?} needs {expected:?} bytes, got {}", t.name, entry.size)));
            }
            pieces.push(Piece { at, src: t.src, edit: t.edit, release: t.release });
            at += entry.size;
            entries.push(entry);
        }
        let copied = copy_together(self.data.file(), &pieces).map_err(|e| Error::io(&self.data_path, e))?;
        for ((t, entry), c) in tensors.iter().zip(entries).zip(&copied) {
            self.entries.insert(t.name.to_string(), Entry { masked_crc32c: mask_crc(c.output_crc), ..entry });
        }
        self.offset = at;
        Ok(copied.iter().map(|c| c.source_crc).collect())
    }

    /// Records a fixed-size tensor whose bytes `write` writes to the data file at the offset
    /// it is given, setting the CRC32C of what it wrote and returning how many bytes.
    fn add_fixed<F>(&mut self, name: &str, dtype: DType, shape: &[u64], write: F) -> Result<()>
    where
        F: FnOnce(&std::fs::File, &Path, u64, &mut u32) -> Result<u64>,
    {
        self.check_new(name)?;
        let entry = Entry { dtype, shape: shape.to_vec(), shard_id: 0, offset: self.offset, size: 0, masked_crc32c: 0, slices: vec![] };
        let expected = entry
            .dense_bytes()
            .ok_or_else(|| Error::invalid(&self.prefix, format!("tensor '{name}' of {dtype} {shape:?} has no fixed size")))?;
        let mut crc = 0u32;
        let written = write(self.data.file(), &self.data_path, self.offset, &mut crc)?;
        if written != expected {
            return Err(Error::invalid(
                &self.prefix,
                format!("tensor '{name}' of {dtype} {shape:?} needs {expected} bytes, got {written}"),
            ));
        }
        self.offset += written;
        self.entries.insert(name.to_string(), Entry { size: written, masked_crc32c: mask_crc(crc), ..entry });
        Ok(())
    }

    /// Adds a fixed-size tensor from its little-endian bytes.
    pub fn add_bytes(&mut self, name: &str, dtype: DType, shape: &[u64], bytes: &[u8]) -> Result<()> {
        self.add_streamed(name, dtype, shape, |sink| sink(bytes))
    }

    /// Adds a string tensor.
    pub fn add_strings(&mut self, name: &str, shape: &[u64], strings: &[Vec<u8>]) -> Result<()> {
        self.check_new(name)?;
        let count: u64 = shape.iter().product();
        if count != strings.len() as u64 {
            return Err(Error::invalid(&self.prefix, format!("string tensor '{name}' of shape {shape:?} given {} strings", strings.len())));
        }
        // TensorFlow checksums string tensors over their lengths as fixed32 and their bytes,
        // not over the varints stored: the encoder computes that checksum.
        let (bytes, crc) = encode_strings(strings);
        write_all_at(self.data.file(), &bytes, self.offset).map_err(|e| Error::io(&self.data_path, e))?;
        let entry = Entry {
            dtype: DType::String,
            shape: shape.to_vec(),
            shard_id: 0,
            offset: self.offset,
            size: bytes.len() as u64,
            masked_crc32c: mask_crc(crc),
            slices: vec![],
        };
        self.offset += entry.size;
        self.entries.insert(name.to_string(), entry);
        Ok(())
    }

    /// Writes the index and moves data and index into place.
    pub fn finish(mut self) -> Result<()> {
        let index_path = index_path(&self.prefix);
        // Space reserved beyond the data (a plan larger than what was written) is cut off.
        self.data.file().set_len(self.offset).map_err(|e| Error::io(&self.data_path, e))?;
        let entries = std::mem::take(&mut self.entries);

        let mut header = BundleHeaderProto::new();
        header.num_shards = 1;
        header.endianness = Endianness::LITTLE.into();
        let mut version = VersionDef::new();
        version.producer = BUNDLE_VERSION;
        header.version = protobuf::MessageField::some(version);
        let mut table = TableBuilder::default();
        table.add(b"", &header.write_to_bytes().map_err(|e| Error::invalid(&index_path, e.to_string()))?);
        for (name, entry) in &entries {
            table.add(name.as_bytes(), &entry.encode());
        }
        let mut index = OutputFile::create(&index_path)?;
        table.finish_into(&mut index).map_err(|e| Error::io(&index_path, e))?;

        // Data first, index last: a reader never finds an index without its data.
        self.data.commit()?;
        index.commit()?;
        Ok(())
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::BundleReader;

    /// Flips the sign bit of every float32: wrong unless chunks hold whole elements.
    #[derive(Debug)]
    struct Negate;
    impl TensorEdit for Negate {
        fn apply(&self, offset: u64, src: &[u8], dst: &mut [u8]) {
            assert_eq!(offset % 256, 0, "chunks start on 64 elements");
            assert_eq!(src.len() % 4, 0, "whole elements");
            dst.copy_from_slice(src);
            for e in dst.chunks_exact_mut(4) {
                e[3] ^= 0x80;
            }
        }
    }

    #[test]
    fn edited_tensors_after_odd_sized_ones_keep_whole_elements_and_checksums() {
        let dir = tempfile::tempdir().expect("tempdir");
        let prefix = dir.path().join("m");
        let n = (1 << 20) + 1000; // several source chunks and a short one
        let values: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 7.0).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut w = BundleWriter::create(&prefix).expect("create");
        w.add_bytes("a_half", DType::Float16, &[3], &[1, 2, 3, 4, 5, 6]).expect("f16");
        w.add_edited("b_kernel", DType::Float32, &[n as u64], &Negate, |sink| {
            // Source chunks of 1 MiB, as a reader would stream them.
            for c in bytes.chunks(1 << 20) {
                sink(c)?;
            }
            Ok(())
        })
        .expect("edited");
        w.add_strings("c_names", &[2], &[b"x".to_vec(), b"yz".to_vec()]).expect("strings");
        w.finish().expect("finish");

        let r = BundleReader::open(&prefix).expect("open");
        let got = r.read("b_kernel").expect("checksum verified");
        let got: Vec<f32> = got.bytes().expect("bytes").chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert_eq!(got, values.iter().map(|v| -v).collect::<Vec<_>>());
        assert_eq!(r.read("a_half").expect("read").bytes(), Some(&[1u8, 2, 3, 4, 5, 6][..]));
        assert!(r.read("c_names").is_ok());
    }
}
