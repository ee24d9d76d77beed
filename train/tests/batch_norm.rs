//! The paper's VGG-16 and ResNet-18 with batch normalization (BNN and CNN twins): checkpoints
//! TensorFlow restores, whose inference path normalizes with moving statistics that training
//! updated, as numpy recomputes them; read by `bnn-convert inspect` and `ckpt-to-safetensors`;
//! pruned, evaluated and exported to ONNX (plain and `--fold-bn`), run in tract and onnxruntime.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

/// BN scopes of `arch` at any width, in the checkpoint's (sorted) order.
fn bn_scopes(arch: &str) -> Vec<String> {
    let mut v: Vec<String> = match arch {
        "vgg16" => (1..=13).map(|k| format!("Conv_{k}_bn")).collect(),
        _ => {
            let mut v = vec!["Conv_1_bn".to_string()];
            for b in 1..=8 {
                v.push(format!("block_{b}/Conv_1_bn"));
                v.push(format!("block_{b}/Conv_2_bn"));
            }
            // The first block of stages 2-4 halves the size and doubles the channels.
            v.extend([3, 5, 7].map(|b| format!("block_{b}/shortcut_bn")));
            v
        }
    };
    v.sort();
    v
}

/// Channels of each BN scope at width 1/16.
fn bn_channels(arch: &str, scope: &str) -> i64 {
    if arch == "vgg16" {
        let k: usize = scope.trim_start_matches("Conv_").trim_end_matches("_bn").parse().unwrap();
        [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512][k - 1] / 16
    } else {
        let block: usize = scope.strip_prefix("block_").map_or(0, |r| r[..1].parse().unwrap());
        [64, 64, 64, 128, 128, 256, 256, 512, 512][block] / 16
    }
}

/// Trains 3 steps of `arch` (width 1/16) on the digits into `dir`; returns the prefix.
fn train(arch: &str, bayesian: bool, dir: &Path) -> std::path::PathBuf {
    let mut args = vec!["--arch", arch, "--width", "0.0625", "--max-steps", "3", "--no-eval", "--out", dir.to_str().unwrap()];
    if !bayesian {
        args.push("--deterministic");
    }
    let r = train_json(&args);
    assert_eq!(r["last_step"], 3);
    dir.join("model.ckpt-3")
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array().expect("array").iter().map(|s| s.as_str().expect("string").to_string()).collect()
}

/// Returns TensorFlow's inference logits of the first 32 test digits.
fn check_in_tensorflow(py: &Path, prefix: &Path, arch: &str, bayesian: bool) -> Vec<f64> {
    let logits = if arch == "vgg16" { "den_3/BiasAdd" } else { "den_out/BiasAdd" };
    let script = root().join("train/tests/py/check_bn.py");
    let out = ok(std::process::Command::new(py).arg(script).arg(prefix).arg(digits()).arg(logits));
    let j: Value = serde_json::from_str(&out).unwrap();
    let scopes = bn_scopes(arch);
    let what = format!("{arch} bayesian={bayesian}");

    // Every BN layer is in the checkpoint, and training moved its moving statistics.
    let layers = j["bn_layers"].as_object().unwrap();
    assert_eq!(layers.keys().cloned().collect::<Vec<_>>(), scopes, "{what}");
    for (s, l) in layers {
        assert_eq!(l["channels"].as_i64().unwrap(), bn_channels(arch, s), "{what} {s}");
        assert!(l["mean_moved"].as_f64().unwrap() > 1e-4, "{what} {s}: moving_mean still 0: {l}");
        assert!(l["variance_moved"].as_f64().unwrap() > 1e-4, "{what} {s}: moving_variance still 1: {l}");
    }

    // The logits' path: one inference-mode FusedBatchNormV3 per layer, fed by the moving
    // statistics, from the placeholder, with nothing of the training tower on it.
    let path = j["inference_path"].as_array().unwrap();
    let mut on_path: Vec<String> = path.iter().map(|b| b["op"].as_str().unwrap().trim_end_matches("/FusedBatchNormV3").to_string()).collect();
    on_path.sort();
    assert_eq!(on_path, scopes, "{what}");
    for b in path {
        let scope = b["op"].as_str().unwrap().trim_end_matches("/FusedBatchNormV3");
        assert_eq!(b["is_training"], false, "{what} {b}");
        assert!((b["epsilon"].as_f64().unwrap() - 1e-3).abs() < 1e-9, "{b}");
        let want: Vec<String> = ["gamma", "beta", "moving_mean", "moving_variance"].iter().map(|v| format!("{scope}/{v}/read")).collect();
        assert_eq!(strs(&b["inputs"])[1..], want[..], "{what}");
    }
    assert_eq!(j["placeholder_on_path"], true);
    assert_eq!(j["training_ops_on_path"], serde_json::json!([]), "{what}");
    assert_eq!(j["training_bn_count"].as_u64().unwrap() as usize, scopes.len());
    assert_eq!(j["training_bn_modes"], serde_json::json!([true]));
    assert_eq!(strs(&j["update_ops"]).len(), 2 * scopes.len());

    // gamma and beta are trained, the moving statistics are saved but not trainable.
    let trainable = strs(&j["trainable_variables"]);
    let global = strs(&j["global_variables"]);
    for s in &scopes {
        for v in ["gamma", "beta"] {
            assert!(trainable.contains(&format!("{s}/{v}")), "{what}: {s}/{v} not trainable");
        }
        for v in ["moving_mean", "moving_variance"] {
            assert!(!trainable.contains(&format!("{s}/{v}")) && global.contains(&format!("{s}/{v}")), "{what}: {s}/{v}");
        }
    }
    assert!(!global.iter().any(|v| v.starts_with("training/")), "the towers share their variables");

    // TensorFlow's inference BN is numpy's with the checkpoint's moving statistics, not the batch's.
    assert!(j["max_bn_error"].as_f64().unwrap() < 1e-4, "{what}: {}", j["max_bn_error"]);
    assert!(j["max_batch_stat_gap"].as_f64().unwrap() > 1e-2, "{what}: {}", j["max_batch_stat_gap"]);
    if !bayesian {
        // Inference mode: an example's logits depend neither on the run nor on the rest of the batch.
        assert!(j["logits_repeat_gap"].as_f64().unwrap() == 0.0, "{what}: {}", j["logits_repeat_gap"]);
        assert!(j["logits_subbatch_gap"].as_f64().unwrap() < 1e-5, "{what}: {}", j["logits_subbatch_gap"]);
    }

    // One KL term per Flipout layer and none for batch normalization.
    let kl = strs(&j["kl_inputs"]);
    let flipout = strs(&j["flipout_layers"]);
    if bayesian {
        let mut kl_layers: Vec<String> =
            kl.iter().map(|k| k.strip_prefix("training/").unwrap_or_else(|| panic!("{k}: KL of the training tower")).split("/kl/").next().unwrap().to_string()).collect();
        kl_layers.sort();
        assert_eq!(kl_layers, flipout, "{what}");
        assert!(!kl.iter().any(|k| k.contains("_bn/")), "{what}: {kl:?}");
    } else {
        assert!(kl.is_empty() && flipout.is_empty(), "{what}");
    }

    // The .meta's train_op trains and updates the moving statistics (TF1's UPDATE_OPS).
    assert_eq!(j["step_before"], 3);
    assert_eq!(j["step_after_train_op"], 4);
    assert!(j["moving_mean_change_by_train_op"].as_f64().unwrap() > 0.0, "{what}");
    j["logits"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap())).collect()
}

