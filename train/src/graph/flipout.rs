//! Flipout layers as TensorFlow Probability builds them (`tfp.layers.DenseFlipout`,
//! `Convolution2DFlipout`): a mean-field normal posterior over the kernel with trainable
//! `kernel_posterior_loc` (mu) and `kernel_posterior_untransformed_scale` (rho,
//! sigma = softplus(rho)), a point-estimate bias `bias_posterior_loc`, the Flipout
//! estimator (Wen et al. 2018) and the analytic KL divergence to the N(0, 1) prior.
//!
//! Forward pass (TFP's `_apply_variational_kernel`):
//! `y = x·mu + ((x ∘ s_in)·(sigma ∘ eps)) ∘ s_out + b`, with eps ~ N(0, 1) drawn once per
//! step and s_in, s_out random signs drawn per example (per channel for convolutions).

use tensorflow::{DataType, Output};

use super::{GraphBuilder, Var, VarKind};
use crate::error::Result;

/// Initializers of the posterior parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PosteriorInit {
    /// Standard deviation of the normal initializer of `kernel_posterior_loc` and
    /// `bias_posterior_loc` (TFP: 0.1, mean 0).
    pub loc_stddev: f32,
    /// Mean of the normal initializer of `kernel_posterior_untransformed_scale` (TFP: -3;
    /// the paper's distributed runs use -9, i.e. sigma ≈ 1.2e-4).
    pub rho_mean: f32,
    /// Its standard deviation (TFP: 0.1).
    pub rho_stddev: f32,
}

impl Default for PosteriorInit {
    fn default() -> Self {
        PosteriorInit { loc_stddev: 0.1, rho_mean: -3.0, rho_stddev: 0.1 }
    }
}

/// The variables and KL term of one Flipout layer.
pub struct FlipoutParams {
    /// `kernel_posterior_loc`.
    pub loc: Var,
    /// `kernel_posterior_untransformed_scale`.
    pub rho: Var,
    /// `bias_posterior_loc`.
    pub bias: Var,
    /// KL(q(W) || N(0, 1)) summed over the kernel, a scalar.
    pub kl: Output,
}

/// Creates the three posterior variables of a layer in the current scope.
fn posterior(g: &mut GraphBuilder, kernel: &[i64], units: i64, init: PosteriorInit) -> Result<(Var, Var, Var)> {
    let loc = g.variable("kernel_posterior_loc", kernel, DataType::Float, VarKind::Trainable, |g| {
        g.random_normal("random_normal", kernel, 0.0, init.loc_stddev)
    })?;
    let rho = g.variable("kernel_posterior_untransformed_scale", kernel, DataType::Float, VarKind::Trainable, |g| {
        g.random_normal("random_normal", kernel, init.rho_mean, init.rho_stddev)
    })?;
    let bias = g.variable("bias_posterior_loc", &[units], DataType::Float, VarKind::Trainable, |g| {
        g.random_normal("random_normal", &[units], 0.0, init.loc_stddev)
    })?;
    Ok((loc, rho, bias))
}

/// Analytic KL(N(mu, sigma) || N(0, 1)) summed over all elements:
/// `sum(-ln sigma + (sigma² + mu²)/2 - 1/2)`, as TFP's `kl_divergence(Normal, Normal)`.
pub fn kl_standard_normal(g: &mut GraphBuilder, mu: &Output, sigma: &Output, rank: usize) -> Result<Output> {
    g.scope("kl", |g| {
        let log_sigma = g.unary("Log", sigma)?;
        let s2 = g.unary("Square", sigma)?;
        let m2 = g.unary("Square", mu)?;
        let sq = g.binary("AddV2", &s2, &m2)?;
        let half = g.scalar("half", 0.5)?;
        let half_sq = g.binary("Mul", &sq, &half)?;
        let t = g.binary("Sub", &half_sq, &log_sigma)?;
        let per = g.binary("Sub", &t, &half)?;
        let axes: Vec<i32> = (0..rank as i32).collect();
        g.sum(&per, &axes)
    })
}

