//! Recovers the network ([`Arch`]) from a TF1 `.meta` file (MetaGraphDef).
//!
//! The weight layers are the variable scopes holding `kernel_posterior_loc` (or `kernel`)
//! variables. Each layer's output is its `BiasAdd` followed by any `Relu`/`Identity`; the
//! network output is the layer output whose backward trace to a `Placeholder` passes through
//! the most weight layers. The trace reads, from the output back to the input: `Relu`,
//! `MaxPool`, `Reshape` (its target shape evaluated from the constants it is computed from),
//! `Identity`, and weight-layer scopes. Inside a scope
//! the layer's input is the first input of the `MatMul`/`Conv2D` whose input comes from
//! outside the scope: this skips Flipout's and reparameterization's sampling ops, which stay
//! inside the scope. Anything else on the path (residual adds, batch norm) is reported as
//! unsupported; give such networks with `--arch`.

use std::collections::HashMap;
use std::path::Path;

use protobuf::Message;

use crate::arch::{Arch, Op, Padding};
use formats::error::{Error, Result};
use formats::layout::{classify, Param, VariableKind};
use formats::proto::graph::{FunctionDef, MetaGraphDef, NodeDef};

/// The `.meta` file next to a checkpoint prefix.
pub fn meta_path(prefix: &Path) -> std::path::PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".meta");
    s.into()
}

/// Reads `path` (a `.meta` MetaGraphDef) and recovers the network.
pub fn read_arch(path: &Path) -> Result<Arch> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_arch(path, &bytes)
}

/// Recovers the network from the bytes of a `.meta` file; `path` only names it in errors.
pub fn parse_arch(path: &Path, bytes: &[u8]) -> Result<Arch> {
    let meta = MetaGraphDef::parse_from_bytes(bytes)
        .map_err(|e| Error::corrupt(path, format!("not a MetaGraphDef: {e}")))?;
    arch_from_graph(&meta.graph_def.node, &meta.graph_def.library.function).map_err(|what| Error::unsupported(path, what))
}

struct Graph<'a> {
    nodes: HashMap<&'a str, &'a NodeDef>,
    /// Function bodies (the branches of `If` nodes), by name.
    functions: HashMap<&'a str, &'a [NodeDef]>,
    /// Residual blocks already read: `Add` node -> (block, the node its branches start from).
    residuals: std::cell::RefCell<HashMap<&'a str, (Op, &'a str)>>,
    consumers: HashMap<&'a str, Vec<&'a NodeDef>>,
    /// Weight layer scopes, longest first so that nested scopes match first.
    layers: Vec<String>,
}

/// Node name of a tensor reference (`den_1/Relu:0` -> `den_1/Relu`; `^ctrl` -> None).
fn node_of(input: &str) -> Option<&str> {
    if input.starts_with('^') {
        return None;
    }
    Some(input.split(':').next().unwrap_or(input))
}

