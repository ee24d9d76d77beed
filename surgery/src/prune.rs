//! Pruning by signal-to-noise ratio: choose which weights go (a threshold, or a sparsity with
//! the threshold derived from it), and what a pruned weight becomes (`zero` or `bprune` mode).

use std::sync::Arc;

use formats::checkpoint::Checkpoint;
use formats::convert::Edits;
use formats::DType;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::mask::{KeepMask, MaskEdit};
use crate::snr::{snr_values, Target};
use crate::softplus::ZERO_SCALE_RHO;
use crate::threshold::keep_f32;
use crate::values::{element_bytes, to_f64};

/// Metadata entry holding the pruning report of a safetensors output.
pub const META_PRUNE: &str = "bnn_prune";

/// What [`prune_to_bundle`] appends to the output prefix for its report.
pub const PRUNE_REPORT_SUFFIX: &str = ".prune.json";

/// BPrune's reading of a zero threshold: SNR <= 1e-44 (the smallest float32 subnormals).
const BPRUNE_ZERO_THRESHOLD: f64 = 1e-44;

/// Which weights to prune.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Criterion {
    /// Every weight with SNR <= T.
    Threshold(f64),
    /// The lowest-SNR fraction of the weights, over all targets together or in each one.
    Sparsity {
        /// Fraction to prune, in [0, 1].
        fraction: f64,
        /// The same fraction in every layer instead of overall.
        per_layer: bool,
    },
}

/// What a pruned weight becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// mu = 0 and a scale that is exactly 0 after softplus: every sample of the weight is 0.
    Zero,
    /// BPrune's rule: mu = 0 and rho = 0 (so sigma = ln 2 remains), for comparison with studies
    /// made with BPrune.
    Bprune,
}

/// Everything that decides a pruning.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PruneOptions {
    /// Which weights.
    pub criterion: Criterion,
    /// What they become.
    pub mode: Mode,
}

/// The outcome for one posterior.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetReport {
    /// Layer name.
    pub layer: String,
    /// `kernel` or `bias`.
    pub part: &'static str,
    /// Weights in the tensor.
    pub total: usize,
    /// Weights kept.
    pub kept: usize,
    /// Weights pruned.
    pub pruned: usize,
    /// BPrune's reported non-zero count: `count_nonzero(mu) * 2` after pruning (mu and rho).
    pub bprune_nonzero: usize,
}

/// The outcome of a pruning.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PruneReport {
    /// The options used.
    pub options: PruneOptions,
    /// The SNR threshold in effect (for a sparsity: the largest pruned SNR; per layer, the
    /// largest over layers).
    pub threshold: f64,
    /// Per posterior.
    pub layers: Vec<TargetReport>,
    /// Weights in all targets.
    pub total: usize,
    /// Weights kept.
    pub kept: usize,
    /// Fraction pruned.
    pub sparsity: f64,
}

/// A decided pruning: which weights stay, the edits that write it, and the report.
#[derive(Debug, Clone)]
pub struct Pruning {
    /// Targets in order.
    pub targets: Vec<Target>,
    /// For each target, which weights are kept.
    pub keep: Vec<Arc<KeepMask>>,
    /// What pruned mu and rho elements become, for each target (little-endian elements).
    pub fills: Vec<(Vec<u8>, Vec<u8>)>,
    /// Masking edits of every mu and rho, applied as the checkpoint streams to its output,
    /// and the report as metadata.
    pub edits: Edits,
    /// What was done.
    pub report: PruneReport,
}

/// The threshold applied: BPrune reads T = 0 as SNR <= 1e-44.
fn effective_threshold(t: f64, mode: Mode) -> f64 {
    if mode == Mode::Bprune && t == 0.0 {
        BPRUNE_ZERO_THRESHOLD
    } else {
        t
    }
}

/// Which weights to keep for each target (SNR arrays in target order).
#[allow(clippy::neg_cmp_op_on_partial_ord)] // `!(s <= t)` on purpose: see below.
fn keep_masks(snrs: &[Vec<f64>], criterion: Criterion, mode: Mode) -> (Vec<Vec<bool>>, f64) {
    match criterion {
        Criterion::Threshold(t) => {
            let t = effective_threshold(t, mode);
            // `!(s <= t)` keeps NaN SNRs (undefined) rather than pruning them silently.
            (snrs.iter().map(|s| s.iter().map(|v| !(*v <= t)).collect()).collect(), t)
        }
        Criterion::Sparsity { fraction, per_layer: true } => {
            let mut threshold = f64::NEG_INFINITY;
            let masks = snrs
                .iter()
                .map(|s| {
                    let (mask, t) = lowest_fraction(&[s.as_slice()], fraction);
                    threshold = threshold.max(t);
                    mask.into_iter().next().unwrap_or_default()
                })
                .collect();
            (masks, threshold)
        }
        Criterion::Sparsity { fraction, per_layer: false } => {
            let all: Vec<&[f64]> = snrs.iter().map(Vec::as_slice).collect();
            lowest_fraction(&all, fraction)
        }
    }
}

