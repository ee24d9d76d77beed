//! `bnn-convert inspect` on the fixtures, a safetensors file and the real BPrune sample.

mod common;

use common::*;
use serde_json::Value;

fn stdout(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn text_table_layers_and_manifest() {
    let text = stdout(&bnn_convert(&[&"inspect", &fixtures().join("tf1_bnn_fc")]));
    assert!(text.contains("global step: 3000"), "{text}");
    assert!(text.contains("den_1/kernel_posterior_untransformed_scale"));
    assert!(text.contains("float32  [64, 64]"));
    assert!(text.contains("den_3 (Bayesian): kernel_posterior_loc, kernel_posterior_untransformed_scale, bias_posterior_loc"));
    assert!(text.contains("lists 9 trainable variables: all stored"));
    assert!(text.contains("input Placeholder, labels Placeholder_1"));
    assert!(text.contains("28 tensors, 213632 bytes"), "sizes sum to the data shard's length:\n{text}");
}

#[test]
fn json_for_scripts() {
    let out = stdout(&bnn_convert(&[&"inspect", &"--json", &fixtures().join("tf1_two_shards/model.ckpt.index")]));
    let v: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["format"], "tf_bundle");
    assert_eq!(v["shards"].as_array().expect("shards").len(), 2);
    let tensors = v["tensors"].as_array().expect("tensors");
    let kernel = tensors.iter().find(|t| t["key"] == "shard1/kernel").expect("shard1/kernel");
    assert_eq!(kernel["dtype"], "float64");
    assert_eq!(kernel["shape"], serde_json::json!([4, 3]));
    assert_eq!(kernel["shard"], 1);
    assert_eq!(kernel["kind"], "weight");
}

#[test]
fn tf2_keys_are_named_by_variable() {
    let out = stdout(&bnn_convert(&[&"inspect", &"--json", &fixtures().join("tf2_keras_adam")]));
    let v: Value = serde_json::from_str(&out).expect("JSON");
    let tensors = v["tensors"].as_array().expect("tensors");
    let loc = tensors
        .iter()
        .find(|t| t["key"] == "model/layer_with_weights-0/kernel_posterior_loc/.ATTRIBUTES/VARIABLE_VALUE")
        .expect("loc key");
    assert!(loc["name"].as_str().expect("name").ends_with("/kernel_posterior_loc"));
    let slots = tensors.iter().filter(|t| t["kind"] == "optimizer_slot").count();
    assert_eq!(slots, 12, "Adam m and v for 6 variables");
    assert_eq!(v["layers"].as_array().expect("layers").len(), 2);
}

#[test]
fn bprune_sample_lists_its_index_and_verify_reports_the_missing_shard() {
    let dir = fixtures().join("../../shared/samples/bprune-fc-14000/ckpt");
    if !dir.is_dir() {
        eprintln!("skipped: {} is not beside this checkout", dir.display());
        return;
    }
    let text = stdout(&bnn_convert(&[&"inspect", &dir]));
    assert!(text.contains("(MISSING)"), "{text}");
    assert!(text.contains("den_1/kernel_posterior_loc"));
    assert!(text.contains("[784, 256]"));
    let run = bnn_convert(&[&"inspect", &"--verify", &dir]);
    assert_one_line_error(&run, &["model.ckpt-14000.data-00000-of-00001", "missing data shard"]);
}

#[test]
fn missing_manifest_entries_are_named() {
    let dir = copy_fixture("tf1_bnn_fc");
    let names = std::fs::read_to_string(dir.path().join("LayerNames.txt")).expect("read");
    std::fs::write(dir.path().join("LayerNames.txt"), format!("{names}den_9/kernel_posterior_loc:0\n")).expect("write");
    let run = bnn_convert(&[&"inspect", &dir.path()]);
    assert_one_line_error(&run, &["LayerNames.txt", "den_9/kernel_posterior_loc"]);
    let out = tempfile::tempdir().expect("tempdir");
    let run = bnn_convert(&[&"ckpt-to-safetensors", &dir.path(), &"-o", &out.path().join("x.safetensors")]);
    assert_one_line_error(&run, &["LayerNames.txt", "den_9/kernel_posterior_loc"]);
    assert!(listing(out.path()).is_empty());
}
