//! Readers for the image datasets a BNN is trained and evaluated on: NumPy `.npy` arrays
//! (float32, int64, uint8), MNIST IDX files and CIFAR-10 binary batches.
//!
//! Everything is read from bytes the caller gives (or a file path); nothing is downloaded.
//! Every reader checks sizes against the header before trusting it, so a truncated or
//! corrupt file is an error, never a panic or a huge allocation.

use std::path::{Path, PathBuf};

/// What went wrong reading a dataset file.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The bytes are not a valid file of the expected format.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file (empty when parsing bytes that came from no file).
        path: PathBuf,
        /// What is wrong, in words.
        reason: String,
    },
}

impl DatasetError {
    fn invalid(reason: impl Into<String>) -> Self {
        DatasetError::Invalid { path: PathBuf::new(), reason: reason.into() }
    }

    /// Names `path` in an error that came from parsing bytes.
    fn at(self, path: &Path) -> Self {
        match self {
            DatasetError::Invalid { reason, .. } => DatasetError::Invalid { path: path.to_path_buf(), reason },
            other => other,
        }
    }
}

/// Result of the dataset readers.
pub type Result<T> = std::result::Result<T, DatasetError>;

/// The element values of an array, by element type.
#[derive(Debug, Clone, PartialEq)]
pub enum ArrayData {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// 64-bit signed integers.
    I64(Vec<i64>),
    /// Bytes.
    U8(Vec<u8>),
}

impl ArrayData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            ArrayData::F32(v) => v.len(),
            ArrayData::I64(v) => v.len(),
            ArrayData::U8(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The NumPy name of the element type (`float32`, `int64`, `uint8`).
    pub fn dtype_name(&self) -> &'static str {
        match self {
            ArrayData::F32(_) => "float32",
            ArrayData::I64(_) => "int64",
            ArrayData::U8(_) => "uint8",
        }
    }
}

/// An n-dimensional array in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// The elements, `shape.iter().product()` of them.
    pub data: ArrayData,
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| DatasetError::Io { path: path.to_path_buf(), source })
}

fn checked_product(dims: &[usize]) -> Result<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| DatasetError::invalid("shape too large"))
}

/// Parses a `.npy` file (format versions 1.0, 2.0 and 3.0) holding a little-endian,
/// C-order array of `float32` (`<f4`), `int64` (`<i8`) or `uint8` (`|u1`).
pub fn parse_npy(bytes: &[u8]) -> Result<Array> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(DatasetError::invalid("not a .npy file (magic \\x93NUMPY missing)"));
    }
    let major = bytes[6];
    let (header_len, header_start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(DatasetError::invalid("truncated .npy header"));
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(DatasetError::invalid(format!("unsupported .npy format version {v}"))),
    };
    let data_start = header_start.checked_add(header_len).filter(|&e| e <= bytes.len()).ok_or_else(|| DatasetError::invalid("truncated .npy header"))?;
    let header = std::str::from_utf8(&bytes[header_start..data_start]).map_err(|_| DatasetError::invalid(".npy header is not text"))?;
    let descr = dict_value(header, "descr").ok_or_else(|| DatasetError::invalid(".npy header has no 'descr'"))?;
    let fortran = dict_value(header, "fortran_order").ok_or_else(|| DatasetError::invalid(".npy header has no 'fortran_order'"))?;
    let shape_text = dict_value(header, "shape").ok_or_else(|| DatasetError::invalid(".npy header has no 'shape'"))?;
    if fortran.trim() != "False" {
        return Err(DatasetError::invalid("Fortran-order .npy arrays are not supported"));
    }
    let shape = parse_shape(shape_text)?;
    let count = checked_product(&shape)?;
    let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
    let elem = match descr {
        "<f4" => 4,
        "<i8" => 8,
        "|u1" | "<u1" | "u1" => 1,
        other => return Err(DatasetError::invalid(format!("unsupported .npy dtype '{other}' (float32 '<f4', int64 '<i8' or uint8 '|u1')"))),
    };
    let body = &bytes[data_start..];
    let need = count.checked_mul(elem).ok_or_else(|| DatasetError::invalid("shape too large"))?;
    if body.len() != need {
        return Err(DatasetError::invalid(format!("shape {shape:?} needs {need} data bytes, the file has {}", body.len())));
    }
    let data = match elem {
        4 => ArrayData::F32(body.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
        8 => ArrayData::I64(body.chunks_exact(8).map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect()),
        _ => ArrayData::U8(body.to_vec()),
    };
    Ok(Array { shape, data })
}

/// The text after `'key':` in a `.npy` header dict, up to the next top-level comma.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat_single = format!("'{key}':");
    let pat_double = format!("\"{key}\":");
    let start = header.find(&pat_single).map(|i| i + pat_single.len()).or_else(|| header.find(&pat_double).map(|i| i + pat_double.len()))?;
    let rest = &header[start..];
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

