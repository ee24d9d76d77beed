//! RMSProp and Adam as TensorFlow's own fused kernels (`ApplyRMSProp`, `ApplyAdam`), with
//! TF1's slot variables (`<var>/RMSProp`, `<var>/RMSProp_1`; `<var>/Adam`, `<var>/Adam_1`,
//! `beta1_power`, `beta2_power`) and `global_step`, so checkpoints look like those of
//! `tf.compat.v1.train.*Optimizer(...).minimize(loss, global_step)`.

use tensorflow::{DataType, Operation, Output};

use crate::error::Result;
use crate::graph::{GraphBuilder, Var, VarKind};

/// Which optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam (beta1 0.9, beta2 0.999, epsilon 1e-8: TF1's defaults).
    Adam,
    /// RMSProp (decay 0.9, momentum 0, epsilon 1e-10; mean square starts at 1: TF1's defaults).
    Rmsprop,
}

/// The ops that apply one step.
pub struct TrainOp {
    /// Run this to apply the gradients and advance `global_step`.
    pub op: Operation,
    /// The int64 step counter.
    pub global_step: Var,
}

/// Builds the update of every `(variable, gradient)` pair with learning rate `lr`.
pub fn build(g: &mut GraphBuilder, kind: OptimizerKind, lr: f32, grads: &[(Var, Output)]) -> Result<TrainOp> {
    let global_step = g.variable("global_step", &[], DataType::Int64, VarKind::Step, |g| g.constant::<i64>("zeros", &[], &[0]))?;
    let lr_t = g.scalar("learning_rate", lr)?;
    let mut updates: Vec<Operation> = Vec::new();
    match kind {
        OptimizerKind::Rmsprop => {
            let mut slots = Vec::new();
            for (v, _) in grads {
                let ms = g.variable_filled(&format!("{}/RMSProp", v.name), &v.shape, 1.0, VarKind::Optimizer)?;
                let mom = g.variable_filled(&format!("{}/RMSProp_1", v.name), &v.shape, 0.0, VarKind::Optimizer)?;
                slots.push((ms, mom));
            }
            g.scope("RMSProp", |g| {
                let rho = g.scalar("decay", 0.9)?;
                let momentum = g.scalar("momentum", 0.0)?;
                let eps = g.scalar("epsilon", 1e-10)?;
                for ((v, grad), (ms, mom)) in grads.iter().zip(&slots) {
                    let inputs = [v.output(), ms.output(), mom.output(), lr_t.clone(), rho.clone(), momentum.clone(), eps.clone(), grad.clone()];
                    let base = format!("update_{}/ApplyRMSProp", v.name);
                    updates.push(g.op("ApplyRMSProp", &base, &inputs, &[], |d| Ok(d.set_attr_bool("use_locking", false)?))?);
                }
                Ok(())
            })?;
        }
        OptimizerKind::Adam => {
            let b1p = g.variable_filled("beta1_power", &[], 0.9, VarKind::Optimizer)?;
            let b2p = g.variable_filled("beta2_power", &[], 0.999, VarKind::Optimizer)?;
            let mut slots = Vec::new();
            for (v, _) in grads {
                let m = g.variable_filled(&format!("{}/Adam", v.name), &v.shape, 0.0, VarKind::Optimizer)?;
                let s = g.variable_filled(&format!("{}/Adam_1", v.name), &v.shape, 0.0, VarKind::Optimizer)?;
                slots.push((m, s));
            }
            g.scope("Adam", |g| {
                let b1 = g.scalar("beta1", 0.9)?;
                let b2 = g.scalar("beta2", 0.999)?;
                let eps = g.scalar("epsilon", 1e-8)?;
                let mut applies = Vec::new();
                for ((v, grad), (m, s)) in grads.iter().zip(&slots) {
                    let inputs = [
                        v.output(),
                        m.output(),
                        s.output(),
                        b1p.read.clone(),
                        b2p.read.clone(),
                        lr_t.clone(),
                        b1.clone(),
                        b2.clone(),
                        eps.clone(),
                        grad.clone(),
                    ];
                    let base = format!("update_{}/ApplyAdam", v.name);
                    applies.push(g.op("ApplyAdam", &base, &inputs, &[], |d| Ok(d.set_attr_bool("use_locking", false)?))?);
                }
                // The bias-correction powers advance only after every variable used them.
                let n1 = g.binary("Mul", &b1p.read, &b1)?;
                let n2 = g.binary("Mul", &b2p.read, &b2)?;
                let a1 = g.op("Assign", "Assign", &[b1p.output(), n1], &applies, |d| Ok(d.set_attr_bool("use_locking", false)?))?;
                let a2 = g.op("Assign", "Assign", &[b2p.output(), n2], &applies, |d| Ok(d.set_attr_bool("use_locking", false)?))?;
                updates.extend(applies);
                updates.push(a1);
                updates.push(a2);
                Ok(())
            })?;
        }
    }
    let one = g.constant::<i64>("global_step/increment", &[], &[1])?;
    let inc = g.op("AssignAdd", "global_step/AssignAdd", &[global_step.output(), one], &updates, |d| Ok(d.set_attr_bool("use_locking", false)?))?;
    let op = g.op("NoOp", "train", &[], &[inc], |_| Ok(()))?;
    Ok(TrainOp { op, global_step })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::testing::{eval, session};
    use tensorflow::SessionRunArgs;

    fn two_steps(kind: OptimizerKind) -> (f32, i64, Vec<Vec<f32>>) {
        let mut g = GraphBuilder::new(1);
        let v = g.variable_filled("w", &[1], 1.0, VarKind::Trainable).unwrap();
        let grad = g.constant::<f32>("grad", &[1], &[0.5]).unwrap();
        let t = build(&mut g, kind, 0.1, &[(v.clone(), grad)]).unwrap();
        let vars = g.variables().to_vec();
        let s = session(g.graph(), &vars);
        for _ in 0..2 {
            let mut run = SessionRunArgs::new();
            run.add_target(&t.op);
            s.run(&mut run).unwrap();
        }
        let mut run = SessionRunArgs::new();
        let tok = run.request_fetch(&t.global_step.read.operation, 0);
        s.run(&mut run).unwrap();
        let step = run.fetch::<i64>(tok).unwrap()[0];
        let others: Vec<&Output> = vars.iter().filter(|x| x.kind == VarKind::Optimizer).map(|x| &x.read).collect();
        (eval(&s, &[&v.read])[0][0], step, eval(&s, &others))
    }

    #[test]
    fn adam_moves_by_the_learning_rate_under_a_constant_gradient() {
        // Bias-corrected Adam with a constant gradient steps by exactly lr each time.
        let (w, step, state) = two_steps(OptimizerKind::Adam);
        assert!((w - 0.8).abs() < 1e-5, "{w}");
        assert_eq!(step, 2);
        // beta1_power, beta2_power after two updates; m = 0.9*0.05 + 0.05; v = 0.999*0.00025 + 0.00025.
        assert!((state[0][0] - 0.729).abs() < 1e-6 && (state[1][0] - 0.997_003).abs() < 1e-6, "{state:?}");
        assert!((state[2][0] - 0.095).abs() < 1e-6 && (state[3][0] - 0.000_499_75).abs() < 1e-8, "{state:?}");
    }

    #[test]
    fn rmsprop_matches_tf1_arithmetic() {
        // ms starts at 1 (TF1): ms1 = 0.925, w1 = 1 - 0.1*0.5/sqrt(0.925);
        // ms2 = 0.9*0.925 + 0.025 = 0.8575, w2 = w1 - 0.1*0.5/sqrt(0.8575).
        let (w, step, state) = two_steps(OptimizerKind::Rmsprop);
        let w1 = 1.0 - 0.05 / 0.925f64.sqrt();
        let w2 = w1 - 0.05 / 0.8575f64.sqrt();
        assert!((f64::from(w) - w2).abs() < 1e-6, "{w} vs {w2}");
        assert_eq!(step, 2);
        assert!((f64::from(state[0][0]) - 0.8575).abs() < 1e-6);
    }
}
