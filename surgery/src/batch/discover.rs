//! Finding the work: checkpoint folders (by their `checkpoint` state file or `*.index` files)
//! and archives, each with the place its output goes in the mirror tree.

use std::path::{Path, PathBuf};

use formats::checkpoint_state::{checkpoints_in, resolve_checkpoint, STATE_FILE};
use walkdir::WalkDir;

use crate::error::{Error, Result};

/// Where a job's checkpoints come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobSource {
    /// A checkpoint prefix on disk.
    Checkpoint(PathBuf),
    /// An archive whose checkpoints are read by streaming it.
    Archive(PathBuf),
}

/// One unit of work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// What to read.
    pub source: JobSource,
    /// Output location relative to the output folder: a prefix for a checkpoint, a folder for
    /// an archive's checkpoints.
    pub output: PathBuf,
}

/// Whether a file name is an archive `prune-batch` reads.
pub fn is_archive(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".tar") || name.ends_with(".tar.zst") || name.ends_with(".tzst") || name.ends_with(".zst")
}

/// The archive's name without its archive extensions.
pub fn archive_stem(path: &Path) -> String {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("archive");
    [".tar.zst", ".tzst", ".tar", ".zst"].iter().find_map(|e| name.strip_suffix(e)).unwrap_or(name).to_string()
}

/// Checkpoint prefixes in `dir`: all steps, or the latest.
pub fn checkpoints_of(dir: &Path, all_steps: bool) -> Result<Vec<PathBuf>> {
    if all_steps {
        return Ok(checkpoints_in(dir)?);
    }
    Ok(vec![resolve_checkpoint(dir)?])
}

/// The folder of the output tree that mirrors input root `root` is `<out_root>/<this name>`.
fn root_name(root: &Path) -> Result<PathBuf> {
    Ok(root.canonicalize().map_err(|e| Error::io(root, e))?.file_name().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("root")))
}

/// `path` resolved as far as it exists (a missing tail is kept as written).
fn resolved(path: &Path) -> PathBuf {
    let mut missing = Vec::new();
    let mut at = path.to_path_buf();
    loop {
        if let Ok(c) = at.canonicalize() {
            return missing.iter().rev().fold(c, |acc: PathBuf, part| acc.join(part));
        }
        match (at.file_name().map(|n| n.to_os_string()), at.parent()) {
            (Some(name), Some(parent)) => {
                missing.push(name);
                at = if parent.as_os_str().is_empty() { PathBuf::from(".") } else { parent.to_path_buf() };
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// Refuses an output folder that would put outputs over inputs: the output root equal to an
/// input root, or an input root inside the output root's mirror of it. An output root inside an
/// input root is fine: discovery skips it.
pub fn check_output_root(roots: &[PathBuf], out_root: &Path) -> Result<()> {
    let out = resolved(out_root);
    for root in roots {
        let input = resolved(root);
        let mirror = resolved(&out_root.join(root_name(root)?));
        if input == out || input.starts_with(&mirror) {
            return Err(Error::invalid(
                out_root,
                format!("refusing to write the pruned tree over input folder {} (choose an output folder outside it, or a new folder inside it)", root.display()),
            ));
        }
    }
    Ok(())
}

/// Walks `roots` (sorted, deterministic) and lists the jobs, skipping the output tree `skip`
/// where it lies inside a root. Outputs of root `r` go under the output folder's
/// `<r's name>/`, mirroring the tree.
pub fn discover(roots: &[PathBuf], all_steps: bool, skip: Option<&Path>) -> Result<Vec<Job>> {
    let skip = skip.map(resolved);
    let mut jobs = Vec::new();
    for root in roots {
        let name = root_name(root)?;
        let walk = WalkDir::new(root).sort_by_file_name().into_iter().filter_entry(|e| {
            // Only folders are compared: a resolve per folder, not per file.
            !(e.file_type().is_dir() && skip.as_ref().is_some_and(|s| e.path().canonicalize().is_ok_and(|c| &c == s)))
        });
        for entry in walk {
            let entry = entry.map_err(|e| Error::invalid(root, format!("cannot walk: {e}")))?;
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap_or(path);
            if entry.file_type().is_file() && is_archive(path) {
                jobs.push(Job { source: JobSource::Archive(path.to_path_buf()), output: name.join(rel.with_file_name(archive_stem(path))) });
                continue;
            }
            if !entry.file_type().is_dir() {
                continue;
            }
            let has_checkpoints = path.join(STATE_FILE).is_file()
                || std::fs::read_dir(path)
                    .map(|rd| rd.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().ends_with(".index")))
                    .unwrap_or(false);
            if !has_checkpoints {
                continue;
            }
            // A folder that cannot be resolved still becomes a job, so the summary reports it.
            match checkpoints_of(path, all_steps) {
                Ok(prefixes) => {
                    for p in prefixes {
                        let file = p.file_name().map(PathBuf::from).unwrap_or_default();
                        jobs.push(Job { output: name.join(rel).join(file), source: JobSource::Checkpoint(p) });
                    }
                }
                Err(_) => jobs.push(Job { output: name.join(rel).join("checkpoint"), source: JobSource::Checkpoint(path.to_path_buf()) }),
            }
        }
    }
    Ok(jobs)
}
