//! The training loop: builds the graph (model, gradients via `TF_AddGradients`, optimizer,
//! saver), initializes or restores the variables, makes every rank start from rank 0's
//! values, and runs the data-parallel steps.
//!
//! One rank: one `Session::run` per step (forward, backward and update in the graph).
//! N ranks: a first run fetches the gradients, they are averaged over the ranks through the
//! fusion buffers, and a second run feeds the averages in place of the gradient tensors
//! (TensorFlow prunes everything upstream of a fed tensor), so the update ops are the same.

use std::path::PathBuf;
use std::time::Instant;

use tensorflow::{DataType, Operation, Output, Session, SessionOptions, SessionRunArgs, Tensor};

use crate::allreduce::{Communicator, FusionPlan};
use crate::checkpoint::{self, Saver};
use crate::data::{self, Dataset};
use crate::error::{Result, TrainError};
use crate::graph::flipout::PosteriorInit;
use crate::graph::{GraphBuilder, Var, VarKind};
use crate::metrics::{self, AllreduceStats, EpochStats, Progress, RunReport};
use crate::models::{self, Arch, InputSpec, Model, ModelConfig};
use crate::optimizer::{self, OptimizerKind};

/// Everything a run needs besides the data.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Architecture.
    pub arch: Arch,
    /// Flipout or deterministic.
    pub bayesian: bool,
    /// Hidden sizes of the FC model.
    pub hidden: Vec<i64>,
    /// Channel multiplier of the convolutional models.
    pub width: f64,
    /// Posterior initializers.
    pub init: PosteriorInit,
    /// beta in `NLL + beta * KL / N`.
    pub beta: f32,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// Learning rate for one rank.
    pub lr: f32,
    /// Multiply the learning rate by the number of ranks.
    pub lr_scaling: bool,
    /// Examples per rank per step.
    pub batch: usize,
    /// Total epochs (a resumed run continues up to this many).
    pub epochs: usize,
    /// Stop after this many steps of this run, if set.
    pub max_steps: Option<usize>,
    /// Graph seed (weights, noise) and shuffling seed.
    pub seed: u64,
    /// Fusion buffer size in bytes.
    pub fusion_bytes: usize,
    /// Checkpoint folder; `None` writes nothing.
    pub out_dir: Option<PathBuf>,
    /// Continue from the latest checkpoint in `out_dir`.
    pub resume: bool,
    /// Threads of each of TensorFlow's pools per rank (0: see `thread_pools`).
    pub threads: usize,
    /// Skip test-set evaluation (benchmarks).
    pub no_eval: bool,
    /// No per-epoch lines or progress bar.
    pub quiet: bool,
    /// One-rank throughput, to report the scaling efficiency of this run.
    pub t1_images_per_sec: Option<f64>,
    /// Label for the dataset in the report.
    pub dataset: data::DatasetKind,
}

/// Sizes of TensorFlow's (intra-op, inter-op) thread pools; 0 leaves TensorFlow's default.
///
/// By default a BNN runs the two products of every Flipout layer (mean and perturbation,
/// independent of each other) side by side, each on half the cores: on this project's 2-core
/// machine that trained BNN-FC 10-25% and BNN-Conv 10% faster than TensorFlow's default of
/// splitting each op over all cores. The CNN twin, a single chain of products, is fastest
/// with TensorFlow's default (it lost 20% with the BNN's setting), so it keeps it.
/// VGG-16 and ResNet-18 (`large`) are different: their convolutions keep every core busy on
/// their own, and halving the intra-op pool cost the BNN 35-45% on VGG-16 (width 0.5, 2
/// cores), so their BNN keeps all cores per op and still runs the two products side by side.
fn thread_pools(threads: usize, bayesian: bool, large: bool, cores: usize) -> (usize, usize) {
    match threads {
        0 if bayesian && large => (cores.max(1), 2),
        0 if bayesian => ((cores / 2).max(1), 2),
        0 => (0, 0),
        t => (t, t),
    }
}

