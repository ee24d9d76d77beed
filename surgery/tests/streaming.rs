//! The streaming `snr` statistics and `prune` decisions on a checkpoint larger than the fixtures
//! (several chunks per tensor), full of the awkward cases (pruned weights of both modes, ties,
//! zero SNRs, NaN and infinite values, scales outside the fast approximation's range), against
//! the in-memory algorithm that sorts every SNR.

use std::path::Path;

use formats::bundle::BundleWriter;
use formats::checkpoint::Checkpoint;
use formats::DType;
use surgery::posterior::{classify_f32, Weight};
use surgery::prune::{prune, Criterion, Mode, PruneOptions};
use surgery::snr::{analyse, analyse_in_memory, analyse_with, select_targets, Extras, Part, SnrReport, DEFAULT_LEVELS, DEFAULT_THRESHOLDS};

/// Kernel shapes: the first spans two 1 Mi-weight chunks and ends mid-chunk.
const LAYERS: [(u64, u64); 3] = [(1100, 1000), (300, 701), (64, 10)];

use formats::synthetic::SplitMix64 as Rng;

fn weight(rng: &mut Rng, i: usize, layer: usize) -> (f32, f32) {
    match (i + 7 * layer) % 211 {
        0 | 13 | 26 => (0.0, -1000.0),         // zero-mode pruned
        1 | 40 => (-0.0, 0.0),                  // BPrune-mode pruned
        2 => (0.0, rng.uniform(-5.0, 1.0)),     // SNR 0, not pruned
        3..=9 => (0.125, -3.0),                 // many equal SNRs (ties)
        10 => (rng.uniform(-0.3, 0.3), -95.0),  // tiny scale: huge SNR
        11 => (rng.uniform(-0.3, 0.3), 90.0),   // scale beyond the approximation's range
        12 => (0.5, -1000.0),                   // zero scale, live mean: SNR +inf
        14 if i.is_multiple_of(5) => (f32::NAN, -3.0),   // undefined
        15 if i.is_multiple_of(7) => (0.1, f32::INFINITY),
        16 if i.is_multiple_of(9) => (f32::NEG_INFINITY, -2.0),
        17 => (1e-40, -2.0),                    // subnormal SNR
        _ => (rng.uniform(-0.3, 0.3), rng.uniform(-9.0, 2.0)),
    }
}

/// Writes the test checkpoint; returns every (mu, rho) per layer.
fn write(prefix: &Path) -> Vec<Vec<(f32, f32)>> {
    let mut w = BundleWriter::create(prefix).expect("create");
    let mut rng = Rng(7);
    let mut all = Vec::new();
    for (l, &(rows, cols)) in LAYERS.iter().enumerate() {
        let n = (rows * cols) as usize;
        let weights: Vec<(f32, f32)> = (0..n).map(|i| weight(&mut rng, i, l)).collect();
        let mu: Vec<u8> = weights.iter().flat_map(|w| w.0.to_le_bytes()).collect();
        let rho: Vec<u8> = weights.iter().flat_map(|w| w.1.to_le_bytes()).collect();
        let name = format!("den_{}", l + 1);
        w.add_bytes(&format!("{name}/kernel_posterior_loc"), DType::Float32, &[rows, cols], &mu).expect("mu");
        w.add_bytes(&format!("{name}/kernel_posterior_untransformed_scale"), DType::Float32, &[rows, cols], &rho).expect("rho");
        all.push(weights);
    }
    w.finish().expect("finish");
    all
}

