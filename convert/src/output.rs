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

/// Per kind (`batch_norm`, `deterministic`, `other`): how many scopes, variables and values
/// are not Bayesian (the JSON of `snr` and `inspect`).
pub fn non_bayesian_counts(groups: &[formats::layout::NonBayesian]) -> serde_json::Value {
    let mut counts = serde_json::Map::new();
    for g in groups {
        let c = counts.entry(g.kind).or_insert_with(|| serde_json::json!({"layers": 0, "variables": 0, "values": 0}));
        let add = |c: &mut serde_json::Value, k: &str, n: u64| c[k] = (c[k].as_u64().unwrap_or(0) + n).into();
        add(c, "layers", 1);
        add(c, "variables", g.variables.len() as u64);
        add(c, "values", g.values);
    }
    counts.into()
}

/// The text section of `snr` and `inspect` listing the variables that are not Bayesian: one
/// row a scope (KIND, LAYER, VARIABLES, VALUES), then a total per kind.
pub fn print_non_bayesian(groups: &[formats::layout::NonBayesian]) {
    if groups.is_empty() {
        return;
    }
    println!("not Bayesian (no SNR, never pruned):");
    let header = ["  KIND", "LAYER", "VARIABLES", "VALUES"].map(String::from).to_vec();
    let rows = groups.iter().map(|g| {
        let leaves: Vec<&str> = g.variables.iter().map(|v| v.strip_prefix(&format!("{}/", g.layer)).unwrap_or(v)).collect();
        vec![format!("  {}", g.kind), g.layer.clone(), leaves.join(", "), g.values.to_string()]
    });
    print!("{}", table(&std::iter::once(header).chain(rows).collect::<Vec<_>>()));
    let counts = non_bayesian_counts(groups);
    for (kind, c) in counts.as_object().into_iter().flatten() {
        println!("  {kind}: {} layers, {} variables, {} values", c["layers"], c["variables"], c["values"]);
    }
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
