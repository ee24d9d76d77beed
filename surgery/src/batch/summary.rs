//! The batch summary: one record per checkpoint, written as CSV and JSON.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Result;

/// How a checkpoint fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Pruned now.
    Ok,
    /// Already done by an earlier run.
    Skipped,
    /// Could not be pruned; see `error`.
    Failed,
    /// Not started: the run was interrupted (Ctrl-C or SIGTERM) first; the next run does it.
    Interrupted,
}

/// One line of the summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The checkpoint (`archive!member/prefix` for one inside an archive).
    pub path: String,
    /// Where its output is.
    pub output: String,
    /// Outcome.
    pub status: Status,
    /// The error, for a failed one.
    pub error: Option<String>,
    /// Fraction of weights pruned.
    pub sparsity: Option<f64>,
    /// Weights kept.
    pub kept: Option<usize>,
    /// Weights considered.
    pub total: Option<usize>,
    /// (layer/part, kept, total) per posterior.
    pub layers: Vec<(String, usize, usize)>,
    /// Wall-clock seconds spent.
    pub seconds: f64,
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes `summary.csv` and `summary.json` into `dir`, atomically.
pub fn write_summary(dir: &Path, records: &[Record]) -> Result<()> {
    let mut csv = String::from("path,output,status,sparsity,kept,total,layers,seconds,error\n");
    for r in records {
        let status = match r.status {
            Status::Ok => "ok",
            Status::Skipped => "skipped",
            Status::Failed => "failed",
            Status::Interrupted => "interrupted",
        };
        let layers: Vec<String> = r.layers.iter().map(|(l, k, t)| format!("{l}:{k}/{t}")).collect();
        let cells = [
            csv_field(&r.path),
            csv_field(&r.output),
            status.to_string(),
            r.sparsity.map(|s| format!("{s:.6}")).unwrap_or_default(),
            r.kept.map(|k| k.to_string()).unwrap_or_default(),
            r.total.map(|t| t.to_string()).unwrap_or_default(),
            csv_field(&layers.join(";")),
            format!("{:.3}", r.seconds),
            csv_field(r.error.as_deref().unwrap_or("")),
        ];
        csv += &cells.join(",");
        csv.push('\n');
    }
    let json = serde_json::to_string_pretty(records).map_err(|e| crate::Error::invalid(dir, e.to_string()))?;
    for (name, text) in [("summary.csv", csv), ("summary.json", json)] {
        let path = dir.join(name);
        formats::bundle::write_atomically(&path, |w| {
            use std::io::Write;
            w.write_all(text.as_bytes()).map_err(|e| formats::Error::io(&path, e))
        })?;
    }
    Ok(())
}