#[test]
fn streaming_statistics_equal_sorting_every_snr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = dir.path().join("model.ckpt-1");
    let layers = write(&prefix);
    let ckpt = Checkpoint::open(&prefix).expect("open");
    let targets = select_targets(&ckpt, None, &[Part::Kernel]).expect("targets");
    let thresholds = [0.0, 1e-39, 0.125 / 0.048587352, 0.5, 1.0, 2.0, 10.0, f64::INFINITY];
    let streamed = analyse(&ckpt, &targets, &DEFAULT_LEVELS, &thresholds).expect("streamed");
    let sorted = analyse_in_memory(&ckpt, &targets, &DEFAULT_LEVELS, &thresholds).expect("in memory");
    // JSON prints every f64 to the last bit.
    let json = |r| serde_json::to_string_pretty(r).expect("json");
    assert_eq!(json(&streamed), json(&sorted));
    // The cases are really there: pruned weights counted apart, NaN/inf named, no NaN statistic.
    let o = &streamed.overall;
    assert!(o.pruned > 20_000 && o.undefined > 100 && o.max.is_infinite(), "{o:?}");
    assert!(o.quantiles.iter().all(|(_, v)| v.is_finite()) && o.mean.is_infinite());
    let mut want = Vec::new();
    for (l, layer) in layers.iter().enumerate() {
        let mu = layer.iter().filter(|w| !w.0.is_finite()).count();
        let rho = layer.iter().filter(|w| !w.1.is_finite()).count();
        for (part, n) in [("kernel_posterior_loc", mu), ("kernel_posterior_untransformed_scale", rho)] {
            if n > 0 {
                want.push((format!("den_{}/{part}", l + 1), n));
            }
        }
    }
    let got: Vec<(String, usize)> = streamed.non_finite.iter().map(|n| (n.key.clone(), n.count)).collect();
    assert_eq!(got, want);
    // And with the default thresholds, as the command line asks.
    let a = analyse(&ckpt, &targets, &DEFAULT_LEVELS, &DEFAULT_THRESHOLDS).expect("streamed");
    assert_eq!(json(&a), json(&analyse_in_memory(&ckpt, &targets, &DEFAULT_LEVELS, &DEFAULT_THRESHOLDS).expect("sorted")));
    // Without the mean and histograms (the table's fast path): everything else the same.
    for thresholds in [&thresholds[..], &DEFAULT_THRESHOLDS[..]] {
        let fast = analyse_with(&ckpt, &targets, &DEFAULT_LEVELS, thresholds, Extras::NONE).expect("fast");
        let sorted = analyse_in_memory(&ckpt, &targets, &DEFAULT_LEVELS, thresholds).expect("in memory");
        assert_eq!(to_json(&fast), to_json(&without_extras(sorted)));
    }
}

/// Every f64 to the last bit.
fn to_json(r: &SnrReport) -> String {
    serde_json::to_string_pretty(r).expect("json")
}

/// A report with the mean and histograms left out, as `Extras::NONE` leaves them.
fn without_extras(mut r: SnrReport) -> SnrReport {
    r.layers.iter_mut().for_each(|l| {
        l.stats.mean = f64::NAN;
        l.histogram.clear();
    });
    r.overall.mean = f64::NAN;
    r
}

/// A mean (of rho `rho`) whose f32 SNR has key `key` exactly, if one close to it has.
fn mu_for_key(key: u32, rho: f32) -> Option<f32> {
    let sigma = model::softplus::softplus_f32(rho);
    let mut mu = f32::from_bits(key) * sigma;
    for _ in 0..64 {
        let got = (mu / sigma).to_bits();
        if got == key {
            return Some(mu);
        }
        mu = f32::from_bits(if got < key { mu.to_bits() + 1 } else { mu.to_bits() - 1 });
    }
    None
}

