//! ONNX export of a BNN: an [`Arch`] and its [`Posterior`]s to an ONNX `ModelProto`
//! (opset 17), as edge runtimes load it. See `docs/onnx.md`.
//!
//! * [`Mode::Mean`]: the deterministic network with weights = mu. Input `[batch, ...]` (the
//!   TF input shape, NHWC for images), outputs `logits` and `probabilities` `[batch, classes]`.
//! * [`Mode::MonteCarlo`]: S weight samples mu + sigma * eps drawn in the runtime
//!   (`RandomNormalLike`), all S networks evaluated in one pass: dense kernels are stacked to
//!   `[S, in, out]` (batched MatMul), convolutions become one grouped Conv with S groups.
//!   Outputs `probabilities_mean` and `probabilities_variance` (over the S samples, divided by
//!   S) `[batch, classes]`.
//!
//! Convolutions run NCHW inside the graph: the input is transposed once, and back to NHWC
//! before flattening so that dense kernels see TensorFlow's feature order.

use std::io::Write;
use std::path::Path;

pub use onnx_protobuf::ModelProto;
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension::Value as DimValue,
    tensor_shape_proto::Dimension, type_proto, AttributeProto, GraphProto, Message, NodeProto,
    OperatorSetIdProto, SparseTensorProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

use crate::arch::{shape_check, Arch, Op, Padding, Posterior};
use formats::error::{Error, Result};

/// The ONNX operator set the export targets.
pub const OPSET: i64 = 17;

/// Which network to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Weights = posterior means.
    Mean,
    /// Monte Carlo over `samples` weight draws in the runtime.
    MonteCarlo {
        /// Number of weight samples S.
        samples: usize,
    },
}

/// How kernels are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sparse {
    /// Sparse initializer where it is smaller than the dense tensor (below 1/3 non-zeros).
    Auto,
    /// Every kernel as a sparse initializer.
    Always,
    /// Dense initializers only: loads in every runtime.
    Never,
}

/// Export options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Mean or Monte Carlo network.
    pub mode: Mode,
    /// Storage of kernels.
    pub sparse: Sparse,
}

struct Builder {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    sparse_inits: Vec<SparseTensorProto>,
    sparse: Sparse,
    counter: usize,
}

/// What the current tensor looks like: `[N|S,N, features]` or `[N, S*C, H, W]`.
#[derive(Clone)]
struct Cur {
    name: String,
    /// Per-example TF shape (`[k]` or `[h, w, c]`).
    shape: Vec<usize>,
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), type_: AttributeType::INTS.into(), ints: v.to_vec(), ..Default::default() }
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), type_: AttributeType::INT.into(), i: v, ..Default::default() }
}

/// An element type of ONNX initializers, stored as little-endian `raw_data`.
trait Element: Copy {
    /// Its ONNX data type.
    const DATA_TYPE: DataType;
    /// Appends its little-endian bytes to `out`.
    fn put(self, out: &mut Vec<u8>);
}