/// `ConfigProto` bytes setting the thread pools (fields 2 and 5); small enough to encode
/// by hand.
fn session_config((intra, inter): (usize, usize)) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, n) in [(0x10u8, intra), (0x28, inter)] {
        if n > 0 {
            out.push(tag);
            out.push(n.min(127) as u8);
        }
    }
    out
}

/// The built graph and the handles the loop uses.
struct Built {
    model: Model,
    /// Applies the (possibly allreduced) gradients and advances `global_step`.
    train_op: Operation,
    /// A whole single-rank step: `train_op` and the moving-statistics updates; the `.meta`'s
    /// `train_op` collection (as TF1's `control_dependencies(UPDATE_OPS)` around `minimize`).
    step_op: Operation,
    /// The moving-statistics updates grouped (batch normalization only): run with the
    /// forward pass, since `train_op`'s second run under MPI feeds gradients, not inputs.
    updates: Option<Operation>,
    global_step: Var,
    trainable: Vec<Var>,
    grads: Vec<Output>,
    all_vars: Vec<Var>,
    saver: Saver,
    init: Operation,
    op_names: Vec<String>,
    graph: tensorflow::Graph,
}

fn build(cfg: &TrainConfig, data: &Dataset, rank: usize, lr: f32) -> Result<Built> {
    // Per-rank graph seed: rank 0's initial values win (broadcast), and each rank draws
    // its own Flipout noise, as independent Horovod workers do.
    let mut g = GraphBuilder::new(cfg.seed as i64 + 1000 * rank as i64);
    let mcfg = ModelConfig {
        arch: cfg.arch,
        bayesian: cfg.bayesian,
        hidden: cfg.hidden.clone(),
        width: cfg.width,
        init: cfg.init,
        kl_weight: cfg.beta / data.train.len() as f32,
    };
    let model = models::build(&mut g, &mcfg, &InputSpec { image: data.image, classes: data.classes })?;
    let trainable: Vec<Var> = g.variables().iter().filter(|v| v.kind == VarKind::Trainable).cloned().collect();
    let reads: Vec<Output> = trainable.iter().map(|v| v.read.clone()).collect();
    let grads = g.graph_mut().add_gradients(Some("gradients"), std::slice::from_ref(&model.loss), &reads, None)?;
    let grads: Vec<Output> = grads
        .into_iter()
        .zip(&trainable)
        .map(|(gr, v)| gr.ok_or_else(|| TrainError::Invalid(format!("no gradient reaches {}", v.name))))
        .collect::<Result<_>>()?;
    let pairs: Vec<(Var, Output)> = trainable.iter().cloned().zip(grads.iter().cloned()).collect();
    let t = optimizer::build(&mut g, cfg.optimizer, lr, &pairs)?;
    let (step_op, updates) = if model.updates.is_empty() {
        (t.op.clone(), None)
    } else {
        let u = g.op("NoOp", "update_moving_statistics", &[], &model.updates, |_| Ok(()))?;
        (g.op("NoOp", "train_step", &[], &[t.op.clone(), u.clone()], |_| Ok(()))?, Some(u))
    };
    // BPrune lists the ops after the train op, before the saver exists.
    let op_names: Vec<String> = g.graph().operation_iter().map(|o| o.name()).collect::<std::result::Result<_, _>>().map_err(|e| TrainError::Invalid(format!("op name: {e}")))?;
    let all_vars: Vec<Var> = g.variables().to_vec();
    let saver = checkpoint::build_saver(&mut g, &all_vars)?;
    let inits: Vec<Operation> = all_vars.iter().map(|v| v.initializer.clone()).collect();
    let init = g.op("NoOp", "init", &[], &inits, |_| Ok(()))?;
    let (graph, _) = g.finish();
    Ok(Built { model, train_op: t.op, step_op, updates, global_step: t.global_step, trainable, grads, all_vars, saver, init, op_names, graph })
}