/// The first 32 test digits, `[32, 8, 8, 1]` float32.
fn first_digits() -> Vec<f32> {
    let b = std::fs::read(digits().join("digits_test_x.npy")).unwrap();
    b[b.len() - 360 * 64 * 4..].chunks_exact(4).take(32 * 64).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// The `logits` output of the ONNX model at `file` in tract, on the first 32 test digits.
fn tract_logits(file: &Path) -> Vec<f64> {
    use tract_onnx::prelude::*;
    let plan = tract_onnx::onnx()
        .model_for_path(file)
        .and_then(|m| m.with_input_fact(0, f32::fact([32, 8, 8, 1]).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .expect("tract loads the exported model");
    let out = plan.run(tvec!(Tensor::from_shape(&[32, 8, 8, 1], &first_digits()).unwrap().into())).expect("tract runs it");
    out[0].to_plain_array_view::<f32>().unwrap().iter().map(|v| f64::from(*v)).collect()
}

fn worst(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// The chain of issue 11 with the architecture read from the trainer's `.meta` (no --arch):
/// a BNN is pruned, then evaluated and exported. The mean network's logits on the first 32
/// test digits in tract equal onnxruntime's, and equal those of the `--fold-bn` export (every
/// BN follows a conv, so all are folded); for the deterministic twin, whose TensorFlow logits
/// (`tf_logits`) are deterministic, tract's and onnxruntime's logits must equal them.
fn check_chain(convert: &Path, py: Option<&Path>, prefix: &Path, dir: &Path, arch: &str, bayesian: bool, tf_logits: Option<&[f64]>) {
    let run = |args: &[&std::ffi::OsStr]| ok(std::process::Command::new(convert).args(args));
    let model = if bayesian {
        let pruned = dir.join("pruned/model.ckpt-3");
        let r: Value = serde_json::from_str(&run(&["prune".as_ref(), prefix.as_ref(), "-o".as_ref(), pruned.as_ref(), "--threshold".as_ref(), "1".as_ref(), "--json".as_ref()])).unwrap();
        assert!(r["total"].as_u64().unwrap() > 0, "{r}");
        pruned
    } else {
        prefix.to_path_buf()
    };
    let data = digits().join("digits_test_x.npy");
    let e: Value = serde_json::from_str(&run(&["eval".as_ref(), model.as_ref(), "--data".as_ref(), data.as_ref(), "--samples".as_ref(), "2".as_ref(), "--json".as_ref()])).unwrap();
    assert_eq!(e["n"], 360, "{e}");
    let onnx = dir.join("model.onnx");
    run(&["export-onnx".as_ref(), model.as_ref(), "-o".as_ref(), onnx.as_ref(), "--sparse".as_ref(), "never".as_ref()]);
    let folded = dir.join("model_folded.onnx");
    let said = run(&["export-onnx".as_ref(), model.as_ref(), "-o".as_ref(), folded.as_ref(), "--sparse".as_ref(), "never".as_ref(), "--fold-bn".as_ref()]);
    let bns = bn_scopes(arch).len();
    assert!(said.contains(&format!("{bns} batch normalizations folded")), "{said}");
    let tract = tract_logits(&onnx);
    let w = worst(&tract_logits(&folded), &tract);
    assert!(w < 1e-4, "{arch}: folded vs unfolded logits in tract differ by {w}");
    if let (Some(tf), false) = (tf_logits, bayesian) {
        let w = worst(&tract, tf);
        assert!(w < 1e-4, "{arch}: logits in tract differ from TensorFlow's by {w}");
    }
    let Some(py) = py else { return };
    let script = "import json, sys\nimport numpy as np, onnxruntime as ort\n\
        x = np.load(sys.argv[1])[:32].reshape(32, 8, 8, 1).astype(np.float32)\n\
        s = ort.InferenceSession(sys.argv[2], providers=['CPUExecutionProvider'])\n\
        print(json.dumps(s.run(['logits'], {s.get_inputs()[0].name: x})[0].reshape(-1).tolist()))\n";
    let ours: Vec<f64> = serde_json::from_str(&ok(std::process::Command::new(py).arg("-c").arg(script).arg(&data).arg(&onnx))).unwrap();
    let w = worst(&ours, &tract);
    assert!(w < 1e-4, "{arch}: onnxruntime and tract differ by {w}");
    if let (Some(tf), false) = (tf_logits, bayesian) {
        let w = worst(&ours, tf);
        assert!(w < 1e-4, "{arch}: exported logits in onnxruntime differ from TensorFlow's by {w}");
    }
}

fn check_in_bnn_convert(convert: &Path, prefix: &Path, arch: &str, dir: &Path) {
    let out = ok(std::process::Command::new(convert).args(["inspect", "--json", "--verify"]).arg(prefix));
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["global_step"], 3);
    let tensors: std::collections::BTreeMap<String, Value> =
        j["tensors"].as_array().unwrap().iter().map(|t| (t["key"].as_str().unwrap().to_string(), t.clone())).collect();
    for s in bn_scopes(arch) {
        for v in ["gamma", "beta", "moving_mean", "moving_variance"] {
            let t = &tensors[&format!("{s}/{v}")];
            assert_eq!(t["dtype"], "float32");
            assert_eq!(t["shape"], serde_json::json!([bn_channels(arch, &s)]), "{s}/{v}");
        }
    }
    assert!(!tensors.keys().any(|k| k.starts_with("training/")));
    // LayerNames.txt lists gamma and beta with the posteriors; bnn-convert accepts it.
    assert!(j["manifest_error"].is_null(), "{}", j["manifest_error"]);

    // ckpt-to-safetensors keeps the BN variables bit for bit, under the `.`-separated names.
    let st = dir.join("model.safetensors");
    ok(std::process::Command::new(convert).arg("ckpt-to-safetensors").arg(prefix).arg("-o").arg(&st));
    let file = formats::safetensors_file::SafetensorsFile::open(&st).unwrap();
    let ck = formats::checkpoint::Checkpoint::open(prefix).unwrap();
    for s in bn_scopes(arch) {
        for v in ["gamma", "beta", "moving_mean", "moving_variance"] {
            let key = format!("{s}/{v}");
            let name = key.replace('/', ".");
            let want = ck.read(&key).unwrap();
            assert_eq!(file.bytes(&name).unwrap(), want.bytes().unwrap(), "{name}");
        }
    }
}

fn run_arch(arch: &str) {
    let py = python_with_tf();
    if py.is_none() {
        assert!(!required("BNN_TRAIN_REQUIRE_PYTHON"), "no .venv with TensorFlow: run scripts/setup-tensorflow.sh");
        eprintln!("skipped the TensorFlow checks: no Python TensorFlow in .venv");
    }
    let convert = workspace_bin("bnn-convert");
    if convert.is_none() {
        assert!(!required("BNN_TRAIN_REQUIRE_CONVERT"), "bnn-convert not built: run `cargo build -p bnn-convert` first");
        eprintln!("skipped the bnn-convert checks: not built in this target folder");
    }
    for bayesian in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let prefix = train(arch, bayesian, dir.path());
        let tf_logits = py.as_ref().map(|py| check_in_tensorflow(py, &prefix, arch, bayesian));
        if let Some(c) = &convert {
            check_in_bnn_convert(c, &prefix, arch, dir.path());
            check_chain(c, py.as_deref(), &prefix, dir.path(), arch, bayesian, tf_logits.as_deref());
        }
    }
}

#[test]
fn vgg16_with_batch_norm_round_trips_through_tensorflow_and_bnn_convert() {
    run_arch("vgg16");
}

#[test]
fn resnet18_with_batch_norm_round_trips_through_tensorflow_and_bnn_convert() {
    run_arch("resnet18");
}
