//! Every rule of docs/sparse-format.md checked on read: a hand-made sparse file (a 2 x 3 kernel
//! with three kept weights, worked out by hand), then one tampered copy per broken invariant,
//! each giving one line that names the file, the tensor and the rule.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use formats::checkpoint::Checkpoint;
use formats::safetensors_file::{write_safetensors, PlannedTensor, SafetensorsFile};
use formats::sparse::{read_sparse, MAX_DENSE_TENSOR_BYTES, META_SPARSE};
use formats::DType;
use serde_json::{json, Value};

const MU: &str = "den_1.kernel_posterior_loc";

/// The parts of the hand-made file; tests change one thing each.
struct Case {
    entry: Value,
    order: Vec<&'static str>,
    /// (name, dtype, shape, bytes) of every stored tensor.
    stored: Vec<(String, DType, Vec<u64>, Vec<u8>)>,
}

fn u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Kept (0,1) = 1.5, (1,0) = 2.5, (1,2) = 3.5 of a 2 x 3 kernel: indptr [0, 1, 3], indices
/// [1, 0, 2]; a dense bias [0.25, -0.5] stored as it is.
fn valid() -> Case {
    Case {
        entry: json!({
            "layout": "csr", "dtype": "F32", "shape": [2, 3], "rows": 2, "cols": 3,
            "indptr": format!("{MU}.csr_indptr"), "indices": format!("{MU}.csr_indices"),
            "values": format!("{MU}.csr_values"), "fill": "00000000"
        }),
        order: vec!["den_1.bias_posterior_loc", MU],
        stored: vec![
            ("den_1.bias_posterior_loc".into(), DType::Float32, vec![2], f32s(&[0.25, -0.5])),
            (format!("{MU}.csr_indptr"), DType::Uint32, vec![3], u32s(&[0, 1, 3])),
            (format!("{MU}.csr_indices"), DType::Uint8, vec![3], vec![1, 0, 2]),
            (format!("{MU}.csr_values"), DType::Float32, vec![3], f32s(&[1.5, 2.5, 3.5])),
        ],
    }
}

impl Case {
    fn set(mut self, key: &str, v: Value) -> Case {
        self.entry[key] = v;
        self
    }

    /// Replaces stored tensor `suffix` (matched by the end of its name).
    fn part(mut self, suffix: &str, dtype: DType, shape: Vec<u64>, bytes: Vec<u8>) -> Case {
        let t = self.stored.iter_mut().find(|t| t.0.ends_with(suffix)).expect("part");
        (t.1, t.2, t.3) = (dtype, shape, bytes);
        self
    }

    fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("sparse.safetensors");
        let index = json!({"order": self.order, "tensors": {MU: self.entry}});
        let meta = BTreeMap::from([(META_SPARSE.to_string(), index.to_string())]);
        let planned: Vec<PlannedTensor> =
            self.stored.iter().map(|(n, d, s, _)| PlannedTensor { name: n.clone(), dtype: *d, shape: s.clone() }).collect();
        write_safetensors(&path, &planned, &meta, |i, sink| sink(&self.stored[i].3)).expect("write");
        path
    }
}

/// Opens the case both ways (the reader, and a checkpoint) and returns the reader's error.
fn error_of(case: Case) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = case.write(dir.path());
    let file = SafetensorsFile::open(&path).expect("valid safetensors");
    let err = read_sparse(&file, MAX_DENSE_TENSOR_BYTES).expect_err("rejected").to_string();
    assert_eq!(Checkpoint::open(&path).expect_err("checkpoint rejects it too").to_string(), err);
    assert!(err.starts_with(&path.display().to_string()), "names the file: {err}");
    assert!(!err.contains('\n'), "one line: {err}");
    err
}

fn assert_rejected(case: Case, want: &[&str]) {
    let err = error_of(case);
    for w in want {
        assert!(err.contains(w), "'{w}' missing from: {err}");
    }
}

