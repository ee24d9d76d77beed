//! The forward pass: a [`Model`] of layers, evaluated with posterior means or with one
//! Monte Carlo weight draw per sample.
//!
//! Every product runs on a tuned GEMM ([`super::gemm`]) or, for pruned kernels, on a CSR
//! kernel ([`super::sparse`]); convolutions feed them blocks of im2col patch rows. Monte Carlo
//! prediction uses its structure: the first weight layer's mean product (and its patches)
//! do not depend on the sample and are computed once per batch; samples then run in
//! parallel, each with its own seeded stream, so results do not depend on the thread count.
//!
//! Activations are row-major: `[n, features]` for vectors, `[n, h, w, c]` for images. A new
//! op is one [`Layer`] variant, its build arm in [`build`] and its arm in [`run_layers`].

use crate::arch::{shape_check, Arch, Op, Posterior};
use rayon::prelude::*;
use std::iter::Peekable;

use super::aligned;
use super::conv::{conv_c1, conv_c1_pool2, conv_c1_vectorized, im2col_rows, C1Output, max_pool_into, max_pool_to, Window};
use super::dense::{self, flipout_dense, FlipoutDense, Kernel, Noise, Weights};
use super::sparse::{self, Flip, Signs, Job};
use super::gemm::sgemm;
use super::image_ops::{avg_pool, global_avg_pool, pad};
use super::metrics::{softmax, softmax_in_f32};
use super::sampler::Sampler;
use super::winograd::{self, WinogradConv};
use super::EngineError;

/// When to store kernels in CSR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparseKernels {
    /// Where the sparse kernel is measured to be faster: a kernel with at least
    /// [`auto_sparse_fraction`] of its weights pruned (mu == 0 and sigma == 0) is timed at
    /// model load on both paths ([`SparseKernels::Auto`] in [`Model::from_posteriors`]).
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Fraction of pruned weights from which [`SparseKernels::Auto`] times the sparse kernel on a
/// CPU without AVX-512 (where it runs on AVX2, half as wide as the GEMM's AVX-512 kernel).
pub const AUTO_SPARSE_FRACTION: f64 = 0.5;

/// Fraction of pruned weights from which [`SparseKernels::Auto`] times a kernel's two paths
/// at model load (below it the dense path is taken without timing): on AVX-512 the
/// transposed sparse kernel ([`sparse::Csr::spmm_t`], both Flipout products in one pass)
/// only ties the GEMM at 70% kept on every layer shape of the benchmark models
/// (`model/examples/kernel_bench.rs`, docs/performance.md), and end to end (layout changes
/// in and out of the transposed form included) only at about 25% kept: below 60% pruned it
/// never wins, and timing those layers (building their CSR copies) made `sweep` 30% slower.
/// Convs planned for Winograd (1/2.2 to 1/2.8 of the GEMM's multiplications) need at least
/// half pruned to compete: both rules are at least 50%.
pub fn auto_sparse_fraction() -> f64 {
    if sparse::Isa::detect() == sparse::Isa::Avx512 {
        0.6
    } else {
        AUTO_SPARSE_FRACTION
    }
}

/// Fraction of pruned weights from which [`SparseKernels::Auto`] times a dense layer that
/// would hand its output over transposed to a pruned dense layer
/// ([`Linear::writes_transposed`]): its sparse path then has no transposes and no output
/// pass of its own (the output pass runs in the kernel's registers, [`sparse::Epilogue`]),
/// and as a first layer only the perturbation product (the mean product is shared). BNN-FC's
/// first layer, 44% pruned, runs so 1.25x faster than on the fused dense kernel (its probe:
/// 100 against 125 us).
const HAND_OVER_SPARSE_FRACTION: f64 = 0.3;

/// Fraction of pruned weights from which [`SparseKernels::Auto`] times a convolution that
/// its sparse path runs on blocks of examples ([`sparse::conv_on_blocks`]: both Flipout
/// products in one signed pass over the kept weights). VGG-16's 4x4 Conv8, 58% pruned, runs
/// so faster than on the fused dense kernel, and the 70%-pruned model 4-5% faster end to end.
const BLOCKS_SPARSE_FRACTION: f64 = 0.5;

/// Fraction of pruned weights from which [`SparseKernels::Auto`] times a convolution that
/// its sparse path runs straight from the activations ([`sparse::direct_tiles`]): VGG-16's
/// 8 x 8 Conv6-7, 58% pruned, run there faster than on Winograd (their probe: 9 against
/// 13-14 ms on 16 examples); its 43% pruned Conv5 tied. From 30% the extra probes made
/// `sweep` 18% slower for no other choice.
const DIRECT_SPARSE_FRACTION: f64 = 0.5;

/// Hands the heap's free pages back to the system. `--sparse auto`'s timing leaves the CSR
/// copies and buffers it tried freed in the loading thread's malloc arena, where the sampling
/// threads (other arenas) cannot reuse them: 23 MiB kept and a 29 MiB higher peak on the
/// pruned VGG-16.
fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of glibc's arenas; no pointer is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Batch size [`SparseKernels::Auto`] times layers at when the caller does not say
/// ([`Model::from_posteriors`]; see [`Model::for_batch`]).
pub const PROBE_BATCH: usize = 256;

/// Most patch rows (examples times output positions) a layer is timed on by
/// [`SparseKernels::Auto`], at least one example: one block of the sparse kernel's batched
/// path (it runs a bigger batch block by block, and big convolutions one example at a time,
/// so its cost per row is the same). Both paths draw the same noise, so per-sample costs
/// weigh alike; the probe of VGG-16's 8 candidate convs stays a fraction of a second.
const PROBE_ROWS: usize = 256;

/// Timed runs of each path per candidate layer (interleaved, the fastest kept; after one
/// untimed run that allocates the path's buffers): one when it took at least
/// [`PROBE_SECONDS`], else at least [`PROBE_RUNS`] and more while the layer's timings add up
/// to less than [`PROBE_SECONDS`], up to [`PROBE_MAX_RUNS`]. Small layers, whose two paths
/// take about the same time, get more runs against noise.
const PROBE_RUNS: usize = 2;

/// See [`PROBE_RUNS`].
const PROBE_MAX_RUNS: usize = 16;

/// See [`PROBE_RUNS`].
const PROBE_SECONDS: f64 = 0.005;

/// How much faster than the dense path the sparse one must be timed for [`SparseKernels::Auto`]
/// to take it: a margin against timing noise, so that it never picks sparse where it is slower.
const PROBE_MARGIN: f64 = 0.92;

/// How a Monte Carlo sample perturbs the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Estimator {
    /// Flipout (what TFP's `*Flipout` layers do): one shared eps per sample, decorrelated per
    /// example by random sign flips of inputs and outputs.
    Flipout,
    /// One weight draw per sample shared by the whole batch (what the ONNX MC graph does).
    Reparameterization,
}

/// A dense or conv layer: `y = patches(x) @ W + b`.
#[derive(Debug, Clone)]
struct Linear {
    kernel: Kernel,
    bias_mu: Vec<f32>,
    bias_sigma: Option<Vec<f32>>,
    /// The convolution's geometry; `None` for a dense layer (its patch rows are `x`'s rows).
    conv: Option<Window>,
    /// The convolution by Winograd minimal filtering, where [`WinogradConv::plan`] finds it
    /// faster than im2col + GEMM (dense kernels only).
    wino: Option<Box<WinogradConv>>,
}

#[derive(Debug, Clone)]
enum Layer {
    Linear(Box<Linear>),
    Relu,
    MaxPool(Window),
    Flatten,
    /// An elementwise activation other than Relu ([`Op::activation`]).
    Map(fn(f32) -> f32),
    AvgPool(Window),
    /// Mean over height and width of `[h, w, c]` examples.
    GlobalAvgPool([usize; 3]),
    /// Zero padding of `[h, w, c]` examples by `[top, bottom, left, right]`.
    Pad([usize; 3], [usize; 4]),
    /// Batch normalization at inference as a per-channel `x * scale + shift`.
    BatchNorm { scale: Vec<f32>, shift: Vec<f32> },
    Residual { body: Vec<Layer>, shortcut: Vec<Layer>, relu: bool },
}

/// A network ready to run.
#[derive(Debug, Clone)]
pub struct Model {
    input_shape: Vec<usize>,
    classes: usize,
    layers: Vec<Layer>,
    /// Buffers of earlier predictions, reused by the next ones (see [`ScratchPool`]).
    scratch: ScratchPool,
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

/// Most examples per work item of the mean network (smaller batches are split over the
/// threads so that every core has work).
const CHUNK: usize = 128;

/// Examples per Monte Carlo chunk (all samples of a chunk run before the next chunk): bounds
/// the memory of big sets; each chunk shares each sample's weights, as TF's batch does.
const MC_CHUNK: usize = 1024;

/// Values of patch rows per GEMM block (2 MiB): bounds the im2col memory of a thread, while
/// blocks stay tall enough that the GEMM packs each weight matrix rarely (at 256 KiB, packing
/// the weights again for every block of a 5x5x32 conv took a sixth of the time).
const BLOCK_VALUES: usize = 1 << 19;

/// The layers of `ops` applied to examples of `shape`, and the output shape.
/// The posteriors are moved into the layers' kernels (no copy of the weights). `top`: `ops`
/// are the model's own (not a residual block's), whose first weight layer's mean product the
/// Monte Carlo samples share.
/// [`SparseKernels::Auto`] times layers on `batch` examples.
fn build(ops: &[Op], mut shape: Vec<usize>, posts: &mut Peekable<impl Iterator<Item = Posterior>>, sparse: SparseKernels, batch: usize, top: bool) -> (Vec<Layer>, Vec<usize>) {
    let mut out = Vec::new();
    for (oi, op) in ops.iter().enumerate() {
        let layer = match op {
            Op::Dense { .. } | Op::Conv2d { .. } => {
                let Some(p) = posts.next() else { break };
                let n = p.units();
                let k = p.kernel_mu.len() / n.max(1);
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
                let csr = |p: &Posterior| Linear {
                    kernel: Kernel::sparse(k, n, &p.kernel_mu, p.kernel_sigma.as_deref()),
                    bias_mu: p.bias_mu.clone(),
                    bias_sigma: p.bias_sigma.clone(),
                    conv,
                    wino: None,
                };
                let dense = |p: Posterior| {
                    let wino = conv.and_then(|w| WinogradConv::plan(&w, n, &p.kernel_mu)).map(Box::new);
                    Linear { kernel: Kernel::new(k, n, p.kernel_mu, p.kernel_sigma, false), bias_mu: p.bias_mu, bias_sigma: p.bias_sigma, conv, wino }
                };
                // The ReLU and max pool that follow run in (or right after) the layer,
                // differently on each path: both are timed with them.
                let relu = matches!(ops.get(oi + 1), Some(Op::Relu));
                // A pruned dense layer followed by one that will likely run sparse leaves its
                // output transposed for it, which the dense path would leave the next layer to
                // do: such a layer is timed from a lower pruned fraction.
                let next_dense = conv.is_none() && matches!(ops.get(oi + 1 + usize::from(relu)), Some(Op::Dense { .. }));
                let hand_over = next_dense && posts.peek().is_some_and(|q| q.pruned_fraction() >= auto_sparse_fraction());
                let timed_from = match conv {
                    _ if hand_over => HAND_OVER_SPARSE_FRACTION,
                    Some(w) if sparse::direct_tiles(&w).is_some() => DIRECT_SPARSE_FRACTION,
                    Some(w) if sparse::conv_on_blocks(&w) => BLOCKS_SPARSE_FRACTION.min(auto_sparse_fraction()),
                    _ => auto_sparse_fraction(),
                };
                let lin = match sparse {
                    SparseKernels::Always => csr(&p),
                    SparseKernels::Auto if k * n > 0 && p.pruned_fraction() >= timed_from => {
                        let (s, d) = (csr(&p), dense(p));
                        let pool = match (conv, ops.get(oi + 1 + usize::from(relu))) {
                            (Some(_), Some(Op::MaxPool { size, strides, padding })) => Some(Window { input: [shape[0], shape[1], shape[2]], size: *size, strides: *strides, padding: *padding }),
                            _ => None,
                        };
                        let first = top && out.iter().all(|l| matches!(l, Layer::Flatten));
                        if sparse_is_faster(&d, &s, batch, Probe { first, relu, pool: pool.as_ref(), hand_over }) {
                            s
                        } else {
                            d
                        }
                    }
                    SparseKernels::Auto | SparseKernels::Never => dense(p),
                };
                Layer::Linear(Box::new(lin))
            }
            Op::Relu => Layer::Relu,
            Op::Relu6 | Op::Elu | Op::Sigmoid | Op::Tanh => match op.activation() {
                Some(f) => Layer::Map(f),
                None => continue,
            },
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
            Op::MaxPool { size, strides, padding } | Op::AvgPool { size, strides, padding } => {
                let win = Window { input: [shape[0], shape[1], shape[2]], size: *size, strides: *strides, padding: *padding };
                let [h, w] = win.output();
                shape = vec![h, w, shape[2]];
                if matches!(op, Op::MaxPool { .. }) {
                    Layer::MaxPool(win)
                } else {
                    Layer::AvgPool(win)
                }
            }
            Op::Flatten => {
                shape = vec![shape.iter().product()];
                Layer::Flatten
            }
            // On row-major data every reshape is free (see `Layer::Flatten`).
            Op::Reshape { shape: to } => {
                shape = to.clone();
                Layer::Flatten
            }
            Op::Residual { body, shortcut, relu } => {
                let (b, out_shape) = build(body, shape.clone(), posts, sparse, batch, false);
                let (s, _) = build(shortcut, shape.clone(), posts, sparse, batch, false);
                shape = out_shape;
                Layer::Residual { body: b, shortcut: s, relu: *relu }
            }
        };
        out.push(layer);
    }
    (out, shape)
}

/// How [`sparse_is_faster`] runs a layer: as [`Model::predict_mc`] runs it in the model.
#[derive(Clone, Copy)]
struct Probe<'a> {
    /// The first weight layer: the shared mean product given.
    first: bool,
    /// A ReLU follows (fused into the output pass).
    relu: bool,
    /// The max pool that follows.
    pool: Option<&'a Window>,
    /// The next layer is a pruned dense layer, which takes its input transposed: the sparse
    /// path leaves its output so ([`Linear::writes_transposed`]), the dense path's time
    /// includes transposing its output.
    hand_over: bool,
}

