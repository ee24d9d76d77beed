//! `prune --sparse` output as an input: every command reads it as the dense pruned model it
//! stands for (same results as the dense pruned file of the same prune), and `densify` refuses
//! a tampered one, naming the input file and the tensor, writing nothing.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

const ARCH: &str = r#"{"input_shape": [64], "ops": [{"op": "dense", "layer": ""}, {"op": "relu"}, {"op": "dense", "layer": ""}, {"op": "relu"}, {"op": "dense", "layer": ""}]}"#;

fn run_ok(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<u8> {
    let out = bnn_convert(args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// The TF1 fixture pruned to 80% twice, dense and sparse, and the fixture's architecture.
fn pruned_pair(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (dense, sparse, arch) = (dir.join("d.safetensors"), dir.join("s.safetensors"), dir.join("arch.json"));
    let src = fixtures().join("tf1_bnn_fc");
    run_ok(&[&"prune", &src, &"-o", &dense, &"--sparsity", &"0.8"]);
    run_ok(&[&"prune", &src, &"-o", &sparse, &"--sparsity", &"0.8", &"--sparse"]);
    std::fs::write(&arch, ARCH).expect("arch");
    (dense, sparse, arch)
}

/// JSON output without the fields that name the input path or time the run.
fn json_without(bytes: &[u8], drop: &[&str]) -> Value {
    let mut v: Value = serde_json::from_slice(bytes).expect("json");
    fn strip(v: &mut Value, drop: &[&str]) {
        match v {
            Value::Object(m) => {
                for d in drop {
                    m.remove(*d);
                }
                m.values_mut().for_each(|x| strip(x, drop));
            }
            Value::Array(a) => a.iter_mut().for_each(|x| strip(x, drop)),
            _ => {}
        }
    }
    strip(&mut v, drop);
    v
}

/// Tensor names and bytes of a safetensors file, in file order.
fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid");
    let mut v: Vec<(usize, String, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, t)| (t.data().as_ptr() as usize, n, t.data().to_vec())).collect();
    v.sort();
    v.into_iter().map(|(_, n, b)| (n, b)).collect()
}

#[test]
fn commands_read_sparse_files_as_the_dense_pruned_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (dense, sparse, arch) = pruned_pair(dir.path());
    let data = fixtures().join("data/digits_test_x.npy");

    // eval: the same numbers (the old reader saw no weight layers at all). The kernels are
    // pinned: `--sparse auto` picks by timing, and the kernels sum in different orders.
    let eval = |p: &Path| run_ok(&[&"eval", &p, &"--arch", &arch, &"--data", &data, &"--samples", &"20", &"--sparse", &"always", &"--json"]);
    let (a, b) = (json_without(&eval(&dense), &["seconds", "cpu_seconds", "checkpoint"]), json_without(&eval(&sparse), &["seconds", "cpu_seconds", "checkpoint"]));
    assert_eq!(a, b);
    assert!(a["accuracy"].as_f64().expect("accuracy") > 0.5, "{a}");

    // snr: the same statistics.
    let snr = |p: &Path| json_without(&run_ok(&[&"snr", &"--json", &p]), &["path"]);
    assert_eq!(snr(&dense), snr(&sparse));

    // export-onnx: the same model, byte for byte.
    let (da, sa) = (dir.path().join("d.onnx"), dir.path().join("s.onnx"));
    run_ok(&[&"export-onnx", &dense, &"--arch", &arch, &"-o", &da]);
    run_ok(&[&"export-onnx", &sparse, &"--arch", &arch, &"-o", &sa]);
    assert_eq!(std::fs::read(&da).expect("d"), std::fs::read(&sa).expect("s"));

    // prune again: the same tensors (the metadata differs only in the source path).
    let (dp, sp) = (dir.path().join("dp.safetensors"), dir.path().join("sp.safetensors"));
    run_ok(&[&"prune", &dense, &"-o", &dp, &"--threshold", &"2"]);
    run_ok(&[&"prune", &sparse, &"-o", &sp, &"--threshold", &"2"]);
    assert_eq!(tensors(&dp), tensors(&sp));

    // sweep: the same accuracies.
    let sweep = |p: &Path, out: &Path| {
        run_ok(&[&"sweep", &p, &"--arch", &arch, &"--data", &data, &"--thresholds", &"0.5,2", &"--samples", &"4", &"--repeats", &"1", &"--json", &out]);
        let v: Value = serde_json::from_slice(&std::fs::read(out).expect("sweep json")).expect("json");
        v["rows"].as_array().map(|r| r.iter().map(|x| x["accuracy"].clone()).collect::<Vec<_>>())
    };
    let (ds, ss) = (sweep(&dense, &dir.path().join("ds.json")), sweep(&sparse, &dir.path().join("ss.json")));
    assert_eq!(ds.as_ref().map(Vec::len), Some(2), "one row per threshold");
    assert_eq!(ds, ss);
}

