//! `bnn-train`: command line. Errors end here as one line on stderr and exit status 1.

use std::path::PathBuf;

use anyhow::{Context, Result};
use bnn_train::allreduce::{Communicator, Single, DEFAULT_FUSION_BYTES};
use bnn_train::data::{self, DatasetKind};
use bnn_train::graph::flipout::PosteriorInit;
use bnn_train::metrics::CompareReport;
use bnn_train::models::Arch;
use bnn_train::optimizer::OptimizerKind;
use bnn_train::trainer::{self, TrainConfig};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bnn-train", version, about = "Data-parallel Bayesian neural network training (TFP Flipout on TensorFlow, MPI allreduce). Run under `mpirun -np N` for N ranks.")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train one model.
    Train(Opts),
    /// Train the BNN and its deterministic twin with the same settings; report the
    /// BNN/CNN throughput ratio.
    Compare(Opts),
}

#[derive(clap::Args, Clone)]
struct Opts {
    /// Dataset layout in --data-dir.
    #[arg(long, value_enum, default_value = "digits")]
    dataset: DatasetKind,
    /// Folder with the dataset files (nothing is downloaded).
    #[arg(long, default_value = "fixtures/data")]
    data_dir: PathBuf,
    /// Architecture.
    #[arg(long, value_enum, default_value = "fc")]
    arch: Arch,
    /// Hidden layer sizes of the FC model (the input size comes from the data).
    #[arg(long, value_delimiter = ',', default_value = "256,256")]
    hidden: Vec<i64>,
    /// Channel multiplier of the convolutional models.
    #[arg(long, default_value_t = 1.0)]
    width: f64,
    /// Train the deterministic CNN twin instead of the BNN.
    #[arg(long)]
    deterministic: bool,
    /// Mean of the initializer of kernel_posterior_untransformed_scale (TFP: -3; the
    /// paper's distributed runs: -9).
    #[arg(long, default_value_t = -3.0, allow_hyphen_values = true)]
    posterior_init_mean: f32,
    /// beta: weight of KL / N in the loss.
    #[arg(long, default_value_t = 1.0)]
    kl_weight: f32,
    /// Optimizer.
    #[arg(long, value_enum, default_value = "adam")]
    optimizer: OptimizerKind,
    /// Learning rate of one rank (multiplied by the number of ranks unless --no-lr-scaling).
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// Keep the learning rate when running on several ranks.
    #[arg(long)]
    no_lr_scaling: bool,
    /// Examples per rank per step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Epochs in total (a resumed run continues up to this many).
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Stop after this many steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Seed of the weights, the noise and the shuffling.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fusion buffer size in MiB (0: one allreduce per tensor).
    #[arg(long, default_value_t = (DEFAULT_FUSION_BYTES >> 20) as f64)]
    fusion_mb: f64,
    /// Checkpoint folder (model.ckpt-STEP.*, checkpoint, LayerNames.txt, OpsNames.txt).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from the latest checkpoint in --out.
    #[arg(long)]
    resume: bool,
    /// Write the JSON report here (rank 0); `-` for stdout.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Threads of each of TensorFlow's pools per rank (default: under mpirun, cores / ranks;
    /// else the BNN runs the two products of each Flipout layer side by side on half the cores
    /// each, and the CNN uses TensorFlow's default).
    #[arg(long)]
    threads: Option<usize>,
    /// Skip the test-set evaluation after each epoch.
    #[arg(long)]
    no_eval: bool,
    /// No per-epoch lines, no progress bar.
    #[arg(long)]
    quiet: bool,
    /// One-rank images/s of the same run, to report the scaling efficiency T1 / (TN * N).
    #[arg(long)]
    t1_images_per_sec: Option<f64>,
}

fn config(o: &Opts, ranks: usize, bayesian: bool) -> Result<TrainConfig> {
    // Written to reject NaN too.
    if !matches!(o.fusion_mb.partial_cmp(&0.0), Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal))
        || o.width.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
        || o.lr.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
    {
        anyhow::bail!("--fusion-mb must be >= 0, --width and --lr > 0");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(TrainConfig {
        arch: o.arch,
        bayesian,
        hidden: o.hidden.clone(),
        width: o.width,
        init: PosteriorInit { rho_mean: o.posterior_init_mean, ..PosteriorInit::default() },
        beta: o.kl_weight,
        optimizer: o.optimizer,
        lr: o.lr,
        lr_scaling: !o.no_lr_scaling,
        batch: o.batch_size,
        epochs: o.epochs,
        max_steps: o.max_steps,
        seed: o.seed,
        fusion_bytes: (o.fusion_mb * 1048576.0) as usize,
        out_dir: o.out.clone(),
        resume: o.resume,
        threads: o.threads.unwrap_or(if ranks > 1 { (cores / ranks).max(1) } else { 0 }),
        no_eval: o.no_eval,
        quiet: o.quiet,
        t1_images_per_sec: o.t1_images_per_sec,
        dataset: o.dataset,
    })
}

fn write_report(path: &Option<PathBuf>, json: &str) -> Result<()> {
    match path {
        Some(p) if p.as_os_str() == "-" => println!("{json}"),
        Some(p) => std::fs::write(p, format!("{json}\n")).with_context(|| format!("{}: cannot write the report", p.display()))?,
        None => {}
    }
    Ok(())
}

fn run(cli: Cli, comm: &dyn Communicator) -> Result<()> {
    let (opts, compare) = match cli.cmd {
        Cmd::Train(o) => (o, false),
        Cmd::Compare(o) => (o, true),
    };
    let data = data::load(opts.dataset, &opts.data_dir)?;
    let root = comm.rank() == 0;
    if !compare {
        let cfg = config(&opts, comm.size(), !opts.deterministic)?;
        let report = trainer::train(&cfg, &data, comm)?;
        if root {
            write_report(&opts.report, &serde_json::to_string_pretty(&report)?)?;
        }
        return Ok(());
    }
    if opts.out.is_some() || opts.resume {
        anyhow::bail!("compare writes no checkpoints: drop --out / --resume");
    }
    let bnn = trainer::train(&config(&opts, comm.size(), true)?, &data, comm)?;
    let cnn = trainer::train(&config(&opts, comm.size(), false)?, &data, comm)?;
    let ratio = bnn.images_per_sec / cnn.images_per_sec;
    if root {
        eprintln!("BNN {:.0} images/s, CNN {:.0} images/s: ratio {ratio:.3}", bnn.images_per_sec, cnn.images_per_sec);
        write_report(&opts.report, &serde_json::to_string_pretty(&CompareReport { bnn, cnn, bnn_cnn_throughput_ratio: ratio })?)?;
    }
    Ok(())
}

fn main() {
    // TensorFlow's C++ logging is noise on a CPU-only machine; keep warnings and errors.
    if std::env::var_os("TF_CPP_MIN_LOG_LEVEL").is_none() {
        std::env::set_var("TF_CPP_MIN_LOG_LEVEL", "2");
    }
    let cli = Cli::parse();
    #[cfg(feature = "mpi")]
    let mpi_comm = bnn_train::allreduce::MpiComm::from_launcher();
    #[cfg(feature = "mpi")]
    let comm: &dyn Communicator = match &mpi_comm {
        Some(c) => c,
        None => &Single,
    };
    #[cfg(not(feature = "mpi"))]
    let comm: &dyn Communicator = &Single;
    if let Err(e) = run(cli, comm) {
        if comm.size() > 1 {
            eprintln!("bnn-train: rank {}: {e:#}", comm.rank());
        } else {
            eprintln!("bnn-train: {e:#}");
        }
        comm.abort(1);
    }
}
