//! The forward pass: a [`Model`] of layers, evaluated with posterior means or with one
//! Monte Carlo weight draw per sample; samples run in parallel.

use formats::arch::{shape_check, Arch, Op, Posterior};
use rayon::prelude::*;

use super::conv::{im2col, max_pool, Window};
use super::dense::{Kernel, Layout};
use super::image_ops::{global_avg_pool, pad, AvgPool};
use super::metrics::{softmax, softmax_f32};
use super::sampler::Sampler;
use super::EngineError;

/// When to store kernels in CSR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparseKernels {
    /// When at least a quarter of a kernel's weights are pruned (mu == 0 and sigma == 0).
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Fraction of pruned weights above which [`SparseKernels::Auto`] uses CSR.
pub const AUTO_SPARSE_FRACTION: f64 = 0.25;

/// How a Monte Carlo sample perturbs the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Estimator {
    /// Flipout (what TFP's `*Flipout` layers do): one shared eps per sample, decorrelated per
    /// example by random sign flips of inputs and outputs.
    Flipout,
    /// One weight draw per sample shared by the whole batch (what the ONNX MC graph does).
    Reparameterization,
}

#[derive(Debug, Clone)]
enum Layer {
    Linear { kernel: Kernel, bias_mu: Vec<f32>, bias_sigma: Option<Vec<f32>>, conv: Option<Window> },
    Relu,
    MaxPool(Window),
    Flatten,
    /// Reshape to an `[h, w, c]` image (to a vector it is [`Layer::Flatten`]).
    ToImage(Vec<usize>),
    /// An elementwise activation other than Relu ([`Op::activation`]).
    Map(fn(f32) -> f32),
    AvgPool(AvgPool),
    /// Mean over height and width of `[h, w, c]` examples.
    GlobalAvgPool([usize; 3]),
    /// Zero padding of `[h, w, c]` examples by `[top, bottom, left, right]`.
    Pad([usize; 3], [usize; 4]),
    /// Batch normalization at inference as a per-channel `x * scale + shift`.
    BatchNorm { scale: Vec<f32>, shift: Vec<f32> },
    Residual { body: Vec<Layer>, shortcut: Vec<Layer>, out_shape: Vec<usize>, relu: bool },
}

/// A network ready to run.
#[derive(Debug, Clone)]
pub struct Model {
    input_shape: Vec<usize>,
    classes: usize,
    layers: Vec<Layer>,
}

/// Monte Carlo predictive distribution.
#[derive(Debug, Clone)]
pub struct McPrediction {
    /// Mean over samples of the class probabilities, `[n, classes]`.
    pub mean: Vec<f64>,
    /// Variance over samples (divided by S) of the class probabilities, `[n, classes]`.
    pub variance: Vec<f64>,
}

enum Draw<'a> {
    Mean,
    Sample(&'a mut Sampler, Estimator),
}

/// Examples per work item: bounds im2col memory and spreads mean-mode work over threads.
const CHUNK: usize = 128;

/// Examples per Monte Carlo chunk (all samples of a chunk run before the next chunk).
const MC_CHUNK: usize = 1024;

