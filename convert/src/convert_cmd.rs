//! `ckpt-to-safetensors` and `safetensors-to-ckpt`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use formats::checkpoint::Checkpoint;
use formats::convert::{checkpoint_to_bundle, checkpoint_to_safetensors, Edits, ToSafetensorsOptions};
use formats::input_files::InputFiles;

/// Arguments of `ckpt-to-safetensors`.
#[derive(clap::Args)]
pub struct ToSafetensorsArgs {
    /// Checkpoint: a folder (its latest checkpoint), a prefix, or an .index file.
    checkpoint: PathBuf,
    /// Output .safetensors file.
    #[arg(short, long)]
    output: PathBuf,
    /// Keep optimizer slots and state (RMSProp, Adam...) and step counters.
    #[arg(long)]
    include_optimizer: bool,
    /// Leave out tensors safetensors cannot hold (strings, complex128) instead of failing.
    #[arg(long)]
    skip_unsupported: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `ckpt-to-safetensors`.
pub fn to_safetensors(a: ToSafetensorsArgs) -> Result<()> {
    let ckpt = Checkpoint::open(&a.checkpoint)?;
    let mut inputs = InputFiles::new();
    inputs.add_checkpoint(&ckpt);
    inputs.check_output(&a.output)?;
    let opts = ToSafetensorsOptions { include_optimizer: a.include_optimizer, skip_unsupported: a.skip_unsupported };
    let folder = crate::output::output_folder(&a.output)?;
    let report = checkpoint_to_safetensors(&ckpt, &a.output, opts, &Edits::default())?;
    folder.keep();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).context("serializing the report")?);
    } else {
        println!(
            "wrote {} ({} tensors, {} bytes; {} left out)",
            a.output.display(),
            report.written.len(),
            report.bytes,
            report.skipped.len()
        );
        for (key, why) in &report.skipped {
            println!("  left out {key}: {why}");
        }
    }
    Ok(())
}

/// Arguments of `safetensors-to-ckpt`.
#[derive(clap::Args)]
pub struct ToCheckpointArgs {
    /// Input .safetensors file.
    input: PathBuf,
    /// Output checkpoint prefix (writes PREFIX.index, PREFIX.data-00000-of-00001 and the
    /// folder's `checkpoint` state file).
    #[arg(short, long)]
    output: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `safetensors-to-ckpt`.
pub fn to_checkpoint(a: ToCheckpointArgs) -> Result<()> {
    let ckpt = Checkpoint::open(&a.input)?;
    let mut inputs = InputFiles::new();
    inputs.add_checkpoint(&ckpt);
    inputs.check_bundle_output(&a.output, &[])?;
    let folder = crate::output::output_folder(&a.output)?;
    let report = checkpoint_to_bundle(&ckpt, &a.output, &Edits::default())?;
    folder.keep();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).context("serializing the report")?);
    } else {
        println!("wrote {} ({} tensors, {} bytes)", a.output.display(), report.written.len(), report.bytes);
    }
    Ok(())
}
