//! The read side of sparse safetensors files written by `prune --sparse` (layout in
//! docs/sparse-format.md): the `bnn_sparse` metadata, every CSR invariant checked, and each
//! sparse-stored tensor rebuilt as the dense tensor it replaces.
//!
//! [`crate::checkpoint::Checkpoint::open`] uses this to present a sparse file as the dense model
//! (CSR parts hidden), so every command reads pruned sparse output directly; `densify` writes
//! that dense view back out. The write side lives with the pruning code (`surgery::sparse`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::safetensors_file::SafetensorsFile;
use crate::tensor::TensorInfo;

/// Metadata entry describing the sparse tensors of a file.
pub const META_SPARSE: &str = "bnn_sparse";

/// Largest dense tensor a sparse entry may expand to when read (16 GiB): a 40-byte entry must
/// not make the reader allocate terabytes. Densifying calls that need other bounds (the fuzz
/// targets) pass their own to [`read_sparse`].
pub const MAX_DENSE_TENSOR_BYTES: u64 = 16 << 30;

/// Where the CSR parts of one dense tensor are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SparseEntry {
    /// Always `csr`.
    pub layout: String,
    /// The dense tensor's dtype (safetensors spelling).
    pub dtype: String,
    /// The dense tensor's shape.
    pub shape: Vec<u64>,
    /// Rows of the matrix view.
    pub rows: u64,
    /// Columns of the matrix view.
    pub cols: u64,
    /// Name of the row-offset tensor.
    pub indptr: String,
    /// Name of the column-index tensor.
    pub indices: String,
    /// Name of the kept-values tensor.
    pub values: String,
    /// Hex of the element every pruned position holds.
    pub fill: String,
}

/// The `bnn_sparse` metadata: replaced tensors and the dense order to restore.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SparseIndex {
    /// Every tensor name of the dense file, in order.
    pub order: Vec<String>,
    /// Sparse-stored tensors by dense name.
    pub tensors: BTreeMap<String, SparseEntry>,
}

/// Rows and columns of the matrix view of `shape` (docs/sparse-format.md), `None` when the
/// element count does not fit in a u64.
pub fn matrix_view(shape: &[u64]) -> Option<(u64, u64)> {
    match shape.split_last() {
        Some((&cols, rest)) => {
            let rows = rest.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))?;
            rows.checked_mul(cols)?;
            Some((rows, cols))
        }
        None => Some((1, 1)),
    }
}

/// The row-offset type for a tensor of `elements` elements.
pub fn indptr_dtype(elements: u64) -> DType {
    if elements >= u64::from(u32::MAX) {
        DType::Uint64
    } else {
        DType::Uint32
    }
}

/// The column-index type for a matrix of `cols` columns.
pub fn indices_dtype(cols: u64) -> DType {
    match cols {
        0..=256 => DType::Uint8,
        257..=65536 => DType::Uint16,
        _ => DType::Uint32,
    }
}

/// The bytes a `fill` hex string stands for, if it is exactly `width` bytes of hex.
pub fn parse_fill(hex: &str, width: usize) -> Option<Vec<u8>> {
    let digits = hex.as_bytes();
    if digits.len() != width.checked_mul(2)? {
        return None;
    }
    let nibble = |d: u8| char::from(d).to_digit(16);
    digits.chunks_exact(2).map(|p| Some((nibble(p[0])? * 16 + nibble(p[1])?) as u8)).collect()
}

/// The dense view of a sparse file: every tensor of the dense file in order, with the
/// sparse-stored ones rebuilt.
#[derive(Debug)]
pub struct SparseView {
    /// The parsed `bnn_sparse` metadata.
    pub index: SparseIndex,
    /// Every dense tensor, in the dense file's order.
    pub infos: Vec<TensorInfo>,
    /// The rebuilt bytes of each sparse-stored tensor, by dense name.
    pub dense: HashMap<String, Vec<u8>>,
}

