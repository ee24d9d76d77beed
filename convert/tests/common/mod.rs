//! Helpers shared by the command-line tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's `fixtures/` folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// Runs `bnn-convert` with `args`.
pub fn bnn_convert(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bnn-convert"));
    for a in args {
        cmd.arg(a);
    }
    cmd.output().expect("bnn-convert runs")
}

/// Asserts a failed run: non-zero exit, exactly one line on stderr containing every `needle`.
pub fn assert_one_line_error(out: &Output, needles: &[&str]) {
    assert!(!out.status.success(), "expected failure, got success");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one-line error expected, got:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "error should mention '{n}': {err}");
    }
}

/// Copies the files of fixture checkpoint `name` into a fresh temporary folder.
pub fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for e in std::fs::read_dir(fixtures().join(name)).expect("fixture folder") {
        let e = e.expect("entry");
        if e.path().is_file() {
            std::fs::copy(e.path(), dir.path().join(e.file_name())).expect("copy");
        }
    }
    dir
}

/// The Python with TensorFlow that the interoperability tests use, if installed.
/// With `BNN_REQUIRE_PYTHON=1` (set by scripts/test.sh) its absence is a failure.
pub fn tf_python() -> Option<PathBuf> {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let ok = py.is_file()
        && Command::new(&py)
            .args(["-c", "import tensorflow"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    if ok {
        return Some(py);
    }
    if std::env::var("BNN_REQUIRE_PYTHON").as_deref() == Ok("1") {
        panic!("BNN_REQUIRE_PYTHON=1 but {} cannot import tensorflow", py.display());
    }
    eprintln!("skipped: no Python TensorFlow in .venv (run scripts/setup-python.sh)");
    None
}

/// Files in `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
