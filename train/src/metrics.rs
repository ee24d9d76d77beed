//! What a run measured (per-epoch loss, accuracy, images/s; allreduce traffic; scaling),
//! the JSON report, and the console progress bar.

use std::io::{IsTerminal, Write};

use serde::Serialize;

/// One epoch's numbers (rank 0's view; loss and training accuracy averaged over ranks).
#[derive(Debug, Clone, Serialize)]
pub struct EpochStats {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss over the epoch's steps.
    pub loss: f64,
    /// Training accuracy over the epoch's batches (with Flipout noise).
    pub train_accuracy: f64,
    /// Accuracy on the test split (one stochastic forward pass for BNNs, like Keras'
    /// `evaluate`).
    pub test_accuracy: f64,
    /// Training images per second over all ranks (evaluation and checkpoints excluded).
    pub images_per_sec: f64,
    /// Wall seconds spent in training steps.
    pub train_seconds: f64,
}

/// Allreduce traffic of one training step.
#[derive(Debug, Clone, Serialize)]
pub struct AllreduceStats {
    /// Gradient tensors averaged per step.
    pub tensors: usize,
    /// Fusion buffer size limit in bytes.
    pub fusion_bytes: usize,
    /// Allreduce calls per step (0 when running on one rank).
    pub calls_per_step: usize,
    /// Bytes allreduced per step by each rank.
    pub bytes_per_step: usize,
    /// Allreduce calls over the whole run.
    pub total_calls: u64,
}

/// The report of one training run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Architecture.
    pub arch: crate::models::Arch,
    /// Flipout (`true`) or the deterministic twin.
    pub bayesian: bool,
    /// Dataset.
    pub dataset: crate::data::DatasetKind,
    /// Number of MPI ranks.
    pub ranks: usize,
    /// Examples per rank per step.
    pub batch_per_rank: usize,
    /// Learning rate used (after scaling by the number of ranks, if on).
    pub learning_rate: f32,
    /// Trainable parameters.
    pub parameters: usize,
    /// Global step at the start (non-zero after `--resume`) and at the end.
    pub first_step: i64,
    /// Global step at the end.
    pub last_step: i64,
    /// Per-epoch statistics.
    pub epochs: Vec<EpochStats>,
    /// Loss of every step of this run (averaged over ranks).
    pub step_loss: Vec<f32>,
    /// Training images per second over all ranks, the first (warm-up) step excluded.
    pub images_per_sec: f64,
    /// Allreduce traffic.
    pub allreduce: AllreduceStats,
    /// Final test accuracy.
    pub test_accuracy: f64,
    /// FNV-1a digest of every trainable variable's bytes, one per rank (equal when the
    /// ranks hold bit-identical variables).
    pub variable_digests: Vec<String>,
    /// Latest checkpoint prefix written, if any.
    pub checkpoint: Option<String>,
    /// T1 / (TN * N) when the one-rank throughput was given (`--t1-images-per-sec`).
    pub scaling_efficiency: Option<f64>,
}

/// `bnn-train compare`: a BNN and its CNN twin trained with the same settings.
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    /// The Bayesian run.
    pub bnn: RunReport,
    /// The deterministic run.
    pub cnn: RunReport,
    /// BNN images/s divided by CNN images/s.
    pub bnn_cnn_throughput_ratio: f64,
}

/// Scaling efficiency for the same work: `T1 / (TN * N)`, written with throughputs
/// (T = work / throughput) as `tput_N / (N * tput_1)`.
pub fn scaling_efficiency(tput_1: f64, tput_n: f64, n: usize) -> f64 {
    tput_n / (n as f64 * tput_1)
}

/// FNV-1a, 64-bit, over a sequence of byte slices.
pub fn fnv1a64<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// A one-line progress bar on stderr, drawn only when stderr is a terminal.
pub struct Progress {
    on: bool,
    total: usize,
}

impl Progress {
    /// A bar for `total` steps; `quiet` turns it off.
    pub fn new(total: usize, quiet: bool) -> Self {
        Progress { on: !quiet && std::io::stderr().is_terminal(), total: total.max(1) }
    }

    /// Redraws the bar at `done` steps.
    pub fn update(&self, epoch: usize, done: usize, loss: f32) {
        if !self.on {
            return;
        }
        let width = 30;
        let filled = (done * width / self.total).min(width);
        let mut e = std::io::stderr();
        let _ = write!(e, "\repoch {epoch:>3} [{}{}] {done}/{} loss {loss:.4}", "#".repeat(filled), " ".repeat(width - filled), self.total);
        let _ = e.flush();
    }

    /// Clears the bar's line.
    pub fn finish(&self) {
        if self.on {
            let _ = write!(std::io::stderr(), "\r{}\r", " ".repeat(80));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_reference_values() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64([b"".as_slice()]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64([b"a".as_slice()]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64([b"fo".as_slice(), b"obar".as_slice()]), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn efficiency_is_one_for_perfect_scaling() {
        assert!((scaling_efficiency(100.0, 200.0, 2) - 1.0).abs() < 1e-12);
        assert!((scaling_efficiency(100.0, 150.0, 2) - 0.75).abs() < 1e-12);
    }
}