/// The batch dimension of `x` as an int32 vector `[batch]`.
fn batch_dim(g: &mut GraphBuilder, x: &Output) -> Result<Output> {
    let shape = g.op("Shape", "Shape", std::slice::from_ref(x), &[], |d| Ok(d.set_attr_type("out_type", DataType::Int32)?))?.output(0);
    let begin = g.ints("begin", &[0])?;
    let size = g.ints("size", &[1])?;
    g.op1("Slice", "batch", &[shape, begin, size])
}

/// `[batch] ++ rest` as an int32 shape vector.
fn batch_shape(g: &mut GraphBuilder, batch: &Output, rest: &[i32]) -> Result<Output> {
    let r = g.ints("dims", rest)?;
    let axis = g.constant::<i32>("axis", &[], &[0])?;
    Ok(g.op("ConcatV2", "shape", &[], &[], |d| {
        d.add_input_list(&[batch.clone(), r]);
        d.add_input(axis);
        Ok(())
    })?
    .output(0))
}

/// `activation(x)` for `Some("Relu")` etc.; `x` for `None`.
pub fn activate(g: &mut GraphBuilder, x: Output, activation: Option<&str>) -> Result<Output> {
    match activation {
        Some(op) => g.unary(op, &x),
        None => Ok(x),
    }
}

/// What distinguishes one Flipout layer kind from another: the kernel shape, the extra
/// dimensions of the per-example sign vectors, and the product of inputs and kernel.
struct LayerKind<'a> {
    kernel_shape: &'a [i64],
    /// Sign shape after the batch dimension, for the inputs and for the outputs.
    sign_in: &'a [i32],
    sign_out: &'a [i32],
    product: &'a dyn Fn(&mut GraphBuilder, &Output, &Output) -> Result<Output>,
}

/// The Flipout layer body shared by dense and conv layers, as TFP builds it:
/// `activation(x * loc + ((x * s_in) * (sigma * eps)) * s_out + bias)`, with the KL to N(0, 1).
fn flipout_layer(
    g: &mut GraphBuilder,
    name: &str,
    x: &Output,
    kind: LayerKind<'_>,
    activation: Option<&str>,
    init: PosteriorInit,
) -> Result<(Output, FlipoutParams)> {
    let units = kind.kernel_shape.last().copied().unwrap_or(1);
    g.scope(name, |g| {
        let (loc, rho, bias) = posterior(g, kind.kernel_shape, units, init)?;
        let sigma = g.unary("Softplus", &rho.read)?;
        let kl = kl_standard_normal(g, &loc.read, &sigma, kind.kernel_shape.len())?;
        let mean = (kind.product)(g, x, &loc.read)?;
        let pert = g.scope("flipout", |g| {
            let eps = g.noise(kind.kernel_shape)?;
            let w = g.binary("Mul", &sigma, &eps)?;
            let batch = batch_dim(g, x)?;
            let in_shape = batch_shape(g, &batch, kind.sign_in)?;
            let out_shape = batch_shape(g, &batch, kind.sign_out)?;
            let s_in = g.random_rademacher(&in_shape)?;
            let s_out = g.random_rademacher(&out_shape)?;
            let xs = g.binary("Mul", x, &s_in)?;
            let xw = (kind.product)(g, &xs, &w)?;
            g.binary("Mul", &xw, &s_out)
        })?;
        let y = g.binary("AddV2", &mean, &pert)?;
        let y = g.op1("BiasAdd", "BiasAdd", &[y, bias.read.clone()])?;
        let y = activate(g, y, activation)?;
        Ok((y, FlipoutParams { loc, rho, bias, kl }))
    })
}

/// A `DenseFlipout` layer named `name` mapping `[batch, in_dim]` to `[batch, units]`.
pub fn dense(
    g: &mut GraphBuilder,
    name: &str,
    x: &Output,
    in_dim: i64,
    units: i64,
    activation: Option<&str>,
    init: PosteriorInit,
) -> Result<(Output, FlipoutParams)> {
    let matmul = |g: &mut GraphBuilder, a: &Output, b: &Output| g.binary("MatMul", a, b);
    let kind = LayerKind { kernel_shape: &[in_dim, units], sign_in: &[in_dim as i32], sign_out: &[units as i32], product: &matmul };
    flipout_layer(g, name, x, kind, activation, init)
}

