//! The engine's paged KV memory: for every layer, keys and values of `num_blocks`
//! blocks of `block_size` token slots. Block ids are those of the `llmd-kvcache` block
//! pool; a token at position `p` of a sequence lives in slot
//! `block_table[p / block_size] * block_size + p % block_size`.

use half::{bf16, f16};

use crate::error::{EngineError, Result};

/// Element type of the stored keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    /// 32-bit floats: exact, twice the memory.
    F32,
    /// IEEE half precision.
    #[default]
    F16,
    /// bfloat16.
    BF16,
}

impl KvDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 | KvDtype::BF16 => 2,
        }
    }
}

impl std::str::FromStr for KvDtype {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(KvDtype::F32),
            "f16" | "float16" | "half" => Ok(KvDtype::F16),
            "bf16" | "bfloat16" => Ok(KvDtype::BF16),
            other => Err(format!("unknown KV cache dtype {other:?} (f32, f16, bf16)")),
        }
    }
}

/// An element type the cache can store.
pub trait KvElem: Copy + Send + Sync + 'static {
    /// From `f32`, rounding to nearest.
    fn from_f32(x: f32) -> Self;
    /// To `f32`, exactly.
    fn to_f32(self) -> f32;
    /// Widens a row to `f32` (`dst.len() == src.len()`); SIMD where the CPU has it.
    fn widen(src: &[Self], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }
}

impl KvElem for f32 {
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn widen(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl KvElem for f16 {
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn widen(src: &[Self], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
}

impl KvElem for bf16 {
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn widen(src: &[Self], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
}

/// Keys or values of one layer, `[num_blocks, block_size, kv_heads, head_dim]`.
#[derive(Debug, Clone)]
pub enum KvBuf {
    /// `f32` storage.
    F32(Vec<f32>),
    /// `f16` storage.
    F16(Vec<f16>),
    /// `bf16` storage.
    BF16(Vec<bf16>),
}

impl KvBuf {
    fn zeros(dtype: KvDtype, n: usize) -> Self {
        use half::vec::HalfBitsVecExt;
        // Zeroed `u16`s come from the allocator already zeroed (no fill pass over what
        // may be gigabytes), then are reinterpreted as half floats of value +0.
        match dtype {
            KvDtype::F32 => KvBuf::F32(vec![0.0; n]),
            KvDtype::F16 => KvBuf::F16(vec![0u16; n].reinterpret_into::<f16>()),
            KvDtype::BF16 => KvBuf::BF16(vec![0u16; n].reinterpret_into::<bf16>()),
        }
    }
}

/// One layer's keys and values, always of the same dtype.
#[derive(Debug, Clone)]
pub struct LayerKv {
    k: KvBuf,
    v: KvBuf,
}

impl LayerKv {
    /// Keys and values.
    pub fn parts(&self) -> (&KvBuf, &KvBuf) {
        (&self.k, &self.v)
    }

    /// Keys and values, mutably.
    pub fn parts_mut(&mut self) -> (&mut KvBuf, &mut KvBuf) {
        (&mut self.k, &mut self.v)
    }
}

/// Shape of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    /// Blocks per layer.
    pub num_blocks: usize,
    /// Token slots per block.
    pub block_size: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head width.
    pub head_dim: usize,
}

impl KvShape {
    /// Elements of one token slot (all heads).
    pub fn slot_len(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Bytes for keys and values of all layers.
    pub fn bytes(&self, layers: usize, dtype: KvDtype) -> usize {
        2 * layers * self.num_blocks * self.block_size * self.slot_len() * dtype.size()
    }
}

/// The paged KV cache of all layers.
#[derive(Debug, Clone)]
pub struct PagedKvCache {
    shape: KvShape,
    dtype: KvDtype,
    layers: Vec<LayerKv>,
}

impl PagedKvCache {
    /// Allocates a zeroed cache.
    pub fn new(layers: usize, shape: KvShape, dtype: KvDtype) -> Result<Self> {
        let n = shape
            .num_blocks
            .checked_mul(shape.block_size)
            .and_then(|x| x.checked_mul(shape.slot_len()))
            .filter(|&n| n > 0)
            .ok_or_else(|| EngineError::Input(format!("KV cache shape {shape:?} is empty or too large")))?;
        Ok(PagedKvCache {
            shape,
            dtype,
            layers: (0..layers).map(|_| LayerKv { k: KvBuf::zeros(dtype, n), v: KvBuf::zeros(dtype, n) }).collect(),
        })
    }

    /// The shape.
    pub fn shape(&self) -> KvShape {
        self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> KvDtype {
        self.dtype
    }

    /// Layer `i`.
    pub fn layer(&self, i: usize) -> &LayerKv {
        &self.layers[i]
    }

    /// Layer `i`, mutably.
    pub fn layer_mut(&mut self, i: usize) -> &mut LayerKv {
        &mut self.layers[i]
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
}
