//! One block: prefix-compressed key/value entries followed by restart offsets.
//!
//! Entry: varint32 shared key bytes, varint32 unshared key bytes, varint32 value length,
//! the unshared key bytes, the value. Block end: fixed32 restart offsets, fixed32 their count.

use crate::coding::{put_varint64, read_fixed32, read_varint32};

/// A decoded entry: the key (rebuilt from its shared prefix) and the value, borrowed.
pub(crate) type BlockEntry<'a> = (Vec<u8>, &'a [u8]);

/// Decodes every entry of a block, or describes what is malformed.
pub(crate) fn decode_block(block: &[u8]) -> Result<Vec<BlockEntry<'_>>, String> {
    let len = block.len();
    if len < 4 {
        return Err(format!("block of {len} bytes is too short for its restart count"));
    }
    let num_restarts = read_fixed32(block, len - 4).ok_or("block ends early")? as usize;
    let restarts_bytes = num_restarts
        .checked_mul(4)
        .and_then(|n| n.checked_add(4))
        .filter(|&n| n <= len)
        .ok_or_else(|| format!("block declares {num_restarts} restart points, more than its {len} bytes hold"))?;
    let entries_end = len - restarts_bytes;
    let restarts: Vec<usize> = (0..num_restarts)
        .map(|i| read_fixed32(block, entries_end + 4 * i).map(|r| r as usize).unwrap_or(usize::MAX))
        .collect();
    if restarts.iter().any(|&r| r >= entries_end.max(1)) && entries_end > 0 {
        return Err("restart point past the end of the block's entries".into());
    }

    let mut entries: Vec<BlockEntry<'_>> = Vec::new();
    let mut last_key: Vec<u8> = Vec::new();
    let mut pos = 0usize;
    while pos < entries_end {
        let rest = &block[pos..entries_end];
        let (shared, a) = read_varint32(rest).ok_or("truncated entry header")?;
        let (unshared, b) = read_varint32(&rest[a..]).ok_or("truncated entry header")?;
        let (value_len, c) = read_varint32(&rest[a + b..]).ok_or("truncated entry header")?;
        let (shared, unshared, value_len) = (shared as usize, unshared as usize, value_len as usize);
        if restarts.binary_search(&pos).is_ok() && shared != 0 {
            return Err("entry at a restart point shares a key prefix".into());
        }
        if shared > last_key.len() {
            return Err(format!("entry shares {shared} key bytes but the previous key has {}", last_key.len()));
        }
        let key_start = a + b + c;
        let value_start = key_start.checked_add(unshared).ok_or("key length overflows")?;
        let value_end = value_start.checked_add(value_len).ok_or("value length overflows")?;
        if value_end > rest.len() {
            return Err("entry runs past the end of its block".into());
        }
        let mut key = last_key[..shared].to_vec();
        key.extend_from_slice(&rest[key_start..value_start]);
        if !entries.is_empty() && key <= last_key {
            return Err("keys are not in increasing order".into());
        }
        last_key.clone_from(&key);
        entries.push((key, &rest[value_start..value_end]));
        pos += value_end;
    }
    Ok(entries)
}

/// Accumulates sorted entries into one block with prefix compression.
pub(crate) struct BlockBuilder {
    buf: Vec<u8>,
    restarts: Vec<u32>,
    restart_interval: usize,
    since_restart: usize,
    last_key: Vec<u8>,
}

impl BlockBuilder {
    pub(crate) fn new(restart_interval: usize) -> Self {
        BlockBuilder {
            buf: Vec::new(),
            restarts: vec![0],
            restart_interval: restart_interval.max(1),
            since_restart: 0,
            last_key: Vec::new(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes the finished block would take.
    pub(crate) fn estimated_size(&self) -> usize {
        self.buf.len() + 4 * self.restarts.len() + 4
    }

    /// Adds an entry; keys must arrive in strictly increasing order (checked by the caller).
    pub(crate) fn add(&mut self, key: &[u8], value: &[u8]) {
        let shared = if self.since_restart < self.restart_interval {
            key.iter().zip(&self.last_key).take_while(|(a, b)| a == b).count()
        } else {
            self.restarts.push(self.buf.len() as u32);
            self.since_restart = 0;
            0
        };
        put_varint64(&mut self.buf, shared as u64);
        put_varint64(&mut self.buf, (key.len() - shared) as u64);
        put_varint64(&mut self.buf, value.len() as u64);
        self.buf.extend_from_slice(&key[shared..]);
        self.buf.extend_from_slice(value);
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.since_restart += 1;
    }

    /// Returns the finished block bytes and resets the builder.
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        for r in &self.restarts {
            out.extend_from_slice(&r.to_le_bytes());
        }
        out.extend_from_slice(&(self.restarts.len() as u32).to_le_bytes());
        self.restarts = vec![0];
        self.since_restart = 0;
        self.last_key.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_compression_round_trip() {
        let keys: Vec<String> = (0..40).map(|i| format!("den_{}/kernel_{i:03}", i % 3)).collect();
        let mut keys = keys;
        keys.sort();
        keys.dedup();
        let mut b = BlockBuilder::new(4);
        for k in &keys {
            b.add(k.as_bytes(), k.to_uppercase().as_bytes());
        }
        let block = b.finish();
        let decoded = decode_block(&block).expect("valid block");
        assert_eq!(decoded.len(), keys.len());
        for ((k, v), want) in decoded.iter().zip(&keys) {
            assert_eq!(k, want.as_bytes());
            assert_eq!(*v, want.to_uppercase().as_bytes());
        }
    }

    #[test]
    fn hand_built_block_decodes() {
        // Two entries "abc"->"1", "abd"->"22" with the second sharing 2 bytes; one restart at 0.
        let mut block = vec![0, 3, 1, b'a', b'b', b'c', b'1', 2, 1, 2, b'd', b'2', b'2'];
        block.extend_from_slice(&0u32.to_le_bytes());
        block.extend_from_slice(&1u32.to_le_bytes());
        let d = decode_block(&block).expect("valid");
        assert_eq!(d, vec![(b"abc".to_vec(), &b"1"[..]), (b"abd".to_vec(), &b"22"[..])]);
    }

    #[test]
    fn malformed_blocks_are_rejected() {
        assert!(decode_block(&[1, 2]).is_err());
        // Declares a million restarts.
        assert!(decode_block(&1_000_000u32.to_le_bytes()).is_err());
        // Shares more bytes than the previous key has.
        let mut block = vec![5, 1, 0, b'x'];
        block.extend_from_slice(&0u32.to_le_bytes());
        block.extend_from_slice(&1u32.to_le_bytes());
        assert!(decode_block(&block).is_err());
    }
}
