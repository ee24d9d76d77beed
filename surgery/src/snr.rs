//! Signal-to-noise ratios of Gaussian weight posteriors, SNR = |mu| / softplus(rho), and their
//! statistics per layer and overall.

use std::path::Path;

use formats::checkpoint::Checkpoint;
use formats::layout::Param;
use formats::DType;
use serde::Serialize;

use crate::error::{Error, Result};
use model::softplus::{softplus, softplus_f32};
use crate::values::to_f64;

/// Which posterior of a layer: its kernel or its bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// `kernel_posterior_loc` with `kernel_posterior_untransformed_scale`.
    Kernel,
    /// `bias_posterior_loc` with `bias_posterior_untransformed_scale`.
    Bias,
}

impl Part {
    fn params(self) -> (Param, Param) {
        match self {
            Part::Kernel => (Param::KernelLoc, Param::KernelRho),
            Part::Bias => (Param::BiasLoc, Param::BiasRho),
        }
    }

    /// `kernel` or `bias`.
    pub fn name(self) -> &'static str {
        match self {
            Part::Kernel => "kernel",
            Part::Bias => "bias",
        }
    }
}

/// A Gaussian posterior to analyse or prune: the stored keys of its mu and rho.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    /// Layer name.
    pub layer: String,
    /// Kernel or bias.
    pub part: Part,
    /// Stored key of mu.
    pub loc_key: String,
    /// Stored key of rho.
    pub rho_key: String,
    /// Element type of both.
    pub dtype: DType,
    /// Shape of both.
    pub shape: Vec<u64>,
}

/// The posteriors of `ckpt` to work on: the kernels of every layer with a posterior scale, or
/// of the named `layers`; `parts` adds biases (which need their own scale).
pub fn select_targets(ckpt: &Checkpoint, layers: Option<&[String]>, parts: &[Part]) -> Result<Vec<Target>> {
    let all = ckpt.layers();
    if let Some(wanted) = layers {
        if let Some(unknown) = wanted.iter().find(|w| !all.iter().any(|l| &l.name == *w)) {
            let known: Vec<&str> = all.iter().map(|l| l.name.as_str()).collect();
            return Err(Error::invalid(ckpt.path(), format!("no layer '{unknown}' (layers: {})", known.join(", "))));
        }
    }
    let mut targets = Vec::new();
    for layer in all.iter().filter(|l| layers.is_none_or(|w| w.contains(&l.name))) {
        for &part in parts {
            let (loc, rho) = part.params();
            let (Some(loc_key), Some(rho_key)) = (layer.get(loc), layer.get(rho)) else {
                if layers.is_some() {
                    return Err(Error::invalid(
                        ckpt.path(),
                        format!("layer '{}' has no {} posterior scale to prune by", layer.name, part.name()),
                    ));
                }
                continue;
            };
            let (l, r) = (ckpt.variable(loc_key)?, ckpt.variable(rho_key)?);
            if l.info.shape != r.info.shape || l.info.dtype != r.info.dtype || !l.info.dtype.is_float() {
                return Err(Error::invalid(
                    ckpt.path(),
                    format!("'{loc_key}' and '{rho_key}' are not float tensors of one type and shape"),
                ));
            }
            targets.push(Target {
                layer: layer.name.clone(),
                part,
                loc_key: loc_key.to_string(),
                rho_key: rho_key.to_string(),
                dtype: l.info.dtype,
                shape: l.info.shape.clone(),
            });
        }
    }
    if targets.is_empty() {
        return Err(Error::invalid(ckpt.path(), "no Bayesian layer (kernel_posterior_loc with kernel_posterior_untransformed_scale) found"));
    }
    Ok(targets)
}

/// mu and rho of a target, as f64.
pub fn read_posterior(ckpt: &Checkpoint, t: &Target) -> Result<(Vec<f64>, Vec<f64>)> {
    let read = |key: &str| -> Result<Vec<f64>> {
        let data = ckpt.read(key)?;
        let bytes = data.bytes().ok_or_else(|| Error::invalid(ckpt.path(), format!("'{key}' is not numeric")))?;
        to_f64(t.dtype, bytes).ok_or_else(|| Error::invalid(ckpt.path(), format!("'{key}' is {}, not a float type", t.dtype)))
    };
    Ok((read(&t.loc_key)?, read(&t.rho_key)?))
}

