//! Batch normalization as Keras' `BatchNormalization` layer builds it (fused, NHWC): trainable
//! `gamma` (ones) and `beta` (zeros), and the moving statistics `moving_mean` (zeros) and
//! `moving_variance` (ones), updated in training by `moving -= (moving - batch) * (1 - momentum)`
//! and used at inference.
//!
//! Two forms of the same layer, sharing the variables:
//! * inference: `FusedBatchNormV3(x, gamma, beta, moving_mean, moving_variance,
//!   is_training=false)`, what a graph reader follows from the input to the logits;
//! * training: `FusedBatchNormV3(x, gamma, beta, [], [], is_training=true)` normalizes with
//!   the batch's own statistics (the gradient flows through them, TensorFlow's
//!   `FusedBatchNormGradV3`), and two `AssignSub` ops fold the batch mean and the unbiased
//!   batch variance into the moving statistics, as Keras does.
//!
//! The variables are deterministic: no posterior, no KL term.

use tensorflow::{DataType, Operation, Output};

use super::{GraphBuilder, Var, VarKind};
use crate::error::Result;

/// Keras' default momentum of the moving statistics.
pub const MOMENTUM: f32 = 0.99;
/// Keras' default epsilon added to the variance.
pub const EPSILON: f32 = 1e-3;

/// Which statistics the layer normalizes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BnMode {
    /// The moving statistics (inference).
    Inference,
    /// The batch's statistics, with the moving statistics updated (training).
    Training,
}

/// The variables of one batch normalization layer.
pub struct BatchNormParams {
    /// `gamma` (scale), trainable.
    pub gamma: Var,
    /// `beta` (offset), trainable.
    pub beta: Var,
    /// `moving_mean`, updated in training.
    pub moving_mean: Var,
    /// `moving_variance`, updated in training.
    pub moving_variance: Var,
}

