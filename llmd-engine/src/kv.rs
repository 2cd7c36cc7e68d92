//! The engine's paged KV memory: for every layer, keys and values of `num_blocks`
//! blocks of `block_size` token slots. Block ids are those of the `llmd-kvcache` block
//! pool; a token at position `p` of a sequence lives in slot
//! `block_table[p / block_size] * block_size + p % block_size`.
//!
//! Blocks can be copied out to a host buffer and written back (to move a prefix between
//! engines); [`KvBlockLayout`] documents the buffer's layout.

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

impl std::fmt::Display for KvDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvDtype::F32 => "float32",
            KvDtype::F16 => "float16",
            KvDtype::BF16 => "bfloat16",
        })
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

/// Checks that every block id is below `num_blocks` (a cache's size).
pub(crate) fn check_block_ids(blocks: &[u32], num_blocks: usize) -> Result<()> {
    match blocks.iter().find(|&&b| b as usize >= num_blocks) {
        Some(b) => Err(EngineError::KvTransfer(format!("block {b} is outside the cache ({num_blocks} blocks)"))),
        None => Ok(()),
    }
}

/// The layout of exported KV blocks, which an importer checks before writing any.
///
/// An export buffer holds, for each block in the order the block ids were given, for each
/// layer `0..num_layers`, the block's keys then its values: each part is
/// `block_size * kv_heads * head_dim` elements in the cache's element order (token slot,
/// then KV head, then head dimension), stored in `dtype` as little-endian bytes
/// (`f32`: IEEE-754 binary32; `f16`: binary16 bits; `bf16`: bfloat16 bits). Keys are
/// stored after RoPE, as the attention kernel reads them. So one block takes
/// [`block_bytes`](Self::block_bytes) `= num_layers * 2 * block_size * kv_heads *
/// head_dim * dtype.size()` bytes, and block `i` starts at `i * block_bytes`.
///
/// A backend with no K/V memory (the simulator) reports `num_layers == 0`: its blocks
/// export as zero bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvBlockLayout {
    /// Decoder layers.
    pub num_layers: usize,
    /// Token slots per block.
    pub block_size: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head width.
    pub head_dim: usize,
    /// Element type.
    pub dtype: KvDtype,
}

impl KvBlockLayout {
    /// Elements of one block's keys (or values) in one layer.
    pub fn part_len(&self) -> usize {
        self.block_size * self.kv_heads * self.head_dim
    }

    /// Bytes of one exported block (all layers, keys and values).
    pub fn block_bytes(&self) -> usize {
        self.num_layers * 2 * self.part_len() * self.dtype.size()
    }

    /// Checks that `bytes` exported with layout `got` can be imported here (`self`) into
    /// `blocks` blocks: the layouts agree and the length is theirs.
    pub fn check_import(&self, got: &KvBlockLayout, blocks: usize, bytes: usize) -> Result<()> {
        self.check_compatible(got)?;
        if bytes != blocks * self.block_bytes() {
            return Err(EngineError::KvTransfer(format!(
                "{bytes} bytes for {blocks} blocks of {} bytes each",
                self.block_bytes()
            )));
        }
        Ok(())
    }

    /// Checks that blocks exported with layout `got` can be imported here (`self`);
    /// the error names the first field that differs.
    pub fn check_compatible(&self, got: &KvBlockLayout) -> Result<()> {
        let fields: [(&'static str, usize, usize); 4] = [
            ("num_layers", self.num_layers, got.num_layers),
            ("block_size", self.block_size, got.block_size),
            ("kv_heads", self.kv_heads, got.kv_heads),
            ("head_dim", self.head_dim, got.head_dim),
        ];
        if let Some((field, expected, got)) = fields.into_iter().find(|(_, a, b)| a != b) {
            return Err(EngineError::KvLayoutMismatch { field, expected: expected.to_string(), got: got.to_string() });
        }
        if self.dtype != got.dtype {
            return Err(EngineError::KvLayoutMismatch {
                field: "dtype",
                expected: self.dtype.to_string(),
                got: got.dtype.to_string(),
            });
        }
        Ok(())
    }
}

impl KvBuf {
    fn append_le(&self, range: std::ops::Range<usize>, out: &mut Vec<u8>) {
        // Sized once, then filled element by element in fixed chunks: the compiler turns
        // that into a plain copy on little-endian machines (pushing each element's bytes
        // was 8× slower than memcpy).
        let start = out.len();
        match self {
            KvBuf::F32(v) => {
                out.resize(start + range.len() * 4, 0);
                for (d, x) in out[start..].chunks_exact_mut(4).zip(&v[range]) {
                    d.copy_from_slice(&x.to_le_bytes());
                }
            }
            KvBuf::F16(v) => {
                out.resize(start + range.len() * 2, 0);
                for (d, x) in out[start..].chunks_exact_mut(2).zip(&v[range]) {
                    d.copy_from_slice(&x.to_bits().to_le_bytes());
                }
            }
            KvBuf::BF16(v) => {
                out.resize(start + range.len() * 2, 0);
                for (d, x) in out[start..].chunks_exact_mut(2).zip(&v[range]) {
                    d.copy_from_slice(&x.to_bits().to_le_bytes());
                }
            }
        }
    }

