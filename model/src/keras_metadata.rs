//! The architecture of a TF2 Keras SavedModel, from the Keras metadata it carries
//! (`keras_metadata.pb`: the model's and each layer's Keras JSON config).
//!
//! Sequential and functional models (one input, one output, `Add` of two branches as a
//! residual) of the layers [`Op`] can express; docs/architecture.md lists them. A `softmax`
//! activation on the last layer is left to the predictors, which apply softmax anyway.
//! Anything else is refused naming the layer and its class, with a pointer to `--arch`.

use std::path::{Path, PathBuf};

use protobuf::Message;
use serde_json::Value;

use crate::arch::{Arch, Op, Padding};
use formats::error::{Error, Result};
use formats::proto::saved_metadata::SavedMetadata;

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
        "relu6" => Ok(Some(Op::Relu6)),
        "elu" => Ok(Some(Op::Elu)),
        "sigmoid" => Ok(Some(Op::Sigmoid)),
        "tanh" => Ok(Some(Op::Tanh)),
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

/// The names of the layers feeding a functional layer (`inbound_nodes: [[[name, 0, 0, {}], ...]]`).
fn inbound(layer: &Value) -> Vec<String> {
    layer
        .get("inbound_nodes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|node| node.as_array().into_iter().flatten())
        .filter_map(|edge| edge.as_array().and_then(|e| e.first()).and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// The ops of one layer given the shape of what came before, or `None` for a layer that is
/// not an op (`InputLayer`, `Add`: handled by the walk).
fn layer_ops(class: &str, config: &Value, name: &str, last: bool, first_on: Option<&[usize]>) -> Built<Vec<Op>> {
    let with_activation = |op: Op| -> Built<Vec<Op>> {
        let mut ops = vec![op];
        ops.extend(activation(config.get("activation"), name, last)?);
        Ok(ops)
    };
    let zero = |key: &str| config.get(key).is_none_or(|v| v.is_null() || v.as_f64() == Some(0.0));
    match class {
        "Dense" | "DenseFlipout" | "DenseReparameterization" | "DenseLocalReparameterization" => with_activation(Op::Dense { layer: name.to_string() }),
        "Conv2D" | "Convolution2D" | "Conv2DFlipout" | "Convolution2DFlipout" | "Conv2DReparameterization" | "Convolution2DReparameterization" => {
            if config.get("dilation_rate").is_some_and(|d| pair(Some(d), "dilation_rate", name).ok() != Some([1, 1])) {
                return Err(Refusal::Unsupported(format!("layer '{name}': dilated convolution")));
            }
            if config.get("groups").and_then(Value::as_u64).is_some_and(|g| g != 1) {
                return Err(Refusal::Unsupported(format!("layer '{name}': grouped convolution")));
            }
            let strides = pair(config.get("strides"), "strides", name)?;
            with_activation(Op::Conv2d { layer: name.to_string(), strides, padding: padding(config.get("padding"), name)? })
        }
        "MaxPooling2D" | "MaxPool2D" | "AveragePooling2D" | "AvgPool2D" => {
            let size = pair(config.get("pool_size"), "pool_size", name)?;
            let strides = match config.get("strides") {
                None | Some(Value::Null) => size,
                s => pair(s, "strides", name)?,
            };
            let padding = padding(config.get("padding"), name)?;
            Ok(vec![if class.starts_with("Max") { Op::MaxPool { size, strides, padding } } else { Op::AvgPool { size, strides, padding } }])
        }
        "GlobalAveragePooling2D" | "GlobalAvgPool2D" if config.get("keepdims").is_none_or(|k| k.as_bool() != Some(true)) => Ok(vec![Op::GlobalAvgPool]),
        "ZeroPadding2D" => {
            let p = config.get("padding").ok_or_else(|| corrupt(format!("layer '{name}': no padding")))?;
            let size = |v: &Value| v.as_u64().and_then(|n| usize::try_from(n).ok());
            let pads = match (size(p), items(p).map(Vec::as_slice)) {
                (Some(n), _) => Some([n, n, n, n]),
                (None, Some([h, w])) => match (size(h), size(w), items(h).map(Vec::as_slice), items(w).map(Vec::as_slice)) {
                    (Some(h), Some(w), _, _) => Some([h, h, w, w]),
                    (None, None, Some([t, b]), Some([l, r])) => Some([size(t), size(b), size(l), size(r)]).and_then(|v| {
                        Some([v[0]?, v[1]?, v[2]?, v[3]?])
                    }),
                    _ => None,
                },
                _ => None,
            };
            Ok(vec![Op::Pad { pads: pads.ok_or_else(|| corrupt(format!("layer '{name}': padding {p}")))? }])
        }
        "BatchNormalization" => {
            let axis_ok = match config.get("axis") {
                Some(Value::Number(n)) => n.as_i64() == Some(-1) || n.as_i64() == Some(3),
                Some(v) => items(v).is_some_and(|a| a.len() == 1 && matches!(a[0].as_i64(), Some(-1) | Some(3))),
                None => true,
            };
            if !axis_ok {
                return Err(Refusal::Unsupported(format!("layer '{name}': batch normalization over an axis other than the channels")));
            }
            let epsilon = config.get("epsilon").and_then(Value::as_f64).unwrap_or(1e-3) as f32;
            Ok(vec![Op::BatchNorm { layer: name.to_string(), epsilon, params: None }])
        }
        "Flatten" => Ok(vec![Op::Flatten]),
        "Reshape" => Ok(vec![reshape(config.get("target_shape"), name, first_on)?]),
        "Activation" => Ok(activation(config.get("activation"), name, last)?.into_iter().collect()),
        "ReLU" if zero("negative_slope") && zero("threshold") => match config.get("max_value").and_then(Value::as_f64) {
            None => Ok(vec![Op::Relu]),
            Some(6.0) => Ok(vec![Op::Relu6]),
            Some(m) => Err(Refusal::Unsupported(format!("layer '{name}': ReLU capped at {m}"))),
        },
        "ELU" if config.get("alpha").is_none_or(|a| a.as_f64() == Some(1.0)) => Ok(vec![Op::Elu]),
        // Identity at inference.
        "Dropout" | "SpatialDropout2D" | "GaussianNoise" | "GaussianDropout" | "ActivityRegularization" => Ok(vec![]),
        other => Err(Refusal::Unsupported(format!("layer '{name}' of class '{other}'"))),
    }
}

/// The network of a model's Keras JSON (`{"class_name": "Sequential", "config": {...}}`, or a
/// functional model). A functional model is walked in layer order, each layer's output
/// described by the ops from the input to it; an `Add` of two outputs becomes a residual of
/// the two op sequences after their common start (the shorter one the shortcut).
fn arch_from_model_json(model: &Value) -> Built<Arch> {
    let class = model.get("class_name").and_then(Value::as_str).unwrap_or("");
    let config = model.get("config").ok_or_else(|| corrupt(format!("model of class '{class}' has no config")))?;
    let layers = config.get("layers").and_then(Value::as_array).ok_or_else(|| corrupt(format!("model of class '{class}' has no config.layers")))?;
    let sequential = class == "Sequential";
    let mut input_shape: Option<Vec<usize>> = None;
    let mut input_name = "input".to_string();
    // Ops from the input to each layer's output (functional), or to the last layer (Sequential).
    let mut paths: std::collections::HashMap<String, Vec<Op>> = std::collections::HashMap::new();
    let mut previous: Option<String> = None;
    let count = layers.len();
    for (i, l) in layers.iter().enumerate() {
        let class = l.get("class_name").and_then(Value::as_str).unwrap_or("");
        let config = l.get("config").ok_or_else(|| corrupt(format!("layer {i} of class '{class}' has no config")))?;
        let name = l.get("name").or_else(|| config.get("name")).and_then(Value::as_str).unwrap_or("").to_string();
        if config.get("data_format").and_then(Value::as_str).is_some_and(|f| f != "channels_last") {
            return Err(Refusal::Unsupported(format!("layer '{name}': data_format must be channels_last (NHWC)")));
        }
        let shape = shape_of(config.get("batch_input_shape"));
        if class == "InputLayer" {
            if input_shape.is_some() {
                return Err(Refusal::Unsupported(format!("input layer '{name}': only models with one input are read")));
            }
            input_name = name.clone();
            input_shape = Some(shape.ok_or_else(|| corrupt(format!("input layer '{name}' has no fixed shape")))?);
            paths.insert(name.clone(), Vec::new());
            previous = Some(name);
            continue;
        }
        if input_shape.is_none() {
            input_shape = shape;
        }
        let sources: Vec<String> = if sequential { previous.iter().cloned().collect() } else { inbound(l) };
        let source_ops = |s: &String| paths.get(s).cloned().ok_or_else(|| corrupt(format!("layer '{name}' takes '{s}', which comes later or not at all")));
        let ops = match (class, sources.as_slice()) {
            ("Add", [a, b]) => {
                let (a, b) = (source_ops(a)?, source_ops(b)?);
                let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
                let (mut branch_a, mut branch_b) = (a[common..].to_vec(), b[common..].to_vec());
                if branch_a.len() < branch_b.len() {
                    std::mem::swap(&mut branch_a, &mut branch_b);
                }
                let mut ops = a[..common].to_vec();
                ops.push(Op::Residual { body: branch_a, shortcut: branch_b, relu: false });
                ops
            }
            ("Add", _) => return Err(Refusal::Unsupported(format!("layer '{name}': an Add of {} inputs (only two branches are read)", sources.len()))),
            (_, [s]) => {
                let mut ops = source_ops(s)?;
                let first_on = if ops.is_empty() { input_shape.as_deref() } else { None };
                ops.extend(layer_ops(class, config, &name, i + 1 == count, first_on)?);
                ops
            }
            (_, []) if sequential => {
                // A Sequential model without an InputLayer starts at its first layer.
                layer_ops(class, config, &name, i + 1 == count, input_shape.as_deref())?
            }
            _ => return Err(Refusal::Unsupported(format!("layer '{name}' of class '{class}' takes {sources:?}: only single-input layers and Add are read"))),
        };
        paths.insert(name.clone(), ops);
        previous = Some(name);
    }
    let output = if sequential {
        previous
    } else {
        // config.output_layers: [[name, 0, 0]] (or one such triple).
        let outputs = config.get("output_layers").and_then(items).cloned().unwrap_or_default();
        let names: Vec<String> = match outputs.first() {
            Some(Value::String(s)) => vec![s.clone()],
            _ => outputs.iter().filter_map(|o| items(o).and_then(|t| t.first()).and_then(Value::as_str).map(str::to_string)).collect(),
        };
        match names.as_slice() {
            [one] => Some(one.clone()),
            _ => return Err(Refusal::Unsupported(format!("the model has {} outputs (one is read)", names.len()))),
        }
    };
    let ops = output.and_then(|o| paths.remove(&o)).ok_or_else(|| corrupt("the model's output layer is not among its layers"))?;
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
            {"class_name": "Dense", "config": {"name": "h", "activation": "swish"}},
            {"class_name": "Dense", "config": {"name": "o"}}
        ]));
        assert!(format!("{:?}", arch_from_model_json(&m).expect_err("refused")).contains("activation 'swish'"));
    }

    #[test]
    fn functional_models_need_one_output() {
        let layer = |name: &str, class: &str, from: Option<&str>| {
            let inbound = from.map_or(serde_json::json!([]), |f| serde_json::json!([[[f, 0, 0, {}]]]));
            serde_json::json!({"class_name": class, "name": name, "config": {"name": name, "batch_input_shape": [null, 3]}, "inbound_nodes": inbound})
        };
        let chain = serde_json::json!({"class_name": "Functional", "config": {"layers": [layer("in", "InputLayer", None), layer("d", "Dense", Some("in"))],
            "output_layers": [["d", 0, 0]]}});
        assert_eq!(arch_from_model_json(&chain).expect("chain").ops, vec![Op::Dense { layer: "d".into() }]);
        let two_heads = serde_json::json!({"class_name": "Functional", "config": {"layers": [
            layer("in", "InputLayer", None), layer("d", "Dense", Some("in")), layer("e", "Dense", Some("in"))],
            "output_layers": [["d", 0, 0], ["e", 0, 0]]}});
        assert!(format!("{:?}", arch_from_model_json(&two_heads).expect_err("two outputs")).contains("2 outputs"));
    }
}
