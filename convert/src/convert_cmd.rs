//! `ckpt-to-safetensors` and `safetensors-to-ckpt`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use formats::checkpoint::Checkpoint;
use formats::convert::{checkpoint_to_bundle, checkpoint_to_safetensors, ConversionReport, Edits, ToSafetensorsOptions};
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
    let opts = ToSafetensorsOptions { include_optimizer: a.include_optimizer, skip_unsupported: a.skip_unsupported };
    let output = &a.output;
    let report = convert(&a.checkpoint, output, |inputs| inputs.check_output(output), |ckpt| checkpoint_to_safetensors(ckpt, output, opts, &Edits::default()))?;
    if a.json {
        print_json(&report)
    } else {
        println!("wrote {} ({} tensors, {} bytes; {} left out)", output.display(), report.written.len(), report.bytes, report.skipped.len());
        for (key, why) in &report.skipped {
            println!("  left out {key}: {why}");
        }
        Ok(())
    }
}

/// Opens the checkpoint at `input`, refuses an `output` that `check` finds clashing with it, and
/// converts it by `write`, removing the folders made for `output` again if that fails.
fn convert(
    input: &Path,
    output: &Path,
    check: impl FnOnce(&InputFiles) -> formats::Result<()>,
    write: impl FnOnce(&Checkpoint) -> formats::Result<ConversionReport>,
) -> Result<ConversionReport> {
    let ckpt = Checkpoint::open(input)?;
    let mut inputs = InputFiles::new();
    inputs.add_checkpoint(&ckpt);
    check(&inputs)?;
    let folder = crate::output::output_folder(output)?;
    let report = write(&ckpt)?;
    folder.keep();
    Ok(report)
}

/// Prints a conversion's report as JSON.
fn print_json(report: &ConversionReport) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(report).context("serializing the report")?);
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
    let output = &a.output;
    let report = convert(&a.input, output, |inputs| inputs.check_bundle_output(output, &[]), |ckpt| checkpoint_to_bundle(ckpt, output, &Edits::default()))?;
    if a.json {
        print_json(&report)
    } else {
        println!("wrote {} ({} tensors, {} bytes)", output.display(), report.written.len(), report.bytes);
        Ok(())
    }
}
