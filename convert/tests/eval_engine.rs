//! Native engine properties: CSR and dense kernels agree, results do not depend on threads.

mod common;


use common::fixtures;
use model::engine::metrics::evaluate;
use model::engine::{Estimator, Model, SparseKernels};
use model::arch::{Arch, Posterior};
use formats::checkpoint::Checkpoint;
use model::meta_graph::{meta_path, read_arch};

fn load(folder: &str) -> (Arch, Vec<Posterior>) {
    let ckpt = Checkpoint::open(fixtures().join(folder)).expect("ckpt");
    let arch = read_arch(&meta_path(ckpt.path())).expect("arch");
    arch.bind(&ckpt).expect("bind")
}

fn test_set() -> (Vec<f32>, Vec<i64>) {
    let x = std::fs::read(fixtures().join("data/digits_test_x.npy")).expect("x");
    let y = std::fs::read(fixtures().join("data/digits_test_y.npy")).expect("y");
    let x = x[x.len() - 360 * 64 * 4..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let y = y[y.len() - 360 * 8..].chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
    (x, y)
}

/// Zero-mode pruning at SNR threshold `t`.
fn prune(posts: &mut [Posterior], t: f32) {
    for p in posts {
        let s = p.kernel_sigma.as_mut().expect("bayesian");
        for (m, s) in p.kernel_mu.iter_mut().zip(s.iter_mut()) {
            if m.abs() / *s <= t {
                *m = 0.0;
                *s = 0.0;
            }
        }
    }
}

#[test]
fn csr_and_dense_kernels_give_the_same_predictions() {
    let (x_all, y_all) = test_set();
    // The conv net is ~50x slower per example in a debug build: a sixth of the test set.
    // BNN-FC at 400 samples: two seeds' correct counts differ by about 1.8 examples (standard
    // deviation over 64 seeds at 100 samples), which made the bound of 3 a two-sigma one.
    for (folder, n, samples) in [("tf1_bnn_fc", 360, 400), ("tf1_bnn_conv", 60, 40)] {
        let (x, y) = (&x_all[..n * 64], &y_all[..n]);
        let (arch, mut posts) = load(folder);
        prune(&mut posts, 0.8);
        let dense = Model::new(&arch, &posts, SparseKernels::Never).expect("dense");
        let csr = Model::new(&arch, &posts, SparseKernels::Always).expect("csr");
        assert_eq!(dense.sparse_layers().0, 0);
        assert_eq!(csr.sparse_layers(), (3, 3));
        let (a, b) = (dense.predict_mean(x).expect("dense"), csr.predict_mean(x).expect("csr"));
        let worst = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-5, "{folder}: mean-network probabilities differ by {worst}");
        // MC: CSR draws noise only for kept weights, so the streams differ; the predictive
        // distributions must agree within Monte Carlo error.
        for est in [Estimator::Flipout, Estimator::Reparameterization] {
            let md = evaluate(&dense.predict_mc(x, samples, 5, est).expect("mc").mean, 10, y);
            let ms = evaluate(&csr.predict_mc(x, samples, 6, est).expect("mc").mean, 10, y);
            assert!((md.accuracy - ms.accuracy).abs() <= 3.0 / n as f64, "{folder} {est:?}: {md:?} vs {ms:?}");
            assert!((md.mean_log_likelihood - ms.mean_log_likelihood).abs() < 0.03, "{folder} {est:?}: {md:?} vs {ms:?}");
        }
    }
}

#[test]
fn monte_carlo_is_reproducible_whatever_the_thread_count() {
    let (x, _) = test_set();
    let (arch, posts) = load("tf1_bnn_fc");
    let model = Model::new(&arch, &posts, SparseKernels::Auto).expect("model");
    let many = model.predict_mc(&x, 16, 99, Estimator::Flipout).expect("mc");
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
    let one = pool.install(|| model.predict_mc(&x, 16, 99, Estimator::Flipout).expect("mc"));
    assert_eq!(many.mean, one.mean);
    assert_eq!(many.variance, one.variance);
    let other = model.predict_mc(&x, 16, 100, Estimator::Flipout).expect("mc");
    assert_ne!(many.mean, other.mean, "the seed matters");
}

#[test]
fn zero_sigma_makes_every_sample_the_mean_network() {
    let (x, _) = test_set();
    let x = &x[..40 * 64];
    let (arch, mut posts) = load("tf1_bnn_conv");
    for p in &mut posts {
        p.kernel_sigma.iter_mut().for_each(|s| s.iter_mut().for_each(|v| *v = 0.0));
    }
    let model = Model::new(&arch, &posts, SparseKernels::Never).expect("model");
    let mean = model.predict_mean(x).expect("mean");
    for est in [Estimator::Flipout, Estimator::Reparameterization] {
        let mc = model.predict_mc(x, 3, 1, est).expect("mc");
        let worst = mc.mean.iter().zip(&mean).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-6, "{est:?}: {worst}");
        assert!(mc.variance.iter().all(|v| *v < 1e-12));
    }
}

#[test]
fn wrong_input_size_is_an_error() {
    let (arch, posts) = load("tf1_bnn_fc");
    let model = Model::new(&arch, &posts, SparseKernels::Auto).expect("model");
    let e = model.predict_mean(&[0.0; 65]).expect_err("65 is not a multiple of 64");
    assert!(e.to_string().contains("64"), "{e}");
}
