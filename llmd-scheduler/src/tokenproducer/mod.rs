//! `token-producer` (and its deprecated alias `tokenizer`): a request's prompt token ids
//! for the plugins that read them (the precise prefix index, context-length checks), as
//! llm-d-router's data producer of that name makes them. Three backends:
//!
//! - **estimate** (the router's default): no tokenizer at all; the prompt's bytes packed
//!   four to a pseudo-token ([`estimate`]). Cheap, and enough for approximate prefix
//!   matching; useless for matching what engines report.
//! - **vllm**: `POST {url}/v1/completions/render` or `/v1/chat/completions/render` on a
//!   vLLM (or llmd engine) that renders prompts: the engine's own ids, chat template
//!   included. The call is the picker's (it needs a runtime): [`TokenProducer::start`]
//!   says what to send, [`parse_render`] reads the answer.
//! - **local** (llmd's addition, parameter `local.path`): a checkpoint directory's
//!   `tokenizer.json` and chat template, loaded into the picker, cached by prompt prefix
//!   (feature `render`).
//!
//! A producer that fails (a render timeout, say) does not fail the request: routing goes
//! on without token ids, as in the router.

pub mod estimate;
mod estimate_body;
mod estimate_config;
mod gojson;
mod imageconfig;
mod mm_estimate;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::plugins::Params;

/// The type name.
pub const TYPE: &str = "token-producer";
/// The deprecated type name the router still accepts.
pub const LEGACY_TYPE: &str = "tokenizer";

/// Turns an OpenAI request body into the prompt token ids the engine will see (the
/// precise prefix scorer hashes them). `path` tells completions from chat.
pub trait PromptTokenizer: Send + Sync {
    /// The token ids, or `None` when the body cannot be tokenized.
    fn tokenize(&self, path: &str, body: &Value) -> Option<Vec<u32>>;
}

#[cfg(feature = "render")]
impl PromptTokenizer for llmd_openai::PromptRenderer {
    fn tokenize(&self, path: &str, body: &Value) -> Option<Vec<u32>> {
        self.tokenize_request(path, body)
    }
}

/// vLLM's render API, as the `vllm` parameter configures it.
#[derive(Debug, Clone, PartialEq)]
pub struct VllmRender {
    /// Base URL, no trailing slash (default `http://localhost:8000`).
    pub url: String,
    /// The model name stamped into each render request (`modelName`).
    pub model: String,
    /// Timeout of a text render (default 5 s).
    pub timeout: Duration,
    /// Timeout of a render with multimodal parts (default 30 s).
    pub mm_timeout: Duration,
}

/// Where token ids come from.
#[derive(Clone)]
pub enum Backend {
    /// Packed prompt bytes.
    Estimate(estimate::EstimateConfig),
    /// vLLM's render API.
    Vllm(VllmRender),
    /// A tokenizer loaded into the picker.
    Local(Arc<dyn PromptTokenizer>),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Estimate(_) => f.write_str("Estimate"),
            Backend::Vllm(v) => f.debug_tuple("Vllm").field(v).finish(),
            Backend::Local(_) => f.write_str("Local"),
        }
    }
}

/// A configured `token-producer`.
#[derive(Debug, Clone)]
pub struct TokenProducer {
    backend: Backend,
}

/// A render call for the picker to make.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderCall {
    /// The full URL.
    pub url: String,
    /// The JSON body: the request's own, with `model` replaced.
    pub body: Value,
    /// How long to wait.
    pub timeout: Duration,
    /// The completions route (an array of results) rather than chat's single one.
    pub completions: bool,
}

/// What producing a request's tokens takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Done without I/O: the ids, or `None` when there are none to give.
    Done(Option<Vec<u32>>),
    /// A render call is needed first.
    Render(RenderCall),
}

const VLLM_URL: &str = "http://localhost:8000";

impl TokenProducer {
    /// A producer with the given backend.
    pub fn new(backend: Backend) -> Self {
        TokenProducer { backend }
    }

