//! Issue 3's benchmark: converting a ~1 GiB float32 checkpoint to safetensors against `cp` of
//! the same bytes, in the same run, and the converter's peak resident memory.
//!
//! `cargo bench -p bnn-convert --bench convert_vs_cp` (set `BNN_BENCH_MIB` for another size).
//! Writes its table between markers in docs/performance.md.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{median, timed, write_section};

const RUNS: usize = 3;

fn peak_rss_of_children_kib() -> i64 {
    // SAFETY: getrusage only writes the struct we hand it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    usage.ru_maxrss
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mib: u64 = std::env::var("BNN_BENCH_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(1024);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench-data/convert");
    std::fs::create_dir_all(&root).expect("bench folder");
    let prefix = root.join("model.ckpt-1000");
    // Four layers of [n, 4096] mu + rho, float32: 4 * 2 * n * 4096 * 4 bytes = mib MiB.
    let n = mib * 1024 * 1024 / (4 * 2 * 4096 * 4);
    let layers = vec![(n, 4096u64); 4];
    let data = PathBuf::from(format!("{}.data-00000-of-00001", prefix.display()));
    let expected_bytes = 4 * (2 * n * 4096 + 4096) * 4 + 8;
    if std::fs::metadata(&data).map(|m| m.len()).ok() != Some(expected_bytes) {
        eprintln!("generating {mib} MiB checkpoint in {}", root.display());
        formats::synthetic::write_synthetic_bnn(&prefix, &layers, 42).expect("generate");
    }
    let bytes = std::fs::metadata(&data).expect("data shard").len();
    let bin = env!("CARGO_BIN_EXE_bnn-convert");
    let out = root.join("out.safetensors");
    let copy = root.join("copy.bin");

    // Warm the page cache once so both contenders read from memory.
    timed(Command::new("cat").arg(&data));
    let mut convert = Vec::new();
    let mut cp = Vec::new();
    for _ in 0..RUNS {
        let _ = std::fs::remove_file(&out);
        convert.push(timed(Command::new(bin).arg("ckpt-to-safetensors").arg(&prefix).arg("-o").arg(&out)));
        let _ = std::fs::remove_file(&copy);
        cp.push(timed(Command::new("cp").arg(&data).arg(&copy)));
    }
    // Children so far: cat, the converters and cp; the converters dominate.
    let peak_kib = peak_rss_of_children_kib();
    let (tc, tp) = (median(convert), median(cp));
    let ratio = tc / tp;
    let gib = bytes as f64 / (1u64 << 30) as f64;
    let body = format!(
        "## Conversion: `ckpt-to-safetensors` against `cp` (issue 3)\n\n\
         Measured by `cargo bench -p bnn-convert --bench convert_vs_cp` on this project's 2-core machine: a synthetic float32 \
         BNN checkpoint of {bytes} bytes ({gib:.2} GiB, 4 Flipout layers), page cache warm, median of {RUNS} runs each, both \
         in the same run.\n\n\
         | what | seconds | GB/s |\n|---|---|---|\n\
         | `cp` of the data shard | {tp:.3} | {:.2} |\n\
         | `bnn-convert ckpt-to-safetensors` (CRC32C verified) | {tc:.3} | {:.2} |\n\n\
         Ratio convert / cp: **{ratio:.2}x** (target: at most 1.5x). Peak RSS of the converter: **{:.1} MiB** \
         (target: under 100 MiB; `getrusage(RUSAGE_CHILDREN)` maximum over the run's child processes).\n",
        bytes as f64 / tp / 1e9,
        bytes as f64 / tc / 1e9,
        peak_kib as f64 / 1024.0
    );
    print!("{body}");
    write_section("convert", &body);
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&copy);
}
