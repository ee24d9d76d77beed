//! Reading a tensor bundle: the `.index` table and its memory-mapped `.data-K-of-N` shards.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use memmap2::{Advice, Mmap, UncheckedAdvice};
use protobuf::Message;

use super::entry::Entry;
use super::slice_key::{encode_slice_key, is_slice_key, Extent};
use super::strings::decode_strings;
use super::{data_shard_path, index_path};
use crate::coding::unmask_crc;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::proto::tensor_bundle::{bundle_header_proto::Endianness, BundleHeaderProto};
use crate::table::Table;
use crate::tensor::{TensorData, TensorInfo};

/// Bytes handed to a streaming sink at a time; pages behind each chunk are released after it.
/// 16 MiB amortises the per-chunk system calls (measured: 4 MiB chunks were 10% slower).
const STREAM_CHUNK: usize = 16 << 20;
/// More shards than this is not a real checkpoint but a damaged header.
const MAX_SHARDS: i32 = 1 << 16;

/// The header record of a bundle (`BundleHeaderProto`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BundleHeader {
    /// Number of `.data` shards.
    pub num_shards: u32,
    /// TensorFlow's bundle format version that wrote the file.
    pub producer: i32,
    /// Oldest format version that can read it.
    pub min_consumer: i32,
}

/// An open checkpoint: its index parsed, its shards mapped on first use.
#[derive(Debug)]
pub struct BundleReader {
    prefix: PathBuf,
    index_path: PathBuf,
    header: BundleHeader,
    entries: BTreeMap<String, Entry>,
    slices: HashMap<Vec<u8>, Entry>,
    shards: Vec<OnceLock<Mmap>>,
    verify_checksums: bool,
}

impl BundleReader {
    /// Opens the bundle whose index is `<prefix>.index`. Data shards are not touched until a
    /// tensor is read, so an index whose shards are gone can still be listed.
    pub fn open(prefix: impl AsRef<Path>) -> Result<BundleReader> {
        let prefix = prefix.as_ref().to_path_buf();
        let index_path = index_path(&prefix);
        let bytes = std::fs::read(&index_path).map_err(|e| Error::io(&index_path, e))?;
        let table = Table::parse(&index_path, &bytes)?;
        let mut records = table.into_entries().into_iter();

        let (key, value) = records
            .next()
            .ok_or_else(|| Error::corrupt(&index_path, "index has no entries, not even its header"))?;
        if !key.is_empty() {
            return Err(Error::corrupt(&index_path, "first index entry is not the bundle header"));
        }
        let header = decode_header(&index_path, &value)?;

        let mut entries = BTreeMap::new();
        let mut slices = HashMap::new();
        for (key, value) in records {
            let label = String::from_utf8_lossy(&key).into_owned();
            let entry = Entry::decode(&index_path, &label, &value)?;
            if entry.shard_id >= header.num_shards && entry.slices.is_empty() {
                return Err(Error::corrupt(
                    &index_path,
                    format!("entry '{label}' names shard {} of {}", entry.shard_id, header.num_shards),
                ));
            }
            if is_slice_key(&key) {
                slices.insert(key, entry);
            } else {
                let name = String::from_utf8(key)
                    .map_err(|_| Error::corrupt(&index_path, format!("tensor name '{label}' is not UTF-8")))?;
                entries.insert(name, entry);
            }
        }
        let shards = (0..header.num_shards).map(|_| OnceLock::new()).collect();
        Ok(BundleReader { prefix, index_path, header, entries, slices, shards, verify_checksums: true })
    }

    /// Turns CRC32C verification of tensor data on (the default) or off.
    pub fn set_verify_checksums(&mut self, verify: bool) {
        self.verify_checksums = verify;
    }

    /// The checkpoint prefix (`.../model.ckpt-100`).
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// The `.index` file.
    pub fn index_path(&self) -> &Path {
        &self.index_path
    }

    /// The bundle header.
    pub fn header(&self) -> &BundleHeader {
        &self.header
    }

    /// Every tensor, by name in the order TensorFlow stores them.
    pub fn entries(&self) -> &BTreeMap<String, Entry> {
        &self.entries
    }