/// A batch normalization layer named `name` over the last (channel) dimension of the NHWC
/// tensor `x` with `channels` channels. Returns the normalized tensor, the variables and, in
/// [`BnMode::Training`], the two ops that update the moving statistics.
pub fn batch_norm(g: &mut GraphBuilder, name: &str, x: &Output, channels: i64, mode: BnMode) -> Result<(Output, BatchNormParams, Vec<Operation>)> {
    g.scope(name, |g| {
        let dims = [channels];
        let p = BatchNormParams {
            gamma: g.variable_filled("gamma", &dims, 1.0, VarKind::Trainable)?,
            beta: g.variable_filled("beta", &dims, 0.0, VarKind::Trainable)?,
            moving_mean: g.variable_filled("moving_mean", &dims, 0.0, VarKind::Moving)?,
            moving_variance: g.variable_filled("moving_variance", &dims, 1.0, VarKind::Moving)?,
        };
        let training = mode == BnMode::Training;
        let (mean, var) = if training {
            // Python's fused_batch_norm passes empty statistics in training mode.
            (g.constant::<f32>("Const", &[0], &[])?, g.constant::<f32>("Const", &[0], &[])?)
        } else {
            (p.moving_mean.read.clone(), p.moving_variance.read.clone())
        };
        let bn = g.op("FusedBatchNormV3", "FusedBatchNormV3", &[x.clone(), p.gamma.read.clone(), p.beta.read.clone(), mean, var], &[], |d| {
            d.set_attr_type("T", DataType::Float)?;
            d.set_attr_type("U", DataType::Float)?;
            d.set_attr_float("epsilon", EPSILON)?;
            d.set_attr_string("data_format", "NHWC")?;
            Ok(d.set_attr_bool("is_training", training)?)
        })?;
        let mut updates = Vec::new();
        if training {
            let decay = g.scalar("decay", 1.0 - MOMENTUM)?;
            // Outputs 1 and 2: the batch mean and the batch variance with Bessel's correction.
            for (i, v) in [(1, &p.moving_mean), (2, &p.moving_variance)] {
                let diff = g.binary("Sub", &v.read, &bn.output(i))?;
                let delta = g.binary("Mul", &diff, &decay)?;
                updates.push(g.op("AssignSub", "AssignMovingAvg", &[v.output(), delta], &[], |d| Ok(d.set_attr_bool("use_locking", false)?))?);
            }
        }
        Ok((bn.output(0), p, updates))
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{eval, session, tensor};
    use super::*;
    use tensorflow::SessionRunArgs;

    /// x: 2 examples of 2x1 pixels, 2 channels; channel 0 = [1, 3, 5, 7], channel 1 = [2, 2, 4, 0].
    const X: [f32; 8] = [1.0, 2.0, 3.0, 2.0, 5.0, 4.0, 7.0, 0.0];

    fn graph(mode: BnMode) -> (GraphBuilder, Output, Output, BatchNormParams, Vec<Operation>) {
        let mut g = GraphBuilder::new(1);
        let x = g.placeholder("Placeholder", DataType::Float, &[None, Some(2), Some(1), Some(2)]).unwrap();
        let (y, p, u) = batch_norm(&mut g, "Conv_1_bn", &x, 2, mode).unwrap();
        (g, x, y, p, u)
    }

    fn run(s: &tensorflow::Session, x: &Output, y: &Output, targets: &[Operation]) -> Vec<f32> {
        let xt = tensor(&[2, 2, 1, 2], &X);
        let mut r = SessionRunArgs::new();
        r.add_feed(&x.operation, x.index, &xt);
        for t in targets {
            r.add_target(t);
        }
        let tok = r.request_fetch(&y.operation, y.index);
        s.run(&mut r).unwrap();
        r.fetch::<f32>(tok).unwrap().to_vec()
    }

    #[test]
    fn training_normalizes_with_batch_statistics_and_updates_the_moving_ones() {
        let (g, x, y, p, updates) = graph(BnMode::Training);
        assert_eq!(p.moving_mean.name, "Conv_1_bn/moving_mean");
        assert_eq!(p.gamma.kind, VarKind::Trainable);
        assert_eq!(p.moving_variance.kind, VarKind::Moving);
        let vars = g.variables().to_vec();
        let s = session(g.graph(), &vars);
        let out = run(&s, &x, &y, &updates);
        // Channel 0: mean 4, biased variance 5; channel 1: mean 2, biased variance 2.
        let want: Vec<f32> = X.iter().enumerate().map(|(i, &v)| if i % 2 == 0 { (v - 4.0) / (5.0f32 + EPSILON).sqrt() } else { (v - 2.0) / (2.0f32 + EPSILON).sqrt() }).collect();
        for (a, b) in out.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{out:?} vs {want:?}");
        }
        // moving = moving - (moving - batch) * 0.01, batch variance unbiased (n = 4): 20/3 and 8/3.
        let st = eval(&s, &[&p.moving_mean.read, &p.moving_variance.read]);
        let want_mean = [0.04f32, 0.02];
        let want_var = [1.0 - 0.01 * (1.0 - 20.0 / 3.0f32), 1.0 - 0.01 * (1.0 - 8.0 / 3.0f32)];
        for i in 0..2 {
            assert!((st[0][i] - want_mean[i]).abs() < 1e-6, "{st:?}");
            assert!((st[1][i] - want_var[i]).abs() < 1e-6, "{st:?}");
        }
    }

    #[test]
    fn inference_uses_the_moving_statistics_and_changes_nothing() {
        let (g, x, y, p, updates) = graph(BnMode::Inference);
        assert!(updates.is_empty());
        let vars = g.variables().to_vec();
        let s = session(g.graph(), &vars);
        let set = |v: &Var, vals: &[f32]| {
            let t = tensor(&[2], vals);
            let mut r = SessionRunArgs::new();
            r.add_feed(&v.init_value.operation, v.init_value.index, &t);
            r.add_target(&v.initializer);
            s.run(&mut r).unwrap();
        };
        set(&p.moving_mean, &[1.0, -1.0]);
        set(&p.moving_variance, &[4.0, 0.25]);
        set(&p.gamma, &[2.0, 0.5]);
        set(&p.beta, &[0.1, -0.2]);
        let out = run(&s, &x, &y, &[]);
        for (i, (&v, &o)) in X.iter().zip(&out).enumerate() {
            let (m, var, ga, be) = if i % 2 == 0 { (1.0, 4.0, 2.0, 0.1) } else { (-1.0, 0.25, 0.5, -0.2) };
            let want = ga * (v - m) / (var + EPSILON).sqrt() + be;
            assert!((o - want).abs() < 1e-5, "{i}: {o} vs {want}");
        }
        assert_eq!(eval(&s, &[&p.moving_mean.read])[0], vec![1.0, -1.0]);
    }

    #[test]
    fn gradients_reach_gamma_beta_and_the_input_through_the_batch_statistics() {
        // L = sum(y * w): dL/dbeta = sum over positions of w, dL/dgamma = sum(w * x_hat);
        // with the batch statistics, dL/dx of a constant w is zero (mean subtraction).
        let (mut g, x, y, p, _) = graph(BnMode::Training);
        let w = g.constant::<f32>("w", &[2, 2, 1, 2], &[1.0; 8]).unwrap();
        let prod = g.binary("Mul", &y, &w).unwrap();
        let loss = g.sum(&prod, &[0, 1, 2, 3]).unwrap();
        let grads = g.graph_mut().add_gradients(None, &[loss], &[p.beta.read.clone(), p.gamma.read.clone(), x.clone()], None).unwrap();
        let grads: Vec<Output> = grads.into_iter().map(Option::unwrap).collect();
        let vars = g.variables().to_vec();
        let s = session(g.graph(), &vars);
        let xt = tensor(&[2, 2, 1, 2], &X);
        let mut r = SessionRunArgs::new();
        r.add_feed(&x.operation, x.index, &xt);
        let toks: Vec<_> = grads.iter().map(|o| r.request_fetch(&o.operation, o.index)).collect();
        s.run(&mut r).unwrap();
        let v: Vec<Vec<f32>> = toks.into_iter().map(|t| r.fetch::<f32>(t).unwrap().to_vec()).collect();
        assert_eq!(v[0], vec![4.0, 4.0]);
        // sum of x_hat over the batch is 0 per channel.
        assert!(v[1].iter().all(|g| g.abs() < 1e-5), "{:?}", v[1]);
        assert!(v[2].iter().all(|g| g.abs() < 1e-5), "{:?}", v[2]);
    }
}
