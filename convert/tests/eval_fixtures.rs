//! `eval` against what TensorFlow computed when the fixtures were generated.

mod common;

use common::{assert_one_line_error, bnn_convert, fixtures};
use serde_json::Value;

fn json_of(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

fn analysis(folder: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(folder).join("analysis.json")).expect("analysis")).expect("json")
}

fn eval(folder: &str, data: &str, samples: &str) -> Value {
    let ckpt = fixtures().join(folder);
    let data = fixtures().join("data").join(data);
    json_of(&bnn_convert(&[&"eval", &ckpt, &"--data", &data, &"--samples", &samples, &"--json"]))
}

#[test]
fn mean_model_matches_tensorflow_on_both_fixtures() {
    for folder in ["tf1_bnn_fc", "tf1_bnn_conv"] {
        let tf = &analysis(folder)["mean_model"]["tf"];
        let ours = eval(folder, "digits_test_x.npy", "0");
        assert_eq!(ours["n"], 360);
        // Same number of correct examples (compared as counts: TF averaged booleans in f32/f64).
        let count = |v: &Value| (v.as_f64().unwrap_or(-1.0) * 360.0).round() as i64;
        assert_eq!(count(&ours["accuracy"]), count(&tf["accuracy"]), "{folder}");
        let d = ours["mean_log_likelihood"].as_f64().unwrap_or(f64::NAN) - tf["mean_log_likelihood"].as_f64().unwrap_or(0.0);
        assert!(d.abs() < 1e-5, "{folder}: log-likelihood differs by {d}");
    }
}

#[test]
fn mc_100_agrees_with_tensorflow_within_monte_carlo_error() {
    let tf = &analysis("tf1_bnn_fc")["mc_100"];
    let ours = eval("tf1_bnn_fc", "digits_test_x.npy", "100");
    let acc = ours["accuracy"].as_f64().unwrap_or(0.0);
    let ll = ours["mean_log_likelihood"].as_f64().unwrap_or(0.0);
    // Different random draws: accuracy within 2 test examples' worth (360 examples), LL within 0.03.
    assert!((acc - tf["accuracy"].as_f64().unwrap_or(1.0)).abs() <= 2.0 / 360.0 + 1e-9, "{acc}");
    assert!((ll - tf["mean_log_likelihood"].as_f64().unwrap_or(0.0)).abs() < 0.03, "{ll}");
    // MC averaging spreads probability mass: higher entropy than the mean network.
    let mean = eval("tf1_bnn_fc", "digits_test_x.npy", "0");
    assert!(ours["mean_predictive_entropy"].as_f64() > mean["mean_predictive_entropy"].as_f64());
}

#[test]
fn idx_input_gives_the_same_network_output_up_to_pixel_rounding() {
    // The IDX copy holds round(x * 255) / 255 instead of k / 16: a few predictions may move.
    let npy = eval("tf1_bnn_fc", "digits_test_x.npy", "0");
    let idx = eval("tf1_bnn_fc", "digits_test-images-idx3-ubyte", "0");
    assert_eq!(idx["n"], 360);
    let d = (npy["accuracy"].as_f64().unwrap_or(0.0) - idx["accuracy"].as_f64().unwrap_or(1.0)).abs();
    assert!(d <= 3.0 / 360.0, "{d}");
}

#[test]
fn missing_meta_needs_arch_and_bad_data_is_one_line() {
    let data = fixtures().join("data/digits_test_x.npy");
    let out = bnn_convert(&[&"eval", &fixtures().join("tf2_keras_adam"), &"--data", &data]);
    assert_one_line_error(&out, &["ckpt-1.meta", "--arch"]);
    let out = bnn_convert(&[&"eval", &fixtures().join("tf1_bnn_fc"), &"--data", &fixtures().join("tf1_bnn_fc/checkpoint")]);
    assert_one_line_error(&out, &["checkpoint"]);
    // Preset with the wrong input size: 784 inputs vs the fixture's 64.
    let out = bnn_convert(&[&"eval", &fixtures().join("tf1_bnn_fc"), &"--arch", &"bnn-fc", &"--data", &data]);
    assert_one_line_error(&out, &["model.ckpt-3000", "den_1"]);
}

