//! A Hugging Face `config.json` for the Llama family (Llama, Mistral, Qwen2).
//!
//! Reads both the transformers 5 layout (`rope_parameters` holding `rope_theta`) and the
//! older one (`rope_theta` at the top, `rope_scaling` beside it), so published
//! checkpoints and freshly saved ones load alike.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{EngineError, Result};

const FILE: &str = "config.json";

/// How RoPE frequencies are scaled for long context.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Positions divided by `factor`.
    Linear {
        /// Scale factor.
        factor: f64,
    },
    /// NTK-aware scaling that grows the base once a sequence passes
    /// `max_position_embeddings`.
    Dynamic {
        /// Scale factor.
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        /// Scale factor for low frequencies.
        factor: f64,
        /// Wavelength threshold factor for low frequencies.
        low_freq_factor: f64,
        /// Wavelength threshold factor for high frequencies.
        high_freq_factor: f64,
        /// Context length the model was pretrained with.
        original_max_position_embeddings: f64,
    },
    /// YaRN: interpolation blended with extrapolation, plus an attention scale.
    Yarn {
        /// Scale factor.
        factor: f64,
        /// Context length the model was pretrained with.
        original_max_position_embeddings: f64,
        /// Explicit cos/sin scale, if given.
        attention_factor: Option<f64>,
        /// Extrapolation boundary (default 32).
        beta_fast: f64,
        /// Interpolation boundary (default 1).
        beta_slow: f64,
        /// DeepSeek-style attention scale terms.
        mscale: Option<f64>,
        /// DeepSeek-style attention scale terms.
        mscale_all_dim: Option<f64>,
        /// Round the correction range outwards (default true).
        truncate: bool,
    },
}

/// The architecture hyper-parameters the runner needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// `llama`, `mistral` or `qwen2`.
    pub model_type: String,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE scaling.
    pub rope_scaling: RopeScaling,
    /// Longest context the model supports.
    pub max_position_embeddings: usize,
    /// Output projection shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// q/k/v projections have biases (always for Qwen2).
    pub attention_bias: bool,
    /// MLP projections have biases.
    pub mlp_bias: bool,
    /// Attention window, when the model uses sliding-window attention.
    pub sliding_window: Option<usize>,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens.
    pub eos_token_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Raw {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    attention_bias: Option<bool>,
    #[serde(default)]
    mlp_bias: bool,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    hidden_act: Option<String>,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
}

fn default_eps() -> f64 {
    1e-6
}

fn default_max_pos() -> usize {
    2048
}

fn token_ids(v: Option<&Value>, field: &str) -> Result<Vec<u32>> {
    let bad = || EngineError::config(FILE, field, "expected a token id or a list of token ids");
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Number(n)) => Ok(vec![n.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(bad)?]),
        Some(Value::Array(a)) => {
            a.iter().map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(bad)).collect()
        }
        Some(_) => Err(bad()),
    }
}

impl ModelConfig {
    /// Reads `config.json` from a checkpoint directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join(FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| EngineError::io(&path, e))?;
        Self::from_json(&text)
    }

    /// Parses the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: Raw =
            serde_json::from_str(text).map_err(|e| EngineError::config(FILE, "(document)", e.to_string()))?;
        let model_type = raw.model_type.unwrap_or_else(|| "llama".into());
        if !matches!(model_type.as_str(), "llama" | "mistral" | "qwen2") {
            return Err(EngineError::config(
                FILE,
                "model_type",
                format!("{model_type:?} is not supported (supported: llama, mistral, qwen2)"),
            ));
        }
        if let Some(act) = raw.hidden_act.as_deref()
            && act != "silu"
        {
            return Err(EngineError::config(FILE, "hidden_act", format!("{act:?} is not supported (only silu)")));
        }
        let heads = raw.num_attention_heads;
        if heads == 0 || raw.hidden_size == 0 || raw.num_hidden_layers == 0 || raw.vocab_size == 0 {
            return Err(EngineError::config(FILE, "(dimensions)", "sizes must be positive"));
        }
        let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(EngineError::config(
                FILE,
                "num_key_value_heads",
                format!("{kv_heads} does not divide num_attention_heads {heads}"),
            ));
        }
        let head_dim = raw.head_dim.unwrap_or(raw.hidden_size / heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(EngineError::config(FILE, "head_dim", format!("{head_dim} must be even and positive")));
        }
        // transformers 5 keeps rope_theta inside rope_parameters; older configs at the top.
        let params = raw.rope_parameters.as_ref().or(raw.rope_scaling.as_ref()).filter(|v| !v.is_null());
        let rope_theta =
            params.and_then(|p| p.get("rope_theta")).and_then(Value::as_f64).or(raw.rope_theta).unwrap_or(10_000.0);
        let rope_scaling = match params {
            None => RopeScaling::Default,
            Some(p) => parse_rope(p, raw.max_position_embeddings)?,
        };
        let sliding_window = match (model_type.as_str(), raw.use_sliding_window) {
            // Qwen2 only applies its window when use_sliding_window is true.
            ("qwen2", Some(true)) | ("mistral", _) => raw.sliding_window,
            _ => None,
        };
        Ok(ModelConfig {
            attention_bias: raw.attention_bias.unwrap_or(model_type == "qwen2"),
            model_type,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings,
            tie_word_embeddings: raw.tie_word_embeddings,
            mlp_bias: raw.mlp_bias,
            sliding_window,
            bos_token_id: token_ids(raw.bos_token_id.as_ref(), "bos_token_id")?.first().copied(),
            eos_token_ids: token_ids(raw.eos_token_id.as_ref(), "eos_token_id")?,
        })
    }
}