    /// The entry of tensor `name`.
    pub fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries
            .get(name)
            .ok_or_else(|| Error::NoSuchTensor { path: self.index_path.clone(), name: name.to_string() })
    }

    /// Descriptions of every tensor.
    pub fn infos(&self) -> Vec<TensorInfo> {
        self.entries
            .iter()
            .map(|(name, e)| TensorInfo {
                name: name.clone(),
                dtype: e.dtype,
                shape: e.shape.clone(),
                nbytes: if e.slices.is_empty() { e.size } else { e.dense_bytes().unwrap_or(0) },
                shard: e.slices.is_empty().then_some(e.shard_id),
            })
            .collect()
    }

    /// Path of data shard `id`.
    pub fn shard_path(&self, id: u32) -> PathBuf {
        data_shard_path(&self.prefix, id, self.header.num_shards)
    }

    /// Shards that the index names but that are not on disk.
    pub fn missing_shards(&self) -> Vec<PathBuf> {
        (0..self.header.num_shards).map(|i| self.shard_path(i)).filter(|p| !p.is_file()).collect()
    }

    fn shard(&self, id: u32) -> Result<&Mmap> {
        let cell = self.shards.get(id as usize).ok_or_else(|| {
            Error::corrupt(&self.index_path, format!("shard {id} of {} requested", self.header.num_shards))
        })?;
        if let Some(map) = cell.get() {
            return Ok(map);
        }
        let path = self.shard_path(id);
        let file = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::MissingShard {
                shard: path.clone(),
                index: self.index_path.clone(),
                num_shards: self.header.num_shards,
            },
            _ => Error::io(&path, e),
        })?;
        // SAFETY: the map is read-only and private; checkpoints are not rewritten in place while
        // being converted (a truncation under us would fault, as with any mmap reader).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        Ok(cell.get_or_init(|| map))
    }

    /// The stored bytes of an unpartitioned tensor, bounds-checked (not checksum-verified).
    fn stored_slice(&self, name: &str, entry: &Entry) -> Result<&[u8]> {
        let shard = self.shard(entry.shard_id)?;
        let start = usize::try_from(entry.offset).ok();
        let end = start.zip(usize::try_from(entry.size).ok()).and_then(|(s, n)| s.checked_add(n));
        match (start, end) {
            (Some(s), Some(e)) if e <= shard.len() => Ok(&shard[s..e]),
            _ => Err(Error::corrupt(
                self.shard_path(entry.shard_id),
                format!(
                    "tensor '{name}' at offset {} with {} bytes lies past the end of the shard ({} bytes)",
                    entry.offset,
                    entry.size,
                    shard.len()
                ),
            )),
        }
    }

    fn check_crc(&self, name: &str, entry: &Entry, computed: u32) -> Result<()> {
        let stored = unmask_crc(entry.masked_crc32c);
        if self.verify_checksums && stored != computed {
            return Err(Error::Checksum {
                path: self.shard_path(entry.shard_id),
                what: format!("tensor '{name}'"),
                stored,
                computed,
            });
        }
        Ok(())
    }

    /// Reads tensor `name`: borrowed from the memory map for fixed-size types, assembled for
    /// partitioned variables, decoded for strings. Verifies the checksum unless turned off.
    pub fn read(&self, name: &str) -> Result<TensorData<'_>> {
        let entry = self.entry(name)?;
        if !entry.slices.is_empty() {
            return self.assemble(name, entry).map(|b| TensorData::Bytes(Cow::Owned(b)));
        }
        self.read_entry(name, entry)
    }

    /// Borrows the stored bytes of fixed-size tensor `name` without verifying its checksum, for
    /// a caller that streams the same tensor (verified) afterwards and discards its output if
    /// that check fails: a 1 GiB pruning then checks each byte once, not twice. Partitioned and
    /// string tensors are read as by [`BundleReader::read`].
    pub fn read_unverified(&self, name: &str) -> Result<TensorData<'_>> {
        let entry = self.entry(name)?;
        if !entry.slices.is_empty() || entry.dtype == DType::String {
            return self.read(name);
        }
        self.stored_slice(name, entry).map(|b| TensorData::Bytes(Cow::Borrowed(b)))
    }

    fn read_entry<'a>(&'a self, name: &str, entry: &Entry) -> Result<TensorData<'a>> {
        let bytes = self.stored_slice(name, entry)?;
        if entry.dtype == DType::String {
            let count = entry.num_elements().unwrap_or(0);
            let (strings, crc) = decode_strings(bytes, count)
                .map_err(|what| Error::corrupt(self.shard_path(entry.shard_id), format!("tensor '{name}': {what}")))?;
            self.check_crc(name, entry, crc)?;
            return Ok(TensorData::Strings(strings));
        }
        if self.verify_checksums {
            self.check_crc(name, entry, crc32c::crc32c(bytes))?;
        }
        Ok(TensorData::Bytes(Cow::Borrowed(bytes)))
    }

    /// Hands the bytes of fixed-size tensor `name` to `sink` in chunks, releasing the pages
    /// behind each chunk so that memory stays bounded however large the tensor is.
    ///
    /// The checksum is verified after the last chunk: on `Err` the sink has seen bad data and
    /// whatever it wrote must be discarded.
    pub fn stream(&self, name: &str, sink: &mut crate::tensor::Sink) -> Result<()> {
        let entry = self.entry(name)?;
        if !entry.slices.is_empty() {
            return sink(&self.assemble(name, entry)?);
        }
        if entry.dtype == DType::String {
            return Err(Error::unsupported(&self.index_path, format!("streaming string tensor '{name}'")));
        }
        let bytes = self.stored_slice(name, entry)?;
        let shard = self.shard(entry.shard_id)?;
        let mut crc = 0u32;
        for (i, chunk) in bytes.chunks(STREAM_CHUNK).enumerate() {
            let offset = entry.offset as usize + i * STREAM_CHUNK;
            // One call maps the chunk's pages instead of a page fault every few pages; an
            // older kernel without MADV_POPULATE_READ just faults them in as before.
            let _ = shard.advise_range(Advice::PopulateRead, offset, chunk.len());
            if self.verify_checksums {
                crc = crc32c::crc32c_append(crc, chunk);
            }
            sink(chunk)?;
            // SAFETY: DONTNEED on a private read-only file mapping only drops clean pages, which
            // are read again from the file if touched later; no borrowed data changes.
            let _ = unsafe { shard.unchecked_advise_range(UncheckedAdvice::DontNeed, offset, chunk.len()) };
        }
        if self.verify_checksums {
            self.check_crc(name, entry, crc)?;
        }
        Ok(())
    }

    /// Checks `computed`, the CRC32C of the stored bytes of tensor `name` that a caller read
    /// through [`BundleReader::read_unverified`] and checksummed as it went (with
    /// `crc32c_append`), against the index. Partitioned and string tensors were verified when
    /// read, so they pass; so does everything when verification is turned off.
    pub fn verify_checksum(&self, name: &str, computed: u32) -> Result<()> {
        let entry = self.entry(name)?;
        if !entry.slices.is_empty() || entry.dtype == DType::String {
            return Ok(());
        }
        self.check_crc(name, entry, computed)
    }

    /// Drops the memory-mapped pages behind bytes `range` of unpartitioned tensor `name` from
    /// this process's memory (they are read again from the file if touched later), so that a
    /// caller walking a large tensor through [`BundleReader::read_unverified`] keeps its
    /// resident memory bounded. Partitioned tensors (assembled copies) are left alone. The
    /// [`crate::tensor::FAULT_AROUND`] bytes before `range` (within the tensor) go too.
    pub fn release(&self, name: &str, range: std::ops::Range<usize>) {
        let Ok(entry) = self.entry(name) else { return };
        if !entry.slices.is_empty() || range.end > entry.size as usize || range.start >= range.end {
            return;
        }
        let Ok(shard) = self.shard(entry.shard_id) else { return };
        let start = range.start.saturating_sub(crate::tensor::FAULT_AROUND);
        // SAFETY: DONTNEED on a private read-only file mapping only drops clean pages, which
        // are read again from the file if touched later; no borrowed data changes.
        let _ = unsafe { shard.unchecked_advise_range(UncheckedAdvice::DontNeed, entry.offset as usize + start, range.end - start) };
    }

    /// Builds the full value of a partitioned variable from its slices. Every slice is found
    /// and bounds-checked, and together they must cover the declared shape, before the full
    /// tensor is allocated: a declared shape alone never sizes an allocation.
    fn assemble(&self, name: &str, full: &Entry) -> Result<Vec<u8>> {
        let corrupt = |what: String| Error::corrupt(&self.index_path, format!("tensor '{name}': {what}"));
        let elem = full
            .dtype
            .size()
            .ok_or_else(|| Error::unsupported(&self.index_path, format!("partitioned string tensor '{name}'")))?;
        let mut found = Vec::with_capacity(full.slices.len());
        let mut keys = std::collections::BTreeSet::new();
        let mut covered = 0u64;
        for extents in &full.slices {
            let (starts, lens) = resolve_extents(&full.shape, extents)
                .ok_or_else(|| corrupt(format!("slice {extents:?} lies outside its shape {:?}", full.shape)))?;
            let key = encode_slice_key(name, extents);
            let part = self.slices.get(&key).ok_or_else(|| corrupt(format!("slice {extents:?} is not stored")))?;
            if !keys.insert(key) {
                return Err(corrupt(format!("slice {extents:?} is listed twice")));
            }
            if part.dtype != full.dtype || part.shape != lens {
                return Err(corrupt(format!("slice {extents:?} has the wrong dtype or shape")));
            }
            // The part's bytes must be in its shard before they count towards the whole.
            self.stored_slice(name, part)?;
            covered = part.num_elements().and_then(|n| covered.checked_add(n)).ok_or_else(|| corrupt("slices are too large".into()))?;
            found.push((starts, lens, part));
        }
        if Some(covered) != full.num_elements() {
            return Err(corrupt(format!("slices cover {covered} of {} elements", full.num_elements().unwrap_or(0))));
        }
        let total = covered
            .checked_mul(elem as u64)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| corrupt("too large".into()))?;
        let mut out = vec![0u8; total];
        for (starts, lens, part) in found {
            let data = self.read_entry(name, part)?;
            let bytes = data.bytes().unwrap_or_default();
            copy_block(&mut out, &full.shape, bytes, &starts, &lens, elem);
        }
        Ok(out)
    }
}

