//! `prune`'s outputs, written block by block on every core (`formats::block_copy`), equal byte
//! for byte what the in-memory pruning (`surgery::prune::prune`, one bit per weight) gives when
//! each tensor is edited whole and written in one piece: the TF fixture and a checkpoint of
//! many blocks full of ties, pruned weights, NaN and infinities, pruned by threshold and by
//! sparsity to TF bundles and safetensors.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use formats::bundle::BundleWriter;
use formats::checkpoint::Checkpoint;
use formats::safetensors_file::{write_safetensors, PlannedTensor, SafetensorsFile};
use formats::synthetic::SplitMix64 as Rng;
use formats::{DType, TensorData};
use surgery::prune::{prune, Criterion, Mode, PruneOptions, META_PRUNE};
use surgery::snr::{select_targets, Part};
/// Writes a checkpoint whose posteriors span many 256 KiB blocks (and end inside one), full of
/// awkward weights.
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

/// A tensor to write: stored key, TF key, dtype, shape, bytes.
type Tensor = (String, String, DType, Vec<u64>, Vec<u8>);

/// The tensors of `ckpt` pruned in memory by `options` (kernels), each edited whole: (stored
/// key, TF key, dtype, shape, bytes), in the checkpoint's order; and the report.
fn pruned_in_memory(ckpt: &Checkpoint, options: &PruneOptions) -> (Vec<Tensor>, String) {
    let targets = select_targets(ckpt, None, &[Part::Kernel]).expect("targets");
    let pruning = prune(ckpt, &targets, options).expect("in-memory pruning");
    let tensors = ckpt
        .variables()
        .iter()
        .filter(|v| v.info.dtype.size().is_some())
        .map(|v| {
            let TensorData::Bytes(src) = ckpt.read(&v.key).expect("read") else { panic!("bytes") };
            let bytes = match pruning.edits.values.get(&v.key) {
                Some(edit) => {
                    let mut dst = vec![0; src.len()];
                    edit.apply(0, &src, &mut dst);
                    dst
                }
                None => src.into_owned(),
            };
            (v.key.clone(), ckpt.tf_key(v).to_string(), v.info.dtype, v.info.shape.clone(), bytes)
        })
        .collect();
    (tensors, serde_json::to_string(&pruning.report).expect("json"))
}

/// Runs `prune <args> <input> -o <out>`.
fn run_prune(input: &Path, args: &[&str], out: &Path) {
    std::fs::create_dir_all(out.parent().expect("parent")).expect("mkdir");
    let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"prune"];
    for a in args {
        all.push(a);
    }
    all.extend([&input as &dyn AsRef<std::ffi::OsStr>, &"-o", &out]);
    let run = bnn_convert(&all);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
}

fn options(args: &[&str]) -> PruneOptions {
    let criterion = match args {
        ["--threshold", t] => Criterion::Threshold(t.parse().expect("t")),
        ["--sparsity", f] => Criterion::Sparsity { fraction: f.parse().expect("f"), per_layer: false },
        ["--sparsity", f, "--per-layer"] => Criterion::Sparsity { fraction: f.parse().expect("f"), per_layer: true },
        _ => unreachable!(),
    };
    PruneOptions { criterion, mode: Mode::Zero }
}

fn assert_same_outputs(input: &Path, tmp: &Path) {
    let ckpt = Checkpoint::open(input).expect("open");
    let runs: [&[&str]; 4] = [&["--threshold", "1"], &["--sparsity", "0.7"], &["--sparsity", "0.3", "--per-layer"], &["--threshold", "0"]];
    for (i, args) in runs.into_iter().enumerate() {
        let (tensors, report) = pruned_in_memory(&ckpt, &options(args));
        // TF output: data shard and index byte for byte against one piece per tensor.
        let (got, want) = (tmp.join(format!("tf-{i}/model.ckpt-1")), tmp.join(format!("want-{i}/model.ckpt-1")));
        run_prune(input, args, &got);
        std::fs::create_dir_all(want.parent().expect("parent")).expect("mkdir");
        let mut w = BundleWriter::create(&want).expect("create");
        for (_, tf_key, dtype, shape, bytes) in &tensors {
            w.add_bytes(tf_key, *dtype, shape, bytes).expect("add");
        }
        w.finish().expect("finish");
        for path in [formats::bundle::data_shard_path(&got, 0, 1), formats::bundle::index_path(&got)] {
            let name = path.file_name().expect("name").to_string_lossy().into_owned();
            let want_path = want.parent().expect("parent").join(&name);
            assert!(std::fs::read(&path).expect("got") == std::fs::read(&want_path).expect("want"), "{args:?}: {name} differs");
        }
        let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(surgery::prune::report_path(&got)).expect("report")).expect("json");
        assert_eq!(written, serde_json::from_str::<serde_json::Value>(&report).expect("json"), "{args:?}");

        // Safetensors output: the data byte for byte, the header the same but for its padding.
        let got = tmp.join(format!("st-{i}.safetensors"));
        run_prune(input, args, &got);
        let file = SafetensorsFile::open(&got).expect("open");
        let mut metadata: BTreeMap<String, String> = file.metadata().clone();
        assert_eq!(metadata.get(META_PRUNE), Some(&report), "{args:?}: the report in the header");
        let plan = formats::convert::plan_safetensors(&ckpt, Default::default()).expect("plan");
        let planned: Vec<PlannedTensor> =
            plan.variables.iter().zip(&plan.names).map(|(v, n)| PlannedTensor { name: n.clone(), dtype: v.info.dtype, shape: v.info.shape.clone() }).collect();
        let by_key: BTreeMap<&str, &Vec<u8>> = tensors.iter().map(|t| (t.0.as_str(), &t.4)).collect();
        let want = tmp.join(format!("want-{i}.safetensors"));
        metadata.insert(META_PRUNE.into(), report.clone());
        write_safetensors(&want, &planned, &metadata, |i, sink| sink(by_key[plan.variables[i].key.as_str()])).expect("want");
        let (got, want) = (std::fs::read(&got).expect("got"), std::fs::read(&want).expect("want"));
        let start = |b: &[u8]| 8 + u64::from_le_bytes(b[..8].try_into().expect("8 bytes")) as usize;
        let (g, w) = (start(&got), start(&want));
        assert!(got[g..] == want[w..], "{args:?}: safetensors data differs");
        assert_eq!(String::from_utf8_lossy(&got[8..g]).trim_end(), String::from_utf8_lossy(&want[8..w]).trim_end(), "{args:?}");
    }
}

#[test]
fn block_writes_equal_whole_tensor_pruning_on_the_fixture() {
    let tmp = tempfile::tempdir().expect("tempdir");
    assert_same_outputs(&fixtures().join("tf1_bnn_fc/model.ckpt-3000"), tmp.path());
}

#[test]
fn block_writes_equal_whole_tensor_pruning_on_an_awkward_checkpoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let prefix: PathBuf = tmp.path().join("src/model.ckpt-1");
    std::fs::create_dir(tmp.path().join("src")).expect("mkdir");
    awkward_checkpoint(&prefix);
    assert_same_outputs(&prefix, tmp.path());
}