fn tensor_f32(dims: &[i64], values: &[f32]) -> Result<Tensor<f32>> {
    let d: Vec<u64> = dims.iter().map(|&x| x as u64).collect();
    Ok(Tensor::<f32>::new(&d).with_values(values)?)
}

fn fetch_f32(session: &Session, outs: &[Output]) -> Result<Vec<Tensor<f32>>> {
    let mut run = SessionRunArgs::new();
    let toks: Vec<_> = outs.iter().map(|o| run.request_fetch(&o.operation, o.index)).collect();
    session.run(&mut run)?;
    toks.into_iter().map(|t| Ok(run.fetch::<f32>(t)?)).collect()
}

fn read_step(session: &Session, step: &Var) -> Result<i64> {
    let mut run = SessionRunArgs::new();
    let tok = run.request_fetch(&step.read.operation, step.read.index);
    session.run(&mut run)?;
    Ok(run.fetch::<i64>(tok)?[0])
}

/// Makes every rank hold rank 0's variables (model, optimizer state and step).
fn broadcast_variables(session: &Session, b: &Built, comm: &dyn Communicator) -> Result<()> {
    let floats: Vec<&Var> = b.all_vars.iter().filter(|v| v.dtype == DataType::Float).collect();
    let sizes: Vec<usize> = floats.iter().map(|v| v.num_elements()).collect();
    let mut flat = vec![0f32; sizes.iter().sum()];
    let mut step = [0i64];
    if comm.rank() == 0 {
        let reads: Vec<Output> = floats.iter().map(|v| v.read.clone()).collect();
        let vals = fetch_f32(session, &reads)?;
        let mut off = 0;
        for (t, &n) in vals.iter().zip(&sizes) {
            flat[off..off + n].copy_from_slice(t);
            off += n;
        }
        step[0] = read_step(session, &b.global_step)?;
    }
    comm.broadcast_f32(&mut flat)?;
    comm.broadcast_i64(&mut step)?;
    if comm.rank() != 0 {
        let mut tensors = Vec::with_capacity(floats.len());
        let mut off = 0;
        for (v, &n) in floats.iter().zip(&sizes) {
            tensors.push(tensor_f32(&v.shape, &flat[off..off + n])?);
            off += n;
        }
        let st = Tensor::<i64>::from(step[0]);
        let mut run = SessionRunArgs::new();
        // Feeding an initializer's value input makes it assign the fed value instead.
        for (v, t) in floats.iter().zip(&tensors) {
            run.add_feed(&v.init_value.operation, v.init_value.index, t);
            run.add_target(&v.initializer);
        }
        run.add_feed(&b.global_step.init_value.operation, b.global_step.init_value.index, &st);
        run.add_target(&b.global_step.initializer);
        session.run(&mut run)?;
    }
    Ok(())
}

/// Test accuracy with one forward pass per example (batches of 500).
fn evaluate(session: &Session, m: &Model, data: &Dataset) -> Result<f64> {
    let f = data.features();
    let dims = |n: usize| -> Vec<u64> {
        if m.flat_input {
            vec![n as u64, f as u64]
        } else {
            let [h, w, c] = data.image;
            vec![n as u64, h as u64, w as u64, c as u64]
        }
    };
    let (mut correct, n) = (0.0f64, data.test.len());
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for start in (0..n).step_by(500) {
        let idx: Vec<usize> = (start..(start + 500).min(n)).collect();
        data::gather(&data.test, f, &idx, &mut x, &mut y);
        let xt = Tensor::<f32>::new(&dims(idx.len())).with_values(&x)?;
        let yt = Tensor::<i64>::new(&[idx.len() as u64]).with_values(&y)?;
        let mut run = SessionRunArgs::new();
        run.add_feed(&m.input.operation, m.input.index, &xt);
        run.add_feed(&m.labels.operation, m.labels.index, &yt);
        let tok = run.request_fetch(&m.correct.operation, m.correct.index);
        session.run(&mut run)?;
        correct += f64::from(run.fetch::<f32>(tok)?[0]);
    }
    Ok(if n == 0 { 0.0 } else { correct / n as f64 })
}

