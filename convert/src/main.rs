//! `bnn-convert`: read, convert, prune and export TensorFlow Probability BNN checkpoints.
//! A thin command-line layer over the `formats` library.

mod batch_cmd;
mod convert_cmd;
mod eval_cmd;
mod export_cmd;
mod inspect;
mod output;
mod prune_cmd;
mod snr_cmd;
mod sweep_cmd;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Parser, Subcommand};
pub(crate) use output::{table, write_file_atomically};

#[derive(Parser)]
#[command(name = "bnn-convert", version, about = "Read, convert, prune and export TensorFlow Probability BNN checkpoints without TensorFlow")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the tensors, BNN layers and manifests of a checkpoint or safetensors file.
    Inspect(inspect::Args),
    /// Convert a TensorFlow checkpoint to safetensors.
    CkptToSafetensors(convert_cmd::ToSafetensorsArgs),
    /// Convert a safetensors file to a TensorFlow checkpoint.
    SafetensorsToCkpt(convert_cmd::ToCheckpointArgs),
    /// Signal-to-noise ratio statistics of the weight posteriors, per layer and overall.
    ///
    /// Already-pruned weights (mu = 0 with rho = 0, BPrune's mode, or softplus(rho) = 0, zero
    /// mode) are counted in the PRUNED columns and left out of every other statistic (min,
    /// quantiles, max, mean, threshold fractions, histogram), which are over the remaining
    /// weights; COUNT is all weights. Weights with a NaN or infinite mu or rho are left out too,
    /// with a warning naming the tensor.
    Snr(snr_cmd::Args),
    /// Prune weights by signal-to-noise ratio (threshold or sparsity; zero or BPrune mode).
    Prune(prune_cmd::Args),
    /// Prune every checkpoint under folders and inside archives, in parallel, with a summary.
    PruneBatch(batch_cmd::Args),
    /// Turn a sparse file written by `prune --sparse` back into a dense one, bit for bit.
    Densify(prune_cmd::DensifyArgs),
    /// Export a BNN to ONNX (mean network or Monte Carlo graph).
    ExportOnnx(export_cmd::Args),
    /// Accuracy, log-likelihood, entropy and time of a BNN on a labelled data set.
    Eval(eval_cmd::Args),
    /// Pruning study: prune at several SNR thresholds, evaluate and time each.
    Sweep(sweep_cmd::Args),
}

/// Exit status after SIGINT or SIGTERM (128 + SIGINT, as shells report Ctrl-C).
pub(crate) const EXIT_INTERRUPTED: u8 = 130;

/// An error that ends the command with a particular exit status (see README).
#[derive(Debug)]
pub(crate) struct ExitWith {
    code: u8,
    message: String,
}

impl ExitWith {
    pub(crate) fn new(code: u8, message: String) -> ExitWith {
        ExitWith { code, message }
    }
}

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExitWith {}

/// On SIGINT/SIGTERM: with `graceful` (a batch), the first signal only sets it, so no new
/// checkpoint starts; otherwise (or on a second signal) partial outputs and folders made for
/// them are removed and the process exits 128 + signal.
fn handle_signals(graceful: Option<Arc<AtomicBool>>) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return; // Default handling: Linux outputs are anonymous files until complete anyway.
    };
    let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || {
        for signal in signals.forever() {
            if let Some(stop) = &graceful {
                if !stop.swap(true, Ordering::SeqCst) {
                    eprintln!("bnn-convert: interrupted: finishing the checkpoints in progress, starting no more (again to stop now)");
                    continue;
                }
            }
            formats::output_file::remove_partials();
            std::process::exit(128 + signal);
        }
    });
    drop(spawned);
}

fn main() -> ExitCode {
    // Like `ls | head`: a closed pipe ends the command quietly (SIGPIPE, status 141) instead
    // of a panic in `println!`. Outputs are unaffected: they are only linked into place when
    // complete.
    // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version as clap prints them (also the help of a command given alone).
        Err(e) if !e.use_stderr() || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        Err(e) => {
            // A bad command line is bad input like any other: one line (clap's message
            // without its usage and help pointers), status 2 as clap gives it.
            let text = e.render().to_string();
            let parts: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")).collect();
            eprintln!("bnn-convert: {}", parts.join(" "));
            return ExitCode::from(2);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    handle_signals(matches!(cli.command, Command::PruneBatch(_)).then(|| stop.clone()));
    let result = match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::CkptToSafetensors(a) => convert_cmd::to_safetensors(a),
        Command::SafetensorsToCkpt(a) => convert_cmd::to_checkpoint(a),
        Command::Snr(a) => snr_cmd::run(a),
        Command::Prune(a) => prune_cmd::run(a),
        Command::Densify(a) => prune_cmd::densify(a),
        Command::PruneBatch(a) => batch_cmd::run(a, stop),
        Command::ExportOnnx(a) => export_cmd::run(a),
        Command::Eval(a) => eval_cmd::run(a),
        Command::Sweep(a) => sweep_cmd::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error chain joined, each part naming its file, without repeating a
            // cause that the message before it already quotes.
            let mut line = e.to_string();
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !line.contains(&cause) {
                    line = format!("{line}: {cause}");
                }
            }
            eprintln!("bnn-convert: error: {}", line.replace('\n', " "));
            match e.downcast_ref::<ExitWith>() {
                Some(exit) => ExitCode::from(exit.code),
                None => ExitCode::FAILURE,
            }
        }
    }
}
