//! Helpers shared by the command-line tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's `fixtures/` folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// Runs `bnn-convert` with `args`.
pub fn bnn_convert(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bnn-convert"));
    for a in args {
        cmd.arg(a);
    }
    cmd.output().expect("bnn-convert runs")
}

/// Asserts a failed run: non-zero exit, exactly one line on stderr containing every `needle`.
pub fn assert_one_line_error(out: &Output, needles: &[&str]) {
    assert!(!out.status.success(), "expected failure, got success");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one-line error expected, got:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "error should mention '{n}': {err}");
    }
}

/// Copies the files of fixture checkpoint `name` into a fresh temporary folder.
pub fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for e in std::fs::read_dir(fixtures().join(name)).expect("fixture folder") {
        let e = e.expect("entry");
        if e.path().is_file() {
            std::fs::copy(e.path(), dir.path().join(e.file_name())).expect("copy");
        }
    }
    dir
}

/// The Python with TensorFlow that the interoperability tests use, if installed.
/// With `BNN_REQUIRE_PYTHON=1` (set by scripts/test.sh) its absence is a failure.
pub fn tf_python() -> Option<PathBuf> {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let ok = py.is_file()
        && Command::new(&py)
            .args(["-c", "import tensorflow"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    if ok {
        return Some(py);
    }
    if std::env::var("BNN_REQUIRE_PYTHON").as_deref() == Ok("1") {
        panic!("BNN_REQUIRE_PYTHON=1 but {} cannot import tensorflow", py.display());
    }
    eprintln!("skipped: no Python TensorFlow in .venv (run scripts/setup-python.sh)");
    None
}

/// Files in `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The first `n` (at most 360) test examples of `fixtures/data/digits_test_x.npy`, flat float32.
pub fn test_x(n: usize) -> Vec<f32> {
    let b = std::fs::read(fixtures().join("data/digits_test_x.npy")).expect("npy");
    let start = b.len() - 360 * 64 * 4;
    b[start..].chunks_exact(4).take(n * 64).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// A posterior with made-up, deterministic weights: mu and the bias uniform in [-0.5, 0.5),
/// sigma uniform in [0, 0.05).
pub fn made_up_posterior(name: &str, shape: Vec<usize>, rng: &mut formats::synthetic::SplitMix64) -> model::arch::Posterior {
    let len: usize = shape.iter().product();
    let units = *shape.last().expect("shape");
    model::arch::Posterior {
        name: name.into(),
        kernel_mu: (0..len).map(|_| rng.uniform(-0.5, 0.5)).collect(),
        kernel_sigma: Some((0..len).map(|_| rng.uniform(0.0, 0.05)).collect()),
        bias_mu: (0..units).map(|_| rng.uniform(-0.5, 0.5)).collect(),
        bias_sigma: None,
        kernel_shape: shape,
    }
}

/// Largest absolute difference of two equally long vectors.
pub fn worst(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Runs the serialized ONNX model `bytes` in tract on `x` (`[n, shape...]`); every output
/// flattened.
pub fn tract_run_bytes(bytes: &[u8], shape: &[usize], x: &[f32]) -> Vec<Vec<f32>> {
    use tract_onnx::prelude::*;
    let plan = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .expect("tract loads the model")
        .with_input_fact(0, f32::fact(shape).into())
        .expect("fact")
        .into_optimized()
        .expect("optimize")
        .into_runnable()
        .expect("runnable");
    let input = Tensor::from_shape(shape, x).expect("tensor");
    let out = plan.run(tvec!(input.into())).expect("run");
    out.iter().map(|t| t.to_plain_array_view::<f32>().expect("f32").iter().copied().collect()).collect()
}

/// [`tract_run_bytes`] of an in-memory model.
pub fn tract_run(model: &model::onnx::ModelProto, shape: &[usize], x: &[f32]) -> Vec<Vec<f32>> {
    tract_run_bytes(&model::onnx::encode(model, Path::new("test.onnx")).expect("encode"), shape, x)
}

/// The `.venv` Python with onnxruntime, if installed. With `BNN_REQUIRE_PYTHON=1` its absence
/// is a failure; otherwise the caller skips with a note.
pub fn onnxruntime_python() -> Option<PathBuf> {
    let py = fixtures().join("../.venv/bin/python");
    let ok = Command::new(&py).args(["-c", "import onnxruntime"]).output().is_ok_and(|o| o.status.success());
    if ok {
        return Some(py);
    }
    assert!(std::env::var("BNN_REQUIRE_PYTHON").as_deref() != Ok("1"), "BNN_REQUIRE_PYTHON=1 but no onnxruntime in .venv");
    eprintln!("note: skipped: .venv/bin/python with onnxruntime not found (pip install onnxruntime)");
    None
}

const RUN_ORT: &str = r#"
import json, sys
import numpy as np, onnxruntime as ort
x = np.load(sys.argv[1])
out = {}
for f in sys.argv[2:]:
    s = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    xx = x.reshape([-1] + list(i.shape[1:])).astype(np.float32)
    out[f] = {"input": i.name, "input_shape": [str(d) for d in i.shape],
              "outputs": {o.name: v.reshape(-1).tolist() for o, v in zip(s.get_outputs(), s.run(None, {i.name: xx}))}}
print(json.dumps(out))
"#;

/// Runs each ONNX file in onnxruntime on all of `x_npy` (reshaped to the model's input):
/// `{file: {"input", "input_shape", "outputs": {name: flat values}}}`, keyed by the path as given.
pub fn onnxruntime_outputs(py: &Path, x_npy: &Path, files: &[PathBuf]) -> serde_json::Value {
    let out = Command::new(py).arg("-c").arg(RUN_ORT).arg(x_npy).args(files).output().expect("python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

/// One output of one file from [`onnxruntime_outputs`], as float32.
pub fn onnxruntime_output(v: &serde_json::Value, file: &Path, output: &str) -> Vec<f32> {
    v[file.to_string_lossy().as_ref()]["outputs"][output].as_array().expect("output").iter().map(|x| x.as_f64().unwrap_or(f64::NAN) as f32).collect()
}
