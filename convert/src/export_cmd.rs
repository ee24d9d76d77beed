//! `export-onnx`: a BNN checkpoint to an ONNX model (see docs/onnx.md).

use std::path::PathBuf;

use anyhow::{bail, Result};
use model::onnx::{build, write, Mode, Options, Sparse};

use crate::eval_cmd::{load_model, ModelArgs};

/// Arguments of `export-onnx`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output .onnx file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// mean: deterministic network with weights = mu; mc: S weight samples drawn in the runtime.
    #[arg(long, default_value = "mean")]
    pub mode: String,
    /// Monte Carlo samples in --mode mc.
    #[arg(long, default_value_t = 100)]
    pub samples: usize,
    /// Sparse initializers: auto (where smaller), always, never (loads in every runtime).
    #[arg(long, default_value = "auto")]
    pub sparse: String,
    /// Fold each batch normalization that directly follows a conv or dense layer into that
    /// layer (kernel mean and sigma and bias scaled per output channel; the weight distribution
    /// is kept); any other batch normalization stays a BatchNormalization node.
    #[arg(long)]
    pub fold_bn: bool,
}

/// Runs `export-onnx`.
pub fn run(a: Args) -> Result<()> {
    let mode = match a.mode.as_str() {
        "mean" => Mode::Mean,
        "mc" => Mode::MonteCarlo { samples: a.samples },
        other => bail!("--mode must be mean or mc, not '{other}'"),
    };
    let sparse = match a.sparse.as_str() {
        "auto" => Sparse::Auto,
        "always" => Sparse::Always,
        "never" => Sparse::Never,
        other => bail!("--sparse must be auto, always or never, not '{other}'"),
    };
    a.model.input_files()?.check_output(&a.output)?;
    let (mut arch, mut posts) = load_model(&a.model)?;
    let mut folded = 0;
    if a.fold_bn {
        (arch, posts, folded) = model::fold::fold_batch_norm(&arch, &posts);
    }
    let model = build(&arch, &posts, Options { mode, sparse }, &a.model.input)?;
    let folder = crate::output::output_folder(&a.output)?;
    write(&model, &a.output)?;
    folder.keep();
    let g = model.graph.as_ref();
    println!(
        "{}: {} nodes, {} dense + {} sparse initializers, opset {}{}",
        a.output.display(),
        g.map_or(0, |g| g.node.len()),
        g.map_or(0, |g| g.initializer.len()),
        g.map_or(0, |g| g.sparse_initializer.len()),
        model::onnx::OPSET,
        if a.fold_bn { format!(", {folded} batch normalizations folded") } else { String::new() }
    );
    Ok(())
}
