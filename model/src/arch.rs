//! Architecture description: the network a BNN checkpoint's posterior variables belong to.
//!
//! An [`Arch`] is an input shape (one example, batch dimension excluded; images NHWC) and a
//! sequence of [`Op`]s from the input to the logits. Weight ops name the checkpoint layer
//! (variable scope) holding their parameters. It comes from the `.meta` graph
//! ([`crate::meta_graph`]), from a JSON file, or from a preset ([`Arch::preset`]); the JSON
//! form is documented in `docs/architecture.md`. [`Arch::bind`] checks it against a
//! checkpoint and loads the weights it uses ([`Posterior`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use formats::checkpoint::Checkpoint;
use formats::dtype::DType;
use formats::error::{Error, Result};
use formats::layout::{Layer, Param};

use crate::softplus::softplus_f32;

/// Zero padding of a convolution or pooling window, as TensorFlow defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Padding {
    /// Output size ceil(in / stride); the padding is split, the larger half after.
    Same,
    /// No padding: output size ceil((in - window + 1) / stride).
    Valid,
}

impl Padding {
    /// Output length and padding before, for an input of `len`, a window and a stride.
    pub fn output(self, len: usize, window: usize, stride: usize) -> (usize, usize) {
        match self {
            Padding::Same => {
                let out = len.div_ceil(stride);
                // Saturating: window and stride come from a `.meta` file.
                let total = out.saturating_sub(1).saturating_mul(stride).saturating_add(window).saturating_sub(len);
                (out, total / 2)
            }
            Padding::Valid => (len.checked_sub(window).map_or(0, |d| d.saturating_add(1).div_ceil(stride)), 0),
        }
    }
}

/// One step of the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// `x @ kernel + bias` (MatMul + BiasAdd); kernel `[in, out]`.
    Dense {
        /// Checkpoint layer holding the kernel and bias (`den_1`); empty in presets, filled by
        /// [`Arch::bind`] with the checkpoint's layers in order.
        layer: String,
    },
    /// 2-D convolution (Conv2D + BiasAdd), NHWC, kernel `[kh, kw, in, out]`.
    Conv2d {
        /// Checkpoint layer holding the kernel and bias.
        layer: String,
        /// Stride along height and width.
        strides: [usize; 2],
        /// Padding mode.
        padding: Padding,
    },
    /// Elementwise max(x, 0).
    Relu,
    /// Elementwise min(max(x, 0), 6) (TF `Relu6`).
    Relu6,
    /// Elementwise x for x > 0, e^x - 1 otherwise (TF `Elu`, alpha 1).
    Elu,
    /// Elementwise 1 / (1 + e^-x).
    Sigmoid,
    /// Elementwise tanh(x).
    Tanh,
    /// Average pooling, NHWC (TF `AvgPool`): padded positions are not counted.
    AvgPool {
        /// Window height and width.
        size: [usize; 2],
        /// Stride along height and width.
        strides: [usize; 2],
        /// Padding mode.
        padding: Padding,
    },
    /// Mean over height and width, `[h, w, c]` to `[c]` (TF `Mean` over axes 1, 2; Keras
    /// `GlobalAveragePooling2D`).
    GlobalAvgPool,
    /// Zero padding of an image, NHWC (TF `Pad` / Keras `ZeroPadding2D`).
    Pad {
        /// Rows before and after, columns before and after: `[top, bottom, left, right]`.
        pads: [usize; 4],
    },
    /// Max pooling, NHWC.
    MaxPool {
        /// Window height and width.
        size: [usize; 2],
        /// Stride along height and width.
        strides: [usize; 2],
        /// Padding mode.
        padding: Padding,
    },
    /// Reshape to one dimension per example (Reshape / Flatten), C order.
    Flatten,
    /// TF `Reshape` of each example to `shape` (`[features]` or `[h, w, c]`), C order: the
    /// values keep their order, e.g. a flat `[64]` input to an `[8, 8, 1]` image.
    Reshape {
        /// Shape of one example after the op, batch excluded.
        shape: Vec<usize>,
    },
    /// Batch normalization at inference, per channel (the last dimension):
    /// `(x - moving_mean) / sqrt(moving_variance + epsilon) * gamma + beta` (TF
    /// `FusedBatchNormV3`, or the unfused `batchnorm/mul_1 ... add_1`).
    BatchNorm {
        /// Checkpoint scope holding `gamma` (optional, default 1), `beta` (optional, default
        /// 0), `moving_mean` and `moving_variance`.
        layer: String,
        /// Added to the variance.
        epsilon: f32,
        /// The statistics, loaded by [`Arch::bind`] (not part of the JSON).
        #[serde(skip)]
        params: Option<BatchNormParams>,
    },
    /// `relu(body(x) + shortcut(x))` (or without the relu): a residual block (ResNet); TF
    /// `Add`/`AddV2` of two branches from the same tensor. An empty shortcut is identity.
    Residual {
        /// Main branch.
        body: Vec<Op>,
        /// Projection branch (1x1 strided conv) or empty.
        shortcut: Vec<Op>,
        /// Whether the sum goes through a relu (the ResNet block; the default). Graphs read
        /// from a `.meta` have `false` and the graph's own activation after the `Add`.
        #[serde(default = "default_true", skip_serializing_if = "is_true")]
        relu: bool,
    },
}

