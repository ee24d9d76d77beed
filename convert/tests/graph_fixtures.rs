//! TF1 checkpoints whose network is read by following the `.meta` graph (no `--arch`),
//! written by real TensorFlow + TFP (fixtures/generate_graphs.py): the mean network's logits
//! from the native engine, from the exported ONNX model in tract and in onnxruntime, and the
//! accuracy of `eval`, against what TensorFlow computed (`logits.npy`, `expected.json`).

mod common;

use std::path::Path;

use common::{assert_one_line_error, bnn_convert, fixtures, made_up_posterior, onnxruntime_output, onnxruntime_outputs, onnxruntime_python, tract_run, worst};
use model::arch::{Arch, Op, Padding, Posterior};
use formats::checkpoint::Checkpoint;
use formats::synthetic::SplitMix64;
use formats::dataset::{read_npy, ArrayData};
use model::meta_graph::{meta_path, read_arch};
use model::onnx::{build, Mode, Options, Sparse};
use model::engine::{Model, SparseKernels};

/// Every graph fixture: folder and the ops TF's graph holds.
fn cases() -> Vec<(&'static str, Vec<Op>)> {
    let conv = |l: &str, padding| Op::Conv2d { layer: l.into(), strides: [1, 1], padding };
    let dense = |l: &str| Op::Dense { layer: l.into() };
    vec![
        (
            "tf1_reshape_conv",
            vec![
                Op::Reshape { shape: vec![8, 8, 1] },
                conv("Conv_1", Padding::Same),
                Op::Relu,
                Op::MaxPool { size: [2, 2], strides: [2, 2], padding: Padding::Valid },
                Op::Flatten,
                dense("den_out"),
            ],
        ),
        (
            // Pad, Relu6, AvgPool (SAME: partial windows), Elu, Mean over H,W, Dropout
            // (skipped), Tanh.
            "tf1_ops_mix",
            vec![
                Op::Pad { pads: [1, 2, 0, 1] },
                conv("Conv_1", Padding::Valid),
                Op::Relu6,
                Op::AvgPool { size: [2, 2], strides: [2, 2], padding: Padding::Same },
                conv("Conv_2", Padding::Same),
                Op::Elu,
                Op::GlobalAvgPool,
                dense("den_1"),
                Op::Tanh,
                dense("den_out"),
            ],
        ),
        ("tf1_sigmoid_mlp", vec![dense("den_1"), Op::Sigmoid, dense("den_out")]),
        (
            // Keras BatchNormalization on an image (If + FusedBatchNormV3, default epsilon)
            // and on a vector (the unfused batchnorm/mul_1 ... add_1, epsilon 1e-2).
            "tf1_bn_conv",
            vec![
                conv("Conv_1", Padding::Same),
                Op::BatchNorm { layer: "bn_1".into(), epsilon: 1e-3, params: None },
                Op::Relu,
                Op::MaxPool { size: [2, 2], strides: [2, 2], padding: Padding::Valid },
                Op::Flatten,
                dense("den_1"),
                Op::BatchNorm { layer: "bn_2".into(), epsilon: 1e-2, params: None },
                Op::Relu,
                dense("den_out"),
            ],
        ),
        (
            // Keras functional ResNet-style: Add of an identity shortcut, then of a strided
            // body and a 1x1 strided projection; the graph's relu after each Add.
            "tf1_resnet",
            vec![
                conv("Conv_1", Padding::Same),
                Op::Relu,
                Op::Residual { body: vec![conv("Conv_2", Padding::Same), Op::Relu, conv("Conv_3", Padding::Same)], shortcut: vec![], relu: false },
                Op::Relu,
                Op::Residual {
                    body: vec![
                        Op::Conv2d { layer: "Conv_4".into(), strides: [2, 2], padding: Padding::Same },
                        Op::Relu,
                        conv("Conv_5", Padding::Same),
                    ],
                    shortcut: vec![Op::Conv2d { layer: "Conv_6".into(), strides: [2, 2], padding: Padding::Same }],
                    relu: false,
                },
                Op::Relu,
                Op::GlobalAvgPool,
                dense("den_out"),
            ],
        ),
    ]
}

fn load(folder: &str) -> (Arch, Vec<Posterior>) {
    let ckpt = Checkpoint::open(fixtures().join(folder)).expect("ckpt");
    read_arch(&meta_path(ckpt.path())).expect("arch").bind(&ckpt).expect("bind")
}

fn expected(folder: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(folder).join("expected.json")).expect("read")).expect("json")
}

fn f32s(p: &Path) -> Vec<f32> {
    match read_npy(p).expect("npy").data {
        ArrayData::F32(v) => v,
        other => panic!("{}: {}", p.display(), other.dtype_name()),
    }
}

fn tf_logits(folder: &str) -> Vec<f32> {
    f32s(&fixtures().join(folder).join("logits.npy"))
}

fn test_x() -> Vec<f32> {
    common::test_x(360)
}