    /// Overwrites `range` from little-endian `bytes` (exactly `range.len()` elements).
    fn read_le(&mut self, range: std::ops::Range<usize>, bytes: &[u8]) {
        match self {
            KvBuf::F32(v) => {
                for (d, c) in v[range].iter_mut().zip(bytes.chunks_exact(4)) {
                    *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            KvBuf::F16(v) => {
                for (d, c) in v[range].iter_mut().zip(bytes.chunks_exact(2)) {
                    *d = f16::from_bits(u16::from_le_bytes([c[0], c[1]]));
                }
            }
            KvBuf::BF16(v) => {
                for (d, c) in v[range].iter_mut().zip(bytes.chunks_exact(2)) {
                    *d = bf16::from_bits(u16::from_le_bytes([c[0], c[1]]));
                }
            }
        }
    }
}

impl PagedKvCache {
    /// The layout of this cache's exported blocks.
    pub fn block_layout(&self) -> KvBlockLayout {
        KvBlockLayout {
            num_layers: self.layers.len(),
            block_size: self.shape.block_size,
            kv_heads: self.shape.kv_heads,
            head_dim: self.shape.head_dim,
            dtype: self.dtype,
        }
    }

    fn check_blocks(&self, blocks: &[u32]) -> Result<()> {
        check_block_ids(blocks, self.shape.num_blocks)
    }

    /// Copies the keys and values of `blocks` (all layers) out, in the layout
    /// [`KvBlockLayout`] documents.
    pub fn export_blocks(&self, blocks: &[u32]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.export_blocks_into(blocks, &mut out)?;
        Ok(out)
    }

    /// [`export_blocks`](Self::export_blocks) into `out` (cleared first), reusing its
    /// memory.
    pub fn export_blocks_into(&self, blocks: &[u32], out: &mut Vec<u8>) -> Result<()> {
        self.check_blocks(blocks)?;
        let layout = self.block_layout();
        let part = layout.part_len();
        out.clear();
        out.reserve(blocks.len() * layout.block_bytes());
        for &b in blocks {
            let range = b as usize * part..(b as usize + 1) * part;
            for layer in &self.layers {
                layer.k.append_le(range.clone(), out);
                layer.v.append_le(range.clone(), out);
            }
        }
        Ok(())
    }

    /// Writes a buffer exported with `layout` into `blocks`. Checks the layout, the block
    /// ids and the buffer's length before writing anything.
    pub fn import_blocks(&mut self, blocks: &[u32], layout: &KvBlockLayout, data: &[u8]) -> Result<()> {
        let ours = self.block_layout();
        ours.check_import(layout, blocks.len(), data.len())?;
        self.check_blocks(blocks)?;
        let part = ours.part_len();
        let part_bytes = part * ours.dtype.size();
        let mut chunks = data.chunks_exact(part_bytes);
        for &b in blocks {
            let range = b as usize * part..(b as usize + 1) * part;
            for layer in &mut self.layers {
                for buf in [&mut layer.k, &mut layer.v] {
                    // The length check above guarantees a chunk per part.
                    let bytes = chunks.next().unwrap_or_default();
                    buf.read_le(range.clone(), bytes);
                }
            }
        }
        Ok(())
    }
}
