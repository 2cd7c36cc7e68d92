//! ggml's tensor encodings (F32, F16, BF16 and the block quantizations Q8_0, Q4_0,
//! Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K): block layouts, dequantization of a row, and matrices that
//! stay quantized in memory ([`QMatrix`]) with a matmul that dequantizes one row at a
//! time.
//!
//! The block layouts follow ggml's `ggml-common.h` and its reference
//! `dequantize_row_*` functions; the tests check them against blocks dequantized by
//! gguf-py (llama.cpp's own Python package), an independent implementation.

mod blocks;
mod matmul;
mod packed;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use blocks::dequantize_row;
pub use matmul::{Activations, QMatrix, dot};

/// A ggml tensor type this engine reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit floats.
    F32,
    /// IEEE half floats.
    F16,
    /// bfloat16.
    BF16,
    /// Blocks of 32: an f16 scale and 32 signed bytes.
    Q8_0,
    /// Blocks of 32: an f16 scale and 32 4-bit values offset by 8.
    Q4_0,
    /// Blocks of 32: f16 scale and minimum, 32 4-bit values.
    Q4_1,
    /// Blocks of 32: an f16 scale and 32 5-bit values offset by 16 (the fifth bits in
    /// one 32-bit word).
    Q5_0,
    /// Blocks of 32: f16 scale and minimum, 32 5-bit values.
    Q5_1,
    /// Super-blocks of 256: 8 sub-blocks of 32 4-bit values with 6-bit scales and mins.
    Q4K,
    /// Super-blocks of 256: as Q4_K with a fifth bit per value.
    Q5K,
    /// Super-blocks of 256: 16 sub-blocks of 16 6-bit values with 8-bit scales.
    Q6K,
}

impl GgmlType {
    /// The type of ggml's numeric id, if supported.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// ggml's name for a type id this engine does not read (`None` for ids it reads or
    /// that ggml never defined), for errors.
    pub fn unsupported_name(id: u32) -> Option<&'static str> {
        Some(match id {
            9 => "Q8_1",
            10 => "Q2_K",
            11 => "Q3_K",
            15 => "Q8_K",
            16 => "IQ2_XXS",
            17 => "IQ2_XS",
            18 => "IQ3_XXS",
            19 => "IQ1_S",
            20 => "IQ4_NL",
            21 => "IQ3_S",
            22 => "IQ2_S",
            23 => "IQ4_XS",
            24 => "I8",
            25 => "I16",
            26 => "I32",
            27 => "I64",
            28 => "F64",
            29 => "IQ1_M",
            34 => "TQ1_0",
            35 => "TQ2_0",
            39 => "MXFP4",
            _ => return None,
        })
    }

    /// ggml's numeric id.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::BF16 => 30,
        }
    }

    /// Elements per block.
    pub fn block_elements(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 => 32,
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
        }
    }

    /// Bytes holding `elements` values (`None` unless they are whole blocks).
    pub fn row_bytes(self, elements: u64) -> Option<u64> {
        let b = self.block_elements() as u64;
        elements.is_multiple_of(b).then(|| elements / b).and_then(|n| n.checked_mul(self.block_bytes() as u64))
    }
}
