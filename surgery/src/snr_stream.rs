//! [`crate::snr::analyse`] for posteriors stored as f32, f16 or bf16 (whose SNRs are f32
//! values), in two streaming passes over the mapped checkpoint without holding the SNRs:
//!
//! 1. every SNR is counted by the top 16 bits of its bit pattern (non-negative f32 values
//!    order like their bits), with the extremes and the threshold counts, and when the mean is
//!    asked for, the sum (every SNR computed exactly, as [`crate::snr::snr_values`] does, and
//!    summed in storage order, so the mean is the one summing every value gives). Without the
//!    mean, float32 weights are keyed by the fast approximation of
//!    [`crate::threshold::approx_keys`], exactly wherever that could change a bucket, a
//!    threshold count or an extreme, and counted block by cache-sized block (see [`fast_chunk`]);
//! 2. the SNRs are computed again and, for the few buckets holding the ranks the quantiles
//!    need, counted by their low 16 bits, which pins those ranks to exact values; the log10
//!    histogram, whose range pass one found, is filled too.
//!
//! Without mean and histogram, pass two is usually skipped: a sample of exact keys predicts
//! windows of keys the quantiles' ranks will fall in (and the thresholds' buckets), pass one
//! collects the exact keys in them and stand-ins below them within their buckets
//! ([`Windows`]), and the ranks and threshold counts are read from those ([`predict_buckets`],
//! [`resolve`]); pass two runs only where the prediction missed.
//!
//! Memory: the chunk being read, a few 512 KiB histograms per posterior, at most 32 MiB of
//! collected keys ([`COLLECT_CAP`]), nothing per weight.

use formats::checkpoint::Checkpoint;
use formats::DType;
use rayon::prelude::*;

use crate::error::Result;
use crate::posterior::{for_each_chunk, is_pruned_f32, load_f32, CHUNK_WEIGHTS};
use crate::radix::{LowHistograms, TopHistogram, BUCKETS};
use crate::snr::parts::{assemble, display, lerp, quantile_ranks, LogBins};
use crate::snr::{Extras, NonFinite, SnrReport, Stats, Target, TargetSnr};
use model::softplus::softplus_f32;
use crate::threshold::{approx_blocks, approx_keys, approx_keys_then, in_ranges, pack, Kernel, KEY_SLACK};

/// Key of an already-pruned weight.
const PRUNED: u32 = u32::MAX;
/// Keys of weights with a NaN or infinite mu, rho, or both. Analysed weights' keys are the bit
/// patterns of non-negative f32 SNRs (at most +inf, 0x7f80_0000), so these never collide.
const UNDEFINED_MU: u32 = u32::MAX - 1;
const UNDEFINED_RHO: u32 = u32::MAX - 2;
const UNDEFINED_BOTH: u32 = u32::MAX - 3;
/// Keys from here up are markers, not SNRs.
const MARKERS: u32 = UNDEFINED_BOTH;
/// Bit pattern of +inf: keys below it are finite SNRs.
const INFINITY: u32 = 0x7f80_0000;
/// Weights per parallel work item.
const PAR_WEIGHTS: usize = 1 << 14;

/// The key of weight (mu, rho): its f32 SNR's bit pattern, or a marker.
#[inline(always)]
fn key_of(mu: f32, rho: f32) -> u32 {
    match (mu.is_finite(), rho.is_finite()) {
        (true, true) if is_pruned_f32(mu, rho) => PRUNED,
        (true, true) => (mu.abs() / softplus_f32(rho)).to_bits(),
        (false, true) => UNDEFINED_MU,
        (true, false) => UNDEFINED_RHO,
        (false, false) => UNDEFINED_BOTH,
    }
}

/// Little-endian f32 element `i` of `bytes`.
#[inline(always)]
fn f32_at(bytes: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]])
}

/// Keys of the weights of one chunk (little-endian mu and rho of `dtype`), computed in parallel.
pub(crate) fn chunk_keys(dtype: DType, mu: &[u8], rho: &[u8], keys: &mut Vec<u32>) {
    let n = mu.len() / dtype.size().unwrap_or(4);
    keys.resize(n, 0);
    keys.par_chunks_mut(PAR_WEIGHTS).enumerate().for_each(|(c, out)| {
        let first = c * PAR_WEIGHTS;
        match dtype {
            DType::Float32 => {
                let (mu, rho) = (&mu[4 * first..], &rho[4 * first..]);
                for ((k, m), r) in out.iter_mut().zip(mu.chunks_exact(4)).zip(rho.chunks_exact(4)) {
                    *k = key_of(f32::from_le_bytes([m[0], m[1], m[2], m[3]]), f32::from_le_bytes([r[0], r[1], r[2], r[3]]));
                }
            }
            _ => {
                for (j, k) in out.iter_mut().enumerate() {
                    *k = key_of(load_f32(dtype, mu, first + j), load_f32(dtype, rho, first + j));
                }
            }
        }
    });
}

/// Bit `i` set where approximate key `keys[i]` (within [`KEY_SLACK`] of the exact key) could
/// belong to another top-16-bit bucket than the exact key, or lie on the other side of one of
/// `limits`. Inlined into the key kernel that calls it, so it runs at that kernel's width.
#[inline(always)]
fn unsettled(keys: &[u32], limits: &[u32]) -> u64 {
    let mut near = [0u8; 64];
    let keys = &keys[..keys.len().min(64)];
    // Low 16 bits within KEY_SLACK of either end of the bucket (wraps below).
    for (n, &a) in near.iter_mut().zip(keys) {
        *n = u8::from((a & 0xffff).wrapping_sub(KEY_SLACK) > 0xffff - 2 * KEY_SLACK);
    }
    for &l in limits {
        for (n, &a) in near.iter_mut().zip(keys) {
            *n |= u8::from(a.wrapping_sub(l).wrapping_add(KEY_SLACK) <= 2 * KEY_SLACK);
        }
    }
    pack(&near)
}

