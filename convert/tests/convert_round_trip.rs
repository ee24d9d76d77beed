//! `ckpt-to-safetensors` and `safetensors-to-ckpt` on the TensorFlow fixtures: values bit-exact
//! against what TensorFlow read (expected.json), names restored, and TensorFlow reading our
//! checkpoints back (where Python TensorFlow is installed).

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn expected_tensors(fixture: &str) -> serde_json::Map<String, Value> {
    let text = std::fs::read_to_string(fixtures().join(fixture).join("expected.json")).expect("expected.json");
    let v: Value = serde_json::from_str(&text).expect("json");
    v["tensors"].as_object().expect("tensors").clone()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn tf1_bnn_to_safetensors_is_bit_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("bnn.safetensors");
    let run = bnn_convert(&[&"ckpt-to-safetensors", &fixtures().join("tf1_bnn_fc"), &"-o", &out]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let bytes = std::fs::read(&out).expect("output");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let want = expected_tensors("tf1_bnn_fc");
    // Model variables only: the 9 posterior tensors, renamed with '.'.
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut model: Vec<String> =
        want.keys().filter(|k| k.contains("posterior") && !k.contains("RMSProp")).map(|k| k.replace('/', ".")).collect();
    model.sort();
    assert_eq!(names, model);
    for name in &names {
        let t = st.tensor(name).expect("tensor");
        let tf = &want[&name.replace('.', "/")];
        assert_eq!(sha(t.data()), tf["sha256"].as_str().expect("sha"), "{name}");
        let shape: Vec<usize> = tf["shape"].as_array().expect("shape").iter().map(|d| d.as_u64().expect("d") as usize).collect();
        assert_eq!(t.shape(), shape.as_slice());
    }
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("metadata");
    let meta = meta.metadata().clone().expect("__metadata__");
    let keys: BTreeMap<String, String> = serde_json::from_str(&meta["tf_keys"]).expect("tf_keys json");
    assert_eq!(keys["den_1.kernel_posterior_loc"], "den_1/kernel_posterior_loc");
    assert!(meta["bnn_layers"].contains("den_3"));
    assert!(meta["manifest"].contains("Placeholder_1"));
    assert!(meta.contains_key("global_step"));
}

#[test]
fn include_optimizer_keeps_slots_and_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("all.safetensors");
    let run = bnn_convert(&[&"ckpt-to-safetensors", &fixtures().join("tf1_bnn_fc"), &"-o", &out, &"--include-optimizer"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let bytes = std::fs::read(&out).expect("output");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid");
    assert!(st.names().iter().any(|n| n.ends_with(".RMSProp_1")));
    assert!(st.names().contains(&"global_step"));
}

/// Converts `fixture` to safetensors and back, returning the folder holding the new checkpoint.
fn round_trip(fixture: &str, extra: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let st = dir.path().join("x.safetensors");
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"ckpt-to-safetensors"];
    let src = fixtures().join(fixture);
    args.push(&src);
    args.push(&"-o");
    args.push(&st);
    for e in extra {
        args.push(e);
    }
    let run = bnn_convert(&args);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let prefix = dir.path().join("back").join("model.ckpt-7");
    let run = bnn_convert(&[&"safetensors-to-ckpt", &st, &"-o", &prefix]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    dir
}

/// The tensors of a checkpoint as `inspect --json` lists them, with sha256 of their bytes.
fn read_back(prefix: &std::path::Path) -> BTreeMap<String, String> {
    let ckpt = formats::checkpoint::Checkpoint::open(prefix).expect("opens");
    ckpt.variables()
        .iter()
        .map(|v| (v.key.clone(), sha(ckpt.read(&v.key).expect("read").bytes().expect("numeric"))))
        .collect()
}

#[test]
fn round_trips_restore_tf_names_and_bytes() {
    for (fixture, extra) in [("tf1_bnn_fc", vec!["--include-optimizer"]), ("tf2_keras_adam", vec![]), ("tf1_two_shards", vec![]), ("tf1_partitioned", vec![])] {
        let dir = round_trip(fixture, &extra);
        let got = read_back(&dir.path().join("back"));
        let want = expected_tensors(fixture);
        assert!(!got.is_empty(), "{fixture}: nothing written");
        for (key, hash) in &got {
            assert_eq!(Some(hash.as_str()), want[key]["sha256"].as_str(), "{fixture}: {key}");
        }
        // The state file makes the folder resolve to the new checkpoint.
        let state = std::fs::read_to_string(dir.path().join("back/checkpoint")).expect("state file");
        assert!(state.contains("model_checkpoint_path: \"model.ckpt-7\""), "{state}");
    }
}

#[test]
fn tensorflow_reads_our_checkpoints_bit_exact() {
    let Some(py) = tf_python() else { return };
    for (fixture, extra) in [("tf1_bnn_fc", vec!["--include-optimizer"]), ("tf2_keras_adam", vec![]), ("tf1_all_dtypes", vec!["--skip-unsupported"])] {
        let dir = round_trip(fixture, &extra);
        let prefix = dir.path().join("back/model.ckpt-7");
        let out = std::process::Command::new(&py)
            .arg(fixtures().join("tf_read.py"))
            .arg(&prefix)
            .output()
            .expect("python runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let tf: Value = serde_json::from_slice(&out.stdout).expect("tf_read.py prints JSON");
        let tf = tf["tensors"].as_object().expect("tensors").clone();
        let want = expected_tensors(fixture);
        assert!(!tf.is_empty());
        for (key, t) in &tf {
            assert_eq!(t["sha256"], want[key]["sha256"], "{fixture}: TensorFlow read {key} differently");
            assert_eq!(t["dtype"], want[key]["dtype"], "{fixture}: {key} dtype");
            assert_eq!(t["shape"], want[key]["shape"], "{fixture}: {key} shape");
        }
    }
}

#[test]
fn strings_need_skip_unsupported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("d.safetensors");
    let run = bnn_convert(&[&"ckpt-to-safetensors", &fixtures().join("tf1_all_dtypes"), &"-o", &out]);
    assert_one_line_error(&run, &["all_dtypes", "which safetensors cannot hold", "--skip-unsupported"]);
    assert!(listing(dir.path()).is_empty(), "no partial output");
    let run = bnn_convert(&[&"ckpt-to-safetensors", &fixtures().join("tf1_all_dtypes"), &"-o", &out, &"--skip-unsupported"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let bytes = std::fs::read(&out).expect("output");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid");
    let want = expected_tensors("tf1_all_dtypes");
    let tf_keys: BTreeMap<String, String> = {
        let (_, m) = safetensors::SafeTensors::read_metadata(&bytes).expect("meta");
        serde_json::from_str(&m.metadata().clone().expect("meta")["tf_keys"]).expect("json")
    };
    for name in st.names() {
        let key = &tf_keys[name];
        assert_eq!(sha(st.tensor(name).expect("t").data()), want[key]["sha256"].as_str().expect("sha"), "{key}");
    }
    assert!(st.names().iter().any(|n| tf_keys[*n].contains("bfloat16") || st.tensor(n).map(|t| t.dtype() == safetensors::Dtype::BF16).unwrap_or(false)));
}

#[test]
fn tensorflow_reads_every_dtype_our_bundle_writer_writes() {
    let Some(py) = tf_python() else { return };
    // Copy every tensor of the all-dtypes fixture (strings and complex128 included) through
    // our reader and writer, then let TensorFlow read the result.
    let src = formats::checkpoint::Checkpoint::open(fixtures().join("tf1_all_dtypes")).expect("opens");
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = dir.path().join("copy");
    let mut w = formats::bundle::BundleWriter::create(&prefix).expect("create");
    for v in src.variables() {
        match src.read(&v.key).expect("read") {
            formats::TensorData::Bytes(b) => w.add_bytes(&v.key, v.info.dtype, &v.info.shape, &b),
            formats::TensorData::Strings(s) => w.add_strings(&v.key, &v.info.shape, &s),
        }
        .expect("add");
    }
    w.finish().expect("finish");
    let out = std::process::Command::new(&py).arg(fixtures().join("tf_read.py")).arg(&prefix).output().expect("python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tf: Value = serde_json::from_slice(&out.stdout).expect("json");
    let want = expected_tensors("tf1_all_dtypes");
    assert_eq!(tf["tensors"].as_object().expect("tensors"), &want, "TensorFlow reads back exactly the fixture");
}
