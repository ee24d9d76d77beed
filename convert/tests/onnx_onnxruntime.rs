//! Exported models in onnxruntime (Python), when `.venv` has it: dense and sparse
//! initializers, mean and MC graphs. Skips with a note otherwise (CI needs no Python; the
//! tract tests in onnx_tract.rs always run).

mod common;


use std::path::{Path, PathBuf};

use common::{bnn_convert, fixtures, onnxruntime_output, onnxruntime_outputs, onnxruntime_python};
use model::engine::{Model, SparseKernels};
use formats::checkpoint::Checkpoint;
use model::meta_graph::{meta_path, read_arch};

fn native_mean(folder: &str, x: &[f32]) -> Vec<f64> {
    let ckpt = Checkpoint::open(fixtures().join(folder)).expect("ckpt");
    let (arch, posts) = read_arch(&meta_path(ckpt.path())).expect("arch").bind(&ckpt).expect("bind");
    Model::new(&arch, &posts, SparseKernels::Never).expect("model").predict_mean(x).expect("predict")
}

fn export(folder: &str, out: &Path, extra: &[&str]) {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"export-onnx"];
    let ckpt = fixtures().join(folder);
    args.push(&ckpt);
    args.push(&"-o");
    args.push(&out);
    for e in extra {
        args.push(e);
    }
    let r = bnn_convert(&args);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

#[test]
fn onnxruntime_loads_dense_sparse_and_mc_models() {
    let Some(py) = onnxruntime_python() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let data = fixtures().join("data/digits_test_x.npy");
    let bytes = std::fs::read(&data).expect("x");
    let x: Vec<f32> = bytes[bytes.len() - 360 * 64 * 4..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let cases = [
        ("tf1_bnn_fc", "fc_never.onnx", vec!["--sparse", "never"]),
        ("tf1_bnn_fc", "fc_always.onnx", vec!["--sparse", "always"]),
        ("tf1_bnn_conv", "conv_always.onnx", vec!["--sparse", "always"]),
        ("tf1_bnn_conv", "conv_mc.onnx", vec!["--mode", "mc", "--samples", "20"]),
    ];
    let files: Vec<PathBuf> = cases.iter().map(|(f, name, extra)| {
        let p = dir.path().join(name);
        export(f, &p, extra);
        p
    }).collect();
    let v = onnxruntime_outputs(&py, &data, &files);
    let get = |f: &Path, o: &str| -> Vec<f64> { onnxruntime_output(&v, f, o).into_iter().map(f64::from).collect() };
    for ((folder, _, extra), f) in cases.iter().zip(&files) {
        assert_eq!(v[f.to_string_lossy().as_ref()]["input_shape"][0], "batch", "dynamic batch dimension");
        if extra.contains(&"mc") {
            let (mean, var) = (get(f, "probabilities_mean"), get(f, "probabilities_variance"));
            assert!(mean.chunks(10).all(|r| (r.iter().sum::<f64>() - 1.0).abs() < 1e-4));
            assert!(var.iter().all(|v| *v >= 0.0) && var.iter().any(|v| *v > 1e-6));
            continue;
        }
        let native = native_mean(folder, &x);
        let ort = get(f, "probabilities");
        let worst = ort.iter().zip(&native).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-5, "{}: onnxruntime vs native differ by {worst}", f.display());
    }
}
