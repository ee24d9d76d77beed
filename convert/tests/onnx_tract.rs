//! Every exported ONNX model loads in tract-onnx and agrees with the native engine.

mod common;


use std::path::Path;

use common::{bnn_convert, fixtures, made_up_posterior, test_x, tract_run};
use model::engine::{Model, SparseKernels};
use model::arch::{Arch, Posterior};
use formats::checkpoint::Checkpoint;
use formats::synthetic::SplitMix64;
use model::meta_graph::{meta_path, read_arch};
use model::onnx::{build, densify, encode, Mode, Options, Sparse};
use tract_onnx::prelude::*;

fn load(folder: &str) -> (Arch, Vec<Posterior>) {
    let ckpt = Checkpoint::open(fixtures().join(folder)).expect("ckpt");
    let arch = read_arch(&meta_path(ckpt.path())).expect("arch");
    arch.bind(&ckpt).expect("bind")
}

fn input_shape(arch: &Arch, n: usize) -> Vec<usize> {
    std::iter::once(n).chain(arch.input_shape.iter().copied()).collect()
}

fn assert_close(a: &[f32], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((*x as f64 - y).abs() <= tol, "{what}[{i}]: tract {x} vs native {y}");
    }
}

/// Prunes (mu = 0, sigma = 0) the kernel weights with SNR below `t`, as issue 4's zero mode.
fn prune(posts: &mut [Posterior], t: f32) {
    for p in posts {
        let sigma = p.kernel_sigma.as_mut().expect("bayesian");
        for (m, s) in p.kernel_mu.iter_mut().zip(sigma.iter_mut()) {
            if m.abs() / *s <= t {
                *m = 0.0;
                *s = 0.0;
            }
        }
    }
}

#[test]
fn mean_mode_matches_native_engine_for_mlp_and_conv() {
    for folder in ["tf1_bnn_fc", "tf1_bnn_conv"] {
        let (arch, posts) = load(folder);
        let n = 50;
        let x = test_x(n);
        let native = Model::new(&arch, &posts, SparseKernels::Never).expect("model").predict_mean(&x).expect("predict");
        let onnx = build(&arch, &posts, Options { mode: Mode::Mean, sparse: Sparse::Never }, Path::new(folder)).expect("build");
        let out = tract_run(&onnx, &input_shape(&arch, n), &x);
        assert_eq!(out.len(), 2);
        assert_close(&out[1], &native, 1e-5, folder);
    }
}

#[test]
fn onnx_mean_model_accuracy_equals_tensorflows() {
    let yb = std::fs::read(fixtures().join("data/digits_test_y.npy")).expect("y");
    let y: Vec<i64> = yb[yb.len() - 360 * 8..].chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8"))).collect();
    for folder in ["tf1_bnn_fc", "tf1_bnn_conv"] {
        let (arch, posts) = load(folder);
        let onnx = build(&arch, &posts, Options { mode: Mode::Mean, sparse: Sparse::Auto }, Path::new(folder)).expect("build");
        let out = tract_run(&onnx, &input_shape(&arch, 360), &test_x(360));
        let correct = out[0]
            .chunks_exact(10)
            .zip(&y)
            .filter(|(row, &label)| row.iter().enumerate().fold(0, |b, (i, v)| if *v > row[b] { i } else { b }) as i64 == label)
            .count();
        let analysis: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixtures().join(folder).join("analysis.json")).expect("read")).expect("json");
        let tf_correct = (analysis["mean_model"]["tf"]["accuracy"].as_f64().unwrap_or(0.0) * 360.0).round() as usize;
        assert_eq!(correct, tf_correct, "{folder}: correct test examples, ONNX in tract vs TensorFlow");
    }
}

#[test]
fn sparse_initializers_hold_the_pruned_weights() {
    let (arch, mut posts) = load("tf1_bnn_fc");
    prune(&mut posts, 1.0);
    let x = test_x(40);
    let native = Model::new(&arch, &posts, SparseKernels::Always).expect("model").predict_mean(&x).expect("predict");
    // auto: sparse where 12 bytes per kept weight beat 4 per weight, i.e. density below 1/3.
    let auto = posts.iter().filter(|p| p.kernel_mu.iter().filter(|v| **v != 0.0).count() * 3 < p.kernel_mu.len()).count();
    assert!(auto >= 1, "T = 1 prunes 78% overall");
    for (sparse, expect_sparse) in [(Sparse::Auto, auto), (Sparse::Always, 3), (Sparse::Never, 0)] {
        let mut onnx = build(&arch, &posts, Options { mode: Mode::Mean, sparse }, Path::new("x")).expect("build");
        let g = onnx.graph.as_ref().expect("graph");
        assert_eq!(g.sparse_initializer.len(), expect_sparse, "{sparse:?}");
        // tract ignores sparse_initializer: densify, then the numbers must be the same.
        densify(&mut onnx);
        let out = tract_run(&onnx, &[40, 64], &x);
        assert_close(&out[1], &native, 1e-5, &format!("{sparse:?}"));
    }
}

