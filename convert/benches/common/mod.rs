//! Helpers shared by the benchmarks: timing child processes and writing their section of
//! docs/performance.md.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Seconds a command takes (its output discarded); panics if it fails.
pub fn timed(cmd: &mut Command) -> f64 {
    let start = Instant::now();
    let status = cmd.stdout(Stdio::null()).status().expect("command starts");
    assert!(status.success(), "{cmd:?} failed");
    start.elapsed().as_secs_f64()
}

/// Writes dirty pages back (`sync`), so that a timed write does not pay for the previous
/// run's writeback: on this project's VMs a 1 GiB write took 0.3 s or 1.5 s depending on it.
pub fn settle() {
    let _ = Command::new("sync").status();
}

/// The median of some timings.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Replaces the text between `<!-- bench:NAME -->` markers in docs/performance.md (appending
/// the section if it is not there yet), leaving the other benchmarks' sections alone.
pub fn write_section(name: &str, body: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/performance.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Performance\n".into());
    let (open, close) = (format!("<!-- bench:{name} -->"), format!("<!-- /bench:{name} -->"));
    let section = format!("{open}\n{body}{close}");
    let text = match (text.find(&open), text.find(&close)) {
        (Some(a), Some(b)) if b > a => format!("{}{}{}", &text[..a], section, &text[b + close.len()..]),
        _ => format!("{}\n\n{section}\n", text.trim_end()),
    };
    std::fs::write(&path, text).expect("write docs/performance.md");
}
