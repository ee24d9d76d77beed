//! How TensorFlow variable names become safetensors tensor names, and back.
//!
//! The rule (documented in `docs/naming.md`): the TensorFlow variable name with every `/`
//! replaced by `.` (`den_1/kernel_posterior_loc` -> `den_1.kernel_posterior_loc`), as PyTorch
//! and most safetensors tools name parameters. TF2 checkpoint keys are first mapped to the
//! variable's name through the object graph. The original checkpoint key of every tensor is
//! kept in the `__metadata__` entry [`META_TF_KEYS`], so the conversion back restores it
//! exactly.

use std::collections::{BTreeMap, HashMap};

/// Metadata entry: JSON object mapping each safetensors name to its TensorFlow checkpoint key.
pub const META_TF_KEYS: &str = "tf_keys";
/// Metadata entry: the checkpoint the file was converted from.
pub const META_SOURCE: &str = "source";
/// Metadata entry: the training step.
pub const META_GLOBAL_STEP: &str = "global_step";
/// Metadata entry: JSON of the BNN layer grouping.
pub const META_LAYERS: &str = "bnn_layers";
/// Metadata entry: JSON of the BPrune manifest check.
pub const META_MANIFEST: &str = "manifest";
/// Metadata entry: the tool and version that wrote the file.
pub const META_WRITER: &str = "writer";

/// The safetensors name of a TensorFlow variable name.
pub fn normalize(variable_name: &str) -> String {
    variable_name.replace('/', ".")
}

/// The TensorFlow variable name of a safetensors tensor: taken from its original checkpoint key
/// when that is a TF1 name, else by the inverse of [`normalize`].
pub fn variable_name_for(safetensors_name: &str, original_key: Option<&str>) -> String {
    match original_key {
        Some(key) if !key.contains("/.ATTRIBUTES/") && !key.contains("/.OPTIMIZER_SLOT/") => key.to_string(),
        _ => safetensors_name.replace('.', "/"),
    }
}

/// Reads [`META_TF_KEYS`] from safetensors metadata (empty when absent or malformed).
pub fn tf_keys_from_metadata(metadata: &BTreeMap<String, String>) -> HashMap<String, String> {
    metadata.get(META_TF_KEYS).and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default()
}

/// Assigns unique safetensors names to variables, given as (checkpoint key, variable name)
/// pairs. A name that would collide keeps its checkpoint key unchanged instead.
pub fn assign_names<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<String> {
    let vars: Vec<(&str, &str)> = vars.into_iter().collect();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for (_, name) in &vars {
        *counts.entry(normalize(name)).or_default() += 1;
    }
    vars.iter()
        .map(|(key, name)| {
            let n = normalize(name);
            if counts[&n] == 1 {
                n
            } else {
                key.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(normalize("den_1/kernel_posterior_loc"), "den_1.kernel_posterior_loc");
        assert_eq!(variable_name_for("den_1.kernel_posterior_loc", None), "den_1/kernel_posterior_loc");
        assert_eq!(variable_name_for("x.y", Some("x/y")), "x/y");
        assert_eq!(
            variable_name_for("dense_flipout.kernel_posterior_loc", Some("model/layer_with_weights-0/kernel_posterior_loc/.ATTRIBUTES/VARIABLE_VALUE")),
            "dense_flipout/kernel_posterior_loc"
        );
        let names = assign_names([("a/b", "a/b"), ("k1", "same"), ("k2", "same")]);
        assert_eq!(names, vec!["a.b", "k1", "k2"]);
    }
}