/// The layers of `ops` applied to examples of `shape`, and the output shape.
fn build(ops: &[Op], mut shape: Vec<usize>, posts: &mut std::slice::Iter<'_, Posterior>, sparse: SparseKernels) -> (Vec<Layer>, Vec<usize>) {
    let mut out = Vec::new();
    for op in ops {
        let layer = match op {
            Op::Dense { .. } | Op::Conv2d { .. } => {
                let Some(p) = posts.next() else { break };
                let n = p.units();
                let k = p.kernel_mu.len() / n.max(1);
                let use_csr = match sparse {
                    SparseKernels::Always => true,
                    SparseKernels::Never => false,
                    SparseKernels::Auto => p.pruned_fraction() >= AUTO_SPARSE_FRACTION,
                };
                let conv = match op {
                    Op::Conv2d { strides, padding, .. } => {
                        let win = Window {
                            input: [shape[0], shape[1], shape[2]],
                            size: [p.kernel_shape[0], p.kernel_shape[1]],
                            strides: *strides,
                            padding: *padding,
                        };
                        let [h, w] = win.output();
                        shape = vec![h, w, n];
                        Some(win)
                    }
                    _ => {
                        shape = vec![n];
                        None
                    }
                };
                let layout = if conv.is_some() { Layout::ByInput } else { Layout::ByOutput };
                let kernel = Kernel::new(k, n, p.kernel_mu.clone(), p.kernel_sigma.clone(), use_csr, layout);
                Layer::Linear { kernel, bias_mu: p.bias_mu.clone(), bias_sigma: p.bias_sigma.clone(), conv }
            }
            Op::Relu => Layer::Relu,
            Op::Relu6 | Op::Elu | Op::Sigmoid | Op::Tanh => match op.activation() {
                Some(f) => Layer::Map(f),
                None => continue,
            },
            Op::AvgPool { size, strides, padding } => {
                let p = AvgPool { input: [shape[0], shape[1], shape[2]], size: *size, strides: *strides, padding: *padding };
                let [h, w] = p.output();
                shape = vec![h, w, shape[2]];
                Layer::AvgPool(p)
            }
            Op::GlobalAvgPool => {
                let input = [shape[0], shape[1], shape[2]];
                shape = vec![shape[2]];
                Layer::GlobalAvgPool(input)
            }
            Op::BatchNorm { params: None, .. } => continue,
            Op::BatchNorm { epsilon, params: Some(p), .. } => {
                let (scale, shift) = p.scale_shift(*epsilon);
                Layer::BatchNorm { scale, shift }
            }
            Op::Pad { pads } => {
                let input = [shape[0], shape[1], shape[2]];
                shape = vec![shape[0] + pads[0] + pads[1], shape[1] + pads[2] + pads[3], shape[2]];
                Layer::Pad(input, *pads)
            }
            Op::MaxPool { size, strides, padding } => {
                let win = Window { input: [shape[0], shape[1], shape[2]], size: *size, strides: *strides, padding: *padding };
                let [h, w] = win.output();
                shape = vec![h, w, shape[2]];
                Layer::MaxPool(win)
            }
            Op::Flatten => {
                shape = vec![shape.iter().product()];
                Layer::Flatten
            }
            Op::Reshape { shape: to } => {
                shape = to.clone();
                if to.len() == 1 {
                    Layer::Flatten
                } else {
                    Layer::ToImage(to.clone())
                }
            }
            Op::Residual { body, shortcut, relu } => {
                let (b, out_shape) = build(body, shape.clone(), posts, sparse);
                let (s, _) = build(shortcut, shape.clone(), posts, sparse);
                shape = out_shape.clone();
                Layer::Residual { body: b, shortcut: s, out_shape, relu: *relu }
            }
        };
        out.push(layer);
    }
    (out, shape)
}

impl Model {
    /// Builds the model; `posts` in the order of [`Arch::layer_names`].
    pub fn new(arch: &Arch, posts: &[Posterior], sparse: SparseKernels) -> Result<Model, EngineError> {
        let out = shape_check(arch, posts).map_err(EngineError::Shape)?;
        let [classes] = out[..] else {
            return Err(EngineError::Shape(format!("the network ends in shape {out:?}, not a vector of logits")));
        };
        let (layers, _) = build(&arch.ops, arch.input_shape.clone(), &mut posts.iter(), sparse);
        Ok(Model { input_shape: arch.input_shape.clone(), classes, layers })
    }

