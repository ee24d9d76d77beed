//! Shared output helpers of the subcommands: aligned text tables, atomic file writes, and the
//! checks that keep outputs off the inputs.

use std::path::Path;

use anyhow::Result;
use formats::checkpoint::Checkpoint;
use formats::input_files::InputFiles;
use formats::output_file::{create_output_dir, parent_dir, CreatedDirs};

/// Left-aligned columns separated by two spaces, one row a line.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    out
}

/// Writes `bytes` to `path` so that a failed or killed run leaves no partial file.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    formats::output_file::write_atomically(path, |w| {
        use std::io::Write;
        w.write_all(bytes).map_err(|e| formats::Error::io(path, e))
    })?;
    Ok(())
}

/// Every file of the checkpoint (or safetensors file) at `input`.
pub fn checkpoint_files(input: &Path) -> Result<InputFiles> {
    let mut files = InputFiles::new();
    files.add_checkpoint(&Checkpoint::open(input)?);
    Ok(files)
}

/// Creates the folder an output file (or checkpoint prefix) goes in; the folders made are
/// removed again unless the caller keeps them after success.
pub fn output_folder(output: &Path) -> Result<CreatedDirs> {
    Ok(create_output_dir(parent_dir(output))?)
}
