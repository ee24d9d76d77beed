//! The architecture of a TF2 Keras SavedModel, from the Keras metadata it carries
//! (`keras_metadata.pb`: the model's and each layer's Keras JSON config).
//!
//! Sequential models, and functional models whose layers form one chain, of the layers
//! [`Op`] can express: `InputLayer`, `Dense` and TFP's `DenseFlipout` /
//! `DenseReparameterization`, `Conv2D` and TFP's `Conv2DFlipout` / `Conv2DReparameterization`
//! (NHWC, no dilation), `MaxPooling2D`, `Flatten`, `Reshape`, `ReLU` and
//! `relu` activations, and `Dropout`-like layers (identity at inference). A `softmax`
//! activation on the last layer is left to the predictors, which apply softmax anyway.
//! Anything else is refused naming the layer and its class, with a pointer to `--arch`.

use std::path::{Path, PathBuf};

use protobuf::Message;
use serde_json::Value;

use crate::arch::{Arch, Op, Padding};
use crate::error::{Error, Result};
use crate::proto::saved_metadata::SavedMetadata;

/// The Keras metadata file of a SavedModel folder.
pub const KERAS_METADATA_FILE: &str = "keras_metadata.pb";

/// Largest metadata file read (the configs of a model with thousands of layers fit easily).
const MAX_METADATA_BYTES: u64 = 256 << 20;

/// Where the Keras metadata of SavedModel folder `dir` is.
pub fn metadata_path(dir: &Path) -> PathBuf {
    dir.join(KERAS_METADATA_FILE)
}

/// Reads the network of the Keras SavedModel in folder `dir`.
pub fn read_arch(dir: &Path) -> Result<Arch> {
    let path = metadata_path(dir);
    let len = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
    if len > MAX_METADATA_BYTES {
        return Err(Error::corrupt(&path, format!("{len} bytes: larger than any Keras metadata ({MAX_METADATA_BYTES} at most)")));
    }
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let meta = SavedMetadata::parse_from_bytes(&bytes).map_err(|e| Error::corrupt(&path, format!("not Keras SavedMetadata: {e}")))?;
    let root = meta
        .nodes
        .iter()
        .find(|n| n.node_path == "root")
        .ok_or_else(|| Error::corrupt(&path, "no 'root' object (the model) in the Keras metadata"))?;
    let json: Value = serde_json::from_str(&root.metadata).map_err(|e| Error::corrupt(&path, format!("the model's Keras JSON: {e}")))?;
    arch_from_model_json(&json).map_err(|what| match what {
        Refusal::Unsupported(what) => Error::unsupported(&path, format!("{what}; give the network with --arch FILE (docs/architecture.md)")),
        Refusal::Corrupt(what) => Error::corrupt(&path, what),
    })
}

/// Why a config cannot be turned into an [`Arch`].
#[derive(Debug)]
enum Refusal {
    /// Valid Keras, but not something [`Op`] expresses.
    Unsupported(String),
    /// Not a valid Keras config.
    Corrupt(String),
}

type Built<T> = std::result::Result<T, Refusal>;

fn corrupt(what: impl Into<String>) -> Refusal {
    Refusal::Corrupt(what.into())
}

/// A Keras tuple (`{"class_name": "__tuple__", "items": [...]}`) or list, as its items.
fn items(v: &Value) -> Option<&Vec<Value>> {
    match v {
        Value::Array(a) => Some(a),
        Value::Object(o) if o.get("class_name").and_then(Value::as_str) == Some("__tuple__") => o.get("items")?.as_array(),
        _ => None,
    }
}

/// A pair of sizes (`kernel_size`, `strides`, `pool_size`), given as a pair or one number.
fn pair(v: Option<&Value>, what: &str, layer: &str) -> Built<[usize; 2]> {
    let bad = || corrupt(format!("layer '{layer}': {what} is not one or two positive integers"));
    let v = v.ok_or_else(bad)?;
    let as_size = |x: &Value| x.as_u64().and_then(|n| usize::try_from(n).ok()).filter(|n| *n > 0);
    if let Some(n) = as_size(v) {
        return Ok([n, n]);
    }
    match items(v).map(Vec::as_slice) {
        Some([a, b]) => Ok([as_size(a).ok_or_else(bad)?, as_size(b).ok_or_else(bad)?]),
        _ => Err(bad()),
    }
}