fn parse_rope(p: &Value, max_pos: usize) -> Result<RopeScaling> {
    let field = "rope_parameters";
    let kind = p.get("rope_type").or_else(|| p.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |k: &str| p.get(k).and_then(Value::as_f64);
    let need = |k: &str| num(k).ok_or_else(|| EngineError::config(FILE, field, format!("{kind} RoPE needs {k:?}")));
    Ok(match kind {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear { factor: need("factor")? },
        "dynamic" => RopeScaling::Dynamic { factor: need("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position_embeddings: need("original_max_position_embeddings")?,
        },
        "yarn" => {
            let original = need("original_max_position_embeddings")?;
            RopeScaling::Yarn {
                factor: num("factor").unwrap_or(max_pos as f64 / original),
                original_max_position_embeddings: original,
                attention_factor: num("attention_factor"),
                beta_fast: num("beta_fast").filter(|&b| b != 0.0).unwrap_or(32.0),
                beta_slow: num("beta_slow").filter(|&b| b != 0.0).unwrap_or(1.0),
                mscale: num("mscale"),
                mscale_all_dim: num("mscale_all_dim"),
                truncate: p.get("truncate").and_then(Value::as_bool).unwrap_or(true),
            }
        }
        other => {
            return Err(EngineError::config(
                FILE,
                field,
                format!("rope_type {other:?} is not supported (default, linear, dynamic, llama3, yarn)"),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_and_new_rope_layouts_agree() {
        let base = r#""vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2"#;
        let old = ModelConfig::from_json(&format!(
            r#"{{{base}, "rope_theta": 500000.0, "rope_scaling": {{"type": "linear", "factor": 2.0}}}}"#
        ))
        .unwrap();
        let new = ModelConfig::from_json(&format!(
            r#"{{{base}, "rope_parameters": {{"rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0}}}}"#
        ))
        .unwrap();
        assert_eq!(old, new);
        assert_eq!(old.rope_theta, 500000.0);
        assert_eq!(old.head_dim, 4);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            (
                r#"{"model_type": "gpt2", "vocab_size": 1, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2}"#,
                "model_type",
            ),
            (
                r#"{"vocab_size": 1, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 3}"#,
                "num_key_value_heads",
            ),
            (
                r#"{"vocab_size": 1, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "rope_parameters": {"rope_type": "longrope"}}"#,
                "rope_parameters",
            ),
            (r#"{"vocab_size": 1, "hidden_size": 8}"#, "(document)"),
        ];
        for (json, field) in cases {
            let e = ModelConfig::from_json(json).unwrap_err().to_string();
            assert!(e.starts_with(&format!("config.json: {field}:")), "{e}");
        }
    }
}

/// The defaults a checkpoint's `generation_config.json` sets, as vLLM applies them:
/// extra end-of-sequence tokens, and sampling defaults for requests that leave them out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    /// End-of-sequence tokens (instruction-tuned models often add end-of-turn ids here).
    pub eos_token_ids: Vec<u32>,
    /// Default temperature.
    pub temperature: Option<f32>,
    /// Default nucleus threshold.
    pub top_p: Option<f32>,
    /// Default top-k.
    pub top_k: Option<i64>,
}

impl GenerationConfig {
    /// Reads `generation_config.json` from a checkpoint directory; absent means defaults.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("generation_config.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(EngineError::io(&path, e)),
        };
        let file = "generation_config.json";
        let v: Value =
            serde_json::from_str(&text).map_err(|e| EngineError::config(file, "(document)", e.to_string()))?;
        // A sampling default only applies when sampling is on, as in transformers.
        let sampling = v.get("do_sample").and_then(Value::as_bool).unwrap_or(true);
        let f = |k: &str| v.get(k).and_then(Value::as_f64).filter(|_| sampling);
        Ok(GenerationConfig {
            eos_token_ids: token_ids(v.get("eos_token_id"), "eos_token_id")
                .map_err(|_| EngineError::config(file, "eos_token_id", "expected a token id or a list of ids"))?,
            temperature: f("temperature").map(|x| x as f32),
            top_p: f("top_p").map(|x| x as f32),
            top_k: v.get("top_k").and_then(Value::as_i64).filter(|_| sampling),
        })
    }
}