/// Whether `sparse` (a layer on CSR) runs a Flipout sample faster than `dense` (the same
/// layer on its dense path: fused kernel, Winograd or GEMM), timed at model load on `batch`
/// examples of synthetic activations of the layer's real shape (at most [`PROBE_ROWS`] patch
/// rows, but a whole vector of 16 examples for a convolution on the direct kernel), each as
/// `probe` says. The paths compute the same function, so the choice changes
/// results only by float summation order.
fn sparse_is_faster(dense: &Linear, sparse: &Linear, batch: usize, probe: Probe) -> bool {
    let Probe { first, relu, pool, hand_over } = probe;
    let _ftz = FlushDenormals::new();
    // A convolution on the direct kernel fills a vector with 16 examples whatever the batch:
    // timed on fewer (4 of VGG-16's 8 x 8 Conv6) it paid for 16.
    let least = if dense.conv.is_some_and(|w| sparse::direct_tiles(&w).is_some()) { sparse::LANES } else { 1 };
    let m = batch.min((PROBE_ROWS / dense.rows_per_example().max(1)).max(least)).max(1);
    let per = dense.conv.map_or(dense.kernel.k, |w| w.input.iter().product());
    // Activations as a ReLU leaves them, about half zeros (neither kernel's speed depends on
    // the values, but subnormals would: FTZ is on, as while predicting).
    let mut rng = formats::synthetic::SplitMix64(0x5eed);
    let x: Vec<f32> = (0..m * per).map(|_| rng.uniform(-1.0, 1.0).max(0.0)).collect();
    let mut paths = [dense, sparse].map(|lin| (lin, first.then(|| lin.shared(&x, m)), Scratch::default()));
    let mut best = [f64::INFINITY; 2];
    let mut spent = 0.0;
    let mut xt = Vec::new();
    // Run 0 of each path is not timed: it allocates the path's buffers and faults their pages
    // in. Timed, it took 1.3-1.6x a warm run on VGG-16's 4x4 convs, ended the timing there
    // (over PROBE_SECONDS) and had their dense path picked.
    for run in 0..=PROBE_MAX_RUNS {
        let timed = run.saturating_sub(1);
        if (timed >= PROBE_RUNS || timed == 1 && best.iter().all(|&b| b >= PROBE_SECONDS)) && spent >= PROBE_SECONDS {
            break;
        }
        for ((lin, shared, ws), best) in paths.iter_mut().zip(&mut best) {
            let mut sampler = Sampler::new(0, run as u64);
            let mut draw = Draw::Sample(&mut sampler, Estimator::Flipout);
            let t_out = Transposed { input: false, output: hand_over && lin.writes_transposed(&draw, first) };
            let t = thread_seconds();
            let (out, pooled) = lin.forward_t(&x, m, &mut draw, shared.as_ref(), relu, pool, t_out, ws);
            let out = match pool {
                Some(p) if !pooled => {
                    let mut o = ws.take(0);
                    max_pool_into(&out, m, p, &mut o);
                    ws.give(out);
                    o
                }
                _ => out,
            };
            if hand_over && !t_out.output {
                sparse::transposed_blocks_into(&out, m, lin.kernel.n, &mut xt);
            }
            let secs = thread_seconds() - t;
            ws.give(out);
            if run > 0 {
                *best = best.min(secs);
                spent += secs;
            }
        }
    }
    best[1] < PROBE_MARGIN * best[0]
}

/// CPU time of the calling thread, in seconds: on a machine shared with other jobs, time
/// slices given to them do not count (wall-clock timings of the same kernel swung 2x there).
/// Elsewhere than Unix, wall-clock time since the first call.
fn thread_seconds() -> f64 {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes one timespec to the valid pointer it is given.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
            return ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9;
        }
    }
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64()
}

impl Model {
    /// Builds the model from a copy of `posts` (in the order of [`Arch::layer_names`]); see
    /// [`Model::from_posteriors`] to hand the weights over instead.
    pub fn new(arch: &Arch, posts: &[Posterior], sparse: SparseKernels) -> Result<Model, EngineError> {
        Model::from_posteriors(arch, posts.to_vec(), sparse)
    }

    /// Builds the model from `posts` (in the order of [`Arch::layer_names`]), taking their
    /// weights as they are: no second copy of the model in memory.
    /// [`SparseKernels::Auto`] times the pruned layers on batches of [`PROBE_BATCH`] examples.
    pub fn from_posteriors(arch: &Arch, posts: Vec<Posterior>, sparse: SparseKernels) -> Result<Model, EngineError> {
        Model::for_batch(arch, posts, sparse, PROBE_BATCH)
    }

