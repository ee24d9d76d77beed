//! Helpers shared by the engine's micro-benchmarks.
#![allow(dead_code)]

use std::time::Instant;

/// Best seconds of `f` over runs filling about `budget` seconds.
pub fn best(budget: f64, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut b = f64::INFINITY;
    while start.elapsed().as_secs_f64() < budget {
        let t = Instant::now();
        f();
        b = b.min(t.elapsed().as_secs_f64());
    }
    b
}

/// Deterministic pseudo-random values in [-1, 1).
pub fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = formats::synthetic::SplitMix64(seed);
    (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
}