#[test]
fn the_hand_made_file_reads_as_its_dense_tensor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = valid().write(dir.path());
    let ckpt = Checkpoint::open(&path).expect("opens");
    let names: Vec<&str> = ckpt.variables().iter().map(|v| v.key.as_str()).collect();
    assert_eq!(names, vec!["den_1.bias_posterior_loc", MU], "dense order, CSR parts hidden");
    let mu = ckpt.read(MU).expect("read");
    assert_eq!(mu.bytes().expect("bytes"), &f32s(&[0.0, 1.5, 0.0, 2.5, 0.0, 3.5])[..]);
    assert_eq!(ckpt.variable(MU).expect("var").info.shape, vec![2, 3]);
    assert_eq!(ckpt.read("den_1.bias_posterior_loc").expect("bias").bytes().expect("b"), &f32s(&[0.25, -0.5])[..]);
    assert!(ckpt.read(&format!("{MU}.csr_values")).is_err(), "parts are not tensors of the model");
    assert!(!ckpt.metadata().contains_key(META_SPARSE));
    assert!(ckpt.sparse().is_some());
    // A fill other than zero lands on every pruned position.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let path = valid().set("fill", json!("00007ac4")).write(dir2.path());
    let ckpt = Checkpoint::open(&path).expect("opens");
    let rho = f32::from_le_bytes([0x00, 0x00, 0x7a, 0xc4]);
    assert_eq!(rho, -1000.0);
    assert_eq!(ckpt.read(MU).expect("read").bytes().expect("b"), &f32s(&[rho, 1.5, rho, 2.5, rho, 3.5])[..]);
}

#[test]
fn indptr_rules() {
    let ptr = |v: &[u32]| valid().part("csr_indptr", DType::Uint32, vec![v.len() as u64], u32s(v));
    assert_rejected(ptr(&[0, 1, 2]), &[MU, "indptr ends at 2", "indices part", "[3]"]);
    assert_rejected(ptr(&[1, 1, 3]), &[MU, "indptr does not start at 0"]);
    assert_rejected(ptr(&[0, 4, 3]), &[MU, "indptr decreases at row 1"]);
    assert_rejected(ptr(&[0, 1, 3, 3]), &[MU, "indptr part", "rows + 1"]);
    assert_rejected(ptr(&[0, 1, 7]), &[MU, "indptr ends at 7, more than the 6 elements"]);
    let wide = valid().part("csr_indptr", DType::Uint64, vec![3], [0u64, 1, 3].iter().flat_map(|x| x.to_le_bytes()).collect());
    assert_rejected(wide, &[MU, "indptr part", "uint64 (expected uint32)"]);
}

#[test]
fn indices_rules() {
    let idx = |v: &[u8]| valid().part("csr_indices", DType::Uint8, vec![v.len() as u64], v.to_vec());
    assert_rejected(idx(&[1, 2, 0]), &[MU, "row 1", "not strictly increasing (2 then 0)"]);
    assert_rejected(idx(&[1, 0, 0]), &[MU, "row 1", "not strictly increasing (0 then 0)"]);
    assert_rejected(idx(&[1, 0, 3]), &[MU, "column index 3 in row 1 is not below cols 3"]);
    assert_rejected(idx(&[1, 0]), &[MU, "indices part", "shape [2]", "indptr ends at 3"]);
    let u16s = valid().part("csr_indices", DType::Uint16, vec![3], vec![1, 0, 0, 0, 2, 0]);
    assert_rejected(u16s, &[MU, "indices part", "uint16 (expected uint8)"]);
}