/// The approximate keys whose exact keys may lie in one of the chosen buckets of `lows`: each
/// bucket widened by [`KEY_SLACK`] on both sides, as (first key, length - 1), merged.
fn wanted_ranges(lows: &[&LowHistograms]) -> Vec<(u32, u32)> {
    let mut tops: Vec<u32> = lows.iter().flat_map(|l| l.tops()).collect();
    tops.sort_unstable();
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for top in tops {
        let (a, b) = ((top << 16).saturating_sub(KEY_SLACK), (top << 16 | 0xffff).saturating_add(KEY_SLACK));
        match ranges.last_mut() {
            Some((first, span)) if a <= *first + *span + 1 => *span = (*span).max(b - *first),
            _ => ranges.push((a, b - a)),
        }
    }
    ranges
}

/// The keys pass one collects for one target: per bucket (top 16 bits) whether any, and the
/// window of low 16 bits (`lo << 16 | hi`) whose exact keys the ranks need. Finer than whole
/// buckets: a weight whose approximate key is more than [`KEY_SLACK`] below the window is
/// collected as a stand-in (the bucket's lowest key: it only has to count below the window),
/// one more than [`KEY_SLACK`] above it not at all, so only the band costs an exact key.
#[derive(Debug, Clone)]
struct Windows {
    want: Vec<bool>,
    span: Vec<u32>,
}

impl Windows {
    fn new() -> Windows {
        Windows { want: vec![false; BUCKETS], span: vec![0; BUCKETS] }
    }

    /// Widens the windows to hold every key in `a..=b`.
    fn add(&mut self, a: u32, b: u32) {
        for top in a >> 16..=b >> 16 {
            let lo = if top == a >> 16 { a & 0xffff } else { 0 };
            let hi = if top == b >> 16 { b & 0xffff } else { 0xffff };
            self.widen(top, lo, hi);
        }
    }

    /// Widens bucket `top`'s window to hold the low bits `lo..=hi` (one window per bucket:
    /// the hull).
    fn widen(&mut self, top: u32, lo: u32, hi: u32) {
        let t = top as usize;
        let (Some(want), Some(span)) = (self.want.get_mut(t), self.span.get_mut(t)) else { return };
        *span = if *want { (*span >> 16).min(lo) << 16 | (*span & 0xffff).max(hi) } else { lo << 16 | hi };
        *want = true;
    }

    /// Every window of `self` and of `other`.
    fn union(&self, other: &Windows) -> Windows {
        let mut out = self.clone();
        for (top, _) in other.want.iter().enumerate().filter(|w| *w.1) {
            if let Some((lo, hi)) = other.window(top as u32) {
                out.widen(top as u32, lo, hi);
            }
        }
        out
    }

    /// Bucket `top`'s window of low bits, if it has one.
    fn window(&self, top: u32) -> Option<(u32, u32)> {
        let t = top as usize;
        self.want.get(t).filter(|w| **w)?;
        self.span.get(t).map(|s| (s >> 16, s & 0xffff))
    }
}

/// Pass one's state in one worker thread, for the posterior being read (fast path).
#[derive(Debug)]
struct Worker {
    first: First,
    /// Keys collected in wanted buckets (exact, or [`Windows`]' stand-ins below a window).
    inside: Vec<u32>,
    /// Scratch: the weights of a block that may hold its extremes.
    candidates: Vec<usize>,
}

/// One [`Worker`] per thread of rayon's pool (each locked only by its own thread).
fn workers(thresholds: usize) -> Vec<std::sync::Mutex<Worker>> {
    (0..rayon::current_num_threads().max(1))
        .map(|_| std::sync::Mutex::new(Worker { first: First::new(thresholds), inside: Vec::new(), candidates: Vec::new() }))
        .collect()
}

/// Pass one over a float32 chunk without the mean, block by cache-sized block
/// ([`approx_blocks`]): each weight is keyed by the approximation of [`approx_keys`] where that
/// is in the exact key's top-16-bit bucket and on the same side of every key of `limits` (the
/// threshold counts' keys) for certain, else (and for every marker) exactly; then, while the
/// block's keys are in cache, [`first_pass_block`] counts them into the calling thread's
/// worker. With `want`, the threshold counts come from the collected keys (exact), so
/// `limits` is empty: only bucket edges call for exact keys.
fn fast_chunk(mu: &[u8], rho: &[u8], limits: &[u32], want: Option<&Windows>, workers: &[std::sync::Mutex<Worker>]) {
    approx_blocks(
        mu,
        rho,
        |first, word| {
            let mut exact = unsettled(word, limits);
            while exact != 0 {
                let i = exact.trailing_zeros() as usize;
                word[i] = key_of(f32_at(mu, first + i), f32_at(rho, first + i));
                exact &= exact - 1;
            }
        },
        |first, keys| {
            // Blocks of one thread never overlap (no rayon call inside), so its lock is free;
            // another thread's index would only make them wait, never miscount.
            let w = &workers[rayon::current_thread_index().unwrap_or(0) % workers.len()];
            let mut w = w.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            first_pass_block(keys, first, mu, rho, &mut w, limits, want);
        },
    );
}

/// The largest key (f32 bit pattern) of a value <= `t`, if any SNR can be <= `t`.
fn key_at_or_below(t: f64) -> Option<u32> {
    if t.is_nan() || t < 0.0 {
        return None;
    }
    let f = t as f32;
    let f = if f as f64 > t { f32::from_bits(f.to_bits() - 1) } else { f };
    Some(f.to_bits())
}

/// The (bucket, rank within it) of the two ranks a quantile interpolates between.
type Located = [(u32, u64); 2];

/// What pass one learns about a group of weights (one posterior, or all of them).
#[derive(Debug, Clone)]
struct First {
    hist: TopHistogram,
    /// Weights analysed (the histogram's total, kept when the histogram is dropped).
    count: u64,
    pruned: u64,
    undefined: u64,
    undefined_mu: u64,
    undefined_rho: u64,
    min: u32,
    max: u32,
    /// Largest finite key, if any.
    max_finite: Option<u32>,
    sum: f64,
    under: Vec<u64>,
}

impl First {
    fn new(thresholds: usize) -> First {
        First {
            hist: TopHistogram::default(),
            count: 0,
            pruned: 0,
            undefined: 0,
            undefined_mu: 0,
            undefined_rho: 0,
            min: u32::MAX,
            max: 0,
            max_finite: None,
            sum: 0.0,
            under: vec![0; thresholds],
        }
    }

