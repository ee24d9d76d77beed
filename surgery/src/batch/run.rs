//! Running the jobs in parallel, skipping finished ones, isolating failures.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use super::archive::extract_checkpoints;
use super::discover::{checkpoints_of, Job, JobSource};
use super::summary::{Record, Status};
use crate::error::{Error, Result};
use crate::prune::{prune_to_bundle, report_path, PruneJob, PruneReport};

/// How a batch runs.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// The pruning applied to every checkpoint.
    pub job: PruneJob,
    /// Worker threads.
    pub threads: usize,
    /// Pack each output checkpoint as `<prefix>.tar.zst`.
    pub compress: bool,
    /// Every step of each folder, not just the latest.
    pub all_steps: bool,
    /// Set (by a signal handler) to start no further checkpoint; those left are recorded as
    /// [`Status::Interrupted`], the ones in progress finish.
    pub stop: Arc<AtomicBool>,
}

impl BatchOptions {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Names scratch folders in the output tree: `.bnn-work-<pid>-<random>`.
const SCRATCH_PREFIX: &str = ".bnn-work-";

/// A scratch folder of this process in `out_root`, removed when dropped.
fn scratch_dir(out_root: &Path) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("{SCRATCH_PREFIX}{}-", std::process::id()))
        .tempdir_in(out_root)
        .map_err(|e| Error::io(out_root, e))
}