#[test]
fn architecture_is_read_from_the_graph() {
    for (folder, ops) in cases() {
        let ckpt = Checkpoint::open(fixtures().join(folder)).expect("ckpt");
        let arch = read_arch(&meta_path(ckpt.path())).expect("arch");
        assert_eq!(arch.input_name, "Placeholder", "{folder}");
        let shape: Vec<usize> = expected(folder)["input_shape"].as_array().expect("shape")[1..].iter().map(|d| d.as_u64().unwrap_or(0) as usize).collect();
        assert_eq!(arch.input_shape, shape, "{folder}");
        assert_eq!(arch.ops, ops, "{folder}");
    }
}

#[test]
fn native_engine_and_onnx_in_tract_give_tensorflows_logits() {
    let x = test_x();
    for (folder, _) in cases() {
        let (arch, posts) = load(folder);
        let tf = tf_logits(folder);
        let native = Model::new(&arch, &posts, SparseKernels::Never).expect("model").logits_mean(&x).expect("logits");
        assert!(worst(&native, &tf) < 1e-4, "{folder}: native vs TF {}", worst(&native, &tf));
        let onnx = build(&arch, &posts, Options { mode: Mode::Mean, sparse: Sparse::Never }, Path::new(folder)).expect("build");
        let shape: Vec<usize> = std::iter::once(360).chain(arch.input_shape.iter().copied()).collect();
        let logits = tract_run(&onnx, &shape, &x).swap_remove(0);
        assert!(worst(&logits, &tf) < 1e-4, "{folder}: tract vs TF {}", worst(&logits, &tf));
        // The Monte Carlo graph with sigma = 0 is the mean network S times over.
        let mut zero = posts.clone();
        zero.iter_mut().for_each(|p| p.kernel_sigma.iter_mut().for_each(|s| s.iter_mut().for_each(|v| *v = 0.0)));
        let mc = build(&arch, &zero, Options { mode: Mode::MonteCarlo { samples: 3 }, sparse: Sparse::Never }, Path::new(folder)).expect("build");
        let mean = tract_run(&mc, &shape, &x).swap_remove(0);
        let probs: Vec<f32> = Model::new(&arch, &posts, SparseKernels::Never).expect("model").predict_mean(&x).expect("p").iter().map(|&p| p as f32).collect();
        assert!(worst(&mean, &probs) < 1e-5, "{folder}: MC graph without noise vs mean network {}", worst(&mean, &probs));
    }
}

