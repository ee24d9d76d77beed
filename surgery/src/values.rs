//! Float tensors as f64 values, whatever their stored type, and single elements back as bytes.

use formats::DType;

/// The values of a float tensor (f16, bf16, f32, f64; little-endian bytes), widened exactly to f64.
pub fn to_f64(dtype: DType, bytes: &[u8]) -> Option<Vec<f64>> {
    Some(match dtype {
        DType::Float32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect(),
        DType::Float64 => bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect(),
        DType::Float16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
        DType::Bfloat16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
        _ => return None,
    })
}

/// One element of `dtype` holding `value` (rounded to nearest), as little-endian bytes.
pub fn element_bytes(dtype: DType, value: f64) -> Option<Vec<u8>> {
    Some(match dtype {
        DType::Float32 => (value as f32).to_le_bytes().to_vec(),
        DType::Float64 => value.to_le_bytes().to_vec(),
        DType::Float16 => half::f16::from_f64(value).to_le_bytes().to_vec(),
        DType::Bfloat16 => half::bf16::from_f64(value).to_le_bytes().to_vec(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_is_exact() {
        let b = [0x80, 0x3f, 0x00, 0xc0]; // bf16 1.0, -2.0
        assert_eq!(to_f64(DType::Bfloat16, &b), Some(vec![1.0, -2.0]));
        let h = [0x00, 0x3c, 0x00, 0x7c]; // f16 1.0, +inf
        assert_eq!(to_f64(DType::Float16, &h), Some(vec![1.0, f64::INFINITY]));
        assert_eq!(to_f64(DType::Float32, &0.1f32.to_le_bytes()), Some(vec![0.1f32 as f64]));
        assert_eq!(to_f64(DType::Int32, &[0; 4]), None);
        assert_eq!(element_bytes(DType::Float32, -1000.0), Some((-1000.0f32).to_le_bytes().to_vec()));
    }
}
