//! The model zoo: BNN-FC, BNN-Conv, VGG-16 and ResNet-18, each Bayesian (Flipout) or as a
//! deterministic CNN twin with the same layer shapes, plus the loss
//! `NLL + beta * KL / N` and the accuracy count.

use tensorflow::{DataType, Output};

use crate::error::{Result, TrainError};
use crate::graph::flipout::{self, ConvGeometry, PosteriorInit};
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
    /// VGG-16: 13 3x3 convolutions in 5 pooled blocks, then 3 dense layers.
    Vgg16,
    /// ResNet-18 (basic blocks, no batch normalization), global average pool, `den_out`.
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
    /// Logits `[batch, classes]`.
    pub logits: Output,
    /// Mean negative log-likelihood of the batch.
    pub nll: Output,
    /// Summed KL of all Flipout layers (Bayesian models only).
    pub kl: Option<Output>,
    /// The training objective.
    pub loss: Output,
    /// Number of correctly classified examples in the batch (float32).
    pub correct: Output,
    /// Whether the input is fed flattened.
    pub flat_input: bool,
}

struct Net<'a> {
    g: &'a mut GraphBuilder,
    cfg: &'a ModelConfig,
    kls: Vec<Output>,
}

impl Net<'_> {
    fn dense(&mut self, name: &str, x: &Output, i: i64, o: i64, act: Option<&str>) -> Result<Output> {
        if self.cfg.bayesian {
            let (y, p) = flipout::dense(self.g, name, x, i, o, act, self.cfg.init)?;
            self.kls.push(p.kl);
            Ok(y)
        } else {
            Ok(layers::dense(self.g, name, x, i, o, act)?.0)
        }
    }

    fn conv(&mut self, name: &str, x: &Output, geo: ConvGeometry, act: Option<&str>) -> Result<Output> {
        if self.cfg.bayesian {
            let (y, p) = flipout::conv(self.g, name, x, geo, act, self.cfg.init)?;
            self.kls.push(p.kl);
            Ok(y)
        } else {
            Ok(layers::conv(self.g, name, x, geo, act)?.0)
        }
    }

    fn channels(&self, c: i64) -> i64 {
        ((c as f64 * self.cfg.width).round() as i64).max(1)
    }
}