    /// From the plugin's parameters: `modelName`, `vllm` {`url`, `timeout`, `mmTimeout`},
    /// `estimate` {`image`, `video`}, `udsTokenizerConfig` (the router's deprecated
    /// sidecar: refused), and llmd's `local` {`path`}. At most one backend; `vllm` (or
    /// `modelName` alone) needs `modelName`; none set is the estimate.
    pub fn from_params(p: &Value) -> Result<Self, String> {
        let q = Params(p);
        q.check(&["modelName", "vllm", "estimate", "udsTokenizerConfig", "local"])?;
        if q.value("udsTokenizerConfig").is_some() {
            return Err("parameter udsTokenizerConfig: the gRPC tokenizer sidecar is deprecated in llm-d-router and \
                        not built in llmd; set vllm (a render endpoint) or local (a tokenizer directory)"
                .into());
        }
        let model = q.string("modelName")?.unwrap_or_default();
        let estimate = q.value("estimate");
        let vllm = q.value("vllm").is_some() || !model.is_empty();
        let local = q.value("local");
        if [estimate.is_some(), vllm, local.is_some()].iter().filter(|b| **b).count() > 1 {
            return Err("only one of 'estimate', 'vllm', or 'local' may be set".into());
        }
        if vllm {
            if model.is_empty() {
                return Err("parameter modelName: must be specified with vllm".into());
            }
            let empty = Value::Null;
            let v = Params(q.value("vllm").unwrap_or(&empty));
            v.check_at("vllm", &["url", "timeout", "mmTimeout"])?;
            let url = v.string("url")?.filter(|u| !u.is_empty()).unwrap_or_else(|| VLLM_URL.into());
            let url = url.trim_end_matches('/').to_string();
            if !url.starts_with("http://") {
                return Err(format!(
                    "parameter vllm.url: {url:?} is not an http:// URL (https is not built in llmd yet)"
                ));
            }
            let duration = |key: &str, default: u64| -> Result<Duration, String> {
                match v.string(key)? {
                    None => Ok(Duration::from_secs(default)),
                    Some(s) if s.is_empty() => Ok(Duration::from_secs(default)),
                    Some(s) => crate::plugins::parse_duration(&s).map_err(|e| format!("parameter vllm.{key}: {e}")),
                }
            };
            let render =
                VllmRender { url, model, timeout: duration("timeout", 5)?, mm_timeout: duration("mmTimeout", 30)? };
            return Ok(TokenProducer { backend: Backend::Vllm(render) });
        }
        if let Some(l) = local {
            return Self::local(l);
        }
        let cfg = estimate::EstimateConfig::from_params(estimate.unwrap_or(&Value::Null))?;
        Ok(TokenProducer { backend: Backend::Estimate(cfg) })
    }

    #[cfg(feature = "render")]
    fn local(l: &Value) -> Result<Self, String> {
        let v = Params(l);
        v.check_at("local", &["path"])?;
        let path = v.string("path")?.ok_or("parameter local.path: a tokenizer directory is required")?;
        let mut r = llmd_openai::PromptRenderer::from_dir(std::path::Path::new(&path))
            .map_err(|e| format!("parameter local.path: {path}: {e}"))?;
        r.tokenizer = Arc::new(crate::tokencache::PrefixCachedTokenizer::new(r.tokenizer));
        Ok(TokenProducer { backend: Backend::Local(Arc::new(r)) })
    }

    #[cfg(not(feature = "render"))]
    fn local(_: &Value) -> Result<Self, String> {
        Err("parameter local: a local tokenizer needs llmd-scheduler's `render` feature".into())
    }

    /// The backend.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// What producing the tokens of `body` (arriving at `path` with lower-case
    /// `headers`) takes. Token ids the body carries itself pass through.
    pub fn start(&self, path: &str, headers: &BTreeMap<String, String>, body: &Value) -> Step {
        if let Some(ids) = llmd_openai::prompt_token_ids(body) {
            return Step::Done(Some(ids));
        }
        match &self.backend {
            Backend::Local(t) => Step::Done(t.tokenize(path, body)),
            Backend::Estimate(cfg) => match estimate::estimate(cfg, path, body, headers) {
                // A request of several prompts routes by its first, as the engines
                // run them as separate sequences.
                Ok(prompts) => Step::Done(prompts.into_iter().next().map(|p| p.token_ids).filter(|t| !t.is_empty())),
                Err(e) => {
                    tracing::debug!(error = %e, "token estimate skipped");
                    Step::Done(None)
                }
            },
            Backend::Vllm(v) => match render_call(v, path, body) {
                Some(call) => Step::Render(call),
                None => Step::Done(None),
            },
        }
    }
}

// The render call for a body at `path`: completions and chat are rendered, other APIs
// are not (the router skips them too).
fn render_call(v: &VllmRender, path: &str, body: &Value) -> Option<RenderCall> {
    let api = path.split('?').next().unwrap_or(path).trim_end_matches('/');
    let completions = if api.ends_with("/chat/completions") {
        false
    } else if api.ends_with("/completions") {
        true
    } else {
        return None;
    };
    let mut body = body.clone();
    // `vllm launch render` knows the base model only.
    body.as_object_mut()?.insert("model".into(), Value::String(v.model.clone()));
    let route = if completions { "/v1/completions/render" } else { "/v1/chat/completions/render" };
    // Array-shaped message content may hold images: the longer timeout.
    let multimodal = !completions
        && body.get("messages").and_then(Value::as_array).is_some_and(|ms| {
            ms.iter().any(|m| m.get("content").and_then(Value::as_array).is_some_and(|a| !a.is_empty()))
        });
    Some(RenderCall {
        url: format!("{}{route}", v.url),
        body,
        timeout: if multimodal { v.mm_timeout } else { v.timeout },
        completions,
    })
}