/// Prunes exactly round(fraction * n) weights, those of lowest SNR (ties broken by position),
/// so the sparsity is hit to within one weight even when many SNRs are equal. Returns the
/// masks and the largest pruned SNR. Linear time: a selection, not a sort, finds that SNR.
fn lowest_fraction(groups: &[&[f64]], fraction: f64) -> (Vec<Vec<bool>>, f64) {
    let n: usize = groups.iter().map(|g| g.len()).sum();
    let k = ((fraction * n as f64).round() as usize).min(n);
    let mut masks: Vec<Vec<bool>> = groups.iter().map(|s| vec![true; s.len()]).collect();
    if k == 0 {
        return (masks, f64::NEG_INFINITY);
    }
    let mut all: Vec<f64> = groups.iter().flat_map(|g| g.iter().copied()).collect();
    let (_, &mut largest, _) = all.select_nth_unstable_by(k - 1, f64::total_cmp);
    drop(all);
    // Everything below the k-th SNR goes, and of the SNRs equal to it the first ones.
    let below = groups.iter().flat_map(|g| g.iter()).filter(|s| s.total_cmp(&largest).is_lt()).count();
    let mut ties = k - below;
    for (mask, snr) in masks.iter_mut().zip(groups) {
        for (keep, s) in mask.iter_mut().zip(snr.iter()) {
            match s.total_cmp(&largest) {
                std::cmp::Ordering::Less => *keep = false,
                std::cmp::Ordering::Equal if ties > 0 => {
                    *keep = false;
                    ties -= 1;
                }
                _ => {}
            }
        }
    }
    (masks, largest)
}

