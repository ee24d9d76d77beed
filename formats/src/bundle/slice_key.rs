//! Keys under which TensorFlow stores the slices of a partitioned variable.
//!
//! `checkpoint::EncodeTensorNameSlice` builds them with `strings::OrderedCode`: the number 0,
//! the full tensor name, the rank, then a signed (start, length) pair per dimension, where a
//! length of -1 means "the whole dimension". The leading 0 byte sorts them before any name.

/// One dimension of a slice: `length == None` covers the whole dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First index along the dimension.
    pub start: i64,
    /// Number of indices, or `None` for all of them.
    pub length: Option<i64>,
}

/// The table key of slice `extents` of tensor `name`.
pub fn encode_slice_key(name: &str, extents: &[Extent]) -> Vec<u8> {
    let mut out = Vec::new();
    write_num_increasing(&mut out, 0);
    write_string(&mut out, name.as_bytes());
    write_num_increasing(&mut out, extents.len() as u64);
    for e in extents {
        write_signed_num_increasing(&mut out, e.start);
        write_signed_num_increasing(&mut out, e.length.unwrap_or(-1));
    }
    out
}

/// Whether a table key is a slice key rather than a tensor name.
pub fn is_slice_key(key: &[u8]) -> bool {
    key.first() == Some(&0)
}

fn write_num_increasing(out: &mut Vec<u8>, value: u64) {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    out.push((8 - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

fn write_string(out: &mut Vec<u8>, s: &[u8]) {
    for &b in s {
        match b {
            0x00 => out.extend_from_slice(&[0x00, 0xff]),
            0xff => out.extend_from_slice(&[0xff, 0x00]),
            _ => out.push(b),
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

/// `OrderedCode::WriteSignedNumIncreasing`: sign bit, unary length bits, then the value.
fn write_signed_num_increasing(out: &mut Vec<u8>, value: i64) {
    // Header bits for each encoded length (1..=10 bytes), in the first two bytes.
    const HEADER: [[u8; 2]; 11] = [
        [0, 0],
        [0x80, 0],
        [0xc0, 0],
        [0xe0, 0],
        [0xf0, 0],
        [0xf8, 0],
        [0xfc, 0],
        [0xfe, 0],
        [0xff, 0],
        [0xff, 0x80],
        [0xff, 0xc0],
    ];
    let magnitude = if value < 0 { !value } else { value } as u64;
    if magnitude < 64 {
        out.push(HEADER[1][0] ^ (value as u8));
        return;
    }
    let bits = 64 - magnitude.leading_zeros() as usize; // position of the top bit, plus one
    // n bytes hold numbers of up to 7n - 1 significant bits.
    let len = bits / 7 + 1; // n bytes hold numbers of up to 7n - 1 significant bits
    let sign = if value < 0 { 0xff } else { 0x00 };
    let mut buf = [sign; 10];
    buf[2..].copy_from_slice(&value.to_be_bytes());
    let begin = 10 - len;
    buf[begin] ^= HEADER[len][0];
    buf[begin + 1] ^= HEADER[len][1];
    out.extend_from_slice(&buf[begin..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(v: i64) -> Vec<u8> {
        let mut out = Vec::new();
        write_signed_num_increasing(&mut out, v);
        out
    }

    #[test]
    fn signed_numbers_match_ordered_code_examples() {
        // The two worked examples in tensorflow/core/lib/strings/ordered_code.cc.
        assert_eq!(signed(0x424242), vec![0xf0, 0x42, 0x42, 0x42]);
        assert_eq!(signed(-0x800), vec![0x38, 0x00]);
        // One byte covers [-64, 64).
        assert_eq!(signed(0), vec![0x80]);
        assert_eq!(signed(-1), vec![0x7f]);
        assert_eq!(signed(63), vec![0xbf]);
        assert_eq!(signed(64).len(), 2);
        assert_eq!(signed(-65).len(), 2);
        // Order is preserved byte-wise.
        let values = [-100_000i64, -65, -64, -1, 0, 1, 63, 64, 8191, 8192, 1 << 40];
        for w in values.windows(2) {
            assert!(signed(w[0]) < signed(w[1]), "{} vs {}", w[0], w[1]);
        }
    }

    #[test]
    fn slice_key_layout() {
        let key = encode_slice_key("a", &[Extent { start: 0, length: Some(4) }, Extent { start: 2, length: None }]);
        // 0 ; "a" <sep> ; rank 2 ; 0, 4 ; 2, -1
        assert_eq!(key, vec![0x00, b'a', 0x00, 0x01, 0x01, 0x02, 0x80, 0x84, 0x82, 0x7f]);
        assert!(is_slice_key(&key));
        assert!(!is_slice_key(b"den_1/kernel"));
    }
}
