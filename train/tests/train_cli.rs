//! End-to-end tests of `bnn-train` on the bundled digits: accuracy, checkpoints read by
//! `bnn-convert` and by TensorFlow, resume, bad input, compare.

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use common::*;

/// Trainable variables of BNN-FC 64-256-256-10 and their shapes, written out by hand.
fn expected_fc_variables() -> BTreeMap<String, Vec<u64>> {
    let mut m = BTreeMap::new();
    for (layer, i, o) in [("den_1", 64, 256), ("den_2", 256, 256), ("den_3", 256, 10)] {
        m.insert(format!("{layer}/kernel_posterior_loc"), vec![i, o]);
        m.insert(format!("{layer}/kernel_posterior_untransformed_scale"), vec![i, o]);
        m.insert(format!("{layer}/bias_posterior_loc"), vec![o]);
    }
    m
}

#[test]
fn bnn_fc_reaches_85_percent_on_digits_within_a_minute() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let r = train_json(&["--epochs", "10", "--out", dir.path().to_str().unwrap()]);
    let secs = t0.elapsed().as_secs_f64();
    let acc = r["test_accuracy"].as_f64().unwrap();
    assert!(acc >= 0.85, "test accuracy {acc}");
    assert!(secs < 60.0, "took {secs:.1} s");
    // 1437 examples / 64 = 22 steps per epoch.
    assert_eq!(r["last_step"], 220);
    assert_eq!(r["parameters"], 2 * (64 * 256 + 256 * 256 + 256 * 10) + 256 + 256 + 10);
    let epochs = r["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 10);
    // The loss goes down.
    assert!(epochs[9]["loss"].as_f64() < epochs[0]["loss"].as_f64());
    for f in ["model.ckpt-220.index", "model.ckpt-220.data-00000-of-00001", "model.ckpt-220.meta", "checkpoint", "LayerNames.txt", "OpsNames.txt"] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    let layers = std::fs::read_to_string(dir.path().join("LayerNames.txt")).unwrap();
    let want: Vec<String> = ["den_1", "den_2", "den_3"]
        .iter()
        .flat_map(|l| ["kernel_posterior_loc", "kernel_posterior_untransformed_scale", "bias_posterior_loc"].map(|p| format!("{l}/{p}:0")))
        .collect();
    assert_eq!(layers.lines().collect::<Vec<_>>(), want);
    let ops = std::fs::read_to_string(dir.path().join("OpsNames.txt")).unwrap();
    assert_eq!(ops.lines().take(2).collect::<Vec<_>>(), ["Placeholder", "Placeholder_1"]);
    assert!(!ops.contains("save/"), "BPrune's op list is taken before the saver exists");
    let state = std::fs::read_to_string(dir.path().join("checkpoint")).unwrap();
    assert!(state.starts_with("model_checkpoint_path: \"model.ckpt-220\""), "{state}");
    // Only the newest five epochs' checkpoints are kept.
    assert!(!dir.path().join("model.ckpt-110.index").exists() && dir.path().join("model.ckpt-132.index").exists());
}

