//! Folding inference-time batch normalization into the weight layer before it
//! (`export-onnx --fold-bn`; see `docs/onnx.md`).
//!
//! A [`Op::BatchNorm`] right after a [`Op::Dense`] or [`Op::Conv2d`] (in the same op list, so
//! also inside a residual branch) is the per-output-channel affine map `y * scale + shift`
//! with scale = gamma / sqrt(moving_variance + epsilon) and shift = beta - moving_mean * scale.
//! It is merged into the layer's posterior:
//!
//! * kernel mean `mu' = mu * scale` (per output channel, the kernel's last axis);
//! * kernel sigma `sigma' = sigma * |scale|`: the sampled kernel `(mu + sigma * eps) * scale`
//!   is `mu * scale + sigma * scale * eps`, and since eps is a standard normal, `scale * eps`
//!   has the law of `|scale| * eps'` with eps' standard normal: the folded layer's weight
//!   distribution is the original one's, exactly (each sample's sign of eps differs where
//!   scale < 0, which no statistic over samples can see);
//! * bias `b' = (b - moving_mean) * scale + beta` (a layer without a bias has b = 0 and gains
//!   one), its sigma scaled by `|scale|` as the kernel's.
//!
//! Any other batch normalization (at the input, after an activation, after a residual `Add`)
//! is kept.

use crate::arch::{Arch, Op, Posterior};

/// Returns `arch` and `posts` (from [`Arch::bind`]) with every batch normalization that
/// directly follows a dense or conv layer folded into that layer, and how many were folded.
/// Batch normalizations without statistics (an unbound architecture) are kept.
pub fn fold_batch_norm(arch: &Arch, posts: &[Posterior]) -> (Arch, Vec<Posterior>, usize) {
    let mut posts = posts.to_vec();
    let mut next = 0;
    let mut folded = 0;
    let ops = fold_ops(&arch.ops, &mut posts, &mut next, &mut folded);
    (Arch { ops, ..arch.clone() }, posts, folded)
}

/// Folds within one op list; `next` is the index of the next weight op's posterior (the order
/// of [`Arch::weight_ops_mut`]: depth first, body before shortcut).
fn fold_ops(ops: &[Op], posts: &mut [Posterior], next: &mut usize, folded: &mut usize) -> Vec<Op> {
    let mut out: Vec<Op> = Vec::with_capacity(ops.len());
    // The posterior of the weight op just pushed to `out`, if the last op pushed is one.
    let mut last_weight: Option<usize> = None;
    for op in ops {
        match op {
            Op::Dense { .. } | Op::Conv2d { .. } => {
                last_weight = Some(*next);
                *next += 1;
                out.push(op.clone());
            }
            Op::BatchNorm { epsilon, params: Some(bn), .. } => {
                let post = last_weight.and_then(|i| posts.get_mut(i)).filter(|p| p.units() == bn.mean.len());
                match post {
                    Some(p) => {
                        let (scale, shift) = bn.scale_shift(*epsilon);
                        fold_into(p, &scale, &shift);
                        *folded += 1;
                    }
                    None => out.push(op.clone()),
                }
                last_weight = None;
            }
            Op::Residual { body, shortcut, relu } => {
                let body = fold_ops(body, posts, next, folded);
                let shortcut = fold_ops(shortcut, posts, next, folded);
                out.push(Op::Residual { body, shortcut, relu: *relu });
                last_weight = None;
            }
            _ => {
                out.push(op.clone());
                last_weight = None;
            }
        }
    }
    out
}