fn parse_shape(text: &str) -> Result<Vec<usize>> {
    let inner = text.trim().strip_prefix('(').and_then(|t| t.strip_suffix(')')).ok_or_else(|| DatasetError::invalid(format!("bad .npy shape '{text}'")))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>().map_err(|_| DatasetError::invalid(format!("bad .npy shape '{text}'"))))
        .collect()
}

/// Reads a `.npy` file; see [`parse_npy`].
pub fn read_npy(path: &Path) -> Result<Array> {
    parse_npy(&read_file(path)?).map_err(|e| e.at(path))
}

/// Parses an MNIST IDX file of unsigned bytes (magic `0x00 0x00 0x08 D`, D dimensions as
/// big-endian u32, then the bytes). Images are `[N, rows, cols]`, labels `[N]`.
pub fn parse_idx(bytes: &[u8]) -> Result<Array> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(DatasetError::invalid("not an IDX file (magic must start with two zero bytes)"));
    }
    if bytes[2] != 0x08 {
        return Err(DatasetError::invalid(format!("IDX element type 0x{:02x} is not supported (only 0x08, unsigned byte)", bytes[2])));
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 {
        return Err(DatasetError::invalid("IDX file with zero dimensions"));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(DatasetError::invalid("truncated IDX header"));
    }
    let shape: Vec<usize> = bytes[4..header].chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    let count = checked_product(&shape)?;
    let body = &bytes[header..];
    if body.len() != count {
        return Err(DatasetError::invalid(format!("IDX shape {shape:?} needs {count} data bytes, the file has {}", body.len())));
    }
    Ok(Array { shape, data: ArrayData::U8(body.to_vec()) })
}

/// Reads an MNIST IDX file; see [`parse_idx`].
pub fn read_idx(path: &Path) -> Result<Array> {
    parse_idx(&read_file(path)?).map_err(|e| e.at(path))
}

/// CIFAR-10 image side in pixels.
pub const CIFAR10_SIDE: usize = 32;
/// Bytes of one CIFAR-10 record: the label byte and 3 x 32 x 32 pixel bytes.
pub const CIFAR10_RECORD: usize = 1 + 3 * CIFAR10_SIDE * CIFAR10_SIDE;

/// Images and labels of CIFAR-10 binary batches.
#[derive(Debug, Clone, PartialEq)]
pub struct Cifar10 {
    /// Pixels, `[N, 32, 32, 3]` (height, width, channel: TensorFlow's NHWC layout; the file
    /// stores each image as three 32x32 planes, red, green, blue).
    pub images: Vec<u8>,
    /// Labels 0..=9, one per image.
    pub labels: Vec<u8>,
}