/// The variables of a batch normalization layer, one value per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNormParams {
    /// Scale (`gamma`).
    pub gamma: Vec<f32>,
    /// Offset (`beta`).
    pub beta: Vec<f32>,
    /// Moving mean.
    pub mean: Vec<f32>,
    /// Moving variance.
    pub variance: Vec<f32>,
}

impl BatchNormParams {
    /// The equivalent per-channel `x * scale + shift`: scale = gamma / sqrt(variance +
    /// epsilon), shift = beta - mean * scale (what TF's unfused form computes).
    pub fn scale_shift(&self, epsilon: f32) -> (Vec<f32>, Vec<f32>) {
        let scale: Vec<f32> = self.gamma.iter().zip(&self.variance).map(|(g, v)| g / (v + epsilon).sqrt()).collect();
        let shift = self.beta.iter().zip(&self.mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
        (scale, shift)
    }

    fn read(ckpt: &Checkpoint, layer: &str) -> Result<BatchNormParams> {
        let path = ckpt.path();
        let get = |name: &str, required: bool| -> Result<Option<Vec<f32>>> {
            let key = format!("{layer}/{name}");
            // By stored key (TF1), else by variable name (TF2 object graphs, safetensors).
            let var = ckpt.variable(&key).ok().or_else(|| ckpt.variables().iter().find(|v| v.name == key));
            let Some(var) = var else {
                return if required {
                    Err(Error::invalid(path, format!("batch normalization '{layer}' has no '{key}' in the checkpoint")))
                } else {
                    Ok(None)
                };
            };
            let key = var.key.clone();
            if var.info.dtype != DType::Float32 || var.info.shape.len() != 1 {
                return Err(Error::unsupported(path, format!("'{key}' is {:?} {:?}; batch normalization needs a float32 vector", var.info.dtype, var.info.shape)));
            }
            Ok(Some(f32_streamed(ckpt, &key)?))
        };
        let mean = get("moving_mean", true)?.unwrap_or_default();
        let variance = get("moving_variance", true)?.unwrap_or_default();
        let c = mean.len();
        let gamma = get("gamma", false)?.unwrap_or_else(|| vec![1.0; c]);
        let beta = get("beta", false)?.unwrap_or_else(|| vec![0.0; c]);
        if variance.len() != c || gamma.len() != c || beta.len() != c {
            return Err(Error::corrupt(path, format!("batch normalization '{layer}' variables have different lengths")));
        }
        Ok(BatchNormParams { gamma, beta, mean, variance })
    }
}

/// A network: input shape and ops up to the logits (softmax is applied by the predictors).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arch {
    /// Name of the input (the TF placeholder, `Placeholder`); used as ONNX input name.
    #[serde(default = "default_input_name")]
    pub input_name: String,
    /// Shape of one example, without the batch dimension: `[features]` or `[h, w, c]`.
    pub input_shape: Vec<usize>,
    /// Ops from the input to the logits.
    pub ops: Vec<Op>,
}

fn default_true() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn default_input_name() -> String {
    "input".to_string()
}

/// Names accepted by [`Arch::preset`].
pub const PRESETS: [&str; 4] = ["bnn-fc", "bnn-conv", "vgg-16", "resnet-18"];