/// Reads the `bnn_sparse` metadata of `file`: `None` when it has none (an ordinary file).
pub fn read_index(file: &SafetensorsFile) -> Result<Option<SparseIndex>> {
    let Some(text) = file.metadata().get(META_SPARSE) else { return Ok(None) };
    serde_json::from_str(text).map(Some).map_err(|e| Error::corrupt(file.path(), format!("bad '{META_SPARSE}' metadata: {e}")))
}

/// Validates the sparse file `file` against every rule of docs/sparse-format.md and rebuilds
/// its dense tensors, none larger than `max_dense_bytes`: `None` for an ordinary file.
pub fn read_sparse(file: &SafetensorsFile, max_dense_bytes: u64) -> Result<Option<SparseView>> {
    let Some(index) = read_index(file)? else { return Ok(None) };
    let bad = |what: String| Error::corrupt(file.path(), what);
    let stored: HashMap<&str, &TensorInfo> = file.infos().map(|i| (i.name.as_str(), i)).collect();
    let mut in_order = BTreeSet::new();
    for name in &index.order {
        if !in_order.insert(name.as_str()) {
            return Err(bad(format!("'{META_SPARSE}' order lists '{name}' twice")));
        }
    }
    let mut parts = BTreeSet::new();
    for (name, e) in &index.tensors {
        if !in_order.contains(name.as_str()) {
            return Err(bad(format!("sparse tensor '{name}' is not in the '{META_SPARSE}' order")));
        }
        if stored.contains_key(name.as_str()) {
            return Err(bad(format!("sparse tensor '{name}' is also stored dense")));
        }
        for part in [&e.indptr, &e.indices, &e.values] {
            if in_order.contains(part.as_str()) {
                return Err(bad(format!("sparse tensor '{name}': part '{part}' is also a dense tensor")));
            }
            parts.insert(part.as_str());
        }
    }
    if let Some(extra) = stored.keys().find(|n| !in_order.contains(**n) && !parts.contains(**n)) {
        return Err(bad(format!("stored tensor '{extra}' is neither in the '{META_SPARSE}' order nor a CSR part")));
    }
    let mut dense = HashMap::new();
    let mut infos = Vec::with_capacity(index.order.len());
    for name in &index.order {
        match index.tensors.get(name) {
            Some(e) => {
                let (dtype, bytes) = densify_entry(file, &stored, name, e, max_dense_bytes)?;
                infos.push(TensorInfo { name: name.clone(), dtype, shape: e.shape.clone(), nbytes: bytes.len() as u64, shard: None });
                dense.insert(name.clone(), bytes);
            }
            None => match stored.get(name.as_str()) {
                Some(info) => infos.push((*info).clone()),
                None => return Err(bad(format!("tensor '{name}' of the '{META_SPARSE}' order is missing"))),
            },
        }
    }
    Ok(Some(SparseView { index, infos, dense }))
}

/// Little-endian unsigned integers of `width` bytes (1, 2, 4 or 8).
fn le_uints(bytes: &[u8], width: usize) -> impl Iterator<Item = u64> + '_ {
    bytes.chunks_exact(width.max(1)).map(|b| b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
}

