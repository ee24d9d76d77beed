//! TF2 object-based checkpoints: the `_CHECKPOINTABLE_OBJECT_GRAPH` tensor, decoded far enough
//! to map each checkpoint key to the object path it is saved under and the variable's name.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use protobuf::Message;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::proto::trackable_object_graph::TrackableObjectGraph;

/// Key of the tensor holding the serialized object graph.
pub const OBJECT_GRAPH_KEY: &str = "_CHECKPOINTABLE_OBJECT_GRAPH";
/// Suffix of the key of a variable's value in a TF2 checkpoint.
pub const VARIABLE_VALUE_SUFFIX: &str = "/.ATTRIBUTES/VARIABLE_VALUE";

/// What the object graph says about one checkpoint key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SavedAttribute {
    /// Path of the owning object from the root, by local names (`model/layer_with_weights-0/kernel`).
    pub object_path: String,
    /// The variable's own name when it was created (`dense_flipout/kernel_posterior_loc`), or "".
    pub full_name: String,
}

/// An optimizer slot: `slot_key` holds slot `slot_name` of the variable saved at `original_key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotVariable {
    /// Checkpoint key of the variable the slot belongs to.
    pub original_key: String,
    /// Slot name (`m`, `v`, `rms`, `momentum`).
    pub slot_name: String,
    /// Checkpoint key of the slot's value.
    pub slot_key: String,
}

/// The decoded object graph.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObjectGraph {
    /// Every saved attribute, by checkpoint key.
    pub attributes: HashMap<String, SavedAttribute>,
    /// Every optimizer slot variable.
    pub slots: Vec<SlotVariable>,
}

impl ObjectGraph {
    /// Decodes the serialized `TrackableObjectGraph`; `path` names the checkpoint in errors.
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<ObjectGraph> {
        let graph = TrackableObjectGraph::parse_from_bytes(bytes)
            .map_err(|e| Error::corrupt(path, format!("{OBJECT_GRAPH_KEY} is not a TrackableObjectGraph ({e})")))?;
        let n = graph.nodes.len();
        // Breadth-first from the root gives each object its shortest path, as TensorFlow names them.
        let mut paths: Vec<Option<String>> = vec![None; n];
        let mut queue = VecDeque::new();
        if n > 0 {
            paths[0] = Some(String::new());
            queue.push_back(0usize);
        }
        while let Some(i) = queue.pop_front() {
            let base = paths[i].clone().unwrap_or_default();
            for child in &graph.nodes[i].children {
                let c = usize::try_from(child.node_id).ok().filter(|&c| c < n).ok_or_else(|| {
                    Error::corrupt(path, format!("object graph node {i} has child {} of {n}", child.node_id))
                })?;
                if paths[c].is_none() {
                    paths[c] = Some(if base.is_empty() { child.local_name.clone() } else { format!("{base}/{}", child.local_name) });
                    queue.push_back(c);
                }
            }
        }
        let mut out = ObjectGraph::default();
        let mut value_key_of_node: HashMap<usize, String> = HashMap::new();
        for (i, node) in graph.nodes.iter().enumerate() {
            for attr in &node.attributes {
                let object_path = paths[i].clone().unwrap_or_default();
                if attr.name == "VARIABLE_VALUE" {
                    value_key_of_node.insert(i, attr.checkpoint_key.clone());
                }
                out.attributes
                    .insert(attr.checkpoint_key.clone(), SavedAttribute { object_path, full_name: attr.full_name.clone() });
            }
        }
        for node in &graph.nodes {
            for slot in &node.slot_variables {
                let key_of = |id: i32| usize::try_from(id).ok().and_then(|id| value_key_of_node.get(&id)).cloned();
                if let (Some(original_key), Some(slot_key)) =
                    (key_of(slot.original_variable_node_id), key_of(slot.slot_variable_node_id))
                {
                    out.slots.push(SlotVariable { original_key, slot_name: slot.slot_name.clone(), slot_key });
                }
            }
        }
        Ok(out)
    }

    /// The slot record whose value is saved under `key`.
    pub fn slot(&self, key: &str) -> Option<&SlotVariable> {
        self.slots.iter().find(|s| s.slot_key == key)
    }

    /// The variable name of the value saved under `key`: its `full_name`, else its object path.
    pub fn variable_name(&self, key: &str) -> Option<String> {
        let a = self.attributes.get(key)?;
        Some(if a.full_name.is_empty() { a.object_path.clone() } else { a.full_name.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::trackable_object_graph::trackable_object_graph::{trackable_object as to, TrackableObject};

    #[test]
    fn maps_keys_to_paths_names_and_slots() {
        let mut g = TrackableObjectGraph::new();
        let child = |id: i32, name: &str| {
            let mut r = to::ObjectReference::new();
            r.node_id = id;
            r.local_name = name.into();
            r
        };
        let attr = |key: &str, full: &str| {
            let mut a = to::SerializedTensor::new();
            a.name = "VARIABLE_VALUE".into();
            a.checkpoint_key = key.into();
            a.full_name = full.into();
            a
        };
        let mut root = TrackableObject::new();
        root.children = vec![child(1, "model"), child(3, "optimizer")];
        let mut model = TrackableObject::new();
        model.children = vec![child(2, "kernel")];
        let mut kernel = TrackableObject::new();
        kernel.attributes = vec![attr("model/kernel/.ATTRIBUTES/VARIABLE_VALUE", "dense/kernel")];
        let mut opt = TrackableObject::new();
        let mut s = to::SlotVariableReference::new();
        s.original_variable_node_id = 2;
        s.slot_name = "m".into();
        s.slot_variable_node_id = 4;
        opt.slot_variables = vec![s];
        let mut slot = TrackableObject::new();
        slot.attributes = vec![attr("model/kernel/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE", "")];
        g.nodes = vec![root, model, kernel, opt, slot];
        let bytes = g.write_to_bytes().expect("encode");
        let og = ObjectGraph::decode(Path::new("c"), &bytes).expect("decode");
        assert_eq!(og.variable_name("model/kernel/.ATTRIBUTES/VARIABLE_VALUE").as_deref(), Some("dense/kernel"));
        assert_eq!(og.attributes["model/kernel/.ATTRIBUTES/VARIABLE_VALUE"].object_path, "model/kernel");
        let slot = og.slot("model/kernel/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE").expect("slot");
        assert_eq!(slot.original_key, "model/kernel/.ATTRIBUTES/VARIABLE_VALUE");
        assert_eq!(slot.slot_name, "m");
        assert!(ObjectGraph::decode(Path::new("c"), b"\x0a\x05garbage").is_err());
    }
}