/// Rewrites `count` bytes of tensor `name` in the sparse file at `path`, in place.
fn tamper(path: &Path, name: &str, at: usize, bytes: &[u8]) {
    let mut file = std::fs::read(path).expect("read");
    let n = u64::from_le_bytes(file[..8].try_into().expect("8")) as usize;
    let header: Value = serde_json::from_slice(&file[8..8 + n]).expect("header");
    let begin = header[name]["data_offsets"][0].as_u64().expect("offset") as usize;
    let start = 8 + n + begin + at;
    file[start..start + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, file).expect("write");
}

#[test]
fn densify_refuses_broken_csr_and_names_the_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, sparse, _) = pruned_pair(dir.path());
    let pristine = std::fs::read(&sparse).expect("read");
    let mu = "den_1.kernel_posterior_loc";
    let indptr = format!("{mu}.csr_indptr");
    // (how to damage the file, what the error must say)
    type Case<'a> = (Box<dyn Fn(&Path) + 'a>, &'static str);
    let cases: Vec<Case> = vec![
        // den_1 is 64 x 64: indptr has 65 u32 offsets; the last one one short.
        (Box::new(|p| tamper(p, &indptr, 64 * 4, &928u32.to_le_bytes())), "indptr ends at 928"),
        (Box::new(|p| tamper(p, &indptr, 0, &1u32.to_le_bytes())), "indptr does not start at 0"),
        (Box::new(|p| tamper(p, &indptr, 4, &900u32.to_le_bytes())), "indptr decreases at row 1"),
        // Row 0's first two columns swapped, then made equal.
        (Box::new(|p| tamper(p, &format!("{mu}.csr_indices"), 0, &[60, 2])), "not strictly increasing (60 then 2)"),
        (Box::new(|p| tamper(p, &format!("{mu}.csr_indices"), 0, &[2, 2])), "not strictly increasing (2 then 2)"),
        (Box::new(|p| tamper(p, &format!("{mu}.csr_indices"), 0, &[64])), "is not below cols 64"),
    ];
    for (break_it, want) in cases {
        std::fs::write(&sparse, &pristine).expect("restore");
        break_it(&sparse);
        let out_path = dir.path().join("out.safetensors");
        let out = bnn_convert(&[&"densify", &sparse, &"-o", &out_path]);
        assert_one_line_error(&out, &["s.safetensors", mu, want]);
        assert!(!String::from_utf8_lossy(&out.stderr).contains("out.safetensors"), "names the input, not the output");
        assert!(!out_path.exists(), "no output for {want}");
        // And every other command refuses it the same way.
        let out = bnn_convert(&[&"snr", &sparse]);
        assert_one_line_error(&out, &["s.safetensors", mu, want]);
    }
    // The check of row 0's columns is real: the untampered file has them increasing.
    std::fs::write(&sparse, &pristine).expect("restore");
    run_ok(&[&"densify", &sparse, &"-o", &dir.path().join("ok.safetensors")]);
}