impl<'a> Graph<'a> {
    fn new(nodes: &'a [NodeDef], functions: &'a [FunctionDef]) -> Graph<'a> {
        let functions = functions.iter().map(|f| (f.signature.name.as_str(), f.node_def.as_slice())).collect();
        let mut map = HashMap::new();
        let mut consumers: HashMap<&str, Vec<&NodeDef>> = HashMap::new();
        let mut layers = Vec::new();
        for n in nodes {
            map.insert(n.name.as_str(), n);
            for i in n.input.iter().filter_map(|i| node_of(i)) {
                consumers.entry(i).or_default().push(n);
            }
            if matches!(n.op.as_str(), "VarHandleOp" | "VariableV2" | "Variable") {
                if let VariableKind::Weight { layer, param: Param::KernelLoc | Param::Kernel } = classify(&n.name) {
                    layers.push(layer);
                }
            }
        }
        layers.sort_by_key(|l| std::cmp::Reverse(l.len()));
        Graph { nodes: map, functions, residuals: Default::default(), consumers, layers }
    }

    fn node(&self, name: &str) -> std::result::Result<&'a NodeDef, String> {
        self.nodes.get(name).copied().ok_or_else(|| format!("graph references missing node '{name}'"))
    }

    fn input0(&self, n: &NodeDef) -> std::result::Result<&'a NodeDef, String> {
        let first = n.input.first().and_then(|i| node_of(i)).ok_or_else(|| format!("node '{}' has no input", n.name))?;
        self.node(first)
    }

    fn scope_of(&self, name: &str) -> Option<&str> {
        self.layers.iter().find(|l| name.strip_prefix(l.as_str()).is_some_and(|r| r.starts_with('/'))).map(String::as_str)
    }

    /// A layer's output node: its BiasAdd, then the Relu/Identity chain after it.
    fn layer_output(&self, layer: &str) -> Option<&'a NodeDef> {
        let mut n = *self.nodes.get(format!("{layer}/BiasAdd").as_str())?;
        // Bounded: a hostile graph can chain activations in a cycle.
        for _ in 0..=self.nodes.len() {
            let next = self.consumers.get(n.name.as_str()).and_then(|cs| {
                let acts: Vec<_> = cs.iter().filter(|c| c.op == "Identity" || activation(&c.op).is_some()).collect();
                (acts.len() == 1).then(|| *acts[0])
            });
            match next {
                Some(c) => n = c,
                None => return Some(n),
            }
        }
        None
    }

    /// Ops from the placeholder to `out` (in execution order) and the placeholder node.
    fn trace(&self, out: &'a NodeDef) -> std::result::Result<(Vec<Op>, &'a NodeDef), String> {
        self.walk(out, None, &mut Vec::new(), 0)
    }

    /// Walks back from `out` to `stop` (or to the placeholder): the ops on the way in
    /// execution order and the node the walk ended at; `visited` gets every node it landed on.
    fn walk(&self, out: &'a NodeDef, stop: Option<&str>, visited: &mut Vec<&'a str>, depth: usize) -> std::result::Result<(Vec<Op>, &'a NodeDef), String> {
        let mut ops = Vec::new();
        let mut n = out;
        for _ in 0..=self.nodes.len() {
            visited.push(n.name.as_str());
            if stop == Some(n.name.as_str()) {
                ops.reverse();
                return Ok((ops, n));
            }
            if let Some(layer) = self.scope_of(&n.name) {
                if let Some(act) = activation(&n.op) {
                    ops.push(act);
                    n = self.input0(n)?;
                    continue;
                }
                let main = self.main_op(layer)?;
                ops.push(main_to_op(layer, main)?);
                n = self.input0(main)?;
                continue;
            }
            match n.op.as_str() {
                "Placeholder" | "PlaceholderWithDefault" => {
                    ops.reverse();
                    return Ok((ops, n));
                }
                "Identity" | "StopGradient" => {}
                op if activation(op).is_some() => ops.extend(activation(op)),
                "Reshape" => ops.push(self.reshape(n)?),
                "MaxPool" | "AvgPool" => {
                    check_nhwc(n)?;
                    let (size, strides, padding) = (window(n, "ksize")?, window(n, "strides")?, padding(n)?);
                    ops.push(if n.op == "MaxPool" { Op::MaxPool { size, strides, padding } } else { Op::AvgPool { size, strides, padding } });
                }
                "Mean" => ops.push(self.global_mean(n)?),
                "FusedBatchNorm" | "FusedBatchNormV2" | "FusedBatchNormV3" => {
                    check_nhwc(n)?;
                    if n.attr.get("is_training").is_some_and(|a| a.b()) {
                        return Err(format!("op {} ('{}') normalizes with batch statistics (is_training); give the network with --arch", n.op, n.name));
                    }
                    let layer = parent_scope(&n.name)?;
                    ops.push(Op::BatchNorm { layer: layer.to_string(), epsilon: attr_f32(n, "epsilon")?, params: None });
                }
                // Keras BatchNormalization on an image in a TF1 graph: `If(keras_learning_phase,
                // gamma, beta, moving_mean, moving_variance, x)`; the inference branch is a
                // FusedBatchNormV3 with the moving statistics.
                "If" | "StatelessIf" if self.batch_norm_if(n).is_some() => {
                    let (layer, epsilon, x) = self.batch_norm_if(n).ok_or_else(|| format!("'{}'", n.name))??;
                    ops.push(Op::BatchNorm { layer, epsilon, params: None });
                    n = x;
                    continue;
                }
                // Unfused batch normalization (Keras on vectors, tf.nn.batch_normalization):
                // `<bn>/batchnorm/add_1 = x * mul + (beta - moving_mean * mul)`, mul = gamma *
                // rsqrt(moving_variance + eps).
                "Add" | "AddV2" if n.name.ends_with("/batchnorm/add_1") => {
                    let (op, x) = self.unfused_batch_norm(n)?;
                    ops.push(op);
                    n = x;
                    continue;
                }
                // Two branches from one tensor, summed: a residual block.
                "Add" | "AddV2" => {
                    let (op, join) = self.residual(n, depth)?;
                    ops.push(op);
                    n = join;
                    continue;
                }
                "Pad" => ops.push(self.pad(n)?),
                // Keras Dropout in a TF1 graph: `If(keras_learning_phase, x)`; at inference
                // (learning phase false) it passes x through.
                "If" | "StatelessIf" if is_dropout(n) => {
                    let x = n.input.get(1).and_then(|i| node_of(i)).ok_or_else(|| format!("dropout '{}' has no input", n.name))?;
                    n = self.node(x)?;
                    continue;
                }
                other => return Err(format!("op {other} ('{}') on the path to the logits is not supported; give the network with --arch", n.name)),
            }
            n = self.input0(n)?;
        }
        Err(format!("cycle in the graph at '{}'", out.name))
    }

    /// An `Add` of two branches as a residual block (the branch with more weight layers is the
    /// body) and the node both branches start from; memoized, so a deep ResNet's nested
    /// walks stay linear.
    fn residual(&self, n: &'a NodeDef, depth: usize) -> std::result::Result<(Op, &'a NodeDef), String> {
        if let Some((op, join)) = self.residuals.borrow().get(n.name.as_str()) {
            return Ok((op.clone(), self.node(join)?));
        }
        // Graphs come from files: nesting must end.
        if depth > 256 {
            return Err(format!("residual blocks nested deeper than 256 at '{}'", n.name));
        }
        let branches: Vec<&str> = n.input.iter().filter_map(|i| node_of(i)).collect();
        let [a, b] = branches[..] else {
            return Err(format!("op {} ('{}') has {} inputs, not two branches; give the network with --arch", n.op, n.name, branches.len()));
        };
        let (a, b) = (self.node(a)?, self.node(b)?);
        let (mut spine_a, mut spine_b) = (Vec::new(), Vec::new());
        self.walk(a, None, &mut spine_a, depth + 1)?;
        self.walk(b, None, &mut spine_b, depth + 1)?;
        let join = spine_b
            .iter()
            .find(|x| spine_a.contains(x))
            .copied()
            .ok_or_else(|| format!("the branches of {} ('{}') do not start from one tensor; give the network with --arch", n.op, n.name))?;
        let (ops_a, _) = self.walk(a, Some(join), &mut Vec::new(), depth + 1)?;
        let (ops_b, join) = self.walk(b, Some(join), &mut Vec::new(), depth + 1)?;
        let (body, shortcut) = if weight_count(&ops_a) >= weight_count(&ops_b) { (ops_a, ops_b) } else { (ops_b, ops_a) };
        let op = Op::Residual { body, shortcut, relu: false };
        self.residuals.borrow_mut().insert(n.name.as_str(), (op.clone(), join.name.as_str()));
        Ok((op, join))
    }

    /// For an `If` whose branches hold a fused batch normalization of the scope's moving
    /// statistics: the layer, epsilon (from the inference branch) and the data input.
    #[allow(clippy::type_complexity)]
    fn batch_norm_if(&self, n: &NodeDef) -> Option<std::result::Result<(String, f32, &'a NodeDef), String>> {
        let layer = parent_scope(&n.name).ok()?;
        let stats = format!("{layer}/moving_mean");
        if !n.input.iter().any(|i| node_of(i) == Some(stats.as_str())) {
            return None;
        }
        let branch = n.attr.get("else_branch").map(|a| a.func().name.as_str())?;
        let body = self.functions.get(branch)?;
        let bn = body.iter().find(|f| f.op.starts_with("FusedBatchNorm"))?;
        Some((|| {
            let epsilon = attr_f32(bn, "epsilon")?;
            check_nhwc(bn)?;
            // The data input: not the learning phase, not a variable of the layer.
            let prefix = format!("{layer}/");
            let x = n
                .input
                .iter()
                .skip(1)
                .filter_map(|i| node_of(i))
                .find(|i| !i.starts_with(&prefix))
                .ok_or_else(|| format!("batch normalization '{}' has no data input", n.name))?;
            Ok((layer.to_string(), epsilon, self.node(x)?))
        })())
    }

    /// The unfused form ending in `<bn>/batchnorm/add_1`: the layer, epsilon (the constant
    /// of `<bn>/batchnorm/add`) and the data input (the first input of `batchnorm/mul_1`).
    fn unfused_batch_norm(&self, n: &NodeDef) -> std::result::Result<(Op, &'a NodeDef), String> {
        let base = n.name.strip_suffix("/add_1").unwrap_or(&n.name);
        let layer = base.strip_suffix("/batchnorm").unwrap_or(base);
        let mul_1 = self.node(&format!("{base}/mul_1"))?;
        let x = self.input0(mul_1)?;
        let eps_node = self.node(&format!("{base}/add/y"))?;
        let t = eps_node.attr.get("value").map(|a| a.tensor()).ok_or_else(|| format!("'{}' has no value", eps_node.name))?;
        let epsilon = match (t.float_val.first(), t.tensor_content.get(..4)) {
            (Some(v), _) => *v,
            (None, Some(b)) => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            _ => return Err(format!("batch normalization epsilon '{}' is not a float constant", eps_node.name)),
        };
        Ok((Op::BatchNorm { layer: layer.to_string(), epsilon, params: None }, x))
    }

    /// `Mean` over axes 1 and 2 of an NHWC image without kept dimensions: global average
    /// pooling.
    fn global_mean(&self, n: &NodeDef) -> std::result::Result<Op, String> {
        let axes = n.input.get(1).and_then(|i| node_of(i)).ok_or_else(|| format!("Mean '{}' has no axes", n.name))?;
        let mut axes = const_ints(self.node(axes)?)?;
        axes.sort_unstable();
        let keep = n.attr.get("keep_dims").is_some_and(|a| a.b());
        if axes == [1, 2] && !keep {
            Ok(Op::GlobalAvgPool)
        } else {
            Err(format!("op Mean ('{}') over axes {axes:?}{} on the path to the logits is not supported (only over height and width, as global average pooling); give the network with --arch", n.name, if keep { " keeping dimensions" } else { "" }))
        }
    }

    /// `Pad` of an NHWC image with constant paddings `[[0, 0], [t, b], [l, r], [0, 0]]`.
    fn pad(&self, n: &NodeDef) -> std::result::Result<Op, String> {
        let p = n.input.get(1).and_then(|i| node_of(i)).ok_or_else(|| format!("Pad '{}' has no paddings", n.name))?;
        let v = const_ints(self.node(p)?)?;
        match v[..] {
            [0, 0, t, b, l, r, 0, 0] if [t, b, l, r].iter().all(|&x| (0..=1 << 20).contains(&x)) => {
                Ok(Op::Pad { pads: [t as usize, b as usize, l as usize, r as usize] })
            }
            _ => Err(format!("op Pad ('{}') with paddings {v:?} on the path to the logits is not supported (only height and width of an NHWC image); give the network with --arch", n.name)),
        }
    }

    /// A `Reshape` node as an op: its shape input is evaluated ([`Graph::shape_value`]); the
    /// first entry must be the batch (-1 or the input's own batch size), the rest the
    /// example's shape (a single -1 there is a flatten).
    fn reshape(&self, n: &NodeDef) -> std::result::Result<Op, String> {
        let shape_input = n.input.get(1).and_then(|i| node_of(i)).ok_or_else(|| format!("Reshape '{}' has no shape input", n.name))?;
        let dims = self.shape_value(self.node(shape_input)?, 0).map_err(|why| format!("Reshape '{}': shape {why}; give the network with --arch", n.name))?;
        let bad = || format!("Reshape '{}' to {dims:?} does not keep the batch dimension first; give the network with --arch", n.name);
        let (first, rest) = dims.split_first().ok_or_else(bad)?;
        if !matches!(first, Dim::Batch | Dim::Size(-1)) {
            return Err(bad());
        }
        match rest {
            [Dim::Size(-1)] => Ok(Op::Flatten),
            _ => {
                let shape: Option<Vec<usize>> =
                    rest.iter().map(|d| match d { Dim::Size(v) if *v > 0 => usize::try_from(*v).ok(), _ => None }).collect();
                match shape {
                    Some(s) if s.len() == 1 => Ok(Op::Flatten),
                    Some(s) if !s.is_empty() => Ok(Op::Reshape { shape: s }),
                    _ => Err(bad()),
                }
            }
        }
    }

    /// The value of an int32/int64 vector tensor computed from constants: `Const`, `Pack`,
    /// `ConcatV2`, `Identity`/`Cast`, and the batch size (`StridedSlice` element 0 of a
    /// `Shape`), which is how Keras `Reshape`/`Flatten` build their target shape.
    fn shape_value(&self, n: &NodeDef, depth: usize) -> std::result::Result<Vec<Dim>, String> {
        // Graphs come from files: a cycle or an absurd chain must end.
        if depth > 64 {
            return Err(format!("computed through more than 64 ops at '{}'", n.name));
        }
        let input = |i: usize| -> std::result::Result<&'a NodeDef, String> {
            let name = n.input.get(i).and_then(|s| node_of(s)).ok_or_else(|| format!("'{}' lacks input {i}", n.name))?;
            self.node(name)
        };
        match n.op.as_str() {
            "Const" => const_ints(n).map(|v| v.into_iter().map(Dim::Size).collect()),
            "Identity" | "Cast" => self.shape_value(input(0)?, depth + 1),
            "Pack" => {
                let count = n.input.iter().filter(|i| !i.starts_with('^')).count();
                let mut out = Vec::with_capacity(count);
                for i in 0..count {
                    match self.shape_value(input(i)?, depth + 1)?[..] {
                        [d] => out.push(d),
                        _ => return Err(format!("packs a non-scalar at '{}'", n.name)),
                    }
                }
                Ok(out)
            }
            "ConcatV2" => {
                let count = n.input.iter().filter(|i| !i.starts_with('^')).count();
                let mut out = Vec::new();
                // The last input is the axis.
                for i in 0..count.saturating_sub(1) {
                    out.extend(self.shape_value(input(i)?, depth + 1)?);
                }
                Ok(out)
            }
            "StridedSlice" if input(0)?.op == "Shape" => {
                let begin = const_ints(input(1)?)?;
                let end = const_ints(input(2)?)?;
                let shrink = n.attr.get("shrink_axis_mask").map(|a| a.i()).unwrap_or(0);
                if begin == [0] && end == [1] && shrink == 1 {
                    Ok(vec![Dim::Batch])
                } else {
                    Err(format!("slices a shape other than the batch size at '{}'", n.name))
                }
            }
            other => Err(format!("computed by op {other} ('{}')", n.name)),
        }
    }

    /// The MatMul/Conv2D of `layer` that reads the layer's input (from outside its scope).
    fn main_op(&self, layer: &str) -> std::result::Result<&'a NodeDef, String> {
        let prefix = format!("{layer}/");
        let mut found: Vec<&NodeDef> = self
            .nodes
            .values()
            .filter(|n| n.name.starts_with(&prefix) && matches!(n.op.as_str(), "MatMul" | "Conv2D"))
            .filter(|n| n.input.first().and_then(|i| node_of(i)).is_some_and(|i| !i.starts_with(&prefix)))
            .copied()
            .collect();
        found.sort_by(|a, b| a.name.cmp(&b.name));
        found.first().copied().ok_or_else(|| format!("layer '{layer}' has no MatMul/Conv2D reading its input"))
    }
}