/// Decides the pruning of `targets` in `ckpt`. Nothing is copied: the posteriors are read where
/// they are stored, and the returned edits mask them while a conversion streams them out.
pub fn prune(ckpt: &Checkpoint, targets: &[Target], options: &PruneOptions) -> Result<Pruning> {
    if let Criterion::Sparsity { fraction, .. } = options.criterion {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(Error::invalid(ckpt.path(), format!("sparsity {fraction} is not between 0 and 1")));
        }
    }
    let mut stored = Vec::with_capacity(targets.len());
    for t in targets {
        // Unverified: every output streams these tensors again, checksum-verified, and fails
        // (writing nothing) if they are damaged.
        let (mu, rho) = (ckpt.read_unverified(&t.loc_key)?, ckpt.read_unverified(&t.rho_key)?);
        let numeric = |key: &str| Error::invalid(ckpt.path(), format!("'{key}' is not numeric"));
        if mu.bytes().is_none() {
            return Err(numeric(&t.loc_key));
        }
        if rho.bytes().is_none() {
            return Err(numeric(&t.rho_key));
        }
        if mu.nbytes() != rho.nbytes() {
            return Err(Error::invalid(ckpt.path(), format!("'{}' and its scale differ in size", t.loc_key)));
        }
        stored.push((mu, rho));
    }
    /// The bytes of a tensor checked numeric above.
    fn bytes<'a>(d: &'a formats::TensorData<'_>) -> &'a [u8] {
        d.bytes().unwrap_or_default()
    }
    let (decided, threshold): (Vec<(KeepMask, usize)>, f64) = match options.criterion {
        // The common case needs no f64 copies of the posteriors: see `threshold`.
        Criterion::Threshold(t) if targets.iter().all(|t| t.dtype == DType::Float32) => {
            let t = effective_threshold(t, options.mode);
            (stored.iter().map(|(mu, rho)| keep_f32(bytes(mu), bytes(rho), t)).collect(), t)
        }
        _ => {
            let mut snrs = Vec::with_capacity(targets.len());
            for (t, (mu, rho)) in targets.iter().zip(&stored) {
                let not_float = || Error::invalid(ckpt.path(), format!("'{}' is {}, not a float type", t.loc_key, t.dtype));
                let (mu, rho) = (to_f64(t.dtype, bytes(mu)).ok_or_else(not_float)?, to_f64(t.dtype, bytes(rho)).ok_or_else(not_float)?);
                snrs.push(snr_values(t.dtype, &mu, &rho));
            }
            let (masks, threshold) = keep_masks(&snrs, options.criterion, options.mode);
            let decided = masks
                .iter()
                .zip(targets.iter().zip(&stored))
                .map(|(keep, (t, (mu, _)))| {
                    let width = t.dtype.size().unwrap_or(1);
                    let nonzero = bytes(mu).chunks_exact(width).zip(keep).filter(|(m, k)| **k && element_nonzero(m)).count();
                    (KeepMask::from_bools(keep), nonzero)
                })
                .collect();
            (decided, threshold)
        }
    };

    let rho_value = match options.mode {
        Mode::Zero => ZERO_SCALE_RHO,
        Mode::Bprune => 0.0,
    };
    let (mut keeps, mut fills, mut edits) = (Vec::new(), Vec::new(), Edits::default());
    let mut layers = Vec::new();
    for (t, (keep, nonzero_mu)) in targets.iter().zip(decided) {
        let (Some(zero), Some(rho_fill)) = (element_bytes(t.dtype, 0.0), element_bytes(t.dtype, rho_value)) else {
            return Err(Error::invalid(ckpt.path(), format!("'{}' is {}, not a float type", t.loc_key, t.dtype)));
        };
        let kept = keep.kept();
        layers.push(TargetReport {
            layer: t.layer.clone(),
            part: t.part.name(),
            total: keep.len(),
            kept,
            pruned: keep.len() - kept,
            bprune_nonzero: 2 * nonzero_mu,
        });
        let keep = Arc::new(keep);
        edits.values.insert(t.loc_key.clone(), Arc::new(MaskEdit::new(keep.clone(), zero.clone())));
        edits.values.insert(t.rho_key.clone(), Arc::new(MaskEdit::new(keep.clone(), rho_fill.clone())));
        keeps.push(keep);
        fills.push((zero, rho_fill));
    }
    let total: usize = layers.iter().map(|l| l.total).sum();
    let kept: usize = layers.iter().map(|l| l.kept).sum();
    let report = PruneReport {
        options: options.clone(),
        threshold,
        layers,
        total,
        kept,
        sparsity: if total == 0 { 0.0 } else { (total - kept) as f64 / total as f64 },
    };
    edits
        .metadata
        .insert(META_PRUNE.to_string(), serde_json::to_string(&report).map_err(|e| Error::invalid(ckpt.path(), e.to_string()))?);
    Ok(Pruning { targets: targets.to_vec(), keep: keeps, fills, edits, report })
}

/// A complete pruning request: the rule and which posteriors it applies to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PruneJob {
    /// Threshold or sparsity, and mode.
    pub options: PruneOptions,
    /// Only these layers (`None`: every layer with a posterior scale).
    pub layers: Option<Vec<String>>,
    /// Kernels, and biases when asked for.
    pub parts: Vec<crate::snr::Part>,
}

/// Prunes the checkpoint at `input` into a TensorFlow checkpoint at `prefix` (every tensor
/// kept, `.meta` and manifests copied) with the report beside it as `<prefix>.prune.json`.
pub fn prune_to_bundle(input: &std::path::Path, prefix: &std::path::Path, job: &PruneJob) -> Result<PruneReport> {
    prune_checkpoint_to_bundle(&Checkpoint::open(input)?, prefix, job)
}

/// [`prune_to_bundle`] of an opened checkpoint. Folders it creates for the output are removed
/// again if it fails.
pub fn prune_checkpoint_to_bundle(ckpt: &Checkpoint, prefix: &std::path::Path, job: &PruneJob) -> Result<PruneReport> {
    let targets = crate::snr::select_targets(ckpt, job.layers.as_deref(), &job.parts)?;
    let pruning = prune(ckpt, &targets, &job.options)?;
    let folder = formats::output_file::create_output_dir(formats::output_file::parent_dir(prefix))?;
    formats::convert::checkpoint_to_bundle(ckpt, prefix, &pruning.edits)?;
    let json = serde_json::to_string_pretty(&pruning.report).map_err(|e| Error::invalid(prefix, e.to_string()))?;
    let report_path = report_path(prefix);
    formats::bundle::write_atomically(&report_path, |w| {
        use std::io::Write;
        w.write_all(json.as_bytes()).map_err(|e| formats::Error::io(&report_path, e))
    })?;
    folder.keep();
    Ok(pruning.report)
}

