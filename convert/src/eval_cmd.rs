//! `eval`: accuracy, mean held-out log-likelihood, predictive entropy and time of a BNN on a
//! labelled data set, with the native engine; plus the model and data loading that
//! `export-onnx` and `sweep` share.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use model::arch::{Arch, Posterior};
use formats::checkpoint::Checkpoint;
use formats::checkpoint_state::saved_model_of;
use formats::dataset::{self, Array};
use model::meta_graph::{meta_path, read_arch};
use serde_json::json;

use model::engine::metrics::{evaluate, Metrics};
use model::engine::{Estimator, Model, SparseKernels};

/// Model selection shared by `eval`, `export-onnx` and `sweep`.
#[derive(clap::Args, Clone)]
pub struct ModelArgs {
    /// Checkpoint folder, prefix, .index file, or .safetensors file.
    pub input: PathBuf,
    /// Architecture: a JSON file (docs/architecture.md) or a preset (bnn-fc, bnn-conv,
    /// vgg-16, resnet-18). Default: read from the checkpoint's `.meta`.
    #[arg(long)]
    pub arch: Option<String>,
}

impl ModelArgs {
    /// The architecture file read, when `--arch` names a file rather than a preset.
    pub fn arch_file(&self) -> Option<&Path> {
        self.arch.as_deref().map(Path::new).filter(|p| p.is_file())
    }

    /// Every file read: the checkpoint's and the architecture file.
    pub fn input_files(&self) -> Result<formats::input_files::InputFiles> {
        let mut inputs = crate::output::checkpoint_files(&self.input)?;
        if let Some(arch) = self.arch_file() {
            inputs.add_file(arch);
        }
        Ok(inputs)
    }
}

/// Opens the checkpoint, finds its architecture and loads the weights it uses.
pub fn load_model(m: &ModelArgs) -> Result<(Arch, Vec<Posterior>)> {
    let ckpt = Checkpoint::open(&m.input)?;
    let arch = match (&m.arch, saved_model_of(ckpt.path())) {
        (Some(spec), _) => Arch::load(spec)?,
        // A Keras SavedModel says what it is in its Keras metadata.
        (None, Some(saved_model)) => model::keras_metadata::read_arch(&saved_model)?,
        (None, None) => {
            let meta = meta_path(ckpt.path());
            if !meta.is_file() {
                bail!("{}: no .meta graph next to the checkpoint; give the network with --arch FILE or a preset", meta.display());
            }
            read_arch(&meta)?
        }
    };
    Ok(arch.bind(&ckpt)?)
}

/// The labelled data set to evaluate on: shared by `eval` and `sweep`.
#[derive(clap::Args)]
pub struct DataArgs {
    /// Inputs: .npy (float16/32/64 as is, integers as is, uint8 / 255), .npz (arrays `x` and
    /// `y`, or --x-key / --y-key), MNIST IDX images (name *idx*ubyte), or a CIFAR-10 binary
    /// batch (.bin).
    #[arg(long)]
    pub data: PathBuf,
    /// Labels (.npy of any integer dtype, .npz, or IDX); default: derived from --data
    /// (`*_x.npy` -> `*_y.npy`, `*-images-idx3-ubyte` -> `*-labels-idx1-ubyte`; a .npz and
    /// CIFAR have them inline).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Name of the inputs array in a .npz.
    #[arg(long, default_value = "x")]
    pub x_key: String,
    /// Name of the labels array in a .npz.
    #[arg(long, default_value = "y")]
    pub y_key: String,
}

impl DataArgs {
    /// Adds the data files read to `inputs`.
    pub fn add_to(&self, inputs: &mut formats::input_files::InputFiles) {
        inputs.add_file(&self.data);
        if let Some(l) = &self.labels {
            inputs.add_file(l);
        }
    }

    /// Reads the data set for a model with `example` inputs and `classes` outputs.
    pub fn read(&self, example: usize, classes: usize) -> Result<Data> {
        read_data(self, example, classes)
    }
}

/// Arguments of `eval`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// Monte Carlo samples; 0 evaluates the mean network (weights = mu).
    #[arg(long, default_value_t = 100)]
    pub samples: usize,
    /// Seed of the Monte Carlo draws.
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Monte Carlo estimator: flipout (as TFP Flipout layers) or reparam.
    #[arg(long, default_value = "flipout")]
    pub estimator: String,
    /// CSR kernels: auto (for pruned layers whose CSR kernel is timed faster than the dense path at load), always, never.
    /// The two paths sum in different orders, so with auto the last digits of the results can
    /// differ from one run to the next; always or never give the same bits every run.
    #[arg(long, default_value = "auto")]
    pub sparse: String,
    /// Predictions to time: with more than one, an untimed prediction first warms the
    /// caches, the buffers and the threads, and the median time is reported (as benchmarks
    /// time a TensorFlow session or onnxruntime: warmed up, then several runs). The
    /// predictions are the same (same seed).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeats: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses `auto|always|never`.
