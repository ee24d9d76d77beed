//! Pruning by signal-to-noise ratio: choose which weights go (a threshold, or a sparsity with
//! the threshold derived from it), and what a pruned weight becomes (`zero` or `bprune` mode).

use std::sync::Arc;

use formats::checkpoint::Checkpoint;
use formats::convert::Edits;
use formats::DType;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::mask::{KeepMask, MaskEdit};
use crate::posterior::{classify, for_each_chunk, Weight, CHUNK_WEIGHTS};
use crate::snr::{read_posterior, NonFinite, Target};
use model::softplus::ZERO_SCALE_RHO;
use crate::threshold::{decide_f32, Decided};
use crate::values::element_bytes;

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
    /// Weights pruned, cumulatively: `already_pruned` + `newly_pruned`.
    pub pruned: usize,
    /// Weights that were pruned before (mu = 0 with rho = 0 or softplus(rho) = 0, either
    /// mode); they stay pruned, rewritten in this pruning's mode.
    pub already_pruned: usize,
    /// Weights this pruning pruned.
    pub newly_pruned: usize,
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
    /// Weights pruned before, in all targets (included in the pruned count).
    pub already_pruned: usize,
    /// Weights this pruning pruned, in all targets.
    pub newly_pruned: usize,
    /// Fraction pruned, cumulatively (already and newly pruned).
    pub sparsity: f64,
    /// Tensors with NaN or infinite values: those weights are never pruned.
    pub non_finite: Vec<NonFinite>,
}

/// A decided pruning: which weights stay, the edits that write it, and the report.
#[derive(Debug, Clone)]
pub struct Pruning {
    /// Targets in order.
    pub targets: Vec<Target>,
    /// For each target, which weights are kept (from [`prune`]; [`prune_streaming`] holds
    /// none for the targets it decides while they stream).
    pub keep: Vec<Arc<KeepMask>>,
    /// What pruned mu and rho elements become, for each target (little-endian elements).
    pub fills: Vec<(Vec<u8>, Vec<u8>)>,
    /// Masking edits of every mu and rho, applied as the checkpoint streams to its output,
    /// and the report as metadata.
    pub edits: Edits,
    /// What was done.
    pub report: PruneReport,
    /// The counts of each target, as in the report.
    decided: Vec<Decided>,
    /// Targets (by index) whose counts are taken while their edits stream out (the report
    /// has zeros for them until [`Pruning::settle`]).
    deferred: Vec<(usize, Arc<Decision>)>,
}

impl Pruning {
    /// Completes the report with the counts taken while the edits streamed out, once the
    /// output has been written (a no-op for a pruning whose counts were known up front).
    fn settle(&mut self, ckpt: &Checkpoint) -> Result<()> {
        for (i, decision) in &self.deferred {
            let counted = decision.counted.as_ref().map(|c| *c.lock().unwrap_or_else(|p| p.into_inner()));
            if let (Some(d), Some(counted)) = (self.decided.get_mut(*i), counted) {
                *d = counted;
            }
        }
        if !self.deferred.is_empty() {
            self.report = report_of(ckpt, &self.targets, &self.report.options, &self.decided, self.report.threshold)?;
            self.deferred.clear();
        }
        Ok(())
    }
}

/// The threshold applied: BPrune reads T = 0 as SNR <= 1e-44.
fn effective_threshold(t: f64, mode: Mode) -> f64 {
    if mode == Mode::Bprune && t == 0.0 {
        BPRUNE_ZERO_THRESHOLD
    } else {
        t
    }
}

