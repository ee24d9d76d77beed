//! Winograd against im2col + GEMM (issue 10), per conv layer of the benchmark models and on
//! one thread (less noise from the other jobs on the machine): Monte Carlo Flipout samples of
//! a one-conv model (`Relu -> Conv2d -> GlobalAvgPool -> Dense 10`: the leading Relu keeps the
//! conv from being the first weight layer, whose mean product every sample shares, and the
//! pooled head costs next to nothing), built with the
//! automatic dispatch and with [`Model::without_winograd`], interleaved, best of several runs.
//! Prints a markdown table: seconds, speed-up, GFLOP/s nominal (the direct convolution's
//! multiply-adds of both Flipout products, x2, per second) and effective (the multiply-adds
//! Winograd's GEMMs do, x2, per second).
//!
//! `cargo run --release -p bnn-model --example winograd_bench [-- ROUNDS [LAYER-NAME-PART [winograd|im2col]]]`
//! (with a third argument, only that path runs: for CPU-time comparisons with `perf stat`).

use std::time::Instant;

use model::arch::{Arch, Op, Padding, Posterior};
use model::engine::conv::Window;
use model::engine::winograd::WinogradConv;
use model::engine::{Estimator, Model, SparseKernels};

/// Deterministic pseudo-random values in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = formats::synthetic::SplitMix64(seed);
    (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
}

/// A layer's posterior: means of a He-initialised layer, scales about 0.005.
fn posterior(name: &str, shape: Vec<usize>, seed: u64) -> Posterior {
    let len: usize = shape.iter().product();
    let units = *shape.last().unwrap_or(&1);
    let fan_in = (len / units.max(1)) as f32;
    Posterior {
        name: name.into(),
        kernel_mu: values(len, seed).iter().map(|v| v * (2.0 / fan_in).sqrt()).collect(),
        kernel_sigma: Some(values(len, seed + 1).iter().map(|v| 0.005 + 0.002 * v).collect()),
        bias_mu: vec![0.01; units],
        bias_sigma: None,
        kernel_shape: shape,
    }
}

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|v| v.parse().ok()).unwrap_or(5);
    let only = std::env::args().nth(2).unwrap_or_default();
    let path = std::env::args().nth(3).unwrap_or_default();
    // (name, h = w, in-channels, out-channels, kernel, examples, samples)
    let layers = [
        ("bnn-conv conv2 14x14 5x5 32->64", 14, 32, 64, 5, 360, 10),
        ("vgg 32x32 3x3 64->64", 32, 64, 64, 3, 16, 10),
        ("vgg 16x16 3x3 64->128", 16, 64, 128, 3, 16, 10),
        ("vgg 16x16 3x3 128->128", 16, 128, 128, 3, 16, 10),
        ("vgg 8x8 3x3 128->256", 8, 128, 256, 3, 16, 10),
        ("vgg 8x8 3x3 256->256", 8, 256, 256, 3, 16, 10),
        ("vgg 4x4 3x3 256->512", 4, 256, 512, 3, 16, 10),
        ("vgg 4x4 3x3 512->512", 4, 512, 512, 3, 16, 10),
    ];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("thread pool");
    println!("| layer | examples x S | Winograd tile | im2col s | Winograd s | speed-up | GFLOP/s nominal (im2col / Winograd) | GFLOP/s effective (Winograd) |");
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    for (name, h, c, k, r, n, s) in layers.into_iter().filter(|l| l.0.contains(&only)) {
        let arch = Arch {
            input_name: "x".into(),
            input_shape: vec![h, h, c],
            ops: vec![Op::Relu, Op::Conv2d { layer: "c".into(), strides: [1, 1], padding: Padding::Same }, Op::GlobalAvgPool, Op::Dense { layer: "d".into() }],
        };
        let posts = vec![posterior("c", vec![r, r, c, k], 1), posterior("d", vec![k, 10], 3)];
        let auto = Model::from_posteriors(&arch, posts, SparseKernels::Never).expect("model");
        let plain = auto.clone().without_winograd();
        let x = values(n * h * h * c, 5);
        let (mut best_a, mut best_p) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..rounds {
            for (m, best) in [(&auto, &mut best_a), (&plain, &mut best_p)] {
                if !path.is_empty() && (path == "winograd") != std::ptr::eq(m, &auto) {
                    continue;
                }
                let t = Instant::now();
                pool.install(|| m.predict_mc(&x, s, 7, Estimator::Flipout)).expect("predict");
                *best = best.min(t.elapsed().as_secs_f64());
            }
        }
        let nominal = 2.0 * 2.0 * (n * s * h * h * r * r * c * k) as f64;
        let win = Window { input: [h, h, c], size: [r, r], strides: [1, 1], padding: Padding::Same };
        let (tile, done) = match WinogradConv::plan(&win, k, &values(r * r * c * k, 1)) {
            Some(p) => {
                let t = p.transform();
                (format!("F({0}x{0}, {1}x{1})", t.m, t.r), 2.0 * (s as u64 * p.gemm_macs(n, true)) as f64)
            }
            None => ("- (im2col)".to_string(), nominal),
        };
        println!(
            "| {name} | {n} x {s} | {tile} | {best_p:.4} | {best_a:.4} | {:.2}x | {:.1} / {:.1} | {:.1} |",
            best_p / best_a,
            nominal / best_p / 1e9,
            nominal / best_a / 1e9,
            done / best_a / 1e9
        );
    }
}