/// Reads a render answer: the first prompt's `token_ids` (completions answer an array,
/// chat one object). An answer without ids is an error.
pub fn parse_render(completions: bool, answer: &[u8]) -> Result<Vec<u32>, String> {
    let v: Value = serde_json::from_slice(answer).map_err(|e| format!("render answer is not JSON: {e}"))?;
    let first = if completions {
        v.as_array()
            .ok_or("render answer is not an array")?
            .first()
            .ok_or("vLLM render returned empty response")?
            .clone()
    } else {
        v
    };
    let ids = first.get("token_ids").and_then(Value::as_array).ok_or("render answer has no token_ids")?;
    ids.iter()
        .map(|t| t.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| format!("token id {t} is not a u32")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vllm() -> VllmRender {
        match TokenProducer::from_params(&json!({"modelName": "m", "vllm": {"url": "http://r:8000/"}})).unwrap().backend
        {
            Backend::Vllm(v) => v,
            b => panic!("{b:?}"),
        }
    }

    #[test]
    fn parameters_as_the_router_reads_them() {
        let v = vllm();
        assert_eq!(v.url, "http://r:8000");
        assert_eq!((v.timeout, v.mm_timeout), (Duration::from_secs(5), Duration::from_secs(30)));
        // modelName alone picks the vllm backend at its default URL.
        let p = TokenProducer::from_params(&json!({"modelName": "m"})).unwrap();
        assert!(matches!(&p.backend, Backend::Vllm(v) if v.url == VLLM_URL));
        assert!(matches!(TokenProducer::from_params(&json!({})).unwrap().backend, Backend::Estimate(_)));
        let t = TokenProducer::from_params(&json!({"modelName": "m", "vllm": {"timeout": "250ms", "mmTimeout": "1m"}}))
            .unwrap();
        assert!(
            matches!(t.backend, Backend::Vllm(v) if v.timeout == Duration::from_millis(250) && v.mm_timeout == Duration::from_secs(60))
        );
        for (p, want) in [
            (json!({"vllm": {}}), "modelName: must be specified"),
            (json!({"modelName": "m", "estimate": {}}), "only one of"),
            (json!({"modelName": "m", "vllm": {"timeout": "soon"}}), "vllm.timeout"),
            (json!({"modelName": "m", "vllm": {"uri": "x"}}), "vllm.uri"),
            (json!({"udsTokenizerConfig": {"socketFile": "/tmp/t.sock"}}), "deprecated"),
            (json!({"model": "m"}), "\"model\""),
        ] {
            let e = TokenProducer::from_params(&p).unwrap_err();
            assert!(e.contains(want), "{p}: {e}");
        }
    }

    #[test]
    fn render_calls_carry_the_body_with_the_configured_model() {
        let p = TokenProducer::new(Backend::Vllm(vllm()));
        let h = BTreeMap::new();
        let chat = json!({"model": "lora-a", "messages": [{"role": "user", "content": "hi"}], "cache_salt": "s"});
        let Step::Render(c) = p.start("/v1/chat/completions", &h, &chat) else { panic!() };
        assert_eq!(c.url, "http://r:8000/v1/chat/completions/render");
        assert_eq!(c.body["model"], "m");
        assert_eq!(c.body["cache_salt"], "s");
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert!(!c.completions);
        let mm = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]});
        let Step::Render(c) = p.start("/v1/chat/completions", &h, &mm) else { panic!() };
        assert_eq!(c.timeout, Duration::from_secs(30), "array content may be multimodal");
        let Step::Render(c) = p.start("/v1/completions", &h, &json!({"prompt": "x"})) else { panic!() };
        assert!(c.completions);
        assert_eq!(c.url, "http://r:8000/v1/completions/render");
        // Ids in the body need no call; other APIs are not rendered.
        assert_eq!(p.start("/v1/completions", &h, &json!({"prompt": [1, 2]})), Step::Done(Some(vec![1, 2])));
        assert_eq!(p.start("/v1/embeddings", &h, &json!({"input": "x"})), Step::Done(None));
    }

    #[test]
    fn render_answers_as_vllm_gives_them() {
        assert_eq!(
            parse_render(true, br#"[{"request_id":"a","token_ids":[1,2,3]},{"token_ids":[4]}]"#),
            Ok(vec![1, 2, 3])
        );
        assert_eq!(parse_render(false, br#"{"token_ids":[7,8],"features":null}"#), Ok(vec![7, 8]));
        assert!(parse_render(true, b"[]").unwrap_err().contains("empty"));
        assert!(parse_render(false, br#"{"token_ids":[-1]}"#).is_err());
        assert!(parse_render(false, b"<html>").is_err());
    }
}