fn decode_header(index: &Path, bytes: &[u8]) -> Result<BundleHeader> {
    let proto = BundleHeaderProto::parse_from_bytes(bytes)
        .map_err(|e| Error::corrupt(index, format!("bundle header is not a BundleHeaderProto ({e})")))?;
    if proto.endianness.enum_value() != Ok(Endianness::LITTLE) {
        return Err(Error::unsupported(index, "big-endian tensor bundle (written on a big-endian machine)"));
    }
    let version = proto.version.clone().unwrap_or_default();
    if version.min_consumer > 1 {
        return Err(Error::unsupported(
            index,
            format!("bundle format requires a reader of version {} (this reads version 1)", version.min_consumer),
        ));
    }
    if !(0..=MAX_SHARDS).contains(&proto.num_shards) {
        return Err(Error::corrupt(index, format!("header declares {} data shards", proto.num_shards)));
    }
    Ok(BundleHeader { num_shards: proto.num_shards as u32, producer: version.producer, min_consumer: version.min_consumer })
}

/// Start and length of every dimension of a slice, or `None` if it leaves the shape.
fn resolve_extents(shape: &[u64], extents: &[Extent]) -> Option<(Vec<u64>, Vec<u64>)> {
    if extents.len() != shape.len() {
        return None;
    }
    let mut starts = Vec::with_capacity(shape.len());
    let mut lens = Vec::with_capacity(shape.len());
    for (&dim, e) in shape.iter().zip(extents) {
        let (start, len) = match e.length {
            None => (0, dim),
            Some(n) => (u64::try_from(e.start).ok()?, u64::try_from(n).ok()?),
        };
        if start.checked_add(len)? > dim {
            return None;
        }
        starts.push(start);
        lens.push(len);
    }
    Some((starts, lens))
}

