//! `inspect`: what is in a checkpoint or safetensors file.

use std::path::PathBuf;

use anyhow::{Context, Result};
use formats::checkpoint::{Checkpoint, Format};
use formats::convert::verify_all;
use serde_json::json;

/// Arguments of `inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint folder, prefix, .index file, or .safetensors file.
    input: PathBuf,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
    /// Also read every tensor and verify its checksum.
    #[arg(long)]
    verify: bool,
}

fn shape_text(shape: &[u64]) -> String {
    format!("[{}]", shape.iter().map(u64::to_string).collect::<Vec<_>>().join(", "))
}

/// Runs `inspect`.
pub fn run(a: Args) -> Result<()> {
    let ckpt = Checkpoint::open(&a.input)?;
    let shards: Vec<(PathBuf, bool)> = ckpt
        .bundle()
        .map(|b| (0..b.header().num_shards).map(|i| b.shard_path(i)).map(|p| { let ok = p.is_file(); (p, ok) }).collect())
        .unwrap_or_default();
    let manifest_check = ckpt.check_manifest();
    if a.json {
        let out = json!({
            "path": ckpt.path(),
            "format": ckpt.format(),
            "global_step": ckpt.global_step(),
            "shards": shards.iter().map(|(p, ok)| json!({"path": p, "present": ok})).collect::<Vec<_>>(),
            "tensors": ckpt.variables(),
            "layers": ckpt.layers(),
            "non_bayesian": ckpt.non_bayesian(),
            "non_bayesian_counts": crate::output::non_bayesian_counts(&ckpt.non_bayesian()),
            "manifest": ckpt.manifest(),
            "manifest_error": manifest_check.as_ref().err().map(|e| e.to_string()),
            "metadata": ckpt.metadata(),
        });
        println!("{}", serde_json::to_string_pretty(&out).context("serializing")?);
    } else {
        print_text(&ckpt, &shards);
    }
    manifest_check?;
    if a.verify {
        let bytes = verify_all(&ckpt)?;
        if !a.json {
            println!("verified: {bytes} bytes, every checksum matches");
        }
    }
    Ok(())
}

fn print_text(ckpt: &Checkpoint, shards: &[(PathBuf, bool)]) {
    let kind = match ckpt.format() {
        Format::TfBundle => "TensorFlow checkpoint",
        Format::Safetensors => "safetensors",
    };
    println!("{kind}: {}", ckpt.path().display());
    if let Some(step) = ckpt.global_step() {
        println!("global step: {step}");
    }
    for (p, ok) in shards {
        println!("data shard: {} {}", p.display(), if *ok { "" } else { "(MISSING)" });
    }
    let rows: Vec<[String; 6]> = ckpt
        .variables()
        .iter()
        .map(|v| {
            [
                v.key.clone(),
                v.info.dtype.to_string(),
                shape_text(&v.info.shape),
                v.info.nbytes.to_string(),
                v.info.shard.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                v.kind.tag().to_string(),
            ]
        })
        .collect();
    let header = ["NAME", "DTYPE", "SHAPE", "BYTES", "SHARD", "KIND"].map(String::from).to_vec();
    let rows: Vec<Vec<String>> = std::iter::once(header).chain(rows.into_iter().map(|r| r.to_vec())).collect();
    print!("{}", crate::table(&rows));
    let total: u64 = ckpt.variables().iter().map(|v| v.info.nbytes).sum();
    println!("{} tensors, {total} bytes", ckpt.variables().len());
    let layers = ckpt.layers();
    if !layers.is_empty() {
        println!("layers:");
        for l in layers {
            let params: Vec<&str> = l.params.keys().map(|p| p.suffix()).collect();
            println!("  {} ({}): {}", l.name, if l.is_bayesian() { "Bayesian" } else { "deterministic" }, params.join(", "));
        }
    }
    crate::output::print_non_bayesian(&ckpt.non_bayesian());
    let m = ckpt.manifest();
    if let Some(f) = &m.layer_names_file {
        let check = match ckpt.check_manifest() {
            Ok(()) => "all stored".to_string(),
            Err(_) => "SOME MISSING (see the error below)".to_string(),
        };
        println!("manifest: {} lists {} trainable variables: {check}", f.display(), m.layer_names.len());
    }
    if let Some(f) = &m.ops_file {
        println!(
            "manifest: {} lists {} ops; input {}, labels {}",
            f.display(),
            m.num_ops,
            m.input_op.as_deref().unwrap_or("?"),
            m.label_op.as_deref().unwrap_or("?")
        );
    }
}