    /// Number of classes (logits per example).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Values in one input example.
    pub fn example_len(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// How many weight layers use CSR kernels, of how many.
    pub fn sparse_layers(&self) -> (usize, usize) {
        fn count(ls: &[Layer], acc: &mut (usize, usize)) {
            for l in ls {
                match l {
                    Layer::Linear { kernel, .. } => {
                        acc.0 += usize::from(kernel.is_sparse());
                        acc.1 += 1;
                    }
                    Layer::Residual { body, shortcut, .. } => {
                        count(body, acc);
                        count(shortcut, acc);
                    }
                    _ => {}
                }
            }
        }
        let mut acc = (0, 0);
        count(&self.layers, &mut acc);
        acc
    }

    fn check(&self, x: &[f32]) -> Result<usize, EngineError> {
        let per = self.example_len();
        if per == 0 || x.len() % per != 0 {
            return Err(EngineError::Input { got: x.len(), per_example: per, shape: self.input_shape.clone() });
        }
        Ok(x.len() / per)
    }

    /// Logits `[n, classes]` of the mean network (weights = mu) for `x` (`[n, ...]`, NHWC).
    pub fn logits_mean(&self, x: &[f32]) -> Result<Vec<f32>, EngineError> {
        self.check(x)?;
        let per = self.example_len();
        let chunks: Vec<Vec<f32>> =
            x.par_chunks(CHUNK * per).map(|c| run(&self.layers, c, false, c.len() / per, &self.input_shape, &mut Draw::Mean, &mut Scratch::default())).collect();
        Ok(chunks.concat())
    }

    /// Class probabilities `[n, classes]` of the mean network.
    pub fn predict_mean(&self, x: &[f32]) -> Result<Vec<f64>, EngineError> {
        Ok(softmax(&self.logits_mean(x)?, self.classes))
    }

    /// Monte Carlo predictive: `samples` weight draws (streams `seed`, 0..samples), samples in
    /// parallel. Deterministic for a given seed whatever the thread count.
    pub fn predict_mc(&self, x: &[f32], samples: usize, seed: u64, est: Estimator) -> Result<McPrediction, EngineError> {
        let n = self.check(x)?;
        let c = self.classes;
        let per = self.example_len();
        let mut sum = vec![0f64; n * c];
        let mut sq = vec![0f64; n * c];
        // Chunks of examples bound the memory of big sets (im2col of a CIFAR batch); each
        // chunk gets its own streams, so a chunk of up to MC_CHUNK examples shares each
        // sample's weights, as TF's batch does.
        for (ci, (xc, (sc, qc))) in x.chunks(MC_CHUNK * per).zip(sum.chunks_mut(MC_CHUNK * c).zip(sq.chunks_mut(MC_CHUNK * c))).enumerate() {
            let m = xc.len() / per;
            let mut ws = Scratch::default();
            let xt = if self.input_shape.len() == 1 { transpose(xc, m, per, &mut ws) } else { xc.to_vec() };
            // Samples outermost so each draws its weights once for the whole chunk.
            let per_sample: Vec<Vec<f64>> = (0..samples)
                .into_par_iter()
                .map_init(Scratch::default, |ws, s| {
                    let mut sampler = Sampler::new(seed, (ci * samples + s) as u64);
                    let mut draw = Draw::Sample(&mut sampler, est);
                    let logits = run(&self.layers, &xt, self.input_shape.len() == 1, m, &self.input_shape, &mut draw, ws);
                    let p = softmax_f32(&logits, c);
                    ws.give(logits);
                    p
                })
                .collect();
            // Summed in sample order: the result does not depend on the thread count.
            for p in &per_sample {
                for ((a, b), &v) in sc.iter_mut().zip(qc.iter_mut()).zip(p) {
                    *a += v;
                    *b += v * v;
                }
            }
        }
        let s = samples.max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|v| v / s).collect();
        let variance = sq.iter().zip(&mean).map(|(q, m)| (q / s - m * m).max(0.0)).collect();
        Ok(McPrediction { mean, variance })
    }
}

/// Reusable buffers of one thread: Monte Carlo samples reuse the same memory instead of
/// allocating per layer (freeing ~100 KiB vectors made glibc hand pages back to the OS and
/// fault them in again: a fifth of the time in profiles of pruned models).
#[derive(Default)]
pub(crate) struct Scratch {
    free: Vec<Vec<f32>>,
}

impl Scratch {
    fn zeros(&mut self, len: usize) -> Vec<f32> {
        let mut v = self.free.pop().unwrap_or_default();
        v.clear();
        v.resize(len, 0.0);
        v
    }

    /// A buffer of `len` values that the caller overwrites entirely (old contents kept).
    fn any(&mut self, len: usize) -> Vec<f32> {
        let mut v = self.free.pop().unwrap_or_default();
        v.resize(len, 0.0);
        v
    }

    fn copy(&mut self, src: &[f32]) -> Vec<f32> {
        let mut v = self.free.pop().unwrap_or_default();
        v.clear();
        v.extend_from_slice(src);
        v
    }

    fn give(&mut self, v: Vec<f32>) {
        self.free.push(v);
    }
}

