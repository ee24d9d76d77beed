//! Reading the checkpoints TensorFlow wrote in `fixtures/` and comparing every tensor with what
//! TensorFlow itself read back from them (`expected.json`, written by `fixtures/generate.py`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use formats::bundle::BundleReader;
use formats::checkpoint::Checkpoint;
use formats::layout::{Param, VariableKind};
use formats::TensorData;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn expected(dir: &str) -> Value {
    let path = fixtures().join(dir).join("expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("expected.json parses")
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks every tensor TensorFlow reported against what we read: same names, dtypes, shapes
/// and bytes (sha256) or strings.
fn assert_matches_tensorflow(ckpt: &Checkpoint, expected: &Value) {
    let want = expected["tensors"].as_object().expect("tensors object");
    let got: BTreeMap<&str, _> = ckpt.variables().iter().map(|v| (v.key.as_str(), v)).collect();
    let want_keys: Vec<&str> = want.keys().map(String::as_str).collect();
    let got_keys: Vec<&str> = got.keys().copied().collect();
    assert_eq!(got_keys, want_keys, "tensor names differ from TensorFlow's");
    for (name, w) in want {
        let v = got[name.as_str()];
        assert_eq!(v.info.dtype.name(), w["dtype"].as_str().expect("dtype"), "{name}: dtype");
        let shape: Vec<u64> = w["shape"].as_array().expect("shape").iter().map(|d| d.as_u64().expect("dim")).collect();
        assert_eq!(v.info.shape, shape, "{name}: shape");
        match ckpt.read(name).unwrap_or_else(|e| panic!("{name}: {e}")) {
            TensorData::Bytes(b) => assert_eq!(sha256(&b), w["sha256"].as_str().expect("sha256"), "{name}: bytes"),
            TensorData::Strings(s) => {
                let hexed: Vec<String> = s.iter().map(hex::encode).collect();
                let want: Vec<String> =
                    w["strings"].as_array().expect("strings").iter().map(|x| x.as_str().expect("hex").to_string()).collect();
                assert_eq!(hexed, want, "{name}: strings");
            }
        }
    }
}

fn open_fixture(dir: &str) -> (Checkpoint, Value) {
    let ckpt = Checkpoint::open(fixtures().join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}"));
    let exp = expected(dir);
    let prefix = exp["prefix"].as_str().expect("prefix");
    assert_eq!(ckpt.path().file_name().and_then(|n| n.to_str()), Some(prefix), "{dir}: latest checkpoint");
    (ckpt, exp)
}

#[test]
fn tf1_bnn_fc_matches_tensorflow() {
    let (ckpt, exp) = open_fixture("tf1_bnn_fc");
    assert_matches_tensorflow(&ckpt, &exp);
    assert_eq!(ckpt.global_step(), exp["global_step"].as_i64());
    let layers = ckpt.layers();
    let names: Vec<&str> = layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, vec!["den_1", "den_2", "den_3"]);
    for l in &layers {
        assert!(l.is_bayesian(), "{} has loc and untransformed scale", l.name);
        assert_eq!(l.get(Param::BiasLoc), Some(format!("{}/bias_posterior_loc", l.name).as_str()));
    }
    // RMSProp keeps two slots per trainable variable: 9 variables x 2.
    let slots = ckpt.variables().iter().filter(|v| matches!(v.kind, VariableKind::OptimizerSlot { .. })).count();
    assert_eq!(slots, 18);
    // BPrune's manifests sit next to the checkpoint and name exactly the 9 posterior variables.
    ckpt.check_manifest().expect("manifest matches the index");
    assert_eq!(ckpt.manifest().layer_names.len(), 9);
    assert_eq!(ckpt.manifest().input_op.as_deref(), Some("Placeholder"));
    assert_eq!(ckpt.manifest().label_op.as_deref(), Some("Placeholder_1"));
}

#[test]
fn tf1_bnn_fc_every_step_is_listed() {
    let exp = expected("tf1_bnn_fc");
    let steps: Vec<u64> = exp["steps"].as_array().expect("steps").iter().map(|s| s.as_u64().expect("step")).collect();
    let found = formats::checkpoint_state::checkpoints_in(&fixtures().join("tf1_bnn_fc")).expect("state file");
    let found_steps: Vec<u64> = found.iter().map(|p| formats::checkpoint_state::step_of(p).expect("step")).collect();
    assert_eq!(found_steps, steps);
}

#[test]
fn tf2_object_checkpoint_matches_tensorflow() {
    let (ckpt, exp) = open_fixture("tf2_keras_adam");
    assert_matches_tensorflow(&ckpt, &exp);
    let graph = ckpt.object_graph().expect("TF2 checkpoint has an object graph");
    for (key, full_name) in exp["object_graph"].as_object().expect("object_graph") {
        assert_eq!(graph.attributes[key].full_name, full_name.as_str().expect("name"), "{key}");
    }
    let slots: Vec<(String, String, String)> =
        graph.slots.iter().map(|s| (s.original_key.clone(), s.slot_name.clone(), s.slot_key.clone())).collect();
    for s in exp["slot_variables"].as_array().expect("slot_variables") {
        let want = (
            s["original_key"].as_str().expect("k").to_string(),
            s["slot_name"].as_str().expect("n").to_string(),
            s["slot_key"].as_str().expect("s").to_string(),
        );
        assert!(slots.contains(&want), "slot {want:?} not decoded");
    }
    // Variables are named after their TF variable names and grouped into Bayesian layers.
    assert!(ckpt.layers().iter().any(|l| l.is_bayesian()));
    for v in ckpt.variables() {
        if let VariableKind::OptimizerSlot { of, .. } = &v.kind {
            assert!(!of.contains(".ATTRIBUTES"), "slot owner named by variable name: {of}");
        }
    }
}

#[test]
fn two_shard_checkpoint_matches_tensorflow() {
    let (ckpt, exp) = open_fixture("tf1_two_shards");
    assert_eq!(ckpt.bundle().expect("bundle").header().num_shards, 2);
    let shards: std::collections::BTreeSet<u32> = ckpt.variables().iter().filter_map(|v| v.info.shard).collect();
    assert_eq!(shards.into_iter().collect::<Vec<_>>(), vec![0, 1], "tensors in both shards");
    assert_matches_tensorflow(&ckpt, &exp);
}

#[test]
fn partitioned_variables_are_reassembled() {
    let (ckpt, exp) = open_fixture("tf1_partitioned");
    assert_matches_tensorflow(&ckpt, &exp);
}

#[test]
fn every_dtype_matches_tensorflow() {
    let (ckpt, exp) = open_fixture("tf1_all_dtypes");
    let dtypes: std::collections::BTreeSet<&str> = ckpt.variables().iter().map(|v| v.info.dtype.name()).collect();
    for d in formats::DType::ALL {
        assert!(dtypes.contains(d.name()), "fixture lacks {d}");
    }
    assert!(ckpt.variables().iter().any(|v| v.info.shape.is_empty()), "a scalar");
    assert!(ckpt.variables().iter().any(|v| v.info.shape.contains(&0)), "an empty tensor");
    assert_matches_tensorflow(&ckpt, &exp);
}

#[test]
fn real_bprune_sample_index_parses_and_reports_missing_shard() {
    let dir = fixtures().join("../../shared/samples/bprune-fc-14000/ckpt");
    if !dir.is_dir() {
        eprintln!("skipped: {} is not beside this checkout", dir.display());
        return;
    }
    let ckpt = Checkpoint::open(&dir).expect("index and state file parse");
    assert_eq!(ckpt.global_step(), Some(14000));
    assert_eq!(ckpt.variables().len(), 28);
    let den_1 = ckpt.variable("den_1/kernel_posterior_loc").expect("den_1 loc");
    assert_eq!(den_1.info.shape, vec![784, 256]);
    assert_eq!(ckpt.layers().len(), 3);
    ckpt.check_manifest().expect("LayerNames.txt names stored variables");
    assert_eq!(ckpt.manifest().num_ops, 1999);
    let err = ckpt.read("den_1/kernel_posterior_loc").unwrap_err();
    assert!(matches!(err, formats::Error::MissingShard { .. }), "{err}");
    assert!(err.to_string().contains("model.ckpt-14000.data-00000-of-00001"), "{err}");
    let reader = BundleReader::open(dir.join("model.ckpt-14000")).expect("opens");
    assert_eq!(reader.missing_shards().len(), 1);
}

#[test]
fn every_way_of_naming_a_checkpoint_resolves() {
    use formats::checkpoint_state::resolve_checkpoint;
    let dir = fixtures().join("tf1_bnn_fc");
    let latest = dir.join("model.ckpt-3000");
    for input in [
        dir.clone(),
        dir.join("checkpoint"),
        latest.clone(),
        dir.join("model.ckpt-3000.index"),
        dir.join("model.ckpt-3000.data-00000-of-00001"),
    ] {
        assert_eq!(resolve_checkpoint(&input).expect("resolves"), latest, "{}", input.display());
    }
    assert_eq!(resolve_checkpoint(&dir.join("model.ckpt-0")).expect("older step"), dir.join("model.ckpt-0"));
    assert!(resolve_checkpoint(&dir.join("model.ckpt-5")).is_err());
}

#[test]
fn moved_archives_with_absolute_state_paths_still_resolve() {
    // BPrune's MonitoredTrainingSession writes absolute paths; after the folder is moved they
    // point nowhere, and the same file name inside the folder is used instead.
    let tmp = tempfile::tempdir().expect("tempdir");
    for f in ["model.ckpt-3000.index", "model.ckpt-3000.data-00000-of-00001", "model.ckpt-0.index", "model.ckpt-0.data-00000-of-00001"] {
        std::fs::copy(fixtures().join("tf1_bnn_fc").join(f), tmp.path().join(f)).expect("copy");
    }
    std::fs::write(
        tmp.path().join("checkpoint"),
        "model_checkpoint_path: \"/old/run/model.ckpt-3000\"\nall_model_checkpoint_paths: \"/old/run/model.ckpt-0\"\nall_model_checkpoint_paths: \"/old/run/model.ckpt-3000\"\n",
    )
    .expect("write");
    let ckpt = Checkpoint::open(tmp.path()).expect("resolves inside the moved folder");
    assert_eq!(ckpt.path(), tmp.path().join("model.ckpt-3000"));
    let all = formats::checkpoint_state::checkpoints_in(tmp.path()).expect("all steps");
    assert_eq!(all, vec![tmp.path().join("model.ckpt-0"), tmp.path().join("model.ckpt-3000")]);
}