/// Which weights to keep for each target, from decision SNRs in target order (0 for an
/// already-pruned weight, NaN for an undefined one: see [`crate::threshold::decision_snr`]).
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
/// so the sparsity is hit to within one weight even when many SNRs are equal; NaN SNRs
/// (undefined weights) are never pruned. Returns the masks and the largest pruned SNR. Linear
/// time: a selection, not a sort, finds that SNR.
fn lowest_fraction(groups: &[&[f64]], fraction: f64) -> (Vec<Vec<bool>>, f64) {
    let n: usize = groups.iter().map(|g| g.len()).sum();
    let defined = groups.iter().flat_map(|g| g.iter()).filter(|s| !s.is_nan()).count();
    let k = ((fraction * n as f64).round() as usize).min(defined);
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

/// Decides the pruning of `targets` in `ckpt`, keeping the outcome as one bit per weight
/// ([`Pruning::keep`], needed by sparse output). The posteriors are read where they are stored,
/// chunk by chunk (releasing each chunk's pages), and the returned edits mask them while a
/// conversion streams them out. [`prune_streaming`] does the same without holding the bits.
///
/// Already-pruned weights (mu = 0 with rho = 0 or softplus(rho) = 0, in either mode) stay
/// pruned (rewritten in `options.mode`) and count as SNR 0 for a sparsity; weights with a NaN
/// or infinite mu or rho are never pruned and reported in [`PruneReport::non_finite`].
pub fn prune(ckpt: &Checkpoint, targets: &[Target], options: &PruneOptions) -> Result<Pruning> {
    let (plans, threshold) = plan(ckpt, targets, options, false)?;
    let plans = plans
        .into_iter()
        .zip(targets)
        .map(|(p, t)| match p {
            Plan::Rule(rule, d) => Ok(Plan::Mask(Arc::new(mask_of(ckpt, t, &rule)?), d.unwrap_or_default())),
            mask => Ok(mask),
        })
        .collect::<Result<Vec<_>>>()?;
    finish(ckpt, None, targets, options, plans, threshold)
}

/// [`prune`] in memory that does not grow with the checkpoint: float32 posteriors stored in one
/// piece are decided again, chunk by chunk, as they stream out (against the mapped other half
/// of each pair), so no per-weight state is held; [`Pruning::keep`] is left empty for them.
/// The decisions are the same as [`prune`]'s.
pub fn prune_streaming(ckpt: &Arc<Checkpoint>, targets: &[Target], options: &PruneOptions) -> Result<Pruning> {
    let (plans, threshold) = plan(ckpt, targets, options, false)?;
    finish(ckpt, Some(ckpt), targets, options, plans, threshold)
}

/// How the weights of one target are decided.
#[derive(Debug)]
enum Plan {
    /// Held as bits.
    Mask(Arc<KeepMask>, Decided),
    /// A float32 target, decided again wherever needed; its counts, if already known (else
    /// they are taken as it streams out, or by a pass of their own).
    Rule(Rule, Option<Decided>),
}

/// The decision rule of a float32 target: prune every weight whose decision SNR is <= `t`
/// (and every weight pruned before); with `ties`, of the weights whose decision SNR equals `t`
/// only the first `quota` in storage order.
#[derive(Debug, Clone)]
struct Rule {
    t: f64,
    ties: Option<Ties>,
}

#[derive(Debug, Clone)]
struct Ties {
    quota: u64,
    /// Weights whose decision SNR equals `t` before each block of [`TIE_BLOCK`] weights (and
    /// in all, last).
    before: Vec<u64>,
}

/// Weights per entry of [`Ties::before`]: a stream chunk starting inside a block re-decides at
/// most this many weights to know the ties before it.
const TIE_BLOCK: usize = 1 << 14;

impl Rule {
    /// Decides `mu.len() / 4` weights, the first of which is weight `first`, of which `seen`
    /// ties came before; `keep` and `equal` hold a word per 64 weights.
    fn decide(&self, mu: &[u8], rho: &[u8], seen: u64, keep: &mut [u64], equal: &mut [u64]) -> Decided {
        let mut d = decide_f32(mu, rho, self.t, keep, equal);
        if let Some(ties) = &self.ties {
            let mut left = ties.quota.saturating_sub(seen);
            let words = (mu.len() / 4).div_ceil(64);
            for (i, (word, eq)) in keep[..words].iter_mut().zip(&equal[..words]).enumerate() {
                let mut eq = *eq;
                while eq != 0 {
                    let b = eq.trailing_zeros() as usize;
                    eq &= eq - 1;
                    if left > 0 {
                        left -= 1;
                        continue;
                    }
                    let (m, r) = (f32_at(mu, 64 * i + b), f32_at(rho, 64 * i + b));
                    // Past the quota: kept, unless pruned before (that one stays pruned).
                    if !crate::posterior::is_pruned_f32(m, r) {
                        *word |= 1 << b;
                        d.kept += 1;
                        d.nonzero += usize::from(m != 0.0);
                    }
                }
            }
        }
        d
    }

    /// Ties before weight `first` (a multiple of 64) of target `t`.
    fn ties_before(&self, ckpt: &Checkpoint, t: &Target, first: usize) -> u64 {
        let Some(ties) = &self.ties else { return 0 };
        // No tie pruned, or every one: where they are does not matter.
        if ties.quota == 0 || ties.quota >= ties.before.last().copied().unwrap_or(0) {
            return 0;
        }
        let block = first / TIE_BLOCK;
        let mut seen = ties.before.get(block).copied().unwrap_or(0);
        let start = block * TIE_BLOCK;
        if start < first {
            // A stream chunk starting inside a block: count the ties in between.
            if let (Ok(mu), Ok(rho)) = (ckpt.read_unverified(&t.loc_key), ckpt.read_unverified(&t.rho_key)) {
                let (mu, rho) = (mu.bytes().unwrap_or_default(), rho.bytes().unwrap_or_default());
                let (a, b) = (4 * start, 4 * first);
                if let (Some(mu), Some(rho)) = (mu.get(a..b), rho.get(a..b)) {
                    let words = (first - start).div_ceil(64);
                    let (mut keep, mut equal) = (vec![0u64; words], vec![0u64; words]);
                    decide_f32(mu, rho, self.t, &mut keep, &mut equal);
                    seen += equal.iter().map(|w| w.count_ones() as u64).sum::<u64>();
                }
            }
        }
        seen
    }
}

/// The decisions for every target (bits held only where needed), and the threshold in effect;
/// with `defer`, the counts of a rule that needs no pass of its own to be applied (no partial
/// tie quota) are left to be taken as it streams out.
fn plan(ckpt: &Checkpoint, targets: &[Target], options: &PruneOptions, defer: bool) -> Result<(Vec<Plan>, f64)> {
    if let Criterion::Sparsity { fraction, .. } = options.criterion {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(Error::invalid(ckpt.path(), format!("sparsity {fraction} is not between 0 and 1")));
        }
    }
    let all_f32 = targets.iter().all(|t| t.dtype == DType::Float32);
    match options.criterion {
        // The common cases stream: see `threshold` and `sparsity_f32`.
        Criterion::Threshold(t) if all_f32 => {
            let t = effective_threshold(t, options.mode);
            let rule = Rule { t, ties: None };
            let counts = |target| if defer { Ok(None) } else { count(ckpt, target, &rule).map(|c| Some(c.0)) };
            let plans = targets.iter().map(|target| Ok(Plan::Rule(rule.clone(), counts(target)?))).collect::<Result<_>>()?;
            Ok((plans, t))
        }
        Criterion::Sparsity { fraction, per_layer } if all_f32 => sparsity_f32(ckpt, targets, fraction, per_layer, defer),
        _ => {
            let (decided, t) = decide_in_memory(ckpt, targets, options)?;
            Ok((decided.into_iter().map(|(m, d)| Plan::Mask(Arc::new(m), d)).collect(), t))
        }
    }
}

