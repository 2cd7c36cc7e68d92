//! Llama-family models from GGUF files: hyper-parameters from the `{arch}.*` metadata,
//! tensors under llama.cpp's names, weights kept in their encoding.
//!
//! llama.cpp's converter reorders the rows of each head's query and key projections
//! for the `llama` architecture (Meta's interleaved RoPE pairs instead of Hugging
//! Face's two halves). This runner rotates halves, so those rows are put back in
//! Hugging Face order on load; whole rows move, so the encoded bytes are permuted
//! exactly. `qwen2` files keep Hugging Face's order and have q/k/v biases.

use std::path::Path;

use super::config::{ModelConfig, RopeScaling};
use super::layers::Linear;
use super::llama::{Layer, LlamaModel};
use super::weights::Tensor;
use crate::error::Result;
use crate::gguf::tokenizer::{GgufTokenizer, from_gguf};
use crate::gguf::{GgufFile, TensorInfo};
use crate::quant::{Activations, QMatrix, dequantize_row};

/// Architectures this loader runs (`general.architecture`).
pub const ARCHITECTURES: &[&str] = &["llama", "mistral", "qwen2"];

/// The hyper-parameters of a GGUF model.
pub fn config_from_gguf(f: &GgufFile) -> Result<ModelConfig> {
    let arch = f.opt_str("general.architecture")?.ok_or_else(|| f.error("metadata general.architecture is missing"))?;
    if !ARCHITECTURES.contains(&arch) {
        return Err(f.error(format!("architecture {arch:?} is not supported ({} are)", ARCHITECTURES.join(", "))));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let usize_of = |k: &str| -> Result<usize> { Ok(f.req_u64(&key(k))? as usize) };
    let hidden = usize_of("embedding_length")?;
    let heads = usize_of("attention.head_count")?;
    if heads == 0 || hidden % heads != 0 {
        return Err(f.error(format!("{heads} attention heads for a width of {hidden}")));
    }
    let kv_heads = match f.get(&key("attention.head_count_kv")) {
        None => heads,
        // Some files give one count per layer; this runner needs them equal.
        Some(v) if v.as_array().is_some() => {
            return Err(f.error(format!("{} holds per-layer counts: not supported", key("attention.head_count_kv"))));
        }
        Some(_) => usize_of("attention.head_count_kv")?,
    };
    if kv_heads == 0 || heads % kv_heads != 0 {
        return Err(f.error(format!("{kv_heads} key/value heads for {heads} query heads")));
    }
    let head_dim = match f.get(&key("attention.key_length")) {
        None => hidden / heads,
        Some(_) => usize_of("attention.key_length")?,
    };
    if f.get(&key("rope.dimension_count")).is_some() {
        let rot = usize_of("rope.dimension_count")?;
        if rot != head_dim {
            return Err(f.error(format!("partial rotary embeddings ({rot} of {head_dim} dims) are not supported")));
        }
    }
    if f.tensor("rope_freqs.weight").is_some() {
        return Err(f.error("per-frequency RoPE factors (rope_freqs.weight, Llama 3.1 scaling) are not supported yet"));
    }
    let rope_scaling = match f.opt_str(&key("rope.scaling.type"))? {
        None | Some("none") => RopeScaling::Default,
        Some("linear") => RopeScaling::Linear { factor: f.opt_f64(&key("rope.scaling.factor"))?.unwrap_or(1.0) },
        Some(other) => return Err(f.error(format!("RoPE scaling {other:?} is not supported (none, linear are)"))),
    };
    let vocab = match f.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
        Some(t) => t.len(),
        None => usize_of("vocab_size")?,
    };
    let token = |key: &str| -> Result<Option<u32>> {
        match f.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64().and_then(|t| u32::try_from(t).ok()) {
                Some(t) if (t as usize) < vocab => Ok(Some(t)),
                _ => Err(f.error(format!("metadata {key} is {v:?}, not a token id below {vocab}"))),
            },
        }
    };
    // SentencePiece vocabularies without the keys get llama.cpp's defaults (BOS 1,
    // EOS 2), as the tokenizer does, so generation still stops at EOS.
    let spm_default = |id: u32| {
        (f.get("tokenizer.ggml.model").and_then(|m| m.as_str()) == Some("llama") && (id as usize) < vocab).then_some(id)
    };
    let eos = token("tokenizer.ggml.eos_token_id")?.or(spm_default(2));
    let config = ModelConfig {
        model_type: arch.to_string(),
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: usize_of("feed_forward_length")?,
        num_hidden_layers: usize_of("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        rms_norm_eps: f.opt_f64(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        rope_theta: f.opt_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0),
        rope_scaling,
        max_position_embeddings: match f.get(&key("context_length")) {
            None => 4096,
            Some(_) => usize_of("context_length")?,
        },
        tie_word_embeddings: f.tensor("output.weight").is_none(),
        attention_bias: f.tensor("blk.0.attn_q.bias").is_some(),
        mlp_bias: false,
        sliding_window: f.get(&key("attention.sliding_window")).and_then(|v| v.as_u64()).map(|w| w as usize),
        bos_token_id: token("tokenizer.ggml.bos_token_id")?.or(spm_default(1)),
        eos_token_ids: eos.into_iter().collect(),
    };
    check_sizes(f, &config)?;
    Ok(config)
}

