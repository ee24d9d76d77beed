//! Issue 10's memory criterion for `eval`: the peak resident memory of the process stays under
//! 2x the model's weight bytes plus the batch's activations; in fact under 1x the weights plus
//! one sample's noise and activations, so that keeping the checkpoint's mapped pages or a
//! second copy of the weights is caught. The bound is computed here from the architecture
//! the test writes, not from the engine.

mod common;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::fixtures;

const MIB: f64 = 1024.0 * 1024.0;

/// Runs `bnn-convert eval` on one thread and returns the child's peak resident set
/// (`ru_maxrss` from `wait4` on its pid: other tests' children do not count), in bytes.
// The child is reaped by `wait4` (for its rusage), not by `Child::wait`.
#[allow(clippy::zombie_processes)]
fn eval_peak_rss(ck: &Path, arch: Option<&Path>, samples: usize) -> f64 {
    let data = fixtures().join("data/digits_test_x.npy");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bnn-convert"));
    cmd.arg("eval").arg(ck).arg("--data").arg(&data).arg("--samples").arg(samples.to_string()).arg("--json");
    if let Some(a) = arch {
        cmd.arg("--arch").arg(a);
    }
    // BNN_MEM_TRACE: eval prints its memory per stage (shown when the test fails).
    let mut child = cmd.env("RAYON_NUM_THREADS", "1").env("BNN_MEM_TRACE", "1").stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("bnn-convert runs");
    let mut err = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut err).expect("stderr");
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, by pid, with valid pointers.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut ru) };
    assert_eq!(pid, child.id() as libc::pid_t, "wait4");
    assert!(std::process::ExitStatus::from_raw(status).success(), "eval failed: {err}");
    eprint!("{err}");
    // Linux reports ru_maxrss in KiB.
    ru.ru_maxrss as f64 * 1024.0
}

#[test]
fn eval_peak_memory_stays_within_the_weights_plus_activations() {
    // BNN-FC 64-1024x7-10: 51 MiB of float32 weights (mu, rho, bias), each layer at most 4 MiB
    // of kernel, so that the weights dominate the per-sample workspace.
    let widths = [64u64, 1024, 1024, 1024, 1024, 1024, 1024, 1024, 10];
    let layers: Vec<(u64, u64)> = widths.windows(2).map(|w| (w[0], w[1])).collect();
    let dir = tempfile::tempdir().expect("tmp");
    formats::synthetic::write_synthetic_bnn(&dir.path().join("model.ckpt-1000"), &layers, 7).expect("checkpoint");
    let mut ops = Vec::new();
    for i in 0..layers.len() {
        if i > 0 {
            ops.push(r#"{"op": "relu"}"#.to_string());
        }
        ops.push(format!(r#"{{"op": "dense", "layer": "den_{}"}}"#, i + 1));
    }
    let arch = dir.path().join("arch.json");
    std::fs::write(&arch, format!(r#"{{"input_shape": [64], "ops": [{}]}}"#, ops.join(", "))).expect("arch");

    // The issue's terms, from the architecture: weight bytes W (mu, rho and bias, float32); the
    // batch's activations A for the examples and samples in flight (360 digits, one sample at a
    // time on one thread): the largest input + output of a layer, plus the first layer's mean
    // product, which every sample shares.
    let (n, f32b) = (360.0, 4.0);
    let weights: f64 = layers.iter().map(|&(k, u)| (2 * k * u + u) as f64 * f32b).sum();
    let largest_io = widths.windows(2).map(|w| (w[0] + w[1]) as f64).fold(0.0, f64::max);
    let activations = n * largest_io * f32b + n * widths[1] as f64 * f32b;
    // A Flipout sample draws one noise value per weight of a layer: one layer's kernel at a time.
    let noise = layers.iter().map(|&(k, u)| (k * u) as f64 * f32b).fold(0.0, f64::max);
    // The process itself (binary, libraries, thread, allocator): `eval` of the 0.6 MiB fixture.
    let process = eval_peak_rss(&fixtures().join("tf1_bnn_fc"), None, 2);

    let peak = eval_peak_rss(dir.path(), Some(&arch), 2);
    let issue_bound = process + 2.0 * weights + activations;
    // What a sample needs beside the weights: its noise draw of one layer plus up to two
    // kernel-sized GEMM operand copies (packing), and twice the activations (the Flipout
    // perturbation product holds the sign-flipped input and its own product beside the layer's
    // input and output); 4 MiB for allocator slack. Measured: 84 MiB against this bound's 91
    // (debug build); the build before weights were streamed peaked at 103 MiB (release) on
    // this checkpoint, the checkpoint's pages mapped beside the copied weights.
    let tight_bound = process + weights + 3.0 * noise + 2.0 * activations + 4.0 * MIB;
    let report = format!(
        "peak {:.1} MiB; process {:.1}, weights {:.1}, noise {:.1}, activations {:.1} MiB; bounds: issue {:.1}, tight {:.1} MiB",
        peak / MIB,
        process / MIB,
        weights / MIB,
        noise / MIB,
        activations / MIB,
        issue_bound / MIB,
        tight_bound / MIB
    );
    eprintln!("{report}");
    assert!(peak <= issue_bound, "over issue 10's bound (2x weights + activations): {report}");
    // Keeping the checkpoint's pages while copying, or a second copy of the weights, adds W.
    assert!(peak <= tight_bound, "over the weights once + one sample's noise + activations: {report}");
}