/// The counts of a target under `rule` (chunk by chunk, nothing held), and the ties before
/// each block of [`TIE_BLOCK`] weights, then in all.
fn count(ckpt: &Checkpoint, target: &Target, rule: &Rule) -> Result<(Decided, Vec<u64>)> {
    let (mut keep, mut equal) = (vec![0u64; CHUNK_WEIGHTS / 64], vec![0u64; CHUNK_WEIGHTS / 64]);
    let (mut total, mut seen, mut before) = (Decided::default(), 0u64, Vec::new());
    for_each_chunk(ckpt, target, false, |_, mu, rho| {
        total = total + rule.decide(mu, rho, seen, &mut keep, &mut equal);
        // CHUNK_WEIGHTS is a multiple of TIE_BLOCK: blocks start at block words of a chunk.
        for block in equal[..(mu.len() / 4).div_ceil(64)].chunks(TIE_BLOCK / 64) {
            before.push(seen);
            seen += block.iter().map(|w| w.count_ones() as u64).sum::<u64>();
        }
        Ok(())
    })?;
    before.push(seen);
    Ok((total, before))
}

/// The keep bits of a target under `rule`.
fn mask_of(ckpt: &Checkpoint, target: &Target, rule: &Rule) -> Result<KeepMask> {
    let n = weights(ckpt, target)?;
    let mut words = vec![0u64; n.div_ceil(64)];
    let mut equal = vec![0u64; CHUNK_WEIGHTS / 64];
    let mut seen = 0u64;
    for_each_chunk(ckpt, target, false, |first, mu, rho| {
        let count = (mu.len() / 4).min(n.saturating_sub(first));
        let w = words.get_mut(first / 64..(first + count).div_ceil(64)).unwrap_or_default();
        rule.decide(&mu[..4 * count], &rho[..4 * count], seen, w, &mut equal);
        seen += equal[..w.len()].iter().map(|w| w.count_ones() as u64).sum::<u64>();
        Ok(())
    })?;
    Ok(KeepMask::from_words(words, n))
}