/// [`Element`] for primitive types with `to_le_bytes`.
macro_rules! element {
    ($($t:ty => $dtype:ident),*) => {$(
        impl Element for $t {
            const DATA_TYPE: DataType = DataType::$dtype;
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}

element!(f32 => FLOAT, i64 => INT64);

/// An initializer `name` of shape `dims` holding `values`.
fn tensor<T: Element>(name: &str, dims: &[usize], values: &[T]) -> TensorProto {
    let mut raw_data = Vec::with_capacity(std::mem::size_of_val(values));
    for v in values {
        v.put(&mut raw_data);
    }
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: T::DATA_TYPE as i32,
        raw_data,
        ..Default::default()
    }
}

/// HWIO (TF) to OIHW (ONNX).
fn hwio_to_oihw(v: &[f32], k: &[usize]) -> Vec<f32> {
    let (kh, kw, ci, co) = (k[0], k[1], k[2], k[3]);
    let mut out = vec![0.0; v.len()];
    for h in 0..kh {
        for w in 0..kw {
            for i in 0..ci {
                for o in 0..co {
                    out[((o * ci + i) * kh + h) * kw + w] = v[((h * kw + w) * ci + i) * co + o];
                }
            }
        }
    }
    out
}

/// ONNX pads `[top, left, bottom, right]` for a TF padding mode.
fn pads(p: Padding, hw: &[usize], window: &[usize], strides: &[usize; 2]) -> Vec<i64> {
    let mut begin = Vec::new();
    let mut end = Vec::new();
    for d in 0..2 {
        let (out, before) = p.output(hw[d], window[d], strides[d]);
        let total = ((out.max(1) - 1) * strides[d] + window[d]).saturating_sub(hw[d]);
        let total = if p == Padding::Valid { 0 } else { total };
        begin.push(before as i64);
        end.push((total - before) as i64);
    }
    begin.extend(end);
    begin
}

impl Builder {
    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// Adds a node; returns its (single) output name. `name` ends the node name (tract keys
    /// `RandomNormalLike` on a node name ending in `Like`).
    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.fresh(op);
        self.nodes.push(NodeProto {
            name: format!("{out}_{op}"),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    fn const_i64(&mut self, hint: &str, values: &[i64]) -> String {
        let name = self.fresh(hint);
        self.inits.push(tensor(&name, &[values.len()], values));
        name
    }

    /// A float scalar initializer.
    fn const_f32(&mut self, hint: &str, value: f32) -> String {
        let name = self.fresh(hint);
        self.inits.push(tensor(&name, &[], &[value]));
        name
    }

    /// A float initializer; kernels (`kernel == true`) may be stored sparse.
    fn init(&mut self, name: &str, dims: &[usize], values: &[f32], kernel: bool) -> String {
        let nnz = values.iter().filter(|v| **v != 0.0).count();
        // A sparse entry costs 4 bytes of value + 8 of int64 index against 4 dense bytes.
        let sparse = kernel
            && match self.sparse {
                Sparse::Always => true,
                Sparse::Auto => nnz * 12 < values.len() * 4,
                Sparse::Never => false,
            };
        if sparse {
            let (idx, vals): (Vec<i64>, Vec<f32>) =
                values.iter().enumerate().filter(|(_, v)| **v != 0.0).map(|(i, v)| (i as i64, *v)).unzip();
            self.sparse_inits.push(SparseTensorProto {
                values: Some(tensor(name, &[vals.len()], &vals)).into(),
                indices: Some(tensor(&format!("{name}_indices"), &[idx.len()], &idx)).into(),
                dims: dims.iter().map(|&d| d as i64).collect(),
                ..Default::default()
            });
        } else {
            self.inits.push(tensor(name, dims, values));
        }
        name.to_string()
    }

    /// mu + sigma * eps with eps drawn in the runtime, shape `[S, dims...]`.
    fn sample(&mut self, name: &str, dims: &[usize], mu: &[f32], sigma: &[f32], samples: usize) -> String {
        let mu = self.init(&format!("{name}_mu"), dims, mu, true);
        let sigma = self.init(&format!("{name}_sigma"), dims, sigma, true);
        let shape: Vec<i64> = std::iter::once(samples as i64).chain(dims.iter().map(|&d| d as i64)).collect();
        let shape = self.const_i64(&format!("{name}_shape"), &shape);
        let sigma_s = self.node("Expand", &[&sigma, &shape], vec![]);
        let eps = self.fresh(&format!("{name}_eps"));
        self.nodes.push(NodeProto {
            name: format!("{eps}_RandomNormalLike"),
            op_type: "RandomNormalLike".into(),
            input: vec![sigma_s.clone()],
            output: vec![eps.clone()],
            attribute: vec![attr_int("dtype", DataType::FLOAT as i64)],
            ..Default::default()
        });
        let noise = self.node("Mul", &[&sigma_s, &eps], vec![]);
        self.node("Add", &[&mu, &noise], vec![])
    }

    /// Each example's values in TF's (NHWC, C) order: `[N, features]` (mean) or
    /// `[S, N, features]` (MC; a vector that no sampled layer has touched yet stays `[N, features]`).
    fn rows_of(&mut self, cur: &Cur, s: usize, mc: bool) -> String {
        if cur.shape.len() != 3 {
            return cur.name.clone();
        }
        let (h, w, c) = (cur.shape[0], cur.shape[1], cur.shape[2]);
        let n = h * w * c;
        if mc {
            // [N, S*C, H, W] -> [N, S, C, H, W] -> [S, N, H, W, C] -> [S, N, HWC]
            let split = self.const_i64("split_samples", &[0, s as i64, c as i64, h as i64, w as i64]);
            let x = self.node("Reshape", &[&cur.name, &split], vec![]);
            let x = self.node("Transpose", &[&x], vec![attr_ints("perm", &[1, 0, 3, 4, 2])]);
            let flat = self.const_i64("flat_shape", &[s as i64, -1, n as i64]);
            self.node("Reshape", &[&x, &flat], vec![])
        } else {
            let x = self.node("Transpose", &[&cur.name], vec![attr_ints("perm", &[0, 2, 3, 1])]);
            self.node("Flatten", &[&x], vec![attr_int("axis", 1)])
        }
    }

    /// The inverse of [`Builder::rows_of`] for an `[h, w, c]` image: `[N, C, H, W]` (mean) or
    /// the sample-grouped `[N, S*C, H, W]` (MC).
    fn rows_to_image(&mut self, rows: &str, shape: &[usize], s: usize, mc: bool) -> String {
        let (h, w, c) = (shape[0] as i64, shape[1] as i64, shape[2] as i64);
        if mc {
            // Vectors not yet sampled ([N, k]) broadcast to [S, N, k]; sampled ones stay.
            let reps = self.const_i64("sample_broadcast", &[s as i64, 1, 1]);
            let x = self.node("Expand", &[rows, &reps], vec![]);
            let split = self.const_i64("image_shape", &[s as i64, -1, h, w, c]);
            let x = self.node("Reshape", &[&x, &split], vec![]);
            // [S, N, H, W, C] -> [N, S, C, H, W] -> [N, S*C, H, W]
            let x = self.node("Transpose", &[&x], vec![attr_ints("perm", &[1, 0, 4, 2, 3])]);
            let grouped = self.const_i64("grouped_shape", &[0, s as i64 * c, h, w]);
            self.node("Reshape", &[&x, &grouped], vec![])
        } else {
            let nhwc = self.const_i64("image_shape", &[-1, h, w, c]);
            let x = self.node("Reshape", &[rows, &nhwc], vec![]);
            self.node("Transpose", &[&x], vec![attr_ints("perm", &[0, 3, 1, 2])])
        }
    }

    fn ops(&mut self, ops: &[Op], mut cur: Cur, posts: &mut std::slice::Iter<'_, Posterior>, mode: Mode) -> Cur {
        let s = match mode {
            Mode::Mean => 1,
            Mode::MonteCarlo { samples } => samples,
        };
        let mc = matches!(mode, Mode::MonteCarlo { .. });
        for op in ops {
            cur = match op {
                Op::Dense { .. } => {
                    let Some(p) = posts.next() else { return cur };
                    let (k, o) = (p.kernel_shape[0], p.kernel_shape[1]);
                    let w = match (&p.kernel_sigma, mc) {
                        (Some(sig), true) => self.sample(&p.name, &[k, o], &p.kernel_mu, sig, s),
                        _ => self.init(&format!("{}/kernel", p.name), &[k, o], &p.kernel_mu, true),
                    };
                    let b = match (&p.bias_sigma, mc) {
                        (Some(sig), true) => self.sample(&format!("{}/bias", p.name), &[1, o], &p.bias_mu, sig, s),
                        _ => self.init(&format!("{}/bias", p.name), &[o], &p.bias_mu, false),
                    };
                    let m = self.node("MatMul", &[&cur.name, &w], vec![]);
                    Cur { name: self.node("Add", &[&m, &b], vec![]), shape: vec![o] }
                }
                Op::Conv2d { strides, padding, .. } => {
                    let Some(p) = posts.next() else { return cur };
                    let k = &p.kernel_shape;
                    let (kh, kw, ci, co) = (k[0], k[1], k[2], k[3]);
                    let mu = hwio_to_oihw(&p.kernel_mu, k);
                    let w = match (&p.kernel_sigma, mc) {
                        (Some(sig), true) => {
                            let sig = hwio_to_oihw(sig, k);
                            let w = self.sample(&p.name, &[co, ci, kh, kw], &mu, &sig, s);
                            let shape = self.const_i64("group_kernel_shape", &[(s * co) as i64, ci as i64, kh as i64, kw as i64]);
                            self.node("Reshape", &[&w, &shape], vec![])
                        }
                        _ if mc => {
                            let tiled: Vec<f32> = (0..s).flat_map(|_| mu.iter().copied()).collect();
                            self.init(&format!("{}/kernel", p.name), &[s * co, ci, kh, kw], &tiled, true)
                        }
                        _ => self.init(&format!("{}/kernel", p.name), &[co, ci, kh, kw], &mu, true),
                    };
                    let b = match (&p.bias_sigma, mc) {
                        (Some(sig), true) => {
                            let b = self.sample(&format!("{}/bias", p.name), &[co], &p.bias_mu, sig, s);
                            let shape = self.const_i64("group_bias_shape", &[(s * co) as i64]);
                            self.node("Reshape", &[&b, &shape], vec![])
                        }
                        _ => {
                            let tiled: Vec<f32> = (0..s).flat_map(|_| p.bias_mu.iter().copied()).collect();
                            self.init(&format!("{}/bias", p.name), &[s * co], &tiled, false)
                        }
                    };
                    let attrs = vec![
                        attr_ints("kernel_shape", &[kh as i64, kw as i64]),
                        attr_ints("strides", &[strides[0] as i64, strides[1] as i64]),
                        attr_ints("pads", &pads(*padding, &cur.shape, &[kh, kw], strides)),
                        attr_int("group", s as i64),
                    ];
                    let out = self.node("Conv", &[&cur.name, &w, &b], attrs);
                    let h = padding.output(cur.shape[0], kh, strides[0]).0;
                    let wd = padding.output(cur.shape[1], kw, strides[1]).0;
                    Cur { name: out, shape: vec![h, wd, co] }
                }
                Op::Relu => Cur { name: self.node("Relu", &[&cur.name], vec![]), shape: cur.shape },
                Op::Relu6 => {
                    let lo = self.const_f32("relu6_min", 0.0);
                    let hi = self.const_f32("relu6_max", 6.0);
                    Cur { name: self.node("Clip", &[&cur.name, &lo, &hi], vec![]), shape: cur.shape }
                }
                // ONNX Elu's default alpha is 1, as TF's.
                Op::Elu => Cur { name: self.node("Elu", &[&cur.name], vec![]), shape: cur.shape },
                Op::Sigmoid => Cur { name: self.node("Sigmoid", &[&cur.name], vec![]), shape: cur.shape },
                Op::Tanh => Cur { name: self.node("Tanh", &[&cur.name], vec![]), shape: cur.shape },
                Op::MaxPool { size, strides, padding } | Op::AvgPool { size, strides, padding } => {
                    let mut attrs = vec![
                        attr_ints("kernel_shape", &[size[0] as i64, size[1] as i64]),
                        attr_ints("strides", &[strides[0] as i64, strides[1] as i64]),
                        attr_ints("pads", &pads(*padding, &cur.shape, size, strides)),
                    ];
                    let kind = if matches!(op, Op::MaxPool { .. }) {
                        "MaxPool"
                    } else {
                        // TF averages over the window's positions inside the image only.
                        attrs.push(attr_int("count_include_pad", 0));
                        "AveragePool"
                    };
                    let h = padding.output(cur.shape[0], size[0], strides[0]).0;
                    let w = padding.output(cur.shape[1], size[1], strides[1]).0;
                    Cur { name: self.node(kind, &[&cur.name], attrs), shape: vec![h, w, cur.shape[2]] }
                }
                Op::GlobalAvgPool => {
                    // [N, (S*)C, 1, 1] is a 1x1 image: rows_of makes it [N, C] / [S, N, C].
                    let c = cur.shape[2];
                    let pooled = Cur { name: self.node("GlobalAveragePool", &[&cur.name], vec![]), shape: vec![1, 1, c] };
                    Cur { name: self.rows_of(&pooled, s, mc), shape: vec![c] }
                }
                // Bound ops always carry their statistics; an unbound one is left out of
                // shape_check's reach only in hand-built calls (nothing to compute with).
                Op::BatchNorm { params: None, .. } => cur,
                Op::BatchNorm { layer, epsilon, params: Some(p) } if cur.shape.len() == 3 => {
                    // Images: ONNX BatchNormalization over the channel axis of [N, (S*)C, H, W]
                    // (the S sample groups share the statistics).
                    let tile = |v: &[f32]| -> Vec<f32> { (0..s).flat_map(|_| v.iter().copied()).collect() };
                    let c = p.mean.len() * s;
                    let names: Vec<String> = [("gamma", &p.gamma), ("beta", &p.beta), ("moving_mean", &p.mean), ("moving_variance", &p.variance)]
                        .iter()
                        .map(|(n, v)| self.init(&format!("{layer}/{n}"), &[c], &tile(v), false))
                        .collect();
                    let attrs = vec![AttributeProto { name: "epsilon".into(), type_: AttributeType::FLOAT.into(), f: *epsilon, ..Default::default() }];
                    let name = self.node("BatchNormalization", &[&cur.name, &names[0], &names[1], &names[2], &names[3]], attrs);
                    Cur { name, shape: cur.shape }
                }
                Op::BatchNorm { layer, epsilon, params: Some(p) } => {
                    // Vectors ([N, C] or [S, N, C]): the same per-channel affine map, broadcast
                    // over the last axis.
                    let (scale, shift) = p.scale_shift(*epsilon);
                    let c = scale.len();
                    let scale = self.init(&format!("{layer}/scale"), &[c], &scale, false);
                    let shift = self.init(&format!("{layer}/shift"), &[c], &shift, false);
                    let m = self.node("Mul", &[&cur.name, &scale], vec![]);
                    Cur { name: self.node("Add", &[&m, &shift], vec![]), shape: cur.shape }
                }
                Op::Pad { pads: [t, b, l, r] } => {
                    // NCHW: begins of N, C, H, W then their ends; the sample groups share C.
                    let p = self.const_i64("pads", &[0, 0, *t as i64, *l as i64, 0, 0, *b as i64, *r as i64]);
                    let shape = vec![cur.shape[0] + t + b, cur.shape[1] + l + r, cur.shape[2]];
                    Cur { name: self.node("Pad", &[&cur.name, &p], vec![]), shape }
                }
                Op::Flatten if cur.shape.len() == 1 => cur,
                Op::Flatten => {
                    let n = cur.shape.iter().product();
                    Cur { name: self.rows_of(&cur, s, mc), shape: vec![n] }
                }
                Op::Reshape { shape } if shape.len() == 1 => Cur { name: self.rows_of(&cur, s, mc), shape: shape.clone() },
                Op::Reshape { shape } => {
                    let rows = self.rows_of(&cur, s, mc);
                    Cur { name: self.rows_to_image(&rows, shape, s, mc), shape: shape.clone() }
                }
                Op::Residual { body, shortcut, relu } => {
                    let a = self.ops(body, cur.clone(), posts, mode);
                    let b = self.ops(shortcut, cur, posts, mode);
                    let sum = self.node("Add", &[&a.name, &b.name], vec![]);
                    let name = if *relu { self.node("Relu", &[&sum], vec![]) } else { sum };
                    Cur { name, shape: a.shape }
                }
            };
        }
        cur
    }
}

fn value_info(name: &str, dims: &[Option<usize>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(n) => DimValue::DimValue(*n as i64),
                None => DimValue::DimParam("batch".into()),
            }),
            ..Default::default()
        })
        .collect();
    let tensor = type_proto::Tensor {
        elem_type: DataType::FLOAT as i32,
        shape: Some(TensorShapeProto { dim, ..Default::default() }).into(),
        ..Default::default()
    };
    ValueInfoProto {
        name: name.into(),
        type_: Some(TypeProto { value: Some(type_proto::Value::TensorType(tensor)), ..Default::default() }).into(),
        ..Default::default()
    }
}

/// Builds the ONNX model. `arch` and `posts` come from [`Arch::bind`]; `source` (the
/// checkpoint) is named in errors.
pub fn build(arch: &Arch, posts: &[Posterior], opts: Options, source: &Path) -> Result<ModelProto> {
    let out_shape = shape_check(arch, posts).map_err(|e| Error::invalid(source, e))?;
    let [classes] = out_shape[..] else {
        return Err(Error::invalid(source, format!("the network ends in shape {out_shape:?}, not a vector of logits")));
    };
    let samples = match opts.mode {
        Mode::MonteCarlo { samples: 0 } => return Err(Error::invalid(source, "--samples must be at least 1")),
        Mode::MonteCarlo { samples } => samples,
        Mode::Mean => 1,
    };
    if matches!(opts.mode, Mode::MonteCarlo { .. }) && posts.iter().all(|p| p.kernel_sigma.is_none()) {
        return Err(Error::invalid(source, "no Bayesian layer (kernel_posterior_untransformed_scale) to sample; use --mode mean"));
    }
    let mut b = Builder { nodes: vec![], inits: vec![], sparse_inits: vec![], sparse: opts.sparse, counter: 0 };
    let input = arch.input_name.clone();
    let mut cur = Cur { name: input.clone(), shape: arch.input_shape.clone() };
    if cur.shape.len() == 3 {
        cur.name = b.node("Transpose", &[&input], vec![attr_ints("perm", &[0, 3, 1, 2])]);
        if samples > 1 {
            // Channel groups for the grouped convolutions: [x; x; ...] along channels.
            let reps = b.const_i64("sample_repeats", &[1, samples as i64, 1, 1]);
            cur.name = b.node("Tile", &[&cur.name, &reps], vec![]);
        }
    }
    let cur = b.ops(&arch.ops, cur, &mut posts.iter(), opts.mode);
    let outputs = match opts.mode {
        Mode::Mean => {
            b.nodes.push(NodeProto {
                name: "logits_Identity".into(),
                op_type: "Identity".into(),
                input: vec![cur.name.clone()],
                output: vec!["logits".into()],
                ..Default::default()
            });
            b.nodes.push(NodeProto {
                name: "probabilities_Softmax".into(),
                op_type: "Softmax".into(),
                input: vec!["logits".into()],
                output: vec!["probabilities".into()],
                attribute: vec![attr_int("axis", -1)],
                ..Default::default()
            });
            vec!["logits", "probabilities"]
        }
        Mode::MonteCarlo { .. } => {
            let p = b.node("Softmax", &[&cur.name], vec![attr_int("axis", -1)]);
            let reduce = || vec![attr_ints("axes", &[0]), attr_int("keepdims", 0)];
            b.nodes.push(NodeProto {
                name: "probabilities_mean_ReduceMean".into(),
                op_type: "ReduceMean".into(),
                input: vec![p.clone()],
                output: vec!["probabilities_mean".into()],
                attribute: reduce(),
                ..Default::default()
            });
            let d = b.node("Sub", &[&p, "probabilities_mean"], vec![]);
            let sq = b.node("Mul", &[&d, &d], vec![]);
            b.nodes.push(NodeProto {
                name: "probabilities_variance_ReduceMean".into(),
                op_type: "ReduceMean".into(),
                input: vec![sq],
                output: vec!["probabilities_variance".into()],
                attribute: reduce(),
                ..Default::default()
            });
            vec!["probabilities_mean", "probabilities_variance"]
        }
    };
    let in_dims: Vec<Option<usize>> = std::iter::once(None).chain(arch.input_shape.iter().map(|&d| Some(d))).collect();
    let graph = GraphProto {
        name: "bnn".into(),
        node: b.nodes,
        initializer: b.inits,
        sparse_initializer: b.sparse_inits,
        input: vec![value_info(&input, &in_dims)],
        output: outputs.iter().map(|o| value_info(o, &[None, Some(classes)])).collect(),
        ..Default::default()
    };
    Ok(ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET, ..Default::default() }],
        producer_name: "bnn-convert".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph).into(),
        ..Default::default()
    })
}