#[test]
fn export_onnx_without_arch_gives_tensorflows_logits_in_onnxruntime() {
    let Some(py) = onnxruntime_python() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    for (folder, _) in cases() {
        let model = dir.path().join(format!("{folder}.onnx"));
        let r = bnn_convert(&[&"export-onnx", &fixtures().join(folder), &"-o", &model]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let v = onnxruntime_outputs(&py, &fixtures().join("data/digits_test_x.npy"), std::slice::from_ref(&model));
        let w = worst(&onnxruntime_output(&v, &model, "logits"), &tf_logits(folder));
        assert!(w < 1e-4, "{folder}: onnxruntime vs TF {w}");
    }
}

#[test]
fn eval_and_sweep_without_arch_give_tensorflows_accuracy() {
    let data = fixtures().join("data/digits_test_x.npy");
    for (folder, _) in cases() {
        let out = bnn_convert(&[&"eval", &fixtures().join(folder), &"--data", &data, &"--samples", &"0", &"--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let tf = &expected(folder)["mean_model"];
        let correct = (v["accuracy"].as_f64().unwrap_or(-1.0) * 360.0).round() as i64;
        assert_eq!(correct, tf["correct"].as_i64().unwrap_or(-2), "{folder}");
        let d = v["mean_log_likelihood"].as_f64().unwrap_or(f64::NAN) - tf["mean_log_likelihood"].as_f64().unwrap_or(0.0);
        assert!(d.abs() < 1e-4, "{folder}: log-likelihood differs by {d}");
        // The MC path runs too (Flipout samples through the same ops).
        let out = bnn_convert(&[&"eval", &fixtures().join(folder), &"--data", &data, &"--samples", &"4", &"--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let dir = tempfile::tempdir().expect("tmp");
        let json = dir.path().join("s.json");
        let out = bnn_convert(&[&"sweep", &fixtures().join(folder), &"--data", &data, &"--thresholds", &"-1,1", &"--samples", &"2", &"--repeats", &"1", &"--json", &json]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("read")).expect("json");
        let row0 = (s["rows"][0]["mean_accuracy"].as_f64().unwrap_or(-1.0) * 360.0).round() as i64;
        assert_eq!(row0, tf["correct"].as_i64().unwrap_or(-2), "{folder}: sweep's unpruned row");
    }
}

#[test]
fn unsupported_op_on_the_path_is_one_line_naming_op_node_checkpoint_and_arch() {
    // The reshape fixture's graph with its Reshape's shape computed by an op we do not
    // evaluate, and a Square between the input and the first conv.
    use formats::proto::graph::MetaGraphDef;
    use protobuf::Message;
    let src = fixtures().join("tf1_reshape_conv");
    let ckpt = Checkpoint::open(&src).expect("ckpt");
    let meta = std::fs::read(meta_path(ckpt.path())).expect("meta");
    let dir = common::copy_fixture("tf1_reshape_conv");
    let mut g = MetaGraphDef::parse_from_bytes(&meta).expect("parse");
    for n in g.graph_def.mut_or_insert_default().node.iter_mut() {
        if n.name == "reshape/Reshape" {
            n.op = "Square".into();
        }
    }
    let prefix = dir.path().join(ckpt.path().file_name().expect("name"));
    std::fs::write(meta_path(&prefix), g.write_to_bytes().expect("encode")).expect("write");
    let out = bnn_convert(&[&"eval", &dir.path(), &"--data", &fixtures().join("data/digits_test_x.npy")]);
    assert_one_line_error(&out, &["Square", "'reshape/Reshape'", ".meta", "--arch"]);
}

#[test]
fn prune_and_snr_leave_batch_norm_variables_alone() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = fixtures().join("tf1_bn_conv");
    let out = dir.path().join("pruned/model.ckpt");
    let r = bnn_convert(&[&"prune", &src, &"-o", &out, &"--threshold", &"1"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let before = Checkpoint::open(&src).expect("ckpt");
    let after = Checkpoint::open(&out).expect("pruned");
    for bn in ["bn_1", "bn_2"] {
        for v in ["gamma", "beta", "moving_mean", "moving_variance"] {
            let key = format!("{bn}/{v}");
            let (a, b) = (before.read(&key).expect("before"), after.read(&key).expect("after"));
            assert_eq!(a.bytes(), b.bytes(), "{key} must be copied unchanged");
        }
    }
    // The pruned checkpoint still evaluates with the architecture from its .meta, BN included.
    let r = bnn_convert(&[&"eval", &out, &"--data", &fixtures().join("data/digits_test_x.npy"), &"--samples", &"0", &"--json"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // snr counts only the Bayesian kernels: Conv_1 (8*9), den_1 (128*32), den_out (32*10).
    let r = bnn_convert(&[&"snr", &src, &"--json"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).expect("json");
    let layers: Vec<&str> = v["layers"].as_array().expect("layers").iter().filter_map(|l| l["target"]["layer"].as_str()).collect();
    assert_eq!(layers, ["Conv_1", "den_1", "den_out"], "BN variables are not Bayesian layers");
}

#[test]
fn reshape_after_a_sampled_dense_layer_and_image_to_image_agree_in_tract() {
    // dense -> reshape to an image (the MC graph's [S, N, k] rows become grouped images) ->
    // conv -> reshape image to image -> avg pool -> flatten -> dense.
    let json = r#"{"input_name": "x", "input_shape": [12], "ops": [
        {"op": "dense", "layer": "d1"}, {"op": "tanh"}, {"op": "reshape", "shape": [4, 4, 2]},
        {"op": "conv2d", "layer": "c1", "strides": [1, 1], "padding": "SAME"}, {"op": "elu"},
        {"op": "reshape", "shape": [2, 8, 3]}, {"op": "avg_pool", "size": [2, 3], "strides": [2, 2], "padding": "SAME"},
        {"op": "flatten"}, {"op": "dense", "layer": "d2"}]}"#;
    let arch: Arch = serde_json::from_str(json).expect("arch");
    let mut rng = SplitMix64(7);
    let mut posts = vec![made_up_posterior("d1", vec![12, 32], &mut rng), made_up_posterior("c1", vec![3, 3, 2, 3], &mut rng), made_up_posterior("d2", vec![12, 5], &mut rng)];
    let n = 6;
    let x: Vec<f32> = (0..n * 12).map(|i| ((i * 29) % 13) as f32 / 13.0 - 0.4).collect();
    let run = |model: &model::onnx::ModelProto| -> Vec<f32> { tract_run(model, &[n, 12], &x).swap_remove(1) };
    let native: Vec<f32> = Model::new(&arch, &posts, SparseKernels::Never).expect("model").predict_mean(&x).expect("p").iter().map(|&p| p as f32).collect();
    let mean = build(&arch, &posts, Options { mode: Mode::Mean, sparse: Sparse::Never }, Path::new("t")).expect("build");
    assert!(worst(&run(&mean), &native) < 1e-5, "mean graph");
    posts.iter_mut().for_each(|p| p.kernel_sigma.iter_mut().for_each(|s| s.iter_mut().for_each(|v| *v = 0.0)));
    let mc = build(&arch, &posts, Options { mode: Mode::MonteCarlo { samples: 3 }, sparse: Sparse::Never }, Path::new("t")).expect("build");
    let mc_mean = tract_run(&mc, &[n, 12], &x).swap_remove(0);
    assert!(worst(&mc_mean, &native) < 1e-5, "MC graph without noise");
}
