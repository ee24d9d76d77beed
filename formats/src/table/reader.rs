//! Reading a whole table into sorted key/value pairs, verifying every block checksum.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use super::block::decode_block;
use super::{BlockHandle, BLOCK_TRAILER_LEN, FOOTER_LEN, TABLE_MAGIC};
use crate::coding::{read_fixed32, read_fixed64, unmask_crc};
use crate::error::{Error, Result};

/// Compression byte values of a block trailer.
const NO_COMPRESSION: u8 = 0;
const SNAPPY_COMPRESSION: u8 = 1;

/// Largest decompressed block accepted (1 GiB): TensorFlow writes blocks of about 256 KiB, and
/// a single entry is a short proto, so only a hostile file comes near it.
pub const MAX_BLOCK_BYTES: usize = 1 << 30;

/// Snappy emits at most 64 bytes per 3 input bytes (a copy with a two-byte offset), so a block
/// claiming more than 22 times its compressed size is damaged; checked before allocating.
const MAX_SNAPPY_EXPANSION: usize = 22;

/// A parsed table: its entries in key order.
#[derive(Debug)]
pub struct Table {
    path: PathBuf,
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Table {
    /// Parses the table held in `bytes` (the contents of the file at `path`, named in errors).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Table> {
        let corrupt = |what: String| Error::corrupt(path, what);
        if bytes.is_empty() {
            return Err(corrupt("empty file, not a checkpoint index".into()));
        }
        if bytes.len() < FOOTER_LEN {
            return Err(corrupt(format!(
                "truncated: {} bytes, shorter than the {FOOTER_LEN}-byte table footer",
                bytes.len()
            )));
        }
        let footer = &bytes[bytes.len() - FOOTER_LEN..];
        let magic = read_fixed64(footer, 40).unwrap_or(0);
        if magic != TABLE_MAGIC {
            return Err(corrupt(format!(
                "bad table magic number {magic:#018x} (expected {TABLE_MAGIC:#018x}): not a checkpoint index, or truncated"
            )));
        }
        let (_metaindex, used) =
            BlockHandle::decode(footer).ok_or_else(|| corrupt("malformed meta-index handle in footer".into()))?;
        let (index, _) = BlockHandle::decode(&footer[used..40])
            .ok_or_else(|| corrupt("malformed index handle in footer".into()))?;

        let body = &bytes[..bytes.len() - FOOTER_LEN];
        let index_block = read_block(path, body, index, "index block")?;
        let handles = decode_block(&index_block).map_err(|e| corrupt(format!("index block: {e}")))?;

        let mut entries = Vec::new();
        for (i, (_, handle_bytes)) in handles.iter().enumerate() {
            let (handle, _) = BlockHandle::decode(handle_bytes)
                .ok_or_else(|| corrupt(format!("index entry {i}: malformed block handle")))?;
            let what = format!("data block {i}");
            let block = read_block(path, body, handle, &what)?;
            let decoded = decode_block(&block).map_err(|e| corrupt(format!("{what}: {e}")))?;
            for (k, v) in decoded {
                if let Some((last, _)) = entries.last() {
                    if &k <= last {
                        return Err(corrupt(format!("{what}: keys are not in increasing order across blocks")));
                    }
                }
                entries.push((k, v.to_vec()));
            }
        }
        Ok(Table { path: path.to_path_buf(), entries })
    }

    /// The file this table was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All entries, sorted by key.
    pub fn entries(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.entries
    }

    /// Takes the entries out of the table.
    pub fn into_entries(self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.entries
    }
}