/// Where [`prune_to_bundle`] puts the report of the checkpoint at `prefix`.
pub fn report_path(prefix: &std::path::Path) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("{}{PRUNE_REPORT_SUFFIX}", prefix.display()))
}

/// Whether a little-endian float element is non-zero (either sign of zero counts as zero).
fn element_nonzero(element: &[u8]) -> bool {
    match element.split_last() {
        // Little-endian: the sign bit is the top bit of the last byte.
        Some((last, rest)) => last & 0x7f != 0 || rest.iter().any(|b| *b != 0),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_equals_sorting_every_weight() {
        // Reference: sort all (SNR, group, position) and prune the first k.
        let groups: Vec<Vec<f64>> = (0..3)
            .map(|g| (0..257).map(|i| if (i + g) % 7 == 0 { f64::NAN } else { ((i * 37 + g * 11) % 23) as f64 / 4.0 }).collect())
            .collect();
        let views: Vec<&[f64]> = groups.iter().map(Vec::as_slice).collect();
        for fraction in [0.0, 0.01, 0.3, 0.5, 0.77, 0.9, 1.0] {
            let mut order: Vec<(usize, usize)> = (0..3).flat_map(|g| (0..257).map(move |i| (g, i))).collect();
            order.sort_by(|a, b| groups[a.0][a.1].total_cmp(&groups[b.0][b.1]).then(a.cmp(b)));
            let k = (fraction * order.len() as f64).round() as usize;
            let mut want = vec![vec![true; 257]; 3];
            for &(g, i) in &order[..k] {
                want[g][i] = false;
            }
            let (got, t) = lowest_fraction(&views, fraction);
            assert_eq!(got, want, "fraction {fraction}");
            if k > 0 {
                let (g, i) = order[k - 1];
                assert_eq!(t.to_bits(), groups[g][i].to_bits());
            }
        }
    }

    #[test]
    fn sparsity_is_exact_despite_ties() {
        let snr = vec![vec![0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0]];
        let (m, t) = keep_masks(&snr, Criterion::Sparsity { fraction: 0.25, per_layer: false }, Mode::Zero);
        assert_eq!(m[0].iter().filter(|k| !**k).count(), 2, "2 of 8 pruned although 4 tie at 0");
        assert_eq!(t, 0.0);
        let (m, t) = keep_masks(&snr, Criterion::Sparsity { fraction: 0.75, per_layer: false }, Mode::Zero);
        assert_eq!(m[0], vec![false, false, false, false, false, false, true, true]);
        assert_eq!(t, 2.0);
    }

    #[test]
    fn per_layer_and_global_differ() {
        let snr = vec![vec![1.0, 2.0], vec![10.0, 20.0]];
        let (g, _) = keep_masks(&snr, Criterion::Sparsity { fraction: 0.5, per_layer: false }, Mode::Zero);
        assert_eq!(g, vec![vec![false, false], vec![true, true]]);
        let (p, _) = keep_masks(&snr, Criterion::Sparsity { fraction: 0.5, per_layer: true }, Mode::Zero);
        assert_eq!(p, vec![vec![false, true], vec![false, true]]);
    }

    #[test]
    fn thresholds_and_bprune_zero() {
        let snr = vec![vec![0.0, 1e-45, 0.5, 1.0, 1.5, f64::NAN]];
        let (m, _) = keep_masks(&snr, Criterion::Threshold(1.0), Mode::Zero);
        assert_eq!(m[0], vec![false, false, false, false, true, true]);
        let (m, t) = keep_masks(&snr, Criterion::Threshold(0.0), Mode::Bprune);
        assert_eq!(t, 1e-44);
        assert_eq!(m[0], vec![false, false, true, true, true, true]);
        let (m, _) = keep_masks(&snr, Criterion::Threshold(0.0), Mode::Zero);
        assert_eq!(m[0], vec![false, true, true, true, true, true]);
    }

    #[test]
    fn signed_zero_is_zero() {
        assert!(!element_nonzero(&(-0.0f32).to_le_bytes()));
        assert!(!element_nonzero(&0.0f32.to_le_bytes()));
        assert!(element_nonzero(&1e-45f32.to_le_bytes()));
    }
}
