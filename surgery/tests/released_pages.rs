//! `prune` of a checkpoint of many copy blocks leaves no page of the source mapped, whether the
//! two halves of each posterior are copied together (block `b` of mu, then of rho, in one job:
//! the copy releases both) or apart (a tensor stored between them: each half's edit reads the
//! other half and must release what it read).
#![cfg(target_os = "linux")]

use std::path::Path;
use std::sync::Arc;

use formats::bundle::BundleWriter;
use formats::checkpoint::Checkpoint;
use formats::synthetic::{mapped_pages, SplitMix64};
use formats::DType;
use surgery::prune::{prune_checkpoint_to_bundle, Criterion, Mode, PruneJob, PruneOptions};
use surgery::snr::Part;

/// 1024 x 4096 float32 weights: 16 MiB a half, 64 copy blocks.
const SHAPE: [u64; 2] = [1024, 4096];

/// Writes one posterior (with an optimizer slot stored between its halves when `apart`) and
/// returns its keys.
fn write(prefix: &Path, apart: bool) -> [&'static str; 2] {
    let keys = ["den_1/kernel_posterior_loc", "den_1/kernel_posterior_untransformed_scale"];
    let n = (SHAPE[0] * SHAPE[1]) as usize;
    let mut rng = SplitMix64(11);
    let mut values = |lo: f32, hi: f32| -> Vec<u8> { (0..n).flat_map(|_| rng.uniform(lo, hi).to_le_bytes()).collect() };
    let (mu, rho) = (values(-0.3, 0.3), values(-9.0, -2.0));
    let mut w = BundleWriter::create(prefix).expect("create");
    w.add_bytes(keys[0], DType::Float32, &SHAPE, &mu).expect("mu");
    if apart {
        // Sorts between the halves: `loc/Adam` < `untransformed_scale`.
        w.add_bytes("den_1/kernel_posterior_loc/Adam", DType::Float32, &SHAPE, &mu).expect("slot");
    }
    w.add_bytes(keys[1], DType::Float32, &SHAPE, &rho).expect("rho");
    w.finish().expect("finish");
    keys
}

/// Prunes a freshly written checkpoint to a bundle; returns the pages of each half still mapped.
fn pages_left_after_prune(apart: bool) -> Vec<usize> {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("model.ckpt-1");
    let keys = write(&src, apart);
    let ckpt = Arc::new(Checkpoint::open(&src).expect("open"));
    let pair = ckpt.variables().iter().position(|v| v.key == keys[0]).and_then(|i| ckpt.variables().get(i + 1));
    assert_eq!(pair.map(|v| v.key.as_str()) == Some(keys[1]), !apart, "the halves are stored next to each other unless apart");
    let job = PruneJob {
        options: PruneOptions { criterion: Criterion::Threshold(1.0), mode: Mode::Zero },
        layers: None,
        parts: vec![Part::Kernel],
    };
    let report = prune_checkpoint_to_bundle(&ckpt, &dir.path().join("out/model.ckpt-1"), &job).expect("prune");
    assert!(report.kept > 0 && report.kept < report.total, "some weights pruned, some kept");
    keys.iter()
        .map(|key| {
            let data = ckpt.read_unverified(key).expect("read");
            mapped_pages(data.bytes().expect("numeric")).expect("pagemap")
        })
        .collect()
}

#[test]
fn pruning_halves_copied_together_leaves_no_source_page_mapped() {
    let left = pages_left_after_prune(false);
    assert!(left.iter().all(|&p| p <= 2), "{left:?} pages of mu, rho still mapped");
}

#[test]
fn pruning_halves_copied_apart_leaves_no_source_page_mapped() {
    let left = pages_left_after_prune(true);
    assert!(left.iter().all(|&p| p <= 2), "{left:?} pages of mu, rho still mapped");
}