    /// [`Model::from_posteriors`] for predicting batches of `batch` examples: where
    /// [`SparseKernels::Auto`] has a choice, it times both paths of the layer on that many
    /// (per-sample costs, such as the noise draws, weigh more on small batches).
    pub fn for_batch(arch: &Arch, posts: Vec<Posterior>, sparse: SparseKernels, batch: usize) -> Result<Model, EngineError> {
        let out = shape_check(arch, &posts).map_err(EngineError::Shape)?;
        let [classes] = out[..] else {
            return Err(EngineError::Shape(format!("the network ends in shape {out:?}, not a vector of logits")));
        };
        let (layers, _) = build(&arch.ops, arch.input_shape.clone(), &mut posts.into_iter().peekable(), sparse, batch.clamp(1, MC_CHUNK), true);
        if sparse == SparseKernels::Auto {
            release_freed_heap();
        }
        Ok(Model { input_shape: arch.input_shape.clone(), classes, layers, scratch: ScratchPool::default() })
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
                    Layer::Linear(lin) => {
                        acc.0 += usize::from(lin.kernel.is_sparse());
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

    /// How many convolutions run by Winograd minimal filtering ([`WinogradConv::plan`]).
    pub fn winograd_layers(&self) -> usize {
        fn count(ls: &[Layer]) -> usize {
            ls.iter()
                .map(|l| match l {
                    Layer::Linear(lin) => usize::from(lin.wino.is_some()),
                    Layer::Residual { body, shortcut, .. } => count(body) + count(shortcut),
                    _ => 0,
                })
                .sum()
        }
        count(&self.layers)
    }

    /// The model with every convolution on im2col + GEMM (no Winograd): the baseline of
    /// `model/examples/winograd_bench.rs`.
    pub fn without_winograd(mut self) -> Model {
        fn strip(ls: &mut [Layer]) {
            for l in ls {
                match l {
                    Layer::Linear(lin) => lin.wino = None,
                    Layer::Residual { body, shortcut, .. } => {
                        strip(body);
                        strip(shortcut);
                    }
                    _ => {}
                }
            }
        }
        strip(&mut self.layers);
        self
    }

    /// Multiply-adds of one example's mean forward pass (dense-equivalent: pruned weights
    /// counted), for GFLOP/s figures: a Flipout sample does twice this many.
    pub fn macs_per_example(&self) -> u64 {
        fn count(ls: &[Layer]) -> u64 {
            ls.iter()
                .map(|l| match l {
                    Layer::Linear(lin) => (lin.rows_per_example() * lin.kernel.k * lin.kernel.n) as u64,
                    Layer::Residual { body, shortcut, .. } => count(body) + count(shortcut),
                    _ => 0,
                })
                .sum()
        }
        count(&self.layers)
    }

    /// Nominal floating-point operations (2 per multiply-add, pruned weights counted) of
    /// [`Model::predict_mc`] on `n` examples with `samples` Flipout samples, or of the mean
    /// network when `samples == 0`: two products (mean and perturbation) per weight layer and
    /// sample, except the first layer's mean product, which every sample shares.
    pub fn nominal_flops(&self, n: usize, samples: usize) -> u64 {
        let (n, s, macs) = (n as u64, samples as u64, self.macs_per_example());
        if s == 0 {
            return 2 * n * macs;
        }
        let first = match self.layers.iter().find(|l| !matches!(l, Layer::Flatten)) {
            Some(Layer::Linear(lin)) if s > 1 => (lin.rows_per_example() * lin.kernel.k * lin.kernel.n) as u64,
            _ => 0,
        };
        2 * n * (2 * s * macs - (s - 1) * first)
    }

    fn check(&self, x: &[f32]) -> Result<usize, EngineError> {
        let per = self.example_len();
        if per == 0 || !x.len().is_multiple_of(per) {
            return Err(EngineError::Input { got: x.len(), per_example: per, shape: self.input_shape.clone() });
        }
        Ok(x.len() / per)
    }

    /// Logits `[n, classes]` of the mean network (weights = mu) for `x` (`[n, ...]`, NHWC).
    pub fn logits_mean(&self, x: &[f32]) -> Result<Vec<f32>, EngineError> {
        let n = self.check(x)?;
        let per = self.example_len();
        // Small batches are split over the threads so that every core has work.
        let chunk = n.div_ceil(rayon::current_num_threads().max(1)).clamp(1, CHUNK);
        let pool = &self.scratch;
        let chunks: Vec<Vec<f32>> = x
            .par_chunks(chunk * per)
            .map(|c| pool.with(|ws| run(&self.layers, c, c.len() / per, &mut Draw::Mean, None, ws)))
            .collect();
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
        let pool = &self.scratch;
        let mut sum = vec![0f64; n * c];
        let mut sq = vec![0f64; n * c];
        for (ci, (xc, (sc, qc))) in x.chunks(MC_CHUNK * per).zip(sum.chunks_mut(MC_CHUNK * c).zip(sq.chunks_mut(MC_CHUNK * c))).enumerate() {
            let m = xc.len() / per;
            // The first weight layer's patches and mean product are the same for every sample.
            // Reshapes before the first weight layer are free: its mean product is still shared.
            let shared = match self.layers.iter().find(|l| !matches!(l, Layer::Flatten)) {
                Some(Layer::Linear(lin)) if samples > 1 && !lin.direct_c1(est) => Some(lin.shared(xc, m)),
                _ => None,
            };
            let per_sample: Vec<Vec<f32>> = (0..samples)
                .into_par_iter()
                .map(|s| {
                    pool.with(|ws| {
                        let mut sampler = Sampler::new(seed, (ci * samples + s) as u64);
                        let mut draw = Draw::Sample(&mut sampler, est);
                        let logits = run(&self.layers, xc, m, &mut draw, shared.as_ref(), ws);
                        let p = softmax_in_f32(&logits, c);
                        ws.give(logits);
                        p
                    })
                })
                .collect();
            // Summed in sample order: the result does not depend on the thread count.
            for p in &per_sample {
                for ((a, b), &v) in sc.iter_mut().zip(qc.iter_mut()).zip(p) {
                    let v = f64::from(v);
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

/// Whether a layer's input and output activations are transposed, in the layout of
/// [`sparse::transposed_blocks`], instead of row-major: a pruned dense layer followed by
/// another leaves its output transposed for it ([`sparse::Job::out_t`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Transposed {
    /// The input is transposed.
    input: bool,
    /// The output is to be transposed.
    output: bool,
}

/// Work of the first weight layer that every Monte Carlo sample shares.
struct Shared {
    /// Patch rows of a convolution (`None` for a dense layer: the input rows are its patches).
    patches: Option<Vec<f32>>,
    /// `patches @ mu` (no bias), `[rows, units]`; of a pruned dense layer made from `mean_t`
    /// by the first sample that needs it ([`Shared::mean`]), if any does.
    mean: std::sync::OnceLock<Vec<f32>>,
    /// Examples and units of the mean product.
    n: usize,
    units: usize,
    /// The input transposed for the sparse kernel ([`sparse::transposed_blocks`]), for a
    /// pruned dense layer: each sample then transposes only its sign bits.
    xt: Option<Vec<f32>>,
    /// The mean product of a pruned dense layer transposed the same way (its products run
    /// on the transposed kernel), which a layer that leaves its output transposed
    /// ([`Transposed::output`]) adds there.
    mean_t: Option<Vec<f32>>,
    /// Which inputs of a dense layer are not zero ([`dense::nonzero_bits`]), for the fused
    /// kernel's steps over them.
    nonzero: Option<Vec<u64>>,
}

impl Shared {
    /// The mean product, `[rows, units]`.
    fn mean(&self) -> &[f32] {
        self.mean.get_or_init(|| match &self.mean_t {
            Some(t) => sparse::rows_of_transposed_blocks(t, self.n, self.units),
            None => unreachable!("a shared mean is made in rows or transposed"),
        })
    }
}

/// Reusable buffers of one thread: Monte Carlo samples reuse the same memory instead of
/// allocating per layer (freeing large vectors made glibc hand pages back to the OS and
/// fault them in again).
#[derive(Default)]
pub(crate) struct Scratch {
    free: Vec<Vec<f32>>,
    patches: Vec<f32>,
    flipped: Vec<f32>,
    pert: Vec<f32>,
    noise: Vec<f32>,
    tbuf: Vec<f32>,
    s_in: Vec<u32>,
    s_out: Vec<u32>,
    /// `[mu | signed noise]` (or the signed noise alone) of a layer whose input signs go on
    /// the weights ([`Linear::signs_on_weights`]), and the signs it currently carries.
    wsigned: Vec<f32>,
    wsigns: Vec<u32>,
    /// One example's output before the max pool fused into the layer.
    unpooled: Vec<f32>,
    wino: winograd::Buffers,
    /// Weight panels and output sign bits of [`flipout_dense`] (and of a pruned dense layer).
    panel: dense::Buffers,
    s_out_bits: Vec<u64>,
    /// Input sign bits of a pruned dense layer ([`sparse::Signs::Bits`]).
    s_in_bits: Vec<u64>,
    /// A fused convolution's signs spread over a block of its patch rows ([`spread_signs`]).
    row_s_in: Vec<u64>,
    row_s_out: Vec<u64>,
    /// Buffers of the pruned layers' transposed kernel.
    sparse: sparse::Scratch,
}

/// Sign bits of the patch rows `rows` of a convolution (`rpe` rows per example), `row_len`
/// values each, into `out` as [`FlipoutDense`] takes them (bit j of word i for value 64 i + j
/// of the block, row-major): value c of row r takes bit `e * width + c % width` of `bits`,
/// e = r / rpe its example. A patch row runs over its window's positions with the channels
/// fastest (HWIO), so an example's input signs (`width` = channels) repeat at every
/// position; its output signs (`width` = `row_len` = units) are one run.
///
/// # Panics
/// When `bits` holds fewer bits than the rows' examples take.
fn spread_signs(bits: &[u64], width: usize, row_len: usize, rows: std::ops::Range<usize>, rpe: usize, out: &mut Vec<u64>) {
    /// ORs the low `len` bits of `word` into `dst` from bit `at` on.
    fn put(dst: &mut [u64], at: usize, word: u64, len: usize) {
        let word = if len < 64 { word & ((1 << len) - 1) } else { word };
        let (i, b) = (at / 64, at % 64);
        dst[i] |= word << b;
        if b > 0 && b + len > 64 {
            dst[i + 1] |= word >> (64 - b);
        }
    }
    out.clear();
    out.resize((rows.len() * row_len).div_ceil(64) + 1, 0);
    let mut pattern = vec![0u64; row_len.div_ceil(64) + 1];
    let mut example = None;
    for (i, r) in rows.enumerate() {
        let e = r / rpe.max(1);
        if example != Some(e) {
            // The example's row of signs, built once for its rows.
            pattern.iter_mut().for_each(|w| *w = 0);
            for c0 in (0..row_len).step_by(width.max(1)) {
                for j in (0..width.min(row_len - c0)).step_by(64) {
                    let len = 64.min(width.min(row_len - c0) - j);
                    put(&mut pattern, c0 + j, super::sampler::sign_bits_at(bits, e * width + j, len), len);
                }
            }
            example = Some(e);
        }
        for (w, &word) in pattern.iter().enumerate().take(row_len.div_ceil(64)) {
            put(out, i * row_len + 64 * w, word, 64.min(row_len - 64 * w));
        }
    }
}

/// Subnormal floats flushed to zero on this thread (x86-64: the FTZ and DAZ bits of MXCSR)
/// while the guard lives, as TensorFlow's CPU kernels run. Deep untrained or pruned nets
/// shrink activations into the subnormal range, where every multiply-add takes a slow
/// microcode path: a 70%-pruned VGG-16 ran 20-70% slower than the dense one without this.
pub(crate) struct FlushDenormals {
    #[cfg(target_arch = "x86_64")]
    old: u32,
}

impl FlushDenormals {
    /// Sets FTZ and DAZ; the drop restores the previous mode.
    pub(crate) fn new() -> FlushDenormals {
        #[cfg(target_arch = "x86_64")]
        {
            let mut old: u32 = 0;
            // SAFETY: stmxcsr / ldmxcsr read and write only MXCSR and the 4 bytes pointed to;
            // setting FTZ (bit 15) and DAZ (bit 6) changes results only for subnormal values.
            unsafe {
                std::arch::asm!("stmxcsr [{}]", in(reg) &mut old, options(nostack, preserves_flags));
                let new = old | 0x8040;
                std::arch::asm!("ldmxcsr [{}]", in(reg) &new, options(nostack, preserves_flags, readonly));
            }
            FlushDenormals { old }
        }
        #[cfg(not(target_arch = "x86_64"))]
        FlushDenormals {}
    }
}

impl Drop for FlushDenormals {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `new`: restores the mode read there.
        unsafe {
            std::arch::asm!("ldmxcsr [{}]", in(reg) &self.old, options(nostack, preserves_flags, readonly));
        }
    }
}

/// The [`Scratch`]es of a model's predictions, reused by their work items: rayon's `map_init`
/// makes a fresh value for every split of the work, which allocated (and page-faulted) every
/// buffer again; here at most one per thread exists. They are kept from one prediction to
/// the next: fresh buffers page-faulted about 5 MB back in per BNN-FC prediction.
#[derive(Default)]
struct ScratchPool(std::sync::Mutex<Vec<Scratch>>);

/// A copy of a model starts with no buffers.
impl Clone for ScratchPool {
    fn clone(&self) -> Self {
        ScratchPool::default()
    }
}

impl std::fmt::Debug for ScratchPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScratchPool")
    }
}

impl ScratchPool {
    /// Runs `f` with a free scratch of the pool (a new one when all are in use).
    fn with<R>(&self, f: impl FnOnce(&mut Scratch) -> R) -> R {
        let _ftz = FlushDenormals::new();
        let lock = || self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut ws = lock().pop().unwrap_or_default();
        let r = f(&mut ws);
        lock().push(ws);
        r
    }
}

impl Scratch {
    /// A free buffer for `len` values: the smallest one that holds them, else the largest
    /// (grown) when it holds at least half of them, else a new one, so that a thread's buffers
    /// settle at the sizes its layers need and are not reallocated per sample (big ones come
    /// from mmap and fault their pages in again). Not growing a much smaller buffer keeps
    /// it for the small requests: BNN-FC's input copy had grown into a third layer-sized
    /// buffer's role, and two of them took turns being truncated and zero-filled back to
    /// full length (1.7% of its run).
    fn take(&mut self, len: usize) -> Vec<f32> {
        let fits = (0..self.free.len()).filter(|&i| self.free[i].capacity() >= len).min_by_key(|&i| self.free[i].capacity());
        let grow = || (0..self.free.len()).max_by_key(|&i| self.free[i].capacity()).filter(|&i| 2 * self.free[i].capacity() >= len);
        fits.or_else(grow).map(|i| self.free.swap_remove(i)).unwrap_or_default()
    }

    /// A buffer of `len` values that the caller overwrites entirely (old contents kept).
    fn any(&mut self, len: usize) -> Vec<f32> {
        let mut v = self.take(len);
        v.resize(len, 0.0);
        v
    }

    fn copy(&mut self, src: &[f32]) -> Vec<f32> {
        let mut v = self.take(src.len());
        v.clear();
        v.extend_from_slice(src);
        v
    }

    fn give(&mut self, v: Vec<f32>) {
        self.free.push(v);
    }
}

impl Linear {
    /// Patch rows per example: output positions of a convolution, 1 for a dense layer.
    fn rows_per_example(&self) -> usize {
        self.conv.map_or(1, |w| w.output().iter().product())
    }

    /// Values that one example's input sign flips cover: its channels (a conv flips every
    /// position of an (example, channel) alike, as TFP does) or its features.
    fn sign_width(&self) -> usize {
        self.conv.map_or(self.kernel.k, |w| w.input[2])
    }

    /// Whether Flipout's input signs go on the weights, one example at a time, instead of on
    /// the patch rows: `(P_b * s_b) @ D = P_b @ (s_b * D)` for example b, whose patch rows all
    /// share its channel signs. Worth it when an example has more patch rows than twice the
    /// layer's units: flipping the k x n noise costs less than flipping rpe x k patch values,
    /// and the mean and perturbation products then share one pass (and one packing) over the
    /// patches as a single GEMM against `[mu | s_b * D]`, twice as wide.
    fn signs_on_weights(&self) -> bool {
        self.conv.is_some() && !self.kernel.is_sparse() && self.kernel.k > 0 && self.kernel.n > 0 && self.rows_per_example() >= 2 * self.kernel.n
    }

    /// Whether this Flipout conv has one input channel and runs on the direct kernel
    /// ([`conv_c1`]) for both products at once, against each example's own weights
    /// ([`Linear::flipout_c1`]): recomputing its mean product per sample there costs less
    /// than reading the shared one back from memory (BNN-Conv: 36 MB per sample).
    fn direct_c1(&self, est: Estimator) -> bool {
        est == Estimator::Flipout && self.signs_on_weights() && self.conv.is_some_and(|w| w.input[2] == 1) && conv_c1_vectorized(self.kernel.n)
    }

    /// Whether Flipout runs on the fused dense kernel ([`flipout_dense`]): dense layers with
    /// dense weights (any k: `flipout_bench` measures it 1.1-1.6x faster than the unfused GEMMs
    /// on every dense layer of BNN-FC, BNN-Conv and VGG-16); the input signs are drawn straight
    /// onto a flipped copy of `x`, the output signs stay bits (the same draws as the masks of
    /// the other paths).
    fn fused_flipout(&self) -> bool {
        self.conv.is_none() && !self.kernel.is_sparse()
    }

    /// Whether this Flipout convolution runs on the fused dense kernel ([`flipout_dense`])
    /// over its patch rows, its (example, channel) and (example, unit) signs spread over the
    /// rows ([`spread_signs`]): a dense-kernel convolution that Winograd (not with a shared
    /// mean) and the signs-on-weights GEMM do not take, VGG-16's 4x4 and 2x2 layers on
    /// 32x32 inputs. The GEMM library packed each product's k x n weights (9 MB there) for
    /// a few rows: a fifth of VGG-16's time.
    fn fused_conv(&self, shared: bool) -> bool {
        self.conv.is_some() && !self.kernel.is_sparse() && (self.wino.is_none() || shared) && !self.signs_on_weights()
    }

    /// Whether this is a pruned dense layer on the sparse kernel: its Flipout signs are drawn
    /// as bits ([`sparse::Signs::Bits`]), which its sign panels and output pass apply as lane
    /// masks (convolutions take masks, applied per patch value), and as a first layer its
    /// transposed input is shared by the samples ([`Shared::xt`]).
    fn pruned_dense(&self) -> bool {
        self.conv.is_none() && self.kernel.is_sparse()
    }

    /// Patch rows per block.
    fn block_rows(&self) -> usize {
        (BLOCK_VALUES / self.kernel.k.max(1)).max(256)
    }

    /// Patch rows `r0..r1` of `x`: the first layer's, made once for every sample, where
    /// `shared` has them, else [`Linear::patches`].
    fn block_patches<'a>(&self, x: &'a [f32], shared: Option<&'a Shared>, r0: usize, r1: usize, buf: &'a mut Vec<f32>) -> &'a [f32] {
        match shared {
            Some(Shared { patches: Some(p), .. }) => &p[r0 * self.kernel.k..r1 * self.kernel.k],
            _ => self.patches(x, r0, r1, buf),
        }
    }

    /// Patch rows `r0..r1` of `x`: a slice of `x` itself (dense) or im2col into `buf` (conv).
    fn patches<'a>(&self, x: &'a [f32], r0: usize, r1: usize, buf: &'a mut Vec<f32>) -> &'a [f32] {
        match &self.conv {
            Some(win) => {
                im2col_rows(x, win, r0, r1, buf);
                buf
            }
            None => &x[r0 * self.kernel.k..r1 * self.kernel.k],
        }
    }

    /// The sample-independent part of this layer on `x` (`n` examples), blocks in parallel.
    fn shared(&self, x: &[f32], n: usize) -> Shared {
        let (k, u, rows) = (self.kernel.k, self.kernel.n, n * self.rows_per_example());
        if let (true, Weights::Sparse { csr, mu, .. }) = (self.pruned_dense(), &self.kernel.weights) {
            // Transposed, as the samples' products run: the mean product on the transposed
            // kernel too, in rows only if a sample needs them.
            let xt = sparse::transposed_blocks(x, n, k);
            // Panels in parallel (they are contiguous: panel q holds examples q * PANEL..).
            let mut mean_t = vec![0f32; sparse::transposed_len(n, u)];
            mean_t.par_chunks_mut(u * sparse::PANEL).zip(xt.par_chunks(k * sparse::PANEL)).enumerate().for_each(|(q, (yp, xp))| {
                let _ftz = FlushDenormals::new();
                let cols = n.saturating_sub(q * sparse::PANEL).min(sparse::PANEL);
                if cols > 0 {
                    csr.spmm_t(xp, cols, sparse::Pass::One(mu), yp);
                }
            });
            return Shared { patches: None, mean: std::sync::OnceLock::new(), n, units: u, xt: Some(xt), mean_t: Some(mean_t), nonzero: None };
        }
        let patches = self.conv.map(|_| {
            let mut p = Vec::new();
            self.patches(x, 0, rows, &mut p);
            p
        });
        let p = patches.as_deref().unwrap_or(x);
        let mut mean = vec![0f32; rows * u];
        // Blocks split over the threads when there are few rows.
        let block = self.block_rows().min(rows.div_ceil(rayon::current_num_threads().max(1))).max(1);
        mean.par_chunks_mut(block * u).zip(p.par_chunks(block * k)).for_each_init(Vec::new, |tbuf, (o, pb)| {
            let _ftz = FlushDenormals::new();
            self.kernel.matmul(pb, pb.len() / k.max(1), self.kernel.values().0, o, false, tbuf);
        });
        let nonzero = if patches.is_none() && self.fused_flipout() { dense::nonzero_bits(x, rows, k) } else { None };
        Shared { patches, mean: std::sync::OnceLock::from(mean), n, units: u, xt: None, mean_t: None, nonzero }
    }

    /// The layer on `x` (`n` examples); returns `[n, ..., units]`, through a ReLU when `relu`.
    /// With `shared` (this layer's [`Shared`] for the same `x`), the mean product and patches
    /// are not redone. With `pool` (the max pool that follows), the Flipout path with the
    /// signs on the weights pools each example's output while it is in cache; the flag says
    /// whether the returned output is pooled.
    #[cfg(test)]
    #[allow(clippy::too_many_arguments)]
    fn forward(&self, x: &[f32], n: usize, draw: &mut Draw, shared: Option<&Shared>, relu: bool, pool: Option<&Window>, ws: &mut Scratch) -> (Vec<f32>, bool) {
        self.forward_t(x, n, draw, shared, relu, pool, Transposed::default(), ws)
    }

    /// Whether this layer can leave its output transposed for a following pruned dense
    /// layer ([`Transposed`]): a pruned dense layer whose products run as one on this CPU,
    /// or that runs only its random part (Flipout's perturbation, the noise of
    /// reparameterization) beside a shared mean product.
    fn writes_transposed(&self, draw: &Draw, shared: bool) -> bool {
        let random = matches!(draw, Draw::Sample(..)) && self.kernel.values().1.is_some();
        self.pruned_dense() && if shared { random } else { sparse::one_product(matches!(draw, Draw::Sample(_, Estimator::Flipout))) }
    }

    /// [`Linear::forward`] with its input, its output or both transposed as `t` says (only a
    /// pruned dense layer's, [`Linear::writes_transposed`] for the output).
    #[allow(clippy::too_many_arguments)]
    fn forward_t(&self, x: &[f32], n: usize, draw: &mut Draw, shared: Option<&Shared>, relu: bool, pool: Option<&Window>, t: Transposed, ws: &mut Scratch) -> (Vec<f32>, bool) {
        let (k, u) = (self.kernel.k, self.kernel.n);
        let rpe = self.rows_per_example();
        let rows = n * rpe;
        let (mu, sigma) = self.kernel.values();
        let mut bias = self.bias_mu.clone();
        // Draws, in a fixed order per layer: bias, weight noise, input signs, output signs.
        let mut flipout = false;
        let mut reparam = false;
        let mut noise = std::mem::take(&mut ws.noise);
        // The fused dense kernel's noise: drawn by the kernel into its weight panels.
        let mut fused_noise = None;
        // A pruned kernel's Flipout noise: drawn by the sparse layer ([`sparse::KeptNoise`]).
        let mut kept_key = None;
        if let Draw::Sample(s, est) = draw {
            if let Some(bs) = &self.bias_sigma {
                bias = s.gaussian(&self.bias_mu, bs);
            }
            if let Some(sig) = sigma {
                match &self.kernel.weights {
                    // The dense kernel's draws for the kept weights: the results do not depend
                    // on which kernel `SparseKernels::Auto` timed faster. Flipout's are drawn
                    // by the sparse layer, where its products need them.
                    Weights::Sparse { .. } if *est == Estimator::Flipout => kept_key = Some(s.noise_key()),
                    Weights::Sparse { csr, .. } => {
                        noise.resize(sig.len(), 0.0);
                        sparse::kept_noise(s, csr, sig, &mut noise)
                    }
                    // Same key, same values as `noise_into`.
                    // A fused convolution in blocks of patch rows draws its noise once (below).
                    Weights::Dense { .. } if *est == Estimator::Flipout && (self.fused_flipout() || self.fused_conv(shared.is_some()) && rows <= self.block_rows()) => fused_noise = Some(Noise::Draw { key: s.noise_key(), sigma: sig }),
                    Weights::Dense { .. } => {
                        noise.resize(sig.len(), 0.0);
                        s.noise_into(sig, &mut noise)
                    }
                }
                match est {
                    Estimator::Flipout => {
                        flipout = true;
                        if self.fused_flipout() {
                            s.sign_bits_into(rows * k, &mut ws.s_in_bits);
                            s.sign_bits_into(n * u, &mut ws.s_out_bits);
                        } else if self.pruned_dense() {
                            // Same draws as the masks.
                            s.sign_bits_into(n * k, &mut ws.s_in_bits);
                            s.sign_bits_into(n * u, &mut ws.s_out_bits);
                        } else if self.fused_conv(shared.is_some()) {
                            // Same draws as the masks, per (example, channel) and (example, unit).
                            s.sign_bits_into(n * self.sign_width(), &mut ws.s_in_bits);
                            s.sign_bits_into(n * u, &mut ws.s_out_bits);
                        } else {
                            s.sign_masks_into(n * self.sign_width(), &mut ws.s_in);
                            s.sign_masks_into(n * u, &mut ws.s_out);
                        }
                    }
                    Estimator::Reparameterization => {
                        reparam = true;
                        // Without a shared mean product, one product with mu + noise.
                        if shared.is_none() {
                            noise.iter_mut().zip(mu).for_each(|(e, &m)| *e += m);
                        }
                    }
                }
            }
        }
        // Each path takes its own output buffer (one taken here for all would stay allocated,
        // unused, beside the path's own: 35 MB per thread on BNN-Conv's first conv).
        if let Weights::Sparse { csr, .. } = &self.kernel.weights {
            // Pruned kernel: the transposed sparse kernel, both Flipout products in one pass.
            let mut out = ws.any(if t.output { sparse::transposed_len(n, u) + aligned::SLACK } else { rows * u });
            let (s_in, s_out) = if self.pruned_dense() { (Signs::Bits(&ws.s_in_bits), Signs::Bits(&ws.s_out_bits)) } else { (Signs::Masks(&ws.s_in), Signs::Masks(&ws.s_out)) };
            let kept = match (kept_key, sigma) {
                (Some(key), Some(sigma)) => sparse::KeptNoise::Draw { key, sigma },
                _ => sparse::KeptNoise::Values(&noise),
            };
            let flip = flipout.then_some(Flip { noise: kept, s_in, s_out });
            let a = if reparam { Some(&noise[..]) } else { shared.is_none().then_some(mu) };
            let xt = if t.input { Some(&x[aligned::lead(x).min(x.len())..]) } else { shared.and_then(|s| s.xt.as_deref()) };
            let base = shared.map(|s| match (t.output, &s.mean_t) {
                (true, Some(m)) => &m[..],
                (true, None) => unreachable!("a pruned dense layer's shared mean is transposed too"),
                (false, _) => s.mean(),
            });
            let job = Job { csr, conv: self.conv.as_ref(), x, n, a, flip, base, xt, bias: &bias, relu, out_t: t.output };
            sparse::forward(&job, &mut out, &mut ws.sparse);
            ws.noise = noise;
            return (out, false);
        }
        assert_eq!(t, Transposed::default(), "only a pruned dense layer takes or leaves its activations transposed");
        // Output values of `n` examples after the fused max pool.
        let pooled_len = pool.map_or(rows * u, |p| n * p.output().iter().product::<usize>() * u);
        // Winograd for the layers it was planned for, unless the mean product is shared.
        if let (Some(wg), None) = (&self.wino, shared) {
            // Only as large as what is written: the pooled output where the pool is fused.
            let mut out = ws.any(if wg.pools(flipout, pool) { pooled_len } else { rows * u });
            let f = flipout.then(|| winograd::Flipout { noise: &noise, s_in: &ws.s_in, s_out: &ws.s_out });
            let pooled = wg.forward(x, n, reparam.then_some(&noise[..]), f, &bias, relu, pool, &mut out, &mut ws.wino);
            if pooled {
                out.truncate(pooled_len);
            }
            ws.noise = noise;
            return (out, pooled);
        }
        if let (true, Some(fused_noise), true) = (flipout, fused_noise, self.fused_flipout()) {
            let mut out = ws.any(rows * u);
            let mean = shared.map(|sh| sh.mean());
            let x_nonzero = shared.and_then(|sh| sh.nonzero.as_deref());
            let f = FlipoutDense { x, s_in: &ws.s_in_bits, m: rows, k, n: u, mu, mean, x_nonzero, noise: fused_noise, s_out: &ws.s_out_bits, bias: &bias, relu };
            flipout_dense(&f, &mut out, &mut ws.panel);
            ws.noise = noise;
            return (out, false);
        }
        if flipout && self.fused_conv(shared.is_some()) {
            let mut out = ws.any(rows * u);
            let drawn = fused_noise.unwrap_or(Noise::Values(&noise));
            let mut pbuf = std::mem::take(&mut ws.patches);
            for r0 in (0..rows).step_by(self.block_rows()) {
                let r1 = (r0 + self.block_rows()).min(rows);
                let pb = self.block_patches(x, shared, r0, r1, &mut pbuf);
                spread_signs(&ws.s_in_bits, self.sign_width(), k, r0..r1, rpe, &mut ws.row_s_in);
                spread_signs(&ws.s_out_bits, u, u, r0..r1, rpe, &mut ws.row_s_out);
                let mean = shared.map(|sh| &sh.mean()[r0 * u..r1 * u]);
                let f = FlipoutDense { x: pb, s_in: &ws.row_s_in, m: r1 - r0, k, n: u, mu, mean, x_nonzero: None, noise: drawn, s_out: &ws.row_s_out, bias: &bias, relu };
                flipout_dense(&f, &mut out[r0 * u..r1 * u], &mut ws.panel);
            }
            ws.patches = pbuf;
            ws.noise = noise;
            return (out, false);
        }
        if flipout && self.signs_on_weights() {
            let mut out = ws.any(pooled_len);
            self.flipout_signed_weights(x, n, &noise, &bias, relu, shared, pool, &mut out, ws);
            ws.noise = noise;
            return (out, pool.is_some());
        }
        let mut out = ws.any(rows * u);
        let block = self.block_rows();
        let mut pbuf = std::mem::take(&mut ws.patches);
        for r0 in (0..rows).step_by(block) {
            let r1 = (r0 + block).min(rows);
            let rb = r1 - r0;
            let ob = &mut out[r0 * u..r1 * u];
            let pb = self.block_patches(x, shared, r0, r1, &mut pbuf);
            match shared {
                Some(sh) => ob.copy_from_slice(&sh.mean()[r0 * u..r1 * u]),
                None if reparam => self.kernel.matmul(pb, rb, &noise, ob, false, &mut ws.tbuf),
                None => self.kernel.matmul(pb, rb, mu, ob, false, &mut ws.tbuf),
            }
            if flipout {
                // (p * s_in) @ (sigma * eps) * s_out, signs per example (and channel / unit).
                let cin = self.sign_width();
                ws.flipped.resize(rb * k, 0.0);
                for (r, (row, src)) in (r0..r1).zip(ws.flipped.chunks_exact_mut(k.max(1)).zip(pb.chunks_exact(k.max(1)))) {
                    let signs = &ws.s_in[(r / rpe) * cin..][..cin];
                    if let [m] = signs {
                        // One input channel: the whole patch row shares the sign.
                        row.iter_mut().zip(src).for_each(|(v, &x)| *v = f32::from_bits(x.to_bits() ^ m));
                    } else {
                        for (px, sp) in row.chunks_exact_mut(cin).zip(src.chunks_exact(cin)) {
                            for ((v, &x), &m) in px.iter_mut().zip(sp).zip(signs) {
                                *v = f32::from_bits(x.to_bits() ^ m);
                            }
                        }
                    }
                }
                ws.pert.resize(rb * u, 0.0);
                self.kernel.matmul(&ws.flipped, rb, &noise, &mut ws.pert, false, &mut ws.tbuf);
                for (r, (o, p)) in (r0..r1).zip(ob.chunks_exact_mut(u).zip(ws.pert.chunks_exact(u))) {
                    let signs = &ws.s_out[(r / rpe) * u..][..u];
                    for ((o, &p), &m) in o.iter_mut().zip(p).zip(signs) {
                        *o += f32::from_bits(p.to_bits() ^ m);
                    }
                }
            } else if reparam && shared.is_some() {
                self.kernel.matmul(pb, rb, &noise, ob, true, &mut ws.tbuf);
            }
        }
        ws.patches = pbuf;
        ws.noise = noise;
        bias_act(&mut out, &bias, relu);
        (out, false)
    }

    /// The Flipout product of a dense-kernel convolution with the input signs on the weights
    /// ([`Linear::signs_on_weights`]): `out = P @ mu + (P @ (s_in * noise)) * s_out + bias`
    /// (through a ReLU when `relu`) one example at a time, while the example's rows are in
    /// cache; the mean product comes from `shared` when given. With `pool`, `out` receives
    /// each example's output max-pooled (the 36 MB of BNN-Conv's first conv output then never
    /// leave the cache).
    #[allow(clippy::too_many_arguments)]
    fn flipout_signed_weights(&self, x: &[f32], n: usize, noise: &[f32], bias: &[f32], relu: bool, shared: Option<&Shared>, pool: Option<&Window>, out: &mut [f32], ws: &mut Scratch) {
        let (k, u, rpe, cin) = (self.kernel.k, self.kernel.n, self.rows_per_example(), self.sign_width());
        if let (Some(win), None) = (self.conv.filter(|win| win.input[2] == 1 && conv_c1_vectorized(u)), shared) {
            return self.flipout_c1(&win, x, n, noise, bias, relu, pool, out, ws);
        }
        let mu = self.kernel.values().0;
        // Columns of the combined weights: mu and the noise, or only the noise when the mean
        // product is shared.
        let (w, off) = if shared.is_some() { (u, 0) } else { (2 * u, u) };
        let mut wsigned = std::mem::take(&mut ws.wsigned);
        wsigned.resize(k * w, 0.0);
        for (j, row) in wsigned.chunks_exact_mut(w.max(1)).enumerate() {
            if off > 0 {
                row[..u].copy_from_slice(&mu[j * u..][..u]);
            }
            row[off..].copy_from_slice(&noise[j * u..][..u]);
        }
        // Signs the noise rows carry now (all +1): each example flips only the rows whose
        // channel sign differs from the previous example's.
        ws.wsigns.clear();
        ws.wsigns.resize(cin, 0);
        let mut pbuf = std::mem::take(&mut ws.patches);
        let mut prod = std::mem::take(&mut ws.pert);
        prod.resize(rpe * w, 0.0);
        let mut unpooled = std::mem::take(&mut ws.unpooled);
        let pooled_len = pool.map_or(0, |p| p.output().iter().product::<usize>() * u);
        if pool.is_some() {
            unpooled.resize(rpe * u, 0.0);
        }
        for b in 0..n {
            let signs = &ws.s_in[b * cin..][..cin];
            for (j, row) in wsigned.chunks_exact_mut(w.max(1)).enumerate() {
                let c = j % cin;
                let d = signs[c] ^ ws.wsigns[c];
                if d != 0 {
                    row[off..].iter_mut().for_each(|v| *v = f32::from_bits(v.to_bits() ^ d));
                }
            }
            ws.wsigns.copy_from_slice(signs);
            let (r0, r1) = (b * rpe, (b + 1) * rpe);
            let so = &ws.s_out[b * u..][..u];
            let pb = self.block_patches(x, shared, r0, r1, &mut pbuf);
            sgemm(rpe, k, w, pb, &wsigned, &mut prod, false);
            let ob = if pool.is_some() { &mut unpooled[..] } else { &mut out[r0 * u..r1 * u] };
            match shared {
                Some(sh) => {
                    for ((o, m), t) in ob.chunks_exact_mut(u).zip(sh.mean()[r0 * u..r1 * u].chunks_exact(u)).zip(prod.chunks_exact(w)) {
                        combine(o, m, t, so, bias, relu);
                    }
                }
                None => {
                    for (o, t) in ob.chunks_exact_mut(u).zip(prod.chunks_exact(w)) {
                        let (tm, tp) = t.split_at(u);
                        combine(o, tm, tp, so, bias, relu);
                    }
                }
            }
            if let Some(p) = pool {
                max_pool_to(&unpooled, 1, p, &mut out[b * pooled_len..(b + 1) * pooled_len]);
            }
        }
        ws.unpooled = unpooled;
        ws.patches = pbuf;
        ws.pert = prod;
        ws.wsigned = wsigned;
    }

    /// [`Linear::flipout_signed_weights`] for a conv with one input channel (an image model's
    /// first), without a shared mean product: an example's one input sign and its output
    /// signs go on its own weights, `mu + s_in * noise * s_out` (`[k, units]`, formed per
    /// example), and both Flipout products run as one on the direct kernel ([`conv_c1`]),
    /// half the multiply-adds of the two; then the bias and ReLU, and a 2x2 max pool in the
    /// kernel's registers where one follows ([`conv_c1_pool2`]).
    #[allow(clippy::too_many_arguments)]
    fn flipout_c1(&self, win: &Window, x: &[f32], n: usize, noise: &[f32], bias: &[f32], relu: bool, pool: Option<&Window>, out: &mut [f32], ws: &mut Scratch) {
        let (u, rpe, hw) = (self.kernel.n, self.rows_per_example(), win.input[0] * win.input[1]);
        let (k, mu) = (self.kernel.k, self.kernel.values().0);
        let mut weights = std::mem::take(&mut ws.wsigned);
        let mut pbuf = std::mem::take(&mut ws.patches);
        let mut unpooled = std::mem::take(&mut ws.unpooled);
        let pooled_len = pool.map_or(0, |p| p.output().iter().product::<usize>() * u);
        let pool2 = pool.is_some_and(|p| p.is_unpadded_2x2() && p.input == [win.output()[0], win.output()[1], u]);
        if pool.is_some() {
            unpooled.resize(rpe * u, 0.0);
        }
        for b in 0..n {
            let si = ws.s_in[b];
            winograd::form_signed(k, u, mu, noise, |_| si, &ws.s_out[b * u..][..u], &mut weights);
            let img = &x[b * hw..(b + 1) * hw];
            if pool2 && conv_c1_pool2(img, win, &weights, u, &C1Output { bias, relu }, &mut out[b * pooled_len..(b + 1) * pooled_len], &mut pbuf) {
                continue;
            }
            let ob = if pool.is_some() { &mut unpooled[..] } else { &mut out[b * rpe * u..(b + 1) * rpe * u] };
            conv_c1(img, win, &weights, u, ob, &mut pbuf);
            bias_act(ob, bias, relu);
            if let Some(p) = pool {
                max_pool_to(&unpooled, 1, p, &mut out[b * pooled_len..(b + 1) * pooled_len]);
            }
        }
        ws.unpooled = unpooled;
        ws.patches = pbuf;
        ws.wsigned = weights;
    }
}

/// Adds `bias` to every row of `out`, then a ReLU when `relu` (one pass instead of two).
fn bias_act(out: &mut [f32], bias: &[f32], relu: bool) {
    for row in out.chunks_exact_mut(bias.len().max(1)) {
        if relu {
            row.iter_mut().zip(bias).for_each(|(v, b)| *v = (*v + b).max(0.0));
        } else {
            row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
        }
    }
}

/// One output row of a Flipout layer: `o = mean + pert * s_out + bias`, through a ReLU when
/// `relu` (signs as XOR masks), in the order of the unfused passes.
fn combine(o: &mut [f32], mean: &[f32], pert: &[f32], s_out: &[u32], bias: &[f32], relu: bool) {
    let vals = o.iter_mut().zip(mean).zip(pert).zip(s_out).zip(bias);
    if relu {
        vals.for_each(|((((o, &m), &p), &s), &b)| *o = (m + f32::from_bits(p.to_bits() ^ s) + b).max(0.0));
    } else {
        vals.for_each(|((((o, &m), &p), &s), &b)| *o = m + f32::from_bits(p.to_bits() ^ s) + b);
    }
}

/// Runs `layers` on `n` examples `x` (row-major); returns `[n, classes]` logits. `shared` is
/// the first layer's sample-independent work for this `x`.
fn run(layers: &[Layer], x: &[f32], n: usize, draw: &mut Draw, shared: Option<&Shared>, ws: &mut Scratch) -> Vec<f32> {
    let mut act = ws.copy(x);
    run_layers(layers, &mut act, n, draw, shared, ws);
    act
}

fn run_layers(layers: &[Layer], act: &mut Vec<f32>, n: usize, draw: &mut Draw, mut shared: Option<&Shared>, ws: &mut Scratch) {
    // A ReLU right after a weight layer runs in that layer's output pass, and so may the max
    // pool after them: `skip` counts the layers already done.
    let mut skip = 0;
    // Whether `act` holds the transposed output of a pruned dense layer for the next one.
    let mut transposed = false;
    for (i, layer) in layers.iter().enumerate() {
        if skip > 0 {
            skip -= 1;
            continue;
        }
        match layer {
            Layer::Linear(lin) => {
                let relu = matches!(layers.get(i + 1), Some(Layer::Relu));
                let pool = match layers.get(i + 1 + usize::from(relu)) {
                    Some(Layer::MaxPool(win)) => Some(win),
                    _ => None,
                };
                let shared = shared.take();
                // Between two pruned dense layers the activations stay transposed: no
                // transpose back to rows and again (each sample, each layer).
                let next_takes_t = matches!(layers.get(i + 1 + usize::from(relu)), Some(Layer::Linear(next)) if next.pruned_dense());
                let t = Transposed { input: transposed, output: next_takes_t && lin.writes_transposed(draw, shared.is_some()) };
                let (out, pooled) = lin.forward_t(act, n, draw, shared, relu, pool, t, ws);
                transposed = t.output;
                skip = usize::from(relu) + usize::from(pooled);
                ws.give(std::mem::replace(act, out));
            }
            _ if transposed => unreachable!("transposed activations go to a pruned dense layer"),
            Layer::Relu => act.iter_mut().for_each(|v| *v = v.max(0.0)),
            Layer::MaxPool(win) => {
                let [oh, ow] = win.output();
                let mut out = ws.take(n * oh * ow * win.input[2]);
                max_pool_into(act, n, win, &mut out);
                ws.give(std::mem::replace(act, out));
            }
            // Row-major activations are already flat, and a flat example is already an NHWC
            // image: reshapes cost nothing.
            Layer::Flatten => {}
            Layer::Map(f) => act.iter_mut().for_each(|v| *v = f(*v)),
            Layer::AvgPool(win) => {
                let out = avg_pool(act, n, win);
                ws.give(std::mem::replace(act, out));
            }
            Layer::GlobalAvgPool(input) => {
                let out = global_avg_pool(act, n, *input);
                ws.give(std::mem::replace(act, out));
            }
            Layer::Pad(input, pads) => {
                let out = pad(act, n, *input, *pads);
                ws.give(std::mem::replace(act, out));
            }
            Layer::BatchNorm { scale, shift } => {
                for px in act.chunks_exact_mut(scale.len().max(1)) {
                    px.iter_mut().zip(scale).zip(shift).for_each(|((v, s), b)| *v = *v * s + b);
                }
            }
            Layer::Residual { body, shortcut, relu } => {
                let mut a = ws.copy(act);
                run_layers(body, &mut a, n, draw, None, ws);
                run_layers(shortcut, act, n, draw, None, ws);
                if *relu {
                    act.iter_mut().zip(&a).for_each(|(b, a)| *b = (a + *b).max(0.0));
                } else {
                    act.iter_mut().zip(&a).for_each(|(b, a)| *b += a);
                }
                ws.give(a);
            }
        }
        if !matches!(layer, Layer::Flatten) {
            shared = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Padding;

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = formats::synthetic::SplitMix64(seed);
        (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
    }

    /// A 3x3 SAME convolution of 5x5x3 images into 4 channels: 25 patch rows per example,
    /// at least twice the units, so Flipout puts the input signs on the weights.
    fn conv_layer() -> Linear {
        conv_layer_of(5, 3, 4)
    }

    /// A 3x3 SAME convolution of `h x h x c` images into `u` channels.
    fn conv_layer_of(h: usize, c: usize, u: usize) -> Linear {
        let k = 9 * c;
        let sigma: Vec<f32> = values(k * u, 2).iter().map(|v| 0.1 + v.abs()).collect();
        Linear {
            kernel: Kernel::new(k, u, values(k * u, 1), Some(sigma), false),
            bias_mu: values(u, 3),
            bias_sigma: Some(vec![0.2; u]),
            conv: Some(Window { input: [h, h, c], size: [3, 3], strides: [1, 1], padding: Padding::Same }),
            wino: None,
        }
    }

    /// A Flipout layer's draws in the engine's order for sample stream (`seed`, 0): bias, weight
    /// noise, `in_signs` input and `out_signs` output sign masks.
    fn engine_draws(lin: &Linear, in_signs: usize, out_signs: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<u32>, Vec<u32>) {
        let mut s = Sampler::new(seed, 0);
        let bias = s.gaussian(&lin.bias_mu, lin.bias_sigma.as_deref().unwrap_or_default());
        let noise = s.noise(lin.kernel.values().1.unwrap_or_default());
        let (mut s_in, mut s_out) = (Vec::new(), Vec::new());
        s.sign_masks_into(in_signs, &mut s_in);
        s.sign_masks_into(out_signs, &mut s_out);
        (bias, noise, s_in, s_out)
    }

    /// The value of a sign mask from [`Sampler::sign_masks_into`].
    fn sign(m: u32) -> f64 {
        if m == 0 { 1.0 } else { -1.0 }
    }

    /// Flipout of the layer computed directly from its definition, in f64: the same draws in
    /// the engine's order (bias, noise, input signs per example and channel, output signs per
    /// example and unit), `y = conv(x, mu) + conv(x * s_in, sigma * eps) * s_out + b`.
    fn naive_flipout(lin: &Linear, x: &[f32], n: usize, seed: u64) -> Vec<f64> {
        let [h, w, c] = lin.conv.expect("a conv layer").input;
        let u = lin.kernel.n;
        let mu = lin.kernel.values().0;
        let (bias, noise, s_in, s_out) = engine_draws(lin, n * c, n * u, seed);
        let mut out = Vec::new();
        for b in 0..n {
            for oy in 0..h {
                for ox in 0..w {
                    for o in 0..u {
                        let (mut mean, mut pert) = (0f64, 0f64);
                        for dy in 0..3 {
                            for dx in 0..3 {
                                // SAME padding of a 3x3 window at stride 1: one on each side.
                                let (y, xx) = ((oy + dy) as isize - 1, (ox + dx) as isize - 1);
                                if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
                                    continue;
                                }
                                for ch in 0..c {
                                    let v = f64::from(x[((b * h + y as usize) * w + xx as usize) * c + ch]);
                                    let j = ((dy * 3 + dx) * c + ch) * u + o;
                                    mean += v * f64::from(mu[j]);
                                    pert += v * sign(s_in[b * c + ch]) * f64::from(noise[j]);
                                }
                            }
                        }
                        out.push(mean + pert * sign(s_out[b * u + o]) + f64::from(bias[o]));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn flipout_with_signs_on_the_weights_equals_the_definition() {
        let lin = conv_layer();
        assert!(lin.signs_on_weights());
        let n = 3;
        let x = values(n * 75, 4);
        let expected = naive_flipout(&lin, &x, n, 7);
        forward_equals(&lin, &x, n, &expected, 1e-5);
    }

    /// `lin.forward` of the draws of seed 7 equals `expected` (the f64 definition) within
    /// `tol`, without and with the first layer's shared mean product and patches, without and
    /// with the ReLU fused into the output pass.
    fn forward_equals(lin: &Linear, x: &[f32], n: usize, expected: &[f64], tol: f64) {
        let shared = lin.shared(x, n);
        for (sh, relu) in [(None, false), (Some(&shared), false), (None, true), (Some(&shared), true)] {
            let mut sampler = Sampler::new(7, 0);
            let (got, pooled) = lin.forward(x, n, &mut Draw::Sample(&mut sampler, Estimator::Flipout), sh, relu, None, &mut Scratch::default());
            assert!(!pooled);
            assert_eq!(got.len(), expected.len());
            for (g, e) in got.iter().zip(expected) {
                let e = if relu { e.max(0.0) } else { *e };
                assert!((f64::from(*g) - e).abs() < tol, "k {}: {g} vs {e}", lin.kernel.k);
            }
        }
    }

    #[test]
    fn fused_flipout_convolution_equals_the_definition() {
        // 3x3x20 images into 40 units: 9 patch rows per example, fewer than twice the units,
        // and no Winograd: the fused dense kernel over the patch rows (`Linear::fused_conv`).
        // 330 examples = 2970 rows: two blocks of patch rows (the second starts at row 2912,
        // in the middle of example 323), so the noise is drawn once for both; k = 180 sign
        // bits per row, off the 64-bit words.
        let lin = conv_layer_of(3, 20, 40);
        assert!(lin.fused_conv(false) && lin.fused_conv(true) && lin.block_rows() < 2970);
        for n in [2, 330] {
            let x = values(n * 180, 4);
            let expected = naive_flipout(&lin, &x, n, 7);
            forward_equals(&lin, &x, n, &expected, 1e-4);
        }
    }

    #[test]
    fn spread_signs_repeat_each_examples_channel_signs_over_its_patch_rows() {
        // 2 examples of 3 channels (bits 0b101 and 0b011), 2 rows per example, patch rows of
        // 2 positions x 3 channels: rows 1..4 (example 0's second row, example 1's two).
        let bits = [0b011_101u64];
        let mut out = Vec::new();
        spread_signs(&bits, 3, 6, 1..4, 2, &mut out);
        assert_eq!(out[0], 0b011_011_011_011_101_101);
        // Output signs: one run per row, 70 units (rows straddle words), 1 row per example.
        let words: Vec<u64> = vec![u64::MAX, 0xF0F0_F0F0_F0F0_F0AA, 0b1_0000_0000_0001, 0];
        spread_signs(&words, 70, 70, 0..2, 1, &mut out);
        // Row 0: bits 0..70 = 64 ones then 0xAA's low 6 bits (0b10_1010); row 1 = bits
        // 70..140: word 1 from bit 6 (58 bits), then word 2's low 12 bits (0b1).
        assert_eq!(out[0], u64::MAX);
        assert_eq!(out[1], 0xF0F0_F0F0_F0F0_F0AA);
        assert_eq!(out[2], 0b1);
    }

    #[test]
    fn one_channel_flipout_on_each_examples_weights_equals_the_definition() {
        // 8x8x1 images into 16 units: without a shared mean product both products run as
        // one against each example's weights on the direct kernel (`Linear::flipout_c1`).
        let lin = conv_layer_of(8, 1, 16);
        assert!(lin.signs_on_weights() && lin.direct_c1(Estimator::Flipout) == conv_c1_vectorized(16));
        // Enough examples that both input signs occur (one per example).
        let n = 12;
        let x = values(n * 64, 4);
        let expected = naive_flipout(&lin, &x, n, 7);
        forward_equals(&lin, &x, n, &expected, 1e-5);
    }

    #[test]
    fn max_pool_fused_into_the_flipout_output_equals_the_definition() {
        // The outputs pooled 2x2 at stride 2: VALID (the fast paths: the one-channel conv's in
        // its kernel's registers) and SAME (padded), against the f64 definition pooled in f64.
        for (h, c, u) in [(5, 3, 4), (8, 1, 16), (7, 1, 16)] {
            let lin = conv_layer_of(h, c, u);
            let n = 12;
            let x = values(n * h * h * c, 4);
            let full = naive_flipout(&lin, &x, n, 7);
            let shared = lin.shared(&x, n);
            for padding in [Padding::Valid, Padding::Same] {
                let win = Window { input: [h, h, u], size: [2, 2], strides: [2, 2], padding };
                let ([oh, ow], [ph, pw]) = win.geometry();
                for (sh, relu) in [(None, true), (None, false), (Some(&shared), true), (Some(&shared), false)] {
                    let mut sampler = Sampler::new(7, 0);
                    let mut ws = Scratch::default();
                    let (got, pooled) = lin.forward(&x, n, &mut Draw::Sample(&mut sampler, Estimator::Flipout), sh, relu, Some(&win), &mut ws);
                    assert!(pooled);
                    assert_eq!(got.len(), n * oh * ow * u);
                    for (i, g) in got.iter().enumerate() {
                        let (b, oy, ox, o) = (i / (oh * ow * u), i / (ow * u) % oh, i / u % ow, i % u);
                        let mut e = f64::NEG_INFINITY;
                        for (y, xx) in [(0, 0), (0, 1), (1, 0), (1, 1)].map(|(dy, dx)| (2 * oy + dy, 2 * ox + dx)) {
                            if let (Some(y), Some(xx)) = (y.checked_sub(ph).filter(|&y| y < h), xx.checked_sub(pw).filter(|&v| v < h)) {
                                let v = full[((b * h + y) * h + xx) * u + o];
                                e = e.max(if relu { v.max(0.0) } else { v });
                            }
                        }
                        assert!((f64::from(*g) - e).abs() < 1e-5, "{h}x{h}x{c} {padding:?} shared {} relu {relu} {i}: {g} vs {e}", sh.is_some());
                    }
                }
            }
        }
    }

    /// Puts every stride-1 3x3 or 5x5 conv of `layers` on Winograd (the largest tiles, the
    /// least accurate), whatever [`WinogradConv::plan`] would choose; returns how many.
    fn force_winograd(layers: &mut [Layer]) -> usize {
        let mut count = 0;
        for l in layers {
            if let Layer::Linear(lin) = l {
                if let Some(win) = lin.conv.filter(|w| w.strides == [1, 1] && w.size[0] == w.size[1] && matches!(w.size[0], 3 | 5)) {
                    // The largest tiles in use: F(4, 3) and F(4, 5), 6x6 and 8x8.
                    lin.wino = Some(Box::new(WinogradConv::new(winograd::Transform::new(4, win.size[0]), win, lin.kernel.n, lin.kernel.values().0)));
                    count += 1;
                }
            }
        }
        count
    }

    #[test]
    fn winograd_on_every_conv_of_the_tf_fixture_matches_tensorflow() {
        use formats::checkpoint::Checkpoint;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
        let ckpt = Checkpoint::open(root.join("tf1_bnn_conv")).expect("fixture");
        let arch = crate::meta_graph::read_arch(&crate::meta_graph::meta_path(ckpt.path())).expect("arch");
        let (arch, posts) = arch.bind(&ckpt).expect("bind");
        let plain = Model::new(&arch, &posts, SparseKernels::Never).expect("model");
        let mut wino = plain.clone();
        // Conv 5x5 1 -> 8 and 5x5 8 -> 16 on 8x8 digits.
        assert_eq!(force_winograd(&mut wino.layers), 2);
        let x = std::fs::read(root.join("data/digits_test_x.npy")).expect("x");
        let y = std::fs::read(root.join("data/digits_test_y.npy")).expect("y");
        let x: Vec<f32> = x[x.len() - 360 * 64 * 4..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let y: Vec<i64> = y[y.len() - 360 * 8..].chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        // The mean network against TensorFlow's numbers (analysis.json), as eval_fixtures does.
        let analysis: serde_json::Value = serde_json::from_slice(&std::fs::read(root.join("tf1_bnn_conv/analysis.json")).expect("analysis")).expect("json");
        let tf = &analysis["mean_model"]["tf"];
        let ours = super::super::metrics::evaluate(&wino.predict_mean(&x).expect("mean"), 10, &y);
        assert_eq!((ours.accuracy * 360.0).round(), (tf["accuracy"].as_f64().unwrap_or(-1.0) * 360.0).round());
        let d = ours.mean_log_likelihood - tf["mean_log_likelihood"].as_f64().unwrap_or(0.0);
        assert!(d.abs() < 1e-5, "log-likelihood differs from TF by {d}");
        // Monte Carlo: the same draws as the im2col path, so the same predictive up to float error.
        for est in [Estimator::Flipout, Estimator::Reparameterization] {
            let (a, b) = (plain.predict_mc(&x, 8, 3, est).expect("mc"), wino.predict_mc(&x, 8, 3, est).expect("mc"));
            let worst = a.mean.iter().zip(&b.mean).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
            assert!(worst < 1e-5, "{est:?}: predictive means differ by {worst}");
        }
    }

    /// Flipout of a dense layer from its definition, in f64, with the engine's draws in its
    /// order (bias, noise, input signs per example and input, output signs per example and
    /// unit): `y = x @ mu + ((x * s_in) @ (sigma * eps)) * s_out + b`.
    fn naive_dense_flipout(lin: &Linear, x: &[f32], n: usize, seed: u64) -> Vec<f64> {
        let (k, u) = (lin.kernel.k, lin.kernel.n);
        let mu = lin.kernel.values().0;
        let (bias, noise, s_in, s_out) = engine_draws(lin, n * k, n * u, seed);
        let mut out = Vec::new();
        for b in 0..n {
            for o in 0..u {
                let (mut mean, mut pert) = (0f64, 0f64);
                for i in 0..k {
                    let v = f64::from(x[b * k + i]);
                    mean += v * f64::from(mu[i * u + o]);
                    pert += v * sign(s_in[b * k + i]) * f64::from(noise[i * u + o]);
                }
                out.push(mean + pert * sign(s_out[b * u + o]) + f64::from(bias[o]));
            }
        }
        out
    }

    #[test]
    fn dense_flipout_equals_the_definition() {
        // Every dense layer runs on the fused kernel: k = 600 on 5 rows in three L1 blocks,
        // 100 rows unblocked.
        for (k, u, n) in [(20, 13, 9), (200, 7, 5), (600, 7, 5), (40, 20, 100)] {
            let sigma: Vec<f32> = values(k * u, 2).iter().map(|v| 0.1 + v.abs()).collect();
            let lin = Linear { kernel: Kernel::new(k, u, values(k * u, 1), Some(sigma), false), bias_mu: values(u, 3), bias_sigma: Some(vec![0.2; u]), conv: None, wino: None };
            assert!(lin.fused_flipout());
            let x = values(n * k, 4);
            let expected = naive_dense_flipout(&lin, &x, n, 7);
            forward_equals(&lin, &x, n, &expected, 1e-4);
        }
    }

    #[test]
    fn pruned_layers_on_the_sparse_kernel_equal_the_definition() {
        use crate::engine::conv::im2col;
        // Convs with one example at a time (many output positions) and blocks of examples,
        // SAME and VALID, strides; a dense layer. 60% of the weights pruned (mu = sigma = 0).
        let wins = [
            Some(Window { input: [12, 12, 3], size: [3, 3], strides: [1, 1], padding: Padding::Same }),
            Some(Window { input: [9, 8, 2], size: [3, 3], strides: [2, 2], padding: Padding::Valid }),
            None,
        ];
        for conv in wins {
            let (n, u) = (3, 6);
            let (k, per, cin) = match conv {
                Some(w) => (w.size[0] * w.size[1] * w.input[2], w.input.iter().product::<usize>(), w.input[2]),
                None => (30, 30, 30),
            };
            let keep: Vec<bool> = values(k * u, 20).iter().map(|v| v.abs() > 0.6).collect();
            let mu: Vec<f32> = values(k * u, 21).iter().zip(&keep).map(|(&v, &kp)| if kp { v } else { 0.0 }).collect();
            let sigma: Vec<f32> = values(k * u, 22).iter().zip(&keep).map(|(&v, &kp)| if kp { 0.1 + v.abs() } else { 0.0 }).collect();
            let lin = Linear { kernel: Kernel::new(k, u, mu.clone(), Some(sigma.clone()), true), bias_mu: values(u, 23), bias_sigma: Some(vec![0.3; u]), conv, wino: None };
            assert!(lin.kernel.is_sparse());
            let x = values(n * per, 24);
            let p = match &conv {
                Some(w) => im2col(&x, n, w),
                None => x.clone(),
            };
            let rows = p.len() / k;
            let rpe = rows / n;
            let shared = lin.shared(&x, n);
            let sign = |m: u32| if m == 0 { 1.0 } else { -1.0 };
            for est in [Estimator::Flipout, Estimator::Reparameterization] {
                for (sh, relu) in [(None, false), (Some(&shared), false), (None, true), (Some(&shared), true)] {
                    let mut sampler = Sampler::new(7, 1);
                    let (got, _) = lin.forward(&x, n, &mut Draw::Sample(&mut sampler, est), sh, relu, None, &mut Scratch::default());
                    // The same draws, in the engine's order: bias, noise (the dense kernel's
                    // draws: pruned weights have sigma 0), input and output signs.
                    let mut s = Sampler::new(7, 1);
                    let bias = s.gaussian(&lin.bias_mu, lin.bias_sigma.as_deref().unwrap_or_default());
                    let noise = s.noise(&sigma);
                    let (mut s_in, mut s_out) = (Vec::new(), Vec::new());
                    if est == Estimator::Flipout {
                        s.sign_masks_into(n * cin, &mut s_in);
                        s.sign_masks_into(n * u, &mut s_out);
                    }
                    for r in 0..rows {
                        let b = r / rpe;
                        for j in 0..u {
                            let (mut mean, mut pert) = (f64::from(bias[j]), 0f64);
                            for i in 0..k {
                                let v = f64::from(p[r * k + i]);
                                mean += v * f64::from(mu[i * u + j]);
                                pert += match est {
                                    Estimator::Flipout => v * sign(s_in[b * cin + i % cin]) * f64::from(noise[i * u + j]),
                                    Estimator::Reparameterization => v * f64::from(noise[i * u + j]),
                                };
                            }
                            let want = mean + if est == Estimator::Flipout { pert * sign(s_out[b * u + j]) } else { pert };
                            let want = if relu { want.max(0.0) } else { want };
                            let g = f64::from(got[r * u + j]);
                            assert!((g - want).abs() < 1e-5, "{conv:?} {est:?} shared {} relu {relu}: [{r}, {j}] {g} vs {want}", sh.is_some());
                        }
                    }
                }
            }
            // The mean network: the sparse layer equals the dense one.
            let dense = Linear { kernel: Kernel::new(k, u, mu.clone(), None, false), ..lin.clone() };
            let (a, _) = lin.forward(&x, n, &mut Draw::Mean, None, true, None, &mut Scratch::default());
            let (b, _) = dense.forward(&x, n, &mut Draw::Mean, None, true, None, &mut Scratch::default());
            assert!(a.iter().zip(&b).all(|(a, b)| (a - b).abs() < 1e-5), "{conv:?}: mean network");
        }
    }

    #[test]
    fn pruned_dense_layers_pass_their_activations_transposed_bit_for_bit() {
        // Two pruned dense layers on 300 examples (two column blocks of the sparse path, the
        // second ending in a partial panel): the first leaves its output transposed for the
        // second, which must compute what it computes from the same values as rows.
        let n = 300;
        let layer = |k: usize, u: usize, seed: u64| {
            let keep: Vec<bool> = values(k * u, seed).iter().map(|v| v.abs() > 0.7).collect();
            let mu: Vec<f32> = values(k * u, seed + 1).iter().zip(&keep).map(|(&v, &kp)| if kp { v } else { 0.0 }).collect();
            let sigma: Vec<f32> = keep.iter().map(|&kp| if kp { 0.2 } else { 0.0 }).collect();
            Linear { kernel: Kernel::new(k, u, mu, Some(sigma), true), bias_mu: values(u, seed + 2), bias_sigma: Some(vec![0.1; u]), conv: None, wino: None }
        };
        let (first, second) = (layer(40, 37, 30), layer(37, 21, 40));
        let x = values(n * 40, 50);
        // The first layer also as a network's first, its mean product shared by the samples:
        // then it runs only the random part, beside the shared mean transposed.
        let shared = first.shared(&x, n);
        let runs = [(None, None), (Some(Estimator::Flipout), None), (Some(Estimator::Reparameterization), None), (Some(Estimator::Flipout), Some(&shared)), (Some(Estimator::Reparameterization), Some(&shared))];
        for (est, shared) in runs {
            let (mut s1, mut s2) = (Sampler::new(5, 2), Sampler::new(5, 2));
            let mut draws = [&mut s1, &mut s2].map(|s| match est {
                Some(e) => Draw::Sample(s, e),
                None => Draw::Mean,
            });
            let est = (est, shared.is_some());
            assert!(first.writes_transposed(&draws[1], est.1), "{est:?}: the first layer keeps its output transposed");
            let ws = &mut Scratch::default();
            let (h, _) = first.forward(&x, n, &mut draws[0], shared, true, None, ws);
            let (y, _) = second.forward(&h, n, &mut draws[0], None, false, None, ws);
            let (ht, _) = first.forward_t(&x, n, &mut draws[1], shared, true, None, Transposed { input: false, output: true }, ws);
            let ht_all = &ht;
            let ht = &ht[aligned::lead(&ht)..];
            assert!(ht.len() >= sparse::transposed_len(n, 37) && (ht.as_ptr() as usize).is_multiple_of(64), "{est:?}: the transposed output from a cache line");
            let want = sparse::transposed_blocks(&h, n, 37);
            for (b, r0) in (0..n).step_by(256).enumerate() {
                let size = sparse::panels_len(37, 256);
                for i in 0..37 {
                    for c in 0..(n - r0).min(256) {
                        let at = b * size + sparse::at(37, i, c);
                        assert_eq!(ht[at].to_bits(), want[at].to_bits(), "{est:?}: X^T[{i}, {}]", r0 + c);
                    }
                }
            }
            let (yt, _) = second.forward_t(ht_all, n, &mut draws[1], None, false, None, Transposed { input: true, output: false }, ws);
            assert!(y.len() == n * 21 && yt.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()), "{est:?}: outputs");
        }
    }

    #[test]
    fn sparse_monte_carlo_is_reproducible_whatever_the_thread_count() {
        // A pruned conv (one example at a time) and a pruned dense layer on the sparse kernel.
        let arch = Arch {
            input_name: "x".into(),
            input_shape: vec![9, 9, 2],
            ops: vec![Op::Conv2d { layer: "c".into(), strides: [1, 1], padding: Padding::Same }, Op::Relu, Op::Flatten, Op::Dense { layer: "d".into() }],
        };
        let post = |name: &str, shape: Vec<usize>, seed: u64| {
            let len: usize = shape.iter().product();
            let units = *shape.last().unwrap_or(&0);
            let mu: Vec<f32> = values(len, seed).iter().map(|&v| if v.abs() < 0.5 { 0.0 } else { v }).collect();
            let sigma = mu.iter().map(|&m| if m == 0.0 { 0.0 } else { 0.2 }).collect();
            Posterior { name: name.into(), kernel_shape: shape, kernel_mu: mu, kernel_sigma: Some(sigma), bias_mu: vec![0.1; units], bias_sigma: None }
        };
        let posts = vec![post("c", vec![3, 3, 2, 8], 30), post("d", vec![9 * 9 * 8, 4], 31)];
        let model = Model::from_posteriors(&arch, posts, SparseKernels::Always).expect("model");
        assert_eq!(model.sparse_layers(), (2, 2));
        let x = values(7 * 9 * 9 * 2, 32);
        let many = model.predict_mc(&x, 6, 5, Estimator::Flipout).expect("mc");
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
        let one = pool.install(|| model.predict_mc(&x, 6, 5, Estimator::Flipout).expect("mc"));
        assert_eq!(many.mean, one.mean);
        assert_eq!(many.variance, one.variance);
        assert!(many.variance.iter().any(|&v| v > 0.0), "the samples differ");
    }

    /// A 3x3 SAME conv on `input_shape` images, ReLU, 2x2 max pool, then dense layers "d"
    /// (ReLU) and "e": the conv nets of the model-level tests.
    fn conv_pool_dense(input_shape: Vec<usize>) -> Arch {
        Arch {
            input_name: "x".into(),
            input_shape,
            ops: vec![
                Op::Conv2d { layer: "c".into(), strides: [1, 1], padding: Padding::Same },
                Op::Relu,
                Op::MaxPool { size: [2, 2], strides: [2, 2], padding: Padding::Valid },
                Op::Flatten,
                Op::Dense { layer: "d".into() },
                Op::Relu,
                Op::Dense { layer: "e".into() },
            ],
        }
    }

    /// Layer `name`'s posterior of kernel shape `shape`: mu from `values(.., seed)`, pruned
    /// (mu and sigma zero) where `pruned(mu)`, sigma `sigma` elsewhere; biases 0.1 +- 0.01.
    fn posterior(name: &str, shape: Vec<usize>, seed: u64, pruned: impl Fn(f32) -> bool, sigma: f32) -> Posterior {
        let len: usize = shape.iter().product();
        let units = *shape.last().unwrap_or(&0);
        let mu: Vec<f32> = values(len, seed).iter().map(|&v| if pruned(v) { 0.0 } else { v }).collect();
        let kernel_sigma = mu.iter().map(|&m| if m == 0.0 { 0.0 } else { sigma }).collect();
        Posterior { name: name.into(), kernel_shape: shape, kernel_mu: mu, kernel_sigma: Some(kernel_sigma), bias_mu: vec![0.1; units], bias_sigma: Some(vec![0.01; units]) }
    }

    #[test]
    fn a_model_reuses_its_buffers_without_changing_its_predictions() {
        // The buffers a prediction leaves in the model hold its values and have its sizes:
        // the next predictions, on bigger and smaller batches, must still be those of a
        // fresh copy of the model (which starts with none), bit for bit. Dense layers (the
        // fused kernel, rows two by two over a ReLU's zeros) and pruned ones (sparse kernel).
        let arch = conv_pool_dense(vec![6, 6, 2]);
        for (pruned, kernels) in [(false, SparseKernels::Never), (true, SparseKernels::Always)] {
            let post = |name: &str, shape: Vec<usize>, seed: u64| posterior(name, shape, seed, |v| pruned && v.abs() < 0.6, 0.1);
            let posts = vec![post("c", vec![3, 3, 2, 8], 60), post("d", vec![3 * 3 * 8, 64], 61), post("e", vec![64, 10], 62)];
            let model = Model::new(&arch, &posts, kernels).expect("model");
            assert_eq!(model.sparse_layers(), (if pruned { 3 } else { 0 }, 3));
            for (n, samples, seed) in [(40, 5, 1), (3, 4, 2), (70, 3, 3), (1, 1, 4)] {
                let x = values(n * 6 * 6 * 2, 63 + n as u64);
                for est in [Estimator::Flipout, Estimator::Reparameterization] {
                    let (reused, fresh) = (model.predict_mc(&x, samples, seed, est).expect("mc"), model.clone().predict_mc(&x, samples, seed, est).expect("mc"));
                    assert!(reused.mean == fresh.mean && reused.variance == fresh.variance, "pruned {pruned}, {n} examples, {est:?}");
                }
                let (reused, fresh) = (model.logits_mean(&x).expect("mean"), model.clone().logits_mean(&x).expect("mean"));
                assert!(reused.iter().zip(&fresh).all(|(a, b)| a.to_bits() == b.to_bits()), "pruned {pruned}, {n} examples: mean network");
            }
            assert!(!model.scratch.0.lock().expect("pool").is_empty(), "the model kept its buffers");
        }
    }

    #[test]
    fn auto_sparse_predicts_what_the_dense_and_csr_models_predict() {
        // A pruned conv (first weight layer: shared mean product) with ReLU and max pool
        // after it, a pruned dense layer and one below the probing threshold: whatever the
        // timings pick, the predictions are those of the all-dense and all-CSR models.
        let arch = conv_pool_dense(vec![8, 8, 4]);
        let post = |name: &str, shape: Vec<usize>, seed: u64, kept: f32| posterior(name, shape, seed, |v| v.abs() > kept, 0.05);
        let posts = vec![post("c", vec![3, 3, 4, 16], 40, 0.2), post("d", vec![256, 32], 41, 0.2), post("e", vec![32, 10], 42, 0.9)];
        let auto = Model::new(&arch, &posts, SparseKernels::Auto).expect("model");
        let never = Model::new(&arch, &posts, SparseKernels::Never).expect("model");
        let always = Model::new(&arch, &posts, SparseKernels::Always).expect("model");
        assert_eq!((never.sparse_layers(), always.sparse_layers()), ((0, 3), (3, 3)));
        // The last layer has 10% pruned, below the threshold: never timed, never sparse.
        let Some(Layer::Linear(last)) = auto.layers.last() else { panic!("a weight layer last") };
        assert!(!last.kernel.is_sparse());
        let x = values(6 * 8 * 8 * 4, 43);
        for m in [&never, &always] {
            // The same draws whatever each layer's kernel: the same predictive up to float
            // summation order.
            for est in [Estimator::Flipout, Estimator::Reparameterization] {
                let (a, b) = (auto.predict_mc(&x, 8, 9, est).expect("mc"), m.predict_mc(&x, 8, 9, est).expect("mc"));
                let worst = a.mean.iter().zip(&b.mean).chain(a.variance.iter().zip(&b.variance)).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
                assert!(worst < 1e-5, "{est:?}: Monte Carlo differs by {worst}");
            }
            let (a, b) = (auto.logits_mean(&x).expect("mean"), m.logits_mean(&x).expect("mean"));
            assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-5), "mean network");
        }
    }

    #[test]
    fn the_probe_clock_counts_only_this_threads_cpu_time() {
        // Sleeping takes no CPU time; a busy loop does (`SparseKernels::Auto` times kernels by
        // it so that other processes' time slices do not count).
        let t0 = thread_seconds();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let slept = thread_seconds() - t0;
        assert!((0.0..0.1).contains(&slept), "200 ms of sleep counted {slept} s");
        let t1 = thread_seconds();
        let wall = std::time::Instant::now();
        let mut acc = 0u64;
        while wall.elapsed().as_millis() < 100 {
            acc = std::hint::black_box(acc.wrapping_add(1));
        }
        assert!(thread_seconds() - t1 > 0.0, "busy work counted nothing");
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn subnormals_are_flushed_while_the_guard_lives() {
        use std::hint::black_box;
        let tiny = black_box(1e-30f32) * black_box(1e-9f32);
        assert!(tiny > 0.0 && !tiny.is_normal());
        {
            let _ftz = FlushDenormals::new();
            // DAZ: a subnormal input reads as zero; FTZ: a subnormal result becomes zero.
            assert_eq!(black_box(tiny) * black_box(1.0f32), 0.0);
            assert_eq!(black_box(1e-30f32) * black_box(1e-9f32), 0.0);
        }
        assert!(black_box(1e-30f32) * black_box(1e-9f32) > 0.0);
    }

    #[test]
    fn nominal_flops_by_hand() {
        // Conv 3x3 SAME 5x5x3 -> 4 (25 rows x 27 x 4 = 2700 MACs per example), then a dense
        // layer 100 -> 2 (200 MACs).
        let arch = Arch {
            input_name: "x".into(),
            input_shape: vec![5, 5, 3],
            ops: vec![Op::Conv2d { layer: "c".into(), strides: [1, 1], padding: Padding::Same }, Op::Flatten, Op::Dense { layer: "d".into() }],
        };
        let post = |name: &str, shape: Vec<usize>| {
            let len = shape.iter().product();
            let units = *shape.last().unwrap_or(&0);
            Posterior {
                name: name.into(),
                kernel_shape: shape,
                kernel_mu: vec![0.5; len],
                kernel_sigma: Some(vec![0.1; len]),
                bias_mu: vec![0.0; units],
                bias_sigma: None,
            }
        };
        let model = Model::from_posteriors(&arch, vec![post("c", vec![3, 3, 3, 4]), post("d", vec![100, 2])], SparseKernels::Never).expect("model");
        assert_eq!(model.macs_per_example(), 2900);
        // Mean network: 2 * 7 * 2900; 10 samples: 2 * 7 * (2 * 10 * 2900 - 9 * 2700).
        assert_eq!(model.nominal_flops(7, 0), 40_600);
        assert_eq!(model.nominal_flops(7, 10), 2 * 7 * (58_000 - 24_300));
        assert_eq!(model.nominal_flops(7, 1), 2 * 7 * 5800);
    }
}
