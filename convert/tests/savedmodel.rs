//! TF2 Keras SavedModel folders (fixtures/tf2_keras_savedmodel, a Sequential BNN-Conv, and
//! fixtures/tf2_keras_resnet, a functional model with batch normalization and a residual Add,
//! both written by tf_keras 2.21 + TFP): accepted wherever a checkpoint is, with the
//! architecture read from `keras_metadata.pb`; checked against what TensorFlow computed from
//! the saved variables (analysis.json).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

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
        let out = tract_run_bytes(&std::fs::read(&onnx).expect("written"), &[16, 8, 8, 1], &test_x(16));
        // Outputs: logits, probabilities.
        let logits: Vec<f64> = out[0].iter().map(|v| f64::from(*v)).collect();
        assert_logits_close(folder, &logits, "tract");
    }
}

#[test]
fn exported_onnx_gives_tensorflows_logits_in_onnxruntime() {
    let Some(py) = onnxruntime_python() else { return };
    for folder in FIXTURES {
        let dir = tempfile::tempdir().expect("tmp");
        let onnx = dir.path().join("m.onnx");
        export(folder, &onnx);
        let v = onnxruntime_outputs(&py, &fixtures().join("data/digits_test_x.npy"), std::slice::from_ref(&onnx));
        // TF's logits are those of the first 16 examples.
        let logits: Vec<f64> = onnxruntime_output(&v, &onnx, "logits")[..160].iter().map(|v| f64::from(*v)).collect();
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
