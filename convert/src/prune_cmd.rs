//! `prune` and `densify`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use formats::checkpoint::{Checkpoint, Format};
use formats::convert::{checkpoint_to_bundle, checkpoint_to_safetensors, ToSafetensorsOptions};
use surgery::prune::{prune, Criterion, Mode, PruneOptions, PruneReport};
use surgery::snr::{select_targets, Part};

/// What pruned weights become.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    /// mu = 0 and softplus(rho) = 0 exactly: every Monte Carlo sample is 0.
    Zero,
    /// BPrune's rule: mu = 0 and rho = 0 (sigma = ln 2 remains).
    Bprune,
}

/// Arguments of `prune`.
#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint (folder, prefix, .index) or .safetensors file.
    input: PathBuf,
    /// Output: a checkpoint prefix, or a .safetensors file (default: the input's format).
    #[arg(short, long)]
    output: PathBuf,
    /// Prune weights with SNR <= T (BPrune's default: 10).
    #[arg(long, conflicts_with = "sparsity")]
    threshold: Option<f64>,
    /// Prune this fraction of the weights, those of lowest SNR.
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
    let ckpt = Checkpoint::open(&a.input)?;
    let criterion = match (a.threshold, a.sparsity) {
        (_, Some(fraction)) => Criterion::Sparsity { fraction, per_layer: a.per_layer },
        (Some(t), None) => Criterion::Threshold(t),
        (None, None) => Criterion::Threshold(10.0),
    };
    let mode = match a.mode {
        ModeArg::Zero => Mode::Zero,
        ModeArg::Bprune => Mode::Bprune,
    };
    let parts: &[Part] = if a.bias { &[Part::Kernel, Part::Bias] } else { &[Part::Kernel] };
    let targets = select_targets(&ckpt, a.layers.as_deref(), parts)?;
    let pruning = prune(&ckpt, &targets, &PruneOptions { criterion, mode })?;
    let to_safetensors = is_safetensors(&a.output) || (ckpt.format() == Format::Safetensors && a.output.extension().is_none_or(|e| e == "safetensors"));
    let opts = ToSafetensorsOptions { include_optimizer: a.include_optimizer, skip_unsupported: false };
    let mut sizes = None;
    if a.sparse {
        if !to_safetensors {
            bail!("{}: --sparse needs a .safetensors output", a.output.display());
        }
        sizes = Some(surgery::sparse::write_sparse(&ckpt, &pruning, &a.output, opts)?);
    } else if to_safetensors {
        checkpoint_to_safetensors(&ckpt, &a.output, opts, &pruning.edits)?;
    } else {
        if let Some(dir) = a.output.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
        }
        checkpoint_to_bundle(&ckpt, &a.output, &pruning.edits)?;
        // A TF checkpoint has no metadata: the report goes beside it.
        let json = serde_json::to_string_pretty(&pruning.report).context("serializing the report")?;
        crate::write_file_atomically(&PathBuf::from(format!("{}.prune.json", a.output.display())), json.as_bytes())?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&pruning.report).context("serializing the report")?);
    } else {
        print_report(&pruning.report, &a.output);
        if let Some(s) = sizes {
            println!("sparse storage: {} of {} dense tensor bytes ({:.1}%)", s.sparse_bytes, s.dense_bytes, 100.0 * s.sparse_bytes as f64 / s.dense_bytes.max(1) as f64);
        }
    }
    Ok(())
}

fn print_report(r: &PruneReport, out: &Path) {
    let mode = match r.options.mode {
        Mode::Zero => "zero",
        Mode::Bprune => "bprune",
    };
    println!("pruned {} (mode {mode}, SNR threshold {})", out.display(), r.threshold);
    let mut rows = vec![vec!["LAYER".to_string(), "KEPT".into(), "TOTAL".into(), "PRUNED".into(), "BPRUNE_NONZERO".into()]];
    for l in &r.layers {
        rows.push(vec![
            format!("{}/{}", l.layer, l.part),
            l.kept.to_string(),
            l.total.to_string(),
            format!("{:.2}%", 100.0 * l.pruned as f64 / l.total.max(1) as f64),
            l.bprune_nonzero.to_string(),
        ]);
    }
    rows.push(vec!["overall".into(), r.kept.to_string(), r.total.to_string(), format!("{:.2}%", 100.0 * r.sparsity), String::new()]);
    print!("{}", crate::table(&rows));
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
    surgery::sparse::densify(&a.input, &a.output)?;
    println!("wrote {}", a.output.display());
    Ok(())
}
