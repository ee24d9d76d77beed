//! Safetensors files: reading through the `safetensors` crate over a memory map, and a
//! streaming writer that never holds more than one chunk of tensor data in memory.
//!
//! Layout (the safetensors spec): an 8-byte little-endian header length N, N bytes of JSON
//! (`{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}}`,
//! padded with spaces to a multiple of 8), then the tensor bytes, contiguous.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::block_copy::{copy_tensor, copy_together, write_all_at, Piece, BLOCK};
use crate::edit::TensorEdit;
use crate::output_file::OutputFile;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::TensorInfo;

/// The bytes of a file: memory-mapped from disk, or handed over in memory.
#[derive(Debug)]
enum Backing {
    Map(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// An open safetensors file.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    map: Backing,
    data_start: usize,
    tensors: Vec<(TensorInfo, std::ops::Range<usize>)>,
    metadata: BTreeMap<String, String>,
}

impl SafetensorsFile {
    /// Opens and validates `path` (header, offsets, dtypes).
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsFile> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: read-only private map; the file is not modified while we read it.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        SafetensorsFile::from_backing(path, Backing::Map(map))
    }

    /// Parses the bytes of a safetensors file held in memory; `path` only names it in errors.
    pub fn parse(path: impl AsRef<Path>, bytes: Vec<u8>) -> Result<SafetensorsFile> {
        SafetensorsFile::from_backing(path.as_ref().to_path_buf(), Backing::Owned(bytes))
    }

    fn from_backing(path: PathBuf, map: Backing) -> Result<SafetensorsFile> {
        // read_metadata checks the header size cap, every offset against shape x dtype and the
        // file length, so each range below lies inside the map.
        let (header_len, meta) = safetensors::SafeTensors::read_metadata(&map)
            .map_err(|e| Error::corrupt(&path, format!("not a valid safetensors file: {e}")))?;
        let data_start = 8 + header_len;
        let mut tensors = Vec::new();
        for (name, info) in meta.tensors() {
            let dtype = DType::from_safetensors(info.dtype).ok_or_else(|| {
                Error::unsupported(&path, format!("tensor '{name}' has safetensors dtype {:?}, which TensorFlow has no type for", info.dtype))
            })?;
            let (begin, end) = info.data_offsets;
            let range = data_start
                .checked_add(begin)
                .zip(data_start.checked_add(end))
                .filter(|(b, e)| b <= e && *e <= map.len())
                .map(|(b, e)| b..e)
                .ok_or_else(|| Error::corrupt(&path, format!("tensor '{name}' lies outside the file")))?;
            tensors.push((
                TensorInfo {
                    name: name.clone(),
                    dtype,
                    shape: info.shape.iter().map(|&d| d as u64).collect(),
                    nbytes: range.len() as u64,
                    shard: None,
                },
                range,
            ));
        }
        tensors.sort_by_key(|(_, range)| range.start);
        let metadata = meta.metadata().clone().unwrap_or_default().into_iter().collect();
        Ok(SafetensorsFile { path, map, data_start, tensors, metadata })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `__metadata__` entries.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Every tensor, in file order.
    pub fn infos(&self) -> impl Iterator<Item = &TensorInfo> {
        self.tensors.iter().map(|(i, _)| i)
    }

    /// Offset of the first tensor byte in the file.
    pub fn data_start(&self) -> usize {
        self.data_start
    }

    /// The bytes of tensor `name`, borrowed from the memory map.
    pub fn bytes(&self, name: &str) -> Result<&[u8]> {
        self.tensors
            .iter()
            .find(|(i, _)| i.name == name)
            .and_then(|(_, r)| self.map.get(r.clone()))
            .ok_or_else(|| Error::NoSuchTensor { path: self.path.clone(), name: name.to_string() })
    }
}

impl SafetensorsFile {
    /// Drops the memory-mapped pages behind bytes `range` of tensor `name` from this
    /// process's memory (read again from the file if touched later), so that walking a large
    /// file keeps resident memory bounded. The [`crate::tensor::FAULT_AROUND`] bytes before
    /// `range` (within the tensor) go too.
    pub fn release(&self, name: &str, range: std::ops::Range<usize>) {
        let Some((_, r)) = self.tensors.iter().find(|(i, _)| i.name == name) else { return };
        if range.end > r.len() || range.start >= range.end {
            return;
        }
        // Files handed over in memory have nothing to release.
        if let Backing::Map(map) = &self.map {
            // SAFETY: DONTNEED on a private read-only file mapping only drops clean pages, which
            // are read again from the file if touched later; no borrowed data changes.
            let start = range.start.saturating_sub(crate::tensor::FAULT_AROUND);
            let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, r.start + start, range.end - start) };
        }
    }
}