#[test]
fn mc_mode_runs_in_tract_and_collapses_to_the_mean_network_without_noise() {
    for folder in ["tf1_bnn_fc", "tf1_bnn_conv"] {
        let (arch, mut posts) = load(folder);
        let n = 30;
        let x = test_x(n);
        let opts = Options { mode: Mode::MonteCarlo { samples: 8 }, sparse: Sparse::Never };
        // Real sigmas: a proper predictive distribution, close to the native MC estimate.
        let onnx = build(&arch, &posts, opts, Path::new(folder)).expect("build");
        let out = tract_run(&onnx, &input_shape(&arch, n), &x);
        let (mean, var) = (&out[0], &out[1]);
        for row in mean.chunks(10) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4, "{folder}: probabilities sum to 1");
        }
        assert!(var.iter().all(|v| *v >= 0.0) && var.iter().any(|v| *v > 1e-6), "{folder}: variance");
        // sigma = 0: every sample is the mean network -> mean equal, variance 0.
        for p in &mut posts {
            p.kernel_sigma.iter_mut().for_each(|s| s.iter_mut().for_each(|v| *v = 0.0));
        }
        let native = Model::new(&arch, &posts, SparseKernels::Never).expect("model").predict_mean(&x).expect("predict");
        let onnx = build(&arch, &posts, opts, Path::new(folder)).expect("build");
        let out = tract_run(&onnx, &input_shape(&arch, n), &x);
        assert_close(&out[0], &native, 1e-5, folder);
        assert!(out[1].iter().all(|v| v.abs() < 1e-10), "{folder}: zero variance");
    }
}

#[test]
fn export_cli_writes_a_loadable_file_and_fails_cleanly() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("m.onnx");
    let r = bnn_convert(&[&"export-onnx", &fixtures().join("tf1_bnn_fc"), &"-o", &out, &"--sparse", &"never"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let bytes = std::fs::read(&out).expect("written");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).expect("meta").permissions().mode();
        assert_eq!(mode & 0o044, 0o044, "readable by group and others like any output, got {mode:o}");
    }
    let m = tract_onnx::onnx().model_for_read(&mut &bytes[..]).expect("loads");
    assert_eq!(m.input_outlets().expect("inputs").len(), 1);
    let bad = dir.path().join("bad.onnx");
    let r = bnn_convert(&[&"export-onnx", &fixtures().join("tf2_keras_adam"), &"-o", &bad]);
    common::assert_one_line_error(&r, &["--arch"]);
    assert!(!bad.exists(), "no partial output");
}

#[test]
fn tract_does_not_read_sparse_initializers_which_is_why_never_exists() {
    // Documents docs/onnx.md's runtime table: if tract learns sparse initializers, this fails
    // and the table needs updating.
    let (arch, posts) = load("tf1_bnn_fc");
    let onnx = build(&arch, &posts, Options { mode: Mode::Mean, sparse: Sparse::Always }, Path::new("x")).expect("build");
    let bytes = encode(&onnx, Path::new("x.onnx")).expect("encode");
    let loaded = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .and_then(|m| m.with_input_fact(0, f32::fact([4, 64]).into()))
        .and_then(|m| m.into_optimized());
    assert!(loaded.is_err(), "tract now loads sparse initializers");
}

/// A small ResNet-style network with made-up weights: residual blocks with a strided
/// projection shortcut and an identity shortcut, SAME convs with stride 2, pooling.
fn tiny_resnet() -> (Arch, Vec<Posterior>) {
    let json = r#"{"input_name": "x", "input_shape": [6, 6, 2], "ops": [
        {"op": "conv2d", "layer": "c1", "strides": [1, 1], "padding": "SAME"}, {"op": "relu"},
        {"op": "residual",
         "body": [{"op": "conv2d", "layer": "c2", "strides": [2, 2], "padding": "SAME"}, {"op": "relu"},
                  {"op": "conv2d", "layer": "c3", "strides": [1, 1], "padding": "SAME"}],
         "shortcut": [{"op": "conv2d", "layer": "c4", "strides": [2, 2], "padding": "SAME"}]},
        {"op": "residual", "body": [{"op": "conv2d", "layer": "c5", "strides": [1, 1], "padding": "SAME"}], "shortcut": []},
        {"op": "max_pool", "size": [3, 3], "strides": [3, 3], "padding": "VALID"}, {"op": "flatten"},
        {"op": "dense", "layer": "d"}]}"#;
    let arch: Arch = serde_json::from_str(json).expect("arch");
    let mut rng = SplitMix64(12345);
    let mut post = |name: &str, shape: Vec<usize>| made_up_posterior(name, shape, &mut rng);
    let posts = vec![
        post("c1", vec![3, 3, 2, 4]),
        post("c2", vec![3, 3, 4, 4]),
        post("c3", vec![3, 3, 4, 4]),
        post("c4", vec![1, 1, 4, 4]),
        post("c5", vec![3, 3, 4, 4]),
        post("d", vec![4, 3]),
    ];
    (arch, posts)
}

#[test]
fn residual_network_agrees_between_tract_and_native_engine() {
    let (arch, mut posts) = tiny_resnet();
    let n = 5;
    let x: Vec<f32> = (0..n * 72).map(|i| ((i * 37) % 17) as f32 / 17.0 - 0.3).collect();
    let native = Model::new(&arch, &posts, SparseKernels::Never).expect("model").predict_mean(&x).expect("predict");
    let onnx = build(&arch, &posts, Options { mode: Mode::Mean, sparse: Sparse::Never }, Path::new("tiny")).expect("build");
    let out = tract_run(&onnx, &[n, 6, 6, 2], &x);
    assert_close(&out[1], &native, 1e-5, "residual mean");
    // MC graph with sigma = 0 (grouped convs through residual blocks) equals the mean network.
    posts.iter_mut().for_each(|p| p.kernel_sigma.iter_mut().for_each(|s| s.iter_mut().for_each(|v| *v = 0.0)));
    let mc = build(&arch, &posts, Options { mode: Mode::MonteCarlo { samples: 3 }, sparse: Sparse::Never }, Path::new("tiny")).expect("build");
    let out = tract_run(&mc, &[n, 6, 6, 2], &x);
    assert_close(&out[0], &native, 1e-5, "residual mc");
}
