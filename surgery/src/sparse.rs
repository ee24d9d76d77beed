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

use formats::checkpoint::{Checkpoint, Format};
use formats::convert::{plan_safetensors, ToSafetensorsOptions};
use formats::safetensors_file::{write_safetensors, PlannedTensor};
pub use formats::sparse::{matrix_view, SparseEntry, SparseIndex, META_SPARSE};
use formats::sparse::{indices_dtype, indptr_dtype};
use formats::DType;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::mask::KeepMask;
use crate::prune::Pruning;

/// Sizes of a sparse write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SparseSummary {
    /// Tensor bytes the dense file would hold.
    pub dense_bytes: u64,
    /// Tensor bytes written.
    pub sparse_bytes: u64,
}

/// CSR row offsets and column indices of the kept positions, as little-endian bytes.
fn csr_pattern(keep: &KeepMask, rows: u64, cols: u64) -> (Vec<u8>, DType, Vec<u8>, DType) {
    let ptr_type = indptr_dtype(keep.len() as u64);
    let wide_ptr = ptr_type == DType::Uint64;
    let idx_type = indices_dtype(cols);
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
        let (rows, cols) = matrix_view(&t.shape).ok_or_else(|| Error::invalid(ckpt.path(), format!("'{}' has too many elements", t.loc_key)))?;
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

/// Writes the dense equivalent of sparse safetensors file `input` to `out`: the dense view
/// [`Checkpoint::open`] validates and rebuilds (formats::sparse), written back tensor by tensor.
pub fn densify(input: &Path, out: &Path) -> Result<()> {
    let ckpt = Checkpoint::open(input)?;
    if ckpt.format() != Format::Safetensors || ckpt.sparse().is_none() {
        return Err(Error::invalid(input, format!("no '{META_SPARSE}' metadata: not a sparse bnn-convert file")));
    }
    let planned: Vec<PlannedTensor> = ckpt
        .variables()
        .iter()
        .map(|v| PlannedTensor { name: v.key.clone(), dtype: v.info.dtype, shape: v.info.shape.clone() })
        .collect();
    write_safetensors(out, &planned, &ckpt.metadata(), |i, sink| {
        // Reading names the input on error; the sink's failures are the output's.
        let data = ckpt.read(&planned[i].name)?;
        let bytes = data.bytes().ok_or_else(|| formats::Error::unsupported(input, format!("'{}' is not numeric", planned[i].name)))?;
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
        assert_eq!(matrix_view(&[5, 5, 3, 8]), Some((75, 8)));
        assert_eq!(matrix_view(&[10]), Some((1, 10)));
        assert_eq!(matrix_view(&[1 << 32, 1 << 32]), None);
    }
}
