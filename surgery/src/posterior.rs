//! Walking the mu and rho of a posterior side by side in bounded chunks, straight from the
//! memory-mapped checkpoint, releasing each chunk's pages once it has been used: analysing or
//! pruning a checkpoint larger than memory keeps a few MiB resident, not the whole file.
//!
//! Also the one place that says what a weight is before its SNR is taken: pruned (mu = 0 with
//! rho = 0, BPrune's mode, or with softplus(rho) = 0, zero mode), undefined (mu or rho NaN or
//! infinite), or an SNR.

use formats::checkpoint::Checkpoint;
use formats::DType;

use crate::error::{Error, Result};
use crate::snr::Target;
use model::softplus::{softplus, softplus_f32};

/// Weights per chunk: a multiple of 64 (mask words), 4 MiB of f32 mu and as much rho.
pub const CHUNK_WEIGHTS: usize = 1 << 20;

/// Calls `f(first, mu, rho)` for consecutive chunks of [`CHUNK_WEIGHTS`] weights of target `t`
/// (little-endian element bytes; `first` is the index of the chunk's first weight), then drops
/// the chunk's mapped pages. With `verify`, the stored checksums of mu and rho are checked after
/// the last chunk (the caller discards what it made from a tensor that fails).
pub fn for_each_chunk(ckpt: &Checkpoint, t: &Target, verify: bool, mut f: impl FnMut(usize, &[u8], &[u8]) -> Result<()> + Send) -> Result<()> {
    let width = t.dtype.size().ok_or_else(|| Error::invalid(ckpt.path(), format!("'{}' is {}, not a float type", t.loc_key, t.dtype)))?;
    let (mu, rho) = (ckpt.read_unverified(&t.loc_key)?, ckpt.read_unverified(&t.rho_key)?);
    let numeric = |key: &str| Error::invalid(ckpt.path(), format!("'{key}' is not numeric"));
    let mu_bytes = mu.bytes().ok_or_else(|| numeric(&t.loc_key))?;
    let rho_bytes = rho.bytes().ok_or_else(|| numeric(&t.rho_key))?;
    if mu_bytes.len() != rho_bytes.len() {
        return Err(Error::invalid(ckpt.path(), format!("'{}' and its scale differ in size", t.loc_key)));
    }
    let step = CHUNK_WEIGHTS * width;
    let (mut crc_mu, mut crc_rho) = (0u32, 0u32);
    for (i, (m, r)) in mu_bytes.chunks(step).zip(rho_bytes.chunks(step)).enumerate() {
        // The checksums on one core while `f` works on the other(s).
        let (crcs, done) = rayon::join(
            || verify.then(|| (crc32c::crc32c_append(crc_mu, m), crc32c::crc32c_append(crc_rho, r))),
            || f(i * CHUNK_WEIGHTS, m, r),
        );
        done?;
        if let Some((a, b)) = crcs {
            (crc_mu, crc_rho) = (a, b);
        }
        let range = i * step..i * step + m.len();
        ckpt.release(&t.loc_key, range.clone());
        ckpt.release(&t.rho_key, range);
    }
    if verify {
        ckpt.verify_checksum(&t.loc_key, crc_mu)?;
        ckpt.verify_checksum(&t.rho_key, crc_rho)?;
    }
    Ok(())
}

/// What a weight is, before statistics or pruning decisions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Weight {
    /// Already pruned: mu = 0 (either sign) and rho = 0 (BPrune's mode) or softplus(rho) = 0
    /// (zero mode). Its SNR would be 0 or 0/0.
    Pruned,
    /// mu or rho is NaN or infinite: no SNR.
    Undefined,
    /// |mu| / softplus(rho), in [0, +inf] (+inf when the scale is 0 but mu is not).
    Snr(f64),
}

