//! Shared output helpers of the subcommands: aligned text tables and atomic file writes.

use std::path::Path;

use anyhow::Result;

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

/// Writes `bytes` to `path` through a temporary file renamed into place, so a failed run leaves
/// no partial file.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    formats::bundle::write_atomically(path, |w| {
        use std::io::Write;
        w.write_all(bytes).map_err(|e| formats::Error::io(path, e))
    })?;
    Ok(())
}