fn dense() -> Op {
    Op::Dense { layer: String::new() }
}

/// A SAME conv; its kernel size comes from the weights.
fn conv(stride: usize) -> Op {
    Op::Conv2d { layer: String::new(), strides: [stride, stride], padding: Padding::Same }
}

fn pool2() -> Op {
    Op::MaxPool { size: [2, 2], strides: [2, 2], padding: Padding::Valid }
}

impl Arch {
    /// The paper's models, with unnamed layers ([`Arch::bind`] names them):
    /// `bnn-fc` 784-256-256-10 MLP (MNIST); `bnn-conv` two 5x5 conv + 2x2 pool stages and a
    /// dense layer (MNIST 28x28x1); `vgg-16` (CIFAR-10 32x32x3: 13 3x3 convs in 5 pooled
    /// blocks, dense 512, dense 10); `resnet-18` (CIFAR-10: 3x3 stem, 8 basic blocks, global
    /// 4x4 pool, dense 10; no batch norm, as the BNN variant has none).
    pub fn preset(name: &str) -> Option<Arch> {
        let relu = || Op::Relu;
        let (input_shape, ops) = match name {
            "bnn-fc" => (vec![784], vec![dense(), relu(), dense(), relu(), dense()]),
            "bnn-conv" => (
                vec![28, 28, 1],
                vec![conv(1), relu(), pool2(), conv(1), relu(), pool2(), Op::Flatten, dense()],
            ),
            "vgg-16" => {
                let mut ops = Vec::new();
                for convs in [2, 2, 3, 3, 3] {
                    for _ in 0..convs {
                        ops.extend([conv(1), relu()]);
                    }
                    ops.push(pool2());
                }
                ops.extend([Op::Flatten, dense(), relu(), dense()]);
                (vec![32, 32, 3], ops)
            }
            "resnet-18" => {
                let mut ops = vec![conv(1), relu()];
                for (stage, _width) in [64, 128, 256, 512].into_iter().enumerate() {
                    for block in 0..2 {
                        let stride = if stage > 0 && block == 0 { 2 } else { 1 };
                        let shortcut = if stride == 2 { vec![conv(2)] } else { vec![] };
                        ops.push(Op::Residual { body: vec![conv(stride), relu(), conv(1)], shortcut, relu: true });
                    }
                }
                ops.extend([Op::MaxPool { size: [4, 4], strides: [4, 4], padding: Padding::Valid }, Op::Flatten, dense()]);
                (vec![32, 32, 3], ops)
            }
            _ => return None,
        };
        Some(Arch { input_name: default_input_name(), input_shape, ops })
    }

