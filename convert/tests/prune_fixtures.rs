//! `snr`, `prune` and `densify` on the TF1 BNN fixture, against what numpy computed from the
//! values TensorFlow read back (fixtures/tf1_bnn_fc/analysis.json), and TensorFlow restoring
//! the pruned checkpoint through its meta graph.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn analysis() -> Value {
    let text = std::fs::read_to_string(fixtures().join("tf1_bnn_fc/analysis.json")).expect("analysis.json");
    serde_json::from_str(&text).expect("json")
}

fn run_ok(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let out = bnn_convert(args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Tensors of a safetensors file by name.
fn tensors(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).expect("read output");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    st.tensors().into_iter().map(|(n, t)| (n, t.data().to_vec())).collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn snr_statistics_match_numpy() {
    let want = analysis();
    let got: Value = serde_json::from_str(&run_ok(&[&"snr", &"--json", &fixtures().join("tf1_bnn_fc")])).expect("json");
    let levels: Vec<f64> = want["quantile_levels"].as_array().expect("levels").iter().map(|v| v.as_f64().expect("f")).collect();
    for l in got["layers"].as_array().expect("layers") {
        let name = l["target"]["layer"].as_str().expect("layer");
        let (g, w) = (&l["stats"], &want["layers"][name]);
        assert_eq!(g["count"], w["count"], "{name}");
        for k in ["min", "max", "mean"] {
            assert!(close(g[k].as_f64().expect("g"), w[k].as_f64().expect("w")), "{name} {k}: {} vs {}", g[k], w[k]);
        }
        for (i, q) in g["quantiles"].as_array().expect("q").iter().enumerate() {
            assert_eq!(q[0].as_f64(), Some(levels[i]));
            let wq = w["quantiles"][i].as_f64().expect("wq");
            assert!(close(q[1].as_f64().expect("q"), wq), "{name} q{}: {} vs {wq}", levels[i], q[1]);
        }
        for (u, c) in g["under"].as_array().expect("under").iter().zip(w["count_le"].as_array().expect("count_le")) {
            assert_eq!(u["threshold"], c["threshold"]);
            assert_eq!(u["count"], c["count"], "{name} count <= {}", u["threshold"]);
        }
    }
    assert_eq!(got["overall"]["count"], want["overall"]["count"]);
}

#[test]
fn bprune_mode_reproduces_bprune() {
    let want = analysis();
    for t in ["1.0", "2.0"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("p.safetensors");
        let report: Value = serde_json::from_str(&run_ok(&[
            &"prune", &fixtures().join("tf1_bnn_fc"), &"-o", &out, &"--threshold", &t, &"--mode", &"bprune", &"--json",
        ]))
        .expect("json");
        let w = &want["bprune"][t];
        let files = tensors(&out);
        for l in report["layers"].as_array().expect("layers") {
            let name = l["layer"].as_str().expect("layer");
            let wl = &w["layers"][name];
            assert_eq!(l["pruned"], wl["pruned_count"], "{name} @ {t}");
            assert_eq!(l["bprune_nonzero"], wl["bprune_nonzero"], "{name} @ {t}: BPrune's count_nonzero * 2");
            assert_eq!(sha(&files[&format!("{name}.kernel_posterior_loc")]), wl["pruned_mu_sha256"].as_str().expect("mu"), "{name} mu @ {t}");
            assert_eq!(
                sha(&files[&format!("{name}.kernel_posterior_untransformed_scale")]),
                wl["pruned_rho_sha256"].as_str().expect("rho"),
                "{name} rho @ {t}"
            );
        }
        assert_eq!(report["total"].as_u64().expect("total") - report["kept"].as_u64().expect("kept"), w["total_pruned_count"].as_u64().expect("n"));
    }
}

#[test]
fn zero_mode_makes_every_sample_of_a_pruned_weight_zero() {
    let want = analysis();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("z.safetensors");
    run_ok(&[&"prune", &fixtures().join("tf1_bnn_fc"), &"-o", &out, &"--threshold", &"1"]);
    let before = tensors(&{
        let o = dir.path().join("dense.safetensors");
        run_ok(&[&"ckpt-to-safetensors", &fixtures().join("tf1_bnn_fc"), &"-o", &o]);
        o
    });
    let after = tensors(&out);
    for layer in ["den_1", "den_2", "den_3"] {
        let (mu0, rho0) = (f32s(&before[&format!("{layer}.kernel_posterior_loc")]), f32s(&before[&format!("{layer}.kernel_posterior_untransformed_scale")]));
        let (mu, rho) = (f32s(&after[&format!("{layer}.kernel_posterior_loc")]), f32s(&after[&format!("{layer}.kernel_posterior_untransformed_scale")]));
        let mut pruned = 0;
        for i in 0..mu.len() {
            if mu[i] == 0.0 && mu0[i] != 0.0 || rho[i] != rho0[i] {
                pruned += 1;
                assert_eq!(mu[i], 0.0);
                // sigma = ln(1 + e^rho) is exactly 0 in float32, as TensorFlow computes it.
                assert_eq!((rho[i].exp()).ln_1p(), 0.0, "{layer}[{i}]: rho {}", rho[i]);
            } else {
                assert_eq!((mu[i].to_bits(), rho[i].to_bits()), (mu0[i].to_bits(), rho0[i].to_bits()), "kept weights unchanged");
            }
        }
        let count_le_1 = want["layers"][layer]["count_le"].as_array().expect("c").iter().find(|c| c["threshold"] == 1.0).expect("T=1")["count"].as_u64();
        assert_eq!(Some(pruned), count_le_1, "{layer}");
        // Biases are never pruned by default.
        assert_eq!(before[&format!("{layer}.bias_posterior_loc")], after[&format!("{layer}.bias_posterior_loc")]);
    }
}

#[test]
fn sparsity_is_hit_to_the_weight() {
    for (extra, check_layers) in [(None, false), (Some("--per-layer"), true)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("s.safetensors");
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"prune", &"--json", &"--sparsity", &"0.37"];
        let src = fixtures().join("tf1_bnn_fc");
        args.push(&src);
        args.push(&"-o");
        args.push(&out);
        if let Some(e) = &extra {
            args.push(e);
        }
        let r: Value = serde_json::from_str(&run_ok(&args)).expect("json");
        let total = r["total"].as_u64().expect("total") as f64;
        let pruned = total - r["kept"].as_u64().expect("kept") as f64;
        if check_layers {
            for l in r["layers"].as_array().expect("layers") {
                let n = l["total"].as_f64().expect("n");
                assert!((l["pruned"].as_f64().expect("p") - 0.37 * n).abs() <= 1.0, "{l}");
            }
        } else {
            assert!((pruned - 0.37 * total).abs() <= 1.0, "{pruned} of {total}");
        }
    }
}

#[test]
fn sparse_storage_is_small_and_densifies_bit_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (dense, sparse, back) = (dir.path().join("d.safetensors"), dir.path().join("s.safetensors"), dir.path().join("b.safetensors"));
    let src = fixtures().join("tf1_bnn_fc");
    run_ok(&[&"prune", &src, &"-o", &dense, &"--sparsity", &"0.8"]);
    run_ok(&[&"prune", &src, &"-o", &sparse, &"--sparsity", &"0.8", &"--sparse"]);
    // Tensor data (the file less its JSON header, which is metadata): well under a third.
    let data_len = |p: &Path| {
        let b = std::fs::read(p).expect("read");
        b.len() as u64 - 8 - u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
    };
    let (d, s) = (data_len(&dense), data_len(&sparse));
    assert!((s as f64) < 0.3 * d as f64, "sparse {s} bytes vs dense {d}");
    run_ok(&[&"densify", &sparse, &"-o", &back]);
    // `prune` writes its header after the data, padded with spaces to the room the longest
    // report needs; densify's header is the same JSON, padded only to 8 bytes.
    let split = |p: &Path| {
        let b = std::fs::read(p).expect("read");
        let start = 8 + u64::from_le_bytes(b[..8].try_into().expect("8 bytes")) as usize;
        (String::from_utf8(b[8..start].to_vec()).expect("utf-8").trim_end().to_string(), b[start..].to_vec())
    };
    let (back, dense) = (split(&back), split(&dense));
    assert_eq!(back.0, dense.0, "densify restores the header");
    assert!(back.1 == dense.1, "densify restores the tensor data exactly");
}

