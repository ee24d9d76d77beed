//! Batch normalization variables in the checkpoint tools (issue 11): `snr` and `inspect` list
//! them as not Bayesian, `prune` copies them (and every other non-posterior variable) bit for
//! bit in every output format and mode, `ckpt-to-safetensors` names them after their TF
//! variable names and round-trips their values. Checked against what TensorFlow itself reads
//! (fixtures/tf_read.py) on fixtures/tf1_bn_conv (TF1 Keras `bn_1`, `bn_2`) and
//! fixtures/tf2_keras_resnet (a Keras SavedModel: object-path keys).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use formats::checkpoint::Checkpoint;
use formats::layout::{Param, VariableKind};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Fixture folder and its checkpoint prefix.
const FIXTURES: [(&str, &str); 2] = [("tf1_bn_conv", "model.ckpt-800"), ("tf2_keras_resnet", "variables/variables")];

const BN_LEAVES: [&str; 4] = ["beta", "gamma", "moving_mean", "moving_variance"];

/// TensorFlow's own description of every tensor of `prefix` (key -> dtype, shape, sha256).
fn tf_read(py: &Path, prefix: &Path) -> serde_json::Map<String, Value> {
    let out = Command::new(py).arg(fixtures().join("tf_read.py")).arg(prefix).output().expect("python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    v["tensors"].as_object().expect("tensors").clone()
}

/// The batch normalization variables among TF's keys (TF1 `bn_1/gamma`, TF2
/// `layer_with_weights-1/gamma/.ATTRIBUTES/VARIABLE_VALUE`; optimizer slots excluded), with
/// their value counts.
fn tf_batch_norm(tensors: &serde_json::Map<String, Value>) -> BTreeMap<String, u64> {
    tensors
        .iter()
        .filter(|(k, _)| {
            let var = k.strip_suffix("/.ATTRIBUTES/VARIABLE_VALUE").unwrap_or(k);
            !var.starts_with("optimizer/") && !var.contains(".OPTIMIZER_SLOT") && BN_LEAVES.contains(&var.rsplit('/').next().unwrap_or(""))
        })
        .map(|(k, v)| (k.clone(), v["shape"].as_array().expect("shape").iter().map(|d| d.as_u64().expect("dim")).product()))
        .collect()
}

fn run_json(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Value {
    let out = bnn_convert(args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn snr_and_inspect_list_batch_norm_variables_as_not_bayesian() {
    let Some(py) = tf_python() else { return };
    for (folder, prefix) in FIXTURES {
        let src = fixtures().join(folder);
        let tf = tf_batch_norm(&tf_read(&py, &src.join(prefix)));
        assert_eq!(tf.len(), 8, "{folder}: two Keras BatchNormalization layers");
        let values: u64 = tf.values().sum();
        // inspect: exactly TF's BN keys have KIND batch_norm, in JSON and text.
        let inspect = run_json(&[&"inspect", &src, &"--json"]);
        let tagged: BTreeMap<String, u64> = inspect["tensors"]
            .as_array()
            .expect("tensors")
            .iter()
            .filter(|t| t["kind"] == "batch_norm")
            .map(|t| (t["key"].as_str().expect("key").to_string(), t["shape"].as_array().expect("shape").iter().map(|d| d.as_u64().expect("dim")).product()))
            .collect();
        assert_eq!(tagged, tf, "{folder}: inspect's batch_norm tensors");
        let counts = &inspect["non_bayesian_counts"]["batch_norm"];
        assert_eq!((counts["layers"].as_u64(), counts["variables"].as_u64(), counts["values"].as_u64()), (Some(2), Some(8), Some(values)), "{folder}");
        let text = bnn_convert(&[&"inspect", &src]);
        let text = String::from_utf8_lossy(&text.stdout);
        let summary = format!("batch_norm: 2 layers, 8 variables, {values} values");
        assert!(text.contains(&summary), "{folder}: {text}");
        for key in tf.keys() {
            let row = text.lines().find(|l| l.starts_with(key.as_str())).unwrap_or_else(|| panic!("{folder}: no row for {key}"));
            assert!(row.trim_end().ends_with("batch_norm"), "{row}");
        }
        // snr: no SNR for them, listed in their own section.
        let snr = run_json(&[&"snr", &src, &"--json"]);
        let layers: Vec<&str> = snr["layers"].as_array().expect("layers").iter().map(|l| l["target"]["layer"].as_str().expect("layer")).collect();
        assert!(layers.iter().all(|l| !l.starts_with("bn_")), "{folder}: {layers:?}");
        let groups: Vec<&Value> = snr["non_bayesian"].as_array().expect("non_bayesian").iter().filter(|g| g["kind"] == "batch_norm").collect();
        assert_eq!(groups.iter().map(|g| g["layer"].as_str().expect("layer")).collect::<Vec<_>>(), vec!["bn_1", "bn_2"], "{folder}");
        assert_eq!(groups.iter().map(|g| g["variables"].as_array().expect("vars").len()).sum::<usize>(), 8);
        assert_eq!(groups.iter().map(|g| g["values"].as_u64().expect("values")).sum::<u64>(), values);
        if folder.starts_with("tf1") {
            // TF1 keys are the variable names.
            let names: Vec<String> = groups.iter().flat_map(|g| g["variables"].as_array().expect("vars").iter().map(|v| v.as_str().expect("name").to_string())).collect();
            assert_eq!(names.into_iter().collect::<std::collections::BTreeSet<_>>(), tf.keys().cloned().collect(), "{folder}");
        }
        assert_eq!(snr["non_bayesian_counts"]["batch_norm"]["values"].as_u64(), Some(values));
        let text = bnn_convert(&[&"snr", &src]);
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("not Bayesian (no SNR, never pruned)") && text.contains(&summary), "{folder}: {text}");
        assert!(!text.lines().any(|l| l.starts_with("bn_")), "{folder}: a BN scope as an SNR row: {text}");
    }
}

/// The stored bytes of every variable of `ckpt`, by variable name.
fn bytes_by_name(ckpt: &Checkpoint) -> BTreeMap<String, Vec<u8>> {
    ckpt.variables()
        .iter()
        .filter(|v| v.kind != VariableKind::ObjectGraph && v.info.dtype != formats::dtype::DType::String)
        .map(|v| (v.name.clone(), ckpt.read(&v.key).expect("read").bytes().expect("numeric").to_vec()))
        .collect()
}

#[test]
fn prune_copies_batch_norm_and_every_other_non_posterior_variable_bit_for_bit() {
    let runs: [(&str, &[&str]); 6] = [
        ("pruned/model.ckpt-1", &["--threshold", "1"]),
        ("pruned/model.ckpt-1", &["--sparsity", "0.7", "--mode", "bprune"]),
        ("m.safetensors", &["--threshold", "1"]),
        ("m.safetensors", &["--threshold", "1", "--sparse"]),
        ("m.safetensors", &["--sparsity", "0.5", "--per-layer", "--mode", "bprune", "--include-optimizer"]),
        ("m.safetensors", &["--threshold", "2", "--sparse", "--mode", "bprune"]),
    ];
    for (folder, _) in FIXTURES {
        let src = fixtures().join(folder);
        let input = Checkpoint::open(&src).expect("input");
        // The pruned tensors: kernel mu and rho of the Bayesian layers (no --bias).
        let posterior: Vec<String> = input
            .layers()
            .iter()
            .filter(|l| l.is_bayesian())
            .flat_map(|l| [l.get(Param::KernelLoc), l.get(Param::KernelRho)])
            .flatten()
            .map(|key| input.variable(key).expect("var").name.clone())
            .collect();
        let before = bytes_by_name(&input);
        let bn: Vec<&String> = input.variables().iter().filter(|v| matches!(v.kind, VariableKind::BatchNorm { .. })).map(|v| &v.name).collect();
        assert_eq!(bn.len(), 8, "{folder}");
        for (out_name, args) in runs {
            let dir = tempfile::tempdir().expect("tmp");
            let out: PathBuf = dir.path().join(out_name);
            let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"prune", &src, &"-o", &out];
            all.extend(args.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>));
            let r = bnn_convert(&all);
            assert!(r.status.success(), "{folder} {args:?}: {}", String::from_utf8_lossy(&r.stderr));
            let after = bytes_by_name(&Checkpoint::open(&out).expect("output"));
            for name in &bn {
                assert!(after.contains_key(*name), "{folder} {args:?}: {name} missing from the output");
            }
            let mut compared = 0;
            for (name, bytes) in &before {
                match after.get(name) {
                    Some(b) if posterior.contains(name) => assert_eq!(b.len(), bytes.len(), "{name}"),
                    Some(b) => {
                        assert!(b == bytes, "{folder} {args:?}: {name} changed");
                        compared += 1;
                    }
                    None => {}
                }
            }
            assert!(compared >= 8 + 3, "{folder} {args:?}: compared {compared}");
            // And pruning did happen.
            assert!(posterior.iter().any(|n| after.get(n) != before.get(n)), "{folder} {args:?}: nothing pruned");
        }
    }
}

fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[test]
fn safetensors_names_batch_norm_by_variable_name_and_round_trips_tensorflows_values() {
    let Some(py) = tf_python() else { return };
    for (folder, prefix) in FIXTURES {
        let src = fixtures().join(folder);
        let tf_all = tf_read(&py, &src.join(prefix));
        let tf = tf_batch_norm(&tf_all);
        let dir = tempfile::tempdir().expect("tmp");
        let st_path = dir.path().join("m.safetensors");
        let r = bnn_convert(&[&"ckpt-to-safetensors", &src, &"-o", &st_path]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let bytes = std::fs::read(&st_path).expect("written");
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("metadata");
        let tf_keys: BTreeMap<String, String> = serde_json::from_str(&meta.metadata().clone().expect("metadata")["tf_keys"]).expect("tf_keys");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid");
        // docs/naming.md: the TF variable name with '/' -> '.' (for the SavedModel, the Keras
        // layer's name from the object graph, not the object path).
        let mut names: Vec<String> = st.names().into_iter().filter(|n| BN_LEAVES.iter().any(|l| n.ends_with(&format!(".{l}")))).map(String::from).collect();
        names.sort();
        let expected: Vec<String> = ["bn_1", "bn_2"].iter().flat_map(|s| BN_LEAVES.iter().map(move |l| format!("{s}.{l}"))).collect();
        assert_eq!(names, expected, "{folder}");
        for name in &names {
            let key = &tf_keys[name];
            let t = st.tensor(name).expect("tensor");
            assert!(tf.contains_key(key), "{folder}: {name} comes from {key}, not a BN variable TF knows");
            assert_eq!(sha256(t.data()), tf_all[key]["sha256"].as_str().expect("sha256"), "{folder}: {name} vs TF's {key}");
        }
        // Back to a checkpoint: TensorFlow reads the same keys and values.
        let back = dir.path().join("back/model.ckpt-1");
        let r = bnn_convert(&[&"safetensors-to-ckpt", &st_path, &"-o", &back]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let tf_back = tf_read(&py, &back);
        for key in tf.keys() {
            assert_eq!(tf_back[key]["sha256"], tf_all[key]["sha256"], "{folder}: {key} after the round trip");
            assert_eq!(tf_back[key]["shape"], tf_all[key]["shape"], "{folder}: {key}");
        }
    }
}
