//! The cut of `prune --sparsity` on float32 posteriors: the exact k-th smallest decision SNR
//! of a group of targets, how many weights equal to it are pruned and how many there are,
//! usually in one streaming pass:
//!
//! 1. a small sample (blocks of [`SAMPLE_BLOCK`] weights spread over the group, exact keys)
//!    predicts the k-th key and a window of keys around it, widened by the sample's
//!    confidence bound;
//! 2. one pass keys every weight by the fast approximation, counts the weights below the
//!    window exactly and collects the exact keys of the weights in it (at most a cap);
//! 3. if the k-th weight lies in the window (the pass's exact counts say so), it is selected
//!    from the collected keys; if not (a sample that mispredicts: adversarial data, or too many
//!    weights in the window), [`two_pass_cut`] runs: a radix histogram of the approximate keys
//!    locates the bucket, and a second pass counts that bucket's exact keys.

use formats::checkpoint::Checkpoint;

use crate::error::{Error, Result};
use crate::posterior::{for_each_chunk, CHUNK_WEIGHTS};
use crate::radix::TopHistogram;
use crate::snr::Target;
use crate::threshold::{approx_keys, approx_keys_then, decision_snr, in_ranges, KEY_SLACK};

/// Consecutive weights per sample block.
pub(crate) const SAMPLE_BLOCK: usize = 64;
/// About this many sample blocks per group.
const SAMPLE_BLOCKS: usize = 16384;
/// Most exact keys collected in the window (16 MiB).
pub(crate) const WINDOW_CAP: usize = 1 << 22;
/// Largest key of a decision SNR (+inf); undefined weights are `u32::MAX`.
const INFINITY: u32 = 0x7f80_0000;

/// The cut: (key of the k-th smallest decision SNR, how many weights equal to it are pruned,
/// how many weights equal it).
pub(crate) type Cut = (u32, u64, u64);

/// How the cut was found (for the tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    /// No weight is pruned (k = 0): no pass over the weights.
    Nothing,
    /// One pass: the sample's window held the k-th weight.
    Window,
    /// The window missed (or would hold too many weights): histogram pass and bucket pass.
    TwoPass,
}

