//! Weight noise: nanoseconds per normal of `Sampler::noise_into` (a whole layer) and of
//! `Sampler::noise_at_into` (kept weights by flat index), one thread, best of runs.
//!
//! `cargo run --release -p bnn-model --example noise_bench`

use model::engine::sampler::Sampler;

mod common;
use common::{best, values};

fn main() {
    let len = 65536;
    let sigma = values(len, 1);
    let mut out = vec![0f32; len];
    let mut s = Sampler::new(1, 2);
    let whole = best(0.5, || s.noise_into(&sigma, &mut out));
    // Every third weight kept, by flat index (a pruned kernel's pattern order skips around).
    let idx: Vec<u32> = (0..len as u32).filter(|i| i % 10 < 3).collect();
    let kept = best(0.5, || s.noise_at_into(&idx, &sigma, &mut out));
    println!("{{\"whole_ns_per_normal\": {:.4}, \"kept_ns_per_normal\": {:.4}}}", whole / len as f64 * 1e9, kept / idx.len() as f64 * 1e9);
}
