//! Writing a single-shard tensor bundle that TensorFlow's `BundleReader` accepts.
//!
//! Data goes to a temporary file next to the target as it arrives (so memory stays bounded);
//! `finish` writes the index and renames both into place, index last, so a reader never sees
//! a half-written checkpoint.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use protobuf::Message;

use super::entry::Entry;
use super::strings::encode_strings;
use super::{data_shard_path, index_path};
use crate::coding::mask_crc;
use crate::dtype::DType;
use crate::edit::TensorEdit;
use crate::error::{Error, Result};
use crate::output_file::OutputFile;
use crate::tensor::Sink;
use crate::proto::tensor_bundle::{bundle_header_proto::Endianness, BundleHeaderProto};
use crate::proto::types::VersionDef;
use crate::table::TableBuilder;
use crate::write_behind::{PieceChecksum, WriteBehind};

/// Version of the bundle format written (TensorFlow's `kTensorBundleVersion`).
const BUNDLE_VERSION: i32 = 1;
/// Bytes per write to the data file.
const WRITE_BUFFER: usize = 4 << 20;

/// Builds a checkpoint `<prefix>.index` + `<prefix>.data-00000-of-00001`.
pub struct BundleWriter {
    prefix: PathBuf,
    data: WriteBehind<OutputFile>,
    offset: u64,
    entries: BTreeMap<String, Entry>,
}

impl BundleWriter {
    /// Starts a bundle at `prefix`; its folder must exist. Nothing is visible there until
    /// [`BundleWriter::finish`].
    pub fn create(prefix: impl AsRef<Path>) -> Result<BundleWriter> {
        let prefix = prefix.as_ref().to_path_buf();
        let mut tmp = OutputFile::create(&data_shard_path(&prefix, 0, 1))?;
        tmp.map_writes();
        // Written behind: the kernel copies one buffer while the caller makes the next.
        let data = WriteBehind::new(tmp, WRITE_BUFFER);
        Ok(BundleWriter { prefix, data, offset: 0, entries: BTreeMap::new() })
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
        let data_path = data_shard_path(&self.prefix, 0, 1);
        self.add_fixed(name, dtype, shape, |data, written| {
            produce(&mut |chunk: &[u8]| {
                *written += chunk.len() as u64;
                data.write_all(chunk).map_err(|e| Error::io(&data_path, e))
            })
        })
    }

    /// Adds a fixed-size tensor whose stored bytes `produce` passes in chunks of whole
    /// elements, rewritten by `edit` straight into the output buffers (no intermediate copy).
    pub fn add_edited<F>(&mut self, name: &str, dtype: DType, shape: &[u64], edit: &dyn TensorEdit, produce: F) -> Result<()>
    where
        F: FnOnce(&mut Sink) -> Result<()>,
    {
        // Stretches of 64 whole elements: masks then work a 64-bit word at a time.
        let align = 64 * dtype.size().unwrap_or(1);
        let data_path = data_shard_path(&self.prefix, 0, 1);
        self.add_fixed(name, dtype, shape, |data, written| {
            produce(&mut |chunk: &[u8]| {
                let offset = *written;
                *written += chunk.len() as u64;
                data.write_with(chunk.len(), align, &mut |at, dst| edit.apply(offset + at as u64, &chunk[at..at + dst.len()], dst))
                    .map_err(|e| Error::io(&data_path, e))
            })
        })
    }

    /// Records a fixed-size tensor whose bytes `write` appends to the data file it is given,
    /// counting them in the `u64`; its checksum comes from the data file's pieces at `finish`.
    fn add_fixed<F>(&mut self, name: &str, dtype: DType, shape: &[u64], write: F) -> Result<()>
    where
        F: FnOnce(&mut WriteBehind<OutputFile>, &mut u64) -> Result<()>,
    {
        self.check_new(name)?;
        let entry = Entry { dtype, shape: shape.to_vec(), shard_id: 0, offset: self.offset, size: 0, masked_crc32c: 0, slices: vec![] };
        let expected = entry
            .dense_bytes()
            .ok_or_else(|| Error::invalid(&self.prefix, format!("tensor '{name}' of {dtype} {shape:?} has no fixed size")))?;
        let mut written = 0u64;
        write(&mut self.data, &mut written)?;
        if written != expected {
            return Err(Error::invalid(
                &self.prefix,
                format!("tensor '{name}' of {dtype} {shape:?} needs {expected} bytes, got {written}"),
            ));
        }
        // Each tensor is a piece of its own, so the writer thread's checksums are per tensor.
        self.data.end_piece();
        self.offset += written;
        self.entries.insert(name.to_string(), Entry { size: written, ..entry });
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
        self.data.write_all(&bytes).map_err(|e| Error::io(data_shard_path(&self.prefix, 0, 1), e))?;
        self.data.end_piece();
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
    pub fn finish(self) -> Result<()> {
        let data_path = data_shard_path(&self.prefix, 0, 1);
        let index_path = index_path(&self.prefix);
        let (data, pieces) = self.data.finish().map_err(|e| Error::io(&data_path, e))?;
        let mut entries = self.entries;
        set_checksums(&mut entries, &pieces).map_err(|what| Error::invalid(&data_path, what))?;

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
        data.commit()?;
        index.commit()?;
        Ok(())
    }
}

/// Sets each fixed-size entry's checksum from those of the data file's pieces: every tensor
/// was one or more whole pieces, in offset order. (String tensors keep theirs: see
/// `add_strings`.)
fn set_checksums(entries: &mut BTreeMap<String, Entry>, pieces: &[PieceChecksum]) -> std::result::Result<(), String> {
    let mut by_offset: Vec<&mut Entry> = entries.values_mut().collect();
    by_offset.sort_by_key(|e| e.offset);
    let mut pieces = pieces.iter();
    for entry in by_offset {
        let (mut covered, mut crc) = (0u64, 0u32);
        while covered < entry.size {
            let &(len, piece_crc) = pieces.next().ok_or("data file shorter than its tensors")?;
            crc = crc32c::crc32c_combine(crc, piece_crc, len as usize);
            covered += len;
        }
        if covered != entry.size {
            return Err(format!("tensor at offset {} does not end on a piece boundary", entry.offset));
        }
        if entry.dtype != DType::String {
            entry.masked_crc32c = mask_crc(crc);
        }
    }
    Ok(())
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
        let n = WRITE_BUFFER / 4 + 1000; // crosses a buffer boundary
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