/// Weight ops in `ops`, residual branches included.
fn weight_count(ops: &[Op]) -> usize {
    ops.iter()
        .map(|o| match o {
            Op::Dense { .. } | Op::Conv2d { .. } => 1,
            Op::Residual { body, shortcut, .. } => weight_count(body) + weight_count(shortcut),
            _ => 0,
        })
        .sum()
}

/// The scope a node is in (`bn_1/cond` -> `bn_1`).
fn parent_scope(name: &str) -> std::result::Result<&str, String> {
    name.rsplit_once('/').map(|(p, _)| p).ok_or_else(|| format!("'{name}' is in no layer scope"))
}

fn attr_f32(n: &NodeDef, attr: &str) -> std::result::Result<f32, String> {
    n.attr.get(attr).map(|a| a.f()).ok_or_else(|| format!("'{}' has no {attr}", n.name))
}

/// The op of a TF activation.
fn activation(op: &str) -> Option<Op> {
    Some(match op {
        "Relu" => Op::Relu,
        "Relu6" => Op::Relu6,
        "Elu" => Op::Elu,
        "Sigmoid" => Op::Sigmoid,
        "Tanh" => Op::Tanh,
        _ => return None,
    })
}

/// Whether an `If` node is a Keras `Dropout` (its branch functions are named after it).
fn is_dropout(n: &NodeDef) -> bool {
    ["then_branch", "else_branch"].iter().all(|b| n.attr.get(*b).is_some_and(|a| a.func().name.to_ascii_lowercase().contains("dropout")))
}