#[test]
fn values_and_entry_rules() {
    assert_rejected(valid().part("csr_values", DType::Float64, vec![3], vec![0; 24]), &[MU, "values part", "float64 (expected float32)"]);
    assert_rejected(valid().part("csr_values", DType::Float32, vec![2], vec![0; 8]), &[MU, "values part", "shape [2]"]);
    let mut gone = valid();
    gone.stored.retain(|t| !t.0.ends_with("csr_values"));
    assert_rejected(gone, &[MU, "values part 'den_1.kernel_posterior_loc.csr_values' is missing"]);
    assert_rejected(valid().set("values", json!("nope")), &["stored tensor 'den_1.kernel_posterior_loc.csr_values' is neither"]);
    assert_rejected(valid().set("layout", json!("coo")), &[MU, "layout 'coo'"]);
    assert_rejected(valid().set("dtype", json!("I32")), &[MU, "dtype 'I32'"]);
    assert_rejected(valid().set("rows", json!(3)), &[MU, "3 x 3 is not the matrix view of shape [2, 3]"]);
    assert_rejected(valid().set("shape", json!([3, 2])), &[MU, "matrix view"]);
}

#[test]
fn fill_rules() {
    assert_rejected(valid().set("fill", json!("000000")), &[MU, "fill '000000' is not 4 bytes of hex"]);
    assert_rejected(valid().set("fill", json!("0000000g")), &[MU, "fill"]);
    // Eight bytes of UTF-8 with a two-byte character: the old reader sliced inside it and panicked.
    assert_rejected(valid().set("fill", json!("0\u{e9}00000")), &[MU, "fill", "not 4 bytes of hex"]);
    assert_rejected(valid().set("fill", json!("+0000000")), &[MU, "fill"]);
}

#[test]
fn hostile_sizes_are_errors_before_any_allocation() {
    // 2^40 columns with nothing kept: the old reader allocated 4 TiB for the fill first.
    let huge = valid().set("shape", json!([1, 1u64 << 40])).set("rows", json!(1)).set("cols", json!(1u64 << 40));
    assert_rejected(huge, &[MU, "exceed the limit of 17179869184 dense bytes"]);
    // rows * cols past u64: the old reader's product wrapped (or panicked in a debug build).
    let wrap = valid().set("shape", json!([1u64 << 33, 1u64 << 33])).set("rows", json!(1u64 << 33)).set("cols", json!(1u64 << 33));
    assert_rejected(wrap, &[MU, "matrix view"]);
    let max = valid().set("shape", json!([u64::MAX, 1])).set("rows", json!(u64::MAX)).set("cols", json!(1));
    assert_rejected(max, &[MU]);
}

#[test]
fn file_level_rules() {
    let mut dup = valid();
    dup.order = vec![MU, "den_1.bias_posterior_loc", MU];
    assert_rejected(dup, &["order lists", "twice"]);
    let mut missing = valid();
    missing.order = vec!["den_1.bias_posterior_loc", MU, "den_9.kernel"];
    assert_rejected(missing, &["tensor 'den_9.kernel' of the 'bnn_sparse' order is missing"]);
    let mut unlisted = valid();
    unlisted.order = vec!["den_1.bias_posterior_loc"];
    assert_rejected(unlisted, &[MU, "is not in the 'bnn_sparse' order"]);
    let mut extra = valid();
    extra.stored.push(("stray".into(), DType::Uint8, vec![1], vec![7]));
    assert_rejected(extra, &["stored tensor 'stray' is neither"]);
    let mut both = valid();
    both.stored.push((MU.into(), DType::Float32, vec![2, 3], vec![0; 24]));
    assert_rejected(both, &[MU, "also stored dense"]);
    let mut part_in_order = valid();
    part_in_order.order.push("den_1.kernel_posterior_loc.csr_indices");
    assert_rejected(part_in_order, &[MU, "is also a dense tensor"]);
    // Metadata that is not the documented JSON.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.safetensors");
    let meta = BTreeMap::from([(META_SPARSE.to_string(), "{\"order\": 3}".to_string())]);
    write_safetensors(&path, &[], &meta, |_, _| Ok(())).expect("write");
    let err = Checkpoint::open(&path).expect_err("rejected").to_string();
    assert!(err.contains("bad.safetensors") && err.contains("bad 'bnn_sparse' metadata"), "{err}");
}