/// SNR of every weight, computed in the stored precision as TensorFlow would (f64 for f64
/// tensors, f32 otherwise) and widened exactly to f64.
pub fn snr_values(dtype: DType, mu: &[f64], rho: &[f64]) -> Vec<f64> {
    use rayon::prelude::*;
    // exp and ln_1p dominate pruning time: spread them over the cores.
    match dtype {
        DType::Float64 => mu.par_iter().zip(rho).map(|(m, r)| m.abs() / softplus(*r)).collect(),
        _ => mu.par_iter().zip(rho).map(|(m, r)| ((*m as f32).abs() / softplus_f32(*r as f32)) as f64).collect(),
    }
}

/// How many values lie at or under a threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CountUnder {
    /// The threshold T.
    pub threshold: f64,
    /// Values with SNR <= T.
    pub count: usize,
    /// `count` / total.
    pub fraction: f64,
}

/// Summary statistics of a set of SNR values.
///
/// Already-pruned weights (mu = 0 with rho = 0 or softplus(rho) = 0, see
/// [`crate::posterior::Weight::Pruned`]) and weights with a NaN or infinite mu or rho are
/// counted on their own and left out of every statistic: `count`, the extremes, the mean, the
/// quantiles and the threshold counts are over the remaining weights. A set with no such
/// weights has NaN statistics (serialized as `null`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// Number of values the statistics are over.
    pub count: usize,
    /// Weights already pruned (left out).
    pub pruned: usize,
    /// `pruned` / all weights (`count + pruned + undefined`).
    pub pruned_fraction: f64,
    /// Weights whose mu or rho is NaN or infinite (left out).
    pub undefined: usize,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Arithmetic mean (NaN where [`analyse_with`] was not asked for it, see [`Extras`]).
    pub mean: f64,
    /// (level, value) pairs, numpy's default 'linear' quantiles.
    pub quantiles: Vec<(f64, f64)>,
    /// Counts at or under each threshold.
    pub under: Vec<CountUnder>,
}

impl Stats {
    /// Records the weights left out of these statistics.
    fn with_left_out(mut self, pruned: usize, undefined: usize) -> Stats {
        let all = self.count + pruned + undefined;
        self.pruned = pruned;
        self.undefined = undefined;
        self.pruned_fraction = if all == 0 { 0.0 } else { pruned as f64 / all as f64 };
        self
    }
}

/// The two ranks (0-based, ascending) numpy's 'linear' quantile `q` of `n` values interpolates
/// between, and the weight of the upper one.
pub(crate) fn quantile_ranks(q: f64, n: usize) -> (usize, usize, f64) {
    let pos = q * (n - 1) as f64;
    let lo = pos.floor() as usize;
    (lo, (lo + 1).min(n - 1), pos - lo as f64)
}

/// numpy's _lerp: exact at both ends of the interval.
pub(crate) fn lerp(a: f64, b: f64, t: f64) -> f64 {
    if t >= 0.5 {
        b - (b - a) * (1.0 - t)
    } else {
        a + (b - a) * t
    }
}

/// Statistics of `values` (any order; NaNs are counted but sort last), holding them all: the
/// reference the streaming statistics of [`analyse`] equal, and the path for f64 posteriors.
pub fn stats(values: &[f64], levels: &[f64], thresholds: &[f64]) -> Stats {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let quantile = |q: f64| -> f64 {
        if n == 0 {
            return f64::NAN;
        }
        let (lo, hi, t) = quantile_ranks(q, n);
        lerp(sorted[lo], sorted[hi], t)
    };
    let under = thresholds
        .iter()
        .map(|&t| {
            let count = sorted.partition_point(|v| *v <= t);
            CountUnder { threshold: t, count, fraction: if n == 0 { 0.0 } else { count as f64 / n as f64 } }
        })
        .collect();
    Stats {
        count: n,
        pruned: 0,
        pruned_fraction: 0.0,
        undefined: 0,
        min: sorted.first().copied().unwrap_or(f64::NAN),
        max: sorted.last().copied().unwrap_or(f64::NAN),
        mean: if n == 0 { f64::NAN } else { values.iter().sum::<f64>() / n as f64 },
        quantiles: levels.iter().map(|&q| (q, quantile(q))).collect(),
        under,
    }
}

/// A tensor with NaN or infinite values, whose weights the statistics leave out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NonFinite {
    /// Stored key of the tensor.
    pub key: String,
    /// How many of its values are NaN or infinite.
    pub count: usize,
}

