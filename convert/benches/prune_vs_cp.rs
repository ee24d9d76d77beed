//! Issue 4's benchmarks, both measured in one run:
//! 1. `prune` of a ~1 GiB float32 checkpoint against `cp` of the same bytes;
//! 2. `prune-batch` of 100 small checkpoints with `-j 2` against `-j 1`.
//!
//! `cargo bench -p bnn-convert --bench prune_vs_cp` (`BNN_BENCH_MIB` sets the size of 1).
//! Writes its section between markers in docs/performance.md.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{median, settle, timed, write_section};

/// Timed runs of each command; medians are reported.
const RUNS: usize = 5;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let bin = env!("CARGO_BIN_EXE_bnn-convert");
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench-data/prune");
    std::fs::create_dir_all(&base).expect("bench folder");

    // 1. One large checkpoint.
    let mib: u64 = std::env::var("BNN_BENCH_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(1024);
    let n = mib * 1024 * 1024 / (4 * 2 * 4096 * 4);
    let prefix = base.join("large/model.ckpt-1000");
    std::fs::create_dir_all(base.join("large")).expect("mkdir");
    let data = PathBuf::from(format!("{}.data-00000-of-00001", prefix.display()));
    if !data.is_file() {
        formats::synthetic::write_synthetic_bnn(&prefix, &[(n, 4096u64); 4], 7).expect("generate");
    }
    let bytes = std::fs::metadata(&data).expect("data").len();
    let out = base.join("large-out/model.ckpt-1000");
    let copy = base.join("copy.bin");
    Command::new("cat").arg(&data).stdout(Stdio::null()).status().expect("warm cache");
    let (mut tp, mut tc, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let _ = std::fs::remove_dir_all(base.join("large-out"));
        settle();
        let p = timed(Command::new(bin).args(["prune", "--threshold", "1", "-o"]).arg(&out).arg(&prefix));
        let _ = std::fs::remove_file(&copy);
        settle();
        let c = timed(Command::new("cp").arg(&data).arg(&copy));
        tp.push(p);
        tc.push(c);
        ratios.push(p / c);
    }
    let (tp, tc) = (median(tp), median(tc));
    let (ratio_lo, ratio_hi) = (ratios.iter().copied().fold(f64::INFINITY, f64::min), ratios.iter().copied().fold(0.0, f64::max));
    let ratio = median(ratios);

    // 2. A batch of 100 small checkpoints (BNN-FC 784-256-256-10 with global_step).
    let tree = base.join("tree");
    if !tree.join("run099").is_dir() {
        for i in 0..100 {
            let p = tree.join(format!("run{i:03}/model.ckpt-500"));
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            formats::synthetic::write_synthetic_bnn(&p, &[(784, 256), (256, 256), (256, 10)], i).expect("generate");
        }
    }
    let batch = |j: &str| {
        let out = base.join(format!("tree-out-{j}"));
        let _ = std::fs::remove_dir_all(&out);
        let t = timed(Command::new(bin).args(["prune-batch", "--quiet", "--threshold", "1", "-j", j, "-o"]).arg(&out).arg(&tree));
        let _ = std::fs::remove_dir_all(&out);
        t
    };
    let (mut t1, mut t2) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        settle();
        t1.push(batch("1"));
        settle();
        t2.push(batch("2"));
    }
    let (t1, t2) = (median(t1), median(t2));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let body = format!(
        "## Pruning (issue 4)\n\n\
         Measured by `cargo bench -p bnn-convert --bench prune_vs_cp` on this project's {cores}-core machine, page cache warm, \
         {RUNS} runs of each, alternating, dirty pages written back (`sync`) before each; medians.\n\n\
         | what | seconds |\n|---|---|\n\
         | `cp` of the {bytes}-byte data shard ({:.2} GiB) | {tc:.3} |\n\
         | `bnn-convert prune --threshold 1` of that checkpoint (TF output, every tensor rewritten, CRCs verified) | {tp:.3} |\n\
         | `prune-batch -j 1`, 100 BNN-FC 784-256-256-10 checkpoints | {t1:.3} |\n\
         | `prune-batch -j 2`, the same | {t2:.3} |\n\n\
         Ratio prune / cp: **{ratio:.2}x** (median of the {RUNS} paired runs' ratios, which ranged {ratio_lo:.2}x to {ratio_hi:.2}x; \
         target: at most 2x). Batch speed-up with 2 jobs: **{:.2}x** (target: at least 1.7x).\n",
        bytes as f64 / (1u64 << 30) as f64,
        t1 / t2
    );
    print!("{body}");
    write_section("prune", &body);
    let _ = std::fs::remove_file(&copy);
    let _ = std::fs::remove_dir_all(base.join("large-out"));
}