/// The fast path's exact-key fallbacks on their boundaries: SNRs whose keys sit on and around
/// the top-16-bit bucket boundaries (where a key within the approximation's slack may belong
/// to either bucket), on and around the threshold keys, and crowding the extremes, with the
/// quantile levels chosen so that ranks land on them; against sorting every SNR.
#[test]
fn fast_statistics_are_exact_at_bucket_boundaries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = dir.path().join("model.ckpt-1");
    let mut rng = Rng(11);
    // SNR keys of 1.0 (0x3f80_0000, a bucket boundary) and 2.5 (mid-bucket) are thresholds.
    let t_key = [1.0f32.to_bits(), 2.5f32.to_bits()];
    let mut keys = Vec::new();
    for b in [0x3f70u32, 0x3f80, 0x3f81, 0x3fa0, 0x4020, 0x4120] {
        for d in [-1500i64, -1025, -1024, -1023, -600, -2, -1, 0, 1, 2, 600, 1023, 1024, 1025, 1500] {
            keys.push(((b as i64) << 16).wrapping_add(d) as u32);
        }
    }
    for t in t_key {
        for d in -1100i64..=1100 {
            if d % 50 == 0 || d.abs() <= 3 || d.abs() == 1024 || d.abs() == 1025 {
                keys.push((t as i64 + d) as u32);
            }
        }
    }
    // Extremes: a crowd within twice the slack of the smallest and largest keys.
    let (lo, hi) = (0x2000_0123u32, 0x4a00_0456u32);
    for d in 0..40u32 {
        keys.push(lo + 97 * d);
        keys.push(hi - 97 * d);
    }
    let mut weights: Vec<(f32, f32)> = Vec::new();
    for (i, &k) in keys.iter().enumerate() {
        // Scales across the approximation's range; each key several times.
        for _ in 0..1 + i % 3 {
            let rho = rng.uniform(-12.0, 6.0);
            if let Some(mu) = mu_for_key(k, rho) {
                weights.push((if i % 2 == 0 { mu } else { -mu }, rho));
            }
        }
    }
    // Spread weights (most of the histogram), a pruned one and an undefined one.
    for _ in 0..50_000 {
        weights.push((rng.uniform(-0.3, 0.3), rng.uniform(-9.0, 2.0)));
    }
    weights.extend([(0.0, -1000.0), (f32::NAN, 1.0)]);
    let n = weights.len() as u64;
    let mut w = BundleWriter::create(&prefix).expect("create");
    let mu: Vec<u8> = weights.iter().flat_map(|w| w.0.to_le_bytes()).collect();
    let rho: Vec<u8> = weights.iter().flat_map(|w| w.1.to_le_bytes()).collect();
    w.add_bytes("den_1/kernel_posterior_loc", DType::Float32, &[n, 1], &mu).expect("mu");
    w.add_bytes("den_1/kernel_posterior_untransformed_scale", DType::Float32, &[n, 1], &rho).expect("rho");
    w.finish().expect("finish");
    let ckpt = Checkpoint::open(&prefix).expect("open");
    let targets = select_targets(&ckpt, None, &[Part::Kernel]).expect("targets");
    let mut thresholds: Vec<f64> = t_key.iter().map(|k| f32::from_bits(*k) as f64).collect();
    thresholds.extend(t_key.iter().map(|k| f32::from_bits(k + 1) as f64 - 1e-12));
    thresholds.extend(t_key.iter().map(|k| f32::from_bits(k - 1) as f64));
    // Every rank of the boundary keys: levels at each sorted position among them.
    let mut sorted: Vec<f32> = weights.iter().filter(|w| w.0.is_finite() && !(w.0 == 0.0 && w.1 < -100.0)).map(|w| w.0.abs() / model::softplus::softplus_f32(w.1)).collect();
    sorted.sort_by(f32::total_cmp);
    let m = sorted.len() as f64 - 1.0;
    let levels: Vec<f64> = keys
        .iter()
        .step_by(2)
        .filter_map(|k| sorted.iter().position(|v| v.to_bits() == *k))
        .map(|p| p as f64 / m)
        .chain([0.0, 1.0])
        .collect();
    assert!(levels.len() > 50, "{}", levels.len());
    let fast = analyse_with(&ckpt, &targets, &levels, &thresholds, Extras::NONE).expect("fast");
    let want = without_extras(analyse_in_memory(&ckpt, &targets, &levels, &thresholds).expect("in memory"));
    assert_eq!(to_json(&fast), to_json(&want));
    assert_eq!((fast.overall.min, fast.overall.max), (f32::from_bits(lo) as f64, f32::from_bits(hi) as f64));
}

/// The decision SNR of a weight for pruning (already pruned: 0; undefined: never pruned).
fn decision(w: (f32, f32)) -> Option<f64> {
    match classify_f32(w.0, w.1).0 {
        Weight::Pruned => Some(0.0),
        Weight::Undefined => None,
        Weight::Snr(s) => Some(s),
    }
}

