//! Little-endian fixed-width integers, LEB128 varints and masked CRC32C, as LevelDB-style tables
//! and TensorFlow's tensor bundles use them.

/// Decodes a varint of at most 64 bits from the front of `buf`.
/// Returns the value and the number of bytes used, or `None` if `buf` ends inside the varint or
/// the varint is longer than 10 bytes.
pub fn read_varint64(buf: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &byte) in buf.iter().enumerate().take(10) {
        let bits = u64::from(byte & 0x7f);
        if i == 9 && byte > 1 {
            return None; // would overflow 64 bits
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Decodes a varint that must fit 32 bits.
pub fn read_varint32(buf: &[u8]) -> Option<(u32, usize)> {
    let (v, n) = read_varint64(buf)?;
    u32::try_from(v).ok().map(|v| (v, n))
}

/// Appends `value` as a varint.
pub fn put_varint64(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads a little-endian u32 at `at`, if the bytes are there.
pub fn read_fixed32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// Reads a little-endian u64 at `at`, if the bytes are there.
pub fn read_fixed64(buf: &[u8], at: usize) -> Option<u64> {
    let bytes = buf.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

const MASK_DELTA: u32 = 0xa282_ead8;

/// Masks a CRC32C the way LevelDB and TensorFlow store it (so that a CRC of bytes that hold
/// CRCs stays well distributed).
pub fn mask_crc(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(MASK_DELTA)
}

/// Inverse of [`mask_crc`].
pub fn unmask_crc(masked: u32) -> u32 {
    masked.wrapping_sub(MASK_DELTA).rotate_left(15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trip_and_limits() {
        for v in [0u64, 1, 127, 128, 300, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut buf = Vec::new();
            put_varint64(&mut buf, v);
            assert_eq!(read_varint64(&buf), Some((v, buf.len())));
        }
        // 300 = 0b1_0010_1100 is the protobuf documentation's example: ac 02.
        assert_eq!(read_varint64(&[0xac, 0x02]), Some((300, 2)));
        assert_eq!(read_varint64(&[0x80]), None);
        assert_eq!(read_varint64(&[0xff; 11]), None);
        assert_eq!(read_varint32(&[0xff, 0xff, 0xff, 0xff, 0x1f]), None);
    }

    #[test]
    fn masked_crc_matches_leveldb() {
        // crc32c("123456789") = 0xe3069283 (the CRC-32C check value).
        let crc = crc32c::crc32c(b"123456789");
        assert_eq!(crc, 0xe306_9283);
        assert_eq!(unmask_crc(mask_crc(crc)), crc);
        assert_ne!(mask_crc(crc), crc);
        // LevelDB's Mask, written as LevelDB writes it: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
        let leveldb = |c: u32| -> u32 {
            #[allow(clippy::manual_rotate)]
            let rotated = (c >> 15) | (c << 17);
            rotated.wrapping_add(0xa282_ead8)
        };
        assert_eq!(mask_crc(crc), leveldb(crc));
    }
}
