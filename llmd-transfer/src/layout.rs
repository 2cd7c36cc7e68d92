//! What a KV block is, and whether two engines can exchange blocks.
//!
//! Before any byte moves, the two sides compare layouts, as vLLM's NixlConnector
//! compares a compatibility hash in its handshake (vLLM version, connector version,
//! model, dtype, KV heads, head size, layers, attention backend, cache dtype). llmd
//! compares the fields themselves, so a refusal names the first that differs, and
//! [`KvLayout::compatibility_hash`] summarises them for the wire (the frame header
//! carries it, so a block stream from another layout is refused too).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, TransferError};

/// The version of llmd's transfer protocol; part of the compatibility hash.
pub const PROTOCOL_VERSION: u32 = 1;

/// An engine's KV-cache layout, as far as moving blocks between engines cares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvLayout {
    /// The model (its name or path as served); two engines must serve the same one.
    pub model: String,
    /// Element type of the cache: `float32`, `float16` or `bfloat16` (vLLM's names).
    pub dtype: String,
    /// Tokens per block.
    pub block_size: usize,
    /// Decoder layers whose K/V a block carries.
    pub num_layers: usize,
    /// Key/value heads (per tensor-parallel rank).
    pub kv_heads: usize,
    /// Head width.
    pub head_dim: usize,
    /// Memory order of a block's elements (`NHD`: token, head, dim; vLLM's default).
    pub layout: String,
}

impl KvLayout {
    /// Bytes per element of [`KvLayout::dtype`]; `None` for a type llmd does not know.
    pub fn element_size(&self) -> Option<usize> {
        match self.dtype.as_str() {
            "float32" | "f32" => Some(4),
            "float16" | "f16" | "half" | "bfloat16" | "bf16" => Some(2),
            "fp8" | "fp8_e4m3" | "fp8_e5m2" => Some(1),
            _ => None,
        }
    }

    /// Bytes of one block: every layer's keys and values.
    pub fn block_bytes(&self) -> Option<usize> {
        let per = self.block_size.checked_mul(self.kv_heads)?.checked_mul(self.head_dim)?;
        self.num_layers.checked_mul(2)?.checked_mul(per)?.checked_mul(self.element_size()?)
    }

    /// Whether blocks from `remote` can be written into this engine's cache; the error
    /// names the first field that differs.
    pub fn check_compatible(&self, remote: &KvLayout) -> Result<()> {
        let fields: [(&'static str, String, String); 7] = [
            ("model", self.model.clone(), remote.model.clone()),
            ("dtype", canonical_dtype(&self.dtype).into(), canonical_dtype(&remote.dtype).into()),
            ("block_size", self.block_size.to_string(), remote.block_size.to_string()),
            ("num_layers", self.num_layers.to_string(), remote.num_layers.to_string()),
            ("kv_heads", self.kv_heads.to_string(), remote.kv_heads.to_string()),
            ("head_dim", self.head_dim.to_string(), remote.head_dim.to_string()),
            ("layout", self.layout.to_ascii_uppercase(), remote.layout.to_ascii_uppercase()),
        ];
        for (field, local, remote) in fields {
            if local != remote {
                return Err(TransferError::Incompatible { field, local, remote });
            }
        }
        if self.element_size().is_none() {
            return Err(TransferError::Incompatible {
                field: "dtype",
                local: format!("{} (unknown to llmd)", self.dtype),
                remote: remote.dtype.clone(),
            });
        }
        Ok(())
    }

    /// SHA-256 over the protocol version and the fields [`KvLayout::check_compatible`]
    /// compares, canonicalised: equal for compatible layouts, different otherwise.
    pub fn compatibility_hash(&self) -> [u8; 32] {
        let canon = format!(
            "llmd-transfer/{PROTOCOL_VERSION}\nmodel={}\ndtype={}\nblock_size={}\nnum_layers={}\nkv_heads={}\nhead_dim={}\nlayout={}\n",
            self.model,
            canonical_dtype(&self.dtype),
            self.block_size,
            self.num_layers,
            self.kv_heads,
            self.head_dim,
            self.layout.to_ascii_uppercase()
        );
        Sha256::digest(canon.as_bytes()).into()
    }
}

// One spelling per type, so `bf16` and `bfloat16` compare equal.
fn canonical_dtype(d: &str) -> &str {
    match d {
        "f32" | "float32" | "float" => "float32",
        "f16" | "float16" | "half" => "float16",
        "bf16" | "bfloat16" => "bfloat16",
        other => other,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn layout() -> KvLayout {
        KvLayout {
            model: "Qwen/Qwen3-0.6B".into(),
            dtype: "bfloat16".into(),
            block_size: 16,
            num_layers: 28,
            kv_heads: 8,
            head_dim: 128,
            layout: "NHD".into(),
        }
    }

    #[test]
    fn equal_layouts_agree_and_spellings_do_not_matter() {
        let a = layout();
        let b = KvLayout { dtype: "bf16".into(), layout: "nhd".into(), ..layout() };
        a.check_compatible(&b).unwrap();
        assert_eq!(a.compatibility_hash(), b.compatibility_hash());
        assert_eq!(a.block_bytes(), Some(28 * 2 * 16 * 8 * 128 * 2));
    }

    #[test]
    fn the_first_difference_is_named_and_changes_the_hash() {
        let a = layout();
        for (b, field) in [
            (KvLayout { model: "other".into(), ..layout() }, "model"),
            (KvLayout { dtype: "float32".into(), ..layout() }, "dtype"),
            (KvLayout { block_size: 32, ..layout() }, "block_size"),
            (KvLayout { num_layers: 27, ..layout() }, "num_layers"),
            (KvLayout { kv_heads: 4, ..layout() }, "kv_heads"),
            (KvLayout { head_dim: 64, ..layout() }, "head_dim"),
            (KvLayout { layout: "HND".into(), ..layout() }, "layout"),
        ] {
            let err = a.check_compatible(&b).unwrap_err();
            assert!(matches!(&err, TransferError::Incompatible { field: f, .. } if *f == field), "{err}");
            assert_ne!(a.compatibility_hash(), b.compatibility_hash(), "{field}");
        }
        let err = a.check_compatible(&KvLayout { block_size: 32, ..layout() }).unwrap_err().to_string();
        assert_eq!(err, "incompatible KV layouts: block_size is 16 here and 32 on the remote engine");
    }

    #[test]
    fn an_unknown_dtype_is_refused() {
        let a = KvLayout { dtype: "int3".into(), ..layout() };
        assert!(a.block_bytes().is_none());
        assert!(a.check_compatible(&a.clone()).is_err());
    }
}