/// A float32 target decided while it streams out: the edit of its mu (or rho) decides each
/// chunk against the same chunk of the mapped rho (or mu).
#[derive(Debug)]
struct Decision {
    ckpt: Arc<Checkpoint>,
    target: Target,
    rule: Rule,
    /// Set if the other half could not be read (it was read before, so this does not happen);
    /// the chunk is then left unpruned and the edit's `finished` fails the output.
    failed: std::sync::atomic::AtomicBool,
    /// The counts of the weights decided so far (on the mu side), when they are taken here.
    counted: Option<std::sync::Mutex<Decided>>,
    /// Tells this decision's blocks apart from any other's in [`LAST_BLOCK`] (an address could be
    /// reused by a later decision).
    id: u64,
}

/// Numbers decisions apart.
static NEXT_DECISION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A block decided by one half of a pair, for the other half's edit of the same block.
struct DecidedBlock {
    /// Decision id, first weight, weights, and which side decided it (mu: true).
    key: (u64, usize, usize, bool),
    keep: Vec<u64>,
    decided: Decided,
}

thread_local! {
    /// The block this thread decided last: the writers copy block `b` of a posterior's two
    /// halves one after the other on one thread (`formats::block_copy::copy_together`), so the
    /// second half finds the first's keep bits here instead of reading the first half again and
    /// deciding anew. Anything else (another block, another decision) decides as usual.
    static LAST_BLOCK: std::cell::RefCell<Option<DecidedBlock>> = const { std::cell::RefCell::new(None) };
}

#[derive(Debug)]
struct DecidingEdit {
    decision: Arc<Decision>,
    /// Edits mu (else rho).
    mu_side: bool,
    /// One element: what a pruned weight becomes.
    fill: Vec<u8>,
}

impl formats::convert::TensorEdit for DecidingEdit {
    fn apply(&self, offset: u64, src: &[u8], dst: &mut [u8]) {
        let d = &self.decision;
        let (n, first) = (src.len() / 4, offset as usize / 4);
        // Decided by the other half of the pair just before, on this thread?
        let reused = LAST_BLOCK.with(|last| {
            let mut last = last.borrow_mut();
            match last.take() {
                Some(b) if b.key == (d.id, first, n, !self.mu_side) => Some((b.keep, b.decided)),
                other => {
                    *last = other;
                    None
                }
            }
        });
        let (keep, decided) = match reused {
            Some(found) => found,
            None => {
                let other_key = if self.mu_side { &d.target.rho_key } else { &d.target.loc_key };
                let range = offset as usize..offset as usize + src.len();
                let other = d.ckpt.read_unverified(other_key).ok();
                let Some(other_bytes) = other.as_ref().and_then(|o| o.bytes()).and_then(|b| b.get(range.clone())) else {
                    d.failed.store(true, std::sync::atomic::Ordering::Relaxed);
                    dst.copy_from_slice(src);
                    return;
                };
                let (mu, rho) = if self.mu_side { (src, other_bytes) } else { (other_bytes, src) };
                let (mut keep, mut equal) = (vec![0u64; n.div_ceil(64)], vec![0u64; n.div_ceil(64)]);
                let decided = d.rule.decide(mu, rho, d.rule.ties_before(&d.ckpt, &d.target, first), &mut keep, &mut equal);
                // Copied next on this thread (the halves copied together), the other half's
                // block is released by its own copy; copied apart, by nothing else.
                let released_by_copy = formats::block_copy::copied_next(other_bytes);
                drop(other);
                if !released_by_copy {
                    d.ckpt.release(other_key, range);
                }
                // For the other half's edit of this block, if it comes next on this thread.
                let block = DecidedBlock { key: (d.id, first, n, self.mu_side), keep: keep.clone(), decided };
                LAST_BLOCK.with(|last| *last.borrow_mut() = Some(block));
                (keep, decided)
            }
        };
        if let (true, Some(counted)) = (self.mu_side, &d.counted) {
            let mut c = counted.lock().unwrap_or_else(|p| p.into_inner());
            *c = *c + decided;
        }
        crate::mask::apply_mask(&KeepMask::from_words(keep, n), 0, src, dst, &self.fill);
    }

