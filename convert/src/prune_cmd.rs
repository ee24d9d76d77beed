//! `prune` and `densify`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use formats::checkpoint::Checkpoint;
use formats::convert::ToSafetensorsOptions;
use formats::input_files::InputFiles;
use surgery::prune::{
    prune, prune_checkpoint_to_bundle, prune_to_safetensors, Criterion, Mode, PruneJob, PruneOptions, PruneReport, PRUNE_REPORT_SUFFIX,
};
use surgery::snr::{select_targets, Part};

/// What pruned weights become.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    /// mu = 0 and softplus(rho) = 0 exactly: every Monte Carlo sample is 0.
    Zero,
    /// BPrune's rule: mu = 0 and rho = 0 (sigma = ln 2 remains).
    Bprune,
}

/// How to prune: shared by `prune` and `prune-batch`.
#[derive(clap::Args)]
pub struct Rule {
    /// Prune weights with SNR <= T (BPrune's default: 10). Weights pruned before (mu = 0 with
    /// rho = 0 or softplus(rho) = 0, either mode) stay pruned and are counted (ALREADY);
    /// weights with NaN or infinite mu or rho are never pruned (a warning names the tensor).
    #[arg(long, conflicts_with = "sparsity")]
    threshold: Option<f64>,
    /// Prune this fraction of the weights, those of lowest SNR (weights pruned before count
    /// as SNR 0, so they are part of the fraction; ties broken by position).
    #[arg(long)]
    sparsity: Option<f64>,
    /// With --sparsity: the same fraction in every layer instead of overall.
    #[arg(long, requires = "sparsity")]
    per_layer: bool,
    /// What pruned weights become.
    #[arg(long, value_enum, default_value = "zero")]
    mode: ModeArg,
    /// Only these layers (comma-separated).
    #[arg(long, value_delimiter = ',')]
    layers: Option<Vec<String>>,
    /// Prune bias posteriors too (they need their own untransformed scale).
    #[arg(long)]
    bias: bool,
}

impl Rule {
    /// The library's description of this rule.
    pub fn job(&self) -> PruneJob {
        let criterion = match (self.threshold, self.sparsity) {
            (_, Some(fraction)) => Criterion::Sparsity { fraction, per_layer: self.per_layer },
            (Some(t), None) => Criterion::Threshold(t),
            (None, None) => Criterion::Threshold(10.0),
        };
        let mode = match self.mode {
            ModeArg::Zero => Mode::Zero,
            ModeArg::Bprune => Mode::Bprune,
        };
        let parts = if self.bias { vec![Part::Kernel, Part::Bias] } else { vec![Part::Kernel] };
        PruneJob { options: PruneOptions { criterion, mode }, layers: self.layers.clone(), parts }
    }
}

/// Arguments of `prune`.
#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint (folder, prefix, .index) or .safetensors file.
    input: PathBuf,
    /// Output: a checkpoint prefix, or a .safetensors file (default: the input's format).
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    rule: Rule,
    /// Store pruned posteriors in CSR form (safetensors output; see docs/sparse-format.md).
    #[arg(long)]
    sparse: bool,
    /// Keep optimizer slots in safetensors output (TF output always keeps every tensor).
    #[arg(long)]
    include_optimizer: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn is_safetensors(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "safetensors")
}

/// Runs `prune`.
pub fn run(a: Args) -> Result<()> {
    let job = a.rule.job();
    let to_bundle = !is_safetensors(&a.output) && (a.input.extension().is_none_or(|e| e != "safetensors") || a.output.extension().is_some());
    let mut sizes = None;
    if to_bundle && a.sparse {
        bail!("{}: --sparse needs a .safetensors output", a.output.display());
    }
    let ckpt = std::sync::Arc::new(Checkpoint::open(&a.input)?);
    let mut inputs = InputFiles::new();
    inputs.add_checkpoint(&ckpt);
    let report = if to_bundle {
        inputs.check_bundle_output(&a.output, &[PRUNE_REPORT_SUFFIX])?;
        prune_checkpoint_to_bundle(&ckpt, &a.output, &job)?
    } else {
        inputs.check_output(&a.output)?;
        let folder = crate::output::output_folder(&a.output)?;
        let targets = select_targets(&ckpt, job.layers.as_deref(), &job.parts)?;
        let opts = ToSafetensorsOptions { include_optimizer: a.include_optimizer, skip_unsupported: false };
        let report = if a.sparse {
            // CSR storage needs the keep bits of every target.
            let pruning = prune(&ckpt, &targets, &job.options)?;
            sizes = Some(surgery::sparse::write_sparse(&ckpt, &pruning, &a.output, opts)?);
            pruning.report
        } else {
            // One pass: the counts are taken while the data is written, the header last.
            prune_to_safetensors(&ckpt, &a.output, &job, opts)?
        };
        folder.keep();
        report
    };
    warn_non_finite(&a.input, &report);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).context("serializing the report")?);
    } else {
        print_report(&report, &a.output);
        if let Some(s) = sizes {
            println!(
                "sparse storage: {} of {} dense tensor bytes ({:.1}%)",
                s.sparse_bytes,
                s.dense_bytes,
                100.0 * s.sparse_bytes as f64 / s.dense_bytes.max(1) as f64
            );
        }
    }
    Ok(())
}

/// Prints the report as a table; PRUNED counts cumulatively (ALREADY: pruned before this run).
fn print_report(r: &PruneReport, out: &Path) {
    let mode = match r.options.mode {
        Mode::Zero => "zero",
        Mode::Bprune => "bprune",
    };
    println!("pruned {} (mode {mode}, SNR threshold {})", out.display(), r.threshold);
    let header = ["LAYER", "KEPT", "TOTAL", "PRUNED", "ALREADY", "NEW", "BPRUNE_NONZERO"];
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    for l in &r.layers {
        rows.push(vec![
            format!("{}/{}", l.layer, l.part),
            l.kept.to_string(),
            l.total.to_string(),
            format!("{:.2}%", 100.0 * l.pruned as f64 / l.total.max(1) as f64),
            l.already_pruned.to_string(),
            l.newly_pruned.to_string(),
            l.bprune_nonzero.to_string(),
        ]);
    }
    rows.push(vec![
        "overall".into(),
        r.kept.to_string(),
        r.total.to_string(),
        format!("{:.2}%", 100.0 * r.sparsity),
        r.already_pruned.to_string(),
        r.newly_pruned.to_string(),
        String::new(),
    ]);
    print!("{}", crate::table(&rows));
}

/// Warns, by name, about tensors whose NaN or infinite values kept weights from being pruned.
pub fn warn_non_finite(input: &Path, r: &PruneReport) {
    for n in &r.non_finite {
        eprintln!(
            "bnn-convert: warning: {}: tensor '{}' holds {} NaN or infinite values; those weights were not pruned",
            input.display(),
            n.key,
            n.count
        );
    }
}

/// Arguments of `densify`.
#[derive(clap::Args)]
pub struct DensifyArgs {
    /// A safetensors file written by `prune --sparse`.
    input: PathBuf,
    /// The dense safetensors file to write.
    #[arg(short, long)]
    output: PathBuf,
}

/// Runs `densify`.
pub fn densify(a: DensifyArgs) -> Result<()> {
    let mut inputs = InputFiles::new();
    inputs.add_file(&a.input);
    inputs.check_output(&a.output)?;
    let folder = crate::output::output_folder(&a.output)?;
    surgery::sparse::densify(&a.input, &a.output)?;
    folder.keep();
    println!("wrote {}", a.output.display());
    Ok(())
}
