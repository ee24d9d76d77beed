//! `export-onnx --fold-bn` on the batch normalization fixtures (fixtures/tf1_bn_conv: BN after
//! a conv and after a dense layer; tf2_keras_resnet: a Keras SavedModel with BN and a
//! residual Add; tf1_resnet: the ResNet-style graph, no BN, must come out unchanged): the
//! folded model has no batch normalization left and gives the unfolded model's and
//! TensorFlow's own logits in tract and onnxruntime, dense and sparse, and its Monte Carlo
//! graph runs.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use formats::checkpoint::Checkpoint;
use formats::dataset::{read_npy, ArrayData};
use model::arch::{Arch, Posterior};
use model::engine::{Model, SparseKernels};
use model::onnx::{build, densify, read, Mode, ModelProto, Options, Sparse};

/// Fixture, the number of test examples TF's captured logits cover, batch normalizations
/// directly after a conv or dense layer.
const CASES: [(&str, usize, usize); 3] = [("tf1_bn_conv", 360, 2), ("tf1_resnet", 360, 0), ("tf2_keras_resnet", 16, 2)];

/// TensorFlow's mean-network logits: `logits.npy` (TF1 fixtures) or analysis.json's
/// `mean_logits` (SavedModels).
fn tf_logits(folder: &str) -> Vec<f32> {
    let dir = fixtures().join(folder);
    if dir.join("logits.npy").is_file() {
        return match read_npy(&dir.join("logits.npy")).expect("npy").data {
            ArrayData::F32(v) => v,
            other => panic!("{folder}: logits.npy is {}", other.dtype_name()),
        };
    }
    let a: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("analysis.json")).expect("analysis")).expect("json");
    a["mean_logits"].as_array().expect("rows").iter().flat_map(|r| r.as_array().expect("row").iter().map(|v| v.as_f64().expect("f64") as f32)).collect()
}

/// The architecture (from the `.meta` or the Keras metadata) bound to the fixture.
fn load(folder: &str) -> (Arch, Vec<Posterior>) {
    let dir = fixtures().join(folder);
    let ckpt = Checkpoint::open(&dir).expect("ckpt");
    let arch = if dir.join("saved_model.pb").is_file() {
        model::keras_metadata::read_arch(&dir).expect("keras arch")
    } else {
        model::meta_graph::read_arch(&model::meta_graph::meta_path(ckpt.path())).expect("meta arch")
    };
    arch.bind(&ckpt).expect("bind")
}

/// Runs `export-onnx` on the fixture; its stdout.
fn export(folder: &str, out: &Path, extra: &[&str]) -> String {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"export-onnx"];
    let src = fixtures().join(folder);
    args.extend([&src as &dyn AsRef<std::ffi::OsStr>, &"-o", &out]);
    args.extend(extra.iter().map(|e| e as &dyn AsRef<std::ffi::OsStr>));
    let r = bnn_convert(&args);
    assert!(r.status.success(), "{folder} {extra:?}: {}", String::from_utf8_lossy(&r.stderr));
    String::from_utf8_lossy(&r.stdout).into_owned()
}

/// BatchNormalization nodes, and initializers holding batch normalization statistics (the
/// image form's `<layer>/moving_mean`, the vector form's `<layer>/shift`).
fn batch_norm_left(m: &ModelProto) -> (usize, usize) {
    let g = m.graph.as_ref().expect("graph");
    let nodes = g.node.iter().filter(|n| n.op_type == "BatchNormalization").count();
    let inits = g.initializer.iter().filter(|t| t.name.ends_with("/moving_mean") || t.name.ends_with("/shift")).count();
    (nodes, inits)
}