    fn finished(&self) -> std::result::Result<(), String> {
        if self.decision.failed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("its posterior pair could not be read again while it was written".into());
        }
        Ok(())
    }
}

/// The edits and report of a decided pruning; `streaming`: decide float32 targets stored in
/// one piece again as they stream out instead of holding their bits.
fn finish(ckpt: &Checkpoint, streaming: Option<&Arc<Checkpoint>>, targets: &[Target], options: &PruneOptions, plans: Vec<Plan>, threshold: f64) -> Result<Pruning> {
    let rho_value = match options.mode {
        Mode::Zero => ZERO_SCALE_RHO,
        Mode::Bprune => 0.0,
    };
    let (mut keeps, mut fills, mut edits) = (Vec::new(), Vec::new(), Edits::default());
    let (mut decided, mut deferred) = (Vec::new(), Vec::new());
    for (i, (t, plan)) in targets.iter().zip(plans).enumerate() {
        let (Some(zero), Some(rho_fill)) = (element_bytes(t.dtype, 0.0), element_bytes(t.dtype, rho_value)) else {
            return Err(Error::invalid(ckpt.path(), format!("'{}' is {}, not a float type", t.loc_key, t.dtype)));
        };
        // Stored in one piece (borrowed from the map): decided again as it streams.
        let in_one_piece = |c: &Checkpoint| matches!(c.read_unverified(&t.loc_key), Ok(formats::TensorData::Bytes(std::borrow::Cow::Borrowed(_))));
        let (mu_edit, rho_edit): (Arc<dyn formats::convert::TensorEdit>, Arc<dyn formats::convert::TensorEdit>) = match (plan, streaming) {
            (Plan::Rule(rule, d), Some(shared)) if in_one_piece(shared) => {
                let counted = d.is_none().then(|| std::sync::Mutex::new(Decided::default()));
                let id = NEXT_DECISION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let decision = Arc::new(Decision { ckpt: shared.clone(), target: t.clone(), rule, failed: false.into(), counted, id });
                if d.is_none() {
                    deferred.push((i, decision.clone()));
                }
                decided.push(d.unwrap_or_default());
                (
                    Arc::new(DecidingEdit { decision: decision.clone(), mu_side: true, fill: zero.clone() }),
                    Arc::new(DecidingEdit { decision, mu_side: false, fill: rho_fill.clone() }),
                )
            }
            (plan, _) => {
                let (keep, d) = match plan {
                    Plan::Mask(keep, d) => (keep, d),
                    Plan::Rule(rule, d) => {
                        // Counts left to the stream, which does not decide this target: counted now.
                        let d = match d {
                            Some(d) => d,
                            None => count(ckpt, t, &rule)?.0,
                        };
                        (Arc::new(mask_of(ckpt, t, &rule)?), d)
                    }
                };
                decided.push(d);
                keeps.push(keep.clone());
                (Arc::new(MaskEdit::new(keep.clone(), zero.clone())), Arc::new(MaskEdit::new(keep, rho_fill.clone())))
            }
        };
        edits.values.insert(t.loc_key.clone(), mu_edit);
        edits.values.insert(t.rho_key.clone(), rho_edit);
        fills.push((zero, rho_fill));
    }
    let report = report_of(ckpt, targets, options, &decided, threshold)?;
    edits
        .metadata
        .insert(META_PRUNE.to_string(), serde_json::to_string(&report).map_err(|e| Error::invalid(ckpt.path(), e.to_string()))?);
    Ok(Pruning { targets: targets.to_vec(), keep: keeps, fills, edits, report, decided, deferred })
}