/// One entry of a shape computed in the graph.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Dim {
    /// A constant (-1: inferred by Reshape).
    Size(i64),
    /// The batch size, read from the input at run time.
    Batch,
}

/// The integers of a `Const` int32/int64 node (scalar or vector).
fn const_ints(n: &NodeDef) -> std::result::Result<Vec<i64>, String> {
    use formats::proto::types::DataType;
    if n.op != "Const" {
        return Err(format!("'{}' is a {}, not a constant", n.name, n.op));
    }
    let t = n.attr.get("value").map(|a| a.tensor()).ok_or_else(|| format!("constant '{}' has no value", n.name))?;
    let bytes = &t.tensor_content;
    match t.dtype.enum_value_or_default() {
        DataType::DT_INT32 if !bytes.is_empty() => {
            Ok(bytes.chunks_exact(4).map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect())
        }
        DataType::DT_INT32 => Ok(t.int_val.iter().map(|&v| i64::from(v)).collect()),
        DataType::DT_INT64 if !bytes.is_empty() => {
            Ok(bytes.chunks_exact(8).map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect())
        }
        DataType::DT_INT64 => Ok(t.int64_val.clone()),
        other => Err(format!("constant '{}' is {other:?}, not an integer", n.name)),
    }
}

fn check_nhwc(n: &NodeDef) -> std::result::Result<(), String> {
    match n.attr.get("data_format").map(|a| a.s()) {
        None | Some(b"NHWC") => Ok(()),
        Some(f) => Err(format!("'{}' uses data format {}; only NHWC is supported", n.name, String::from_utf8_lossy(f))),
    }
}