/// One tensor to be written: its header record; its bytes come from the writer's callback.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    /// Name in the file.
    pub name: String,
    /// Element type (must have a safetensors equivalent).
    pub dtype: DType,
    /// Dimensions.
    pub shape: Vec<u64>,
}

impl PlannedTensor {
    fn nbytes(&self) -> Option<u64> {
        self.shape.iter().try_fold(self.dtype.size()? as u64, |acc, &d| acc.checked_mul(d))
    }
}

/// Writes a safetensors file atomically at `path`: the header from `tensors` and `metadata`,
/// then each tensor's bytes as `fill(i, sink)` produces them, in any number of chunks.
pub fn write_safetensors<F>(path: &Path, tensors: &[PlannedTensor], metadata: &BTreeMap<String, String>, mut fill: F) -> Result<()>
where
    F: FnMut(usize, &mut crate::tensor::Sink) -> Result<()>,
{
    write_safetensors_with(path, tensors, metadata, |i, out| fill(i, &mut |chunk: &[u8]| out.write_with(chunk.len(), 1, &mut |at, dst| dst.copy_from_slice(&chunk[at..at + dst.len()]))))
}

/// Where [`write_safetensors_with`] writes a tensor's bytes: `pwrite` at their place in the
/// file (the header, and so every tensor's offset, is known before any data is written).
pub struct TensorOut<'a> {
    file: &'a std::fs::File,
    path: &'a Path,
    /// Where the tensor's bytes start in the file.
    at: u64,
    written: u64,
    /// Reused for the stretches of [`TensorOut::write_with`].
    buf: &'a mut Vec<u8>,
    /// Where the next tensor's bytes start in the file and how many there are, if there is one.
    next: Option<(u64, u64)>,
    /// Set once [`TensorOut::copy_with_next`] has written the next tensor too.
    wrote_next: bool,
}

impl TensorOut<'_> {
    /// Appends `len` bytes that `fill` writes in place: it is called with each stretch's
    /// position within the `len` bytes and the stretch, every stretch but the last a multiple
    /// of `align` bytes (so each starts at a multiple of `align`) and at most a block long.
    pub fn write_with(&mut self, len: usize, align: usize, fill: &mut dyn FnMut(usize, &mut [u8])) -> Result<()> {
        let align = align.clamp(1, BLOCK);
        let stretch = BLOCK / align * align;
        let mut done = 0;
        while done < len {
            let n = stretch.min(len - done);
            self.buf.resize(n, 0);
            fill(done, self.buf);
            write_all_at(self.file, self.buf, self.at + self.written).map_err(|e| Error::io(self.path, e))?;
            self.written += n as u64;
            done += n;
        }
        Ok(())
    }

    /// Appends `src` (stored bytes, e.g. where a source file is mapped), rewritten by `edit` if
    /// given, a block at a time on every core (see [`copy_tensor`]); `release` gets each
    /// block's byte range of `src` once it is written. Returns the CRC32C of `src`, for the
    /// caller to verify against its source.
    pub fn copy(&mut self, src: &[u8], edit: Option<&dyn TensorEdit>, release: &(dyn Fn(std::ops::Range<usize>) + Sync)) -> Result<u32> {
        let copied = copy_tensor(self.file, self.at + self.written, src, edit, release).map_err(|e| Error::io(self.path, e))?;
        self.written += src.len() as u64;
        Ok(copied.source_crc)
    }

    /// Appends `this` as [`TensorOut::copy`] does and writes `next`, all of the next tensor's
    /// bytes, block by block together with it (see [`copy_together`]: the two halves of a
    /// posterior are then decided once per block); the next tensor is then not asked for. Each
    /// piece's `at` is ignored. Returns the CRC32C of both sources.
    pub fn copy_with_next(&mut self, this: Piece, next: Piece) -> Result<(u32, u32)> {
        let Some((next_at, next_size)) = self.next.filter(|&(_, size)| size == next.src.len() as u64) else {
            return Err(Error::invalid(self.path, "no next tensor of that size to write along"));
        };
        let pieces = [Piece { at: self.at + self.written, ..this }, Piece { at: next_at, ..next }];
        let copied = copy_together(self.file, &pieces).map_err(|e| Error::io(self.path, e))?;
        self.written += this.src.len() as u64;
        self.wrote_next = next_size == next.src.len() as u64;
        Ok((copied[0].source_crc, copied[1].source_crc))
    }
}

