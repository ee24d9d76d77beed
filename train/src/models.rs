//! The model zoo: BNN-FC, BNN-Conv, VGG-16 and ResNet-18, each Bayesian (Flipout) or as a
//! deterministic CNN twin with the same layer shapes (VGG-16 and ResNet-18 with batch
//! normalization after every convolution, as in the paper's tables), plus the loss
//! `NLL + beta * KL / N` and the accuracy count.

use tensorflow::{DataType, Operation, Output};

use crate::error::{Result, TrainError};
use crate::graph::batchnorm::{batch_norm, BnMode};
use crate::graph::flipout::{self, activate, ConvGeometry, PosteriorInit};
use crate::graph::layers::{self, max_pool, same_out};
use crate::graph::GraphBuilder;

/// Network architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// Fully connected: `den_1 .. den_k` (784-256-256-10 on MNIST).
    Fc,
    /// `Conv_1` 5x5 SAME, max-pool, `Conv_2` 5x5 SAME, flatten, `den_out`.
    Conv,
    /// VGG-16: 13 3x3 convolutions, each followed by batch normalization and ReLU, in 5
    /// pooled blocks, then 3 dense layers.
    Vgg16,
    /// ResNet-18: a conv-BN-ReLU stem, 8 basic blocks (conv-BN-ReLU-conv-BN plus the
    /// shortcut, a 1x1 projection conv + BN where the shape changes, then ReLU), global
    /// average pool, `den_out`.
    Resnet18,
}

/// What to build.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Architecture.
    pub arch: Arch,
    /// Flipout layers (`true`) or the deterministic twin (`false`).
    pub bayesian: bool,
    /// Hidden layer sizes of [`Arch::Fc`].
    pub hidden: Vec<i64>,
    /// Multiplier on the channel counts of the convolutional models (1.0 = as published).
    pub width: f64,
    /// Posterior initializers.
    pub init: PosteriorInit,
    /// beta / N: the weight of the summed KL in the loss (N = training examples).
    pub kl_weight: f32,
}

/// Shape of one example and number of classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    /// Height, width, channels.
    pub image: [i64; 3],
    /// Number of classes.
    pub classes: i64,
}

/// The built model's handles.
pub struct Model {
    /// Input placeholder (`Placeholder`), `[batch, features]` or `[batch, H, W, C]`.
    pub input: Output,
    /// Label placeholder (`Placeholder_1`), int64 `[batch]`.
    pub labels: Output,
    /// Inference logits `[batch, classes]`: batch normalization with the moving statistics.
    pub logits: Output,
    /// Training logits: batch normalization with the batch statistics (the `training/`
    /// tower); the same tensor as `logits` for models without batch normalization.
    pub train_logits: Output,
    /// Mean negative log-likelihood of the batch (of `train_logits`).
    pub nll: Output,
    /// Summed KL of all Flipout layers (Bayesian models only).
    pub kl: Option<Output>,
    /// The training objective.
    pub loss: Output,
    /// Number of correctly classified examples in the batch by `logits` (float32), for
    /// evaluation (`loss/accuracy/Sum`).
    pub correct: Output,
    /// The same count by `train_logits`, for the training accuracy.
    pub train_correct: Output,
    /// The ops updating the moving statistics of batch normalization (empty without).
    pub updates: Vec<Operation>,
    /// Whether the input is fed flattened.
    pub flat_input: bool,
}

/// Whether `arch` has batch normalization after its convolutions (the paper's VGG-16 and
/// ResNet-18).
pub fn has_batch_norm(arch: Arch) -> bool {
    matches!(arch, Arch::Vgg16 | Arch::Resnet18)
}

/// One tower of the network: the layers' calls, the KL terms and moving-statistics updates
/// they produced.
struct Net<'a> {
    cfg: &'a ModelConfig,
    /// `None`: no batch normalization (FC, Conv).
    bn: Option<BnMode>,
    kls: Vec<Output>,
    updates: Vec<Operation>,
}