/// The report of a pruning from each target's counts.
fn report_of(ckpt: &Checkpoint, targets: &[Target], options: &PruneOptions, decided: &[Decided], threshold: f64) -> Result<PruneReport> {
    let (mut layers, mut non_finite) = (Vec::new(), Vec::new());
    for (t, d) in targets.iter().zip(decided) {
        let total = weights(ckpt, t)?;
        let pruned = total - d.kept.min(total);
        layers.push(TargetReport {
            layer: t.layer.clone(),
            part: t.part.name(),
            total,
            kept: total - pruned,
            pruned,
            already_pruned: d.already,
            newly_pruned: pruned - d.already.min(pruned),
            bprune_nonzero: 2 * d.nonzero,
        });
        for (key, count) in [(&t.loc_key, d.undefined_mu), (&t.rho_key, d.undefined_rho)] {
            if count > 0 {
                non_finite.push(NonFinite { key: key.clone(), count });
            }
        }
    }
    let total: usize = layers.iter().map(|l| l.total).sum();
    let kept: usize = layers.iter().map(|l| l.kept).sum();
    Ok(PruneReport {
        options: options.clone(),
        threshold,
        total,
        kept,
        already_pruned: layers.iter().map(|l| l.already_pruned).sum(),
        newly_pruned: layers.iter().map(|l| l.newly_pruned).sum(),
        sparsity: if total == 0 { 0.0 } else { (total - kept) as f64 / total as f64 },
        layers,
        non_finite,
    })
}


/// Number of weights of a target.
fn weights(ckpt: &Checkpoint, t: &Target) -> Result<usize> {
    let width = t.dtype.size().unwrap_or(1) as u64;
    usize::try_from(ckpt.variable(&t.loc_key)?.info.nbytes / width)
        .map_err(|_| Error::invalid(ckpt.path(), format!("'{}' is too large", t.loc_key)))
}

