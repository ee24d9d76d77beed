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
/// Monte Carlo averages far more error than its ~1e-7 rounding), returned as f64. The
/// exponentials run over the whole batch at once on [`exp_f32`], which vectorizes (libm's
/// `expf`, one call per value, took as long as a small layer's products per sample).
pub fn softmax_f32(logits: &[f32], classes: usize) -> Vec<f64> {
    softmax_in_f32(logits, classes).into_iter().map(f64::from).collect()
}

/// [`softmax_f32`]'s probabilities as f32 (the same values before the exact widening): half
/// the memory for the Monte Carlo samples that wait to be summed in order.
pub fn softmax_in_f32(logits: &[f32], classes: usize) -> Vec<f32> {
    let mut e = Vec::with_capacity(logits.len());
    for row in logits.chunks_exact(classes) {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        e.extend(row.iter().map(|&v| v - m));
    }
    exp_all(&mut e);
    for row in e.chunks_exact_mut(classes) {
        let s: f32 = row.iter().sum();
        row.iter_mut().for_each(|v| *v /= s);
    }
    e
}

/// `v = e^v` elementwise on [`exp_f32`], compiled for AVX2 where the CPU has it.
fn exp_all(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { exp_all_avx2(v) };
    }
    v.iter_mut().for_each(|x| *x = exp_f32(*x));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_all_avx2(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = exp_f32(*x));
}

/// `e^x` in f32, branch-free (Cephes `expf`: x = n ln 2 + r, |r| <= ln 2 / 2, a degree-6
/// polynomial of r, 2^n through the exponent bits; about 1e-7 relative error), 0 below
/// -87.3 (where f32's normal range ends), infinity above 88.7; NaN stays NaN.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const HI: f32 = 88.722_83;
    const LO: f32 = -87.336_54;
    let c = x.clamp(LO, HI);
    // Round to nearest by the 1.5 * 2^23 trick: no SSE4.1 `round` needed to vectorize, and
    // the integer is in the low bits (no saturating float-to-int conversion either).
    const MAGIC: f32 = 12_582_912.0;
    let t = c * std::f32::consts::LOG2_E + MAGIC;
    let ni = t.to_bits() as i32 - MAGIC.to_bits() as i32;
    let n = t - MAGIC;
    let r = c - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let z = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r + 0.5;
    let y = p * z + r + 1.0;
    // 2^n in two factors, so that n = 128 (x near HI) stays finite before the product.
    let half = ni >> 1;
    let scale = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    let v = y * scale(half) * scale(ni - half);
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else if x.is_nan() {
        x
    } else {
        v
    }
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

    #[test]
    fn exp_f32_matches_libm() {
        // Every 1e-4 over the range of normal results, in f64.
        for i in -873_000..=887_000 {
            let x = i as f32 * 1e-4;
            let (got, want) = (f64::from(exp_f32(x)), f64::from(x).exp());
            assert!((got - want).abs() <= 3e-7 * want, "exp({x}) = {got}, libm {want}");
        }
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
        // Softmax against the f64 one.
        let logits = [1.0, -2.0, 0.5, 30.0, 29.0, -80.0];
        for (a, b) in softmax_f32(&logits, 3).iter().zip(softmax(&logits, 3)) {
            assert!((a - b).abs() < 1e-6, "{a} {b}");
        }
    }
}