/// Checks one entry and its parts, then rebuilds its dense bytes.
fn densify_entry(
    file: &SafetensorsFile,
    stored: &HashMap<&str, &TensorInfo>,
    name: &str,
    e: &SparseEntry,
    max_dense_bytes: u64,
) -> Result<(DType, Vec<u8>)> {
    let bad = |what: String| Error::corrupt(file.path(), format!("sparse tensor '{name}': {what}"));
    if e.layout != "csr" {
        return Err(bad(format!("layout '{}' is not 'csr'", e.layout)));
    }
    let dtype = DType::ALL
        .into_iter()
        .find(|t| t.is_float() && t.safetensors_name().as_deref() == Some(e.dtype.as_str()))
        .ok_or_else(|| bad(format!("dtype '{}' is not F16, BF16, F32 or F64", e.dtype)))?;
    let width = dtype.size().ok_or_else(|| bad("dtype has no fixed size".into()))?;
    if matrix_view(&e.shape) != Some((e.rows, e.cols)) {
        return Err(bad(format!("rows x cols {} x {} is not the matrix view of shape {:?}", e.rows, e.cols, e.shape)));
    }
    let elements = e.rows.checked_mul(e.cols).ok_or_else(|| bad("too many elements".into()))?;
    let total = elements
        .checked_mul(width as u64)
        .filter(|&n| n <= max_dense_bytes)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| bad(format!("{elements} elements of {dtype} exceed the limit of {max_dense_bytes} dense bytes")))?;
    let fill = parse_fill(&e.fill, width).ok_or_else(|| {
        let shown: String = e.fill.chars().take(32).collect();
        bad(format!("fill '{shown}' is not {width} bytes of hex"))
    })?;

    // A part must exist, have the dtype the layout prescribes and hold exactly `len` elements.
    let part = |n: &str, want: DType, len: u64, what: &str, why: &str| -> Result<&[u8]> {
        let info = stored.get(n).ok_or_else(|| bad(format!("{what} part '{n}' is missing")))?;
        if info.dtype != want {
            return Err(bad(format!("{what} part '{n}' is {} (expected {want})", info.dtype)));
        }
        if info.shape != [len] {
            return Err(bad(format!("{what} part '{n}' has shape {:?} but {why} [{len}]", info.shape)));
        }
        file.bytes(n)
    };
    let rows_plus_one = e.rows.checked_add(1).ok_or_else(|| bad("too many rows".into()))?;
    let (ptr_type, idx_type) = (indptr_dtype(elements), indices_dtype(e.cols));
    let indptr = part(&e.indptr, ptr_type, rows_plus_one, "indptr", "rows + 1 offsets need")?;
    let offsets: Vec<u64> = le_uints(indptr, ptr_type.size().unwrap_or(4)).collect();
    if offsets.first() != Some(&0) {
        return Err(bad("indptr does not start at 0".into()));
    }
    if let Some(r) = offsets.windows(2).position(|w| w[1] < w[0]) {
        return Err(bad(format!("indptr decreases at row {r}")));
    }
    let nnz = offsets.last().copied().unwrap_or(0);
    if nnz > elements {
        return Err(bad(format!("indptr ends at {nnz}, more than the {elements} elements")));
    }
    // The last offset is the number of stored entries: indices and values must hold exactly that.
    let why = format!("indptr ends at {nnz}, so it must be");
    let indices = part(&e.indices, idx_type, nnz, "indices", &why)?;
    let values = part(&e.values, dtype, nnz, "values", &why)?;
    let columns: Vec<u64> = le_uints(indices, idx_type.size().unwrap_or(1)).collect();

    let mut out = Vec::new();
    out.try_reserve_exact(total).map_err(|_| bad(format!("cannot allocate {total} bytes")))?;
    for _ in 0..elements {
        out.extend_from_slice(&fill);
    }
    for (r, w) in offsets.windows(2).enumerate() {
        // Offsets are non-decreasing and end at nnz = columns.len(), so the range is in bounds.
        let (a, b) = (usize::try_from(w[0]).unwrap_or(usize::MAX), usize::try_from(w[1]).unwrap_or(usize::MAX));
        let row = columns.get(a..b).ok_or_else(|| bad(format!("row {r} lies outside the indices")))?;
        let mut previous = None;
        for (j, &c) in (a..).zip(row) {
            if c >= e.cols {
                return Err(bad(format!("column index {c} in row {r} is not below cols {}", e.cols)));
            }
            if previous.is_some_and(|p| c <= p) {
                return Err(bad(format!("column indices of row {r} are not strictly increasing ({} then {c})", previous.unwrap_or(0))));
            }
            previous = Some(c);
            // r < rows and c < cols, with rows * cols * width checked above.
            let at = ((r as u64) * e.cols + c) as usize * width;
            let src = values.get(j * width..(j + 1) * width).ok_or_else(|| bad("values are truncated".into()))?;
            let dst = out.get_mut(at..at + width).ok_or_else(|| bad(format!("position ({r}, {c}) lies outside the tensor")))?;
            dst.copy_from_slice(src);
        }
    }
    Ok((dtype, out))
}