/// `[rows, cols]` to `[cols, rows]`.
fn transpose(x: &[f32], rows: usize, cols: usize, ws: &mut Scratch) -> Vec<f32> {
    let mut out = ws.zeros(x.len());
    for (r, row) in x.chunks_exact(cols.max(1)).enumerate().take(rows) {
        for (c, &v) in row.iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
    out
}

/// Activations between layers. Vectors are kept feature-major (`[features, n]`) so that a
/// dense or CSR kernel is one vectorized axpy over the examples per weight, with no
/// transposes; images stay `[n, h, w, c]` for im2col and pooling.
struct Act {
    data: Vec<f32>,
    feature_major: bool,
}

/// The bias of a layer for this draw: the mean, or a sample when the bias is Bayesian.
fn layer_bias(bias_mu: &[f32], bias_sigma: &Option<Vec<f32>>, draw: &mut Draw) -> Vec<f32> {
    match (draw, bias_sigma) {
        (Draw::Sample(s, _), Some(bs)) => s.gaussian(bias_mu, bs),
        _ => bias_mu.to_vec(),
    }
}

/// A dense layer on feature-major `xt` (`[k, n]`); returns `[out, n]`.
fn dense_fm(kernel: &Kernel, xt: &[f32], n: usize, bias: &[f32], draw: &mut Draw, ws: &mut Scratch) -> Vec<f32> {
    let mut out = ws.any(kernel.n * n);
    let (mu, sigma) = kernel.values();
    match (draw, sigma) {
        (Draw::Sample(s, Estimator::Reparameterization), Some(sig)) => {
            let mut w = ws.copy(mu);
            s.add_noise(sig, &mut w);
            kernel.matmul_fm(xt, n, &w, Some(bias), &mut out);
            ws.give(w);
        }
        (Draw::Sample(s, Estimator::Flipout), Some(sig)) => {
            kernel.matmul_fm(xt, n, mu, Some(bias), &mut out);
            let mut noise = ws.any(sig.len());
            s.noise_into(sig, &mut noise);
            // Flipout: (x * s_in) @ (sigma * eps) * s_out, signs per example and unit.
            let mut flipped = ws.any(xt.len());
            s.flipped_into(xt, &mut flipped);
            let mut pert = ws.any(out.len());
            kernel.matmul_fm(&flipped, n, &noise, None, &mut pert);
            s.add_flipped(&pert, &mut out);
            ws.give(noise);
            ws.give(flipped);
            ws.give(pert);
        }
        _ => kernel.matmul_fm(xt, n, mu, Some(bias), &mut out),
    }
    out
}

/// A convolution on `[n, h, w, c]` images; returns `[n, oh, ow, out]`.
fn conv_rows(kernel: &Kernel, win: &Window, x: &[f32], n: usize, bias: &[f32], draw: &mut Draw) -> Vec<f32> {
    let [h, w] = win.output();
    let rows_per_ex = h * w;
    let cols = im2col(x, n, win);
    let mut out = vec![0f32; n * rows_per_ex * kernel.n];
    let (mu, sigma) = kernel.values();
    match (draw, sigma) {
        (Draw::Sample(s, Estimator::Reparameterization), Some(sig)) => kernel.matmul_acc(&cols, &s.gaussian(mu, sig), &mut out),
        (Draw::Sample(s, Estimator::Flipout), Some(sig)) => {
            kernel.matmul_acc(&cols, mu, &mut out);
            let noise = s.noise(sig);
            // TFP flips every spatial position of an (example, channel) alike, so flipping
            // the input before im2col is the same as flipping the patches.
            let cin = win.input[2];
            let s_in = s.signs(n * cin);
            let mut flipped = x.to_vec();
            for (ex, signs) in flipped.chunks_exact_mut(x.len() / n.max(1)).zip(s_in.chunks_exact(cin)) {
                for px in ex.chunks_exact_mut(cin) {
                    px.iter_mut().zip(signs).for_each(|(v, s)| *v *= s);
                }
            }
            let mut pert = vec![0f32; out.len()];
            kernel.matmul_acc(&im2col(&flipped, n, win), &noise, &mut pert);
            let s_out = s.signs(n * kernel.n);
            for (r, (o, p)) in out.chunks_exact_mut(kernel.n).zip(pert.chunks_exact(kernel.n)).enumerate() {
                let signs = &s_out[(r / rows_per_ex) * kernel.n..][..kernel.n];
                for ((o, &p), &sg) in o.iter_mut().zip(p).zip(signs) {
                    *o += p * sg;
                }
            }
        }
        _ => kernel.matmul_acc(&cols, mu, &mut out),
    }
    for row in out.chunks_exact_mut(kernel.n) {
        row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
    }
    out
}

/// Runs `layers` on `n` examples of `shape` (`x` row-major); returns `[n, classes]` logits.
/// `feature_major` says `x` is already `[features, n]` (vector inputs, transposed once for
/// all Monte Carlo samples).
fn run(layers: &[Layer], x: &[f32], feature_major: bool, n: usize, shape: &[usize], draw: &mut Draw, ws: &mut Scratch) -> Vec<f32> {
    let mut act = Act { data: ws.copy(x), feature_major };
    run_layers(layers, &mut act, n, shape, draw, ws);
    if act.feature_major {
        let k = act.data.len() / n.max(1);
        let t = transpose(&act.data, k, n, ws);
        ws.give(std::mem::replace(&mut act.data, t));
    }
    act.data
}

fn run_layers(layers: &[Layer], act: &mut Act, n: usize, shape: &[usize], draw: &mut Draw, ws: &mut Scratch) {
    let mut shape = shape.to_vec();
    for layer in layers {
        match layer {
            Layer::Linear { kernel, bias_mu, bias_sigma, conv } => {
                let bias = layer_bias(bias_mu, bias_sigma, draw);
                match conv {
                    Some(win) => {
                        act.data = conv_rows(kernel, win, &act.data, n, &bias, draw);
                        let [h, w] = win.output();
                        shape = vec![h, w, kernel.n];
                    }
                    None => {
                        if !act.feature_major {
                            let t = transpose(&act.data, n, kernel.k, ws);
                            ws.give(std::mem::replace(&mut act.data, t));
                            act.feature_major = true;
                        }
                        let out = dense_fm(kernel, &act.data, n, &bias, draw, ws);
                        ws.give(std::mem::replace(&mut act.data, out));
                        shape = vec![kernel.n];
                    }
                }
            }
            Layer::Relu => act.data.iter_mut().for_each(|v| *v = v.max(0.0)),
            Layer::MaxPool(win) => {
                let [h, w] = win.output();
                act.data = max_pool(&act.data, n, win);
                shape = vec![h, w, win.input[2]];
            }
            Layer::Flatten => shape = vec![shape.iter().product()],
            Layer::Map(f) => act.data.iter_mut().for_each(|v| *v = f(*v)),
            // Image layers: images are always example-major.
            Layer::AvgPool(p) => {
                act.data = p.run(&act.data, n);
                let [h, w] = p.output();
                shape = vec![h, w, p.input[2]];
            }
            Layer::GlobalAvgPool(input) => {
                act.data = global_avg_pool(&act.data, n, *input);
                shape = vec![input[2]];
            }
            Layer::Pad(input, pads) => {
                act.data = pad(&act.data, n, *input, *pads);
                shape = vec![input[0] + pads[0] + pads[1], input[1] + pads[2] + pads[3], input[2]];
            }
            Layer::BatchNorm { scale, shift } => {
                let c = scale.len().max(1);
                if act.feature_major {
                    // [c, n]: one row per channel.
                    for ((row, s), b) in act.data.chunks_exact_mut(n.max(1)).zip(scale).zip(shift) {
                        row.iter_mut().for_each(|v| *v = *v * s + b);
                    }
                } else {
                    for px in act.data.chunks_exact_mut(c) {
                        px.iter_mut().zip(scale).zip(shift).for_each(|((v, s), b)| *v = *v * s + b);
                    }
                }
            }
            Layer::ToImage(to) => {
                // Images are example-major: a feature-major vector goes back to [n, k] first;
                // an example-major [n, ...] already holds the values in the new order.
                if act.feature_major {
                    let k = act.data.len() / n.max(1);
                    let t = transpose(&act.data, k, n, ws);
                    ws.give(std::mem::replace(&mut act.data, t));
                    act.feature_major = false;
                }
                shape = to.clone();
            }
            Layer::Residual { body, shortcut, out_shape, relu } => {
                let mut a = Act { data: act.data.clone(), feature_major: act.feature_major };
                run_layers(body, &mut a, n, &shape, draw, ws);
                let mut b = Act { data: std::mem::take(&mut act.data), feature_major: act.feature_major };
                run_layers(shortcut, &mut b, n, &shape, draw, ws);
                // Branches may end in different layouts (a dense body, an identity shortcut).
                let k = a.data.len() / n.max(1);
                if a.feature_major != b.feature_major {
                    if b.feature_major {
                        b.data = transpose(&b.data, k, n, ws);
                    } else {
                        a.data = transpose(&a.data, k, n, ws);
                    }
                }
                act.feature_major = a.feature_major && b.feature_major;
                act.data = if *relu {
                    a.data.iter().zip(&b.data).map(|(a, b)| (a + b).max(0.0)).collect()
                } else {
                    a.data.iter().zip(&b.data).map(|(a, b)| a + b).collect()
                };
                shape = out_shape.clone();
            }
        }
    }
}