    /// Counts a weight whose key is a marker (pruned, or NaN/infinite mu, rho or both).
    fn count_marker(&mut self, k: u32) {
        match k {
            PRUNED => self.pruned += 1,
            UNDEFINED_MU => self.undefined_mu += 1,
            UNDEFINED_RHO => self.undefined_rho += 1,
            _ => {
                self.undefined_mu += 1;
                self.undefined_rho += 1;
            }
        }
        self.undefined += u64::from(k != PRUNED);
    }

    /// Adds a group's counts (not its sum: the overall sum runs in storage order).
    fn merge(&mut self, o: &First) {
        self.hist.merge(&o.hist);
        self.count += o.count;
        self.pruned += o.pruned;
        self.undefined += o.undefined;
        self.undefined_mu += o.undefined_mu;
        self.undefined_rho += o.undefined_rho;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.max_finite = self.max_finite.max(o.max_finite);
        for (a, b) in self.under.iter_mut().zip(&o.under) {
            *a += b;
        }
    }

    /// The (bucket, rank within it) pairs of the ranks each quantile level needs.
    fn quantile_locations(&self, levels: &[f64]) -> Vec<Located> {
        let n = self.count as usize;
        if n == 0 {
            return Vec::new();
        }
        levels
            .iter()
            .map(|&q| {
                let (lo, hi, _) = quantile_ranks(q, n);
                [self.hist.locate(lo as u64).unwrap_or_default(), self.hist.locate(hi as u64).unwrap_or_default()]
            })
            .collect()
    }
}

/// Pass one over a chunk's keys.
fn first_pass(keys: &[u32], layer: &mut First, overall_sum: &mut f64, under_keys: &[i64]) {
    for &k in keys {
        if k >= MARKERS {
            layer.count_marker(k);
            continue;
        }
        layer.hist.add(k);
        layer.count += 1;
        layer.min = layer.min.min(k);
        layer.max = layer.max.max(k);
        if k < INFINITY {
            layer.max_finite = layer.max_finite.max(Some(k));
        }
        let v = f32::from_bits(k) as f64;
        layer.sum += v;
        *overall_sum += v;
        for (u, &limit) in layer.under.iter_mut().zip(under_keys) {
            *u += u64::from(k as i64 <= limit);
        }
    }
}

/// Pass one over a block of [`fast_chunk`]'s keys (of weights `first..` of `mu` and `rho`):
/// the same counts as [`first_pass`] without the sum, into `worker`; the extremes are the exact
/// keys of the weights that may hold the block's (so the smallest of the blocks' is exact too).
/// With `want`, the keys in its windows are collected (every key is in its exact bucket;
/// exact keys within the band, stand-ins below it: [`Windows`]); the counts under `limits` are scanned here (with collected buckets the caller
/// takes them from those instead).
fn first_pass_block(keys: &[u32], first: usize, mu: &[u8], rho: &[u8], worker: &mut Worker, limits: &[u32], want: Option<&Windows>) {
    let Worker { first: layer, inside, candidates } = worker;
    let (mut markers, mut pruned) = (0u64, 0u64);
    // Indexed by a key's top 16 bits: no bounds checks in the loop (predict_buckets makes
    // `want` one flag and one window per bucket).
    let want = want.map(|w| (&w.want[..BUCKETS], &w.span[..BUCKETS]));
    let counts = layer.hist.buckets_mut();
    for (j, &k) in keys.iter().enumerate() {
        if k >= MARKERS {
            pruned += u64::from(k == PRUNED);
            markers += 1;
            continue;
        }
        counts[(k >> 16) as usize] += 1;
        if let Some((span, low)) = want.filter(|w| w.0[(k >> 16) as usize]).map(|w| (w.1[(k >> 16) as usize], k & 0xffff)) {
            if low + KEY_SLACK < span >> 16 {
                // Surely below the window: only counted.
                inside.push(k & !0xffff);
            } else if low <= (span & 0xffff) + KEY_SLACK {
                inside.push(key_of(f32_at(mu, first + j), f32_at(rho, first + j)));
            }
        }
    }
    layer.pruned += pruned;
    if markers > pruned {
        // Rare: count the undefined weights by kind.
        keys.iter().filter(|&&k| k >= MARKERS && k != PRUNED).for_each(|&k| layer.count_marker(k));
    }
    layer.hist.counted(keys.len() as u64 - markers);
    layer.count += keys.len() as u64 - markers;
    candidates.clear();
    match Kernel::detect() {
        // SAFETY: the CPU has the features (detected).
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { scans_avx512(keys, limits, &mut layer.under, candidates) },
        // SAFETY: the CPU has AVX2 (detected).
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { scans_avx2(keys, limits, &mut layer.under, candidates) },
        _ => scans(keys, limits, &mut layer.under, candidates),
    }
    for &j in candidates.iter() {
        let k = keys[j];
        let e = if k == INFINITY { k } else { key_of(f32_at(mu, first + j), f32_at(rho, first + j)) };
        layer.min = layer.min.min(e);
        layer.max = layer.max.max(e);
        if e < INFINITY {
            layer.max_finite = layer.max_finite.max(Some(e));
        }
    }
}

/// [`scans`] compiled for AVX-512 (16 lanes, mask compares).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2")]
unsafe fn scans_avx512(keys: &[u32], limits: &[u32], under: &mut [u64], candidates: &mut Vec<usize>) {
    scans(keys, limits, under, candidates)
}

/// [`scans`] compiled for AVX2 (unsigned 32-bit compares, minima and maxima).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scans_avx2(keys: &[u32], limits: &[u32], under: &mut [u64], candidates: &mut Vec<usize>) {
    scans(keys, limits, under, candidates)
}