#[test]
fn folded_exports_have_no_batch_norm_and_give_tensorflows_logits_in_tract_and_onnxruntime() {
    let dir = tempfile::tempdir().expect("tmp");
    // (fixture, examples, file) of every mean-mode model, for onnxruntime at the end.
    let mut mean_files: Vec<(&str, usize, PathBuf)> = Vec::new();
    let mut mc_files = Vec::new();
    for (folder, n, bns) in CASES {
        let tf = tf_logits(folder);
        assert_eq!(tf.len(), n * 10, "{folder}");
        let x = test_x(n);
        let shape = [n, 8, 8, 1];
        let file = |kind: &str| dir.path().join(format!("{folder}_{kind}.onnx"));
        let (plain, folded, sparse, mc) = (file("plain"), file("folded"), file("folded_sparse"), file("folded_mc"));
        export(folder, &plain, &["--sparse", "never"]);
        let said = export(folder, &folded, &["--fold-bn", "--sparse", "never"]);
        assert!(said.contains(&format!("{bns} batch normalizations folded")), "{folder}: {said}");
        export(folder, &sparse, &["--fold-bn", "--sparse", "always"]);
        export(folder, &mc, &["--fold-bn", "--mode", "mc", "--samples", "4"]);

        let plain_m = read(&plain).expect("plain");
        let folded_m = read(&folded).expect("folded");
        let (nodes, inits) = batch_norm_left(&plain_m);
        assert_eq!(nodes + inits > 0, bns > 0, "{folder}: the unfolded export's batch normalizations ({nodes} nodes, {inits} vector forms)");
        assert_eq!(batch_norm_left(&folded_m), (0, 0), "{folder}: batch normalization left after folding");
        assert_eq!(batch_norm_left(&read(&mc).expect("mc")), (0, 0), "{folder}: MC graph");

        let plain_l = tract_run(&plain_m, &shape, &x).swap_remove(0);
        let folded_l = tract_run(&folded_m, &shape, &x).swap_remove(0);
        let mut sparse_m = read(&sparse).expect("sparse");
        assert!(!sparse_m.graph.as_ref().expect("graph").sparse_initializer.is_empty(), "{folder}: --sparse always");
        assert_eq!(batch_norm_left(&sparse_m), (0, 0), "{folder}: sparse export");
        densify(&mut sparse_m);
        let sparse_l = tract_run(&sparse_m, &shape, &x).swap_remove(0);
        assert!(worst(&plain_l, &tf) < 1e-4, "{folder}: tract unfolded vs TF {}", worst(&plain_l, &tf));
        assert!(worst(&folded_l, &tf) < 1e-4, "{folder}: tract folded vs TF {}", worst(&folded_l, &tf));
        assert!(worst(&folded_l, &plain_l) < 1e-4, "{folder}: tract folded vs unfolded {}", worst(&folded_l, &plain_l));
        assert!(worst(&sparse_l, &tf) < 1e-4, "{folder}: tract folded sparse vs TF {}", worst(&sparse_l, &tf));
        let mc_p = tract_run(&read(&mc).expect("mc"), &shape, &x).swap_remove(0);
        assert!(mc_p.chunks(10).all(|r| (r.iter().sum::<f32>() - 1.0).abs() < 1e-4), "{folder}: MC probabilities");
        mean_files.extend([(folder, n, plain), (folder, n, folded), (folder, n, sparse)]);
        mc_files.push(mc);
    }
    let Some(py) = onnxruntime_python() else { return };
    let files: Vec<PathBuf> = mean_files.iter().map(|(_, _, f)| f.clone()).chain(mc_files.iter().cloned()).collect();
    let v = onnxruntime_outputs(&py, &fixtures().join("data/digits_test_x.npy"), &files);
    for (folder, n, file) in &mean_files {
        // onnxruntime ran all 360 examples; TF's logits cover the first n.
        let logits = onnxruntime_output(&v, file, "logits");
        let w = worst(&logits[..n * 10], &tf_logits(folder));
        assert!(w < 1e-4, "{}: onnxruntime vs TF {w}", file.display());
    }
    for (i, folder) in CASES.iter().map(|c| c.0).enumerate() {
        let (plain, folded) = (&mean_files[3 * i].2, &mean_files[3 * i + 1].2);
        let w = worst(&onnxruntime_output(&v, folded, "logits"), &onnxruntime_output(&v, plain, "logits"));
        assert!(w < 1e-4, "{folder}: onnxruntime folded vs unfolded {w}");
    }
    for file in &mc_files {
        let p = onnxruntime_output(&v, file, "probabilities_mean");
        assert!(p.chunks(10).all(|r| (r.iter().sum::<f32>() - 1.0).abs() < 1e-4), "{}: MC probabilities", file.display());
    }
}