#[test]
fn pruned_tf_checkpoint_restores_in_tensorflow() {
    let want = analysis();
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = dir.path().join("pruned/model.ckpt-3000");
    run_ok(&[&"prune", &fixtures().join("tf1_bnn_fc"), &"-o", &prefix, &"--threshold", &"1", &"--mode", &"bprune"]);
    let pruned = dir.path().join("pruned");
    for f in ["model.ckpt-3000.meta", "LayerNames.txt", "Ops_name_BNN.txt", "checkpoint", "model.ckpt-3000.prune.json"] {
        assert!(pruned.join(f).is_file(), "{f} written beside the pruned checkpoint");
    }
    // Our own reader sees BPrune's values (numpy's hashes)...
    let ckpt = formats::checkpoint::Checkpoint::open(&pruned).expect("opens");
    let mu = ckpt.read("den_2/kernel_posterior_loc").expect("read");
    assert_eq!(sha(mu.bytes().expect("bytes")), want["bprune"]["1.0"]["layers"]["den_2"]["pruned_mu_sha256"].as_str().expect("sha"));
    assert_eq!(ckpt.variables().len(), 28, "optimizer slots and global_step kept");
    // ...and so does TensorFlow, restoring through the meta graph as BPrune does.
    let Some(py) = tf_python() else { return };
    let out = std::process::Command::new(&py).arg(fixtures().join("tf_restore.py")).arg(&prefix).output().expect("python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tf: Value = serde_json::from_slice(&out.stdout).expect("json");
    for layer in ["den_1", "den_2", "den_3"] {
        let w = &want["bprune"]["1.0"]["layers"][layer];
        assert_eq!(tf["tensors"][format!("{layer}/kernel_posterior_loc")]["sha256"], w["pruned_mu_sha256"], "{layer}");
        assert_eq!(tf["tensors"][format!("{layer}/kernel_posterior_untransformed_scale")]["sha256"], w["pruned_rho_sha256"], "{layer}");
    }
}

#[test]
fn bad_requests_fail_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = fixtures().join("tf1_bnn_fc");
    let run = bnn_convert(&[&"prune", &src, &"-o", &dir.path().join("x"), &"--sparse"]);
    assert_one_line_error(&run, &["--sparse needs a .safetensors output"]);
    let run = bnn_convert(&[&"prune", &src, &"-o", &dir.path().join("x.safetensors"), &"--layers", &"den_9"]);
    assert_one_line_error(&run, &["no layer 'den_9'", "den_1, den_2, den_3"]);
    let run = bnn_convert(&[&"prune", &src, &"-o", &dir.path().join("x.safetensors"), &"--sparsity", &"1.5"]);
    assert_one_line_error(&run, &["sparsity 1.5"]);
    let run = bnn_convert(&[&"prune", &src, &"-o", &dir.path().join("x.safetensors"), &"--bias"]);
    assert!(run.status.success(), "biases without a scale are skipped when no layer is named");
    let run = bnn_convert(&[&"prune", &src, &"-o", &dir.path().join("y.safetensors"), &"--bias", &"--layers", &"den_1"]);
    assert_one_line_error(&run, &["den_1", "no bias posterior scale"]);
    let run = bnn_convert(&[&"densify", &dir.path().join("x.safetensors"), &"-o", &dir.path().join("z.safetensors")]);
    assert_one_line_error(&run, &["x.safetensors", "not a sparse bnn-convert file"]);
    assert_eq!(listing(dir.path()), vec!["x.safetensors"]);
}