fn padding(v: Option<&Value>, layer: &str) -> Built<Padding> {
    match v.and_then(Value::as_str).map(str::to_ascii_lowercase).as_deref() {
        Some("same") => Ok(Padding::Same),
        Some("valid") | None => Ok(Padding::Valid),
        Some(other) => Err(Refusal::Unsupported(format!("layer '{layer}': padding '{other}'"))),
    }
}

/// The op of a Keras activation, `None` for linear; `last` marks the network's final layer.
fn activation(v: Option<&Value>, layer: &str, last: bool) -> Built<Option<Op>> {
    let name = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.as_str(),
        // A serialized activation object: {"class_name": ..., "config": {"name": ...}}.
        Some(Value::Object(o)) => o.get("config").and_then(|c| c.get("name")).or_else(|| o.get("class_name")).and_then(Value::as_str).unwrap_or(""),
        Some(_) => "",
    };
    match name {
        "linear" => Ok(None),
        "relu" => Ok(Some(Op::Relu)),
        "softmax" if last => Ok(None),
        other => Err(Refusal::Unsupported(format!("layer '{layer}': activation '{other}'"))),
    }
}

/// A `Reshape` layer: to one dimension it is a flatten; otherwise a reshape to the target,
/// whose one `-1` (if any) is resolved from the input shape when it is the network's first op.
fn reshape(target: Option<&Value>, layer: &str, first_on: Option<&[usize]>) -> Built<Op> {
    let dims = target.and_then(items).ok_or_else(|| corrupt(format!("layer '{layer}': no target_shape")))?;
    if dims.len() == 1 {
        return Ok(Op::Flatten);
    }
    let known: Option<Vec<usize>> = dims.iter().map(|d| d.as_u64().and_then(|n| usize::try_from(n).ok()).filter(|n| *n > 0)).collect();
    if let Some(shape) = known {
        return Ok(Op::Reshape { shape });
    }
    let unknown = dims.iter().filter(|d| d.as_i64() == Some(-1)).count();
    let total = first_on.and_then(|s| s.iter().try_fold(1usize, |a, &d| a.checked_mul(d)));
    let fixed = dims.iter().filter_map(|d| d.as_u64().and_then(|n| usize::try_from(n).ok())).try_fold(1usize, |a, d| a.checked_mul(d));
    match (unknown, total, fixed) {
        (1, Some(total), Some(fixed)) if fixed > 0 && total % fixed == 0 => Ok(Op::Reshape {
            shape: dims.iter().map(|d| d.as_u64().and_then(|n| usize::try_from(n).ok()).unwrap_or(total / fixed)).collect(),
        }),
        _ => Err(Refusal::Unsupported(format!("layer '{layer}': reshape to {dims:?} (a -1 is resolved only on the input)"))),
    }
}

fn shape_of(v: Option<&Value>) -> Option<Vec<usize>> {
    items(v?)?.iter().skip(1).map(|d| d.as_u64().and_then(|n| usize::try_from(n).ok())).collect()
}

