//! Property tests of the sparse reader (formats::sparse): random kernels and keep patterns read
//! back exactly; random offsets and column indices are accepted exactly when they satisfy the
//! rules of docs/sparse-format.md (checked here by a separate, plain implementation); random
//! byte damage never panics.

use std::collections::BTreeMap;

use formats::safetensors_file::{write_safetensors, PlannedTensor, SafetensorsFile};
use formats::sparse::{read_sparse, META_SPARSE};
use formats::DType;
use proptest::prelude::*;

const MU: &str = "k";

/// A sparse file of one `rows x cols` F32 tensor `k` with these CSR parts (U32 offsets, U8
/// indices, as the layout prescribes for fewer than 256 columns), fill -1000.
fn sparse_file(rows: u64, cols: u64, indptr: &[u32], indices: &[u8], values: &[f32]) -> Vec<u8> {
    let entry = serde_json::json!({
        "layout": "csr", "dtype": "F32", "shape": [rows, cols], "rows": rows, "cols": cols,
        "indptr": "k.p", "indices": "k.i", "values": "k.v", "fill": "00007ac4"
    });
    let index = serde_json::json!({"order": [MU], "tensors": {MU: entry}});
    let meta = BTreeMap::from([(META_SPARSE.to_string(), index.to_string())]);
    let parts: Vec<(PlannedTensor, Vec<u8>)> = vec![
        (PlannedTensor { name: "k.p".into(), dtype: DType::Uint32, shape: vec![indptr.len() as u64] }, indptr.iter().flat_map(|x| x.to_le_bytes()).collect()),
        (PlannedTensor { name: "k.i".into(), dtype: DType::Uint8, shape: vec![indices.len() as u64] }, indices.to_vec()),
        (PlannedTensor { name: "k.v".into(), dtype: DType::Float32, shape: vec![values.len() as u64] }, values.iter().flat_map(|x| x.to_le_bytes()).collect()),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.safetensors");
    let planned: Vec<PlannedTensor> = parts.iter().map(|p| p.0.clone()).collect();
    write_safetensors(&path, &planned, &meta, |i, sink| sink(&parts[i].1)).expect("write");
    std::fs::read(&path).expect("read")
}

fn read(bytes: Vec<u8>) -> formats::Result<Vec<f32>> {
    let file = SafetensorsFile::parse("p.safetensors", bytes)?;
    let view = read_sparse(&file, 1 << 20)?.expect("sparse");
    Ok(view.dense[MU].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// The rules, written out plainly: offsets start at 0, never decrease, end at the number of
/// indices; within each row the columns are below `cols` and strictly increasing.
fn follows_the_rules(rows: usize, cols: usize, indptr: &[u32], indices: &[u8]) -> bool {
    if indptr.len() != rows + 1 || indptr[0] != 0 || indptr[rows] as usize != indices.len() {
        return false;
    }
    for r in 0..rows {
        if indptr[r + 1] < indptr[r] {
            return false;
        }
    }
    for r in 0..rows {
        let row = &indices[indptr[r] as usize..indptr[r + 1] as usize];
        for j in 0..row.len() {
            if row[j] as usize >= cols || (j > 0 && row[j] <= row[j - 1]) {
                return false;
            }
        }
    }
    true
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_patterns_read_back_exactly(rows in 1usize..8, cols in 1usize..12, seed in proptest::collection::vec(any::<(bool, i16)>(), 96)) {
        // The dense tensor: kept weights hold their value, pruned ones -1000.
        let mut want = vec![-1000.0f32; rows * cols];
        let (mut indptr, mut indices, mut values) = (vec![0u32], vec![], vec![]);
        for r in 0..rows {
            for c in 0..cols {
                let (keep, v) = seed[r * cols + c];
                if keep {
                    want[r * cols + c] = f32::from(v) / 8.0;
                    indices.push(c as u8);
                    values.push(f32::from(v) / 8.0);
                }
            }
            indptr.push(indices.len() as u32);
        }
        let got = read(sparse_file(rows as u64, cols as u64, &indptr, &indices, &values)).expect("valid file");
        prop_assert_eq!(got, want);
    }

    #[test]
    fn offsets_and_indices_are_accepted_exactly_when_valid(rows in 1usize..5, cols in 1usize..6,
                                                          indptr in proptest::collection::vec(0u32..8, 1..7),
                                                          indices in proptest::collection::vec(0u8..7, 0..8)) {
        let values = vec![1.0f32; indices.len()];
        let got = read(sparse_file(rows as u64, cols as u64, &indptr, &indices, &values));
        prop_assert_eq!(got.is_ok(), follows_the_rules(rows, cols, &indptr, &indices), "{:?}", got);
        if let Err(e) = got {
            let e = e.to_string();
            prop_assert!(e.starts_with("p.safetensors: sparse tensor 'k': ") && !e.contains('\n'), "{}", e);
        }
    }

    #[test]
    fn damaged_files_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
                                 cut in any::<prop::sample::Index>()) {
        let mut bytes = sparse_file(3, 4, &[0, 2, 2, 4], &[0, 3, 1, 2], &[1.0, 2.0, 3.0, 4.0]);
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let _ = read_or_plain(bytes.clone());
        let keep = cut.index(bytes.len() + 1);
        let _ = read_or_plain(bytes[..keep].to_vec());
    }
}

/// Reads a file that may have lost its sparse metadata too.
fn read_or_plain(bytes: Vec<u8>) -> Option<usize> {
    let file = SafetensorsFile::parse("p.safetensors", bytes).ok()?;
    read_sparse(&file, 1 << 20).ok()?.map(|v| v.dense.len())
}
