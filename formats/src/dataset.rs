//! Readers for the image datasets a BNN is trained and evaluated on: NumPy `.npy` arrays and
//! `.npz` archives (every float and integer dtype NumPy writes, either byte order, C or
//! Fortran order; parsed by `ndarray-npy`), MNIST IDX files and CIFAR-10 binary batches.
//!
//! Everything is read from bytes the caller gives (or a file path); nothing is downloaded.
//! Every reader checks sizes against the header before trusting it, so a truncated or
//! corrupt file is an error, never a panic or a huge allocation.

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use ndarray_npy::npy::header::Header;
use ndarray_npy::{ReadDataError, ReadNpyExt, ReadableElement};
use py_literal::Value as PyValue;

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

    /// Puts `what` (e.g. the archive member) before the reason.
    fn within(self, what: &str) -> Self {
        match self {
            DatasetError::Invalid { path, reason } => DatasetError::Invalid { path, reason: format!("{what}: {reason}") },
            other => other,
        }
    }
}

/// Result of the dataset readers.
pub type Result<T> = std::result::Result<T, DatasetError>;

/// The element values of an array, by the kind of value (the engine and trainer compute in
/// float32; bytes are kept apart because image bytes are scaled to [0, 1]).
#[derive(Debug, Clone, PartialEq)]
pub enum ArrayData {
    /// Floats: float32 as stored; float16 exactly and float64 rounded to the nearest float32.
    F32(Vec<f32>),
    /// Signed and unsigned integers other than uint8, widened to int64.
    I64(Vec<i64>),
    /// Bytes (uint8).
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

    /// The NumPy name of the element type the values are held in (`float32`, `int64`,
    /// `uint8`); [`Array::dtype`] is the one the file stored.
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
    /// The elements, `shape.iter().product()` of them, in C order whatever the file's order.
    pub data: ArrayData,
    /// The NumPy name of the element type in the file (`int32`, `float16`, ...).
    pub dtype: &'static str,
}

impl Array {
    /// The values as network inputs: floats and integers as they are, bytes scaled to [0, 1]
    /// (image pixels).
    pub fn into_inputs(self) -> Vec<f32> {
        match self.data {
            ArrayData::F32(v) => v,
            ArrayData::U8(v) => v.into_iter().map(|b| f32::from(b) / 255.0).collect(),
            ArrayData::I64(v) => v.into_iter().map(|i| i as f32).collect(),
        }
    }

    /// The values as class labels; `None` for a float array (labels must be integers).
    pub fn into_labels(self) -> Option<Vec<i64>> {
        match self.data {
            ArrayData::I64(v) => Some(v),
            ArrayData::U8(v) => Some(v.into_iter().map(i64::from).collect()),
            ArrayData::F32(_) => None,
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| DatasetError::Io { path: path.to_path_buf(), source })
}

fn checked_product(dims: &[usize]) -> Result<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| DatasetError::invalid("shape too large"))
}

/// NumPy refuses longer headers by default (`max_header_size`); so do we, before any
/// allocation sized by the header.
const NPY_MAX_HEADER: usize = 10_000;

/// A float16 value as its bits, read by ndarray-npy like its own element types (which have
/// no float16).
#[derive(Debug, Clone, Copy)]
struct F16(u16);

impl ReadableElement for F16 {
    fn read_to_end_exact_vec<R: Read>(mut reader: R, type_desc: &PyValue, len: usize) -> std::result::Result<Vec<Self>, ReadDataError> {
        let big = match type_desc.as_string().map(String::as_str) {
            Some("<f2" | "f2" | "=f2" | "e") => false,
            Some(">f2") => true,
            _ => return Err(ReadDataError::WrongDescriptor(type_desc.clone())),
        };
        let mut bytes = vec![0u8; len.checked_mul(2).ok_or(ReadDataError::MissingData)?];
        reader.read_exact(&mut bytes)?;
        let extra = reader.read_to_end(&mut Vec::new())?;
        if extra != 0 {
            return Err(ReadDataError::ExtraBytes(extra));
        }
        let conv = if big { u16::from_be_bytes } else { u16::from_le_bytes };
        Ok(bytes.chunks_exact(2).map(|c| F16(conv([c[0], c[1]]))).collect())
    }
}