/// The layer configs of a Sequential or a chain-shaped functional model, in order.
fn layer_list(model: &Value) -> Built<Vec<&Value>> {
    let class = model.get("class_name").and_then(Value::as_str).unwrap_or("");
    let layers = model
        .get("config")
        .and_then(|c| c.get("layers"))
        .and_then(Value::as_array)
        .ok_or_else(|| corrupt(format!("model of class '{class}' has no config.layers")))?;
    if class == "Sequential" {
        return Ok(layers.iter().collect());
    }
    // Functional: every layer after the first must take exactly the previous one's output.
    let mut previous: Option<&str> = None;
    for l in layers {
        let name = l.get("name").or_else(|| l.get("config").and_then(|c| c.get("name"))).and_then(Value::as_str).unwrap_or("?");
        let inbound: Vec<&str> = l
            .get("inbound_nodes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|node| node.as_array().into_iter().flatten())
            .filter_map(|edge| edge.as_array().and_then(|e| e.first()).and_then(Value::as_str))
            .collect();
        match previous {
            None if inbound.is_empty() => {}
            Some(p) if inbound == [p] => {}
            _ => {
                return Err(Refusal::Unsupported(format!(
                    "layer '{name}' takes {inbound:?}: only a single chain of layers is read from Keras metadata"
                )))
            }
        }
        previous = Some(name);
    }
    Ok(layers.iter().collect())
}

/// The network of a model's Keras JSON (`{"class_name": "Sequential", "config": {...}}`).
fn arch_from_model_json(model: &Value) -> Built<Arch> {
    let layers = layer_list(model)?;
    let mut input_shape = None;
    let mut input_name = "input".to_string();
    let mut ops = Vec::new();
    let count = layers.len();
    for (i, l) in layers.iter().enumerate() {
        let class = l.get("class_name").and_then(Value::as_str).unwrap_or("");
        let config = l.get("config").ok_or_else(|| corrupt(format!("layer {i} of class '{class}' has no config")))?;
        let name = config.get("name").and_then(Value::as_str).unwrap_or("").to_string();
        let last = i + 1 == count;
        if let Some(shape) = shape_of(config.get("batch_input_shape")) {
            input_shape.get_or_insert(shape);
        }
        if config.get("data_format").and_then(Value::as_str).is_some_and(|f| f != "channels_last") {
            return Err(Refusal::Unsupported(format!("layer '{name}': data_format must be channels_last (NHWC)")));
        }
        match class {
            "InputLayer" => {
                input_name = name.clone();
                input_shape = Some(shape_of(config.get("batch_input_shape")).ok_or_else(|| corrupt(format!("input layer '{name}' has no fixed shape")))?);
            }
            "Dense" | "DenseFlipout" | "DenseReparameterization" | "DenseLocalReparameterization" => {
                ops.push(Op::Dense { layer: name.clone() });
                ops.extend(activation(config.get("activation"), &name, last)?);
            }
            "Conv2D" | "Convolution2D" | "Conv2DFlipout" | "Convolution2DFlipout" | "Conv2DReparameterization" | "Convolution2DReparameterization" => {
                if config.get("dilation_rate").is_some_and(|d| pair(Some(d), "dilation_rate", &name).ok() != Some([1, 1])) {
                    return Err(Refusal::Unsupported(format!("layer '{name}': dilated convolution")));
                }
                if config.get("groups").and_then(Value::as_u64).is_some_and(|g| g != 1) {
                    return Err(Refusal::Unsupported(format!("layer '{name}': grouped convolution")));
                }
                let strides = pair(config.get("strides"), "strides", &name)?;
                ops.push(Op::Conv2d { layer: name.clone(), strides, padding: padding(config.get("padding"), &name)? });
                ops.extend(activation(config.get("activation"), &name, last)?);
            }
            "MaxPooling2D" | "MaxPool2D" => {
                let size = pair(config.get("pool_size"), "pool_size", &name)?;
                let strides = match config.get("strides") {
                    None | Some(Value::Null) => size,
                    s => pair(s, "strides", &name)?,
                };
                ops.push(Op::MaxPool { size, strides, padding: padding(config.get("padding"), &name)? });
            }
            "Flatten" => ops.push(Op::Flatten),
            "Reshape" => ops.push(reshape(config.get("target_shape"), &name, ops.is_empty().then_some(input_shape.as_deref()).flatten())?),
            "Activation" => ops.extend(activation(config.get("activation"), &name, last)?),
            "ReLU" if config.get("max_value").is_none_or(Value::is_null)
                && config.get("negative_slope").is_none_or(|v| v.as_f64() == Some(0.0))
                && config.get("threshold").is_none_or(|v| v.as_f64() == Some(0.0)) =>
            {
                ops.push(Op::Relu)
            }
            // Identity at inference.
            "Dropout" | "SpatialDropout2D" | "GaussianNoise" | "GaussianDropout" | "ActivityRegularization" => {}
            other => return Err(Refusal::Unsupported(format!("layer '{name}' of class '{other}'"))),
        }
    }
    let input_shape = input_shape.ok_or_else(|| Refusal::Unsupported("the model's input shape is not fixed".into()))?;
    Ok(Arch { input_name, input_shape, ops })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequential(layers: Value) -> Value {
        serde_json::json!({"class_name": "Sequential", "config": {"name": "s", "layers": layers}})
    }

    #[test]
    fn sequential_layers_become_ops() {
        let m = sequential(serde_json::json!([
            {"class_name": "InputLayer", "config": {"name": "x", "batch_input_shape": {"class_name": "__tuple__", "items": [null, 8, 8, 1]}}},
            {"class_name": "Conv2DFlipout", "config": {"name": "c", "strides": [2, 2], "padding": "same", "activation": "relu", "data_format": "channels_last", "dilation_rate": [1, 1]}},
            {"class_name": "MaxPooling2D", "config": {"name": "p", "pool_size": 2, "strides": null, "padding": "valid"}},
            {"class_name": "Flatten", "config": {"name": "f"}},
            {"class_name": "Dropout", "config": {"name": "d", "rate": 0.5}},
            {"class_name": "Dense", "config": {"name": "out", "activation": "softmax"}}
        ]));
        let a = arch_from_model_json(&m).expect("arch");
        assert_eq!(a.input_shape, vec![8, 8, 1]);
        assert_eq!(a.input_name, "x");
        assert_eq!(
            a.ops,
            vec![
                Op::Conv2d { layer: "c".into(), strides: [2, 2], padding: Padding::Same },
                Op::Relu,
                Op::MaxPool { size: [2, 2], strides: [2, 2], padding: Padding::Valid },
                Op::Flatten,
                Op::Dense { layer: "out".into() },
            ]
        );
    }

    #[test]
    fn reshapes_of_a_flat_input() {
        let m = |target: Value| {
            sequential(serde_json::json!([
                {"class_name": "InputLayer", "config": {"name": "x", "batch_input_shape": [null, 64]}},
                {"class_name": "Reshape", "config": {"name": "r", "target_shape": target}}
            ]))
        };
        let ops = |target| arch_from_model_json(&m(target)).expect("arch").ops;
        assert_eq!(ops(serde_json::json!([8, 8, 1])), vec![Op::Reshape { shape: vec![8, 8, 1] }]);
        assert_eq!(ops(serde_json::json!({"class_name": "__tuple__", "items": [8, -1, 1]})), vec![Op::Reshape { shape: vec![8, 8, 1] }]);
        assert_eq!(ops(serde_json::json!([-1])), vec![Op::Flatten]);
        assert!(arch_from_model_json(&m(serde_json::json!([7, -1, 1]))).is_err(), "64 is not a multiple of 7");
    }

    #[test]
    fn refusals_name_the_layer() {
        let m = sequential(serde_json::json!([
            {"class_name": "InputLayer", "config": {"name": "x", "batch_input_shape": [null, 4]}},
            {"class_name": "LSTM", "config": {"name": "rnn"}}
        ]));
        let e = format!("{:?}", arch_from_model_json(&m).expect_err("refused"));
        assert!(e.contains("'rnn'") && e.contains("LSTM"), "{e}");
        let m = sequential(serde_json::json!([
            {"class_name": "InputLayer", "config": {"name": "x", "batch_input_shape": [null, 4]}},
            {"class_name": "Dense", "config": {"name": "h", "activation": "tanh"}},
            {"class_name": "Dense", "config": {"name": "o"}}
        ]));
        assert!(format!("{:?}", arch_from_model_json(&m).expect_err("refused")).contains("activation 'tanh'"));
    }

    #[test]
    fn functional_chains_only() {
        let layer = |name: &str, class: &str, from: Option<&str>| {
            let inbound = from.map_or(serde_json::json!([]), |f| serde_json::json!([[[f, 0, 0, {}]]]));
            serde_json::json!({"class_name": class, "name": name, "config": {"name": name, "batch_input_shape": [null, 3]}, "inbound_nodes": inbound})
        };
        let chain = serde_json::json!({"class_name": "Functional", "config": {"layers": [layer("in", "InputLayer", None), layer("d", "Dense", Some("in"))]}});
        assert_eq!(arch_from_model_json(&chain).expect("chain").ops, vec![Op::Dense { layer: "d".into() }]);
        let skip = serde_json::json!({"class_name": "Functional", "config": {"layers": [
            layer("in", "InputLayer", None), layer("d", "Dense", Some("in")), layer("e", "Dense", Some("in"))]}});
        assert!(format!("{:?}", arch_from_model_json(&skip).expect_err("not a chain")).contains("single chain"));
    }
}
