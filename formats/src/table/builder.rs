//! Writing a table: the inverse of [`super::Table::parse`], producing files TensorFlow reads.

use std::io::Write;

use super::block::BlockBuilder;
use super::{BlockHandle, FOOTER_LEN, TABLE_MAGIC};
use crate::coding::mask_crc;

/// Builds a table in memory from keys added in increasing order.
///
/// Blocks are written uncompressed, as TensorFlow itself writes bundle indexes (so that every
/// TensorFlow release can read them).
pub struct TableBuilder {
    out: Vec<u8>,
    block_size: usize,
    data: BlockBuilder,
    index: BlockBuilder,
    last_key: Option<Vec<u8>>,
}

impl Default for TableBuilder {
    fn default() -> Self {
        Self::new(256 * 1024)
    }
}

impl TableBuilder {
    /// A builder that starts a new data block once the current one reaches `block_size` bytes.
    pub fn new(block_size: usize) -> Self {
        TableBuilder {
            out: Vec::new(),
            block_size: block_size.max(1),
            data: BlockBuilder::new(16),
            index: BlockBuilder::new(1),
            last_key: None,
        }
    }

    /// Adds an entry. Keys must be strictly increasing; returns `false` (adding nothing) if not.
    pub fn add(&mut self, key: &[u8], value: &[u8]) -> bool {
        if self.last_key.as_deref().is_some_and(|last| key <= last) {
            return false;
        }
        self.data.add(key, value);
        self.last_key = Some(key.to_vec());
        if self.data.estimated_size() >= self.block_size {
            self.flush_data_block();
        }
        true
    }

    fn flush_data_block(&mut self) {
        if self.data.is_empty() {
            return;
        }
        let block = self.data.finish();
        let handle = self.write_block(&block);
        // The block's last key separates it from the next block: every key in the block is <= it
        // and every later key is greater.
        let mut encoded = Vec::new();
        handle.encode(&mut encoded);
        let last = self.last_key.clone().unwrap_or_default();
        self.index.add(&last, &encoded);
    }

    fn write_block(&mut self, contents: &[u8]) -> BlockHandle {
        let handle = BlockHandle { offset: self.out.len() as u64, size: contents.len() as u64 };
        self.out.extend_from_slice(contents);
        self.out.push(0); // no compression
        let crc = crc32c::crc32c_append(crc32c::crc32c(contents), &[0]);
        self.out.extend_from_slice(&mask_crc(crc).to_le_bytes());
        handle
    }

    /// Finishes the table and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.flush_data_block();
        let metaindex = self.write_block(&BlockBuilder::new(16).finish());
        let index_block = self.index.finish();
        let index = self.write_block(&index_block);
        let mut footer = Vec::with_capacity(FOOTER_LEN);
        metaindex.encode(&mut footer);
        index.encode(&mut footer);
        footer.resize(40, 0);
        footer.extend_from_slice(&TABLE_MAGIC.to_le_bytes());
        self.out.extend_from_slice(&footer);
        self.out
    }

    /// Finishes the table and writes it to `w`.
    pub fn finish_into(self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(&self.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Table;
    use super::*;
    use std::path::Path;

    #[test]
    fn many_blocks_round_trip() {
        let mut b = TableBuilder::new(64);
        let keys: Vec<Vec<u8>> = (0..500u32).map(|i| format!("layer_{i:05}/kernel").into_bytes()).collect();
        for (i, k) in keys.iter().enumerate() {
            assert!(b.add(k, &(i as u32).to_le_bytes()));
        }
        assert!(!b.add(b"a", b"out of order"));
        let bytes = b.finish();
        let t = Table::parse(Path::new("mem.index"), &bytes).expect("parses");
        assert_eq!(t.entries().len(), 500);
        for (i, (k, v)) in t.entries().iter().enumerate() {
            assert_eq!(k, &keys[i]);
            assert_eq!(v, &(i as u32).to_le_bytes());
        }
    }

    #[test]
    fn empty_table_round_trip() {
        let bytes = TableBuilder::default().finish();
        let t = Table::parse(Path::new("empty.index"), &bytes).expect("parses");
        assert!(t.entries().is_empty());
    }

    #[test]
    fn corruption_is_detected() {
        let mut b = TableBuilder::default();
        b.add(b"", b"header");
        b.add(b"w", b"entry");
        let good = b.finish();
        let p = Path::new("x.index");
        // Flip one bit in the data block: its checksum no longer matches.
        let mut bad = good.clone();
        bad[3] ^= 1;
        let err = Table::parse(p, &bad).unwrap_err().to_string();
        assert!(err.contains("CRC32C mismatch"), "{err}");
        // Wrong magic.
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        assert!(Table::parse(p, &bad).unwrap_err().to_string().contains("magic"));
        // Truncated.
        assert!(Table::parse(p, &good[..good.len() - 1]).is_err());
        assert!(Table::parse(p, &[]).unwrap_err().to_string().contains("empty"));
    }
}
