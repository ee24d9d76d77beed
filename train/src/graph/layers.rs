//! Deterministic layers (the CNN twins of the Bayesian models) and the parameter-free ops
//! both share: Keras-style `kernel` / `bias` variables, Glorot-uniform kernels, zero biases.

use tensorflow::{DataType, Output};

use super::flipout::{activate, conv2d, ConvGeometry};
use super::{GraphBuilder, Var, VarKind};
use crate::error::Result;

/// Variables of a deterministic layer.
pub struct DenseParams {
    /// `kernel`.
    pub kernel: Var,
    /// `bias`.
    pub bias: Var,
}

fn kernel_and_bias(g: &mut GraphBuilder, kshape: &[i64], fan_in: i64, fan_out: i64) -> Result<DenseParams> {
    // Glorot uniform, Keras' default: U(-l, l), l = sqrt(6 / (fan_in + fan_out)).
    let limit = (6.0 / (fan_in + fan_out) as f32).sqrt();
    let kernel = g.variable("kernel", kshape, DataType::Float, VarKind::Trainable, |g| g.random_uniform("random_uniform", kshape, limit))?;
    let bias = g.variable_filled("bias", &[*kshape.last().unwrap_or(&1)], 0.0, VarKind::Trainable)?;
    Ok(DenseParams { kernel, bias })
}

/// A Keras `Dense` layer named `name`.
pub fn dense(g: &mut GraphBuilder, name: &str, x: &Output, in_dim: i64, units: i64, activation: Option<&str>) -> Result<(Output, DenseParams)> {
    g.scope(name, |g| {
        let p = kernel_and_bias(g, &[in_dim, units], in_dim, units)?;
        let y = g.binary("MatMul", x, &p.kernel.read)?;
        let y = g.op1("BiasAdd", "BiasAdd", &[y, p.bias.read.clone()])?;
        Ok((activate(g, y, activation)?, p))
    })
}

/// A Keras `Conv2D` layer (SAME padding) named `name`.
pub fn conv(g: &mut GraphBuilder, name: &str, x: &Output, geo: ConvGeometry, activation: Option<&str>) -> Result<(Output, DenseParams)> {
    g.scope(name, |g| {
        let area = geo.kernel * geo.kernel;
        let p = kernel_and_bias(g, &[geo.kernel, geo.kernel, geo.in_channels, geo.filters], area * geo.in_channels, area * geo.filters)?;
        let y = conv2d(g, x, &p.kernel.read, geo.stride)?;
        let y = g.op1("BiasAdd", "BiasAdd", &[y, p.bias.read.clone()])?;
        Ok((activate(g, y, activation)?, p))
    })
}

/// 2x2 max pooling with stride 2. SAME padding, so odd sizes round up and small inputs
/// (8x8 digits through VGG's five pools) never shrink to nothing.
pub fn max_pool(g: &mut GraphBuilder, x: &Output) -> Result<Output> {
    g.scope("max_pool", |g| {
        Ok(g.op("MaxPool", "MaxPool", std::slice::from_ref(x), &[], |d| {
            d.set_attr_int_list("ksize", &[1, 2, 2, 1])?;
            d.set_attr_int_list("strides", &[1, 2, 2, 1])?;
            d.set_attr_string("padding", "SAME")?;
            Ok(d.set_attr_string("data_format", "NHWC")?)
        })?
        .output(0))
    })
}

/// Spatial size after a SAME-padded op of stride `s`.
pub fn same_out(size: i64, s: i64) -> i64 {
    (size + s - 1) / s
}
