//! The fused Flipout dense kernel (`model::engine::dense::flipout_dense`) against the unfused
//! products it replaced (two `sgemm` calls, a flipped copy of the input, a combine pass), one
//! thread, on the dense layers of BNN-FC and a wider one; best of runs filling a time budget,
//! both in the same run. Prints one JSON object (GFLOP/s count the products run: two, one
//! where the mean product is given). `noise_then_fused_s` adds the weight noise's draw
//! (`Sampler::noise_into`, then the kernel), `fused_drawing_noise_s` has the kernel draw it
//! into its panels (`Noise::Draw`), as the engine runs it.
//!
//! `cargo run --release -p bnn-model --example flipout_bench`

use model::engine::dense::{flipout_dense, Buffers, FlipoutDense, Noise};
use model::engine::gemm::sgemm;
use model::engine::sampler::Sampler;

mod common;
use common::{best, values};

fn main() {
    // The first layer runs with its mean product given (shared by the samples): one product.
    let shapes = [
        ("bnn-fc 64x256", 360, 64, 256),
        ("bnn-fc 64x256 mean given", 360, 64, 256),
        ("bnn-fc 256x256", 360, 256, 256),
        ("bnn-fc 256x256 relu input", 360, 256, 256),
        ("bnn-fc 256x10", 360, 256, 10),
        ("dense 128x128", 360, 128, 128),
        ("bnn-conv dense 3136x10", 360, 3136, 10),
        ("vgg dense 512x512", 16, 512, 512),
        ("vgg dense 512x10", 16, 512, 10),
    ];
    let mut rows = Vec::new();
    for (name, m, k, n) in shapes {
        let (mut x, mu, noise, bias) = (values(m * k, 1), values(k * n, 2), values(k * n, 3), values(n, 4));
        // A ReLU's output: half the inputs zero, which the kernel skips.
        if name.ends_with("relu input") {
            x.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        let given = name.ends_with("mean given").then(|| values(m * n, 8));
        let mean = given.as_deref();
        let mut words = formats::synthetic::SplitMix64(6);
        let s_bits: Vec<u64> = (0..(m * n).div_ceil(64)).map(|_| words.next_u64()).collect();
        let s_in_bits: Vec<u64> = (0..(m * k).div_ceil(64)).map(|_| words.next_u64()).collect();
        let s_in: Vec<u32> = (0..m * k).map(|g| ((s_in_bits[g / 64] >> (g % 64)) as u32 & 1) << 31).collect();
        let s_out: Vec<u32> = (0..m * n).map(|g| ((s_bits[g / 64] >> (g % 64)) as u32 & 1) << 31).collect();
        let (mut out, mut bufs) = (vec![0f32; m * n], Buffers::default());
        // The fused kernel takes the input signs as bits and flips what it reads; the unfused
        // products flip the input once.
        let fused = best(0.5, || {
            let f = FlipoutDense { x: &x, s_in: &s_in_bits, m, k, n, mu: &mu, mean, x_nonzero: None, noise: Noise::Values(&noise), s_out: &s_bits, bias: &bias, relu: true };
            flipout_dense(&f, &mut out, &mut bufs)
        });
        // With the noise drawn too: into a [k, n] array first, or by the kernel into its panels.
        let (sigma, mut drawn) = (values(k * n, 7), vec![0f32; k * n]);
        let mut sampler = Sampler::new(1, 2);
        let draw_then_fused = best(0.5, || {
            sampler.noise_into(&sigma, &mut drawn);
            let f = FlipoutDense { x: &x, s_in: &s_in_bits, m, k, n, mu: &mu, mean, x_nonzero: None, noise: Noise::Values(&drawn), s_out: &s_bits, bias: &bias, relu: true };
            flipout_dense(&f, &mut out, &mut bufs)
        });
        let fused_drawing = best(0.5, || {
            let key = sampler.noise_key();
            let f = FlipoutDense { x: &x, s_in: &s_in_bits, m, k, n, mu: &mu, mean, x_nonzero: None, noise: Noise::Draw { key, sigma: &sigma }, s_out: &s_bits, bias: &bias, relu: true };
            flipout_dense(&f, &mut out, &mut bufs)
        });
        let (mut flipped, mut pert) = (vec![0f32; m * k], vec![0f32; m * n]);
        let unfused = best(0.5, || {
            match mean {
                Some(v) => out.copy_from_slice(v),
                None => sgemm(m, k, n, &x, &mu, &mut out, false),
            }
            flipped.iter_mut().zip(&x).zip(&s_in).for_each(|((v, &a), &s)| *v = f32::from_bits(a.to_bits() ^ s));
            sgemm(m, k, n, &flipped, &noise, &mut pert, false);
            for ((o, p), so) in out.chunks_exact_mut(n).zip(pert.chunks_exact(n)).zip(s_out.chunks_exact(n)) {
                for (((o, &p), &s), &b) in o.iter_mut().zip(p).zip(so).zip(&bias) {
                    *o = (*o + f32::from_bits(p.to_bits() ^ s) + b).max(0.0);
                }
            }
        });
        let products = if mean.is_some() { 1.0 } else { 2.0 };
        let gf = |t: f64| 2.0 * products * (m * k * n) as f64 / t / 1e9;
        rows.push(format!(
            "{{\"layer\": \"{name}\", \"m\": {m}, \"k\": {k}, \"n\": {n}, \"fused_s\": {fused:.3e}, \"unfused_s\": {unfused:.3e}, \"noise_then_fused_s\": {draw_then_fused:.3e}, \"fused_drawing_noise_s\": {fused_drawing:.3e}, \"fused_gflops\": {:.1}, \"unfused_gflops\": {:.1}, \"speedup\": {:.2}}}",
            gf(fused),
            gf(unfused),
            unfused / fused
        ));
    }
    println!("{{\"flipout_dense\": [\n  {}\n]}}", rows.join(",\n  "));
}