fn digest(session: &Session, trainable: &[Var]) -> Result<u64> {
    let reads: Vec<Output> = trainable.iter().map(|v| v.read.clone()).collect();
    let vals = fetch_f32(session, &reads)?;
    let bytes: Vec<Vec<u8>> = vals.iter().map(|t| t.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    Ok(metrics::fnv1a64(bytes.iter().map(Vec::as_slice)))
}

fn save(session: &Session, b: &Built, dir: &std::path::Path, step: i64) -> Result<String> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let name = checkpoint::prefix_name(step);
    b.saver.save(session, &dir.join(&name))?;
    let name_of = |o: &Operation| o.name().map_err(|e| TrainError::Invalid(e.to_string()));
    let update_ops: Vec<String> = b.model.updates.iter().map(name_of).collect::<Result<_>>()?;
    let meta = checkpoint::meta_graph_bytes(&b.graph.graph_def()?, &b.saver.saver_def()?, &b.all_vars, &name_of(&b.step_op)?, &update_ops)?;
    let mp = dir.join(format!("{name}.meta"));
    std::fs::write(&mp, meta).map_err(|e| TrainError::io(&mp, e))?;
    checkpoint::write_manifests(dir, &b.all_vars, &b.op_names)?;
    checkpoint::record(dir, &name)?;
    Ok(dir.join(&name).display().to_string())
}

