//! The built-in model: a small Llama with deterministic weights from a seed and a byte
//! tokenizer, so the server runs with no files and no downloads. Its output is not
//! meaningful text; it exercises every code path a real checkpoint does.

use llmd_kvcache::rng::SplitMix64;
use std::collections::HashMap;

use crate::error::Result;
use crate::model::weights::{Tensor, Weights};
use crate::model::{LlamaModel, ModelConfig, RopeScaling};
use crate::tokenizer::ByteTokenizer;

/// Name the built-in model is served under.
pub const BUILTIN_MODEL_NAME: &str = "llmd-tiny";

/// The built-in model's architecture.
pub fn config() -> ModelConfig {
    ModelConfig {
        model_type: "llama".into(),
        vocab_size: ByteTokenizer::VOCAB,
        hidden_size: 128,
        intermediate_size: 352,
        num_hidden_layers: 4,
        num_attention_heads: 8,
        num_key_value_heads: 2,
        head_dim: 16,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: RopeScaling::Default,
        max_position_embeddings: 4096,
        // Untied: with tied random embeddings the logit of the input token dominates and
        // the model just repeats it.
        tie_word_embeddings: false,
        attention_bias: false,
        mlp_bias: false,
        sliding_window: None,
        bos_token_id: Some(ByteTokenizer::BOS),
        eos_token_ids: vec![ByteTokenizer::EOS],
    }
}

/// Uniform in [-1, 1) from the top 24 bits.
fn next_f32(rng: &mut SplitMix64) -> f32 {
    (rng.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// The built-in model with weights drawn from `seed`.
pub fn model(seed: u64) -> Result<LlamaModel> {
    let c = config();
    let mut rng = SplitMix64::new(seed);
    let mut tensors = HashMap::new();
    let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| -> Result<()> {
        let n = shape.iter().product();
        let data = (0..n).map(|_| offset + scale * next_f32(&mut rng)).collect();
        tensors.insert(name, Tensor::new(shape, data)?);
        Ok(())
    };
    let (h, hd, i) = (c.hidden_size, c.head_dim, c.intermediate_size);
    let (q, kv) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
    // Scaled like a trained model's so activations stay in range through the layers.
    let s_in = 1.0 / (h as f32).sqrt();
    add("model.embed_tokens.weight".into(), vec![c.vocab_size, h], 1.0, 0.0)?;
    // Logits with a spread of a few units: greedy varies, sampling is not one-hot.
    add("lm_head.weight".into(), vec![c.vocab_size, h], 0.3, 0.0)?;
    add("model.norm.weight".into(), vec![h], 0.1, 1.0)?;
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        add(format!("{p}.input_layernorm.weight"), vec![h], 0.1, 1.0)?;
        add(format!("{p}.post_attention_layernorm.weight"), vec![h], 0.1, 1.0)?;
        add(format!("{p}.self_attn.q_proj.weight"), vec![q, h], s_in, 0.0)?;
        add(format!("{p}.self_attn.k_proj.weight"), vec![kv, h], s_in, 0.0)?;
        add(format!("{p}.self_attn.v_proj.weight"), vec![kv, h], s_in, 0.0)?;
        add(format!("{p}.self_attn.o_proj.weight"), vec![h, q], 1.0 / (q as f32).sqrt(), 0.0)?;
        add(format!("{p}.mlp.gate_proj.weight"), vec![i, h], s_in, 0.0)?;
        add(format!("{p}.mlp.up_proj.weight"), vec![i, h], s_in, 0.0)?;
        add(format!("{p}.mlp.down_proj.weight"), vec![h, i], 1.0 / (i as f32).sqrt(), 0.0)?;
    }
    // Keep output readable: bytes other than printable ASCII and newline (and the
    // BOS/PAD specials) are all but ruled out; EOS stays possible.
    let bias = (0..c.vocab_size as u32)
        .map(|t| match t {
            10 | 32..=126 => 0.0,
            ByteTokenizer::EOS => -2.0,
            _ => -30.0,
        })
        .collect();
    tensors.insert("lm_head.bias".into(), Tensor::new(vec![c.vocab_size], bias)?);
    LlamaModel::from_weights(c, Weights::from_tensors(tensors))
}
