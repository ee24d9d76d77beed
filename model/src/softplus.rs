//! sigma = softplus(rho) = ln(1 + e^rho), computed without overflow or cancellation.

/// Stable softplus in f64: `rho + ln(1 + e^-rho)` for positive rho (no overflow of e^rho),
/// `ln(1 + e^rho)` with `ln_1p` otherwise (no loss when e^rho is tiny).
pub fn softplus(rho: f64) -> f64 {
    if rho > 0.0 {
        rho + (-rho).exp().ln_1p()
    } else {
        rho.exp().ln_1p()
    }
}

/// Stable softplus in f32, the same way.
pub fn softplus_f32(rho: f32) -> f32 {
    if rho > 0.0 {
        rho + (-rho).exp().ln_1p()
    } else {
        rho.exp().ln_1p()
    }
}

/// An untransformed scale whose softplus is exactly 0 in every float type TensorFlow stores
/// (e^-1000 underflows to 0 even in f64), so a Monte Carlo sample of the weight is exactly mu.
pub const ZERO_SCALE_RHO: f64 = -1000.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_at_the_extremes() {
        // References: numpy.logaddexp(0, rho) in float64 and float32.
        assert_eq!(softplus(-9.0), 0.00012340218972325883);
        assert_eq!(softplus_f32(-9.0), 0.00012340219_f32);
        assert_eq!(softplus(50.0), 50.0);
        assert_eq!(softplus_f32(50.0), 50.0);
        assert_eq!(softplus(0.0), std::f64::consts::LN_2);
        assert_eq!(softplus(-3.0), 0.04858735157374206);
        assert_eq!(softplus(800.0), 800.0, "no overflow");
        // The naive formula loses everything in f32 at rho = -20 (1 + 2e-9 == 1).
        assert_eq!((1.0f32 + (-20.0f32).exp()).ln(), 0.0);
        assert!((softplus_f32(-20.0) - 2.0611537e-9).abs() < 1e-15);
    }

    #[test]
    fn zero_scale_is_zero_in_every_float_type() {
        assert_eq!(softplus(ZERO_SCALE_RHO), 0.0);
        assert_eq!(softplus_f32(ZERO_SCALE_RHO as f32), 0.0);
        let h = half::f16::from_f64(ZERO_SCALE_RHO).to_f64();
        assert_eq!(softplus(h), 0.0);
        let b = half::bf16::from_f64(ZERO_SCALE_RHO).to_f64();
        assert_eq!(softplus(b), 0.0);
    }
}
