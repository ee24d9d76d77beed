//! `prune-batch`: prune archives of checkpoints in parallel.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use crate::ExitWith;
use surgery::batch::{check_output_root, discover, run_batch, write_summary, BatchOptions, Status};

use crate::prune_cmd::Rule;

/// Output compression.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Compress {
    /// Plain checkpoint files.
    None,
    /// Each output checkpoint packed as `<prefix>.tar.zst`.
    Zstd,
}

/// Arguments of `prune-batch`.
#[derive(clap::Args)]
pub struct Args {
    /// Folders to walk for checkpoints and .tar / .tar.zst / .zst archives.
    #[arg(required = true)]
    roots: Vec<PathBuf>,
    /// Output folder: a mirror of the input trees, plus summary.csv and summary.json.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    rule: Rule,
    /// Every checkpoint step of each folder, not only the latest.
    #[arg(long)]
    all_steps: bool,
    /// Parallel jobs (default: the number of cores).
    #[arg(short, long)]
    jobs: Option<usize>,
    /// Compress outputs.
    #[arg(long, value_enum, default_value = "none")]
    compress: Compress,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Exit status when some checkpoints failed (documented in README).
pub const EXIT_SOME_FAILED: u8 = 3;

/// Runs `prune-batch`; `stop` is set by the first SIGINT/SIGTERM.
pub fn run(a: Args, stop: Arc<AtomicBool>) -> Result<()> {
    for r in &a.roots {
        if !r.is_dir() {
            bail!("{}: not a folder", r.display());
        }
    }
    check_output_root(&a.roots, &a.output)?;
    let jobs = discover(&a.roots, a.all_steps, Some(&a.output))?;
    let folder = formats::output_file::create_output_dir(&a.output)?;
    let threads = a.jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let opts = BatchOptions { job: a.rule.job(), threads, compress: matches!(a.compress, Compress::Zstd), all_steps: a.all_steps, stop };
    let bar = if a.quiet { ProgressBar::hidden() } else { ProgressBar::new(jobs.len() as u64) };
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} jobs {elapsed} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()));
    let progress = |done: &[surgery::batch::Record]| {
        if let Some(r) = done.last() {
            bar.set_message(r.path.clone());
        }
        bar.inc(1);
    };
    #[cfg(not(feature = "mpi"))]
    let records = run_batch(&jobs, &a.output, &opts, &progress)?;
    // Under mpirun each rank prunes its share; rank 0 alone writes the summary.
    #[cfg(feature = "mpi")]
    let Some(records) = surgery::batch::mpi::run_on_ranks(&jobs, &a.output, |mine| run_batch(mine, &a.output, &opts, &progress))? else {
        // Other ranks write into the same folder: it stays.
        folder.keep();
        bar.finish_and_clear();
        return Ok(());
    };
    bar.finish_and_clear();
    write_summary(&a.output, &records)?;
    folder.keep();
    let count = |s: Status| records.iter().filter(|r| r.status == s).count();
    let (failed, interrupted) = (count(Status::Failed), count(Status::Interrupted));
    println!(
        "{} checkpoints: {} pruned, {} already done, {} failed, {} not started (interrupted); summary in {}",
        records.len(),
        count(Status::Ok),
        count(Status::Skipped),
        failed,
        interrupted,
        a.output.join("summary.csv").display()
    );
    for r in records.iter().filter(|r| r.status == Status::Failed) {
        println!("  failed: {}: {}", r.path, r.error.as_deref().unwrap_or(""));
    }
    let summary = a.output.join("summary.csv");
    if interrupted > 0 {
        return Err(ExitWith::new(
            crate::EXIT_INTERRUPTED,
            format!("{}: interrupted with {interrupted} checkpoint(s) not started; run the same command again to finish", summary.display()),
        )
        .into());
    }
    if failed > 0 {
        return Err(ExitWith::new(EXIT_SOME_FAILED, format!("{}: {failed} of {} checkpoint(s) failed", summary.display(), records.len())).into());
    }
    Ok(())
}