#[test]
fn checkpoint_is_read_by_bnn_convert() {
    let Some(convert) = workspace_bin("bnn-convert") else {
        assert!(!required("BNN_TRAIN_REQUIRE_CONVERT"), "bnn-convert not built: run `cargo build -p bnn-convert` first");
        eprintln!("skipped: bnn-convert not built in this target folder");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    train_json(&["--epochs", "1", "--optimizer", "rmsprop", "--out", dir.path().to_str().unwrap()]);
    let prefix = dir.path().join("model.ckpt-22");
    let out = ok(std::process::Command::new(convert).args(["inspect", "--json", "--verify"]).arg(&prefix));
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["global_step"], 22);
    let mut got = BTreeMap::new();
    for t in j["tensors"].as_array().unwrap() {
        let shape: Vec<u64> = t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        got.insert(t["key"].as_str().unwrap().to_string(), (t["dtype"].as_str().unwrap().to_string(), shape));
    }
    // 9 posteriors, each with TF1 RMSProp's two slots, and global_step.
    assert_eq!(got.len(), 9 * 3 + 1);
    for (name, shape) in expected_fc_variables() {
        assert_eq!(got[&name], ("float32".to_string(), shape.clone()), "{name}");
        assert_eq!(got[&format!("{name}/RMSProp")].1, shape);
        assert_eq!(got[&format!("{name}/RMSProp_1")].1, shape);
    }
    assert_eq!(got["global_step"], ("int64".to_string(), vec![]));
    let layers: Vec<&str> = j["layers"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(layers, ["den_1", "den_2", "den_3"]);
    assert_eq!(j["manifest"]["input_op"], "Placeholder");
    assert_eq!(j["manifest"]["label_op"], "Placeholder_1");
    assert_eq!(j["manifest"]["layer_names"].as_array().unwrap().len(), 9);
    assert!(j["manifest_error"].is_null());
}

#[test]
fn checkpoint_is_read_by_python_tensorflow() {
    let Some(py) = python_with_tf() else {
        assert!(!required("BNN_TRAIN_REQUIRE_PYTHON"), "no .venv with TensorFlow: run scripts/setup-tensorflow.sh");
        eprintln!("skipped: no Python TensorFlow in .venv");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    train_json(&["--epochs", "5", "--out", dir.path().to_str().unwrap()]);
    let prefix = dir.path().join("model.ckpt-110");
    // tf.train.load_checkpoint, through the fixtures' reader.
    let read = ok(std::process::Command::new(&py).arg(root().join("fixtures/tf_read.py")).arg(&prefix).env("TF_CPP_MIN_LOG_LEVEL", "2"));
    let read: serde_json::Value = serde_json::from_str(&read).unwrap();
    let tensors = read["tensors"].as_object().unwrap();
    for (name, shape) in expected_fc_variables() {
        let t = &tensors[&name];
        assert_eq!(t["dtype"], "float32", "{name}");
        assert_eq!(t["shape"], serde_json::json!(shape), "{name}");
        assert_eq!(tensors[&format!("{name}/Adam")]["shape"], serde_json::json!(shape));
    }
    for k in ["global_step", "beta1_power", "beta2_power"] {
        assert!(tensors.contains_key(k), "{k}");
    }
    assert_eq!(tensors.len(), 9 * 3 + 3);
    // import_meta_graph + restore, evaluate, train one step.
    let script = root().join("train/tests/py/check_meta.py");
    let out = ok(std::process::Command::new(&py).arg(script).arg(&prefix).arg(digits()));
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["restored_equal_to_checkpoint"], true);
    let trainable: Vec<&str> = j["trainable_variables"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let want: Vec<String> = ["den_1", "den_2", "den_3"]
        .iter()
        .flat_map(|l| ["kernel_posterior_loc", "kernel_posterior_untransformed_scale", "bias_posterior_loc"].map(|p| format!("{l}/{p}")))
        .collect();
    assert_eq!(trainable, want);
    let acc = j["test_accuracy"].as_f64().unwrap();
    assert!(acc >= 0.8, "TensorFlow's accuracy of the restored graph: {acc}");
    assert_eq!(j["step_before"], 110);
    assert_eq!(j["step_after_train_op"], 111);
}

#[test]
fn resume_continues_from_the_latest_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let first = train_json(&["--epochs", "2", "--out", d]);
    assert_eq!((first["first_step"].as_i64(), first["last_step"].as_i64()), (Some(0), Some(44)));
    // Nothing left to do: the restored variables are bit-identical to the trained ones.
    let same = train_json(&["--epochs", "2", "--out", d, "--resume"]);
    assert_eq!((same["first_step"].as_i64(), same["last_step"].as_i64()), (Some(44), Some(44)));
    assert_eq!(same["variable_digests"], first["variable_digests"]);
    let more = train_json(&["--epochs", "3", "--out", d, "--resume"]);
    assert_eq!((more["first_step"].as_i64(), more["last_step"].as_i64()), (Some(44), Some(66)));
    assert_eq!(more["epochs"][0]["epoch"], 3);
    assert!(more["checkpoint"].as_str().unwrap().ends_with("model.ckpt-66"));
    // Adam's state came back too: a resumed run continues the loss curve.
    let l = step_loss(&more);
    let prev_last = *step_loss(&first).last().unwrap();
    assert!((l[0] - prev_last).abs() / prev_last < 0.01, "{} vs {prev_last}", l[0]);
}

fn one_line_error(out: &std::process::Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = err.lines().filter(|l| l.starts_with("bnn-train:")).collect();
    assert_eq!(ours.len(), 1, "{err}");
    assert!(ours[0].contains(needle), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn bad_input_gives_one_line_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = fails(bnn_train().args(["train", "--data-dir"]).arg(&empty));
    one_line_error(&out, "digits_train_x.npy");

    // A truncated .npy.
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    for f in ["digits_train_x.npy", "digits_train_y.npy", "digits_test_x.npy", "digits_test_y.npy"] {
        std::fs::copy(digits().join(f), bad.join(f)).unwrap();
    }
    let x = std::fs::read(bad.join("digits_train_x.npy")).unwrap();
    std::fs::write(bad.join("digits_train_x.npy"), &x[..x.len() - 10]).unwrap();
    let out = fails(bnn_train().args(["train", "--data-dir"]).arg(&bad));
    one_line_error(&out, "digits_train_x.npy");

    // Labels that are floats.
    std::fs::copy(digits().join("digits_test_x.npy"), bad.join("digits_train_y.npy")).unwrap();
    std::fs::copy(digits().join("digits_train_x.npy"), bad.join("digits_train_x.npy")).unwrap();
    let out = fails(bnn_train().args(["train", "--data-dir"]).arg(&bad));
    one_line_error(&out, "digits_train_y.npy");

    let out = fails(bnn_train().args(["train", "--batch-size", "5000", "--data-dir"]).arg(digits()));
    one_line_error(&out, "batch size 5000");
    let out = fails(bnn_train().args(["train", "--resume", "--out"]).arg(&empty).arg("--data-dir").arg(digits()));
    one_line_error(&out, "no checkpoint to resume from");
    let out = fails(bnn_train().args(["train", "--dataset", "mnist", "--data-dir"]).arg(&empty));
    one_line_error(&out, "train-images-idx3-ubyte");
}

#[test]
fn compare_reports_the_bnn_cnn_throughput_ratio() {
    let mut c = bnn_train();
    c.args(["compare", "--arch", "conv", "--width", "0.25", "--max-steps", "8", "--no-eval", "--quiet", "--report", "-", "--data-dir"]).arg(digits());
    let j: serde_json::Value = serde_json::from_str(&ok(&mut c)).unwrap();
    let (b, d) = (j["bnn"]["images_per_sec"].as_f64().unwrap(), j["cnn"]["images_per_sec"].as_f64().unwrap());
    assert!(b > 0.0 && d > 0.0);
    assert!((j["bnn_cnn_throughput_ratio"].as_f64().unwrap() - b / d).abs() < 1e-9);
    assert_eq!(j["bnn"]["bayesian"], true);
    assert_eq!(j["cnn"]["bayesian"], false);
    // Width 0.25: Conv_1 5x5x1x8, Conv_2 5x5x8x16, den_out (4*4*16)x10. Kernels K = 5960,
    // biases B = 34; the BNN has mu and rho per kernel weight (2K + B), the twin K + B.
    assert_eq!(j["bnn"]["parameters"], 2 * 5960 + 34);
    assert_eq!(j["cnn"]["parameters"], 5960 + 34);
}

#[test]
fn posterior_init_mean_sets_the_initial_rho() {
    // --max-steps 0 saves the initial values; read them back with the project's reader.
    let dir = tempfile::tempdir().unwrap();
    let r = train_json(&["--max-steps", "0", "--posterior-init-mean", "-9", "--out", dir.path().to_str().unwrap()]);
    assert_eq!(r["last_step"], 0);
    let ck = formats::checkpoint::Checkpoint::open(dir.path().join("model.ckpt-0")).unwrap();
    let stats = |key: &str| {
        let t = ck.read(key).unwrap();
        let v = formats::tensor::f32_values(t.bytes().unwrap());
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / v.len() as f64;
        (mean, var.sqrt(), v.len())
    };
    // TFP's initializers: rho ~ N(-9, 0.1) here, loc ~ N(0, 0.1); 16,384 samples each.
    let (m, s, n) = stats("den_1/kernel_posterior_untransformed_scale");
    assert_eq!(n, 64 * 256);
    assert!((m + 9.0).abs() < 0.01 && (s - 0.1).abs() < 0.01, "rho mean {m} std {s}");
    let (m, s, _) = stats("den_1/kernel_posterior_loc");
    assert!(m.abs() < 0.01 && (s - 0.1).abs() < 0.01, "loc mean {m} std {s}");
    assert_eq!(ck.global_step(), Some(0));
}

#[test]
fn mnist_idx_and_cifar10_binary_layouts_train() {
    // MNIST layout from the bundled IDX copy of the digits test set (8x8 images).
    let dir = tempfile::tempdir().unwrap();
    let mnist = dir.path().join("mnist");
    std::fs::create_dir(&mnist).unwrap();
    for split in ["train", "t10k"] {
        std::fs::copy(digits().join("digits_test-images-idx3-ubyte"), mnist.join(format!("{split}-images-idx3-ubyte"))).unwrap();
        std::fs::copy(digits().join("digits_test-labels-idx1-ubyte"), mnist.join(format!("{split}-labels-idx1-ubyte"))).unwrap();
    }
    let mut c = bnn_train();
    c.args(["train", "--dataset", "mnist", "--arch", "conv", "--width", "0.25", "--epochs", "2", "--quiet", "--report", "-", "--data-dir"]).arg(&mnist);
    let r: serde_json::Value = serde_json::from_str(&ok(&mut c)).unwrap();
    // 360 images / 64 = 5 steps per epoch.
    assert_eq!(r["last_step"], 10);
    assert!(r["test_accuracy"].as_f64().unwrap() > 0.0);

    // CIFAR-10 layout: 5 training batches of 4 records and a test batch, label = record % 10.
    let cifar = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&cifar).unwrap();
    let batch = |seed: u8| -> Vec<u8> {
        (0..4u8).flat_map(|i| std::iter::once((seed + i) % 10).chain((0..3072u32).map(move |p| (p as u8).wrapping_mul(i + 1)))).collect()
    };
    for i in 1..=5u8 {
        std::fs::write(cifar.join(format!("data_batch_{i}.bin")), batch(i)).unwrap();
    }
    std::fs::write(cifar.join("test_batch.bin"), batch(0)).unwrap();
    let mut c = bnn_train();
    c.args(["train", "--dataset", "cifar10", "--arch", "resnet18", "--width", "0.0625", "--batch-size", "4", "--epochs", "1", "--quiet", "--report", "-", "--data-dir"])
        .arg(dir.path());
    let r: serde_json::Value = serde_json::from_str(&ok(&mut c)).unwrap();
    assert_eq!(r["last_step"], 5);
    // A truncated batch is named.
    std::fs::write(cifar.join("data_batch_3.bin"), &batch(3)[..100]).unwrap();
    let out = fails(bnn_train().args(["train", "--dataset", "cifar10", "--data-dir"]).arg(dir.path()));
    assert!(String::from_utf8_lossy(&out.stderr).contains("data_batch_3.bin"));
}
