//! The files a command reads, so that none of them is ever an output: a checkpoint is its
//! index, every data shard, its `.meta` graph, its BPrune manifests and its folder's
//! `checkpoint` state file; a safetensors file or a data set is itself. Paths are compared
//! after resolving symbolic links and `..`, and existing files also by device and inode, so
//! hard links are caught too.

use std::path::{Path, PathBuf};

use crate::checkpoint::Checkpoint;
use crate::checkpoint_state::STATE_FILE;
use crate::error::{Error, Result};
use crate::output_file::parent_dir;

/// One input file: as the user will recognise it, where it really is, and its identity.
#[derive(Debug, Clone)]
struct InputFile {
    shown: PathBuf,
    resolved: PathBuf,
    id: Option<(u64, u64)>,
}

/// The set of files a command reads.
#[derive(Debug, Clone, Default)]
pub struct InputFiles {
    files: Vec<InputFile>,
}

/// Device and inode of an existing file.
fn identity(path: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// `path` with its folder's symbolic links and `..` resolved (the file itself need not exist;
/// if it is a symbolic link, it is followed).
fn resolve(path: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    let dir = std::fs::canonicalize(parent_dir(path)).unwrap_or_else(|_| parent_dir(path).to_path_buf());
    match path.file_name() {
        Some(name) => dir.join(name),
        None => dir,
    }
}

impl InputFiles {
    /// No inputs yet.
    pub fn new() -> InputFiles {
        InputFiles::default()
    }

    /// Adds one file (which may not exist yet: a companion that an output could create).
    pub fn add_file(&mut self, path: &Path) {
        self.files.push(InputFile { shown: path.to_path_buf(), resolved: resolve(path), id: identity(path) });
    }

    /// Adds every file of an opened checkpoint.
    pub fn add_checkpoint(&mut self, ckpt: &Checkpoint) {
        let Some(bundle) = ckpt.bundle() else {
            self.add_file(ckpt.path());
            return;
        };
        self.add_file(bundle.index_path());
        for id in 0..bundle.header().num_shards {
            self.add_file(&bundle.shard_path(id));
        }
        let prefix = bundle.prefix();
        self.add_file(&PathBuf::from(format!("{}.meta", prefix.display())));
        let manifest = ckpt.manifest();
        for m in manifest.layer_names_file.iter().chain(manifest.ops_file.iter()) {
            self.add_file(m);
        }
        // Writing a checkpoint beside this one would make the state file name the new one.
        self.add_file(&parent_dir(prefix).join(STATE_FILE));
    }

    /// The input that `output` would overwrite, if any.
    pub fn clash(&self, output: &Path) -> Option<&Path> {
        let resolved = resolve(output);
        let id = identity(output);
        self.files.iter().find(|f| f.resolved == resolved || (id.is_some() && f.id == id)).map(|f| f.shown.as_path())
    }

    /// Fails, naming both paths, if writing `output` would overwrite or truncate an input.
    pub fn check_output(&self, output: &Path) -> Result<()> {
        match self.clash(output) {
            Some(input) => Err(Error::invalid(
                output,
                format!("refusing to write over input file {} (choose another output path)", input.display()),
            )),
            None => Ok(()),
        }
    }

    /// [`InputFiles::check_output`] for every file a TensorFlow checkpoint written at `prefix`
    /// consists of, with `extra` suffixes for further files written beside it (`.prune.json`).
    pub fn check_bundle_output(&self, prefix: &Path, extra: &[&str]) -> Result<()> {
        for p in bundle_output_files(prefix, extra) {
            self.check_output(&p)?;
        }
        Ok(())
    }
}

/// The files of a single-shard checkpoint at `prefix` that a conversion writes or may write:
/// index, data shard, `.meta`, the folder's state file, and `prefix` + each of `extra`.
pub fn bundle_output_files(prefix: &Path, extra: &[&str]) -> Vec<PathBuf> {
    let mut files = vec![
        crate::bundle::index_path(prefix),
        crate::bundle::data_shard_path(prefix, 0, 1),
        PathBuf::from(format!("{}.meta", prefix.display())),
        parent_dir(prefix).join(STATE_FILE),
    ];
    files.extend(extra.iter().map(|e| PathBuf::from(format!("{}{e}", prefix.display()))));
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_dots_and_hard_links_are_the_same_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.safetensors");
        std::fs::write(&a, b"x").expect("write");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        let mut inputs = InputFiles::new();
        inputs.add_file(&a);
        assert!(inputs.check_output(&dir.path().join("sub/../a.safetensors")).is_err(), "..");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&a, dir.path().join("link.safetensors")).expect("symlink");
            assert!(inputs.clash(&dir.path().join("link.safetensors")).is_some(), "symlink");
            std::os::unix::fs::symlink(dir.path(), dir.path().join("sub/up")).expect("dir symlink");
            assert!(inputs.clash(&dir.path().join("sub/up/a.safetensors")).is_some(), "folder symlink");
        }
        std::fs::hard_link(&a, dir.path().join("hard.safetensors")).expect("hard link");
        assert!(inputs.clash(&dir.path().join("hard.safetensors")).is_some(), "hard link");
        assert!(inputs.clash(&dir.path().join("b.safetensors")).is_none());
        let e = inputs.check_output(&a).expect_err("same path").to_string();
        assert!(e.contains("a.safetensors") && e.contains("refusing"), "{e}");
    }
}