/// Trains on `data`; every rank calls this; only rank 0 logs and writes files.
pub fn train(cfg: &TrainConfig, data: &Dataset, comm: &dyn Communicator) -> Result<RunReport> {
    let (rank, ranks) = (comm.rank(), comm.size());
    let root = rank == 0;
    let lr = if cfg.lr_scaling { cfg.lr * ranks as f32 } else { cfg.lr };
    let steps_per_epoch = data.train.len() / (cfg.batch * ranks).max(1);
    if cfg.batch == 0 || steps_per_epoch == 0 {
        return Err(TrainError::Invalid(format!(
            "batch size {} x {ranks} ranks does not fit the {} training examples",
            cfg.batch,
            data.train.len()
        )));
    }
    let b = build(cfg, data, rank, lr)?;
    let mut opts = SessionOptions::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let conf = session_config(thread_pools(cfg.threads, cfg.bayesian, models::has_batch_norm(cfg.arch), cores));
    if !conf.is_empty() {
        opts.set_config(&conf)?;
    }
    let session = Session::new(&opts, &b.graph)?;
    let mut run = SessionRunArgs::new();
    run.add_target(&b.init);
    session.run(&mut run)?;
    if cfg.resume && root {
        let dir = cfg.out_dir.as_ref().ok_or_else(|| TrainError::Invalid("--resume needs --out".into()))?;
        match checkpoint::latest(dir)? {
            Some(prefix) => b.saver.restore(&session, &prefix)?,
            None => return Err(TrainError::Invalid(format!("{}: no checkpoint to resume from", dir.display()))),
        }
    }
    if ranks > 1 {
        broadcast_variables(&session, &b, comm)?;
    }
    let first_step = read_step(&session, &b.global_step)?;

    let sizes: Vec<usize> = b.trainable.iter().map(Var::num_elements).collect();
    let plan = FusionPlan::new(&sizes, 2, cfg.fusion_bytes);
    let mut bufs = plan.buffers();
    let mut grad_tensors: Vec<Tensor<f32>> = b.trainable.iter().map(|v| tensor_f32(&v.shape, &vec![0.0; v.num_elements()])).collect::<Result<_>>()?;
    let mut total_calls = 0u64;

    let f = data.features();
    let dims: Vec<u64> = if b.model.flat_input {
        vec![cfg.batch as u64, f as u64]
    } else {
        let [h, w, c] = data.image;
        vec![cfg.batch as u64, h as u64, w as u64, c as u64]
    };
    let total_steps = steps_per_epoch * cfg.epochs;
    let mut step = usize::try_from(first_step).unwrap_or(0);
    let last = cfg.max_steps.map_or(total_steps, |m| (step + m).min(total_steps));
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let mut epochs = Vec::new();
    let mut step_loss = Vec::new();
    let (mut timed_secs, mut timed_images) = (0.0f64, 0usize);
    let mut checkpoint_written = None;
    let progress = Progress::new(steps_per_epoch, cfg.quiet || !root);
    while step < last {
        let epoch = step / steps_per_epoch;
        let order = data::epoch_order(data.train.len(), cfg.seed, epoch as u64);
        let epoch_end = ((epoch + 1) * steps_per_epoch).min(last);
        let (mut loss_sum, mut correct_sum, mut n_steps) = (0.0f64, 0.0f64, 0usize);
        let mut secs = 0.0f64;
        while step < epoch_end {
            // Timed from the batch assembly on, as Keras' per-batch time includes its input.
            let t0 = Instant::now();
            let idx = data::shard(&order, step % steps_per_epoch, cfg.batch, rank, ranks);
            data::gather(&data.train, f, idx, &mut x, &mut y);
            let xt = Tensor::<f32>::new(&dims).with_values(&x)?;
            let yt = Tensor::<i64>::new(&[cfg.batch as u64]).with_values(&y)?;
            let (loss, correct) = if ranks == 1 {
                let mut run = SessionRunArgs::new();
                run.add_feed(&b.model.input.operation, b.model.input.index, &xt);
                run.add_feed(&b.model.labels.operation, b.model.labels.index, &yt);
                run.add_target(&b.step_op);
                let lt = run.request_fetch(&b.model.loss.operation, b.model.loss.index);
                let ct = run.request_fetch(&b.model.train_correct.operation, b.model.train_correct.index);
                session.run(&mut run)?;
                (run.fetch::<f32>(lt)?[0], run.fetch::<f32>(ct)?[0])
            } else {
                let mut run = SessionRunArgs::new();
                run.add_feed(&b.model.input.operation, b.model.input.index, &xt);
                run.add_feed(&b.model.labels.operation, b.model.labels.index, &yt);
                if let Some(u) = &b.updates {
                    run.add_target(u);
                }
                let gt: Vec<_> = b.grads.iter().map(|o| run.request_fetch(&o.operation, o.index)).collect();
                let lt = run.request_fetch(&b.model.loss.operation, b.model.loss.index);
                let ct = run.request_fetch(&b.model.train_correct.operation, b.model.train_correct.index);
                session.run(&mut run)?;
                let gv: Vec<Tensor<f32>> = gt.into_iter().map(|t| run.fetch::<f32>(t)).collect::<std::result::Result<_, _>>()?;
                let slices: Vec<&[f32]> = gv.iter().map(|t| &t[..]).collect();
                plan.pack(&slices, &[run.fetch::<f32>(lt)?[0], run.fetch::<f32>(ct)?[0]], &mut bufs);
                for buf in bufs.iter_mut() {
                    comm.allreduce_sum(buf)?;
                    total_calls += 1;
                }
                let inv = 1.0 / ranks as f32;
                for (i, t) in grad_tensors.iter_mut().enumerate() {
                    plan.unpack(&bufs, i, inv, &mut t[..]);
                }
                let mut run = SessionRunArgs::new();
                for (o, t) in b.grads.iter().zip(&grad_tensors) {
                    run.add_feed(&o.operation, o.index, t);
                }
                run.add_target(&b.train_op);
                session.run(&mut run)?;
                let e = plan.extras(&bufs, inv);
                (e[0], e[1] * ranks as f32)
            };
            let dt = t0.elapsed().as_secs_f64();
            secs += dt;
            if step > usize::try_from(first_step).unwrap_or(0) {
                timed_secs += dt;
                timed_images += cfg.batch * ranks;
            }
            if !loss.is_finite() {
                return Err(TrainError::Invalid(format!("loss became {loss} at step {step}; lower the learning rate")));
            }
            step_loss.push(loss);
            loss_sum += f64::from(loss);
            correct_sum += f64::from(correct);
            n_steps += 1;
            step += 1;
            progress.update(epoch + 1, step - epoch * steps_per_epoch, loss);
        }
        progress.finish();
        let test_accuracy = if root && !cfg.no_eval { evaluate(&session, &b.model, data)? } else { f64::NAN };
        let stats = EpochStats {
            epoch: epoch + 1,
            loss: loss_sum / n_steps.max(1) as f64,
            train_accuracy: correct_sum / (n_steps.max(1) * cfg.batch * ranks) as f64,
            test_accuracy,
            images_per_sec: (n_steps * cfg.batch * ranks) as f64 / secs.max(1e-9),
            train_seconds: secs,
        };
        if root && !cfg.quiet {
            eprintln!(
                "epoch {:>3}: loss {:.4}  train acc {:.4}  test acc {:.4}  {:.0} images/s",
                stats.epoch, stats.loss, stats.train_accuracy, stats.test_accuracy, stats.images_per_sec
            );
        }
        epochs.push(stats);
        if root {
            if let Some(dir) = &cfg.out_dir {
                checkpoint_written = Some(save(&session, &b, dir, step as i64)?);
            }
        }
    }
    let last_step = read_step(&session, &b.global_step)?;
    if root && checkpoint_written.is_none() {
        if let Some(dir) = &cfg.out_dir {
            checkpoint_written = Some(save(&session, &b, dir, last_step)?);
        }
    }
    let digests = comm.all_gather_u64(digest(&session, &b.trainable)?)?;
    let images_per_sec = if timed_secs > 0.0 { timed_images as f64 / timed_secs } else { f64::NAN };
    Ok(RunReport {
        arch: cfg.arch,
        bayesian: cfg.bayesian,
        dataset: cfg.dataset,
        ranks,
        batch_per_rank: cfg.batch,
        learning_rate: lr,
        parameters: sizes.iter().sum(),
        first_step,
        last_step,
        test_accuracy: epochs.last().map_or(f64::NAN, |e| e.test_accuracy),
        epochs,
        step_loss,
        images_per_sec,
        allreduce: AllreduceStats {
            tensors: sizes.len(),
            fusion_bytes: cfg.fusion_bytes,
            calls_per_step: if ranks > 1 { plan.num_buffers() } else { 0 },
            bytes_per_step: if ranks > 1 { plan.bytes() } else { 0 },
            total_calls,
        },
        variable_digests: digests.iter().map(|d| format!("{d:016x}")).collect(),
        checkpoint: checkpoint_written,
        scaling_efficiency: cfg.t1_images_per_sec.map(|t1| metrics::scaling_efficiency(t1, images_per_sec, ranks)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_pools_by_model_kind() {
        // ConfigProto: intra_op_parallelism_threads = 2 (tag 0x10), inter_op = 5 (tag 0x28).
        assert_eq!(session_config(thread_pools(0, true, false, 2)), vec![0x10, 1, 0x28, 2]);
        assert_eq!(session_config(thread_pools(0, true, false, 16)), vec![0x10, 8, 0x28, 2]);
        assert_eq!(session_config(thread_pools(0, true, true, 2)), vec![0x10, 2, 0x28, 2]);
        assert_eq!(session_config(thread_pools(0, false, false, 16)), Vec::<u8>::new());
        assert_eq!(session_config(thread_pools(0, false, true, 16)), Vec::<u8>::new());
        assert_eq!(session_config(thread_pools(3, true, false, 16)), vec![0x10, 3, 0x28, 3]);
    }
}