/// Returns the contents of the block at `handle`, checksum verified and decompressed.
fn read_block<'a>(path: &Path, body: &'a [u8], handle: BlockHandle, what: &str) -> Result<Cow<'a, [u8]>> {
    let start = usize::try_from(handle.offset).ok();
    let end = start
        .zip(usize::try_from(handle.size).ok())
        .and_then(|(s, n)| s.checked_add(n))
        .and_then(|e| e.checked_add(BLOCK_TRAILER_LEN));
    let (start, end) = match (start, end) {
        (Some(s), Some(e)) if e <= body.len() => (s, e - BLOCK_TRAILER_LEN),
        _ => {
            return Err(Error::corrupt(
                path,
                format!(
                    "{what} at offset {} with {} bytes lies past the end of the file ({} bytes before the footer)",
                    handle.offset,
                    handle.size,
                    body.len()
                ),
            ))
        }
    };
    let contents = &body[start..end];
    let kind = body[end];
    let stored = unmask_crc(read_fixed32(body, end + 1).unwrap_or(0));
    let computed = crc32c::crc32c_append(crc32c::crc32c(contents), &[kind]);
    if stored != computed {
        return Err(Error::Checksum { path: path.to_path_buf(), what: what.to_string(), stored, computed });
    }
    match kind {
        NO_COMPRESSION => Ok(Cow::Borrowed(contents)),
        SNAPPY_COMPRESSION => {
            let bad = |e: snap::Error| Error::corrupt(path, format!("{what}: bad snappy data: {e}"));
            let claimed = snap::raw::decompress_len(contents).map_err(bad)?;
            let limit = contents.len().saturating_mul(MAX_SNAPPY_EXPANSION).min(MAX_BLOCK_BYTES);
            if claimed > limit {
                return Err(Error::corrupt(
                    path,
                    format!("{what}: snappy block of {} bytes claims {claimed} bytes decompressed (at most {limit} possible)", contents.len()),
                ));
            }
            snap::raw::Decoder::new().decompress_vec(contents).map(Cow::Owned).map_err(bad)
        }
        other => Err(Error::unsupported(path, format!("{what} uses compression type {other}, which bnn-convert cannot read"))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::block::BlockBuilder;
    use super::*;
    use crate::coding::mask_crc;

    /// Appends `contents` snappy-compressed with its trailer; returns its handle.
    fn push_snappy_block(out: &mut Vec<u8>, contents: &[u8]) -> BlockHandle {
        let compressed = snap::raw::Encoder::new().compress_vec(contents).expect("compress");
        let handle = BlockHandle { offset: out.len() as u64, size: compressed.len() as u64 };
        out.extend_from_slice(&compressed);
        out.push(SNAPPY_COMPRESSION);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&compressed), &[SNAPPY_COMPRESSION]);
        out.extend_from_slice(&mask_crc(crc).to_le_bytes());
        handle
    }

    fn snappy_table(kind_of_data_block: Option<u8>) -> Vec<u8> {
        let mut data = BlockBuilder::new(16);
        data.add(b"", b"header");
        data.add(b"den_1/kernel_posterior_loc", &[7u8; 100]);
        let mut out = Vec::new();
        let data_handle = push_snappy_block(&mut out, &data.finish());
        if let Some(kind) = kind_of_data_block {
            // Rewrite the trailer with another compression type (and a matching checksum).
            let end = (data_handle.offset + data_handle.size) as usize;
            out[end] = kind;
            let crc = crc32c::crc32c_append(crc32c::crc32c(&out[data_handle.offset as usize..end]), &[kind]);
            out[end + 1..end + 5].copy_from_slice(&mask_crc(crc).to_le_bytes());
        }
        let meta = push_snappy_block(&mut out, &BlockBuilder::new(16).finish());
        let mut index = BlockBuilder::new(1);
        let mut h = Vec::new();
        data_handle.encode(&mut h);
        index.add(b"den_1/kernel_posterior_loc", &h);
        let index_handle = push_snappy_block(&mut out, &index.finish());
        let mut footer = Vec::new();
        meta.encode(&mut footer);
        index_handle.encode(&mut footer);
        footer.resize(40, 0);
        footer.extend_from_slice(&TABLE_MAGIC.to_le_bytes());
        out.extend_from_slice(&footer);
        out
    }

    #[test]
    fn snappy_blocks_are_decompressed() {
        let t = Table::parse(Path::new("s.index"), &snappy_table(None)).expect("snappy table parses");
        assert_eq!(t.entries().len(), 2);
        assert_eq!(t.entries()[1].1, vec![7u8; 100]);
    }

    #[test]
    fn snappy_lengths_past_the_cap_are_refused_before_allocating() {
        // Five bytes of varint claiming 2^32 - 1 bytes, then one literal byte: the old reader
        // allocated 4 GiB before finding out.
        let mut out = Vec::new();
        let contents = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00, 0x41];
        out.extend_from_slice(&contents);
        out.push(SNAPPY_COMPRESSION);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&contents), &[SNAPPY_COMPRESSION]);
        out.extend_from_slice(&mask_crc(crc).to_le_bytes());
        let handle = BlockHandle { offset: 0, size: contents.len() as u64 };
        let err = read_block(Path::new("h.index"), &out, handle, "index block").unwrap_err().to_string();
        assert_eq!(err, "h.index: index block: snappy block of 7 bytes claims 4294967295 bytes decompressed (at most 154 possible)");
        // A real block of 22x compression still reads: 6400 equal bytes compress to about 300.
        let mut ok = Vec::new();
        let zeros = vec![0u8; 6400];
        let h = push_snappy_block(&mut ok, &zeros);
        assert!(h.size as usize * MAX_SNAPPY_EXPANSION >= 6400, "{}", h.size);
        assert_eq!(read_block(Path::new("h.index"), &ok, h, "b").expect("reads").as_ref(), &zeros[..]);
    }

    #[test]
    fn unknown_compression_is_a_clear_error() {
        let err = Table::parse(Path::new("z.index"), &snappy_table(Some(4))).unwrap_err().to_string();
        assert!(err.starts_with("z.index: unsupported: data block 0 uses compression type 4"), "{err}");
    }
}