/// The vectorized part of [`first_pass_block`]: adds the keys at or under each of `limits` to
/// `under`, and lists the weights that may hold the chunk's extremes in `candidates`.
#[inline(always)]
fn scans(keys: &[u32], limits: &[u32], under: &mut [u64], candidates: &mut Vec<usize>) {
    // Every key is on the right side of every limit (fast_chunk); markers are above them all.
    for (u, &limit) in under.iter_mut().zip(limits) {
        // u32 lanes per block of 64, summed in u64.
        *u += keys.chunks(64).map(|b| b.iter().map(|&k| u32::from(k <= limit)).sum::<u32>() as u64).sum::<u64>();
    }
    // The extremes: a weight's exact key is within KEY_SLACK of its key, so the exact smallest
    // key is the exact key of a weight whose key is within 2 KEY_SLACK of the smallest key, and
    // likewise the largest finite one. Infinite keys are exact (approx_keys).
    let smallest = keys.iter().copied().min().unwrap_or(u32::MAX);
    if smallest >= MARKERS {
        return;
    }
    // Largest finite key plus one (0: none).
    let finite = keys.iter().map(|&k| if k < INFINITY { k + 1 } else { 0 }).max().unwrap_or(0);
    // Candidates: keys up to `low_end`, or from `high_end` up (finite ones, and every infinity).
    let low_end = smallest.saturating_add(2 * KEY_SLACK);
    let high_end = if finite == 0 { INFINITY } else { finite.saturating_sub(1 + 2 * KEY_SLACK) };
    for (w, block) in keys.chunks(64).enumerate() {
        // Few words hold a candidate: a vectorized test before packing the flags.
        if block.iter().map(|&k| u32::from(k <= low_end || (k >= high_end && k < MARKERS))).fold(0, |a, b| a | b) == 0 {
            continue;
        }
        let mut flags = [0u8; 64];
        for (f, &k) in flags.iter_mut().zip(block) {
            *f = u8::from(k <= low_end || (k >= high_end && k < MARKERS));
        }
        let mut bits = pack(&flags);
        while bits != 0 {
            candidates.push(64 * w + bits.trailing_zeros() as usize);
            bits &= bits - 1;
        }
    }
}

/// Histogram bins by key: each top-16-bit bucket lies in one bin or straddles one boundary
/// (a bucket spans under 0.6% in value, a bin 78%), found once by bisection, so binning a
/// weight costs a table look-up and a compare instead of a logarithm.
struct BinTable {
    bins: LogBins,
    /// Smallest and largest finite key binned.
    lo: u32,
    hi: u32,
    first_top: u32,
    /// Bin of the bucket's smallest keys; `u16::MAX`: bin each key by its logarithm.
    base: Vec<u16>,
    /// Keys from here on are in bin `base + 1`.
    boundary: Vec<u32>,
}

impl BinTable {
    /// For finite keys from `lo` to `hi`.
    fn new(lo: u32, hi: u32) -> BinTable {
        let value = |k: u32| f32::from_bits(k) as f64;
        let bins = LogBins::new(value(lo), value(hi));
        let bin = |k: u32| bins.bin(value(k));
        let (first_top, last_top) = (lo >> 16, hi >> 16);
        let mut base = Vec::with_capacity((last_top - first_top + 1) as usize);
        let mut boundary = Vec::with_capacity(base.capacity());
        for top in first_top..=last_top {
            let (a, b) = ((top << 16).max(lo), (top << 16 | 0xffff).min(hi));
            let (fa, fb) = (bin(a), bin(b));
            if fa == fb {
                base.push(fa as u16);
                boundary.push(u32::MAX);
            } else if fb == fa + 1 {
                // Smallest key of the bucket in the upper bin (bin() is monotone in the key).
                let (mut l, mut h) = (a, b);
                while l + 1 < h {
                    let m = l + (h - l) / 2;
                    if bin(m) == fb {
                        h = m;
                    } else {
                        l = m;
                    }
                }
                base.push(fa as u16);
                boundary.push(h);
            } else {
                base.push(u16::MAX);
                boundary.push(u32::MAX);
            }
        }
        BinTable { bins, lo, hi, first_top, base, boundary }
    }

    /// The bin of finite key `k` (keys outside the table's range are clamped to it).
    #[inline(always)]
    fn bin(&self, k: u32) -> usize {
        let k = k.clamp(self.lo, self.hi);
        let i = ((k >> 16) - self.first_top) as usize;
        match self.base.get(i) {
            Some(&b) if b != u16::MAX => b as usize + usize::from(k >= self.boundary[i]),
            _ => self.bins.bin(f32::from_bits(k) as f64),
        }
    }
}

/// Quantile values from the located ranks, now that pass two counted their buckets.
/// `key(i, j)`: the key of rank j (0: lower, 1: upper) of level i.
fn quantiles(levels: &[f64], n: u64, key: &dyn Fn(usize, usize) -> Option<u32>) -> Vec<(f64, f64)> {
    levels
        .iter()
        .enumerate()
        .map(|(i, &q)| {
            let value = |j: usize| key(i, j).map(|k| f32::from_bits(k) as f64).unwrap_or(f64::NAN);
            if n == 0 {
                return (q, f64::NAN);
            }
            let (_, _, t) = quantile_ranks(q, n as usize);
            (q, lerp(value(0), value(1), t))
        })
        .collect()
}

fn stats_of(f: &First, sum: f64, levels: &[f64], thresholds: &[f64], key: &dyn Fn(usize, usize) -> Option<u32>) -> Stats {
    let n = f.count;
    let value = |k: u32| f32::from_bits(k) as f64;
    assemble(
        n as usize,
        f.pruned as usize,
        f.undefined as usize,
        value(f.min),
        value(f.max),
        sum,
        quantiles(levels, n, key),
        thresholds.iter().zip(&f.under).map(|(t, c)| (*t, *c as usize)).collect(),
    )
}

/// Most exact keys pass one collects near the predicted quantiles (32 MiB), all posteriors
/// together; past it, pass two finds the quantiles.
const COLLECT_CAP: usize = 1 << 23;
/// Weights per sample block, and about how many blocks are drawn.
const SAMPLE_BLOCK: usize = 256;
const SAMPLE_BLOCKS: u64 = 4096;