/// IEEE half precision to single (exact: every float16 is a float32).
fn f16_to_f32(h: u16) -> f32 {
    let negative = h & 0x8000 != 0;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let magnitude = match exp {
        // Zero and subnormals: man * 2^-24.
        0 => man as f32 * f32::from_bits(0x3380_0000),
        0x1f => f32::from_bits(0x7f80_0000 | (man << 13)),
        e => f32::from_bits(((e + 112) << 23) | (man << 13)),
    };
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

/// The element kinds read from `.npy` files: (descriptor without byte-order mark, NumPy
/// name, bytes per element).
const NPY_DTYPES: &[(&str, &str, usize)] = &[
    ("f2", "float16", 2),
    ("f4", "float32", 4),
    ("f8", "float64", 8),
    ("u1", "uint8", 1),
    ("i1", "int8", 1),
    ("i2", "int16", 2),
    ("i4", "int32", 4),
    ("i8", "int64", 8),
    ("u2", "uint16", 2),
    ("u4", "uint32", 4),
    ("u8", "uint64", 8),
];

/// Reads the whole array as `T`, in C order (a Fortran-order file is transposed back).
fn read_as<T: ReadableElement + Clone>(bytes: &[u8]) -> Result<Vec<T>> {
    let a = ArrayD::<T>::read_npy(bytes).map_err(|e| DatasetError::invalid(format!(".npy: {e}")))?;
    Ok(if a.is_standard_layout() { a.into_raw_vec_and_offset().0 } else { a.iter().cloned().collect() })
}

fn widen<T: Into<i64> + ReadableElement + Clone>(bytes: &[u8]) -> Result<ArrayData> {
    Ok(ArrayData::I64(read_as::<T>(bytes)?.into_iter().map(Into::into).collect()))
}

/// Parses a `.npy` file (format versions 1.0, 2.0 and 3.0) holding an array of float16,
/// float32, float64, uint8, int8..int64 or uint16..uint64, in either byte order, C or
/// Fortran order. Floats become [`ArrayData::F32`], bytes [`ArrayData::U8`], other
/// integers [`ArrayData::I64`] (a uint64 above the int64 range is an error).
pub fn parse_npy(bytes: &[u8]) -> Result<Array> {
    // The fixed prefix is checked here so that ndarray-npy never allocates a header buffer
    // larger than the file.
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(DatasetError::invalid("not a .npy file (magic \\x93NUMPY missing)"));
    }
    let (header_len, prefix) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10usize),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        2 | 3 => return Err(DatasetError::invalid("truncated .npy header")),
        v => return Err(DatasetError::invalid(format!("unsupported .npy format version {v}"))),
    };
    if header_len > NPY_MAX_HEADER {
        return Err(DatasetError::invalid(format!(".npy header of {header_len} bytes is longer than NumPy's limit of {NPY_MAX_HEADER}")));
    }
    if prefix + header_len > bytes.len() {
        return Err(DatasetError::invalid("truncated .npy header"));
    }
    let mut reader = bytes;
    let header = Header::from_reader(&mut reader).map_err(|e| DatasetError::invalid(format!("bad .npy header: {e}")))?;
    // A structured dtype's descriptor is a list: shown as Python writes it.
    let descr = header.type_descriptor.as_string().cloned().unwrap_or_else(|| header.type_descriptor.to_string());
    let code = descr.trim_start_matches(['<', '>', '|', '=']);
    let Some(&(_, dtype, elem)) = NPY_DTYPES.iter().find(|(c, _, _)| *c == code) else {
        return Err(DatasetError::invalid(format!("unsupported .npy dtype '{descr}' (float16/32/64, int8..int64 or uint8..uint64)")));
    };
    let count = checked_product(&header.shape)?;
    let need = count.checked_mul(elem).ok_or_else(|| DatasetError::invalid("shape too large"))?;
    // Checked before ndarray-npy allocates `count` elements.
    if reader.len() != need {
        return Err(DatasetError::invalid(format!("shape {:?} needs {need} data bytes, the file has {}", header.shape, reader.len())));
    }
    let data = match dtype {
        "float16" => ArrayData::F32(read_as::<F16>(bytes)?.into_iter().map(|h| f16_to_f32(h.0)).collect()),
        "float32" => ArrayData::F32(read_as::<f32>(bytes)?),
        // Inputs are computed in float32; labels must be integers anyway.
        "float64" => ArrayData::F32(read_as::<f64>(bytes)?.into_iter().map(|v| v as f32).collect()),
        "uint8" => ArrayData::U8(read_as::<u8>(bytes)?),
        "int8" => widen::<i8>(bytes)?,
        "int16" => widen::<i16>(bytes)?,
        "int32" => widen::<i32>(bytes)?,
        "int64" => ArrayData::I64(read_as::<i64>(bytes)?),
        "uint16" => widen::<u16>(bytes)?,
        "uint32" => widen::<u32>(bytes)?,
        _ => {
            let v = read_as::<u64>(bytes)?;
            let out: std::result::Result<Vec<i64>, _> = v.iter().map(|&u| i64::try_from(u).map_err(|_| u)).collect();
            ArrayData::I64(out.map_err(|u| DatasetError::invalid(format!("uint64 value {u} is outside the int64 range")))?)
        }
    };
    Ok(Array { shape: header.shape, data, dtype })
}

/// Reads a `.npy` file; see [`parse_npy`].
pub fn read_npy(path: &Path) -> Result<Array> {
    parse_npy(&read_file(path)?).map_err(|e| e.at(path))
}