/// Replaces sparse initializers by the equivalent dense ones (for runtimes without sparse
/// initializer support, e.g. tract).
pub fn densify(model: &mut ModelProto) {
    let Some(graph) = model.graph.as_mut() else { return };
    for sp in std::mem::take(&mut graph.sparse_initializer) {
        let (Some(values), Some(indices)) = (sp.values.as_ref(), sp.indices.as_ref()) else { continue };
        let n: i64 = sp.dims.iter().product();
        let mut dense = vec![0f32; n.max(0) as usize];
        let vals = values.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        let idx = indices.raw_data.chunks_exact(8).map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]));
        for (i, v) in idx.zip(vals) {
            if let Some(slot) = dense.get_mut(i as usize) {
                *slot = v;
            }
        }
        let dims: Vec<usize> = sp.dims.iter().map(|&d| d as usize).collect();
        graph.initializer.push(tensor(&values.name, &dims, &dense));
    }
}

/// The serialized model; `path` (the destination) is named in errors.
pub fn encode(model: &ModelProto, path: &Path) -> Result<Vec<u8>> {
    model.write_to_bytes().map_err(|e| Error::invalid(path, format!("cannot encode the ONNX model: {e}")))
}

/// Writes `model` to `path` atomically (see [`formats::output_file`]).
pub fn write(model: &ModelProto, path: &Path) -> Result<()> {
    let bytes = encode(model, path)?;
    formats::output_file::write_atomically(path, |w| w.write_all(&bytes).map_err(|e| Error::io(path, e)))
}

