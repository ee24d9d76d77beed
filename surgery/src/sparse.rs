//! Sparse storage of pruned posteriors in safetensors (layout in docs/sparse-format.md), and
//! its inverse, `densify`, which restores the dense file bit for bit.
//!
//! A pruned posterior pair (mu, rho) of shape [d0, ..., dn] is viewed as a matrix of
//! rows = d0 * ... * d(n-1) and cols = dn, and stored in CSR form: `<mu>.csr_indptr`
//! (U32, rows + 1 offsets; U64 past 4 Gi entries), `<mu>.csr_indices` (column of each kept
//! weight: U8 when cols <= 256, U16 when cols <= 65536, else U32), `<mu>.csr_values` and `<rho>.csr_values` (the
//! kept values, in the stored dtype). mu and rho share the pattern. The metadata entry
//! `bnn_sparse` says, for every dense tensor replaced, where its parts are and the bytes of the
//! value every pruned position holds.

use std::collections::BTreeMap;
use std::path::Path;

use formats::checkpoint::Checkpoint;
use formats::convert::{plan_safetensors, ToSafetensorsOptions};
use formats::safetensors_file::{write_safetensors, PlannedTensor, SafetensorsFile};
use formats::DType;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::mask::KeepMask;
use crate::prune::Pruning;

/// Metadata entry describing the sparse tensors of a file.
pub const META_SPARSE: &str = "bnn_sparse";

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

/// Sizes of a sparse write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SparseSummary {
    /// Tensor bytes the dense file would hold.
    pub dense_bytes: u64,
    /// Tensor bytes written.
    pub sparse_bytes: u64,
}

fn matrix_view(shape: &[u64]) -> (u64, u64) {
    match shape.split_last() {
        Some((&cols, rest)) => (rest.iter().product(), cols),
        None => (1, 1),
    }
}

/// CSR row offsets and column indices of the kept positions, as little-endian bytes.
fn csr_pattern(keep: &KeepMask, rows: u64, cols: u64) -> (Vec<u8>, DType, Vec<u8>, DType) {
    let wide_ptr = keep.len() as u64 >= u32::MAX as u64;
    let idx_type = match cols {
        0..=256 => DType::Uint8,
        257..=65536 => DType::Uint16,
        _ => DType::Uint32,
    };
    let (mut indptr, mut indices) = (Vec::new(), Vec::new());
    let mut nnz = 0u64;
    let push_ptr = |v: &mut Vec<u8>, n: u64| {
        if wide_ptr {
            v.extend_from_slice(&n.to_le_bytes())
        } else {
            v.extend_from_slice(&(n as u32).to_le_bytes())
        }
    };
    push_ptr(&mut indptr, 0);
    for r in 0..rows as usize {
        for c in 0..cols as usize {
            if keep.get(r * cols as usize + c) {
                match idx_type {
                    DType::Uint8 => indices.push(c as u8),
                    DType::Uint16 => indices.extend_from_slice(&(c as u16).to_le_bytes()),
                    _ => indices.extend_from_slice(&(c as u32).to_le_bytes()),
                }
                nnz += 1;
            }
        }
        push_ptr(&mut indptr, nnz);
    }
    let ptr_type = if wide_ptr { DType::Uint64 } else { DType::Uint32 };
    (indptr, ptr_type, indices, idx_type)
}

/// The stored elements of the kept weights (a pruning leaves them as they are).
fn kept_values(stored: &[u8], keep: &KeepMask, width: usize) -> Vec<u8> {
    stored.chunks_exact(width).zip(keep.iter()).filter(|(_, k)| *k).flat_map(|(e, _)| e.iter().copied()).collect()
}