pub fn sparse_kernels(s: &str) -> Result<SparseKernels> {
    Ok(match s {
        "auto" => SparseKernels::Auto,
        "always" => SparseKernels::Always,
        "never" => SparseKernels::Never,
        _ => bail!("--sparse must be auto, always or never, not '{s}'"),
    })
}

/// A labelled data set, inputs flattened per example.
pub struct Data {
    /// `[n, example]` values.
    pub x: Vec<f32>,
    /// `n` labels.
    pub y: Vec<i64>,
}

/// Result of one evaluation.
pub struct Evaluation {
    /// Scores.
    pub metrics: Metrics,
    /// Wall time of the prediction (the median over the timed repeats), seconds.
    pub seconds: f64,
    /// CPU time of the process (all threads) during the prediction (the median), seconds:
    /// on a shared machine, steadier than the wall time for comparing builds.
    pub cpu_seconds: f64,
}

/// CPU time (user + system) of this process so far, seconds.
fn process_cpu_seconds() -> f64 {
    // SAFETY: rusage is plain integers, for which all zeros is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage to the valid pointer it is given.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return f64::NAN;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// Predicts `data` with `model` (mean network when `samples == 0`) and scores it.
pub fn run_eval(model: &Model, data: &Data, samples: usize, seed: u64, est: Estimator) -> Result<Evaluation> {
    run_eval_timed(model, data, samples, seed, est, 1)
}

/// [`run_eval`] timed over `repeats` predictions, after an untimed one when `repeats > 1`:
/// the median wall and CPU times (`eval --repeats`).
pub fn run_eval_timed(model: &Model, data: &Data, samples: usize, seed: u64, est: Estimator, repeats: u32) -> Result<Evaluation> {
    let predict = || -> Result<Vec<f64>> { Ok(if samples == 0 { model.predict_mean(&data.x)? } else { model.predict_mc(&data.x, samples, seed, est)?.mean }) };
    // Start the worker threads before the clock (once per process, as TensorFlow's session
    // and onnxruntime's are made before theirs): the clock times the prediction only.
    rayon::broadcast(|_| ());
    if repeats > 1 {
        predict()?;
    }
    let (mut walls, mut cpus, mut probs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeats.max(1) {
        let (t, cpu) = (Instant::now(), process_cpu_seconds());
        probs = predict()?;
        walls.push(t.elapsed().as_secs_f64());
        cpus.push(process_cpu_seconds() - cpu);
    }
    Ok(Evaluation { metrics: evaluate(&probs, model.classes(), &data.y), seconds: median(&mut walls), cpu_seconds: median(&mut cpus) })
}

/// The median of `v` (the upper one of an even count), `NaN` when empty.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs `eval`.
pub fn run(a: Args) -> Result<()> {
    mem_trace("start");
    let (arch, posts) = load_model(&a.model)?;
    mem_trace("weights read");
    let est = match a.estimator.as_str() {
        "flipout" => Estimator::Flipout,
        "reparam" => Estimator::Reparameterization,
        other => bail!("--estimator must be flipout or reparam, not '{other}'"),
    };
    // The data before the model where the shapes allow: `--sparse auto` times the pruned
    // layers on batches of its size. Otherwise the model's build says what is wrong.
    let example: usize = arch.input_shape.iter().product();
    let data = match model::arch::shape_check(&arch, &posts).as_deref() {
        Ok(&[classes]) => Some(a.data.read(example, classes)?),
        _ => None,
    };
    let batch = data.as_ref().map_or(model::engine::PROBE_BATCH, |d| d.y.len());
    // The model takes the loaded weights over: one copy in memory.
    let model = Model::for_batch(&arch, posts, sparse_kernels(&a.sparse)?, batch).with_context(|| a.model.input.display().to_string())?;
    mem_trace("model built");
    let data = match data {
        Some(d) => d,
        None => a.data.read(model.example_len(), model.classes())?,
    };
    mem_trace("data read");
    let e = run_eval_timed(&model, &data, a.samples, a.seed, est, a.repeats)?;
    mem_trace("predicted");
    let (sparse, layers) = model.sparse_layers();
    let m = e.metrics;
    if a.json {
        let out = json!({
            "n": m.n, "samples": a.samples, "mode": if a.samples == 0 { "mean" } else { "mc" },
            "accuracy": m.accuracy, "mean_log_likelihood": m.mean_log_likelihood,
            "mean_predictive_entropy": m.mean_entropy, "seconds": e.seconds, "cpu_seconds": e.cpu_seconds, "repeats": a.repeats,
            "sparse_layers": sparse, "layers": layers, "macs_per_example": model.macs_per_example(),
            "nominal_flops": model.nominal_flops(m.n, a.samples),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let mode = if a.samples == 0 { "mean network".to_string() } else { format!("{} MC samples", a.samples) };
        println!("{} examples, {mode}, {sparse}/{layers} layers sparse", m.n);
        println!("accuracy                 {:.4}", m.accuracy);
        println!("mean log-likelihood      {:.4}", m.mean_log_likelihood);
        println!("mean predictive entropy  {:.4}", m.mean_entropy);
        println!("seconds                  {:.4}", e.seconds);
    }
    Ok(())
}

/// With `BNN_MEM_TRACE` set, prints this process's memory at `stage` to stderr: the peak
/// (VmHWM) and current resident set, split into anonymous (heap) and file-backed (mapped
/// checkpoint, binary) pages; for accounting `eval`'s peak (docs/performance.md).
fn mem_trace(stage: &str) {
    if std::env::var_os("BNN_MEM_TRACE").is_none() {
        return;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok()).map_or(-1.0, |kb| kb as f64 / 1024.0)
    };
    eprintln!(
        "mem {stage}: VmHWM {:.1} MiB, VmRSS {:.1} (RssAnon {:.1}, RssFile {:.1}) MiB",
        field("VmHWM:"),
        field("VmRSS:"),
        field("RssAnon:"),
        field("RssFile:")
    );
}

// ---- data files (readers: formats::dataset) ---------------------------------------------

fn is_idx(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains("idx") && n.contains("ubyte"))
}

fn is_npz(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npz"))
}

/// Reads one array: the whole file (.npy, IDX), or array `key` of a .npz.
fn read_array(path: &Path, key: &str) -> Result<Array> {
    Ok(if is_npz(path) {
        let mut npz = dataset::Npz::open(path)?;
        if !npz.contains(key) {
            bail!("{}: no array '{key}' (it has {}); name them with --x-key and --y-key", path.display(), npz.names().join(", "));
        }
        npz.array(key)?
    } else if is_idx(path) {
        dataset::read_idx(path)?
    } else {
        dataset::read_npy(path)?
    })
}

/// Reads inputs and labels; inputs are reshaped to the model's example size.
/// `.npy` (floats and integers as is, uint8 / 255), `.npz` (the same, by array name), MNIST
/// IDX (/ 255), or CIFAR-10 binary batches (`.bin`, labels inline, NHWC / 255).
pub fn read_data(args: &DataArgs, example: usize, classes: usize) -> Result<Data> {
    let data = args.data.as_path();
    let name = data.to_string_lossy();
    let (x, y, label_file) = if name.ends_with(".bin") {
        let c = dataset::read_cifar10(&[data.to_path_buf()])?;
        (c.images.into_iter().map(|b| f32::from(b) / 255.0).collect(), c.labels.into_iter().map(i64::from).collect(), data.to_path_buf())
    } else {
        let x = read_array(data, &args.x_key)?.into_inputs();
        let lp = match &args.labels {
            Some(l) => l.clone(),
            None if is_npz(data) => data.to_path_buf(),
            None => {
                let guess = name.replacen("_x.npy", "_y.npy", 1).replacen("-images-idx3-ubyte", "-labels-idx1-ubyte", 1);
                if guess == name {
                    bail!("{}: cannot derive the labels file name; give --labels", data.display());
                }
                PathBuf::from(guess)
            }
        };
        let labels = read_array(&lp, &args.y_key)?;
        let dtype = labels.dtype;
        let Some(y) = labels.into_labels() else {
            bail!("{}: labels must be integers, not {dtype}", lp.display());
        };
        (x, y, lp)
    };
    if example == 0 || x.len() != y.len() * example {
        bail!("{}: {} values for {} labels; the model takes {example} values per example", data.display(), x.len(), y.len());
    }
    if let Some(bad) = y.iter().find(|&&l| l < 0 || l as usize >= classes) {
        bail!("{}: label {bad} outside 0..{classes}", label_file.display());
    }
    Ok(Data { x, y })
}