/// The buckets of keys each target's pass one collects exactly: those a sample of exact keys
/// predicts to hold the ranks its own quantiles and the overall ones need (each rank's window
/// widened by four standard deviations of the sample's rank, and a few ranks), and the buckets
/// of the threshold counts' `limits`.
/// None (empty) if their buckets would hold more than `cap` keys.
fn predict_buckets(ckpt: &Checkpoint, targets: &[Target], levels: &[f64], limits: &[u32], cap: usize) -> Result<Vec<Windows>> {
    let mut n = 0u64;
    for t in targets {
        n += ckpt.variable(&t.loc_key)?.info.nbytes / 4;
    }
    let stride = ((n / SAMPLE_BLOCKS) as usize).max(2 * SAMPLE_BLOCK) | 1;
    // The posteriors sampled (exact keys: libm) and sorted on every core: this phase is
    // otherwise serial, before pass one.
    let drawn: Vec<(usize, Vec<u32>)> = targets
        .par_iter()
        .map(|t| {
            let mut s = Vec::new();
            crate::cut::sample_target(ckpt, t, stride, SAMPLE_BLOCK, key_of, &mut s)?;
            let drawn = s.len();
            s.retain(|&k| k < MARKERS);
            s.sort_unstable();
            Ok((drawn, s))
        })
        .collect::<Result<_>>()?;
    let sampled: usize = drawn.iter().map(|d| d.0).sum();
    let samples: Vec<Vec<u32>> = drawn.into_iter().map(|d| d.1).collect();
    let mut all: Vec<u32> = samples.concat();
    all.par_sort_unstable();
    let mut overall = window_buckets(&all, levels);
    for &l in limits.iter().filter(|l| **l < MARKERS) {
        // Every key up to the limit in its bucket: no stand-ins there.
        overall.add(l & !0xffff, l);
    }
    let wanted: Vec<Windows> = samples.iter().map(|s| window_buckets(s, levels).union(&overall)).collect();
    // The sample's share in the wanted buckets predicts how many keys pass one would collect
    // (the share shrinks only with the square root of the sample, so on large checkpoints it
    // can pass the cap): if too many, no collecting at all, two passes.
    let hits: usize = samples.iter().zip(&wanted).map(|(s, w)| s.iter().filter(|&&k| w.want.get((k >> 16) as usize).is_some_and(|w| *w)).count()).sum();
    let predicted = hits as f64 / sampled.max(1) as f64 * n as f64;
    Ok(if predicted < 0.8 * cap as f64 { wanted } else { Vec::new() })
}

/// The windows of keys the sorted sample `s` predicts to hold each level's ranks.
fn window_buckets(s: &[u32], levels: &[f64]) -> Windows {
    let mut want = Windows::new();
    let m = s.len();
    if m == 0 {
        return want;
    }
    for &q in levels {
        let q = q.clamp(0.0, 1.0);
        let half = 4.0 * (q * (1.0 - q) * m as f64).sqrt() + 8.0;
        let centre = q * (m - 1) as f64;
        let (a, b) = ((centre - half).floor(), (centre + half).ceil());
        let first = if a < 0.0 { 0 } else { s.get(a as usize).copied().unwrap_or(0) };
        let last = if b >= m as f64 { INFINITY } else { s.get(b as usize).copied().unwrap_or(INFINITY) };
        want.add(first, last.max(first));
    }
    want
}

/// Keys per level (lower and upper rank) of each layer, and overall.
type Resolved = (Vec<Vec<[u32; 2]>>, Vec<[u32; 2]>);

/// The keys of each of the buckets `tops` among the `collected` ones, in one scan.
fn by_bucket<'a>(collected: impl Iterator<Item = &'a Vec<u32>>, tops: impl Iterator<Item = u32>) -> std::collections::HashMap<u32, Vec<u32>> {
    let mut out: std::collections::HashMap<u32, Vec<u32>> = tops.map(|t| (t, Vec::new())).collect();
    let mut chosen = vec![false; crate::radix::BUCKETS];
    out.keys().for_each(|&t| chosen[t as usize & (crate::radix::BUCKETS - 1)] = true);
    for c in collected {
        for &k in c {
            if chosen.get((k >> 16) as usize).is_some_and(|c| *c) {
                out.entry(k >> 16).or_default().push(k);
            }
        }
    }
    out
}

/// The key of rank `within` among `keys` (reordered).
fn select(keys: Option<&mut Vec<u32>>, within: u64) -> Option<u32> {
    let keys = keys?;
    let within = usize::try_from(within).ok().filter(|w| *w < keys.len())?;
    Some(*keys.select_nth_unstable(within).1)
}

/// The key of rank `within` in bucket `top` among `keys`, if it lies in the window `lo..=hi`
/// of low bits: the collected keys there are exact, and as many as the weights there, with
/// the stand-ins and exact keys below it as many as the weights below it.
fn select_in(keys: Option<&mut Vec<u32>>, within: u64, (lo, hi): (u32, u32)) -> Option<u32> {
    select(keys, within).filter(|k| (lo..=hi).contains(&(k & 0xffff)))
}

/// The [`Resolved`] keys from the keys pass one collected, if every rank fell in a collected
/// window.
fn resolve(collected: &[Vec<u32>], wanted: &[Windows], layers: &[(First, Vec<Located>)], overall: &[Located]) -> Option<Resolved> {
    let mut per_layer = Vec::with_capacity(layers.len());
    for ((_, locations), (c, w)) in layers.iter().zip(collected.iter().zip(wanted)) {
        let mut keys = Vec::with_capacity(locations.len());
        let mut buckets = by_bucket(std::iter::once(c), locations.iter().flatten().map(|l| l.0));
        for at in locations {
            let mut pair = [0u32; 2];
            for (k, &(top, within)) in pair.iter_mut().zip(at) {
                *k = select_in(buckets.get_mut(&top), within, w.window(top)?)?;
            }
            keys.push(pair);
        }
        per_layer.push(keys);
    }
    let mut all = Vec::with_capacity(overall.len());
    let mut buckets = by_bucket(collected.iter(), overall.iter().flatten().map(|l| l.0));
    for at in overall {
        let mut pair = [0u32; 2];
        for (k, &(top, within)) in pair.iter_mut().zip(at) {
            // Exact in every layer only where every layer's window holds it.
            let mut window = (0, 0xffff);
            for w in wanted {
                let (lo, hi) = w.window(top)?;
                window = (window.0.max(lo), window.1.min(hi));
            }
            *k = select_in(buckets.get_mut(&top), within, window)?;
        }
        all.push(pair);
    }
    Some((per_layer, all))
}

