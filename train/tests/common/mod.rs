//! Helpers shared by the trainer's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The bundled digits.
pub fn digits() -> PathBuf {
    root().join("fixtures/data")
}

/// `bnn-train` with TensorFlow's info logging off.
pub fn bnn_train() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bnn-train"));
    c.env("TF_CPP_MIN_LOG_LEVEL", "2");
    c
}

/// Runs and requires success; returns stdout.
pub fn ok(c: &mut Command) -> String {
    let out = c.output().expect("bnn-train starts");
    assert!(out.status.success(), "failed: {:?}\nstderr:\n{}", c, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `bnn-train train` on the digits with `args`, report on stdout, parsed.
pub fn train_json(args: &[&str]) -> serde_json::Value {
    let mut c = bnn_train();
    c.arg("train").arg("--data-dir").arg(digits()).args(["--quiet", "--report", "-"]).args(args);
    serde_json::from_str(&ok(&mut c)).expect("report is JSON")
}

/// Runs and requires failure; returns the output.
pub fn fails(c: &mut Command) -> Output {
    let out = c.output().expect("bnn-train starts");
    assert!(!out.status.success(), "unexpected success: {c:?}");
    out
}

/// A sibling binary of this workspace built into the same target folder, if built.
pub fn workspace_bin(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/test-xxxx -> target/<profile>/<name>
    let p = exe.parent()?.parent()?.join(name);
    p.is_file().then_some(p)
}

/// The Python of .venv when it can import TensorFlow.
pub fn python_with_tf() -> Option<PathBuf> {
    let py = root().join(".venv/bin/python");
    let ok = Command::new(&py).args(["-c", "import tensorflow"]).env("TF_CPP_MIN_LOG_LEVEL", "3").output().ok()?.status.success();
    ok.then_some(py)
}

/// Whether the environment says an optional dependency must be there (CI sets these).
pub fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// Step losses of a report.
pub fn step_loss(r: &serde_json::Value) -> Vec<f64> {
    r["step_loss"].as_array().expect("step_loss").iter().map(|v| v.as_f64().expect("number")).collect()
}