/// Writes the pruned checkpoint to `out` as safetensors with every pruned posterior in CSR form.
pub fn write_sparse(ckpt: &Checkpoint, pruning: &Pruning, out: &Path, opts: ToSafetensorsOptions) -> Result<SparseSummary> {
    let mut plan = plan_safetensors(ckpt, opts)?;
    plan.metadata.extend(pruning.edits.metadata.clone());
    let name_of: BTreeMap<&str, &str> = plan.variables.iter().zip(&plan.names).map(|(v, n)| (v.key.as_str(), n.as_str())).collect();
    // Parts to write instead of dense tensors, by the dense tensor's stored key.
    let mut parts: BTreeMap<&str, Vec<(PlannedTensor, Vec<u8>)>> = BTreeMap::new();
    let mut index = SparseIndex { order: plan.names.clone(), tensors: BTreeMap::new() };
    for ((t, keep), (mu_fill, rho_fill)) in pruning.targets.iter().zip(&pruning.keep).zip(&pruning.fills) {
        let (Some(loc_name), Some(rho_name)) = (name_of.get(t.loc_key.as_str()), name_of.get(t.rho_key.as_str())) else {
            continue;
        };
        let (rows, cols) = matrix_view(&t.shape);
        let (indptr, ptr_type, indices, idx_type) = csr_pattern(keep, rows, cols);
        let width = t.dtype.size().unwrap_or(1);
        let nnz = keep.kept() as u64;
        let dtype_name = t.dtype.safetensors_name().unwrap_or_default();
        let (indptr_name, indices_name) = (format!("{loc_name}.csr_indptr"), format!("{loc_name}.csr_indices"));
        for (key, name, fill, with_pattern) in [(&t.loc_key, *loc_name, mu_fill, true), (&t.rho_key, *rho_name, rho_fill, false)] {
            let stored = ckpt.read(key)?;
            let stored = stored.bytes().ok_or_else(|| Error::invalid(ckpt.path(), format!("'{key}' is not numeric")))?;
            let values_name = format!("{name}.csr_values");
            let mut list = Vec::new();
            if with_pattern {
                list.push((PlannedTensor { name: indptr_name.clone(), dtype: ptr_type, shape: vec![rows + 1] }, indptr.clone()));
                list.push((PlannedTensor { name: indices_name.clone(), dtype: idx_type, shape: vec![nnz] }, indices.clone()));
            }
            list.push((PlannedTensor { name: values_name.clone(), dtype: t.dtype, shape: vec![nnz] }, kept_values(stored, keep, width)));
            parts.insert(key.as_str(), list);
            index.tensors.insert(
                name.to_string(),
                SparseEntry {
                    layout: "csr".into(),
                    dtype: dtype_name.clone(),
                    shape: t.shape.clone(),
                    rows,
                    cols,
                    indptr: indptr_name.clone(),
                    indices: indices_name.clone(),
                    values: values_name,
                    fill: fill.iter().map(|b| format!("{b:02x}")).collect(),
                },
            );
        }
    }
    plan.metadata.insert(META_SPARSE.into(), serde_json::to_string(&index).map_err(|e| Error::invalid(out, e.to_string()))?);

    // Output order: each variable, or its sparse parts in its place.
    enum Source<'a> {
        Dense(&'a str),
        Part(&'a [u8]),
    }
    let mut planned = Vec::new();
    let mut sources = Vec::new();
    for (v, name) in plan.variables.iter().zip(&plan.names) {
        match parts.get(v.key.as_str()) {
            Some(list) => {
                for (p, bytes) in list {
                    planned.push(p.clone());
                    sources.push(Source::Part(bytes));
                }
            }
            None => {
                planned.push(PlannedTensor { name: name.clone(), dtype: v.info.dtype, shape: v.info.shape.clone() });
                sources.push(Source::Dense(v.key.as_str()));
            }
        }
    }
    write_safetensors(out, &planned, &plan.metadata, |i, sink| match sources[i] {
        Source::Part(bytes) => sink(bytes),
        Source::Dense(key) => pruning.edits.stream(ckpt, key, sink),
    })?;
    let dense_bytes = plan.variables.iter().map(|v| v.info.nbytes).sum();
    let sparse_bytes = planned.iter().map(|p| p.shape.iter().product::<u64>() * p.dtype.size().unwrap_or(0) as u64).sum();
    Ok(SparseSummary { dense_bytes, sparse_bytes })
}

fn read_index(file: &SafetensorsFile) -> Result<SparseIndex> {
    let text = file
        .metadata()
        .get(META_SPARSE)
        .ok_or_else(|| Error::invalid(file.path(), format!("no '{META_SPARSE}' metadata: not a sparse bnn-convert file")))?;
    serde_json::from_str(text).map_err(|e| Error::invalid(file.path(), format!("bad '{META_SPARSE}' metadata: {e}")))
}

fn le_uint(bytes: &[u8], i: usize, width: usize) -> Option<u64> {
    let b = bytes.get(i * width..(i + 1) * width)?;
    Some(match width {
        1 => b[0] as u64,
        2 => u16::from_le_bytes([b[0], b[1]]) as u64,
        4 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64,
        8 => u64::from_le_bytes(b.try_into().ok()?),
        _ => return None,
    })
}

/// Rebuilds the dense bytes of one sparse entry, checking every offset and index.
fn dense_from_csr(file: &SafetensorsFile, name: &str, e: &SparseEntry) -> Result<(DType, Vec<u8>)> {
    let bad = |what: String| Error::invalid(file.path(), format!("sparse tensor '{name}': {what}"));
    let info = |n: &str| file.infos().find(|i| i.name == n).cloned().ok_or_else(|| bad(format!("part '{n}' is missing")));
    let values_info = info(&e.values)?;
    let (ptr_info, idx_info) = (info(&e.indptr)?, info(&e.indices)?);
    let dtype = values_info.dtype;
    let width = dtype.size().ok_or_else(|| bad("values are not fixed-size".into()))?;
    let fill: Vec<u8> = (0..e.fill.len() / 2).filter_map(|i| u8::from_str_radix(&e.fill[2 * i..2 * i + 2], 16).ok()).collect();
    if fill.len() != width || e.rows.checked_mul(e.cols) != Some(e.shape.iter().product()) {
        return Err(bad("fill value or shape does not fit the dtype".into()));
    }
    let (indptr, indices, values) = (file.bytes(&e.indptr)?, file.bytes(&e.indices)?, file.bytes(&e.values)?);
    let (pw, iw) = (ptr_info.dtype.size().unwrap_or(0), idx_info.dtype.size().unwrap_or(0));
    let total = usize::try_from(e.rows * e.cols).map_err(|_| bad("too large".into()))?;
    let mut out = fill.repeat(total);
    for r in 0..e.rows as usize {
        let (a, b) = (le_uint(indptr, r, pw), le_uint(indptr, r + 1, pw));
        let (Some(a), Some(b)) = (a, b) else { return Err(bad("row offsets are truncated".into())) };
        for j in a..b {
            let c = le_uint(indices, j as usize, iw).filter(|&c| c < e.cols).ok_or_else(|| bad(format!("column index {j} is missing or out of range")))?;
            let src = values.get(j as usize * width..(j as usize + 1) * width).ok_or_else(|| bad("values are truncated".into()))?;
            let at = (r * e.cols as usize + c as usize) * width;
            out[at..at + width].copy_from_slice(src);
        }
    }
    Ok((dtype, out))
}

/// Writes the dense equivalent of sparse safetensors file `input` to `out`.
pub fn densify(input: &Path, out: &Path) -> Result<()> {
    let file = SafetensorsFile::open(input)?;
    let index = read_index(&file)?;
    let mut dense: BTreeMap<&str, (DType, Vec<u8>)> = BTreeMap::new();
    for (name, e) in &index.tensors {
        dense.insert(name, dense_from_csr(&file, name, e)?);
    }
    let mut planned = Vec::new();
    for name in &index.order {
        let (dtype, shape) = match (dense.get(name.as_str()), index.tensors.get(name)) {
            (Some((dtype, _)), Some(e)) => (*dtype, e.shape.clone()),
            _ => {
                let i = file.infos().find(|i| &i.name == name).ok_or_else(|| {
                    Error::invalid(input, format!("tensor '{name}' listed in '{META_SPARSE}' is missing"))
                })?;
                (i.dtype, i.shape.clone())
            }
        };
        planned.push(PlannedTensor { name: name.clone(), dtype, shape });
    }
    let mut metadata = file.metadata().clone();
    metadata.remove(META_SPARSE);
    write_safetensors(out, &planned, &metadata, |i, sink| {
        let name = planned[i].name.as_str();
        let bytes = match dense.get(name) {
            Some((_, b)) => b.as_slice(),
            None => file.bytes(name)?,
        };
        sink(bytes)
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_pattern_by_hand() {
        // 2 x 3, kept: (0,1), (1,0), (1,2)
        let keep = [false, true, false, true, false, true];
        let (indptr, pt, indices, it) = csr_pattern(&KeepMask::from_bools(&keep), 2, 3);
        assert_eq!((pt, it), (DType::Uint32, DType::Uint8));
        let ptr: Vec<u32> = indptr.chunks(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert_eq!(ptr, vec![0, 1, 3]);
        assert_eq!(indices, vec![1, 0, 2]);
        let wide = vec![true; 300];
        assert_eq!(csr_pattern(&KeepMask::from_bools(&wide), 1, 300).3, DType::Uint16);
        assert_eq!(matrix_view(&[5, 5, 3, 8]), (75, 8));
        assert_eq!(matrix_view(&[10]), (1, 10));
    }
}