    /// Reads a JSON architecture file, or a preset when `spec` is a preset name.
    pub fn load(spec: &str) -> Result<Arch> {
        if let Some(a) = Arch::preset(spec) {
            return Ok(a);
        }
        let path = Path::new(spec);
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound { path: path.into(), what: format!("no such file (and not a preset: {})", PRESETS.join(", ")) }
            } else {
                Error::io(path, e)
            }
        })?;
        let arch: Arch = serde_json::from_str(&text)
            .map_err(|e| Error::corrupt(path, format!("not an architecture description: {e}")))?;
        if arch.input_shape.is_empty() || arch.input_shape.contains(&0) {
            return Err(Error::invalid(path, "input_shape must be non-empty with positive sizes"));
        }
        fn windows_ok(ops: &[Op]) -> bool {
            ops.iter().all(|op| match op {
                Op::Conv2d { strides, .. } => !strides.contains(&0),
                Op::MaxPool { size, strides, .. } | Op::AvgPool { size, strides, .. } => !strides.contains(&0) && !size.contains(&0),
                Op::Reshape { shape } => !shape.is_empty() && !shape.contains(&0),
                Op::Residual { body, shortcut, .. } => windows_ok(body) && windows_ok(shortcut),
                _ => true,
            })
        }
        if !windows_ok(&arch.ops) {
            return Err(Error::invalid(path, "strides, pool sizes and reshape sizes must be positive"));
        }
        Ok(arch)
    }

    /// Every weight op (Dense, Conv2d), depth first, in execution order.
    pub fn weight_ops_mut(&mut self) -> Vec<&mut String> {
        fn walk<'a>(ops: &'a mut [Op], out: &mut Vec<&'a mut String>) {
            for op in ops {
                match op {
                    Op::Dense { layer } | Op::Conv2d { layer, .. } => out.push(layer),
                    Op::Residual { body, shortcut, .. } => {
                        walk(body, out);
                        walk(shortcut, out);
                    }
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        walk(&mut self.ops, &mut out);
        out
    }

    /// Names of the layers the weight ops use, in execution order.
    pub fn layer_names(&self) -> Vec<String> {
        self.clone().weight_ops_mut().into_iter().map(|s| s.clone()).collect()
    }

    /// Names unnamed weight ops after the checkpoint's weight layers (in checkpoint order),
    /// checks that every named layer exists and that shapes chain, and loads the weights.
    pub fn bind(mut self, ckpt: &Checkpoint) -> Result<(Arch, Vec<Posterior>)> {
        let path = ckpt.path().to_path_buf();
        let layers: Vec<Layer> = ckpt.layers().into_iter().filter(|l| l.get(Param::KernelLoc).is_some() || l.get(Param::Kernel).is_some()).collect();
        let slots = self.weight_ops_mut();
        let unnamed = slots.iter().filter(|s| s.is_empty()).count();
        if unnamed > 0 && (unnamed != slots.len() || slots.len() != layers.len()) {
            return Err(Error::invalid(
                &path,
                format!("architecture has {} weight layers but the checkpoint has {}", slots.len(), layers.len()),
            ));
        }
        for (slot, layer) in slots.into_iter().zip(&layers) {
            if slot.is_empty() {
                *slot = layer.name.clone();
            }
        }
        let mut posts = Vec::new();
        for name in self.layer_names() {
            let layer = layers
                .iter()
                .find(|l| l.name == name)
                .ok_or_else(|| Error::invalid(&path, format!("architecture layer '{name}' has no kernel in the checkpoint")))?;
            posts.push(Posterior::read(ckpt, layer)?);
        }
        fn load_bn(ops: &mut [Op], ckpt: &Checkpoint) -> Result<()> {
            for op in ops {
                match op {
                    Op::BatchNorm { layer, params, .. } => *params = Some(BatchNormParams::read(ckpt, layer)?),
                    Op::Residual { body, shortcut, .. } => {
                        load_bn(body, ckpt)?;
                        load_bn(shortcut, ckpt)?;
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        load_bn(&mut self.ops, ckpt)?;
        shape_check(&self, &posts).map_err(|what| Error::invalid(&path, what))?;
        Ok((self, posts))
    }
}

/// The weights of one layer: posterior means and, for Bayesian layers, scales.
#[derive(Debug, Clone, PartialEq)]
pub struct Posterior {
    /// Layer name.
    pub name: String,
    /// Kernel shape: `[in, out]` (dense) or `[kh, kw, in, out]` (conv).
    pub kernel_shape: Vec<usize>,
    /// Kernel mean mu (or the deterministic kernel), C order.
    pub kernel_mu: Vec<f32>,
    /// Kernel sigma = softplus(rho); `None` for deterministic layers.
    pub kernel_sigma: Option<Vec<f32>>,
    /// Bias mean (zeros when the layer has no bias).
    pub bias_mu: Vec<f32>,
    /// Bias sigma when the bias is Bayesian.
    pub bias_sigma: Option<Vec<f32>>,
}

impl Op {
    /// The elementwise function of an activation op (`None` for other ops): one definition
    /// for every predictor.
    pub fn activation(&self) -> Option<fn(f32) -> f32> {
        match self {
            Op::Relu => Some(|x| x.max(0.0)),
            Op::Relu6 => Some(|x| x.clamp(0.0, 6.0)),
            Op::Elu => Some(|x| if x > 0.0 { x } else { x.exp_m1() }),
            Op::Sigmoid => Some(|x| 1.0 / (1.0 + (-x).exp())),
            Op::Tanh => Some(f32::tanh),
            _ => None,
        }
    }
}


/// The float32 values of tensor `key`, streamed: the checkpoint's mapped pages are released
/// chunk by chunk as they are copied (and the checksum verified as by [`Checkpoint::read`]),
/// so loading a model holds its weights once, not the file's pages beside them.
fn f32_streamed(ckpt: &Checkpoint, key: &str) -> Result<Vec<f32>> {
    // The stored size, bounds-checked against the file (borrowing it maps nothing in).
    let len = ckpt.read_unverified(key)?.bytes().map(<[u8]>::len).ok_or_else(|| Error::corrupt(ckpt.path(), format!("'{key}' has no numeric data")))?;
    let mut dec = F32Decoder { values: Vec::with_capacity(len / 4), carry: Vec::with_capacity(4) };
    ckpt.stream(key, &mut |chunk: &[u8]| {
        dec.push(chunk);
        Ok(())
    })?;
    Ok(dec.values)
}

/// Little-endian float32 values decoded from bytes that arrive in chunks of any length.
struct F32Decoder {
    values: Vec<f32>,
    /// Bytes of a value split across two chunks.
    carry: Vec<u8>,
}

impl F32Decoder {
    fn push(&mut self, mut chunk: &[u8]) {
        if !self.carry.is_empty() {
            let take = (4 - self.carry.len()).min(chunk.len());
            self.carry.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if let [a, b, c, d] = self.carry[..] {
                self.values.push(f32::from_le_bytes([a, b, c, d]));
                self.carry.clear();
            }
        }
        let whole = chunk.chunks_exact(4);
        self.carry.extend_from_slice(whole.remainder());
        self.values.extend(whole.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
    }
}

impl Posterior {
    fn read(ckpt: &Checkpoint, layer: &Layer) -> Result<Posterior> {
        let path = ckpt.path();
        let f32_of = |key: &str| -> Result<(Vec<usize>, Vec<f32>)> {
            let var = ckpt.variable(key)?;
            if var.info.dtype != DType::Float32 {
                return Err(Error::unsupported(path, format!("'{key}' is {:?}; inference needs float32", var.info.dtype)));
            }
            Ok((var.info.shape.iter().map(|&d| d as usize).collect(), f32_streamed(ckpt, key)?))
        };
        let kernel_key = layer.get(Param::KernelLoc).or(layer.get(Param::Kernel));
        let kernel_key = kernel_key.ok_or_else(|| Error::invalid(path, format!("layer '{}' has no kernel", layer.name)))?;
        let (kernel_shape, kernel_mu) = f32_of(kernel_key)?;
        let kernel_sigma = match layer.get(Param::KernelRho) {
            Some(k) => {
                let (shape, rho) = f32_of(k)?;
                if shape != kernel_shape {
                    return Err(Error::corrupt(path, format!("'{k}' shape {shape:?} differs from the kernel's {kernel_shape:?}")));
                }
                Some(rho.into_iter().map(softplus_f32).collect())
            }
            None => None,
        };
        let out = *kernel_shape.last().unwrap_or(&0);
        if kernel_shape.len() != 2 && kernel_shape.len() != 4 {
            return Err(Error::unsupported(path, format!("layer '{}' kernel has rank {}", layer.name, kernel_shape.len())));
        }
        let bias = |p: Param| -> Result<Option<Vec<f32>>> {
            match layer.get(p) {
                Some(k) => {
                    let (shape, v) = f32_of(k)?;
                    if shape != [out] {
                        return Err(Error::corrupt(path, format!("'{k}' shape {shape:?}, expected [{out}]")));
                    }
                    Ok(Some(v))
                }
                None => Ok(None),
            }
        };
        let bias_mu = bias(Param::BiasLoc)?.or(bias(Param::Bias)?).unwrap_or_else(|| vec![0.0; out]);
        let bias_sigma = bias(Param::BiasRho)?.map(|r| r.into_iter().map(softplus_f32).collect());
        Ok(Posterior { name: layer.name.clone(), kernel_shape, kernel_mu, kernel_sigma, bias_mu, bias_sigma })
    }

    /// Number of outputs (units or filters).
    pub fn units(&self) -> usize {
        *self.kernel_shape.last().unwrap_or(&0)
    }

    /// Fraction of kernel weights that are pruned: mu == 0 and sigma == 0 (or no sigma).
    pub fn pruned_fraction(&self) -> f64 {
        let zero = match &self.kernel_sigma {
            Some(s) => self.kernel_mu.iter().zip(s).filter(|(m, s)| **m == 0.0 && **s == 0.0).count(),
            None => self.kernel_mu.iter().filter(|m| **m == 0.0).count(),
        };
        zero as f64 / self.kernel_mu.len().max(1) as f64
    }
}

/// Elements of one example of `shape`; an error when they overflow (shapes come from `.meta`
/// placeholders and architecture files).
fn element_count(shape: &[usize]) -> std::result::Result<usize, String> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| format!("input shape {shape:?} has too many elements"))
}

/// Shape of one example after each op; `Err` says where shapes do not chain.
pub fn shape_check(arch: &Arch, posts: &[Posterior]) -> std::result::Result<Vec<usize>, String> {
    let mut next = 0;
    walk_shapes(&arch.ops, arch.input_shape.clone(), posts, &mut next)
}

fn walk_shapes(ops: &[Op], mut shape: Vec<usize>, posts: &[Posterior], next: &mut usize) -> std::result::Result<Vec<usize>, String> {
    for op in ops {
        shape = match op {
            Op::Dense { layer } => {
                let p = posts.get(*next).ok_or_else(|| format!("dense layer '{layer}' has no weights"))?;
                *next += 1;
                let n = element_count(&shape)?;
                if p.kernel_shape.len() != 2 || p.kernel_shape[0] != n || shape.len() != 1 {
                    return Err(format!("dense layer '{layer}' kernel {:?} does not take input {shape:?}", p.kernel_shape));
                }
                vec![p.kernel_shape[1]]
            }
            Op::Conv2d { layer, strides, padding } => {
                let p = posts.get(*next).ok_or_else(|| format!("conv layer '{layer}' has no weights"))?;
                *next += 1;
                let k = &p.kernel_shape;
                if k.len() != 4 || shape.len() != 3 || k[2] != shape[2] {
                    return Err(format!("conv layer '{layer}' kernel {k:?} does not take input {shape:?}"));
                }
                vec![padding.output(shape[0], k[0], strides[0]).0, padding.output(shape[1], k[1], strides[1]).0, k[3]]
            }
            Op::Relu | Op::Relu6 | Op::Elu | Op::Sigmoid | Op::Tanh => shape,
            Op::MaxPool { size, strides, padding } | Op::AvgPool { size, strides, padding } => {
                if shape.len() != 3 {
                    return Err(format!("pooling needs [h, w, c] input, got {shape:?}"));
                }
                vec![padding.output(shape[0], size[0], strides[0]).0, padding.output(shape[1], size[1], strides[1]).0, shape[2]]
            }
            Op::GlobalAvgPool => match shape[..] {
                [_, _, c] => vec![c],
                _ => return Err(format!("global average pooling needs [h, w, c] input, got {shape:?}")),
            },
            Op::Pad { pads: [t, b, l, r] } => match shape[..] {
                [h, w, c] => {
                    let grow = |n: usize, a: usize, z: usize| n.checked_add(a).and_then(|v| v.checked_add(z));
                    match (grow(h, *t, *b), grow(w, *l, *r)) {
                        (Some(h), Some(w)) => vec![h, w, c],
                        _ => return Err(format!("padding {:?} overflows", [t, b, l, r])),
                    }
                }
                _ => return Err(format!("pad needs [h, w, c] input, got {shape:?}")),
            },
            Op::Flatten => vec![element_count(&shape)?],
            Op::BatchNorm { layer, params, .. } => {
                let c = shape.last().copied().unwrap_or(0);
                match params {
                    Some(p) if p.mean.len() != c => {
                        return Err(format!("batch normalization '{layer}' has {} channels, its input {shape:?} has {c}", p.mean.len()))
                    }
                    Some(_) => shape,
                    None => return Err(format!("batch normalization '{layer}' has no statistics (the architecture is not bound to a checkpoint)")),
                }
            }
            Op::Reshape { shape: to } => {
                // Shapes come from files: a product that overflows is a mismatch, not a panic.
                let count = |d: &[usize]| d.iter().try_fold(1usize, |a, &x| a.checked_mul(x));
                let (from_n, to_n) = (count(&shape), count(to));
                if from_n.is_none() || from_n != to_n || !(to.len() == 1 || to.len() == 3) {
                    return Err(format!("reshape to {to:?} does not take input {shape:?} (same number of values, to [features] or [h, w, c])"));
                }
                to.clone()
            }
            Op::Residual { body, shortcut, .. } => {
                let a = walk_shapes(body, shape.clone(), posts, next)?;
                let b = walk_shapes(shortcut, shape, posts, next)?;
                if a != b {
                    return Err(format!("residual branches give {a:?} and {b:?}"));
                }
                a
            }
        };
        if shape.contains(&0) {
            return Err(format!("{op:?} produces an empty output {shape:?}"));
        }
    }
    Ok(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_decoder_joins_values_split_across_chunks() {
        let values = [1.5f32, -0.0, f32::MIN_POSITIVE, 3.0e-42, f32::MAX, -7.25, 0.1, f32::INFINITY, 42.0];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        // Chunks of every length from 1 to 9 bytes, so that values split at every offset.
        for len in 1..=9 {
            let mut dec = F32Decoder { values: Vec::new(), carry: Vec::new() };
            bytes.chunks(len).for_each(|c| dec.push(c));
            let bits: Vec<u32> = dec.values.iter().map(|v| v.to_bits()).collect();
            assert_eq!(bits, values.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "chunks of {len}");
            assert!(dec.carry.is_empty());
        }
    }

    #[test]
    fn streamed_weights_equal_the_stored_tensors() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tf1_bnn_fc");
        let ckpt = Checkpoint::open(&dir).expect("fixture");
        let json = r#"{"input_shape": [64], "ops": [{"op": "dense", "layer": ""}, {"op": "relu"},
            {"op": "dense", "layer": ""}, {"op": "relu"}, {"op": "dense", "layer": ""}]}"#;
        let arch: Arch = serde_json::from_str(json).expect("arch");
        let (_, posts) = arch.bind(&ckpt).expect("bind");
        assert_eq!(posts.len(), 3);
        for p in &posts {
            let direct = |param: &str| {
                let data = ckpt.read(&format!("{}/{param}", p.name)).expect("tensor");
                data.bytes().expect("bytes").chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<f32>>()
            };
            assert_eq!(p.kernel_mu, direct("kernel_posterior_loc"), "{}", p.name);
            let sigma: Vec<f32> = direct("kernel_posterior_untransformed_scale").into_iter().map(softplus_f32).collect();
            assert_eq!(p.kernel_sigma.as_deref(), Some(&sigma[..]), "{}", p.name);
            assert_eq!(p.bias_mu, direct("bias_posterior_loc"), "{}", p.name);
        }
    }

    #[test]
    fn padding_matches_tensorflow() {
        // TF: SAME out = ceil(8/2) = 4, pad total = (4-1)*2+5-8 = 3 -> before 1.
        assert_eq!(Padding::Same.output(8, 5, 2), (4, 1));
        assert_eq!(Padding::Same.output(8, 5, 1), (8, 2));
        assert_eq!(Padding::Valid.output(8, 2, 2), (4, 0));
        assert_eq!(Padding::Valid.output(7, 3, 2), (3, 0));
    }

    #[test]
    fn presets_round_trip_through_json() {
        for name in PRESETS {
            let a = Arch::preset(name).expect("preset");
            let json = serde_json::to_string(&a).expect("json");
            assert_eq!(serde_json::from_str::<Arch>(&json).expect("parse"), a);
        }
        assert_eq!(Arch::preset("bnn-fc").map(|mut a| a.weight_ops_mut().len()), Some(3));
        assert_eq!(Arch::preset("vgg-16").map(|mut a| a.weight_ops_mut().len()), Some(15));
        // stem + 16 block convs + 3 projections + classifier
        assert_eq!(Arch::preset("resnet-18").map(|mut a| a.weight_ops_mut().len()), Some(21));
    }

    #[test]
    fn load_rejects_zero_strides_naming_the_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("a.json");
        std::fs::write(&p, r#"{"input_shape": [4, 4, 1], "ops": [{"op": "max_pool", "size": [2, 2], "strides": [0, 2], "padding": "SAME"}]}"#)
            .expect("write");
        let e = Arch::load(&p.to_string_lossy()).expect_err("zero stride");
        assert!(e.to_string().contains("a.json") && e.to_string().contains("strides"), "{e}");
        assert_eq!(Arch::load("bnn-conv").map(|a| a.input_shape).ok(), Some(vec![28, 28, 1]));
    }

    #[test]
    fn reshape_keeps_the_value_count_and_takes_vectors_or_images() {
        let arch = |shape: Vec<usize>, to: Vec<usize>| Arch { input_name: "x".into(), input_shape: shape, ops: vec![Op::Reshape { shape: to }] };
        assert_eq!(shape_check(&arch(vec![64], vec![8, 8, 1]), &[]), Ok(vec![8, 8, 1]));
        assert_eq!(shape_check(&arch(vec![4, 4, 4], vec![8, 8, 1]), &[]), Ok(vec![8, 8, 1]));
        assert_eq!(shape_check(&arch(vec![2, 2, 3], vec![12]), &[]), Ok(vec![12]));
        let e = shape_check(&arch(vec![64], vec![8, 8, 2]), &[]).expect_err("128 values");
        assert!(e.contains("reshape to [8, 8, 2] does not take input [64]"), "{e}");
        assert!(shape_check(&arch(vec![64], vec![8, 8]), &[]).is_err(), "rank 2 is neither a vector nor an image");
        assert!(shape_check(&arch(vec![64], vec![usize::MAX, 2, 1]), &[]).is_err(), "overflowing product");
        let json = r#"{"input_shape": [64], "ops": [{"op": "reshape", "shape": [8, 8, 1]}]}"#;
        assert_eq!(serde_json::from_str::<Arch>(json).map(|a| a.ops).ok(), Some(vec![Op::Reshape { shape: vec![8, 8, 1] }]));
    }

    #[test]
    fn pooling_padding_and_activations_shapes_and_values() {
        let arch = |ops: Vec<Op>| Arch { input_name: "x".into(), input_shape: vec![8, 8, 1], ops };
        let pad = Op::Pad { pads: [1, 2, 0, 1] };
        let avg = Op::AvgPool { size: [2, 2], strides: [2, 2], padding: Padding::Same };
        assert_eq!(shape_check(&arch(vec![pad.clone()]), &[]), Ok(vec![11, 9, 1]));
        assert_eq!(shape_check(&arch(vec![pad, avg, Op::Elu]), &[]), Ok(vec![6, 5, 1]));
        assert_eq!(shape_check(&arch(vec![Op::GlobalAvgPool, Op::Tanh]), &[]), Ok(vec![1]));
        assert!(shape_check(&arch(vec![Op::Flatten, Op::GlobalAvgPool]), &[]).is_err());
        let json = r#"[{"op": "relu6"}, {"op": "elu"}, {"op": "sigmoid"}, {"op": "tanh"}, {"op": "global_avg_pool"},
            {"op": "pad", "pads": [1, 2, 0, 1]}, {"op": "avg_pool", "size": [2, 2], "strides": [2, 2], "padding": "SAME"}]"#;
        let ops: Vec<Op> = serde_json::from_str(json).expect("ops");
        assert_eq!(ops.len(), 7);
        // Hand-computed values.
        let f = |op: Op, x: f32| op.activation().map(|a| a(x));
        assert_eq!(f(Op::Relu6, 7.5), Some(6.0));
        assert_eq!(f(Op::Relu6, -1.0), Some(0.0));
        assert_eq!(f(Op::Elu, -1.0), Some((-1.0f32).exp() - 1.0));
        assert_eq!(f(Op::Elu, 2.0), Some(2.0));
        assert_eq!(f(Op::Sigmoid, 0.0), Some(0.5));
        assert_eq!(f(Op::Tanh, 0.5), Some(0.5f32.tanh()));
        assert_eq!(f(Op::Flatten, 1.0), None);
    }

    #[test]
    fn residual_relu_defaults_to_true_and_false_round_trips() {
        let old = r#"{"op": "residual", "body": [], "shortcut": []}"#;
        assert_eq!(serde_json::from_str::<Op>(old).ok(), Some(Op::Residual { body: vec![], shortcut: vec![], relu: true }));
        let plain = Op::Residual { body: vec![Op::Relu], shortcut: vec![], relu: false };
        let json = serde_json::to_string(&plain).expect("json");
        assert!(json.contains(r#""relu":false"#), "{json}");
        assert_eq!(serde_json::from_str::<Op>(&json).ok(), Some(plain));
    }
}
