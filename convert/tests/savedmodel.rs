//! TF2 Keras SavedModel folders (fixtures/tf2_keras_savedmodel, a Sequential BNN-Conv, and
//! fixtures/tf2_keras_resnet, a functional model with batch normalization and a residual Add,
//! both written by tf_keras 2.21 + TFP): accepted wherever a checkpoint is, with the
//! architecture read from `keras_metadata.pb`; checked against what TensorFlow computed from
//! the saved variables (analysis.json).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;
use tract_onnx::prelude::*;

const FIXTURES: [&str; 2] = ["tf2_keras_savedmodel", "tf2_keras_resnet"];

fn saved_model() -> PathBuf {
    fixtures().join(FIXTURES[0])
}

fn analysis(folder: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(folder).join("analysis.json")).expect("analysis")).expect("json")
}

fn run_ok(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let out = bnn_convert(args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first `n` test examples, flat float32.
fn test_x(n: usize) -> Vec<f32> {
    let b = std::fs::read(fixtures().join("data/digits_test_x.npy")).expect("npy");
    let start = b.len() - 360 * 64 * 4;
    b[start..]
        .chunks_exact(4)
        .take(n * 64)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn tf_mean_logits(folder: &str) -> Vec<f64> {
    analysis(folder)["mean_logits"]
        .as_array()
        .expect("rows")
        .iter()
        .flat_map(|r| r.as_array().expect("row").iter().map(|v| v.as_f64().expect("f64")))
        .collect()
}

fn assert_logits_close(folder: &str, ours: &[f64], what: &str) {
    let tf = tf_mean_logits(folder);
    assert_eq!(ours.len(), tf.len(), "{what}");
    let worst = ours.iter().zip(&tf).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(worst <= 1e-4, "{folder} in {what}: logits differ from TensorFlow's by {worst}");
}

#[test]
fn inspect_convert_and_prune_a_savedmodel_folder() {
    let text = run_ok(&[&"inspect", &saved_model()]);
    assert!(text.contains("variables/variables"), "{text}");
    for layer in ["Conv_1 (Bayesian)", "den_1 (Bayesian)", "den_out (deterministic)"] {
        assert!(text.contains(layer), "{layer}: {text}");
    }
    let out = tempfile::tempdir().expect("out");
    run_ok(&[&"ckpt-to-safetensors", &saved_model(), &"-o", &out.path().join("m.safetensors")]);
    let st = std::fs::read(out.path().join("m.safetensors")).expect("written");
    let st = safetensors::SafeTensors::deserialize(&st).expect("valid");
    assert_eq!(
        st.len(),
        8,
        "mu, rho and bias mu of two Flipout layers, kernel and bias of den_out: {:?}",
        st.names()
    );
    let report = run_ok(&[
        &"prune",
        &saved_model(),
        &"-o",
        &out.path().join("pruned/model.ckpt-1"),
        &"--threshold",
        &"1",
        &"--json",
    ]);
    let report: Value = serde_json::from_str(&report).expect("json");
    assert_eq!(report["layers"].as_array().expect("layers").len(), 2, "the two Flipout layers");
    // Pruned TF output is a plain checkpoint again.
    run_ok(&[&"inspect", &"--verify", &out.path().join("pruned")]);
}

#[test]
fn eval_reads_the_keras_architecture_and_matches_tensorflow() {
    let data = fixtures().join("data/digits_test_x.npy");
    for folder in FIXTURES {
        let out = run_ok(&[&"eval", &fixtures().join(folder), &"--data", &data, &"--samples", &"0", &"--json"]);
        let ours: Value = serde_json::from_str(&out).expect("json");
        let tf = &analysis(folder)["mean_model"]["tf"];
        let count = |v: &Value| (v.as_f64().expect("f64") * 360.0).round() as i64;
        assert_eq!(count(&ours["accuracy"]), count(&tf["accuracy"]), "{folder}");
        let ll = (ours["mean_log_likelihood"].as_f64().expect("ll") - tf["mean_log_likelihood"].as_f64().expect("ll")).abs();
        assert!(ll < 1e-4, "{folder}: mean log-likelihood differs by {ll}");
    }
}

fn export(folder: &str, out: &Path) {
    run_ok(&[&"export-onnx", &fixtures().join(folder), &"-o", &out]);
}

#[test]
fn exported_onnx_gives_tensorflows_logits_in_tract() {
    for folder in FIXTURES {
        let dir = tempfile::tempdir().expect("tmp");
        let onnx = dir.path().join("m.onnx");
        export(folder, &onnx);
        let plan = tract_onnx::onnx()
            .model_for_path(&onnx)
            .expect("tract loads the model")
            .with_input_fact(0, f32::fact([16, 8, 8, 1]).into())
            .expect("fact")
            .into_optimized()
            .expect("optimize")
            .into_runnable()
            .expect("runnable");
        let input = Tensor::from_shape(&[16, 8, 8, 1], &test_x(16)).expect("tensor");
        let out = plan.run(tvec!(input.into())).expect("run");
        // Outputs: logits, probabilities.
        let logits: Vec<f64> = out[0].to_plain_array_view::<f32>().expect("f32").iter().map(|v| f64::from(*v)).collect();
        assert_logits_close(folder, &logits, "tract");
    }
}

#[test]
fn exported_onnx_gives_tensorflows_logits_in_onnxruntime() {
    let py = fixtures().join("../.venv/bin/python");
    let has_ort = Command::new(&py).args(["-c", "import onnxruntime"]).output().is_ok_and(|o| o.status.success());
    if !has_ort {
        assert!(
            std::env::var("BNN_REQUIRE_PYTHON").as_deref() != Ok("1"),
            "BNN_REQUIRE_PYTHON=1 but no onnxruntime in .venv"
        );
        eprintln!("note: skipped: .venv/bin/python with onnxruntime not found");
        return;
    }
    for folder in FIXTURES {
        let dir = tempfile::tempdir().expect("tmp");
        let onnx = dir.path().join("m.onnx");
        export(folder, &onnx);
        let script = r#"
import json, sys
import numpy as np, onnxruntime as ort
x = np.load(sys.argv[1])[:16].reshape(16, 8, 8, 1).astype(np.float32)
s = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
print(json.dumps(s.run(["logits"], {s.get_inputs()[0].name: x})[0].reshape(-1).tolist()))
"#;
        let out = Command::new(&py)
            .arg("-c")
            .arg(script)
            .arg(fixtures().join("data/digits_test_x.npy"))
            .arg(&onnx)
            .output()
            .expect("python");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let logits: Vec<f64> = serde_json::from_slice(&out.stdout).expect("json");
        assert_logits_close(folder, &logits, "onnxruntime");
    }
}

#[test]
fn a_savedmodel_without_its_variables_is_named() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::copy(saved_model().join("saved_model.pb"), dir.path().join("saved_model.pb")).expect("copy");
    let run = bnn_convert(&[&"inspect", &dir.path()]);
    assert_one_line_error(&run, &["variables/variables.index", "SavedModel folder without its variables bundle"]);
}