#[test]
fn tf2_checkpoint_with_arch_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let arch = dir.path().join("arch.json");
    std::fs::write(&arch, r#"{"input_shape": [64], "ops": [{"op": "dense", "layer": ""}, {"op": "relu"}, {"op": "dense", "layer": ""}]}"#)
        .expect("write");
    let data = fixtures().join("data/digits_test_x.npy");
    let out = json_of(&bnn_convert(&[&"eval", &fixtures().join("tf2_keras_adam"), &"--arch", &arch, &"--data", &data, &"--samples", &"0", &"--json"]));
    // 20 Adam steps: far better than chance (0.1), far from trained.
    let acc = out["accuracy"].as_f64().unwrap_or(0.0);
    assert!(acc > 0.3, "{acc}");
}

#[test]
fn safetensors_input_with_arch_gives_tensorflow_accuracy() {
    let dir = tempfile::tempdir().expect("tmp");
    let st = dir.path().join("bnn.safetensors");
    let r = bnn_convert(&[&"ckpt-to-safetensors", &fixtures().join("tf1_bnn_fc"), &"-o", &st]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let data = fixtures().join("data/digits_test_x.npy");
    // No .meta next to a safetensors file.
    assert_one_line_error(&bnn_convert(&[&"eval", &st, &"--data", &data]), &["--arch"]);
    let arch = dir.path().join("arch.json");
    std::fs::write(
        &arch,
        r#"{"input_shape": [64], "ops": [{"op": "dense", "layer": "den_1"}, {"op": "relu"},
            {"op": "dense", "layer": "den_2"}, {"op": "relu"}, {"op": "dense", "layer": "den_3"}]}"#,
    )
    .expect("write");
    let out = json_of(&bnn_convert(&[&"eval", &st, &"--arch", &arch, &"--data", &data, &"--samples", &"0", &"--json"]));
    let count = |v: &Value| (v.as_f64().unwrap_or(-1.0) * 360.0).round() as i64;
    assert_eq!(count(&out["accuracy"]), count(&analysis("tf1_bnn_fc")["mean_model"]["tf"]["accuracy"]));
    // A layer name the checkpoint lacks is one line naming it.
    std::fs::write(&arch, r#"{"input_shape": [64], "ops": [{"op": "dense", "layer": "nope"}]}"#).expect("write");
    assert_one_line_error(&bnn_convert(&[&"eval", &st, &"--arch", &arch, &"--data", &data]), &["nope", "bnn.safetensors"]);
}

#[test]
fn cifar10_binary_batch_channels_and_labels_by_hand() {
    use safetensors::tensor::{serialize_to_file, Dtype, TensorView};
    let dir = tempfile::tempdir().expect("tmp");
    // conv 1x1 picking the GREEN channel -> max pool over the whole 32x32 image -> dense with
    // logit_c = c * max(G): an image with any green predicts 9, one without predicts 0.
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (ck, cb, dk, db) = (f32s(&[0.0, 1.0, 0.0]), f32s(&[0.0]), f32s(&(0..10).map(|c| c as f32).collect::<Vec<_>>()), f32s(&[0.0; 10]));
    let tensors = vec![
        ("c.kernel".to_string(), TensorView::new(Dtype::F32, vec![1, 1, 3, 1], &ck).expect("view")),
        ("c.bias".to_string(), TensorView::new(Dtype::F32, vec![1], &cb).expect("view")),
        ("d.kernel".to_string(), TensorView::new(Dtype::F32, vec![1, 10], &dk).expect("view")),
        ("d.bias".to_string(), TensorView::new(Dtype::F32, vec![10], &db).expect("view")),
    ];
    let st = dir.path().join("tiny.safetensors");
    serialize_to_file(tensors, None, &st).expect("safetensors");
    let arch = dir.path().join("arch.json");
    std::fs::write(
        &arch,
        r#"{"input_shape": [32, 32, 3], "ops": [{"op": "conv2d", "layer": "c", "strides": [1, 1], "padding": "VALID"},
            {"op": "max_pool", "size": [32, 32], "strides": [32, 32], "padding": "VALID"}, {"op": "flatten"},
            {"op": "dense", "layer": "d"}]}"#,
    )
    .expect("arch");
    // Records: label byte, then 1024 R, 1024 G, 1024 B bytes.
    let record = |label: u8, plane: usize| {
        let mut r = vec![0u8; 3073];
        r[0] = label;
        r[1 + plane * 1024 + 517] = 255;
        r
    };
    let bin = dir.path().join("test_batch.bin");
    std::fs::write(&bin, [record(9, 1), record(0, 0), record(5, 2)].concat()).expect("bin");
    let out = json_of(&bnn_convert(&[&"eval", &st, &"--arch", &arch, &"--data", &bin, &"--samples", &"0", &"--json"]));
    assert_eq!(out["n"], 3);
    assert_eq!(out["accuracy"].as_f64(), Some(2.0 / 3.0));
    // log p(9 | logits 0..9) for the green image, log(1/10) for the two uniform ones.
    let lse = (0..10).map(|c| (c as f64).exp()).sum::<f64>().ln();
    let ll = ((9.0 - lse) + 2.0 * 0.1f64.ln()) / 3.0;
    assert!((out["mean_log_likelihood"].as_f64().unwrap_or(0.0) - ll).abs() < 1e-5, "{out}");
    // A truncated batch is one line naming the file.
    std::fs::write(&bin, vec![0u8; 3000]).expect("bin");
    assert_one_line_error(&bnn_convert(&[&"eval", &st, &"--arch", &arch, &"--data", &bin]), &["test_batch.bin"]);
}