/// `layer` followed by `y * scale + shift` as one layer (see the module docs).
fn fold_into(p: &mut Posterior, scale: &[f32], shift: &[f32]) {
    let units = scale.len();
    // The output channel is the kernel's last axis, in C order: index % units.
    for (i, m) in p.kernel_mu.iter_mut().enumerate() {
        *m *= scale[i % units];
    }
    if let Some(sigma) = p.kernel_sigma.as_mut() {
        for (i, s) in sigma.iter_mut().enumerate() {
            *s *= scale[i % units].abs();
        }
    }
    // bias' = bias * scale + (beta - mean * scale) = (bias - mean) * scale + beta.
    for ((b, s), t) in p.bias_mu.iter_mut().zip(scale).zip(shift) {
        *b = *b * s + t;
    }
    if let Some(sigma) = p.bias_sigma.as_mut() {
        for (s, k) in sigma.iter_mut().zip(scale) {
            *s *= k.abs();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{BatchNormParams, Padding};
    use crate::engine::{Model, SparseKernels};

    fn bn(layer: &str, gamma: Vec<f32>, beta: Vec<f32>, mean: Vec<f32>, variance: Vec<f32>) -> Op {
        Op::BatchNorm { layer: layer.into(), epsilon: 0.25, params: Some(BatchNormParams { gamma, beta, mean, variance }) }
    }

    fn post(name: &str, shape: Vec<usize>, seed: u32) -> Posterior {
        let len: usize = shape.iter().product();
        let units = *shape.last().unwrap_or(&1);
        let v = |k: u32, n: usize| -> Vec<f32> { (0..n).map(|i| (((i as u32 * 7919 + seed * 31 + k) % 97) as f32 / 97.0) - 0.5).collect() };
        Posterior {
            name: name.into(),
            kernel_mu: v(1, len),
            kernel_sigma: Some(v(2, len).iter().map(|x| x.abs() + 0.01).collect()),
            bias_mu: v(3, units),
            bias_sigma: Some(v(4, units).iter().map(|x| x.abs() + 0.01).collect()),
            kernel_shape: shape,
        }
    }

    #[test]
    fn dense_fold_is_hand_computed() {
        // One input, two units; epsilon 0.25, variance [3.75, 0.75] -> sqrt(4) = 2, sqrt(1) = 1.
        let arch = Arch { input_name: "x".into(), input_shape: vec![1], ops: vec![Op::Dense { layer: "d".into() }, bn("b", vec![4.0, -3.0], vec![0.5, 1.0], vec![1.0, -2.0], vec![3.75, 0.75])] };
        let p = Posterior {
            name: "d".into(),
            kernel_shape: vec![1, 2],
            kernel_mu: vec![1.0, 2.0],
            kernel_sigma: Some(vec![0.5, 0.25]),
            bias_mu: vec![3.0, 4.0],
            bias_sigma: None,
        };
        let (a, f, n) = fold_batch_norm(&arch, &[p]);
        assert_eq!(n, 1);
        assert_eq!(a.ops, vec![Op::Dense { layer: "d".into() }]);
        // scale = [4/2, -3/1] = [2, -3]
        assert_eq!(f[0].kernel_mu, vec![2.0, -6.0]);
        assert_eq!(f[0].kernel_sigma, Some(vec![1.0, 0.75]), "sigma scales by |scale|");
        // (3 - 1) * 2 + 0.5 = 4.5; (4 + 2) * -3 + 1 = -17
        assert_eq!(f[0].bias_mu, vec![4.5, -17.0]);
        assert_eq!(f[0].bias_sigma, None);
    }

    #[test]
    fn folding_keeps_the_mean_network_and_only_folds_bn_after_a_weight_layer() {
        let conv = |l: &str, s: usize| Op::Conv2d { layer: l.into(), strides: [s, s], padding: Padding::Same };
        let ch = |k: f32| -> Vec<f32> { vec![0.5 + k, -1.5 + k, 2.0 - k] };
        let arch = Arch {
            input_name: "x".into(),
            input_shape: vec![4, 4, 3],
            ops: vec![
                // At the input: kept.
                bn("in", ch(0.0), ch(0.1), ch(0.2), vec![1.0, 2.0, 0.5]),
                conv("c1", 1),
                bn("b1", ch(0.3), ch(0.4), ch(-0.2), vec![0.7, 1.3, 2.2]),
                Op::Relu,
                // After an activation: kept.
                bn("act", ch(0.6), ch(0.1), ch(0.0), vec![1.1, 0.9, 1.7]),
                Op::Residual { body: vec![conv("c2", 2), bn("b2", ch(0.2), ch(-0.4), ch(0.3), vec![0.3, 1.0, 4.0])], shortcut: vec![conv("c3", 2)], relu: true },
                // After the residual Add: kept.
                bn("add", ch(-0.1), ch(0.2), ch(0.1), vec![0.6, 0.8, 1.0]),
                Op::Flatten,
                Op::Dense { layer: "d".into() },
                bn("b3", vec![1.5, -0.5], vec![0.1, 0.2], vec![0.3, -0.3], vec![0.9, 1.9]),
            ],
        };
        let posts = vec![post("c1", vec![3, 3, 3, 3], 1), post("c2", vec![3, 3, 3, 3], 2), post("c3", vec![1, 1, 3, 3], 3), post("d", vec![12, 2], 4)];
        let (folded, fposts, n) = fold_batch_norm(&arch, &posts);
        assert_eq!(n, 3);
        let kept: Vec<String> = {
            fn names(ops: &[Op], out: &mut Vec<String>) {
                for op in ops {
                    match op {
                        Op::BatchNorm { layer, .. } => out.push(layer.clone()),
                        Op::Residual { body, shortcut, .. } => {
                            names(body, out);
                            names(shortcut, out);
                        }
                        _ => {}
                    }
                }
            }
            let mut v = vec![];
            names(&folded.ops, &mut v);
            v
        };
        assert_eq!(kept, vec!["in", "act", "add"]);
        let x: Vec<f32> = (0..5 * 48).map(|i| ((i * 37) % 23) as f32 / 23.0 - 0.5).collect();
        let before = Model::new(&arch, &posts, SparseKernels::Never).expect("model").logits_mean(&x).expect("logits");
        let after = Model::new(&folded, &fposts, SparseKernels::Never).expect("model").logits_mean(&x).expect("logits");
        let worst = before.iter().zip(&after).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-5, "folded vs unfolded logits differ by {worst}");
        // The shortcut conv c3 has no BN after it: untouched.
        assert_eq!(fposts[2], posts[2]);
    }
}