/// Reads an ONNX model file.
pub fn read(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    ModelProto::parse_from_bytes(&bytes).map_err(|e| Error::corrupt(path, format!("not an ONNX model: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hwio_to_oihw_moves_each_weight() {
        // k = [kh=1, kw=2, in=2, out=3]; each HWIO value is its own flat index.
        let k = [1, 2, 2, 3];
        let v: Vec<f32> = (0..12).map(|x| x as f32).collect();
        let t = hwio_to_oihw(&v, &k);
        let oihw = |o: usize, i: usize, w: usize| t[(o * 2 + i) * 2 + w];
        // HWIO[0][1][1][2] = ((0*2+1)*2+1)*3+2 = 11; HWIO[0][0][0][1] = 1.
        assert_eq!(oihw(2, 1, 1), 11.0);
        assert_eq!(oihw(1, 0, 0), 1.0);
        assert_eq!(oihw(0, 1, 0), 3.0);
    }

    #[test]
    fn same_pads_put_the_extra_row_after() {
        assert_eq!(pads(Padding::Same, &[8, 8], &[5, 5], &[1, 1]), vec![2, 2, 2, 2]);
        assert_eq!(pads(Padding::Same, &[8, 8], &[2, 2], &[2, 2]), vec![0, 0, 0, 0]);
        assert_eq!(pads(Padding::Same, &[7, 7], &[3, 3], &[2, 2]), vec![1, 1, 1, 1]);
        assert_eq!(pads(Padding::Same, &[8, 8], &[3, 3], &[2, 2]), vec![0, 0, 1, 1]);
        assert_eq!(pads(Padding::Valid, &[8, 8], &[3, 3], &[2, 2]), vec![0, 0, 0, 0]);
    }
}