/// Removes the scratch folders that killed runs left in `out_root`.
fn sweep_stale_scratch(out_root: &Path) {
    let Ok(entries) = std::fs::read_dir(out_root) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(SCRATCH_PREFIX)).and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !formats::output_file::process_alive(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn interrupted(path: String, output: &Path) -> Record {
    let mut r = record(path, output, Instant::now(), Ok(None));
    r.status = Status::Interrupted;
    r
}


/// Marks an archive whose checkpoints are all done.
const ARCHIVE_DONE: &str = ".bnn-batch-done";

fn record(path: String, output: &Path, started: Instant, outcome: Result<Option<PruneReport>>) -> Record {
    let mut r = Record {
        path,
        output: output.display().to_string(),
        status: Status::Ok,
        error: None,
        sparsity: None,
        kept: None,
        total: None,
        layers: Vec::new(),
        seconds: started.elapsed().as_secs_f64(),
    };
    match outcome {
        Ok(Some(rep)) => {
            r.sparsity = Some(rep.sparsity);
            r.kept = Some(rep.kept);
            r.total = Some(rep.total);
            r.layers = rep.layers.iter().map(|l| (format!("{}/{}", l.layer, l.part), l.kept, l.total)).collect();
        }
        Ok(None) => r.status = Status::Skipped,
        Err(e) => {
            r.status = Status::Failed;
            r.error = Some(e.to_string());
        }
    }
    r
}

/// The finished output of a checkpoint job.
fn final_output(prefix: &Path, compress: bool) -> PathBuf {
    if compress {
        PathBuf::from(format!("{}.tar.zst", prefix.display()))
    } else {
        report_path(prefix)
    }
}

/// Prunes one checkpoint into `prefix` (or `prefix.tar.zst`); `Ok(None)` if already done.
fn prune_one(input: &Path, prefix: &Path, out_root: &Path, opts: &BatchOptions) -> Result<Option<PruneReport>> {
    if final_output(prefix, opts.compress).is_file() {
        return Ok(None);
    }
    if !opts.compress {
        return prune_to_bundle(input, prefix, &opts.job).map(Some);
    }
    let folder = formats::output_file::create_output_dir(formats::output_file::parent_dir(prefix))?;
    let work = scratch_dir(out_root)?;
    let name = prefix.file_name().map(PathBuf::from).unwrap_or_default();
    let report = prune_to_bundle(input, &work.path().join(&name), &opts.job)?;
    let packed = final_output(prefix, true);
    formats::output_file::write_atomically(&packed, |w| {
        let enc = zstd::stream::write::Encoder::new(w, 3).map_err(|e| formats::Error::io(&packed, e))?;
        let mut tar = tar::Builder::new(enc);
        tar.append_dir_all(".", work.path()).map_err(|e| formats::Error::io(&packed, e))?;
        let enc = tar.into_inner().map_err(|e| formats::Error::io(&packed, e))?;
        enc.finish().map_err(|e| formats::Error::io(&packed, e))?;
        Ok(())
    })?;
    folder.keep();
    Ok(Some(report))
}

/// Runs one job; an archive yields one record per checkpoint inside it.
fn run_job(job: &Job, out_root: &Path, opts: &BatchOptions) -> Vec<Record> {
    let started = Instant::now();
    match &job.source {
        JobSource::Checkpoint(input) => {
            let prefix = out_root.join(&job.output);
            if opts.stopped() {
                return vec![interrupted(input.display().to_string(), &prefix)];
            }
            vec![record(input.display().to_string(), &prefix, started, prune_one(input, &prefix, out_root, opts))]
        }
        JobSource::Archive(archive) => {
            let out_dir = out_root.join(&job.output);
            let label = archive.display().to_string();
            if out_dir.join(ARCHIVE_DONE).is_file() {
                return vec![record(label, &out_dir, started, Ok(None))];
            }
            if opts.stopped() {
                return vec![interrupted(label, &out_dir)];
            }
            match run_archive(archive, &out_dir, out_root, opts) {
                Ok(records) => records,
                Err(e) => vec![record(label, &out_dir, started, Err(e))],
            }
        }
    }
}

fn run_archive(archive: &Path, out_dir: &Path, out_root: &Path, opts: &BatchOptions) -> Result<Vec<Record>> {
    // Checkpoint files are streamed out of the archive into a scratch folder inside the output
    // tree (so it is on the same file system) and removed when the archive is done.
    let scratch = scratch_dir(out_root)?;
    if extract_checkpoints(archive, scratch.path())? == 0 {
        return Err(Error::invalid(archive, "no checkpoint files in the archive"));
    }
    let mut records = Vec::new();
    for entry in walkdir::WalkDir::new(scratch.path()).sort_by_file_name() {
        let entry = entry.map_err(|e| Error::invalid(archive, e.to_string()))?;
        if !entry.file_type().is_dir() {
            continue;
        }
        let dir = entry.path();
        let has_index = std::fs::read_dir(dir)
            .map(|rd| rd.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().ends_with(".index")))
            .unwrap_or(false);
        if !has_index {
            continue;
        }
        let rel = dir.strip_prefix(scratch.path()).unwrap_or(Path::new(""));
        for prefix in checkpoints_of(dir, opts.all_steps)? {
            let started = Instant::now();
            let name = prefix.file_name().map(PathBuf::from).unwrap_or_default();
            let out = out_dir.join(rel).join(&name);
            let label = format!("{}!{}", archive.display(), rel.join(&name).display());
            if opts.stopped() {
                records.push(interrupted(label, &out));
                continue;
            }
            records.push(record(label, &out, started, prune_one(&prefix, &out, out_root, opts)));
        }
    }
    if records.iter().all(|r| matches!(r.status, Status::Ok | Status::Skipped)) {
        File::create(out_dir.join(ARCHIVE_DONE)).map_err(|e| Error::io(out_dir, e))?;
    }
    Ok(records)
}

/// Runs every job on `opts.threads` threads, calling `on_done` after each, and returns the
/// records in job order. One failing checkpoint never stops the others.
pub fn run_batch(jobs: &[Job], out_root: &Path, opts: &BatchOptions, on_done: &(dyn Fn(&[Record]) + Sync)) -> Result<Vec<Record>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.max(1))
        .build()
        .map_err(|e| Error::invalid(out_root, format!("cannot start {} threads: {e}", opts.threads)))?;
    sweep_stale_scratch(out_root);
    let nested: Vec<Vec<Record>> = pool.install(|| {
        jobs.par_iter()
            .map(|job| {
                let records = run_job(job, out_root, opts);
                on_done(&records);
                records
            })
            .collect()
    });
    Ok(nested.into_iter().flatten().collect())
}
