//! `sweep`: the pruning study. For each SNR threshold (or pruned fraction), prune the kernels
//! (mu = 0, sigma = 0 where |mu| / sigma <= T), evaluate, and time Monte Carlo inference;
//! report a table, JSON and an SVG plot.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use model::arch::Posterior;
use formats::checkpoint::Checkpoint;
use serde_json::json;
use surgery::prune::{prune, Criterion, Mode, PruneOptions, Pruning};
use surgery::snr::{select_targets, Part};

use model::engine::{Estimator, Model, SparseKernels};
use crate::eval_cmd::{load_model, run_eval, sparse_kernels, DataArgs, ModelArgs};

/// Arguments of `sweep`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// SNR thresholds, comma-separated (a negative one prunes nothing).
    #[arg(long, value_delimiter = ',', conflicts_with = "fractions", allow_hyphen_values = true)]
    pub thresholds: Vec<f32>,
    /// Fractions of kernel weights to prune (lowest SNR first), comma-separated; the default
    /// when no thresholds are given: 0,0.1,...,0.9,0.95.
    #[arg(long, value_delimiter = ',')]
    pub fractions: Vec<f64>,
    /// Monte Carlo samples per evaluation (0: mean network only).
    #[arg(long, default_value_t = 100)]
    pub samples: usize,
    /// Seed of the Monte Carlo draws.
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Timed repetitions of the MC prediction per row (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// CSR kernels: auto, always, never.
    #[arg(long, default_value = "auto")]
    pub sparse: String,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG plot (accuracy and time against pruned fraction) to this file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// One row of the study.
struct Row {
    threshold: f32,
    kept: f64,
    mean_acc: f64,
    mean_ll: f64,
    mc_acc: f64,
    mc_ll: f64,
    seconds: f64,
    sparse_layers: usize,
}

/// The weights with pruned kernels (mu = 0, sigma = 0 where the pruning drops a weight: what
/// `prune --mode zero` writes, sigma = softplus(rho) being exactly 0 there).
fn apply(posts: &[Posterior], pruning: &Pruning) -> Vec<Posterior> {
    let mut out = posts.to_vec();
    for (t, keep) in pruning.targets.iter().zip(&pruning.keep) {
        let Some(p) = out.iter_mut().find(|p| p.name == t.layer && t.part == Part::Kernel) else { continue };
        let Some(sigma) = p.kernel_sigma.as_mut() else { continue };
        for ((m, s), k) in p.kernel_mu.iter_mut().zip(sigma.iter_mut()).zip(keep.iter()) {
            if !k {
                *m = 0.0;
                *s = 0.0;
            }
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs `sweep`.
pub fn run(a: Args) -> Result<()> {
    // Checked before the study's minutes of work, not after.
    let mut inputs = a.model.input_files()?;
    a.data.add_to(&mut inputs);
    for out in a.json.iter().chain(&a.plot) {
        inputs.check_output(out)?;
    }
    let (arch, posts) = load_model(&a.model)?;
    let sparse = sparse_kernels(&a.sparse)?;
    // issue 4's pruning decides which weights go, on the kernels of the network's Bayesian layers.
    let ckpt = Checkpoint::open(&a.model.input)?;
    let bayesian: Vec<String> = posts.iter().filter(|p| p.kernel_sigma.is_some()).map(|p| p.name.clone()).collect();
    if bayesian.is_empty() {
        bail!("{}: no Bayesian kernels (kernel_posterior_untransformed_scale) to prune", a.model.input.display());
    }
    let targets = select_targets(&ckpt, Some(&bayesian), &[Part::Kernel])?;
    let criteria: Vec<Criterion> = if !a.thresholds.is_empty() {
        a.thresholds.iter().map(|&t| Criterion::Threshold(f64::from(t))).collect()
    } else {
        let fr = if a.fractions.is_empty() { vec![0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95] } else { a.fractions.clone() };
        if let Some(f) = fr.iter().find(|f| !(0.0..1.0).contains(*f)) {
            bail!("--fractions must be in [0, 1), got {f}");
        }
        fr.into_iter().map(|fraction| Criterion::Sparsity { fraction, per_layer: false }).collect()
    };
    let data = {
        // Only for the input and output sizes: dropped before the pruned models exist.
        let probe = Model::new(&arch, &posts, SparseKernels::Never).with_context(|| a.model.input.display().to_string())?;
        a.data.read(probe.example_len(), probe.classes())?
    };
    let total: usize = posts.iter().map(|p| p.kernel_mu.len()).sum();
    let mut rows = Vec::new();
    for criterion in criteria {
        let pruning = prune(&ckpt, &targets, &PruneOptions { criterion, mode: Mode::Zero })?;
        let pruned = apply(&posts, &pruning);
        let kept = pruned
            .iter()
            .map(|p| p.kernel_mu.len() as f64 * (1.0 - p.pruned_fraction()))
            .sum::<f64>()
            / total as f64;
        let t = if pruning.report.kept == pruning.report.total { -1.0 } else { pruning.report.threshold as f32 };
        let model = Model::for_batch(&arch, pruned, sparse, data.y.len())?;
        let mean = run_eval(&model, &data, 0, a.seed, Estimator::Flipout)?;
        let mut times = Vec::new();
        let mut mc = mean.metrics;
        if a.samples > 0 {
            for _ in 0..a.repeats.max(1) {
                let e = run_eval(&model, &data, a.samples, a.seed, Estimator::Flipout)?;
                times.push(e.seconds);
                mc = e.metrics;
            }
        } else {
            times.push(mean.seconds);
        }
        rows.push(Row {
            threshold: t,
            kept,
            mean_acc: mean.metrics.accuracy,
            mean_ll: mean.metrics.mean_log_likelihood,
            mc_acc: mc.accuracy,
            mc_ll: mc.mean_log_likelihood,
            seconds: median(times),
            sparse_layers: model.sparse_layers().0,
        });
    }
    let base = rows.first().map_or(f64::NAN, |r| r.seconds);
    println!("| SNR threshold | pruned | kept | mean acc | mean LL | MC-{s} acc | MC-{s} LL | MC-{s} seconds | speed-up | CSR layers |", s = a.samples);
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let t = if r.threshold < 0.0 { "none".to_string() } else { format!("{:.4}", r.threshold) };
        println!(
            "| {t} | {:.1}% | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.2}x | {} |",
            100.0 * (1.0 - r.kept),
            r.kept,
            r.mean_acc,
            r.mean_ll,
            r.mc_acc,
            r.mc_ll,
            r.seconds,
            base / r.seconds,
            r.sparse_layers
        );
    }
    if let Some(path) = &a.json {
        let out = json!({
            "input": a.model.input, "data": a.data.data, "samples": a.samples, "seed": a.seed,
            "kernel_weights": total,
            "rows": rows.iter().map(|r| json!({
                "threshold": r.threshold, "kept_fraction": r.kept, "pruned_fraction": 1.0 - r.kept,
                "mean_accuracy": r.mean_acc, "mean_log_likelihood": r.mean_ll,
                "mc_accuracy": r.mc_acc, "mc_log_likelihood": r.mc_ll,
                "mc_seconds": r.seconds, "speedup": base / r.seconds, "csr_layers": r.sparse_layers,
            })).collect::<Vec<_>>(),
        });
        crate::write_file_atomically(path, serde_json::to_string_pretty(&out)?.as_bytes())?;
    }
    if let Some(path) = &a.plot {
        crate::write_file_atomically(path, svg(&rows, a.samples).as_bytes())?;
    }
    Ok(())
}

/// Accuracy (left axis, 0..1) and relative time (right axis, 0..1.2x of unpruned) against
/// pruned fraction, as a dependency-free SVG.
fn svg(rows: &[Row], samples: usize) -> String {
    let (w, h, m) = (640.0, 400.0, 50.0);
    let x = |f: f64| m + f * (w - 2.0 * m);
    let y = |v: f64| h - m - v.clamp(0.0, 1.2) / 1.2 * (h - 2.0 * m);
    let base = rows.first().map_or(1.0, |r| r.seconds);
    let line = |f: &dyn Fn(&Row) -> f64| rows.iter().map(|r| format!("{:.1},{:.1}", x(1.0 - r.kept), y(f(r)))).collect::<Vec<_>>().join(" ");
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n");
    s += &format!("<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n");
    s += &format!("<line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n", h - m, w - m, h - m);
    s += &format!("<line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>\n", h - m);
    for i in 0..=10 {
        let f = i as f64 / 10.0;
        s += &format!("<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}%</text>\n", x(f), h - m + 16.0, i * 10);
    }
    for v in [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2] {
        s += &format!("<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.1}</text>\n", m - 6.0, y(v) + 4.0);
    }
    s += &format!("<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>\n", line(&|r| r.mean_acc));
    s += &format!("<polyline fill=\"none\" stroke=\"#2ca02c\" stroke-width=\"2\" stroke-dasharray=\"6 3\" points=\"{}\"/>\n", line(&|r| r.mc_acc));
    s += &format!("<polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\" points=\"{}\"/>\n", line(&|r| r.seconds / base));
    s += &format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">pruned fraction of kernel weights</text>\n", w / 2.0, h - 10.0);
    s += &format!(
        "<text x=\"{m}\" y=\"20\">blue: mean-network accuracy; green dashed: MC-{samples} accuracy; red: MC-{samples} time / unpruned time</text>\n"
    );
    s + "</svg>\n"
}
