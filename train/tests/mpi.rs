//! Data parallelism under `mpirun -np 2`: bit-identical variables on both ranks, one
//! allreduce per fusion buffer, and the loss curve of one rank on the same global batch.
//! Skipped where `mpirun` is missing, unless BNN_TRAIN_REQUIRE_MPI=1 (CI sets it).
#![cfg(feature = "mpi")]

mod common;

use std::process::Command;

use common::*;

fn mpirun() -> Option<Command> {
    let found = Command::new("mpirun").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(!required("BNN_TRAIN_REQUIRE_MPI"), "mpirun not found: run scripts/setup-mpi.sh");
        eprintln!("skipped: no mpirun");
        return None;
    }
    let mut c = Command::new("mpirun");
    // Root in containers and CI; two ranks on a 2-core machine.
    c.args(["--allow-run-as-root", "--oversubscribe", "-np", "2"]);
    c.arg(env!("CARGO_BIN_EXE_bnn-train"));
    c.env("TF_CPP_MIN_LOG_LEVEL", "2");
    Some(c)
}

fn two_ranks(args: &[&str]) -> Option<serde_json::Value> {
    let mut c = mpirun()?;
    c.arg("train").arg("--data-dir").arg(digits()).args(["--quiet", "--report", "-"]).args(args);
    Some(serde_json::from_str(&ok(&mut c)).expect("rank 0 prints one JSON report"))
}

#[test]
fn two_ranks_hold_bit_identical_variables_with_one_allreduce_per_step() {
    let Some(r) = two_ranks(&["--epochs", "2", "--no-eval"]) else { return };
    assert_eq!(r["ranks"], 2);
    let d = r["variable_digests"].as_array().unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(d[0], d[1], "ranks diverged");
    // 1437 / (64 * 2) = 11 steps per epoch; all 9 gradients fit one 64 MiB buffer.
    assert_eq!(r["last_step"], 22);
    assert_eq!(r["allreduce"]["tensors"], 9);
    assert_eq!(r["allreduce"]["calls_per_step"], 1);
    assert_eq!(r["allreduce"]["total_calls"], 22);
    // Gradients of 2 * 82,442 posterior parameters... (mu, rho: 64x256 + 256x256 + 256x10 each;
    // biases 256 + 256 + 10) plus loss and accuracy.
    let params = 2 * (64 * 256 + 256 * 256 + 256 * 10) + 256 + 256 + 10;
    assert_eq!(r["allreduce"]["bytes_per_step"], (params + 2) * 4);
    assert!((r["learning_rate"].as_f64().unwrap() - 0.002).abs() < 1e-9, "learning rate scaled by 2");
}

#[test]
fn small_fusion_buffers_make_more_calls_and_stay_identical() {
    // 0.25 MiB holds 65,536 floats: den_1's two 16,384-float kernels and bias share one,
    // den_2's 65,536-float kernels go alone, den_3 and the extras share the last.
    let Some(r) = two_ranks(&["--max-steps", "5", "--no-eval", "--fusion-mb", "0.25"]) else { return };
    let d = r["variable_digests"].as_array().unwrap();
    assert_eq!(d[0], d[1]);
    let calls = r["allreduce"]["calls_per_step"].as_u64().unwrap();
    assert_eq!(calls, 4);
    assert_eq!(r["allreduce"]["total_calls"], 5 * calls);
    let Some(none) = two_ranks(&["--max-steps", "2", "--no-eval", "--fusion-mb", "0"]) else { return };
    assert_eq!(none["allreduce"]["calls_per_step"], 10, "no fusion: one call per tensor, plus loss/accuracy");
}

fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / x.abs()).fold(0.0, f64::max)
}

#[test]
fn two_ranks_follow_the_one_rank_loss_curve_on_the_same_global_batch() {
    // Deterministic twin with RMSProp: the only difference is the order of float sums
    // (two half-batch means averaged vs one mean), so the curves agree closely.
    let common = ["--epochs", "2", "--no-eval", "--no-lr-scaling", "--deterministic", "--optimizer", "rmsprop"];
    let one = train_json(&[&common[..], &["--batch-size", "64"]].concat());
    let Some(two) = two_ranks(&[&common[..], &["--batch-size", "32"]].concat()) else { return };
    let (a, b) = (step_loss(&one), step_loss(&two));
    assert_eq!(a.len(), 44);
    let d = max_rel_diff(&a, &b);
    assert!(d < 1e-4, "deterministic curves differ by {d}");
    // The BNN draws different Flipout noise on two ranks than on one, so only close.
    let common = ["--epochs", "2", "--no-eval", "--no-lr-scaling"];
    let one = train_json(&[&common[..], &["--batch-size", "64"]].concat());
    let Some(two) = two_ranks(&[&common[..], &["--batch-size", "32"]].concat()) else { return };
    let d = max_rel_diff(&step_loss(&one), &step_loss(&two));
    assert!(d < 0.01, "BNN curves differ by {d}");
}

#[test]
fn two_ranks_train_vgg16_with_batch_norm_and_update_the_moving_statistics() {
    // The moving statistics are updated in the first run of a step (with the forward pass);
    // the second run, which feeds the averaged gradients, has no inputs to normalize.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let Some(r) = two_ranks(&["--arch", "vgg16", "--width", "0.0625", "--batch-size", "16", "--max-steps", "2", "--no-eval", "--out", d]) else { return };
    let digests = r["variable_digests"].as_array().unwrap();
    assert_eq!(digests[0], digests[1], "ranks diverged");
    // 16 Flipout layers (mu, rho, bias) and 13 BN layers (gamma, beta) have gradients; the
    // moving statistics have none.
    assert_eq!(r["allreduce"]["tensors"], 16 * 3 + 13 * 2);
    let ck = formats::checkpoint::Checkpoint::open(dir.path().join("model.ckpt-2")).unwrap();
    for k in 1..=13 {
        let mean = formats::tensor::f32_values(ck.read(&format!("Conv_{k}_bn/moving_mean")).unwrap().bytes().unwrap());
        let var = formats::tensor::f32_values(ck.read(&format!("Conv_{k}_bn/moving_variance")).unwrap().bytes().unwrap());
        assert!(mean.iter().any(|&m| m != 0.0) && var.iter().any(|&v| v != 1.0), "Conv_{k}_bn not updated");
    }
}
