//! Classification metrics of a predictive distribution.

/// Metrics of a predictive distribution over a labelled set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metrics {
    /// Number of examples.
    pub n: usize,
    /// Fraction with argmax == label.
    pub accuracy: f64,
    /// Mean of log p(label).
    pub mean_log_likelihood: f64,
    /// Mean of -sum p log p.
    pub mean_entropy: f64,
}

/// Row-wise softmax of `[n, classes]` logits, in f64.
pub fn softmax(logits: &[f32], classes: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks_exact(classes) {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
        let s: f64 = e.iter().sum();
        out.extend(e.into_iter().map(|v| v / s));
    }
    out
}

/// Row-wise softmax of `[n, classes]` logits computed in f32 (half the cost of f64 `exp`;
/// Monte Carlo averages far more error than its ~1e-7 rounding), returned as f64.
pub fn softmax_f32(logits: &[f32], classes: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks_exact(classes) {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let e: Vec<f32> = row.iter().map(|&v| (v - m).exp()).collect();
        let s: f32 = e.iter().sum();
        out.extend(e.into_iter().map(|v| f64::from(v / s)));
    }
    out
}

/// Accuracy, mean log-likelihood of the true labels and mean predictive entropy of
/// `[n, classes]` probabilities. Labels outside `0..classes` count as wrong with
/// probability 0 (log-likelihood -inf): callers check labels first.
pub fn evaluate(probs: &[f64], classes: usize, labels: &[i64]) -> Metrics {
    let n = labels.len();
    let (mut correct, mut ll, mut ent) = (0usize, 0f64, 0f64);
    for (row, &y) in probs.chunks_exact(classes).zip(labels) {
        let arg = row.iter().enumerate().fold(0, |best, (i, &p)| if p > row[best] { i } else { best });
        correct += usize::from(arg as i64 == y);
        let py = usize::try_from(y).ok().and_then(|y| row.get(y)).copied().unwrap_or(0.0);
        ll += py.ln();
        ent -= row.iter().filter(|&&p| p > 0.0).map(|&p| p * p.ln()).sum::<f64>();
    }
    let d = n.max(1) as f64;
    Metrics { n, accuracy: correct as f64 / d, mean_log_likelihood: ll / d, mean_entropy: ent / d }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_by_hand() {
        let p = softmax(&[0.0, 0.0, 2.0f32.ln(), 0.0], 2); // [0.5, 0.5], [2/3, 1/3]
        assert!((p[2] - 2.0 / 3.0).abs() < 1e-7);
        let m = evaluate(&p, 2, &[1, 0]);
        assert_eq!(m.accuracy, 0.5); // first row ties -> class 0 -> wrong
        let ll = (0.5f64.ln() + (2.0f64 / 3.0).ln()) / 2.0;
        assert!((m.mean_log_likelihood - ll).abs() < 1e-7);
        let h2 = -(2.0 / 3.0 * (2.0f64 / 3.0).ln() + 1.0 / 3.0 * (1.0f64 / 3.0).ln());
        assert!((m.mean_entropy - (2f64.ln() + h2) / 2.0).abs() < 1e-7);
    }
}