/// The SNR statistics of one posterior.
#[derive(Debug, Clone, Serialize)]
pub struct TargetSnr {
    /// The posterior.
    pub target: Target,
    /// Its statistics.
    pub stats: Stats,
    /// Histogram over log10(SNR): (bin lower edge, count); empty where [`analyse_with`] was
    /// not asked for it.
    pub histogram: Vec<(f64, usize)>,
}

/// SNR statistics of a whole checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct SnrReport {
    /// The checkpoint analysed.
    pub path: String,
    /// Per posterior.
    pub layers: Vec<TargetSnr>,
    /// Over all of them.
    pub overall: Stats,
    /// Tensors holding NaN or infinite values (their weights are left out of the statistics).
    pub non_finite: Vec<NonFinite>,
}

/// Quantile levels reported by default.
pub const DEFAULT_LEVELS: [f64; 7] = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99];
/// Thresholds reported by default (BPrune's default is 10).
pub const DEFAULT_THRESHOLDS: [f64; 5] = [0.5, 1.0, 2.0, 5.0, 10.0];

/// Width of a histogram bin, in decades.
const BIN_WIDTH: f64 = 0.25;
/// Most histogram bins.
const MAX_BINS: usize = 400;

/// The log10 histogram's bins for finite values from `lo` to `hi` (smallest and largest):
/// zeros fall in the lowest bin.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogBins {
    pub(crate) start: f64,
    pub(crate) bins: usize,
}

impl LogBins {
    pub(crate) fn new(lo: f64, hi: f64) -> LogBins {
        let (lo, hi) = (lo.max(1e-12).log10(), hi.max(1e-12).log10());
        let start = (lo / BIN_WIDTH).floor() * BIN_WIDTH;
        LogBins { start, bins: (((hi - start) / BIN_WIDTH).floor() as usize + 1).min(MAX_BINS) }
    }

    #[inline]
    pub(crate) fn bin(&self, v: f64) -> usize {
        (((v.max(1e-12).log10() - self.start) / BIN_WIDTH) as usize).min(self.bins - 1)
    }

    pub(crate) fn edges(&self, counts: Vec<usize>) -> Vec<(f64, usize)> {
        counts.into_iter().enumerate().map(|(i, c)| (self.start + i as f64 * BIN_WIDTH, c)).collect()
    }
}

/// Histogram of log10 SNR in bins of 0.25 decades; zeros fall in the lowest bin.
fn log_histogram(values: &[f64]) -> Vec<(f64, usize)> {
    let (lo, hi) = values.iter().filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    if lo > hi {
        return Vec::new();
    }
    let bins = LogBins::new(lo, hi);
    let mut counts = vec![0usize; bins.bins];
    for v in values.iter().filter(|v| v.is_finite()) {
        counts[bins.bin(*v)] += 1;
    }
    bins.edges(counts)
}

/// Computes the SNR report of `ckpt` for `targets`, reading each posterior chunk by chunk
/// (checksums verified) in memory that does not grow with the checkpoint; see [`Stats`] for
/// what pruned and non-finite weights count as.
pub fn analyse(ckpt: &Checkpoint, targets: &[Target], levels: &[f64], thresholds: &[f64]) -> Result<SnrReport> {
    analyse_with(ckpt, targets, levels, thresholds, Extras::ALL)
}

/// The parts of an [`SnrReport`] that cost a computation of their own: the counts, extremes,
/// quantiles and threshold counts are always exact, but the mean needs every weight's exact
/// SNR (summed in storage order), and the log10 histograms a bin per weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extras {
    /// Compute [`Stats::mean`] (else it is NaN).
    pub mean: bool,
    /// Compute [`TargetSnr::histogram`] (else it is empty).
    pub histogram: bool,
}

impl Extras {
    /// Everything.
    pub const ALL: Extras = Extras { mean: true, histogram: true };
    /// Neither the mean nor the histograms: what the `snr` table prints.
    pub const NONE: Extras = Extras { mean: false, histogram: false };
}

/// [`analyse`] computing only the `extras` asked for: without the mean, float32 posteriors
/// need the exact (libm) SNR only of the few weights whose fast approximation could fall on
/// the other side of a histogram bucket boundary, threshold or extreme.
pub fn analyse_with(ckpt: &Checkpoint, targets: &[Target], levels: &[f64], thresholds: &[f64], extras: Extras) -> Result<SnrReport> {
    if targets.iter().any(|t| t.dtype == DType::Float64) {
        let mut report = analyse_in_memory(ckpt, targets, levels, thresholds)?;
        if !extras.mean {
            report.layers.iter_mut().map(|l| &mut l.stats).chain([&mut report.overall]).for_each(|s| s.mean = f64::NAN);
        }
        if !extras.histogram {
            report.layers.iter_mut().for_each(|l| l.histogram.clear());
        }
        return Ok(report);
    }
    crate::snr_stream::analyse_f32(ckpt, targets, levels, thresholds, extras)
}