fn window(n: &NodeDef, attr: &str) -> std::result::Result<[usize; 2], String> {
    let v = n.attr.get(attr).map(|a| a.list().i.clone()).unwrap_or_default();
    match v.as_slice() {
        [1, h, w, 1] if *h > 0 && *w > 0 => Ok([*h as usize, *w as usize]),
        _ => Err(format!("'{}' has {attr} {v:?}; expected [1, h, w, 1]", n.name)),
    }
}

fn padding(n: &NodeDef) -> std::result::Result<Padding, String> {
    match n.attr.get("padding").map(|a| a.s()) {
        Some(b"SAME") => Ok(Padding::Same),
        Some(b"VALID") => Ok(Padding::Valid),
        other => Err(format!("'{}' has padding {:?}; only SAME and VALID are supported", n.name, other.map(String::from_utf8_lossy))),
    }
}

fn main_to_op(layer: &str, n: &NodeDef) -> std::result::Result<Op, String> {
    if n.op == "MatMul" {
        let flag = |a: &str| n.attr.get(a).is_some_and(|v| v.b());
        if flag("transpose_a") || flag("transpose_b") {
            return Err(format!("'{}' is a transposed MatMul", n.name));
        }
        return Ok(Op::Dense { layer: layer.to_string() });
    }
    check_nhwc(n)?;
    if let Some(d) = n.attr.get("dilations") {
        if d.list().i.iter().any(|&x| x != 1) {
            return Err(format!("'{}' is a dilated convolution", n.name));
        }
    }
    Ok(Op::Conv2d { layer: layer.to_string(), strides: window(n, "strides")?, padding: padding(n)? })
}