impl Net<'_> {
    fn dense(&mut self, g: &mut GraphBuilder, name: &str, x: &Output, i: i64, o: i64, act: Option<&str>) -> Result<Output> {
        if self.cfg.bayesian {
            let (y, p) = flipout::dense(g, name, x, i, o, act, self.cfg.init)?;
            self.kls.push(p.kl);
            Ok(y)
        } else {
            Ok(layers::dense(g, name, x, i, o, act)?.0)
        }
    }

    fn conv(&mut self, g: &mut GraphBuilder, name: &str, x: &Output, geo: ConvGeometry, act: Option<&str>) -> Result<Output> {
        if self.cfg.bayesian {
            let (y, p) = flipout::conv(g, name, x, geo, act, self.cfg.init)?;
            self.kls.push(p.kl);
            Ok(y)
        } else {
            Ok(layers::conv(g, name, x, geo, act)?.0)
        }
    }

    /// Convolution `name`, then (with batch normalization) `name_bn`, then the activation:
    /// conv-BN-ReLU as in the paper's tables; Keras applications name BN layers the same way.
    fn conv_bn(&mut self, g: &mut GraphBuilder, name: &str, x: &Output, geo: ConvGeometry, act: Option<&str>) -> Result<Output> {
        let Some(mode) = self.bn else {
            return self.conv(g, name, x, geo, act);
        };
        let y = self.conv(g, name, x, geo, None)?;
        let (y, _, updates) = batch_norm(g, &format!("{name}_bn"), &y, geo.filters, mode)?;
        self.updates.extend(updates);
        activate(g, y, act)
    }

    fn channels(&self, c: i64) -> i64 {
        ((c as f64 * self.cfg.width).round() as i64).max(1)
    }

    /// The network from `input` to the logits.
    fn forward(&mut self, g: &mut GraphBuilder, input: &Output, spec: &InputSpec) -> Result<Output> {
        let [h, w, c] = spec.image;
        let features = h * w * c;
        let cfg = self.cfg;
        Ok(match cfg.arch {
            Arch::Fc => {
                if cfg.hidden.iter().any(|&u| u <= 0) {
                    return Err(TrainError::Invalid(format!("hidden layer sizes must be positive: {:?}", cfg.hidden)));
                }
                let mut x = input.clone();
                let mut d = features;
                for (i, &units) in cfg.hidden.iter().enumerate() {
                    x = self.dense(g, &format!("den_{}", i + 1), &x, d, units, Some("Relu"))?;
                    d = units;
                }
                self.dense(g, &format!("den_{}", cfg.hidden.len() + 1), &x, d, spec.classes, None)?
            }
            Arch::Conv => {
                let (f1, f2) = (self.channels(32), self.channels(64));
                let x = self.conv(g, "Conv_1", input, ConvGeometry { kernel: 5, in_channels: c, filters: f1, stride: 1 }, Some("Relu"))?;
                let x = max_pool(g, &x)?;
                let x = self.conv(g, "Conv_2", &x, ConvGeometry { kernel: 5, in_channels: f1, filters: f2, stride: 1 }, Some("Relu"))?;
                let flat = same_out(h, 2) * same_out(w, 2) * f2;
                let x = g.scope("flatten", |g| g.reshape(&x, &[-1, flat as i32]))?;
                self.dense(g, "den_out", &x, flat, spec.classes, None)?
            }
            Arch::Vgg16 => {
                let blocks: [&[i64]; 5] = [&[64, 64], &[128, 128], &[256, 256, 256], &[512, 512, 512], &[512, 512, 512]];
                let (mut x, mut cin, mut hh, mut ww) = (input.clone(), c, h, w);
                let mut k = 0;
                for block in blocks {
                    for &f in block {
                        k += 1;
                        let f = self.channels(f);
                        x = self.conv_bn(g, &format!("Conv_{k}"), &x, ConvGeometry { kernel: 3, in_channels: cin, filters: f, stride: 1 }, Some("Relu"))?;
                        cin = f;
                    }
                    x = max_pool(g, &x)?;
                    hh = same_out(hh, 2);
                    ww = same_out(ww, 2);
                }
                let flat = hh * ww * cin;
                let x = g.scope("flatten", |g| g.reshape(&x, &[-1, flat as i32]))?;
                let d = self.channels(512);
                let x = self.dense(g, "den_1", &x, flat, d, Some("Relu"))?;
                let x = self.dense(g, "den_2", &x, d, d, Some("Relu"))?;
                self.dense(g, "den_3", &x, d, spec.classes, None)?
            }
            Arch::Resnet18 => {
                let f0 = self.channels(64);
                let mut x = self.conv_bn(g, "Conv_1", input, ConvGeometry { kernel: 3, in_channels: c, filters: f0, stride: 1 }, Some("Relu"))?;
                let mut cin = f0;
                let mut block = 0;
                for (stage, &f) in [64i64, 128, 256, 512].iter().enumerate() {
                    let f = self.channels(f);
                    for b in 0..2 {
                        block += 1;
                        let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                        let name = format!("block_{block}");
                        let (input_x, cin_now) = (x.clone(), cin);
                        let y = self.conv_bn(g, &format!("{name}/Conv_1"), &input_x, ConvGeometry { kernel: 3, in_channels: cin_now, filters: f, stride }, Some("Relu"))?;
                        let y = self.conv_bn(g, &format!("{name}/Conv_2"), &y, ConvGeometry { kernel: 3, in_channels: f, filters: f, stride: 1 }, None)?;
                        // A 1x1 projection (with its batch normalization) where the shape changes.
                        let shortcut = if stride != 1 || cin_now != f {
                            self.conv_bn(g, &format!("{name}/shortcut"), &input_x, ConvGeometry { kernel: 1, in_channels: cin_now, filters: f, stride }, None)?
                        } else {
                            input_x
                        };
                        let sum = g.binary("AddV2", &y, &shortcut)?;
                        x = g.unary("Relu", &sum)?;
                        cin = f;
                    }
                }
                let pooled = g.scope("global_pool", |g| g.mean(&x, &[1, 2]))?;
                self.dense(g, "den_out", &pooled, cin, spec.classes, None)?
            }
        })
    }
}