/// Geometry of a 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Kernel height and width.
    pub kernel: i64,
    /// Input channels.
    pub in_channels: i64,
    /// Output channels (filters).
    pub filters: i64,
    /// Stride in both spatial dimensions.
    pub stride: i64,
}

/// `Conv2D` with SAME padding, NHWC.
pub fn conv2d(g: &mut GraphBuilder, x: &Output, kernel: &Output, stride: i64) -> Result<Output> {
    Ok(g.op("Conv2D", "Conv2D", &[x.clone(), kernel.clone()], &[], |d| {
        d.set_attr_int_list("strides", &[1, stride, stride, 1])?;
        d.set_attr_string("padding", "SAME")?;
        Ok(d.set_attr_string("data_format", "NHWC")?)
    })?
    .output(0))
}

/// A `Convolution2DFlipout` layer (SAME padding, NHWC) named `name`.
pub fn conv(
    g: &mut GraphBuilder,
    name: &str,
    x: &Output,
    geo: ConvGeometry,
    activation: Option<&str>,
    init: PosteriorInit,
) -> Result<(Output, FlipoutParams)> {
    let convolve = |g: &mut GraphBuilder, a: &Output, k: &Output| conv2d(g, a, k, geo.stride);
    let kind = LayerKind {
        kernel_shape: &[geo.kernel, geo.kernel, geo.in_channels, geo.filters],
        // One sign per example and channel, shared over the spatial positions (TFP).
        sign_in: &[1, 1, geo.in_channels as i32],
        sign_out: &[1, 1, geo.filters as i32],
        product: &convolve,
    };
    flipout_layer(g, name, x, kind, activation, init)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{eval, session, tensor};
    use super::*;
    use tensorflow::{SessionRunArgs, Tensor};

    #[test]
    fn kl_matches_tensorflow_probability() {
        // sum(tfd.kl_divergence(tfd.Normal(mu, softplus(rho)), tfd.Normal(0, 1))) in float64,
        // TFP 0.25, mu = [0.5, -1, 0, 2], rho = [-3, 0.2, -9, 1.5].
        let want = 14.11056394020974f64;
        let mut g = GraphBuilder::new(1);
        let mu = g.constant::<f32>("mu", &[2, 2], &[0.5, -1.0, 0.0, 2.0]).unwrap();
        let rho = g.constant::<f32>("rho", &[2, 2], &[-3.0, 0.2, -9.0, 1.5]).unwrap();
        let sigma = g.unary("Softplus", &rho).unwrap();
        let kl = kl_standard_normal(&mut g, &mu, &sigma, 2).unwrap();
        let s = session(g.graph(), &[]);
        let got = f64::from(eval(&s, &[&kl])[0][0]);
        assert!((got - want).abs() < 1e-4, "{got}");
    }

    fn dense_graph(rho: f32) -> (GraphBuilder, Output, Output, FlipoutParams) {
        let mut g = GraphBuilder::new(5);
        let x = g.placeholder("Placeholder", DataType::Float, &[None, Some(3)]).unwrap();
        let init = PosteriorInit { loc_stddev: 0.1, rho_mean: rho, rho_stddev: 0.0 };
        let (y, p) = dense(&mut g, "den_1", &x, 3, 2, None, init).unwrap();
        (g, x, y, p)
    }

    fn run_with_x(s: &tensorflow::Session, x: &Output, y: &Output, xv: &Tensor<f32>) -> Vec<f32> {
        let mut run = SessionRunArgs::new();
        run.add_feed(&x.operation, x.index, xv);
        let t = run.request_fetch(&y.operation, y.index);
        s.run(&mut run).unwrap();
        run.fetch::<f32>(t).unwrap().to_vec()
    }

    #[test]
    fn dense_flipout_with_tiny_sigma_is_the_mean_network() {
        let (g, x, y, p) = dense_graph(-40.0);
        assert_eq!(p.loc.name, "den_1/kernel_posterior_loc");
        assert_eq!(p.rho.name, "den_1/kernel_posterior_untransformed_scale");
        assert_eq!(p.bias.name, "den_1/bias_posterior_loc");
        let vars = g.variables().to_vec();
        let s = session(g.graph(), &vars);
        let w = eval(&s, &[&p.loc.read, &p.bias.read]);
        let xv = [1.0f32, -2.0, 0.5, 0.0, 3.0, 1.0];
        let got = run_with_x(&s, &x, &y, &tensor(&[2, 3], &xv));
        for r in 0..2 {
            for c in 0..2 {
                let want: f32 = (0..3).map(|k| xv[r * 3 + k] * w[0][k * 2 + c]).sum::<f32>() + w[1][c];
                assert!((got[r * 2 + c] - want).abs() < 1e-5, "row {r} col {c}: {} vs {want}", got[r * 2 + c]);
            }
        }
    }

    #[test]
    fn flipout_noise_has_the_posterior_variance() {
        // With mu = 0, b = 0 and sigma = softplus(rho) everywhere, each output is
        // sum_i x_i s_i eps_ij s_j: mean 0, variance sigma² * sum_i x_i².
        let (g, x, y, p) = dense_graph(0.5);
        let vars = g.variables().to_vec();
        let s = session(g.graph(), &vars);
        let zeros6 = tensor(&[3, 2], &[0.0; 6]);
        let zeros2 = tensor(&[2], &[0.0; 2]);
        let mut run = SessionRunArgs::new();
        run.add_feed(&p.loc.init_value.operation, p.loc.init_value.index, &zeros6);
        run.add_target(&p.loc.initializer);
        run.add_feed(&p.bias.init_value.operation, p.bias.init_value.index, &zeros2);
        run.add_target(&p.bias.initializer);
        s.run(&mut run).unwrap();
        let xv = [1.0f32, -2.0, 0.5];
        let rows = 64;
        let batch: Vec<f32> = xv.iter().copied().cycle().take(3 * rows).collect();
        let xt = tensor(&[rows as u64, 3], &batch);
        let (mut sum, mut sum2, mut n) = (0.0f64, 0.0f64, 0usize);
        // eps is shared by the rows of a run, so runs are the independent samples: 2000
        // of them put the variance estimate within about 2% (1 sigma).
        for _ in 0..2000 {
            for v in run_with_x(&s, &x, &y, &xt) {
                sum += f64::from(v);
                sum2 += f64::from(v) * f64::from(v);
                n += 1;
            }
        }
        let sigma = softplus_f64(0.5);
        let want_var = sigma * sigma * xv.iter().map(|v| f64::from(v * v)).sum::<f64>();
        let var = sum2 / n as f64;
        assert!((sum / n as f64).abs() < 0.1 * want_var.sqrt(), "mean {}", sum / n as f64);
        assert!((var / want_var - 1.0).abs() < 0.1, "variance {var} vs {want_var}");
    }

    fn softplus_f64(x: f64) -> f64 {
        super::super::softplus(x)
    }

    #[test]
    fn conv_flipout_builds_tfp_names_and_shapes() {
        let mut g = GraphBuilder::new(1);
        let x = g.placeholder("Placeholder", DataType::Float, &[None, Some(8), Some(8), Some(1)]).unwrap();
        let geo = ConvGeometry { kernel: 5, in_channels: 1, filters: 4, stride: 1 };
        let (y, p) = conv(&mut g, "Conv_1", &x, geo, Some("Relu"), PosteriorInit::default()).unwrap();
        assert_eq!(p.loc.shape, vec![5, 5, 1, 4]);
        assert_eq!(p.rho.name, "Conv_1/kernel_posterior_untransformed_scale");
        let vars = g.variables().to_vec();
        let s = session(g.graph(), &vars);
        let out = run_with_x(&s, &x, &y, &tensor(&[2, 8, 8, 1], &[0.5; 128]));
        assert_eq!(out.len(), 2 * 8 * 8 * 4);
        assert!(out.iter().all(|v| *v >= 0.0));
        // rho ~ N(-3, 0.1): sigma ≈ softplus(-3) ≈ 0.0486.
        let rho = &eval(&s, &[&p.rho.read])[0];
        let mean = rho.iter().sum::<f32>() / rho.len() as f32;
        assert!((mean + 3.0).abs() < 0.05, "{mean}");
    }
}