/// [`analyse`] holding every SNR: for f64 posteriors (whose SNRs are not 32-bit keys), and the
/// reference the streaming version is tested against.
pub fn analyse_in_memory(ckpt: &Checkpoint, targets: &[Target], levels: &[f64], thresholds: &[f64]) -> Result<SnrReport> {
    use crate::posterior::{classify, Weight};
    let mut layers = Vec::new();
    let mut all = Vec::new();
    let (mut all_pruned, mut all_undefined) = (0, 0);
    let mut non_finite = Vec::new();
    for t in targets {
        let (mu, rho) = read_posterior(ckpt, t)?;
        for (key, values) in [(&t.loc_key, &mu), (&t.rho_key, &rho)] {
            let count = values.iter().filter(|v| !v.is_finite()).count();
            if count > 0 {
                non_finite.push(NonFinite { key: key.clone(), count });
            }
        }
        let weights = classify(t.dtype, &mu, &rho);
        let snr: Vec<f64> = weights.iter().filter_map(|w| if let Weight::Snr(s) = w { Some(*s) } else { None }).collect();
        let pruned = weights.iter().filter(|w| **w == Weight::Pruned).count();
        let undefined = weights.iter().filter(|w| **w == Weight::Undefined).count();
        (all_pruned, all_undefined) = (all_pruned + pruned, all_undefined + undefined);
        layers.push(TargetSnr {
            target: t.clone(),
            stats: stats(&snr, levels, thresholds).with_left_out(pruned, undefined),
            histogram: log_histogram(&snr),
        });
        all.extend(snr);
    }
    Ok(SnrReport { path: display(ckpt.path()), layers, overall: stats(&all, levels, thresholds).with_left_out(all_pruned, all_undefined), non_finite })
}

/// Pieces of [`analyse`] shared with its streaming version.
pub(crate) mod parts {
    pub(crate) use super::{display, lerp, quantile_ranks, LogBins, Stats};

    /// Statistics from their parts (see [`Stats`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn assemble(
        count: usize,
        pruned: usize,
        undefined: usize,
        min: f64,
        max: f64,
        sum: f64,
        quantiles: Vec<(f64, f64)>,
        under: Vec<(f64, usize)>,
    ) -> Stats {
        let n = count;
        Stats {
            count,
            pruned: 0,
            pruned_fraction: 0.0,
            undefined: 0,
            min: if n == 0 { f64::NAN } else { min },
            max: if n == 0 { f64::NAN } else { max },
            mean: if n == 0 { f64::NAN } else { sum / n as f64 },
            quantiles,
            under: under
                .into_iter()
                .map(|(threshold, c)| super::CountUnder { threshold, count: c, fraction: if n == 0 { 0.0 } else { c as f64 / n as f64 } })
                .collect(),
        }
        .with_left_out(pruned, undefined)
    }
}

pub(crate) fn display(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_match_numpy() {
        // numpy: np.quantile([3, 1, 4, 1, 5, 9, 2, 6], [0.1, 0.5, 0.9]) = [1.0, 3.5, 6.9]
        let s = stats(&[3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0], &[0.1, 0.5, 0.9], &[1.0, 4.5]);
        assert_eq!(s.quantiles[0].1, 1.0);
        assert_eq!(s.quantiles[1].1, 3.5);
        assert!((s.quantiles[2].1 - 6.9).abs() < 1e-12);
        assert_eq!((s.min, s.max, s.mean), (1.0, 9.0, 3.875));
        assert_eq!(s.under[0].count, 2);
        assert_eq!(s.under[1].count, 5);
        assert_eq!(s.under[1].fraction, 5.0 / 8.0);
    }

    #[test]
    fn snr_by_hand() {
        // mu = 0.5, rho = 0: sigma = ln 2, SNR = 0.5 / ln 2 = 0.7213475204444817.
        let v = snr_values(DType::Float64, &[0.5, -0.5], &[0.0, 0.0]);
        assert_eq!(v, vec![0.5 / std::f64::consts::LN_2; 2]);
        let v32 = snr_values(DType::Float32, &[0.5], &[0.0]);
        assert_eq!(v32[0], (0.5f32 / std::f32::consts::LN_2) as f64);
    }
}