/// The number of examples of `logits` whose arg max is `labels` (float32).
fn count_correct(g: &mut GraphBuilder, logits: &Output, labels: &Output) -> Result<Output> {
    let axis = g.constant::<i32>("dimension", &[], &[1])?;
    let pred = g.op("ArgMax", "ArgMax", &[logits.clone(), axis], &[], |d| Ok(d.set_attr_type("output_type", DataType::Int64)?))?.output(0);
    let eq = g.binary("Equal", &pred, labels)?;
    let f = g.cast(&eq, DataType::Float)?;
    g.sum(&f, &[0])
}

/// Builds the model. The two placeholders are created first, so they are the first two ops
/// of the graph, as BPrune's manifests expect.
///
/// Models with batch normalization get two towers sharing every variable: the inference
/// tower, under the layers' own names (`Conv_1`, `Conv_1_bn`, ..., `den_3`), normalizes with
/// the moving statistics and gives [`Model::logits`]; the `training/` tower normalizes with
/// the batch statistics, updates the moving ones and feeds the loss. A training step runs
/// only the training tower; evaluation only the inference tower.
pub fn build(g: &mut GraphBuilder, cfg: &ModelConfig, spec: &InputSpec) -> Result<Model> {
    let [h, w, c] = spec.image;
    if h <= 0 || w <= 0 || c <= 0 || spec.classes < 2 {
        return Err(TrainError::Invalid(format!("bad input shape {:?} / {} classes", spec.image, spec.classes)));
    }
    let flat_input = cfg.arch == Arch::Fc;
    let features = h * w * c;
    let input = if flat_input {
        g.placeholder("Placeholder", DataType::Float, &[None, Some(features)])?
    } else {
        g.placeholder("Placeholder", DataType::Float, &[None, Some(h), Some(w), Some(c)])?
    };
    let labels = g.placeholder("Placeholder", DataType::Int64, &[None])?;
    let bn = has_batch_norm(cfg.arch);
    let mut net = Net { cfg, bn: bn.then_some(BnMode::Inference), kls: Vec::new(), updates: Vec::new() };
    let logits = net.forward(g, &input, spec)?;
    let train_logits = if bn {
        // The inference tower's KL terms equal the training tower's; the loss takes these.
        let mut train = Net { cfg, bn: Some(BnMode::Training), kls: Vec::new(), updates: Vec::new() };
        let l = g.reusing("training", |g| train.forward(g, &input, spec))?;
        net = train;
        l
    } else {
        logits.clone()
    };
    let kls = std::mem::take(&mut net.kls);
    let updates = std::mem::take(&mut net.updates);
    g.scope("loss", |g| {
        // The dense form: TensorFlow's C++ gradient registry (what TF_AddGradients uses)
        // has SoftmaxCrossEntropyWithLogits but not the sparse op Python uses.
        let depth = g.constant::<i32>("depth", &[], &[spec.classes as i32])?;
        let on = g.scalar("on_value", 1.0)?;
        let off = g.scalar("off_value", 0.0)?;
        let onehot = g.op("OneHot", "one_hot", &[labels.clone(), depth, on, off], &[], |_| Ok(()))?.output(0);
        let xent = g.op("SoftmaxCrossEntropyWithLogits", "xent", &[train_logits.clone(), onehot], &[], |_| Ok(()))?.output(0);
        let nll = g.mean(&xent, &[0])?;
        let (kl, loss) = if kls.is_empty() {
            (None, g.unary("Identity", &nll)?)
        } else {
            let kl = if kls.len() == 1 {
                kls[0].clone()
            } else {
                g.op("AddN", "kl", &[], &[], |d| {
                    d.add_input_list(&kls);
                    Ok(())
                })?
                .output(0)
            };
            let wt = g.scalar("kl_weight", cfg.kl_weight)?;
            let scaled = g.binary("Mul", &kl, &wt)?;
            (Some(kl), g.binary("AddV2", &nll, &scaled)?)
        };
        let correct = g.scope("accuracy", |g| count_correct(g, &logits, &labels))?;
        let train_correct = if bn { g.scope("train_accuracy", |g| count_correct(g, &train_logits, &labels))? } else { correct.clone() };
        Ok(Model { input, labels, logits, train_logits, nll, kl, loss, correct, train_correct, updates, flat_input })
    })
}