/// Sizes every model this runner can hold stays far below; beyond them a file is
/// corrupt, and products of them (buffer sizes) would overflow.
const LIMITS: [(&str, usize); 6] = [
    ("embedding_length", 1 << 20),
    ("feed_forward_length", 1 << 22),
    ("block_count", 1 << 12),
    ("attention.head_count", 1 << 14),
    ("attention.key_length", 1 << 14),
    ("vocabulary", 1 << 24),
];

fn check_sizes(f: &GgufFile, c: &ModelConfig) -> Result<()> {
    let values =
        [c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads, c.head_dim, c.vocab_size];
    for ((what, most), v) in LIMITS.iter().zip(values) {
        if v == 0 || v > *most {
            return Err(f.error(format!("{what} {v} is out of range (1 to {most})")));
        }
    }
    if !c.head_dim.is_multiple_of(2) {
        return Err(f.error(format!("a head width of {} is odd: RoPE rotates pairs", c.head_dim)));
    }
    for (what, v) in [("rope.freq_base", c.rope_theta), ("attention.layer_norm_rms_epsilon", c.rms_norm_eps)] {
        if !(v.is_finite() && v > 0.0) {
            return Err(f.error(format!("{what} {v} is not a positive number")));
        }
    }
    Ok(())
}

/// Reads tensors of a GGUF file with their expected shapes.
struct Loader<'a> {
    f: &'a GgufFile,
    activations: Activations,
}

impl Loader<'_> {
    fn info(&self, name: &str, rows: usize, cols: usize) -> Result<&TensorInfo> {
        let t = self.f.tensor(name).ok_or_else(|| self.f.error(format!("tensor {name} is missing")))?;
        if t.matrix() != (rows, cols) {
            return Err(self
                .f
                .error(format!("tensor {name} is {:?} (columns first), expected {rows} rows of {cols}", t.dims)));
        }
        Ok(t)
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<QMatrix> {
        let t = self.info(name, rows, cols)?;
        QMatrix::new(t.ggml_type, rows, cols, self.f.data(t)?)
            .map(|q| q.with_activations(self.activations).with_mapping(self.f.mapping().cloned()))
            .map_err(|e| self.f.error(format!("tensor {name}: {e}")))
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.info(name, 1, len)?;
        let mut out = vec![0.0; len];
        dequantize_row(t.ggml_type, &self.f.data(t)?, &mut out);
        Ok(out)
    }

    fn linear(&self, name: &str, rows: usize, cols: usize, bias: bool) -> Result<Linear> {
        let w = self.matrix(&format!("{name}.weight"), rows, cols)?;
        let b = if bias { Some(Tensor::new(vec![rows], self.vector(&format!("{name}.bias"), rows)?)?) } else { None };
        Linear::quantized(w, b).map_err(|e| self.f.error(format!("{name}: {e}")))
    }
}

