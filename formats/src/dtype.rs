//! Element types of checkpoint tensors and how they map between TensorFlow and safetensors.

use serde::{Deserialize, Serialize};

/// Element type of a tensor that TensorFlow writes to checkpoints.
///
/// The discriminants are TensorFlow's `DataType` enum values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit IEEE float (`DT_FLOAT`).
    Float32 = 1,
    /// 64-bit IEEE float (`DT_DOUBLE`).
    Float64 = 2,
    /// `DT_INT32`.
    Int32 = 3,
    /// `DT_UINT8`.
    Uint8 = 4,
    /// `DT_INT16`.
    Int16 = 5,
    /// `DT_INT8`.
    Int8 = 6,
    /// Variable-length byte strings (`DT_STRING`).
    String = 7,
    /// Two float32: real, imaginary (`DT_COMPLEX64`).
    Complex64 = 8,
    /// `DT_INT64`.
    Int64 = 9,
    /// One byte, 0 or 1 (`DT_BOOL`).
    Bool = 10,
    /// Brain float: the top 16 bits of a float32 (`DT_BFLOAT16`).
    Bfloat16 = 14,
    /// `DT_UINT16`.
    Uint16 = 17,
    /// Two float64 (`DT_COMPLEX128`).
    Complex128 = 18,
    /// IEEE half precision (`DT_HALF`).
    Float16 = 19,
    /// `DT_UINT32`.
    Uint32 = 22,
    /// `DT_UINT64`.
    Uint64 = 23,
}

impl DType {
    /// Every supported type.
    pub const ALL: [DType; 16] = [
        DType::Float16,
        DType::Bfloat16,
        DType::Float32,
        DType::Float64,
        DType::Int8,
        DType::Int16,
        DType::Int32,
        DType::Int64,
        DType::Uint8,
        DType::Uint16,
        DType::Uint32,
        DType::Uint64,
        DType::Bool,
        DType::Complex64,
        DType::Complex128,
        DType::String,
    ];

    /// The type for a TensorFlow `DataType` value; reference types (`+100`) map to their value type.
    pub fn from_tf(value: i32) -> Option<DType> {
        let value = if value > 100 { value - 100 } else { value };
        DType::ALL.into_iter().find(|d| *d as i32 == value)
    }

    /// TensorFlow's `DataType` value.
    pub fn tf_enum(self) -> i32 {
        self as i32
    }

    /// Bytes per element, or `None` for variable-length strings.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            DType::Int8 | DType::Uint8 | DType::Bool => 1,
            DType::Float16 | DType::Bfloat16 | DType::Int16 | DType::Uint16 => 2,
            DType::Float32 | DType::Int32 | DType::Uint32 => 4,
            DType::Float64 | DType::Int64 | DType::Uint64 | DType::Complex64 => 8,
            DType::Complex128 => 16,
            DType::String => return None,
        })
    }

    /// The name TensorFlow and numpy give the type (`tf.DType.name`): `float32`, `bfloat16`...
    pub fn name(self) -> &'static str {
        match self {
            DType::Float16 => "float16",
            DType::Bfloat16 => "bfloat16",
            DType::Float32 => "float32",
            DType::Float64 => "float64",
            DType::Int8 => "int8",
            DType::Int16 => "int16",
            DType::Int32 => "int32",
            DType::Int64 => "int64",
            DType::Uint8 => "uint8",
            DType::Uint16 => "uint16",
            DType::Uint32 => "uint32",
            DType::Uint64 => "uint64",
            DType::Bool => "bool",
            DType::Complex64 => "complex64",
            DType::Complex128 => "complex128",
            DType::String => "string",
        }
    }

    /// The safetensors type holding the same bytes, or `None` where safetensors has none
    /// (complex128, strings).
    pub fn to_safetensors(self) -> Option<safetensors::Dtype> {
        use safetensors::Dtype as S;
        Some(match self {
            DType::Float16 => S::F16,
            DType::Bfloat16 => S::BF16,
            DType::Float32 => S::F32,
            DType::Float64 => S::F64,
            DType::Int8 => S::I8,
            DType::Int16 => S::I16,
            DType::Int32 => S::I32,
            DType::Int64 => S::I64,
            DType::Uint8 => S::U8,
            DType::Uint16 => S::U16,
            DType::Uint32 => S::U32,
            DType::Uint64 => S::U64,
            DType::Bool => S::BOOL,
            DType::Complex64 => S::C64,
            DType::Complex128 | DType::String => return None,
        })
    }

    /// The type for a safetensors dtype, if TensorFlow has one.
    pub fn from_safetensors(d: safetensors::Dtype) -> Option<DType> {
        DType::ALL.into_iter().find(|t| t.to_safetensors() == Some(d))
    }

    /// The safetensors header spelling (`F32`, `BF16`...).
    pub fn safetensors_name(self) -> Option<String> {
        self.to_safetensors().map(|d| format!("{d:?}"))
    }

    /// Whether the type holds real floating-point numbers (the types a posterior can have).
    pub fn is_float(self) -> bool {
        matches!(self, DType::Float16 | DType::Bfloat16 | DType::Float32 | DType::Float64)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf_enum_values_are_tensorflows() {
        // From tensorflow/core/framework/types.proto.
        assert_eq!(DType::from_tf(1), Some(DType::Float32));
        assert_eq!(DType::from_tf(101), Some(DType::Float32));
        assert_eq!(DType::from_tf(14), Some(DType::Bfloat16));
        assert_eq!(DType::from_tf(19), Some(DType::Float16));
        assert_eq!(DType::from_tf(23), Some(DType::Uint64));
        assert_eq!(DType::from_tf(20), None); // DT_RESOURCE is never stored
        for d in DType::ALL {
            assert_eq!(DType::from_tf(d.tf_enum()), Some(d));
        }
    }

    #[test]
    fn safetensors_mapping_round_trips() {
        for d in DType::ALL {
            if let Some(s) = d.to_safetensors() {
                assert_eq!(DType::from_safetensors(s), Some(d));
                assert_eq!(s.bitsize(), 8 * d.size().unwrap_or(0));
            }
        }
        assert_eq!(DType::Float32.safetensors_name().as_deref(), Some("F32"));
        assert!(DType::String.to_safetensors().is_none());
    }
}