/// Copies a dense block of shape `lens` into `out` (shape `shape`) at `starts`.
fn copy_block(out: &mut [u8], shape: &[u64], block: &[u8], starts: &[u64], lens: &[u64], elem: usize) {
    let rank = shape.len();
    if rank == 0 {
        out[..elem].copy_from_slice(&block[..elem]);
        return;
    }
    if lens.contains(&0) {
        return;
    }
    // Row-major strides of the full tensor, in elements.
    let mut strides = vec![1u64; rank];
    for d in (0..rank - 1).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    let row = lens[rank - 1] as usize * elem;
    let mut index = vec![0u64; rank - 1]; // position within the block, all but the last dimension
    let mut src = 0usize;
    loop {
        let dst_elem: u64 = (0..rank).map(|d| (starts[d] + index.get(d).copied().unwrap_or(0)) * strides[d]).sum();
        let dst = dst_elem as usize * elem;
        out[dst..dst + row].copy_from_slice(&block[src..src + row]);
        src += row;
        // Odometer over the leading dimensions.
        let mut d = rank - 1;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            index[d] += 1;
            if index[d] < lens[d] {
                break;
            }
            index[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_block_places_rows() {
        // Full 3x4 of u8, block rows 1..3, cols 1..3.
        let mut out = vec![0u8; 12];
        copy_block(&mut out, &[3, 4], &[1, 2, 3, 4], &[1, 1], &[2, 2], 1);
        assert_eq!(out, vec![0, 0, 0, 0, 0, 1, 2, 0, 0, 3, 4, 0]);
        let mut out = vec![0u8; 8];
        copy_block(&mut out, &[2, 2, 2], &[9, 8, 7, 6], &[0, 1, 0], &[2, 1, 2], 1);
        assert_eq!(out, vec![0, 0, 9, 8, 0, 0, 7, 6]);
    }

    fn index_with_header(header: BundleHeaderProto) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut t = crate::table::TableBuilder::default();
        t.add(b"", &header.write_to_bytes().expect("encode"));
        std::fs::write(dir.path().join("m.index"), t.finish()).expect("write");
        dir
    }

    #[test]
    fn big_endian_and_future_bundles_are_rejected() {
        let mut h = BundleHeaderProto::new();
        h.num_shards = 1;
        h.endianness = Endianness::BIG.into();
        let dir = index_with_header(h.clone());
        let err = BundleReader::open(dir.path().join("m")).unwrap_err().to_string();
        assert!(err.contains("m.index: unsupported: big-endian"), "{err}");

        h.endianness = Endianness::LITTLE.into();
        let mut v = crate::proto::types::VersionDef::new();
        v.min_consumer = 7;
        h.version = protobuf::MessageField::some(v);
        let dir = index_with_header(h.clone());
        let err = BundleReader::open(dir.path().join("m")).unwrap_err().to_string();
        assert!(err.contains("version 7"), "{err}");

        h.version = protobuf::MessageField::none();
        h.num_shards = -3;
        let dir = index_with_header(h);
        assert!(BundleReader::open(dir.path().join("m")).unwrap_err().to_string().contains("-3 data shards"));
    }

    #[test]
    fn a_partitioned_shape_alone_never_sizes_an_allocation() {
        // 2^20 x 2^20 float32 declared (4 TiB), one 1 x 1 slice stored: the old reader allocated
        // the 4 TiB before looking for the slices, and aborted.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut h = BundleHeaderProto::new();
        h.num_shards = 1;
        let one = [Extent { start: 0, length: Some(1) }, Extent { start: 0, length: Some(1) }];
        let full = Entry { dtype: DType::Float32, shape: vec![1 << 20, 1 << 20], shard_id: 0, offset: 0, size: 0, masked_crc32c: 0, slices: vec![one.to_vec()] };
        let value = 1.5f32.to_le_bytes();
        let crc = crate::coding::mask_crc(crc32c::crc32c(&value));
        let part = Entry { dtype: DType::Float32, shape: vec![1, 1], shard_id: 0, offset: 0, size: 4, masked_crc32c: crc, slices: vec![] };
        // The index of tensor `big` described by `entry` with the one slice `part`.
        let write_index = |entry: &Entry| {
            let mut records = vec![(b"big".to_vec(), entry.encode()), (encode_slice_key("big", &one), part.encode())];
            records.sort();
            let mut t = crate::table::TableBuilder::default();
            t.add(b"", &h.write_to_bytes().expect("encode"));
            for (k, v) in &records {
                t.add(k, v);
            }
            std::fs::write(dir.path().join("m.index"), t.finish()).expect("index");
        };
        write_index(&full);
        std::fs::write(dir.path().join("m.data-00000-of-00001"), value).expect("shard");
        let reader = BundleReader::open(dir.path().join("m")).expect("opens");
        let err = reader.read("big").unwrap_err().to_string();
        assert!(err.ends_with("m.index: tensor 'big': slices cover 1 of 1099511627776 elements"), "{err}");
        // The same slice listed twice does not count twice.
        let twice = Entry { slices: vec![one.to_vec(), one.to_vec()], shape: vec![2, 1], ..full };
        write_index(&twice);
        let err = BundleReader::open(dir.path().join("m")).expect("opens").read("big").unwrap_err().to_string();
        assert!(err.contains("listed twice"), "{err}");
    }

    #[test]
    fn extents_outside_shape_are_rejected() {
        let full = Extent { start: 0, length: None };
        assert_eq!(resolve_extents(&[4, 5], &[Extent { start: 2, length: Some(2) }, full]), Some((vec![2, 0], vec![2, 5])));
        assert!(resolve_extents(&[4, 5], &[Extent { start: 3, length: Some(2) }, full]).is_none());
        assert!(resolve_extents(&[4], &[full, full]).is_none());
    }
}