/// Row order that undoes llama.cpp's per-head interleaving of RoPE pairs: Hugging
/// Face's row `half·hd/2 + i` of a head is the GGUF row `2i + half`.
fn unpermute_order(heads: usize, head_dim: usize) -> Vec<usize> {
    let half = head_dim / 2;
    (0..heads * head_dim)
        .map(|r| {
            let (h, within) = (r / head_dim, r % head_dim);
            let (which, i) = (within / half, within % half);
            h * head_dim + 2 * i + which
        })
        .collect()
}

impl LlamaModel {
    /// Loads a GGUF file: the model (weights stay encoded, viewed from the mapped
    /// file) and the tokenizer and chat template from its metadata. Matmuls take
    /// llama.cpp's 8-bit inputs where llama.cpp does ([`Activations::Int8`]).
    pub fn load_gguf(path: &Path) -> Result<(Self, GgufTokenizer)> {
        Self::load_gguf_with(path, Activations::default())
    }

    /// [`load_gguf`](Self::load_gguf) with the matmuls' inputs treated as `activations`
    /// says.
    pub fn load_gguf_with(path: &Path, activations: Activations) -> Result<(Self, GgufTokenizer)> {
        let f = GgufFile::open(path)?;
        let config = config_from_gguf(&f)?;
        let tokenizer = from_gguf(&f)?;
        let c = &config;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (qd, kvd) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        let l = Loader { f: &f, activations };
        let permute = c.model_type != "qwen2";
        let rope_rows = |lin: Linear, heads: usize, name: &str| -> Result<Linear> {
            if !permute {
                return Ok(lin);
            }
            if lin.bias().is_some() {
                return Err(f.error(format!("{name}: a biased projection in a llama-architecture file")));
            }
            let q = lin.quantized_weight().ok_or_else(|| f.error(format!("{name}: not an encoded matrix")))?;
            q.permute_rows(&unpermute_order(heads, hd))
                .and_then(|q| Linear::quantized(q, None))
                .map_err(|e| f.error(format!("{name}: {e}")))
        };
        let mut layers = Vec::new();
        for i in 0..c.num_hidden_layers {
            let p = format!("blk.{i}");
            let bias = c.attention_bias;
            let q = l.linear(&format!("{p}.attn_q"), qd, h, bias)?;
            let k = l.linear(&format!("{p}.attn_k"), kvd, h, bias)?;
            layers.push(Layer {
                input_norm: l.vector(&format!("{p}.attn_norm.weight"), h)?,
                post_norm: l.vector(&format!("{p}.ffn_norm.weight"), h)?,
                q: rope_rows(q, c.num_attention_heads, &format!("{p}.attn_q"))?,
                k: rope_rows(k, c.num_key_value_heads, &format!("{p}.attn_k"))?,
                v: l.linear(&format!("{p}.attn_v"), kvd, h, bias)?,
                o: l.linear(&format!("{p}.attn_output"), h, qd, false)?,
                gate: l.linear(&format!("{p}.ffn_gate"), c.intermediate_size, h, false)?,
                up: l.linear(&format!("{p}.ffn_up"), c.intermediate_size, h, false)?,
                down: l.linear(&format!("{p}.ffn_down"), h, c.intermediate_size, false)?,
            });
        }
        let embed = Linear::quantized(l.matrix("token_embd.weight", c.vocab_size, h)?, None)?;
        let lm_head = if c.tie_word_embeddings {
            embed.clone()
        } else {
            Linear::quantized(l.matrix("output.weight", c.vocab_size, h)?, None)?
        };
        let norm = l.vector("output_norm.weight", h)?;
        tracing::info!(
            path = %path.display(),
            arch = %c.model_type,
            layers = c.num_hidden_layers,
            hidden = h,
            "loaded GGUF model"
        );
        Ok((LlamaModel::assemble(config, embed, layers, norm, lm_head), tokenizer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::tests::{gguf_str, write_gguf};

    fn config(kv: &[(&str, u64)]) -> Result<ModelConfig> {
        let mut meta = vec![("general.architecture", 8u32, gguf_str("llama"))];
        meta.extend(kv.iter().map(|(k, v)| (*k, 10u32, v.to_le_bytes().to_vec())));
        let bytes = write_gguf(&meta, &[]);
        let f = GgufFile::from_bytes(Path::new("m.gguf"), bytes.into())?;
        config_from_gguf(&f)
    }

    #[test]
    fn implausible_shapes_are_refused_by_name() {
        let base = [
            ("llama.embedding_length", 64),
            ("llama.feed_forward_length", 128),
            ("llama.block_count", 2),
            ("llama.attention.head_count", 4),
            ("llama.vocab_size", 100),
        ];
        let c = config(&base).unwrap();
        assert_eq!((c.head_dim, c.num_key_value_heads, c.vocab_size), (16, 4, 100));
        let with = |k: &str, v: u64| {
            let mut kv = base.to_vec();
            kv.retain(|(name, _)| *name != k);
            kv.push((k, v));
            config(&kv).unwrap_err().to_string()
        };
        assert!(with("llama.embedding_length", 0).contains("embedding_length 0 is out of range"));
        assert!(with("llama.block_count", 0).contains("block_count 0 is out of range"));
        assert!(with("llama.feed_forward_length", 1 << 30).contains("feed_forward_length"));
        assert!(with("llama.attention.key_length", 7).contains("odd"));
        assert!(with("llama.attention.head_count_kv", 3).contains("3 key/value heads for 4 query heads"));
        let e = with("llama.attention.key_length", 1 << 40);
        assert!(e.contains("m.gguf") && e.contains("key_length"), "{e}");
    }

    #[test]
    fn sentencepiece_files_without_special_ids_get_llama_cpps() {
        let shape = [
            ("llama.embedding_length", 64u64),
            ("llama.feed_forward_length", 128),
            ("llama.block_count", 2),
            ("llama.attention.head_count", 4),
            ("llama.vocab_size", 100),
        ];
        let with_model = |model: &str, eos: Option<u64>| {
            let mut meta = vec![("general.architecture", 8u32, gguf_str("llama"))];
            meta.push(("tokenizer.ggml.model", 8, gguf_str(model)));
            meta.extend(shape.iter().map(|(k, v)| (*k, 10u32, v.to_le_bytes().to_vec())));
            if let Some(e) = eos {
                meta.push(("tokenizer.ggml.eos_token_id", 4, (e as u32).to_le_bytes().to_vec()));
            }
            let f = GgufFile::from_bytes(Path::new("m.gguf"), write_gguf(&meta, &[]).into()).unwrap();
            let c = config_from_gguf(&f).unwrap();
            (c.bos_token_id, c.eos_token_ids)
        };
        assert_eq!(with_model("llama", None), (Some(1), vec![2]));
        assert_eq!(with_model("llama", Some(7)), (Some(1), vec![7]));
        // Byte-level BPE has no such defaults.
        assert_eq!(with_model("gpt2", None), (None, vec![]));
    }

    #[test]
    fn the_unpermuted_order_inverts_llama_cpps_permute() {
        // llama.cpp: reshape(heads, 2, hd/2, …).swapaxes(1, 2): GGUF row h·hd + 2i + s
        // holds Hugging Face row h·hd + s·hd/2 + i.
        let (heads, hd) = (3, 8);
        let gguf_of_hf = |r: usize| {
            let (h, w) = (r / hd, r % hd);
            let (s, i) = (w / (hd / 2), w % (hd / 2));
            h * hd + 2 * i + s
        };
        let order = unpermute_order(heads, hd);
        for (hf_row, &g) in order.iter().enumerate() {
            assert_eq!(g, gguf_of_hf(hf_row));
        }
        let mut seen = order.clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..heads * hd).collect::<Vec<_>>(), "a permutation");
    }
}
