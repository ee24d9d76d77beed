//! The on-disk layout of a string tensor in a data shard:
//! `[varint64 len_0] .. [varint64 len_n-1] [fixed32 masked crc of the lengths] [bytes_0] .. [bytes_n-1]`.
//!
//! The entry's CRC covers each length as a little-endian u32 (u64 above 4 GiB), the stored
//! length checksum, then the string bytes: TensorFlow's `WriteStringTensor`.

use crate::coding::{mask_crc, put_varint64, read_fixed32, read_varint64, unmask_crc};

fn extend_with_length(crc: u32, len: u64) -> u32 {
    match u32::try_from(len) {
        Ok(short) => crc32c::crc32c_append(crc, &short.to_le_bytes()),
        Err(_) => crc32c::crc32c_append(crc, &len.to_le_bytes()),
    }
}

/// Decodes `count` strings from `bytes`, returning them and the unmasked CRC32C TensorFlow
/// stores for the entry; `Err` describes the damage.
pub(crate) fn decode_strings(bytes: &[u8], count: u64) -> Result<(Vec<Vec<u8>>, u32), String> {
    if bytes.is_empty() && count == 0 {
        return Ok((Vec::new(), 0));
    }
    let mut pos = 0usize;
    let mut crc = 0u32;
    // Each length takes at least one byte, so `count` is bounded by the stored size.
    if count > bytes.len() as u64 {
        return Err(format!("{count} strings cannot fit in {} bytes", bytes.len()));
    }
    let mut lengths = Vec::with_capacity(count as usize);
    for i in 0..count {
        let (len, used) = read_varint64(&bytes[pos..]).ok_or_else(|| format!("string length {i} is truncated"))?;
        pos += used;
        crc = extend_with_length(crc, len);
        lengths.push(len);
    }
    let stored_len_crc = read_fixed32(bytes, pos).ok_or("string length checksum is missing")?;
    if unmask_crc(stored_len_crc) != crc {
        return Err(format!(
            "string length checksum mismatch (stored {:#010x}, computed {crc:#010x})",
            unmask_crc(stored_len_crc)
        ));
    }
    crc = crc32c::crc32c_append(crc, &stored_len_crc.to_le_bytes());
    pos += 4;
    let mut strings = Vec::with_capacity(lengths.len());
    for (i, len) in lengths.into_iter().enumerate() {
        let end = usize::try_from(len)
            .ok()
            .and_then(|n| pos.checked_add(n))
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| format!("string {i} of {len} bytes runs past the stored size"))?;
        let s = &bytes[pos..end];
        crc = crc32c::crc32c_append(crc, s);
        strings.push(s.to_vec());
        pos = end;
    }
    if pos != bytes.len() {
        return Err(format!("{} stray bytes after the last string", bytes.len() - pos));
    }
    Ok((strings, crc))
}

/// Encodes strings in TensorFlow's layout; returns the bytes and the unmasked entry CRC32C.
pub(crate) fn encode_strings(strings: &[Vec<u8>]) -> (Vec<u8>, u32) {
    let mut out = Vec::new();
    let mut crc = 0u32;
    for s in strings {
        put_varint64(&mut out, s.len() as u64);
        crc = extend_with_length(crc, s.len() as u64);
    }
    let len_crc = mask_crc(crc).to_le_bytes();
    out.extend_from_slice(&len_crc);
    crc = crc32c::crc32c_append(crc, &len_crc);
    for s in strings {
        out.extend_from_slice(s);
        crc = crc32c::crc32c_append(crc, s);
    }
    (out, crc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_long_and_empty_strings() {
        let strings = vec![b"".to_vec(), "h\u{e9}llo".as_bytes().to_vec(), vec![b'x'; 300]];
        let (bytes, crc) = encode_strings(&strings);
        // 300 needs a two-byte varint: ac 02.
        assert_eq!(&bytes[..4], &[0x00, 0x06, 0xac, 0x02]);
        let (back, crc2) = decode_strings(&bytes, 3).expect("decodes");
        assert_eq!(back, strings);
        assert_eq!(crc, crc2);
        let mut bad = bytes.clone();
        bad[1] = 0x07;
        assert!(decode_strings(&bad, 3).is_err());
        assert!(decode_strings(&bytes, 1_000_000).is_err());
    }
}