#[test]
fn folded_monte_carlo_graph_without_noise_is_the_unfolded_mean_network() {
    // sigma = 0 makes every sample the mean network: the folded MC graph (grouped convs,
    // tiled folded biases) must give the unfolded network's probabilities.
    for (folder, _, _) in CASES {
        let (arch, mut posts) = load(folder);
        posts.iter_mut().for_each(|p| p.kernel_sigma.iter_mut().chain(p.bias_sigma.iter_mut()).for_each(|s| s.iter_mut().for_each(|v| *v = 0.0)));
        let x = test_x(40);
        let native = Model::new(&arch, &posts, SparseKernels::Never).expect("model").predict_mean(&x).expect("predict");
        let (farch, fposts, _) = model::fold::fold_batch_norm(&arch, &posts);
        let mc = build(&farch, &fposts, Options { mode: Mode::MonteCarlo { samples: 3 }, sparse: Sparse::Never }, Path::new(folder)).expect("build");
        let got = tract_run(&mc, &[40, 8, 8, 1], &x).swap_remove(0);
        let native: Vec<f32> = native.iter().map(|&p| p as f32).collect();
        assert!(worst(&got, &native) < 1e-5, "{folder}: folded MC without noise vs unfolded mean {}", worst(&got, &native));
    }
}

#[test]
fn a_batch_norm_not_right_after_a_weight_layer_stays_a_batch_normalization_node() {
    // BN at the input and after a relu stay; the one after the conv and after the dense fold.
    let json = r#"{"input_name": "x", "input_shape": [4, 4, 2], "ops": [
        {"op": "batch_norm", "layer": "in", "epsilon": 0.001},
        {"op": "conv2d", "layer": "c", "strides": [1, 1], "padding": "SAME"},
        {"op": "batch_norm", "layer": "after_conv", "epsilon": 0.001}, {"op": "relu"},
        {"op": "batch_norm", "layer": "after_relu", "epsilon": 0.01},
        {"op": "flatten"}, {"op": "dense", "layer": "d"},
        {"op": "batch_norm", "layer": "after_dense", "epsilon": 0.001}]}"#;
    let mut arch: Arch = serde_json::from_str(json).expect("arch");
    let wave = |n: usize, k: f32| -> Vec<f32> { (0..n).map(|i| ((i as f32 * 0.37 + k).sin()) * 0.5).collect() };
    let mut k = 0.0;
    for op in arch.ops.iter_mut() {
        if let model::arch::Op::BatchNorm { params, .. } = op {
            k += 1.0;
            // The input has 2 channels, the conv and dense 3 outputs; odd BNs get a negative gamma.
            let c = if k == 1.0 { 2 } else { 3 };
            *params = Some(model::arch::BatchNormParams {
                gamma: wave(c, k).iter().map(|v| v + 1.0 - 2.0 * (k % 2.0)).collect(),
                beta: wave(c, k + 0.5),
                mean: wave(c, k + 1.0),
                variance: wave(c, k + 2.0).iter().map(|v| v + 0.8).collect(),
            });
        }
    }
    let post = |name: &str, shape: Vec<usize>, k: f32| {
        let len: usize = shape.iter().product();
        let units = *shape.last().expect("shape");
        Posterior { name: name.into(), kernel_mu: wave(len, k), kernel_sigma: Some(wave(len, k + 3.0).iter().map(|v| v.abs()).collect()), bias_mu: wave(units, k + 4.0), bias_sigma: None, kernel_shape: shape }
    };
    let posts = vec![post("c", vec![3, 3, 2, 3], 0.1), post("d", vec![48, 3], 0.2)];
    let (farch, fposts, folded) = model::fold::fold_batch_norm(&arch, &posts);
    assert_eq!(folded, 2);
    let opts = Options { mode: Mode::Mean, sparse: Sparse::Never };
    let plain = build(&arch, &posts, opts, Path::new("t")).expect("build");
    let fmodel = build(&farch, &fposts, opts, Path::new("t")).expect("build");
    // Image BNs are BatchNormalization nodes: two of three stay (input, after the relu).
    assert_eq!(batch_norm_left(&plain).0, 3);
    assert_eq!(batch_norm_left(&fmodel), (2, 2), "the input and after-relu BNs stay, their statistics with them");
    let x: Vec<f32> = (0..5 * 32).map(|i| ((i * 13) % 11) as f32 / 11.0 - 0.5).collect();
    let a = tract_run(&plain, &[5, 4, 4, 2], &x).swap_remove(0);
    let b = tract_run(&fmodel, &[5, 4, 4, 2], &x).swap_remove(0);
    assert!(worst(&a, &b) < 1e-5, "folded vs unfolded {}", worst(&a, &b));
    let native = Model::new(&arch, &posts, SparseKernels::Never).expect("model").logits_mean(&x).expect("logits");
    assert!(worst(&a, &native) < 1e-5, "tract vs native {}", worst(&a, &native));
}
