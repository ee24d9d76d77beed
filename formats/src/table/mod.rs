//! The immutable sorted table (LevelDB's SSTable, as TensorFlow's `core/lib/io/table` writes it)
//! that a checkpoint `.index` file is.
//!
//! Layout: data blocks, a meta-index block, an index block, then a 48-byte footer holding the
//! handles of the meta-index and index blocks and the magic number. Every block is followed by a
//! 5-byte trailer: a compression byte and the masked CRC32C of the block and that byte.

mod block;
mod builder;
mod reader;

pub use builder::TableBuilder;
pub use reader::Table;

/// Magic number at the end of every table footer.
pub const TABLE_MAGIC: u64 = 0xdb47_7524_8b80_fb57;
/// Bytes in the footer: two block handles padded to 40 bytes, then the 8-byte magic number.
pub const FOOTER_LEN: usize = 48;
/// Bytes after every block: compression type and masked CRC32C.
pub const BLOCK_TRAILER_LEN: usize = 5;

/// Where a block lies in the table file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHandle {
    /// Offset of the block's first byte.
    pub offset: u64,
    /// Length of the block, trailer excluded.
    pub size: u64,
}

impl BlockHandle {
    /// Decodes a handle (two varints) from the front of `buf`, returning it and the bytes used.
    pub fn decode(buf: &[u8]) -> Option<(BlockHandle, usize)> {
        let (offset, a) = crate::coding::read_varint64(buf)?;
        let (size, b) = crate::coding::read_varint64(&buf[a..])?;
        Some((BlockHandle { offset, size }, a + b))
    }

    /// Appends the handle's two varints to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        crate::coding::put_varint64(out, self.offset);
        crate::coding::put_varint64(out, self.size);
    }
}