/// [`write_safetensors`] with each tensor's bytes written in place by `fill(i, out)`.
pub fn write_safetensors_with<F>(path: &Path, tensors: &[PlannedTensor], metadata: &BTreeMap<String, String>, fill: F) -> Result<()>
where
    F: FnMut(usize, &mut TensorOut) -> Result<()>,
{
    write_safetensors_late(path, tensors, metadata, None, fill)
}

/// A `__metadata__` entry of [`write_safetensors_late`] whose value comes after the data.
pub struct Late<'a> {
    /// The entry's key.
    pub key: &'a str,
    /// A value at least as long, escaped in JSON, as the final one: the header keeps room for it.
    pub longest: String,
    /// The final value, asked for once every tensor has been written.
    pub value: &'a dyn Fn() -> Result<String>,
}

/// Where each tensor's bytes go in the data: (offset, size).
type Placement = Vec<(u64, u64)>;

/// The JSON header of a safetensors file (unpadded), and each tensor's (offset, size).
fn header_json(path: &Path, tensors: &[PlannedTensor], metadata: &BTreeMap<String, String>) -> Result<(Vec<u8>, Placement)> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(metadata).map_err(|e| Error::invalid(path, e.to_string()))?);
    }
    let mut offset = 0u64;
    let mut offsets: Vec<(u64, u64)> = Vec::with_capacity(tensors.len());
    for t in tensors {
        let dtype = t
            .dtype
            .safetensors_name()
            .ok_or_else(|| Error::unsupported(path, format!("tensor '{}' is {}, which safetensors cannot hold", t.name, t.dtype)))?;
        let n = t.nbytes().ok_or_else(|| Error::invalid(path, format!("tensor '{}' is too large", t.name)))?;
        if header.contains_key(&t.name) {
            return Err(Error::invalid(path, format!("tensor '{}' planned twice", t.name)));
        }
        let end = offset.checked_add(n).ok_or_else(|| Error::invalid(path, format!("tensors up to '{}' are too large together", t.name)))?;
        header.insert(t.name.clone(), serde_json::json!({"dtype": dtype, "shape": t.shape, "data_offsets": [offset, end]}));
        offsets.push((offset, n));
        offset = end;
    }
    let json = serde_json::to_vec(&header).map_err(|e| Error::invalid(path, e.to_string()))?;
    Ok((json, offsets))
}