#[test]
fn streaming_pruning_equals_sorting_every_snr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = dir.path().join("model.ckpt-1");
    let layers = write(&prefix);
    let ckpt = Checkpoint::open(&prefix).expect("open");
    let targets = select_targets(&ckpt, None, &[Part::Kernel]).expect("targets");
    let already: Vec<Vec<bool>> = layers.iter().map(|l| l.iter().map(|w| classify_f32(w.0, w.1).0 == Weight::Pruned).collect()).collect();
    for (fraction, per_layer) in [(0.0, false), (0.01, false), (0.3, false), (0.5, true), (0.7, false), (0.955, true), (1.0, false)] {
        let options = PruneOptions { criterion: Criterion::Sparsity { fraction, per_layer }, mode: Mode::Zero };
        let got = prune(&ckpt, &targets, &options).expect("prune");
        // Reference: sort (decision SNR, layer, position) and prune the first k of each group.
        let groups: Vec<Vec<usize>> = if per_layer { (0..layers.len()).map(|l| vec![l]).collect() } else { vec![(0..layers.len()).collect()] };
        let mut want: Vec<Vec<bool>> = layers.iter().map(|l| vec![true; l.len()]).collect();
        for g in groups {
            let mut order: Vec<(f64, usize, usize)> =
                g.iter().flat_map(|&l| layers[l].iter().enumerate().filter_map(move |(i, w)| decision(*w).map(|s| (s, l, i)))).collect();
            let n: usize = g.iter().map(|&l| layers[l].len()).sum();
            order.sort_by(|a, b| a.0.total_cmp(&b.0).then((a.1, a.2).cmp(&(b.1, b.2))));
            let k = ((fraction * n as f64).round() as usize).min(order.len());
            for &(_, l, i) in &order[..k] {
                want[l][i] = false;
            }
        }
        for (l, keep) in want.iter_mut().enumerate() {
            for (k, a) in keep.iter_mut().zip(&already[l]) {
                *k &= !a;
            }
            assert!(got.keep[l].iter().eq(keep.iter().copied()), "fraction {fraction} per_layer {per_layer} layer {l}");
            let r = &got.report.layers[l];
            assert_eq!(r.already_pruned, already[l].iter().filter(|a| **a).count());
            assert_eq!(r.pruned, keep.iter().filter(|k| !**k).count());
            assert_eq!(r.pruned, r.already_pruned + r.newly_pruned);
        }
    }
    // Thresholds: decided exactly as the exact SNR compares.
    for (t, mode) in [(0.0, Mode::Bprune), (0.5, Mode::Zero), (2.573, Mode::Bprune), (f64::INFINITY, Mode::Zero)] {
        let got = prune(&ckpt, &targets, &PruneOptions { criterion: Criterion::Threshold(t), mode }).expect("prune");
        let t = if t == 0.0 { 1e-44 } else { t };
        for (l, layer) in layers.iter().enumerate() {
            let want = layer.iter().map(|w| classify_f32(w.0, w.1).0 != Weight::Pruned && decision(*w).is_none_or(|s| s > t));
            assert!(got.keep[l].iter().eq(want), "threshold {t} layer {l}");
        }
    }
}

