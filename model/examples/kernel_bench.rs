//! Kernel measurements for `scripts/bench-infer.sh` (issue 10), printed as one JSON object:
//!
//! * `gemm_peak_gflops`: this machine's single-precision GEMM peak through the engine's
//!   GEMM (`model::engine::gemm::sgemm`, square 1024 products, one per thread, best of
//!   several runs), on one thread and on all of them;
//! * `crossover`: for conv and dense layer shapes of the benchmark models, the time of the
//!   dense GEMM and of the CSR kernel at kept fractions 0.1..0.9, and the largest pruned
//!   fraction at which the GEMM is still faster;
//! * `flipout_sparse` (per layer shape): Flipout's two products (mean and perturbation) as
//!   the dense path runs them (one GEMM against `[mu | D]`, `flipout_gemm_seconds`) against
//!   the transposed sparse kernel (`Csr::spmm_t`, both products in one pass over the kept
//!   weights) at kept fractions 0.7, 0.5, 0.3, 0.1: seconds and speedup (where
//!   `SparseKernels::Auto` starts timing layers: `auto_sparse_fraction`).
//!
//! `cargo run --release -p bnn-model --example kernel_bench`

use rayon::prelude::*;
use model::engine::dense::Kernel;
use model::engine::gemm::sgemm;
use model::engine::sparse::{self, Csr, Pass};

mod common;
use common::{best, values};

fn main() {
    let threads = rayon::current_num_threads();
    let d = 1024;
    let (a, b) = (values(d * d, 1), values(d * d, 2));
    let flops = 2.0 * (d * d * d) as f64;
    let mut c = vec![0f32; d * d];
    let one = flops / best(3.0, || sgemm(d, d, d, &a, &b, &mut c, false)) / 1e9;
    let mut cs = vec![vec![0f32; d * d]; threads];
    let all = threads as f64 * flops
        / best(3.0, || cs.par_iter_mut().for_each(|c| sgemm(d, d, d, &a, &b, c, false)))
        / 1e9;
    // (name, patch rows, k, n): layers of the benchmark models, rows as in one block.
    let shapes = [
        ("bnn-fc dense 64x256", 360, 64, 256),
        ("bnn-fc dense 256x256", 360, 256, 256),
        ("bnn-conv conv2 5x5x32->64", 1024, 800, 64),
        ("vgg conv 3x3x64->128", 1024, 576, 128),
        ("vgg conv 3x3x256->256", 256, 2304, 256),
        ("vgg conv 3x3x512->512", 64, 4608, 512),
    ];
    let mut rows = Vec::new();
    for (name, m, k, n) in shapes {
        let p = values(m * k, 3);
        let w = values(k * n, 4);
        let mut out = vec![0f32; m * n];
        let mut t = Vec::new();
        let dense = Kernel::new(k, n, w.clone(), None, false);
        let td = best(0.3, || dense.matmul(&p, m, dense.values().0, &mut out, false, &mut t));
        let mut crossover = 0.0;
        let mut sparse_t = Vec::new();
        for kept10 in (1..=9).rev() {
            let kept = kept10 as f64 / 10.0;
            // Prune by magnitude on a uniform spread: keeps about `kept` of the weights.
            let cut = 1.0 - kept as f32;
            let pruned: Vec<f32> = w.iter().map(|&v| if v.abs() < cut { 0.0 } else { v }).collect();
            let sp = Kernel::new(k, n, pruned, None, true);
            let ts = best(0.3, || sp.matmul(&p, m, sp.values().0, &mut out, false, &mut t));
            sparse_t.push(serde_json::json!({"kept": kept, "seconds": ts}));
            if ts >= td {
                crossover = 1.0 - kept;
            }
        }
        // Flipout's two products (mean and perturbation) of the same patch rows: the dense
        // path runs them as one GEMM against [mu | D] (k x 2n); the transposed sparse kernel
        // in one pass over the kept weights, on the patches stored as X^T panels, each
        // weight picked per lane from mu + D and mu - D by the signs (a dense layer's
        // `Pass::Signed`; a convolution's examples fold their signs into the weights and
        // run `Pass::One`, faster still).
        let w2 = values(k * 2 * n, 5);
        let mut out2 = vec![0f32; m * 2 * n];
        let tf = best(0.3, || sgemm(m, k, 2 * n, &p, &w2, &mut out2, false));
        let mut xt = vec![0f32; sparse::panels_len(k, m)];
        for r in 0..m {
            for i in 0..k {
                xt[sparse::at(k, i, r)] = p[r * k + i];
            }
        }
        let mut ya = vec![0f32; sparse::panels_len(n, m)];
        let signs = |rows: usize, seed: u16| -> Vec<u16> { (0..sparse::sign_panels_len(rows, m)).map(|i| (i as u16).wrapping_mul(40503) ^ seed).collect() };
        let (s_in, s_out) = (signs(k, 1), signs(n, 2));
        let mut fused = Vec::new();
        for kept in [0.7, 0.5, 0.3, 0.1] {
            let cut = 1.0 - kept as f32;
            let csr = Csr::from_mask(n, k, |i| w[(i % k) * n + i / k].abs() >= cut);
            let (a, d) = (values(csr.nnz(), 6), values(csr.nnz(), 7));
            let ts = best(0.3, || csr.spmm_t(&xt, m, Pass::Signed { plus: &a, minus: &d, s_in: &s_in, s_out: &s_out }, &mut ya));
            fused.push(serde_json::json!({"kept": kept, "seconds": ts, "speedup": tf / ts, "useful_gflops": 4.0 * (csr.nnz() * m) as f64 / ts / 1e9}));
        }
        rows.push(serde_json::json!({
            "layer": name, "rows": m, "k": k, "n": n, "gemm_seconds": td,
            "gemm_gflops": 2.0 * (m * k * n) as f64 / td / 1e9, "csr": sparse_t,
            "gemm_faster_up_to_pruned": crossover,
            "flipout_gemm_seconds": tf, "flipout_sparse": fused,
        }));
    }
    let out = serde_json::json!({
        "threads": threads, "gemm_peak_gflops": all, "gemm_peak_gflops_one_thread": one, "crossover": rows,
    });
    println!("{out}");
}
