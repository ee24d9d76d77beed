//! Reading checkpoints out of `.tar`, `.tar.zst` and `.zst` archives by streaming: one pass over
//! the archive, keeping only checkpoint files (indexes, data shards, state files, meta graphs,
//! manifests) and refusing entries that would land outside the archive.

use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// Whether an archive member is part of a checkpoint.
fn is_checkpoint_file(name: &str) -> bool {
    name == "checkpoint"
        || name.ends_with(".index")
        || name.contains(".data-")
        || name.ends_with(".meta")
        || name == formats::manifest::LAYER_NAMES_FILE
        || formats::manifest::OPS_FILES.contains(&name)
}

/// A member path made safe: relative, without `..`, root or prefix components.
fn safe_member_path(archive: &Path, raw: &Path) -> Result<PathBuf> {
    let mut clean = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => clean.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(Error::invalid(archive, format!("refused archive entry '{}': it leaves the archive's folder", raw.display())))
            }
        }
    }
    Ok(clean)
}

/// Opens an archive as a decompressed byte stream (zstd for `.zst`/`.tzst`).
fn open_stream(archive: &Path) -> Result<Box<dyn Read>> {
    let file = File::open(archive).map_err(|e| Error::io(archive, e))?;
    let name = archive.to_string_lossy();
    if name.ends_with(".zst") || name.ends_with(".tzst") {
        let decoder = zstd::stream::read::Decoder::new(file).map_err(|e| Error::io(archive, e))?;
        Ok(Box::new(decoder))
    } else {
        Ok(Box::new(file))
    }
}

/// Streams `archive` and writes its checkpoint files under `into` (their relative folders kept).
/// Every entry is checked before anything is written: an unsafe path fails the whole archive.
pub fn extract_checkpoints(archive: &Path, into: &Path) -> Result<usize> {
    let mut tar = tar::Archive::new(open_stream(archive)?);
    let entries = tar.entries().map_err(|e| Error::io(archive, e))?;
    let mut written = 0;
    for entry in entries {
        let mut entry = entry.map_err(|e| Error::invalid(archive, format!("not a readable tar archive: {e}")))?;
        let raw = entry.path().map_err(|e| Error::invalid(archive, format!("bad entry name: {e}")))?.into_owned();
        let rel = safe_member_path(archive, &raw)?;
        let kind = entry.header().entry_type();
        if !kind.is_file() {
            if kind.is_symlink() || kind.is_hard_link() {
                return Err(Error::invalid(archive, format!("refused archive entry '{}': links are not followed", raw.display())));
            }
            continue;
        }
        let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !is_checkpoint_file(name) {
            continue;
        }
        let dest = into.join(&rel);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut out = File::create(&dest).map_err(|e| Error::io(&dest, e))?;
        std::io::copy(&mut entry, &mut out).map_err(|e| Error::invalid(archive, format!("reading '{}': {e}", raw.display())))?;
        written += 1;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_paths_are_refused() {
        let a = Path::new("a.tar");
        assert_eq!(safe_member_path(a, Path::new("./run/ckpt/checkpoint")).expect("safe"), PathBuf::from("run/ckpt/checkpoint"));
        assert!(safe_member_path(a, Path::new("../evil")).is_err());
        assert!(safe_member_path(a, Path::new("run/../../evil")).is_err());
        assert!(safe_member_path(a, Path::new("/etc/passwd")).is_err());
        assert!(is_checkpoint_file("model.ckpt-1.data-00000-of-00001"));
        assert!(!is_checkpoint_file("events.out.tfevents.1"));
    }
}