/// Little-endian f32 element `i` of `bytes` (0 past the end).
fn f32_at(bytes: &[u8], i: usize) -> f32 {
    bytes.get(4 * i..4 * i + 4).map_or(0.0, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The exact key of weight (mu, rho): its decision SNR's bits, `u32::MAX` when undefined.
#[inline(always)]
fn exact_key(mu: f32, rho: f32) -> u32 {
    let s = decision_snr(mu, rho);
    if s.is_nan() { u32::MAX } else { s.to_bits() }
}

/// Distance between sample blocks for a group of `n` weights: odd, so that blocks do not all
/// fall on the same columns of power-of-two rows.
pub(crate) fn sample_stride(n: u64) -> usize {
    ((n / SAMPLE_BLOCKS as u64) as usize).max(2 * SAMPLE_BLOCK) | 1
}

/// Starts of the sample blocks of a target of `n` weights.
pub(crate) fn sample_starts(n: usize, stride: usize) -> impl Iterator<Item = usize> {
    (0..n).step_by(stride.max(1))
}

/// Exact keys of the sample blocks of the group's targets, sorted.
fn sample(ckpt: &Checkpoint, targets: &[Target], group: &[usize], stride: usize) -> Result<Vec<u32>> {
    let mut keys = Vec::new();
    for &i in group {
        let t = targets.get(i).ok_or_else(|| Error::invalid(ckpt.path(), "no such target"))?;
        sample_target(ckpt, t, stride, SAMPLE_BLOCK, exact_key, &mut keys)?;
    }
    keys.sort_unstable();
    Ok(keys)
}

/// Appends `key(mu, rho)` of the weights of float32 target `t` in blocks of `block` weights
/// every `stride` weights to `out`, releasing the pages read.
pub(crate) fn sample_target(ckpt: &Checkpoint, t: &Target, stride: usize, block: usize, key: impl Fn(f32, f32) -> u32, out: &mut Vec<u32>) -> Result<()> {
    let (mu, rho) = (ckpt.read_unverified(&t.loc_key)?, ckpt.read_unverified(&t.rho_key)?);
    let numeric = |key: &str| Error::invalid(ckpt.path(), format!("'{key}' is not numeric"));
    let (mu, rho) = (mu.bytes().ok_or_else(|| numeric(&t.loc_key))?, rho.bytes().ok_or_else(|| numeric(&t.rho_key))?);
    let n = mu.len().min(rho.len()) / 4;
    // A touch maps the whole page-cache folio (up to FOLIO_MAX) around a sampled block, so
    // pages are released behind the sample in large steps, a folio's length behind, and all
    // at the end: the sample leaves nothing resident.
    let mut released = 0;
    for start in sample_starts(n, stride) {
        let end = (start + block).min(n);
        out.extend((start..end).map(|j| key(f32_at(mu, j), f32_at(rho, j))));
        let behind = (4 * start).saturating_sub(formats::tensor::FOLIO_MAX);
        if behind >= released + 4 * formats::tensor::FOLIO_MAX {
            ckpt.release(&t.loc_key, released..behind);
            ckpt.release(&t.rho_key, released..behind);
            released = behind;
        }
    }
    if released < 4 * n {
        ckpt.release(&t.loc_key, released..4 * n);
        ckpt.release(&t.rho_key, released..4 * n);
    }
    Ok(())
}

/// The window of exact keys [lo, hi] that the sorted `sample` predicts to hold the weight of
/// rank `fraction` (of all weights), and the share of weights it is predicted to hold.
fn predict(sample: &[u32], fraction: f64) -> Option<(u32, u32, f64)> {
    let m = sample.len();
    if m == 0 {
        return None;
    }
    let p = fraction.clamp(0.0, 1.0);
    // The number of sampled keys below the true cut is about binomial(m, p): six standard
    // deviations, plus a little for rounding and for blocks of neighbours that correlate.
    let half = 6.0 * (p * (1.0 - p) * m as f64).sqrt() + 8.0;
    // Undefined weights (u32::MAX, last) are never pruned: the cut is at most the largest
    // defined key.
    let defined = sample.partition_point(|&k| k != u32::MAX);
    let centre = (p * m as f64).min(defined as f64 - 1.0);
    let (a, b) = ((centre - half).floor(), (centre + half).ceil());
    let lo = if a < 0.0 { 0 } else { sample.get(a as usize).copied().unwrap_or(INFINITY).min(INFINITY) };
    let hi = if b >= defined as f64 { INFINITY } else { sample.get(b as usize).copied().unwrap_or(INFINITY).min(INFINITY) };
    let held = sample.partition_point(|&k| k <= hi) - sample.partition_point(|&k| k < lo);
    Some((lo.min(hi), hi, held as f64 / m as f64))
}

/// What the window pass found.
struct Window {
    /// Weights whose exact key is below the window.
    below: u64,
    /// Undefined weights (never pruned).
    undefined: u64,
    /// Exact keys in the window, unless there were more than the cap.
    keys: Option<Vec<u32>>,
}

/// One pass over the group: exact counts below `[lo, hi]` and the exact keys inside it.
fn window_pass(ckpt: &Checkpoint, targets: &[Target], group: &[usize], lo: u32, hi: u32, cap: usize, keys: &mut Vec<u32>) -> Result<Window> {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    // Approximate keys within the slack of the window are replaced by exact ones; every other
    // approximate key is below lo or above hi exactly when its exact key is (hi <= +inf, so
    // the range never reaches the undefined weights' u32::MAX).
    let first = lo.saturating_sub(KEY_SLACK);
    let ranges = [(first, hi.saturating_add(KEY_SLACK) - first)];
    let (mut below, mut undefined, mut collected) = (0u64, 0u64, Some(Vec::new()));
    // Bits of the weights keyed exactly, per chunk.
    let need: Vec<AtomicU64> = (0..CHUNK_WEIGHTS / 64).map(|_| AtomicU64::new(0)).collect();
    for &i in group {
        let t = targets.get(i).ok_or_else(|| Error::invalid(ckpt.path(), "no such target"))?;
        for_each_chunk(ckpt, t, false, |_, mu, rho| {
            let Some(inside) = collected.as_mut() else {
                return Ok(()); // over the cap: the fallback decides
            };
            approx_keys_then(mu, rho, keys, |start, word| {
                let mut exact = in_ranges(word, &ranges);
                if let Some(w) = need.get(start / 64) {
                    w.store(exact, Relaxed);
                }
                while exact != 0 {
                    let j = exact.trailing_zeros() as usize;
                    word[j] = exact_key(f32_at(mu, start + j), f32_at(rho, start + j));
                    exact &= exact - 1;
                }
            });
            // u32 lanes per block of 64 (vectorized), summed in u64.
            below += keys.chunks(64).map(|b| b.iter().map(|&k| u32::from(k < lo)).sum::<u32>() as u64).sum::<u64>();
            undefined += keys.chunks(64).map(|b| b.iter().map(|&k| u32::from(k == u32::MAX)).sum::<u32>() as u64).sum::<u64>();
            for (w, bits) in need.iter().take(keys.len().div_ceil(64)).enumerate() {
                let mut bits = bits.load(Relaxed);
                while bits != 0 {
                    let k = keys.get(64 * w + bits.trailing_zeros() as usize).copied().unwrap_or(u32::MAX);
                    if (lo..=hi).contains(&k) {
                        inside.push(k);
                    }
                    bits &= bits - 1;
                }
            }
            if inside.len() > cap {
                collected = None;
            }
            Ok(())
        })?;
    }
    Ok(Window { below, undefined, keys: collected })
}

/// The number of weights pruned by `fraction` of `n` weights of which `undefined` cannot be.
fn pruned_count(fraction: f64, n: u64, undefined: u64) -> u64 {
    ((fraction * n as f64).round() as u64).min(n - undefined.min(n))
}

/// The cut of `fraction` of the group's `n` weights (`None`: nothing pruned), and how it was
/// found. `cap` bounds the keys collected in the window ([`WINDOW_CAP`]; smaller in tests).
pub(crate) fn find_cut(ckpt: &Checkpoint, targets: &[Target], group: &[usize], fraction: f64, n: u64, cap: usize, keys: &mut Vec<u32>) -> Result<(Option<Cut>, Path)> {
    if (fraction * n as f64).round() < 1.0 {
        return Ok((None, Path::Nothing));
    }
    let sampled = sample(ckpt, targets, group, sample_stride(n))?;
    if let Some((lo, hi, share)) = predict(&sampled, fraction) {
        drop(sampled);
        // A window predicted to hold more than the cap would overflow it: straight to the
        // fallback rather than a pass that cannot succeed.
        if share * (n as f64) < 0.8 * cap as f64 {
            let w = window_pass(ckpt, targets, group, lo, hi, cap, keys)?;
            let k = pruned_count(fraction, n, w.undefined);
            if k == 0 {
                return Ok((None, Path::Window));
            }
            if let Some(mut inside) = w.keys {
                let rank = k - 1;
                if let Some(r) = rank.checked_sub(w.below).filter(|r| *r < inside.len() as u64) {
                    let (_, &mut key, _) = inside.select_nth_unstable(r as usize);
                    let less = inside.iter().filter(|&&x| x < key).count() as u64;
                    let equal = inside.iter().filter(|&&x| x == key).count() as u64;
                    return Ok((Some((key, k - (w.below + less), equal)), Path::Window));
                }
            }
        }
    }
    Ok((two_pass_cut(ckpt, targets, group, fraction, n, keys)?, Path::TwoPass))
}

/// The fallback: approximate keys counted by their top 16 bits locate the bucket of the k-th
/// smallest SNR; [`exact_cut`] resolves it.
fn two_pass_cut(ckpt: &Checkpoint, targets: &[Target], group: &[usize], fraction: f64, n: u64, keys: &mut Vec<u32>) -> Result<Option<Cut>> {
    let (mut hist, mut second, mut undefined) = (TopHistogram::default(), TopHistogram::default(), 0u64);
    for &i in group {
        let t = targets.get(i).ok_or_else(|| Error::invalid(ckpt.path(), "no such target"))?;
        for_each_chunk(ckpt, t, false, |_, mu, rho| {
            approx_keys(mu, rho, keys);
            undefined += keys.iter().filter(|&&k| k == u32::MAX).count() as u64;
            // The two halves on two cores.
            let (a, b) = keys.split_at(keys.len() / 2);
            let add = |keys: &[u32], hist: &mut TopHistogram| keys.iter().filter(|&&k| k != u32::MAX).for_each(|&k| hist.add(k));
            rayon::join(|| add(a, &mut hist), || add(b, &mut second));
            Ok(())
        })?;
    }
    hist.merge(&second);
    drop(second);
    let k = pruned_count(fraction, n, undefined);
    match k.checked_sub(1).and_then(|r| hist.locate(r)) {
        Some((top, _)) => {
            drop(hist);
            Ok(Some(exact_cut(ckpt, targets, group, top, k, keys)?))
        }
        None => Ok(None),
    }
}

/// Pass two of [`two_pass_cut`]: the exact key of the k-th smallest decision SNR of `group`,
/// known to lie in bucket `top` of the approximate keys, how many weights equal to it are
/// pruned (k minus those below it), and how many there are.
fn exact_cut(ckpt: &Checkpoint, targets: &[Target], group: &[usize], top: u32, k: u64, keys: &mut Vec<u32>) -> Result<Cut> {
    // Exact keys in [lo, hi] are counted one by one: the approximate bucket widened by the
    // approximation's error holds the k-th exact key (see `threshold::approx_keys`).
    let lo = (top << 16).saturating_sub(KEY_SLACK);
    let hi = (top << 16 | 0xffff).saturating_add(KEY_SLACK).min(u32::MAX - 1);
    let mut window = vec![0u64; (hi - lo + 1) as usize];
    let mut below = 0u64;
    // Approximate keys from which the exact key may be in [lo, hi] are replaced by the exact
    // one (in parallel); every other key is below lo (counted) or above hi exactly when its
    // exact key is. NaN decisions (undefined weights) are u32::MAX, above hi.
    let first = lo.saturating_sub(KEY_SLACK);
    let ranges = [(first, hi.saturating_add(KEY_SLACK) - first)];
    for &i in group {
        let t = targets.get(i).ok_or_else(|| Error::invalid(ckpt.path(), "no such target"))?;
        for_each_chunk(ckpt, t, false, |_, mu, rho| {
            approx_keys_then(mu, rho, keys, |start, word| {
                let mut exact = in_ranges(word, &ranges);
                while exact != 0 {
                    let j = exact.trailing_zeros() as usize;
                    word[j] = exact_key(f32_at(mu, start + j), f32_at(rho, start + j));
                    exact &= exact - 1;
                }
            });
            below += keys.chunks(64).map(|b| b.iter().map(|&k| u32::from(k < lo)).sum::<u32>() as u64).sum::<u64>();
            for &k in keys.iter() {
                if k.wrapping_sub(lo) <= hi - lo {
                    window[(k - lo) as usize] += 1;
                }
            }
            Ok(())
        })?;
    }
    let rank = k - 1;
    let mut seen = below;
    for (offset, &c) in window.iter().enumerate() {
        if rank < seen + c {
            return Ok((lo + offset as u32, k - seen, c));
        }
        seen += c;
    }
    Err(Error::invalid(ckpt.path(), "the SNR of the requested sparsity was not found (the checkpoint changed while being read?)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use formats::bundle::BundleWriter;
    use formats::synthetic::SplitMix64 as Rng;
    use formats::DType;

    /// Kernel shapes: the first spans two 1 Mi-weight chunks.
    const LAYERS: [(u64, u64); 3] = [(1100, 1000), (300, 701), (64, 10)];

    /// Writes layers of (mu, rho) as a checkpoint in `dir` and opens it.
    fn checkpoint(dir: &std::path::Path, layers: &[Vec<(f32, f32)>]) -> (Checkpoint, Vec<Target>) {
        let prefix = dir.join("model.ckpt-1");
        let mut w = BundleWriter::create(&prefix).expect("create");
        for (l, weights) in layers.iter().enumerate() {
            let mu: Vec<u8> = weights.iter().flat_map(|w| w.0.to_le_bytes()).collect();
            let rho: Vec<u8> = weights.iter().flat_map(|w| w.1.to_le_bytes()).collect();
            let shape = [weights.len() as u64];
            w.add_bytes(&format!("den_{}/kernel_posterior_loc", l + 1), DType::Float32, &shape, &mu).expect("mu");
            w.add_bytes(&format!("den_{}/kernel_posterior_untransformed_scale", l + 1), DType::Float32, &shape, &rho).expect("rho");
        }
        w.finish().expect("finish");
        let ckpt = Checkpoint::open(&prefix).expect("open");
        let targets = crate::snr::select_targets(&ckpt, None, &[crate::snr::Part::Kernel]).expect("targets");
        (ckpt, targets)
    }

    /// Ordinary weights, with a tie group (SNR 0.125 / softplus(-3), 3% of the weights), pruned
    /// weights (SNR 0) and undefined ones.
    fn ordinary(rng: &mut Rng, i: usize) -> (f32, f32) {
        match i % 97 {
            0..=2 => (0.125, -3.0),
            3 => (0.0, -1000.0),
            4 if i.is_multiple_of(5) => (f32::NAN, -3.0),
            5 => (rng.uniform(-0.3, 0.3), 90.0), // beyond the approximation's range
            _ => (rng.uniform(-0.3, 0.3), rng.uniform(-9.0, 2.0)),
        }
    }

    fn layers_of(f: impl Fn(&mut Rng, usize, usize) -> (f32, f32)) -> Vec<Vec<(f32, f32)>> {
        let mut rng = Rng(11);
        LAYERS.iter().enumerate().map(|(l, (r, c))| (0..(r * c) as usize).map(|i| f(&mut rng, l, i)).collect()).collect()
    }

    /// The cut by sorting every decision SNR of the group.
    fn sorted_cut(layers: &[Vec<(f32, f32)>], group: &[usize], fraction: f64) -> Option<Cut> {
        let all: Vec<u32> = group.iter().flat_map(|&l| layers[l].iter().map(|w| exact_key(w.0, w.1))).collect();
        let n = all.len() as u64;
        let mut defined: Vec<u32> = all.into_iter().filter(|&k| k != u32::MAX).collect();
        defined.sort_unstable();
        let k = pruned_count(fraction, n, n - defined.len() as u64);
        let key = *defined.get(k.checked_sub(1)? as usize)?;
        let less = defined.partition_point(|&x| x < key) as u64;
        let equal = defined.partition_point(|&x| x <= key) as u64 - less;
        Some((key, k - less, equal))
    }

    /// Every cut of `fractions`, global and per layer, against sorting; returns the paths taken.
    fn check(layers: &[Vec<(f32, f32)>], fractions: &[f64], cap: usize) -> Vec<Path> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ckpt, targets) = checkpoint(dir.path(), layers);
        let mut groups: Vec<Vec<usize>> = (0..layers.len()).map(|l| vec![l]).collect();
        groups.push((0..layers.len()).collect());
        let mut paths = Vec::new();
        let mut keys = Vec::new();
        for &fraction in fractions {
            for group in &groups {
                let n: u64 = group.iter().map(|&l| layers[l].len() as u64).sum();
                let (cut, path) = find_cut(&ckpt, &targets, group, fraction, n, cap, &mut keys).expect("cut");
                assert_eq!(cut, sorted_cut(layers, group, fraction), "fraction {fraction} group {group:?} ({path:?})");
                paths.push(path);
            }
        }
        paths
    }

    #[test]
    fn one_pass_cuts_equal_sorting() {
        let layers = layers_of(|rng, _, i| ordinary(rng, i));
        let paths = check(&layers, &[0.0, 1e-7, 0.01, 0.3, 0.7, 0.955, 1.0], WINDOW_CAP);
        // Every cut that prunes something was found in one pass.
        assert!(paths.iter().all(|p| *p != Path::TwoPass), "{paths:?}");
        assert_eq!(paths.iter().filter(|p| **p == Path::Nothing).count(), 8, "0.0 and 1e-7 prune nothing");
    }

    #[test]
    fn ties_at_the_cut_inside_the_window() {
        // Half the weights tie at one SNR: the cuts at 0.3 and 0.5 fall inside the tie group.
        let layers = layers_of(|rng, _, i| if i % 2 == 0 { (0.125, -3.0) } else { ordinary(rng, i) });
        let tie = exact_key(0.125, -3.0);
        let paths = check(&layers, &[0.3, 0.5], WINDOW_CAP);
        assert!(paths.iter().all(|p| *p == Path::Window), "{paths:?}");
        let dir = tempfile::tempdir().expect("tempdir");
        let (ckpt, targets) = checkpoint(dir.path(), &layers);
        let n = layers.iter().map(|l| l.len() as u64).sum();
        let (cut, _) = find_cut(&ckpt, &targets, &[0, 1, 2], 0.3, n, WINDOW_CAP, &mut Vec::new()).expect("cut");
        let (key, ties, equal) = cut.expect("a cut");
        assert!(key == tie && ties < equal, "{cut:?}");
    }

    #[test]
    fn a_mispredicting_sample_falls_back_to_two_passes() {
        // The sampled weights all have large SNRs, every other weight a small one: the sample's
        // window lies far above the true cut. Ties at the cut (0.125 / softplus(-3)) too.
        let sampled = |layers: &[(u64, u64)], l: usize, i: usize| {
            let n: u64 = layers.iter().map(|(r, c)| r * c).sum();
            let stride = sample_stride(n);
            i % stride < SAMPLE_BLOCK || (l == 2 && i < SAMPLE_BLOCK)
        };
        let layers = layers_of(|rng, l, i| {
            if sampled(&LAYERS, l, i) {
                (rng.uniform(5.0, 9.0), -5.0)
            } else if i % 3 == 0 {
                (0.125, -3.0)
            } else {
                ordinary(rng, i)
            }
        });
        let paths = check(&layers, &[0.3, 0.7], WINDOW_CAP);
        // The global group (last of each fraction) mispredicts.
        assert_eq!((paths[3], paths[7]), (Path::TwoPass, Path::TwoPass), "{paths:?}");
        // ... and at 0.3 its cut falls inside the tie group (a quota of the ties pruned).
        let cut = sorted_cut(&layers, &[0, 1, 2], 0.3);
        assert!(cut.is_some_and(|(key, ties, equal)| key == exact_key(0.125, -3.0) && ties < equal), "{cut:?}");
    }

    #[test]
    fn a_full_window_falls_back_to_two_passes() {
        let layers = layers_of(|rng, _, i| ordinary(rng, i));
        let paths = check(&layers, &[0.3, 0.7], 100);
        assert!(paths.iter().all(|p| *p == Path::TwoPass), "{paths:?}");
    }
}