/// `eval --json` on tf1_bnn_fc's mean network with extra arguments.
fn eval_with(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Value {
    let ckpt = fixtures().join("tf1_bnn_fc");
    let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"eval", &ckpt, &"--samples", &"0", &"--json"];
    all.extend_from_slice(args);
    json_of(&bnn_convert(&all))
}

#[test]
fn int32_and_other_label_dtypes_npz_and_fortran_inputs_give_the_int64_result() {
    // The same digits test set saved by numpy in other dtypes, orders and containers
    // (fixtures/generate_npy.py): every result must equal the float32 / int64 baseline.
    let x = fixtures().join("data/digits_test_x.npy");
    let npy = fixtures().join("data/npy");
    let base = eval_with(&[&"--data", &x]);
    let int32 = npy.join("digits_test_y_int32.npy");
    let uint16 = npy.join("digits_test_y_uint16.npy");
    let npz = npy.join("digits_test.npz");
    let keras = npy.join("digits_keras.npz");
    let runs = [
        ("int32 labels", eval_with(&[&"--data", &x, &"--labels", &int32])),
        ("uint16 labels", eval_with(&[&"--data", &x, &"--labels", &uint16])),
        // x float16 in Fortran order, y int32, as `x` / `y`.
        ("npz x/y", eval_with(&[&"--data", &npz])),
        // x float64, y int8 under Keras-style names.
        ("npz named keys", eval_with(&[&"--data", &keras, &"--x-key", &"x_test", &"--y-key", &"y_test"])),
    ];
    for (what, r) in runs {
        assert_eq!(r["n"], 360, "{what}");
        assert_eq!(r["accuracy"], base["accuracy"], "{what}");
        assert_eq!(r["mean_log_likelihood"], base["mean_log_likelihood"], "{what}");
    }
}

#[test]
fn npz_without_the_keys_and_float_labels_are_one_line_errors() {
    let npy = fixtures().join("data/npy");
    let ckpt = fixtures().join("tf1_bnn_fc");
    let keras = npy.join("digits_keras.npz");
    let out = bnn_convert(&[&"eval", &ckpt, &"--data", &keras]);
    assert_one_line_error(&out, &["digits_keras.npz", "no array 'x'", "x_test", "--x-key"]);
    let floats = npy.join("float32.npy");
    let out = bnn_convert(&[&"eval", &ckpt, &"--data", &fixtures().join("data/digits_test_x.npy"), &"--labels", &floats]);
    assert_one_line_error(&out, &["float32.npy", "labels must be integers, not float32"]);
}

#[test]
fn repeated_timing_predicts_what_one_prediction_does() {
    // `--repeats 3`: a warm-up and three timed predictions with the same seed, whose scores
    // are those of the one prediction `eval` makes without it.
    let ckpt = fixtures().join("tf1_bnn_fc");
    let data = fixtures().join("data/digits_test_x.npy");
    let once = eval("tf1_bnn_fc", "digits_test_x.npy", "20");
    let repeated = json_of(&bnn_convert(&[&"eval", &ckpt, &"--data", &data, &"--samples", &"20", &"--repeats", &"3", &"--json"]));
    assert_eq!(repeated["repeats"], 3);
    assert_eq!(once["repeats"], 1);
    for key in ["accuracy", "mean_log_likelihood", "mean_predictive_entropy"] {
        assert_eq!(repeated[key], once[key], "{key}");
    }
    assert!(repeated["seconds"].as_f64().is_some_and(|s| s > 0.0));
    let out = bnn_convert(&[&"eval", &ckpt, &"--data", &data, &"--repeats", &"0"]);
    assert_one_line_error(&out, &["--repeats"]);
}
