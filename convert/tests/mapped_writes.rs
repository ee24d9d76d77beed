//! Outputs written through a shared map of the output file (`OutputFile::map_writes`) equal,
//! byte for byte, those written with `write(2)` (`BNN_CONVERT_NO_MAP_WRITES=1`): the TF fixture
//! and a checkpoint of several 4 MiB map windows full of ties, pruned weights, NaN and
//! infinities, pruned by threshold and by sparsity to TF bundles and safetensors.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use formats::bundle::BundleWriter;
use formats::synthetic::SplitMix64 as Rng;
use formats::DType;

/// Writes a checkpoint whose data shard spans several map windows, full of awkward weights.
fn awkward_checkpoint(prefix: &Path) {
    let mut w = BundleWriter::create(prefix).expect("create");
    let mut rng = Rng(11);
    for (l, (rows, cols)) in [(1100u64, 1000u64), (300, 701), (64, 10)].into_iter().enumerate() {
        let n = (rows * cols) as usize;
        let weights: Vec<(f32, f32)> = (0..n)
            .map(|i| match i % 97 {
                0 => (0.0, -1000.0),
                1 => (-0.0, 0.0),
                2..=9 => (0.125, -3.0),
                10 if i % 3 == 0 => (f32::NAN, -3.0),
                11 => (0.1, f32::INFINITY),
                12 => (0.5, -1000.0),
                _ => (rng.uniform(-0.3, 0.3), rng.uniform(-9.0, 2.0)),
            })
            .collect();
        let mu: Vec<u8> = weights.iter().flat_map(|w| w.0.to_le_bytes()).collect();
        let rho: Vec<u8> = weights.iter().flat_map(|w| w.1.to_le_bytes()).collect();
        let name = format!("den_{}", l + 1);
        w.add_bytes(&format!("{name}/kernel_posterior_loc"), DType::Float32, &[rows, cols], &mu).expect("mu");
        w.add_bytes(&format!("{name}/kernel_posterior_untransformed_scale"), DType::Float32, &[rows, cols], &rho).expect("rho");
    }
    w.finish().expect("finish");
}

/// Every file `prune` wrote into `out`, by name, with its bytes.
fn outputs(out: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(out)
        .expect("list")
        .map(|e| {
            let e = e.expect("entry");
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).expect("read"))
        })
        .collect();
    files.sort();
    files
}

/// Runs `prune <args> <input> -o <out>/<name>`, with map writes or with `write(2)`.
fn prune(input: &Path, args: &[&str], out: &Path, name: &str, map_writes: bool) -> Vec<(String, Vec<u8>)> {
    std::fs::create_dir_all(out).expect("mkdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bnn-convert"));
    cmd.arg("prune").args(args).arg(input).arg("-o").arg(out.join(name));
    if !map_writes {
        cmd.env("BNN_CONVERT_NO_MAP_WRITES", "1");
    }
    let run = cmd.output().expect("bnn-convert runs");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    outputs(out)
}

fn assert_same_outputs(input: &Path, tmp: &Path) {
    let runs: [(&[&str], &str); 4] = [
        (&["--threshold", "1"], "model.ckpt-1"),
        (&["--threshold", "1"], "m.safetensors"),
        (&["--sparsity", "0.7"], "model.ckpt-1"),
        (&["--sparsity", "0.3", "--per-layer"], "m.safetensors"),
    ];
    for (i, (args, name)) in runs.into_iter().enumerate() {
        let mapped = prune(input, args, &tmp.join(format!("mapped-{i}")), name, true);
        let plain = prune(input, args, &tmp.join(format!("plain-{i}")), name, false);
        assert!(mapped.iter().any(|(n, b)| n.starts_with(name) && b.len() > 1000), "{args:?}: an output was written");
        let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&mapped), names(&plain), "{args:?}");
        for ((n, a), (_, b)) in mapped.iter().zip(&plain) {
            // The report names its output folder, which differs between the two runs.
            if n.ends_with(".prune.json") {
                continue;
            }
            assert!(a == b, "{args:?}: {n} differs between map writes and write(2)");
        }
    }
}

#[test]
fn map_writes_equal_plain_writes_on_the_fixture() {
    let tmp = tempfile::tempdir().expect("tempdir");
    assert_same_outputs(&fixtures().join("tf1_bnn_fc/model.ckpt-3000"), tmp.path());
}

#[test]
fn map_writes_equal_plain_writes_on_an_awkward_checkpoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let prefix: PathBuf = tmp.path().join("src/model.ckpt-1");
    std::fs::create_dir(tmp.path().join("src")).expect("mkdir");
    awkward_checkpoint(&prefix);
    assert_same_outputs(&prefix, tmp.path());
}