/// The streaming [`crate::snr::analyse`] (every target f32, f16 or bf16).
pub(crate) fn analyse_f32(ckpt: &Checkpoint, targets: &[Target], levels: &[f64], thresholds: &[f64], extras: Extras) -> Result<SnrReport> {
    let under_keys: Vec<i64> = thresholds.iter().map(|t| key_at_or_below(*t).map_or(-1, i64::from)).collect();
    // The same limits as u32 keys for the fast pass, where "no SNR can be <= t" becomes a limit
    // no key is under: a marker never is, and no exact-key computation is needed near it.
    let limits: Vec<u32> = under_keys.iter().map(|&l| u32::try_from(l).unwrap_or(MARKERS)).collect();
    let mut keys = Vec::new();
    // The buckets whose exact keys pass one collects, when the quantiles may be found in one
    // pass (every posterior float32, neither mean nor histogram asked for).
    let one_pass = !extras.mean && !extras.histogram && !levels.is_empty() && targets.iter().all(|t| t.dtype == DType::Float32);
    let mut wanted = if one_pass { predict_buckets(ckpt, targets, levels, &limits, COLLECT_CAP)? } else { Vec::new() };
    let mut collected: Vec<Vec<u32>> = Vec::with_capacity(targets.len());
    // Pass one.
    let mut overall = First::new(thresholds.len());
    let mut overall_sum = 0.0;
    let mut layers: Vec<(First, Vec<Located>)> = Vec::with_capacity(targets.len());
    for (i, t) in targets.iter().enumerate() {
        let mut layer = First::new(thresholds.len());
        let mut inside = Vec::new();
        let want = wanted.get(i);
        let fast = t.dtype == DType::Float32 && !extras.mean;
        let pool = if fast { workers(thresholds.len()) } else { Vec::new() };
        for_each_chunk(ckpt, t, true, |_, mu, rho| {
            if fast {
                // With collected buckets, the threshold counts come from them (below).
                let scanned = if want.is_some() { &[][..] } else { &limits[..] };
                fast_chunk(mu, rho, scanned, want, &pool);
            } else {
                chunk_keys(t.dtype, mu, rho, &mut keys);
                first_pass(&keys, &mut layer, &mut overall_sum, &under_keys);
            }
            Ok(())
        })?;
        for w in pool {
            let w = w.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
            layer.merge(&w.first);
            inside.extend(w.inside);
        }
        if want.is_some() {
            // Keys at or under each limit: whole buckets below the limit's bucket, and in it
            // (collected from the bucket's start: predict_buckets wants it) the exact keys up
            // to the limit.
            for (u, &limit) in layer.under.iter_mut().zip(&limits).filter(|(_, l)| **l < MARKERS) {
                let within = inside.iter().filter(|&&k| k >> 16 == limit >> 16 && k <= limit).count() as u64;
                *u = layer.hist.count_below(limit >> 16) + within;
            }
        }
        overall.merge(&layer);
        collected.push(inside);
        if collected.iter().map(Vec::len).sum::<usize>() > COLLECT_CAP {
            // Too many weights near the predicted quantiles: pass two finds them.
            (wanted, collected) = (Vec::new(), Vec::new());
        }
        let locations = layer.quantile_locations(levels);
        // Only the counts stay: the 512 KiB bucket histogram is not needed again.
        layer.hist = TopHistogram::default();
        layers.push((layer, locations));
    }
    let overall_locations = overall.quantile_locations(levels);
    // Every quantile from pass one's collected keys, or pass two for all of them.
    let resolved = if wanted.is_empty() { None } else { resolve(&collected, &wanted, &layers, &overall_locations) };
    drop(collected);
    #[cfg(test)]
    tests::PASSES.set(if resolved.is_some() { 1 } else { 2 });
    // Pass two.
    let mut overall_low = LowHistograms::new(overall_locations.iter().flat_map(|l| [l[0].0, l[1].0]));
    let mut out = Vec::with_capacity(targets.len());
    let mut non_finite = Vec::new();
    // Pass two's marks of weights keyed exactly, a bit per weight of a chunk.
    let mut need: Vec<std::sync::atomic::AtomicU64> = (0..CHUNK_WEIGHTS / 64).map(|_| 0.into()).collect();
    for (t, (layer, locations)) in targets.iter().zip(&layers) {
        let mut low = LowHistograms::new(locations.iter().flat_map(|l| [l[0].0, l[1].0]));
        let table = layer.max_finite.filter(|_| extras.histogram).map(|hi| BinTable::new(layer.min, hi));
        let mut bins = vec![0usize; table.as_ref().map_or(0, |b| b.bins.bins)];
        let count = |k: u32, low: &mut LowHistograms, overall_low: &mut LowHistograms, bins: &mut [usize]| {
            if k >= MARKERS {
                return;
            }
            low.add(k);
            overall_low.add(k);
            if let (Some(table), true) = (&table, k < INFINITY) {
                bins[table.bin(k)] += 1;
            }
        };
        let skip = resolved.is_some();
        for_each_chunk(ckpt, t, false, |_, mu, rho| {
            if skip {
                return Ok(());
            }
            if t.dtype != DType::Float32 {
                chunk_keys(t.dtype, mu, rho, &mut keys);
                keys.iter().for_each(|&k| count(k, &mut low, &mut overall_low, &mut bins));
                return Ok(());
            }
            if table.is_none() {
                // Only the weights whose exact key may fall in a bucket pass two counts matter:
                // their exact keys replace the approximate ones (in parallel), marked in `need`.
                let ranges = wanted_ranges(&[&low, &overall_low]);
                let n = mu.len() / 4;
                need.iter_mut().take(n.div_ceil(64)).for_each(|w| *w.get_mut() = 0);
                approx_keys_then(mu, rho, &mut keys, |first, word| {
                    let mut exact = in_ranges(word, &ranges);
                    need[first / 64].store(exact, std::sync::atomic::Ordering::Relaxed);
                    while exact != 0 {
                        let i = exact.trailing_zeros() as usize;
                        word[i] = key_of(f32_at(mu, first + i), f32_at(rho, first + i));
                        exact &= exact - 1;
                    }
                });
                for (w, bits) in need.iter_mut().take(n.div_ceil(64)).enumerate() {
                    let mut bits = *bits.get_mut();
                    while bits != 0 {
                        count(keys[64 * w + bits.trailing_zeros() as usize], &mut low, &mut overall_low, &mut bins);
                        bits &= bits - 1;
                    }
                }
                return Ok(());
            }
            // Approximate keys settle most weights: those whose exact key (within KEY_SLACK)
            // cannot fall in a bucket pass two counts nor across a histogram bin boundary.
            approx_keys(mu, rho, &mut keys);
            for (j, &a) in keys.iter().enumerate() {
                if a == u32::MAX {
                    continue; // undefined
                }
                let (below, above) = (a.saturating_sub(KEY_SLACK), a.saturating_add(KEY_SLACK));
                let settled = a >= 2 * KEY_SLACK
                    && above < INFINITY
                    && !(low.wants(below) || low.wants(above) || overall_low.wants(below) || overall_low.wants(above));
                match &table {
                    // Not binned (no histogram asked for, or no finite key): nothing to count.
                    None if settled => {}
                    Some(table) if settled && table.bin(below) == table.bin(above) => bins[table.bin(a)] += 1,
                    _ => count(key_of(f32_at(mu, j), f32_at(rho, j)), &mut low, &mut overall_low, &mut bins),
                }
            }
            Ok(())
        })?;
        for (key, n) in [(&t.loc_key, layer.undefined_mu), (&t.rho_key, layer.undefined_rho)] {
            if n > 0 {
                non_finite.push(NonFinite { key: key.clone(), count: n as usize });
            }
        }
        let index = out.len();
        let key = |l: usize, j: usize| match &resolved {
            Some((per_layer, _)) => per_layer.get(index).and_then(|r| r.get(l)).map(|k| k[j]),
            None => locations.get(l).and_then(|at| low.key_at(at[j].0, at[j].1)),
        };
        let stats = stats_of(layer, if extras.mean { layer.sum } else { f64::NAN }, levels, thresholds, &key);
        out.push(TargetSnr { target: t.clone(), stats, histogram: table.map(|b| b.bins.edges(bins)).unwrap_or_default() });
    }
    let key = |l: usize, j: usize| match &resolved {
        Some((_, all)) => all.get(l).map(|k| k[j]),
        None => overall_locations.get(l).and_then(|at| overall_low.key_at(at[j].0, at[j].1)),
    };
    let overall_stats = stats_of(&overall, if extras.mean { overall_sum } else { f64::NAN }, levels, thresholds, &key);
    Ok(SnrReport { path: display(ckpt.path()), layers: out, overall: overall_stats, non_finite })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snr::{analyse_in_memory, select_targets, Part, DEFAULT_LEVELS, DEFAULT_THRESHOLDS};
    use formats::bundle::BundleWriter;
    use formats::synthetic::SplitMix64 as Rng;

    thread_local! {
        /// Passes the last `analyse_f32` on this thread made (1: quantiles from pass one).
        pub(super) static PASSES: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
    }

    /// Kernel shapes: the first spans two 1 Mi-weight chunks.
    const LAYERS: [usize; 3] = [1_100_000, 210_000, 640];

    /// Writes layers of `weight(rng, layer, i)` as a checkpoint in `dir` and opens it.
    fn write(dir: &std::path::Path, weight: impl Fn(&mut Rng, usize, usize) -> (f32, f32)) -> (Checkpoint, Vec<Target>) {
        let prefix = dir.join("model.ckpt-1");
        let mut w = BundleWriter::create(&prefix).expect("create");
        let mut rng = Rng(5);
        for (l, &n) in LAYERS.iter().enumerate() {
            let weights: Vec<(f32, f32)> = (0..n).map(|i| weight(&mut rng, l, i)).collect();
            let mu: Vec<u8> = weights.iter().flat_map(|w| w.0.to_le_bytes()).collect();
            let rho: Vec<u8> = weights.iter().flat_map(|w| w.1.to_le_bytes()).collect();
            w.add_bytes(&format!("den_{}/kernel_posterior_loc", l + 1), DType::Float32, &[n as u64], &mu).expect("mu");
            w.add_bytes(&format!("den_{}/kernel_posterior_untransformed_scale", l + 1), DType::Float32, &[n as u64], &rho).expect("rho");
        }
        w.finish().expect("finish");
        let ckpt = Checkpoint::open(&prefix).expect("open");
        let targets = select_targets(&ckpt, None, &[Part::Kernel]).expect("targets");
        (ckpt, targets)
    }

    /// Statistics of the fast path and of sorting every SNR of the checkpoint [`write`] makes,
    /// and the passes the fast path made.
    fn both(dir: &std::path::Path, levels: &[f64], weight: impl Fn(&mut Rng, usize, usize) -> (f32, f32)) -> (String, String, u8) {
        let (ckpt, targets) = write(dir, weight);
        let json = |mut r: SnrReport| {
            // The fast path computes neither mean nor histograms.
            for s in r.layers.iter_mut().map(|l| &mut l.stats).chain([&mut r.overall]) {
                s.mean = f64::NAN;
            }
            r.layers.iter_mut().for_each(|l| l.histogram.clear());
            serde_json::to_string(&r).expect("json")
        };
        let fast = analyse_f32(&ckpt, &targets, levels, &DEFAULT_THRESHOLDS, Extras::NONE).expect("fast");
        let passes = PASSES.get();
        let want = analyse_in_memory(&ckpt, &targets, levels, &DEFAULT_THRESHOLDS).expect("in memory");
        (json(fast), json(want), passes)
    }

    /// Ordinary weights with ties (3%), pruned and undefined weights and huge scales.
    fn ordinary(rng: &mut Rng, i: usize) -> (f32, f32) {
        match i % 97 {
            0..=2 => (0.125, -3.0),
            3 => (0.0, -1000.0),
            4 if i.is_multiple_of(5) => (f32::NAN, -3.0),
            5 => (rng.uniform(-0.3, 0.3), 90.0),
            _ => (rng.uniform(-0.3, 0.3), rng.uniform(-9.0, 2.0)),
        }
    }

    #[test]
    fn quantiles_in_one_pass_equal_sorting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let levels = [0.0, 0.001, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0];
        let (fast, want, passes) = both(dir.path(), &levels, |rng, _, i| ordinary(rng, i));
        assert_eq!(fast, want);
        assert_eq!(passes, 1);
        // Half the weights tie: quantiles inside the tie group.
        let dir = tempfile::tempdir().expect("tempdir");
        let (fast, want, passes) = both(dir.path(), &DEFAULT_LEVELS, |rng, _, i| if i % 2 == 0 { (0.125, -3.0) } else { ordinary(rng, i) });
        assert_eq!(fast, want);
        assert_eq!(passes, 1);
    }

    #[test]
    fn a_mispredicting_sample_falls_back_to_pass_two() {
        // The sampled blocks hold large SNRs, every other weight small ones.
        let n: usize = LAYERS.iter().sum();
        let stride = (n / SAMPLE_BLOCKS as usize).max(2 * SAMPLE_BLOCK) | 1;
        let dir = tempfile::tempdir().expect("tempdir");
        let (fast, want, passes) = both(dir.path(), &DEFAULT_LEVELS, |rng, _, i| {
            if i % stride < SAMPLE_BLOCK { (rng.uniform(5.0, 9.0), -5.0) } else { ordinary(rng, i) }
        });
        assert_eq!(fast, want);
        assert_eq!(passes, 2);
    }

    #[test]
    fn layers_of_different_scales_in_one_pass() {
        // Each layer's windows differ from the overall ones: the overall ranks are selected
        // where every layer's window holds them.
        let dir = tempfile::tempdir().expect("tempdir");
        let (fast, want, passes) = both(dir.path(), &DEFAULT_LEVELS, |rng, l, i| {
            let (mu, rho) = ordinary(rng, i);
            (mu * [1.0, 3.0, 0.5][l], rho)
        });
        assert_eq!(fast, want);
        assert_eq!(passes, 1);
    }

    #[test]
    fn a_rank_outside_its_window_falls_back_to_pass_two() {
        // The sampled blocks hold an SNR 0.08% above every other weight's: the same bucket
        // (so whole buckets would have been collected and resolved in one pass), but 6700
        // units in the last place apart, beyond the slack: the window the sample predicts
        // misses the quartile and the median, which lie below it.
        let n: usize = LAYERS.iter().sum();
        let stride = (n / SAMPLE_BLOCKS as usize).max(2 * SAMPLE_BLOCK) | 1;
        assert_eq!(key_of(0.125, -3.0) >> 16, key_of(0.1251, -3.0) >> 16);
        let dir = tempfile::tempdir().expect("tempdir");
        let (fast, want, passes) = both(dir.path(), &[0.25, 0.5], |_, _, i| (if i % stride < SAMPLE_BLOCK { 0.1251 } else { 0.125 }, -3.0));
        assert_eq!(fast, want);
        assert_eq!(passes, 2);
    }

    /// Every rank of the weights of `mu` and `rho` in the buckets of `windows`, selected from
    /// what `first_pass_block` collects given approximate keys `keys`: the exact key wherever it
    /// lies in the bucket's window, None (pass two) elsewhere; and at least one rank found.
    fn check_windows(mu: &[f32], rho: &[f32], keys: &[u32], windows: &Windows) {
        let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let mut worker = Worker { first: First::new(0), inside: Vec::new(), candidates: Vec::new() };
        first_pass_block(keys, 0, &bytes(mu), &bytes(rho), &mut worker, &[], Some(windows));
        let mut exact: Vec<u32> = mu.iter().zip(rho).map(|(m, r)| key_of(*m, *r)).collect();
        exact.sort_unstable();
        let mut found = 0;
        for top in (0..BUCKETS as u32).filter(|t| windows.window(*t).is_some()) {
            let bucket: Vec<u32> = exact.iter().copied().filter(|k| k >> 16 == top).collect();
            let (lo, hi) = windows.window(top).expect("window");
            for (within, &k) in bucket.iter().enumerate() {
                let mut by = by_bucket(std::iter::once(&worker.inside), [top].into_iter());
                let got = select_in(by.get_mut(&top), within as u64, (lo, hi));
                let inside = (lo..=hi).contains(&(k & 0xffff));
                assert_eq!(got, inside.then_some(k), "bucket {top:#x} rank {within} key {k:#x} window {lo:#x}..={hi:#x}");
                found += usize::from(inside);
            }
        }
        assert!(found > 0);
    }

    #[test]
    fn a_window_collects_its_band_exactly_and_stand_ins_below() {
        // SNRs within about 1% of a tie group's (two or three buckets), a tenth of them tied;
        // approximate keys off by up to the slack (in their exact bucket).
        let mut rng = Rng(9);
        let (tie_mu, tie_rho) = (0.125f32, -3.0f32);
        let (mut mu, mut rho) = (Vec::new(), Vec::new());
        for j in 0..20_000 {
            let m = if j % 10 == 0 { tie_mu } else { tie_mu * (1.0 + rng.uniform(-0.01, 0.01)) };
            mu.push(m);
            rho.push(tie_rho);
        }
        let keys: Vec<u32> = mu
            .iter()
            .zip(&rho)
            .enumerate()
            .map(|(j, (m, r))| {
                let e = key_of(*m, *r);
                let off = (j as u32 * 37) % (2 * KEY_SLACK + 1);
                (e + off).saturating_sub(KEY_SLACK).clamp(e & !0xffff, e | 0xffff)
            })
            .collect();
        let tie = key_of(tie_mu, tie_rho);
        // Windows starting at, ending at and spanning the tie group, and across a bucket edge.
        for (a, b) in [(tie, tie + 3000), (tie - 3000, tie), (tie - 1, tie + 1), ((tie | 0xffff) - 2000, (tie | 0xffff) + 2000)] {
            let mut windows = Windows::new();
            windows.add(a, b);
            check_windows(&mu, &rho, &keys, &windows);
        }
    }

    #[test]
    fn windows_predicted_to_overflow_are_not_collected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ckpt, targets) = write(dir.path(), |rng, _, i| ordinary(rng, i));
        let limits = [key_at_or_below(1.0).unwrap_or(0)];
        let wanted = predict_buckets(&ckpt, &targets, &DEFAULT_LEVELS, &limits, COLLECT_CAP).expect("predicted");
        assert_eq!(wanted.len(), targets.len());
        // A few per cent of the 1.3 M weights are in the windows: over a cap of 10000.
        assert!(predict_buckets(&ckpt, &targets, &DEFAULT_LEVELS, &limits, 10_000).expect("predicted").is_empty());
    }
}