/// Recovers the network from the nodes of a GraphDef; `Err` says what is not supported.
pub fn arch_from_nodes(nodes: &[NodeDef]) -> std::result::Result<Arch, String> {
    arch_from_graph(nodes, &[])
}

/// [`arch_from_nodes`] with the graph's function library (the bodies of `If` branches).
pub fn arch_from_graph(nodes: &[NodeDef], functions: &[FunctionDef]) -> std::result::Result<Arch, String> {
    let g = Graph::new(nodes, functions);
    if g.layers.is_empty() {
        return Err("the graph has no kernel variables (kernel_posterior_loc / kernel)".into());
    }
    let mut best: Option<(usize, Vec<Op>, &NodeDef)> = None;
    let mut first_err = None;
    for layer in &g.layers {
        let Some(out) = g.layer_output(layer) else { continue };
        match g.trace(out) {
            Ok((ops, ph)) => {
                let weights = weight_count(&ops);
                if best.as_ref().is_none_or(|b| weights > b.0) {
                    best = Some((weights, ops, ph));
                }
            }
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    let Some((_, ops, ph)) = best else {
        return Err(first_err.unwrap_or_else(|| "no layer has a BiasAdd output".into()));
    };
    let dims: Vec<i64> = ph.attr.get("shape").map(|a| a.shape().dim.iter().map(|d| d.size).collect()).unwrap_or_default();
    let input_shape: Vec<usize> = match dims.split_first() {
        Some((_, rest)) if !rest.is_empty() && rest.iter().all(|&d| d > 0) => rest.iter().map(|&d| d as usize).collect(),
        _ => return Err(format!("input placeholder '{}' has shape {dims:?}; need [batch, known sizes...]", ph.name)),
    };
    Ok(Arch { input_name: ph.name.clone(), input_shape, ops })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(p: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(p)
    }

    #[test]
    fn recovers_the_tf1_mlp() {
        let arch = read_arch(&fixture("tf1_bnn_fc/model.ckpt-3000.meta")).expect("arch");
        let d = |l: &str| Op::Dense { layer: l.into() };
        assert_eq!(arch.input_name, "Placeholder");
        assert_eq!(arch.input_shape, vec![64]);
        assert_eq!(arch.ops, vec![d("den_1"), Op::Relu, d("den_2"), Op::Relu, d("den_3")]);
    }

    #[test]
    fn recovers_the_tf1_conv_net() {
        let arch = read_arch(&fixture("tf1_bnn_conv/model.ckpt-2000.meta")).expect("arch");
        let c = |l: &str| Op::Conv2d { layer: l.into(), strides: [1, 1], padding: Padding::Same };
        assert_eq!(arch.input_shape, vec![8, 8, 1]);
        assert_eq!(
            arch.ops,
            vec![
                c("Conv_1"),
                Op::Relu,
                Op::MaxPool { size: [2, 2], strides: [2, 2], padding: Padding::Valid },
                c("Conv_2"),
                Op::Relu,
                Op::Flatten,
                Op::Dense { layer: "den_out".into() },
            ]
        );
    }

    #[test]
    fn activation_cycles_end_the_search_instead_of_hanging() {
        // BiasAdd -> Relu <-> Identity: the old walk after the BiasAdd went round for ever.
        let node = |name: &str, op: &str, inputs: &[&str]| {
            let mut n = NodeDef::new();
            n.name = name.into();
            n.op = op.into();
            n.input = inputs.iter().map(|s| s.to_string()).collect();
            n
        };
        let nodes = vec![
            node("den_1/kernel_posterior_loc", "VariableV2", &[]),
            node("den_1/BiasAdd", "BiasAdd", &[]),
            node("r", "Relu", &["den_1/BiasAdd", "i"]),
            node("i", "Identity", &["r"]),
        ];
        assert_eq!(arch_from_nodes(&nodes), Err("no layer has a BiasAdd output".to_string()));
    }

    #[test]
    fn graph_without_kernels_is_an_error_naming_the_file() {
        let e = read_arch(&fixture("tf1_two_shards/model.ckpt.meta")).expect_err("no BNN");
        assert!(e.to_string().contains("model.ckpt.meta"), "{e}");
        let e = read_arch(&fixture("tf1_bnn_fc/model.ckpt-3000.index")).expect_err("not a meta");
        assert!(e.to_string().contains("model.ckpt-3000.index"), "{e}");
    }
}
