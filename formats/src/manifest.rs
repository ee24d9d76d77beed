//! BPrune's manifests: `LayerNames.txt` (trainable variable names with their `:0` output
//! suffix) and `Ops_name_BNN.txt` / `OpsNames.txt` (every op of the graph, the input and
//! label placeholders first).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

/// File names BPrune gives its manifests.
pub const LAYER_NAMES_FILE: &str = "LayerNames.txt";
/// The op list names BPrune's scripts write, in the order they are looked for.
pub const OPS_FILES: [&str; 2] = ["Ops_name_BNN.txt", "OpsNames.txt"];

/// The manifests found next to a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Manifest {
    /// The `LayerNames.txt` read, if any.
    pub layer_names_file: Option<PathBuf>,
    /// Trainable variable names, `:0` stripped.
    pub layer_names: Vec<String>,
    /// The op list read, if any.
    pub ops_file: Option<PathBuf>,
    /// Number of ops listed.
    pub num_ops: usize,
    /// The input placeholder (first op).
    pub input_op: Option<String>,
    /// The label placeholder (second op).
    pub label_op: Option<String>,
}

/// Reads the non-empty lines of a manifest; a manifest that is not UTF-8 text is an error.
fn read_lines(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|_| Error::corrupt(path, "not UTF-8 text"))?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
}

/// Parses `LayerNames.txt`: one `name:0` a line.
pub fn read_layer_names(path: &Path) -> Result<Vec<String>> {
    read_lines(path)?
        .into_iter()
        .enumerate()
        .map(|(i, line)| match line.rsplit_once(':') {
            Some((name, idx)) if !name.is_empty() && idx.bytes().all(|b| b.is_ascii_digit()) && !idx.is_empty() => {
                Ok(name.to_string())
            }
            _ => Err(Error::corrupt(path, format!("line {}: '{line}' is not a tensor name like 'den_1/kernel_posterior_loc:0'", i + 1))),
        })
        .collect()
}

/// Parses an op-name list: one op a line, at least the two placeholders.
pub fn read_ops(path: &Path) -> Result<Vec<String>> {
    let ops = read_lines(path)?;
    if ops.len() < 2 {
        return Err(Error::corrupt(path, "fewer than two op names (input and label placeholders)"));
    }
    Ok(ops)
}

impl Manifest {
    /// Looks for manifests in `dir` and its parent (BPrune keeps them beside the folder of
    /// checkpoints as often as inside it). Returns an empty manifest when there are none.
    pub fn find(dir: &Path) -> Result<Manifest> {
        let mut m = Manifest::default();
        let candidates: Vec<&Path> = std::iter::once(dir).chain(dir.parent()).collect();
        if let Some(p) = candidates.iter().map(|d| d.join(LAYER_NAMES_FILE)).find(|p| p.is_file()) {
            m.layer_names = read_layer_names(&p)?;
            m.layer_names_file = Some(p);
        }
        let ops = candidates.iter().flat_map(|d| OPS_FILES.iter().map(move |f| d.join(f))).find(|p| p.is_file());
        if let Some(p) = ops {
            let ops = read_ops(&p)?;
            m.num_ops = ops.len();
            m.input_op = ops.first().cloned();
            m.label_op = ops.get(1).cloned();
            m.ops_file = Some(p);
        }
        Ok(m)
    }

    /// Whether any manifest was found.
    pub fn is_empty(&self) -> bool {
        self.layer_names_file.is_none() && self.ops_file.is_none()
    }

    /// Checks that every listed trainable variable is stored in the checkpoint; the error
    /// names the missing ones.
    pub fn check_against<'a>(&self, stored: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let stored: std::collections::HashSet<&str> = stored.into_iter().collect();
        let missing: Vec<&str> = self.layer_names.iter().map(String::as_str).filter(|n| !stored.contains(n)).collect();
        match (&self.layer_names_file, missing.is_empty()) {
            (Some(path), false) => Err(Error::invalid(
                path,
                format!("{} listed variable(s) not in the checkpoint: {}", missing.len(), missing.join(", ")),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_names_and_ops() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(LAYER_NAMES_FILE), "den_1/kernel_posterior_loc:0\nden_1/bias_posterior_loc:0\n")
            .expect("write");
        std::fs::write(dir.path().join("OpsNames.txt"), "Placeholder\nPlaceholder_1\nden_1/MatMul\n").expect("write");
        let sub = dir.path().join("ckpt");
        std::fs::create_dir(&sub).expect("mkdir");
        let m = Manifest::find(&sub).expect("found in parent");
        assert_eq!(m.layer_names, vec!["den_1/kernel_posterior_loc", "den_1/bias_posterior_loc"]);
        assert_eq!(m.input_op.as_deref(), Some("Placeholder"));
        assert_eq!(m.label_op.as_deref(), Some("Placeholder_1"));
        assert_eq!(m.num_ops, 3);
        assert!(m.check_against(["den_1/kernel_posterior_loc", "den_1/bias_posterior_loc"]).is_ok());
        let err = m.check_against(["den_1/kernel_posterior_loc"]).unwrap_err().to_string();
        assert!(err.contains("LayerNames.txt") && err.contains("den_1/bias_posterior_loc"), "{err}");
        std::fs::write(dir.path().join(LAYER_NAMES_FILE), "no suffix\n").expect("write");
        assert!(Manifest::find(&sub).is_err());
    }
}