/// Builds the model. The two placeholders are created first, so they are the first two ops
/// of the graph, as BPrune's manifests expect.
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
    let mut net = Net { g, cfg, kls: Vec::new() };
    let logits = match cfg.arch {
        Arch::Fc => {
            if cfg.hidden.iter().any(|&u| u <= 0) {
                return Err(TrainError::Invalid(format!("hidden layer sizes must be positive: {:?}", cfg.hidden)));
            }
            let mut x = input.clone();
            let mut d = features;
            for (i, &units) in cfg.hidden.iter().enumerate() {
                x = net.dense(&format!("den_{}", i + 1), &x, d, units, Some("Relu"))?;
                d = units;
            }
            net.dense(&format!("den_{}", cfg.hidden.len() + 1), &x, d, spec.classes, None)?
        }
        Arch::Conv => {
            let (f1, f2) = (net.channels(32), net.channels(64));
            let x = net.conv("Conv_1", &input, ConvGeometry { kernel: 5, in_channels: c, filters: f1, stride: 1 }, Some("Relu"))?;
            let x = max_pool(net.g, &x)?;
            let x = net.conv("Conv_2", &x, ConvGeometry { kernel: 5, in_channels: f1, filters: f2, stride: 1 }, Some("Relu"))?;
            let flat = same_out(h, 2) * same_out(w, 2) * f2;
            let x = net.g.scope("flatten", |g| g.reshape(&x, &[-1, flat as i32]))?;
            net.dense("den_out", &x, flat, spec.classes, None)?
        }
        Arch::Vgg16 => {
            let blocks: [&[i64]; 5] = [&[64, 64], &[128, 128], &[256, 256, 256], &[512, 512, 512], &[512, 512, 512]];
            let (mut x, mut cin, mut hh, mut ww) = (input.clone(), c, h, w);
            let mut k = 0;
            for block in blocks {
                for &f in block {
                    k += 1;
                    let f = net.channels(f);
                    x = net.conv(&format!("Conv_{k}"), &x, ConvGeometry { kernel: 3, in_channels: cin, filters: f, stride: 1 }, Some("Relu"))?;
                    cin = f;
                }
                x = max_pool(net.g, &x)?;
                hh = same_out(hh, 2);
                ww = same_out(ww, 2);
            }
            let flat = hh * ww * cin;
            let x = net.g.scope("flatten", |g| g.reshape(&x, &[-1, flat as i32]))?;
            let d = net.channels(512);
            let x = net.dense("den_1", &x, flat, d, Some("Relu"))?;
            let x = net.dense("den_2", &x, d, d, Some("Relu"))?;
            net.dense("den_3", &x, d, spec.classes, None)?
        }
        Arch::Resnet18 => {
            let f0 = net.channels(64);
            let mut x = net.conv("Conv_1", &input, ConvGeometry { kernel: 3, in_channels: c, filters: f0, stride: 1 }, Some("Relu"))?;
            let mut cin = f0;
            let mut block = 0;
            for (stage, &f) in [64i64, 128, 256, 512].iter().enumerate() {
                let f = net.channels(f);
                for b in 0..2 {
                    block += 1;
                    let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                    let name = format!("block_{block}");
                    let (input_x, cin_now) = (x.clone(), cin);
                    let y = net.conv(&format!("{name}/Conv_1"), &input_x, ConvGeometry { kernel: 3, in_channels: cin_now, filters: f, stride }, Some("Relu"))?;
                    let y = net.conv(&format!("{name}/Conv_2"), &y, ConvGeometry { kernel: 3, in_channels: f, filters: f, stride: 1 }, None)?;
                    let shortcut = if stride != 1 || cin_now != f {
                        net.conv(&format!("{name}/shortcut"), &input_x, ConvGeometry { kernel: 1, in_channels: cin_now, filters: f, stride }, None)?
                    } else {
                        input_x
                    };
                    let sum = net.g.binary("AddV2", &y, &shortcut)?;
                    x = net.g.unary("Relu", &sum)?;
                    cin = f;
                }
            }
            let pooled = net.g.scope("global_pool", |g| g.mean(&x, &[1, 2]))?;
            net.dense("den_out", &pooled, cin, spec.classes, None)?
        }
    };
    let kls = std::mem::take(&mut net.kls);
    let g = net.g;
    g.scope("loss", |g| {
        // The dense form: TensorFlow's C++ gradient registry (what TF_AddGradients uses)
        // has SoftmaxCrossEntropyWithLogits but not the sparse op Python uses.
        let depth = g.constant::<i32>("depth", &[], &[spec.classes as i32])?;
        let on = g.scalar("on_value", 1.0)?;
        let off = g.scalar("off_value", 0.0)?;
        let onehot = g.op("OneHot", "one_hot", &[labels.clone(), depth, on, off], &[], |_| Ok(()))?.output(0);
        let xent = g.op("SoftmaxCrossEntropyWithLogits", "xent", &[logits.clone(), onehot], &[], |_| Ok(()))?.output(0);
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
        let correct = g.scope("accuracy", |g| {
            let axis = g.constant::<i32>("dimension", &[], &[1])?;
            let pred = g.op("ArgMax", "ArgMax", &[logits.clone(), axis], &[], |d| Ok(d.set_attr_type("output_type", DataType::Int64)?))?.output(0);
            let eq = g.binary("Equal", &pred, &labels)?;
            let f = g.cast(&eq, DataType::Float)?;
            g.sum(&f, &[0])
        })?;
        Ok(Model { input, labels, logits, nll, kl, loss, correct, flat_input })
    })
}