/// Reads back f32 tensors of a safetensors file or TF checkpoint.
fn read_f32(path: &Path, key: &str) -> Vec<f32> {
    let ckpt = Checkpoint::open(path).expect("open output");
    let data = ckpt.read(key).expect("read");
    data.bytes().expect("bytes").chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn streamed_outputs_equal_the_masks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = dir.path().join("model.ckpt-1");
    let layers = write(&prefix);
    let ckpt = std::sync::Arc::new(Checkpoint::open(&prefix).expect("open"));
    let targets = select_targets(&ckpt, None, &[Part::Kernel]).expect("targets");
    // Fractions whose cut falls inside the big tie groups: the repeated SNR 0.125 / softplus(-3)
    // and the zeros (pruned weights and zero means); the quota then runs out mid-tensor.
    let tie = (0.125f32 / model::softplus::softplus_f32(-3.0)) as f64;
    let all: Vec<f64> = layers.iter().flatten().filter_map(|w| decision(*w)).collect();
    let n = layers.iter().map(Vec::len).sum::<usize>() as f64;
    let (below, equal) = (all.iter().filter(|s| **s < tie).count() as f64, all.iter().filter(|s| **s == tie).count() as f64);
    let zeros = all.iter().filter(|s| **s == 0.0).count() as f64;
    let criteria = [
        Criterion::Sparsity { fraction: (below + equal / 3.0) / n, per_layer: false },
        Criterion::Sparsity { fraction: zeros / 2.0 / n, per_layer: false },
        Criterion::Sparsity { fraction: 0.6, per_layer: true },
        Criterion::Threshold(1.0),
    ];
    for criterion in criteria {
        for mode in [Mode::Zero, Mode::Bprune] {
            let options = PruneOptions { criterion, mode };
            let masks = prune(&ckpt, &targets, &options).expect("masks");
            let streamed = surgery::prune::prune_streaming(&ckpt, &targets, &options).expect("streamed");
            assert_eq!(streamed.report, masks.report);
            assert!(streamed.keep.is_empty(), "nothing per weight held");
            let st = dir.path().join("out.safetensors");
            let opts = formats::convert::ToSafetensorsOptions::default();
            formats::convert::checkpoint_to_safetensors(&ckpt, &st, opts, &streamed.edits).expect("safetensors");
            let tf = dir.path().join("tf").join("model.ckpt-1");
            std::fs::create_dir_all(tf.parent().expect("parent")).expect("mkdir");
            formats::convert::checkpoint_to_bundle(&ckpt, &tf, &streamed.edits).expect("bundle");
            // The TF output with its counts taken while it is written: the same report.
            let job = surgery::prune::PruneJob { options: options.clone(), layers: None, parts: vec![Part::Kernel] };
            let bundled = dir.path().join("job").join("model.ckpt-1");
            let report = surgery::prune::prune_checkpoint_to_bundle(&ckpt, &bundled, &job).expect("bundle job");
            assert_eq!(report, masks.report, "{criterion:?} {mode:?}");
            let written = std::fs::read_to_string(surgery::prune::report_path(&bundled)).expect("report file");
            assert_eq!(written, serde_json::to_string_pretty(&masks.report).expect("json"));
            // Safetensors in one pass: counts taken while written, the header after the data.
            let late = dir.path().join("late.safetensors");
            let report = surgery::prune::prune_to_safetensors(&ckpt, &late, &job, opts).expect("safetensors job");
            assert_eq!(report, masks.report, "{criterion:?} {mode:?}");
            let header = formats::safetensors_file::SafetensorsFile::open(&late).expect("open");
            assert_eq!(header.metadata()[surgery::prune::META_PRUNE], serde_json::to_string(&masks.report).expect("json"));
            let rho_fill = if mode == Mode::Zero { -1000.0 } else { 0.0 };
            for (l, layer) in layers.iter().enumerate() {
                let keep: Vec<bool> = masks.keep[l].iter().collect();
                let want_mu: Vec<u32> = layer.iter().zip(&keep).map(|(w, k)| if *k { w.0 } else { 0.0 }.to_bits()).collect();
                let want_rho: Vec<u32> = layer.iter().zip(&keep).map(|(w, k)| if *k { w.1 } else { rho_fill }.to_bits()).collect();
                for out in [&st, &tf, &bundled, &late] {
                    let (mu_key, rho_key) = if out == &st || out == &late {
                        (format!("den_{}.kernel_posterior_loc", l + 1), format!("den_{}.kernel_posterior_untransformed_scale", l + 1))
                    } else {
                        (targets[l].loc_key.clone(), targets[l].rho_key.clone())
                    };
                    let mu: Vec<u32> = read_f32(out, &mu_key).iter().map(|v| v.to_bits()).collect();
                    let rho: Vec<u32> = read_f32(out, &rho_key).iter().map(|v| v.to_bits()).collect();
                    assert!(mu == want_mu && rho == want_rho, "{criterion:?} {mode:?} layer {l} in {}", out.display());
                }
            }
        }
    }
}