/// A NumPy `.npz` archive (`np.savez`, stored, or `np.savez_compressed`, deflated): a zip
/// file of `.npy` members, one per array name.
pub struct Npz {
    zip: zip::ZipArchive<Cursor<Vec<u8>>>,
    path: PathBuf,
}

impl std::fmt::Debug for Npz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Npz").field("path", &self.path).field("names", &self.names()).finish()
    }
}

impl Npz {
    /// Opens the archive in `bytes` (the zip directory is read; members on demand).
    pub fn parse(bytes: Vec<u8>) -> Result<Npz> {
        let zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| DatasetError::invalid(format!("not a .npz (zip) archive: {e}")))?;
        Ok(Npz { zip, path: PathBuf::new() })
    }

    /// Opens the archive at `path`.
    pub fn open(path: &Path) -> Result<Npz> {
        let mut npz = Npz::parse(read_file(path)?).map_err(|e| e.at(path))?;
        npz.path = path.to_path_buf();
        Ok(npz)
    }

    /// The array names (member names without `.npy`), in archive order.
    pub fn names(&self) -> Vec<String> {
        self.zip.file_names().map(|n| n.strip_suffix(".npy").unwrap_or(n).to_string()).collect()
    }

    /// Whether the archive has an array `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.zip.index_for_name(&format!("{name}.npy")).is_some()
    }

    /// Reads the array `name`; see [`parse_npy`] for what is read.
    pub fn array(&mut self, name: &str) -> Result<Array> {
        let member = format!("{name}.npy");
        let path = self.path.clone();
        let fail = |reason: String| DatasetError::Invalid { path: path.clone(), reason };
        if !self.contains(name) {
            return Err(fail(format!("no array '{name}' (it has {})", self.names().join(", "))));
        }
        let mut bytes = Vec::new();
        {
            let mut f = self.zip.by_name(&member).map_err(|e| fail(format!("array '{name}': {e}")))?;
            // At most the declared size is read: a member cannot grow past what the
            // directory says, whatever its compressed stream holds.
            let declared = f.size();
            (&mut f).take(declared).read_to_end(&mut bytes).map_err(|e| fail(format!("array '{name}': {e}")))?;
        }
        parse_npy(&bytes).map_err(|e| e.within(&format!("array '{name}'")).at(&self.path))
    }
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
    Ok(Array { shape, data: ArrayData::U8(body.to_vec()), dtype: "uint8" })
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
    if bytes.is_empty() || !bytes.len().is_multiple_of(CIFAR10_RECORD) {
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
        npy_header(&header, body)
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
        // One element long.
        assert!(parse_npy(&npy("<f4", "(1,)", &body)).unwrap_err().to_string().contains("needs 4 data bytes"));
        assert!(parse_npy(&npy("<c8", "(1,)", &body)).unwrap_err().to_string().contains("unsupported .npy dtype '<c8'"));
        assert!(parse_npy(b"PK\x03\x04 not npy").unwrap_err().to_string().contains("magic"));
        assert!(parse_npy(&npy("<f4", "(18446744073709551615, 2)", &body)).is_err());
        // A huge shape over a small file fails before any allocation of that size.
        assert!(parse_npy(&npy("<f8", "(1000000000000,)", &body)).unwrap_err().to_string().contains("needs 8000000000000 data bytes"));
        // Header length pointing past the end.
        let mut cut = npy("<f4", "(2,)", &body);
        cut.truncate(20);
        assert!(parse_npy(&cut).is_err());
        // A version-2 header length of 4 GiB is refused before it is read.
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        v2.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_npy(&v2).unwrap_err().to_string().contains("longer than NumPy's limit"));
        // Not a dict, a missing key.
        assert!(parse_npy(&npy_header("[1, 2]", &[])).unwrap_err().to_string().contains("bad .npy header"));
        assert!(parse_npy(&npy_header("{'descr': '<f4', 'shape': (1,)}", &body[..4])).is_err());
    }

    /// A version-1.0 `.npy` with `header` as its dict text.
    fn npy_header(header: &str, body: &[u8]) -> Vec<u8> {
        let header = format!("{header}\n");
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn f16_conversion_matches_ieee() {
        // (bits, value): zero, negative zero, one, smallest subnormal, largest subnormal,
        // smallest normal, largest finite, infinity, -2.
        let cases = [
            (0x0000u16, 0.0f32),
            (0x8000, -0.0),
            (0x3c00, 1.0),
            (0x0001, 5.960_464_5e-8),
            (0x03ff, 6.097_555e-5),
            (0x0400, 6.103_515_6e-5),
            (0x7bff, 65504.0),
            (0x7c00, f32::INFINITY),
            (0xc000, -2.0),
        ];
        for (bits, want) in cases {
            assert_eq!(f16_to_f32(bits).to_bits(), want.to_bits(), "{bits:#06x}");
        }
        assert!(f16_to_f32(0x7e00).is_nan());
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