/// [`write_safetensors_with`] with an entry of `__metadata__` whose value is known only after
/// the data: the header is written last, padded with spaces (as the format allows) to the room
/// the entry's longest value needs, so that the data's place is known before it is written.
pub fn write_safetensors_late<F>(path: &Path, tensors: &[PlannedTensor], metadata: &BTreeMap<String, String>, late: Option<Late>, mut fill: F) -> Result<()>
where
    F: FnMut(usize, &mut TensorOut) -> Result<()>,
{
    let with = |value: String| {
        let mut m = metadata.clone();
        m.extend(late.as_ref().map(|l| (l.key.to_string(), value)));
        m
    };
    let (mut json, offsets) = match &late {
        Some(l) => header_json(path, tensors, &with(l.longest.clone()))?,
        None => header_json(path, tensors, metadata)?,
    };
    let offset = offsets.last().map_or(0, |&(at, n)| at + n);
    // The spec pads the header with spaces so tensor data starts 8-byte aligned. A header
    // written last is padded anyway: on to a page boundary, so that the data's block writes
    // start on pages (no page shared by two writes).
    let end = if late.is_some() { (8 + json.len()).next_multiple_of(4096) - 8 } else { json.len().next_multiple_of(8) };
    json.resize(end, b' ');
    let io = |e| Error::io(path, e);
    let data_start = 8 + json.len() as u64;
    let total = data_start.checked_add(offset).ok_or_else(|| Error::invalid(path, "the tensors are too large together"))?;
    // Dropped on an error before the commit: the partial file goes with it.
    let file = OutputFile::create(path)?;
    // A disk without room for the whole file fails here, before any write.
    file.allocate(total)?;
    write_all_at(file.file(), &(json.len() as u64).to_le_bytes(), 0).map_err(io)?;
    if late.is_none() {
        write_all_at(file.file(), &json, 8).map_err(io)?;
    }
    let mut buf = Vec::new();
    let mut written_along = false;
    for (i, (t, &(at, size))) in tensors.iter().zip(&offsets).enumerate() {
        if std::mem::take(&mut written_along) {
            // Written whole along with the tensor before it.
            continue;
        }
        let next = offsets.get(i + 1).map(|&(at, size)| (data_start + at, size));
        let mut out = TensorOut { file: file.file(), path, at: data_start + at, written: 0, buf: &mut buf, next, wrote_next: false };
        fill(i, &mut out)?;
        if out.written != size {
            return Err(Error::invalid(path, format!("tensor '{}' needs {} bytes, got {}", t.name, size, out.written)));
        }
        written_along = out.wrote_next;
    }
    if let Some(l) = &late {
        let (mut last, _) = header_json(path, tensors, &with((l.value)()?))?;
        if last.len() > json.len() {
            return Err(Error::invalid(path, format!("metadata '{}' outgrew the room kept for it in the header", l.key)));
        }
        last.resize(json.len(), b' ');
        write_all_at(file.file(), &last, 8).map_err(io)?;
    }
    file.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_are_read_by_the_safetensors_crate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.safetensors");
        let tensors = vec![
            PlannedTensor { name: "a.kernel".into(), dtype: DType::Float32, shape: vec![2, 3] },
            PlannedTensor { name: "b".into(), dtype: DType::Bfloat16, shape: vec![] },
            PlannedTensor { name: "empty".into(), dtype: DType::Int64, shape: vec![0, 4] },
        ];
        let data: Vec<Vec<u8>> = vec![(0u8..24).collect(), vec![0x80, 0x3f], vec![]];
        let meta = BTreeMap::from([("k".to_string(), "v".to_string())]);
        write_safetensors(&path, &tensors, &meta, |i, sink| {
            for chunk in data[i].chunks(5) {
                sink(chunk)?;
            }
            Ok(())
        })
        .expect("written");
        let bytes = std::fs::read(&path).expect("read");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
        assert_eq!(st.tensor("a.kernel").expect("a").data(), &data[0][..]);
        assert_eq!(st.tensor("b").expect("b").dtype(), safetensors::Dtype::BF16);
        let f = SafetensorsFile::open(&path).expect("opens");
        assert_eq!(f.metadata()["k"], "v");
        assert_eq!(f.bytes("b").expect("b"), &[0x80, 0x3f]);
        assert_eq!(f.infos().map(|i| i.name.as_str()).collect::<Vec<_>>(), vec!["a.kernel", "b", "empty"]);
    }

    #[test]
    fn a_late_metadata_entry_is_written_after_the_data_in_the_room_kept_for_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tensors = vec![
            PlannedTensor { name: "a".into(), dtype: DType::Float32, shape: vec![3] },
            PlannedTensor { name: "b".into(), dtype: DType::Uint8, shape: vec![5] },
        ];
        let data: Vec<Vec<u8>> = vec![(0u8..12).collect(), vec![9; 5]];
        let meta = BTreeMap::from([("k".to_string(), "v".to_string())]);
        let write = |name: &str, value: &str| {
            let path = dir.path().join(name);
            let produced = std::cell::Cell::new(false);
            let value = || {
                assert!(produced.get(), "asked for after the data");
                Ok(value.to_string())
            };
            let late = Late { key: "counts", longest: "\"\"\"\"\"\"\"\"\"9".into(), value: &value };
            let r = write_safetensors_late(&path, &tensors, &meta, Some(late), |i, out| {
                produced.set(i == 1);
                out.write_with(data[i].len(), 4, &mut |at, dst| dst.copy_from_slice(&data[i][at..at + dst.len()]))
            });
            (path, r)
        };
        // The longest value escapes to 19 bytes: one of 7 characters, escaped to 9, fits.
        let (path, r) = write("fits.safetensors", "\"12\"345");
        r.expect("written");
        let bytes = std::fs::read(&path).expect("read");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
        assert_eq!(st.tensor("a").expect("a").data(), &data[0][..]);
        assert_eq!(st.tensor("b").expect("b").data(), &data[1][..]);
        let f = SafetensorsFile::open(&path).expect("opens");
        assert_eq!(f.metadata()["counts"], "\"12\"345");
        assert_eq!(f.metadata()["k"], "v");
        // The header is as long as with the longest value, padded with spaces.
        let longest = header_json(&path, &tensors, &BTreeMap::from([("counts".into(), "\"\"\"\"\"\"\"\"\"9".into()), ("k".into(), "v".into())])).expect("json").0;
        assert!(f.data_start() >= 8 + longest.len() && f.data_start().is_multiple_of(4096), "{}", f.data_start());
        assert!(bytes[8..f.data_start()].ends_with(b"  "), "padded with spaces");
        // A value longer than the room kept is an error naming the file, and leaves nothing.
        let (path, r) = write("long.safetensors", &"\"".repeat(3000));
        let err = r.expect_err("too long").to_string();
        assert!(err.contains("long.safetensors") && err.contains("counts"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn offsets_past_u64_are_an_error_before_writing() {
        // Two tensors of 2^63 bytes each: the second's end offset wrapped to 0 in the old plan.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.safetensors");
        let t = vec![
            PlannedTensor { name: "a".into(), dtype: DType::Float32, shape: vec![1 << 61] },
            PlannedTensor { name: "b".into(), dtype: DType::Float32, shape: vec![1 << 61] },
        ];
        let err = write_safetensors(&path, &t, &BTreeMap::new(), |_, _| Ok(())).expect_err("too large").to_string();
        assert!(err.ends_with("m.safetensors: tensors up to 'b' are too large together"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn in_memory_files_parse_like_files_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.safetensors");
        let t = vec![PlannedTensor { name: "a".into(), dtype: DType::Uint8, shape: vec![3] }];
        write_safetensors(&path, &t, &BTreeMap::new(), |_, sink| sink(&[1, 2, 3])).expect("write");
        let bytes = std::fs::read(&path).expect("read");
        let f = SafetensorsFile::parse("mem.safetensors", bytes.clone()).expect("parses");
        assert_eq!(f.bytes("a").expect("a"), &[1, 2, 3]);
        let err = SafetensorsFile::parse("mem.safetensors", bytes[..bytes.len() - 1].to_vec()).expect_err("truncated").to_string();
        assert!(err.starts_with("mem.safetensors: not a valid safetensors file"), "{err}");
    }

    #[test]
    fn failures_leave_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.safetensors");
        let t = vec![PlannedTensor { name: "a".into(), dtype: DType::Float32, shape: vec![2] }];
        let r = write_safetensors(&path, &t, &BTreeMap::new(), |_, sink| sink(&[1, 2, 3]));
        assert!(r.is_err());
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0, "no temporary file left behind");
        let s = vec![PlannedTensor { name: "s".into(), dtype: DType::String, shape: vec![1] }];
        assert!(write_safetensors(&path, &s, &BTreeMap::new(), |_, _| Ok(())).unwrap_err().to_string().contains("cannot hold"));
        std::fs::write(&path, b"garbage!garbage!").expect("write");
        assert!(SafetensorsFile::open(&path).unwrap_err().to_string().contains("not a valid safetensors"));
    }
}
