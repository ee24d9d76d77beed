//! `prune-batch`: prune archives of checkpoints in parallel.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use surgery::batch::{discover, run_batch, write_summary, BatchOptions, Status};

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

/// Runs `prune-batch`.
pub fn run(a: Args) -> Result<()> {
    for r in &a.roots {
        if !r.is_dir() {
            bail!("{}: not a folder", r.display());
        }
    }
    let jobs = discover(&a.roots, a.all_steps)?;
    std::fs::create_dir_all(&a.output).with_context(|| format!("{}: cannot create folder", a.output.display()))?;
    let threads = a.jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let opts = BatchOptions { job: a.rule.job(), threads, compress: matches!(a.compress, Compress::Zstd), all_steps: a.all_steps };
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
        bar.finish_and_clear();
        return Ok(());
    };
    bar.finish_and_clear();
    write_summary(&a.output, &records)?;
    let count = |s: Status| records.iter().filter(|r| r.status == s).count();
    println!(
        "{} checkpoints: {} pruned, {} already done, {} failed; summary in {}",
        records.len(),
        count(Status::Ok),
        count(Status::Skipped),
        count(Status::Failed),
        a.output.join("summary.csv").display()
    );
    for r in records.iter().filter(|r| r.status == Status::Failed) {
        println!("  failed: {}: {}", r.path, r.error.as_deref().unwrap_or(""));
    }
    Ok(())
}