impl Cifar10 {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Parses one CIFAR-10 binary batch (`data_batch_1.bin` ...: records of a label byte and
/// 3072 pixel bytes in channel-major order) and appends it to `out`, as NHWC.
pub fn parse_cifar10_into(bytes: &[u8], out: &mut Cifar10) -> Result<()> {
    if bytes.is_empty() || bytes.len() % CIFAR10_RECORD != 0 {
        return Err(DatasetError::invalid(format!("{} bytes is not a whole number of {CIFAR10_RECORD}-byte CIFAR-10 records", bytes.len())));
    }
    let plane = CIFAR10_SIDE * CIFAR10_SIDE;
    out.images.reserve(bytes.len());
    for rec in bytes.chunks_exact(CIFAR10_RECORD) {
        let label = rec[0];
        if label > 9 {
            return Err(DatasetError::invalid(format!("CIFAR-10 label {label} out of range 0..=9 in record {}", out.labels.len())));
        }
        out.labels.push(label);
        let px = &rec[1..];
        for i in 0..plane {
            out.images.extend_from_slice(&[px[i], px[plane + i], px[2 * plane + i]]);
        }
    }
    Ok(())
}

/// Reads CIFAR-10 binary batch files, in the order given, into one set.
pub fn read_cifar10(paths: &[PathBuf]) -> Result<Cifar10> {
    let mut out = Cifar10 { images: Vec::new(), labels: Vec::new() };
    for p in paths {
        parse_cifar10_into(&read_file(p)?, &mut out).map_err(|e| e.at(p))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `.npy` file as NumPy 1.x/2.x writes it: version 1.0, header padded with spaces to a
    /// multiple of 64 bytes and ended by a newline.
    fn npy(descr: &str, shape: &str, body: &[u8]) -> Vec<u8> {
        let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn npy_float32_matrix() {
        let vals = [0.0f32, 0.5, 1.0, -2.25, 3.0e-3, 7.0];
        let body: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = parse_npy(&npy("<f4", "(2, 3)", &body)).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, ArrayData::F32(vals.to_vec()));
    }

    #[test]
    fn npy_int64_vector_and_uint8() {
        let body: Vec<u8> = [3i64, -1, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = parse_npy(&npy("<i8", "(3,)", &body)).unwrap();
        assert_eq!(a.shape, vec![3]);
        assert_eq!(a.data, ArrayData::I64(vec![3, -1, 9]));
        let b = parse_npy(&npy("|u1", "(2, 2)", &[1, 2, 250, 0])).unwrap();
        assert_eq!(b.data, ArrayData::U8(vec![1, 2, 250, 0]));
        assert_eq!(b.data.dtype_name(), "uint8");
    }

    #[test]
    fn npy_scalar_shape_is_one_element() {
        let a = parse_npy(&npy("<f4", "()", &1.5f32.to_le_bytes())).unwrap();
        assert!(a.shape.is_empty());
        assert_eq!(a.data, ArrayData::F32(vec![1.5]));
    }

    #[test]
    fn npy_version_2_header() {
        let header = "{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }\n";
        let mut bytes = b"\x93NUMPY\x02\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&42i64.to_le_bytes());
        assert_eq!(parse_npy(&bytes).unwrap().data, ArrayData::I64(vec![42]));
    }

    #[test]
    fn npy_rejects_bad_input() {
        let body: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        // One element short.
        let e = parse_npy(&npy("<f4", "(3,)", &body)).unwrap_err();
        assert!(e.to_string().contains("needs 12 data bytes"), "{e}");
        assert!(parse_npy(&npy(">f4", "(2,)", &body)).unwrap_err().to_string().contains("unsupported .npy dtype"));
        assert!(parse_npy(&npy("<f8", "(1,)", &body)).is_err());
        let fortran = npy("<f4", "(2,)", &body);
        let text = String::from_utf8_lossy(&fortran).replace("False", "True ");
        assert!(parse_npy(text.as_bytes()).is_err());
        assert!(parse_npy(b"PK\x03\x04 not npy").unwrap_err().to_string().contains("magic"));
        assert!(parse_npy(&npy("<f4", "(18446744073709551615, 2)", &body)).is_err());
        // Header length pointing past the end.
        let mut cut = npy("<f4", "(2,)", &body);
        cut.truncate(20);
        assert!(parse_npy(&cut).is_err());
    }

    #[test]
    fn idx_images_and_labels() {
        let mut img = vec![0, 0, 8, 3];
        for d in [2u32, 2, 3] {
            img.extend_from_slice(&d.to_be_bytes());
        }
        img.extend(0u8..12);
        let a = parse_idx(&img).unwrap();
        assert_eq!(a.shape, vec![2, 2, 3]);
        assert_eq!(a.data, ArrayData::U8((0u8..12).collect()));
        let mut lab = vec![0, 0, 8, 1];
        lab.extend_from_slice(&3u32.to_be_bytes());
        lab.extend_from_slice(&[7, 0, 9]);
        assert_eq!(parse_idx(&lab).unwrap().shape, vec![3]);
    }

    #[test]
    fn idx_rejects_bad_input() {
        let mut lab = vec![0, 0, 8, 1];
        lab.extend_from_slice(&3u32.to_be_bytes());
        lab.extend_from_slice(&[7, 0]);
        assert!(parse_idx(&lab).unwrap_err().to_string().contains("needs 3 data bytes"));
        assert!(parse_idx(&[0, 0, 0x0d, 1, 0, 0, 0, 0]).unwrap_err().to_string().contains("0x0d"));
        assert!(parse_idx(&[1, 2, 8, 1]).is_err());
        assert!(parse_idx(&[0, 0, 8, 2, 0, 0]).is_err());
    }

    #[test]
    fn cifar10_records_become_nhwc() {
        let mut rec = vec![4u8];
        // Plane r = 1, plane g = 2, plane b = 3, except pixel 0 of red = 200.
        rec.extend(std::iter::repeat_n(1u8, 1024));
        rec.extend(std::iter::repeat_n(2u8, 1024));
        rec.extend(std::iter::repeat_n(3u8, 1024));
        rec[1] = 200;
        let mut two = rec.clone();
        two[0] = 9;
        rec.extend_from_slice(&two);
        let mut c = Cifar10 { images: vec![], labels: vec![] };
        parse_cifar10_into(&rec, &mut c).unwrap();
        assert_eq!(c.labels, vec![4, 9]);
        assert_eq!(c.images.len(), 2 * 3072);
        assert_eq!(&c.images[..6], &[200, 2, 3, 1, 2, 3]);
        assert_eq!(&c.images[3072..3075], &[200, 2, 3]);
    }

    #[test]
    fn cifar10_rejects_bad_input() {
        let mut c = Cifar10 { images: vec![], labels: vec![] };
        assert!(parse_cifar10_into(&[0u8; 100], &mut c).is_err());
        let mut rec = vec![0u8; CIFAR10_RECORD];
        rec[0] = 10;
        assert!(parse_cifar10_into(&rec, &mut c).unwrap_err().to_string().contains("label 10"));
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        std::fs::write(&p, b"garbage").unwrap();
        let e = read_npy(&p).unwrap_err().to_string();
        assert!(e.starts_with(&p.display().to_string()), "{e}");
        let missing = dir.path().join("missing-idx");
        assert!(read_idx(&missing).unwrap_err().to_string().contains("missing-idx"));
    }
}