/// The largest f32 rho whose f32 softplus is exactly 0 (e^rho underflows): softplus is
/// monotone, so `softplus_f32(rho) == 0` exactly when `rho <= ZERO_SOFTPLUS_RHO_F32`.
/// Checked against `softplus_f32` in the tests.
pub const ZERO_SOFTPLUS_RHO_F32: f32 = f32::from_bits(0xc2cf_f1b5); // -103.972084

/// Whether a float32-domain weight is already pruned (see [`Weight::Pruned`]).
#[inline(always)]
pub fn is_pruned_f32(mu: f32, rho: f32) -> bool {
    mu == 0.0 && (rho == 0.0 || rho <= ZERO_SOFTPLUS_RHO_F32)
}

/// A weight stored as f32 (or narrower, widened exactly): the SNR computed in f32 as
/// [`crate::snr::snr_values`] does.
#[inline(always)]
pub fn classify_f32(mu: f32, rho: f32) -> (Weight, f32) {
    if !mu.is_finite() || !rho.is_finite() {
        return (Weight::Undefined, f32::NAN);
    }
    if is_pruned_f32(mu, rho) {
        return (Weight::Pruned, 0.0);
    }
    let s = mu.abs() / softplus_f32(rho);
    (Weight::Snr(s as f64), s)
}

/// A weight stored as f64: the SNR computed in f64.
pub fn classify_f64(mu: f64, rho: f64) -> Weight {
    if !mu.is_finite() || !rho.is_finite() {
        return Weight::Undefined;
    }
    let sigma = softplus(rho);
    if mu == 0.0 && (rho == 0.0 || sigma == 0.0) {
        return Weight::Pruned;
    }
    Weight::Snr(mu.abs() / sigma)
}

/// The weights of a posterior from its mu and rho values (widened to f64 from `dtype`).
pub fn classify(dtype: DType, mu: &[f64], rho: &[f64]) -> Vec<Weight> {
    use rayon::prelude::*;
    match dtype {
        DType::Float64 => mu.par_iter().zip(rho).map(|(m, r)| classify_f64(*m, *r)).collect(),
        _ => mu.par_iter().zip(rho).map(|(m, r)| classify_f32(*m as f32, *r as f32).0).collect(),
    }
}

/// Element `i` of little-endian float bytes of `dtype` (f32, f16 or bf16), as f32 (exactly).
#[inline(always)]
pub fn load_f32(dtype: DType, bytes: &[u8], i: usize) -> f32 {
    match dtype {
        DType::Float16 => half::f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32(),
        DType::Bfloat16 => half::bf16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32(),
        _ => f32::from_le_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_softplus_boundary_is_where_softplus_f32_becomes_zero() {
        let r = ZERO_SOFTPLUS_RHO_F32;
        assert_eq!(softplus_f32(r), 0.0);
        let next = f32::from_bits(r.to_bits() - 1); // the next f32 toward zero
        assert!(next > r && softplus_f32(next) > 0.0, "{next}: {}", softplus_f32(next));
        assert_eq!(softplus_f32(model::softplus::ZERO_SCALE_RHO as f32), 0.0);
    }

    #[test]
    fn pruned_weights_of_both_modes_are_recognised() {
        assert_eq!(classify_f32(0.0, -1000.0).0, Weight::Pruned, "zero mode");
        assert_eq!(classify_f32(-0.0, 0.0).0, Weight::Pruned, "BPrune mode");
        assert_eq!(classify_f32(0.0, 0.5).0, Weight::Snr(0.0), "a zero mean with a live scale is an SNR of 0");
        assert_eq!(classify_f32(0.5, -1000.0).0, Weight::Snr(f64::INFINITY));
        assert_eq!(classify_f32(f32::NAN, 0.0).0, Weight::Undefined);
        assert_eq!(classify_f32(0.0, f32::NEG_INFINITY).0, Weight::Undefined);
        assert_eq!(classify_f64(0.0, -1000.0), Weight::Pruned);
        assert_eq!(classify_f64(0.0, 0.0), Weight::Pruned);
        assert_eq!(classify_f64(0.5, 0.0), Weight::Snr(0.5 / std::f64::consts::LN_2));
    }
}
