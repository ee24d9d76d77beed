//! `bnn-convert`: read, convert, prune and export TensorFlow Probability BNN checkpoints.
//! A thin command-line layer over the `formats` library.

mod convert_cmd;
mod inspect;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::CkptToSafetensors(a) => convert_cmd::to_safetensors(a),
        Command::SafetensorsToCkpt(a) => convert_cmd::to_checkpoint(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error chain joined, each part naming its file.
            eprintln!("bnn-convert: error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