/// Little-endian f32 element `i` of `bytes` (0 past the end).
fn f32_at(bytes: &[u8], i: usize) -> f32 {
    bytes.get(4 * i..4 * i + 4).map_or(0.0, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The sparsity pruning of float32 targets, streaming, in memory independent of their size:
///
/// 1. the k-th smallest SNR exactly, how many weights lie below it and how many equal it
///    ([`crate::cut::find_cut`]: one pass over approximate keys in the usual case, two where
///    a sample mispredicts);
/// 2. every weight is decided at that SNR (as `--threshold` does), and of the weights equal to
///    it only as many as needed to prune exactly k are pruned, the first in storage order.
///
/// The same weights as sorting every SNR would prune (`lowest_fraction`).
///
/// With `defer`, a cut that prunes every weight equal to it (as it does unless SNRs tie there)
/// leaves the counts to be taken as the targets stream out (see [`plan`]).
fn sparsity_f32(ckpt: &Checkpoint, targets: &[Target], fraction: f64, per_layer: bool, defer: bool) -> Result<(Vec<Plan>, f64)> {
    let groups: Vec<Vec<usize>> = if per_layer { (0..targets.len()).map(|i| vec![i]).collect() } else { vec![(0..targets.len()).collect()] };
    let mut out: Vec<Option<Plan>> = (0..targets.len()).map(|_| None).collect();
    let mut threshold = f64::NEG_INFINITY;
    let mut keys = Vec::new();
    for group in groups {
        let mut n = 0u64;
        for &i in &group {
            n += weights(ckpt, &targets[i])? as u64;
        }
        let (cut, _) = crate::cut::find_cut(ckpt, targets, &group, fraction, n, crate::cut::WINDOW_CAP, &mut keys)?;
        let t = cut.map_or(f64::NEG_INFINITY, |(key, _, _)| f32::from_bits(key) as f64);
        let mut left = cut.map_or(0, |(_, ties, _)| ties);
        // Every weight equal to the cut pruned (or none there): a plain threshold.
        if cut.is_none_or(|(_, ties, equal)| ties == equal) {
            for &i in &group {
                let rule = Rule { t, ties: None };
                let d = if defer { None } else { Some(count(ckpt, &targets[i], &rule)?.0) };
                out[i] = Some(Plan::Rule(rule, d));
            }
            threshold = threshold.max(t);
            continue;
        }
        for &i in &group {
            let mut rule = Rule { t, ties: Some(Ties { quota: left, before: Vec::new() }) };
            let (d, before) = count(ckpt, &targets[i], &rule)?;
            left = left.saturating_sub(before.last().copied().unwrap_or(0));
            if let Some(ties) = &mut rule.ties {
                ties.before = before;
            }
            out[i] = Some(Plan::Rule(rule, Some(d)));
        }
        threshold = threshold.max(t);
    }
    out.into_iter()
        .map(|p| p.ok_or_else(|| Error::invalid(ckpt.path(), "a target was left undecided")))
        .collect::<Result<Vec<_>>>()
        .map(|plans| (plans, threshold))
}

/// The pruning decisions holding every SNR as f64: for f64, f16 and bf16 posteriors.
fn decide_in_memory(ckpt: &Checkpoint, targets: &[Target], options: &PruneOptions) -> Result<(Vec<(KeepMask, Decided)>, f64)> {
    let mut snrs = Vec::with_capacity(targets.len());
    let mut info = Vec::with_capacity(targets.len());
    for t in targets {
        let (mu, rho) = read_posterior(ckpt, t)?;
        let weights = classify(t.dtype, &mu, &rho);
        let already: Vec<bool> = weights.iter().map(|w| *w == Weight::Pruned).collect();
        let nonzero: Vec<bool> = mu.iter().map(|m| *m != 0.0).collect();
        let d = Decided {
            kept: 0,
            nonzero: 0,
            already: already.iter().filter(|a| **a).count(),
            undefined_mu: mu.iter().filter(|v| !v.is_finite()).count(),
            undefined_rho: rho.iter().filter(|v| !v.is_finite()).count(),
        };
        snrs.push(
            weights
                .iter()
                .map(|w| match w {
                    Weight::Pruned => 0.0,
                    Weight::Undefined => f64::NAN,
                    Weight::Snr(s) => *s,
                })
                .collect::<Vec<f64>>(),
        );
        info.push((already, nonzero, d));
    }
    let (masks, threshold) = keep_masks(&snrs, options.criterion, options.mode);
    let decided = masks
        .into_iter()
        .zip(info)
        .map(|(mut keep, (already, nonzero, mut d))| {
            for (k, a) in keep.iter_mut().zip(&already) {
                *k &= !a;
            }
            d.nonzero = keep.iter().zip(&nonzero).filter(|(k, nz)| **k && **nz).count();
            d.kept = keep.iter().filter(|k| **k).count();
            (KeepMask::from_bools(&keep), d)
        })
        .collect();
    Ok((decided, threshold))
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
    prune_checkpoint_to_bundle(&Arc::new(Checkpoint::open(input)?), prefix, job)
}

/// [`prune_to_bundle`] of an opened checkpoint. Folders it creates for the output are removed
/// again if it fails.
pub fn prune_checkpoint_to_bundle(ckpt: &Arc<Checkpoint>, prefix: &std::path::Path, job: &PruneJob) -> Result<PruneReport> {
    let targets = crate::snr::select_targets(ckpt, job.layers.as_deref(), &job.parts)?;
    // The counts a TF checkpoint does not hold are taken while it is written (no pass of
    // their own), and the report written after it.
    let (plans, threshold) = plan(ckpt, &targets, &job.options, true)?;
    let mut pruning = finish(ckpt, Some(ckpt), &targets, &job.options, plans, threshold)?;
    let folder = formats::output_file::create_output_dir(formats::output_file::parent_dir(prefix))?;
    formats::convert::checkpoint_to_bundle(ckpt, prefix, &pruning.edits)?;
    pruning.settle(ckpt)?;
    let json = serde_json::to_string_pretty(&pruning.report).map_err(|e| Error::invalid(prefix, e.to_string()))?;
    let report_path = report_path(prefix);
    formats::bundle::write_atomically(&report_path, |w| {
        use std::io::Write;
        w.write_all(json.as_bytes()).map_err(|e| formats::Error::io(&report_path, e))
    })?;
    folder.keep();
    Ok(pruning.report)
}

/// Prunes `ckpt` into a safetensors file at `out` (the tensors `opts` chooses) in one pass over
/// the data: counts not known up front are taken while the posteriors stream out, and the
/// report (metadata [`META_PRUNE`]) goes into a header written after the data, padded with
/// spaces to the room the longest possible report needs.
pub fn prune_to_safetensors(ckpt: &Arc<Checkpoint>, out: &std::path::Path, job: &PruneJob, opts: formats::convert::ToSafetensorsOptions) -> Result<PruneReport> {
    let targets = crate::snr::select_targets(ckpt, job.layers.as_deref(), &job.parts)?;
    let (plans, threshold) = plan(ckpt, &targets, &job.options, true)?;
    let mut pruning = finish(ckpt, Some(ckpt), &targets, &job.options, plans, threshold)?;
    if !pruning.deferred.is_empty() {
        pruning.edits.metadata.remove(META_PRUNE);
        let late = LateReport {
            ckpt: ckpt.clone(),
            targets: targets.clone(),
            options: job.options.clone(),
            threshold,
            decided: pruning.decided.clone(),
            deferred: pruning.deferred.clone(),
        };
        pruning.edits.late = Some(Arc::new(late));
    }
    formats::convert::checkpoint_to_safetensors(ckpt, out, opts, &pruning.edits)?;
    pruning.settle(ckpt)?;
    Ok(pruning.report)
}

/// The report of a pruning whose counts are taken while it streams out, as the metadata entry
/// [`META_PRUNE`] of a safetensors header written after the data.
#[derive(Debug)]
struct LateReport {
    ckpt: Arc<Checkpoint>,
    targets: Vec<Target>,
    options: PruneOptions,
    threshold: f64,
    /// Counts known up front (zeros for the deferred targets).
    decided: Vec<Decided>,
    deferred: Vec<(usize, Arc<Decision>)>,
}

impl formats::convert::LateMetadata for LateReport {
    fn key(&self) -> &str {
        META_PRUNE
    }

    fn longest(&self) -> String {
        // Every count with the most digits it can have (all weights of its target; twice that
        // for BPrune's count of mu and rho), every key named as non-finite, and the longest
        // f64 a non-negative sparsity prints as.
        let n: Vec<usize> = self.targets.iter().map(|t| weights(&self.ckpt, t).unwrap_or(0)).collect();
        let total: usize = n.iter().sum();
        let layers = self
            .targets
            .iter()
            .zip(&n)
            .map(|(t, &n)| TargetReport { layer: t.layer.clone(), part: t.part.name(), total: n, kept: n, pruned: n, already_pruned: n, newly_pruned: n, bprune_nonzero: 2 * n })
            .collect();
        let non_finite = self.targets.iter().zip(&n).flat_map(|(t, &n)| [&t.loc_key, &t.rho_key].map(|key| NonFinite { key: key.clone(), count: n })).collect();
        let most = PruneReport {
            options: self.options.clone(),
            threshold: self.threshold,
            layers,
            total,
            kept: total,
            already_pruned: total,
            newly_pruned: total,
            sparsity: 1.234_567_890_123_456_7e-308,
            non_finite,
        };
        serde_json::to_string(&most).unwrap_or_default()
    }

    fn value(&self) -> std::result::Result<String, String> {
        let mut decided = self.decided.clone();
        for (i, decision) in &self.deferred {
            let counted = decision.counted.as_ref().map(|c| *c.lock().unwrap_or_else(|p| p.into_inner()));
            if let (Some(d), Some(counted)) = (decided.get_mut(*i), counted) {
                *d = counted;
            }
        }
        let report = report_of(&self.ckpt, &self.targets, &self.options, &decided, self.threshold).map_err(|e| e.to_string())?;
        serde_json::to_string(&report).map_err(|e| e.to_string())
    }
}

/// Where [`prune_to_bundle`] puts the report of the checkpoint at `prefix`.
pub fn report_path(prefix: &std::path::Path) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("{}{PRUNE_REPORT_SUFFIX}", prefix.display()))
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
            // NaN SNRs (undefined weights) are never pruned.
            let defined = groups.iter().flatten().filter(|s| !s.is_nan()).count();
            let k = ((fraction * order.len() as f64).round() as usize).min(defined);
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
}
