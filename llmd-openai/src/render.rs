//! Prompt rendering (feature `render`): tokenizers, chat templates, and the
//! [`PromptRenderer`] that turns a request into the token ids an engine will see.
//!
//! A checkpoint's `tokenizer.json` is served by Hugging Face's `tokenizers` crate; its
//! chat template (`chat_template.jinja`, or `chat_template` in `tokenizer_config.json`)
//! is rendered with `minijinja` plus Python-compatible string methods, as transformers'
//! `apply_chat_template` does.

use std::path::Path;
use std::sync::Arc;

use minijinja::{Environment, context};
use serde::Serialize;
use serde_json::Value;

use crate::error::{OpenAiError, Result};
use crate::request::{ChatMessage, chat_messages, prompt_token_ids};

/// Text ↔ token ids.
pub trait Tokenize: Send + Sync {
    /// Encodes text; `add_special_tokens` adds what the tokenizer's post-processor adds
    /// (e.g. BOS).
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>>;
    /// Decodes ids to text, dropping special tokens when asked.
    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String>;
    /// Vocabulary size including added tokens.
    fn vocab_size(&self) -> usize;
    /// Id of a token string, if it exists.
    fn token_to_id(&self, token: &str) -> Option<u32>;
}

/// A Hugging Face `tokenizer.json`.
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer").field("vocab_size", &self.vocab_size()).finish()
    }
}

impl HfTokenizer {
    /// Loads `tokenizer.json` from a file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| OpenAiError::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(HfTokenizer { inner })
    }

    /// Loads a checkpoint or tokenizer directory's `tokenizer.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_file(&dir.join("tokenizer.json"))
    }

    /// Parses a `tokenizer.json` held in memory.
    pub fn from_bytes(json: &[u8]) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(json).map_err(|e| OpenAiError::Tokenizer(e.to_string()))?;
        Ok(HfTokenizer { inner })
    }
}

impl Tokenize for HfTokenizer {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| OpenAiError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| OpenAiError::Tokenizer(e.to_string()))
    }

    fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// The template of llmd's built-in model, and of checkpoints that ship none.
pub const DEFAULT_CHAT_TEMPLATE: &str = "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}\
{% if add_generation_prompt %}<|assistant|>\n{% endif %}";

/// A chat template with the special tokens it may refer to. Cloning is cheap (shared
/// strings): each replica and router holds its own.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: Arc<str>,
    bos_token: Arc<str>,
    eos_token: Arc<str>,
}

fn special(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        // Older files store {"content": "<s>", ...}.
        Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).unwrap_or_default().to_string(),
        _ => String::new(),
    }
}

/// A message as templates see it: content always a string.
#[derive(Serialize)]
struct TemplateMessage<'a> {
    role: &'a str,
    content: String,
}

impl ChatTemplate {
    /// A template from its source and special tokens.
    pub fn new(source: impl Into<String>, bos_token: impl Into<String>, eos_token: impl Into<String>) -> Self {
        let (source, bos_token, eos_token): (String, String, String) =
            (source.into(), bos_token.into(), eos_token.into());
        ChatTemplate { source: source.into(), bos_token: bos_token.into(), eos_token: eos_token.into() }
    }

    /// [`DEFAULT_CHAT_TEMPLATE`] with no special tokens: what a checkpoint without a
    /// template gets.
    pub fn fallback() -> Self {
        ChatTemplate::new(DEFAULT_CHAT_TEMPLATE, "", "")
    }

    /// The checkpoint's template: `chat_template.jinja`, else `chat_template` in
    /// `tokenizer_config.json` (a string, or a list of named templates, taking
    /// `default`), else `None`.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>> {
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = match std::fs::read_to_string(&cfg_path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| OpenAiError::Config { file: "tokenizer_config.json".into(), reason: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
            Err(e) => return Err(OpenAiError::Io { path: cfg_path, source: e }),
        };
        let jinja = dir.join("chat_template.jinja");
        let source = if jinja.exists() {
            Some(std::fs::read_to_string(&jinja).map_err(|e| OpenAiError::Io { path: jinja.clone(), source: e })?)
        } else {
            match cfg.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .or_else(|| list.first())
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                    .map(String::from),
                _ => None,
            }
        };
        Ok(source.map(|s| ChatTemplate::new(s, special(cfg.get("bos_token")), special(cfg.get("eos_token")))))
    }

    /// The checkpoint's template, or [`ChatTemplate::fallback`] when it has none.
    pub fn from_dir_or_fallback(dir: &Path) -> Result<Self> {
        Ok(Self::from_dir(dir)?.unwrap_or_else(Self::fallback))
    }

    /// The template's source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders messages to the prompt text. Each message's content is its text (see
    /// [`ChatMessage::text`]: non-text parts are skipped; a server that must refuse
    /// them checks [`ChatMessage::text_only`] first).
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        let tmpl = env
            .template_from_str(&self.source)
            .map_err(|e| OpenAiError::Template(format!("chat template does not parse: {e}")))?;
        let messages: Vec<TemplateMessage<'_>> =
            messages.iter().map(|m| TemplateMessage { role: &m.role, content: m.text() }).collect();
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &*self.bos_token,
            eos_token => &*self.eos_token,
        })
        .map_err(|e| OpenAiError::Template(format!("chat template failed: {e}")))
    }
}

/// A model's tokenizer and chat template: everything needed to turn an OpenAI request
/// into the prompt token ids an engine computes on.
#[derive(Clone)]
pub struct PromptRenderer {
    /// The tokenizer.
    pub tokenizer: Arc<dyn Tokenize>,
    /// The chat template.
    pub template: ChatTemplate,
}

impl std::fmt::Debug for PromptRenderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptRenderer")
            .field("vocab_size", &self.tokenizer.vocab_size())
            .field("template", &self.template)
            .finish()
    }
}

impl PromptRenderer {
    /// A renderer from its parts.
    pub fn new(tokenizer: Arc<dyn Tokenize>, template: ChatTemplate) -> Self {
        PromptRenderer { tokenizer, template }
    }

    /// Loads a checkpoint or tokenizer directory: `tokenizer.json`, and the chat
    /// template from `chat_template.jinja` or `tokenizer_config.json`, else
    /// [`ChatTemplate::fallback`].
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Ok(PromptRenderer::new(Arc::new(HfTokenizer::from_dir(dir)?), ChatTemplate::from_dir_or_fallback(dir)?))
    }

    /// The chat prompt as text.
    pub fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.template.render(messages, add_generation_prompt)
    }

    /// The chat prompt's token ids: rendered, then encoded without added special tokens
    /// (the template writes them), as vLLM does.
    pub fn tokenize_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<Vec<u32>> {
        self.tokenizer.encode(&self.render_chat(messages, add_generation_prompt)?, false)
    }

    /// A completion prompt's token ids: encoded with special tokens, as vLLM does.
    pub fn tokenize_prompt(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text, true)
    }

    /// The prompt token ids an engine will compute for a raw request body to `path`
    /// (chat when it ends with `/chat/completions`, else completions); `None` when the
    /// body holds no single prompt or rendering fails. Chat content is read leniently
    /// (text parts only), as routers need.
    pub fn tokenize_request(&self, path: &str, body: &Value) -> Option<Vec<u32>> {
        if path.ends_with("/chat/completions") {
            let messages = chat_messages(body)?;
            let add_generation_prompt = body.get("add_generation_prompt").and_then(Value::as_bool).unwrap_or(true);
            return self.tokenize_chat(&messages, add_generation_prompt).ok();
        }
        match body.get("prompt")? {
            Value::String(text) => self.tokenize_prompt(text).ok(),
            Value::Array(one) if one.len() == 1 && one[0].is_string() => self.tokenize_prompt(one[0].as_str()?).ok(),
            _ => prompt_token_ids(body),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// One id per byte, BOS = 256: enough to see what was encoded and how.
    struct Bytes;

    impl Tokenize for Bytes {
        fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
            Ok(add_special_tokens.then_some(256).into_iter().chain(text.bytes().map(u32::from)).collect())
        }
        fn decode(&self, ids: &[u32], _: bool) -> Result<String> {
            Ok(ids.iter().filter_map(|&i| u8::try_from(i).ok()).map(char::from).collect())
        }
        fn vocab_size(&self) -> usize {
            257
        }
        fn token_to_id(&self, _: &str) -> Option<u32> {
            None
        }
    }

    fn renderer() -> PromptRenderer {
        PromptRenderer::new(Arc::new(Bytes), ChatTemplate::new(DEFAULT_CHAT_TEMPLATE, "<s>", "</s>"))
    }

    fn ids(s: &str) -> Vec<u32> {
        s.bytes().map(u32::from).collect()
    }

    #[test]
    fn chat_renders_flattened_and_encodes_without_special_tokens() {
        let r = renderer();
        let msgs = [ChatMessage::new("system", "S"), ChatMessage::new("user", "U")];
        assert_eq!(r.render_chat(&msgs, true).unwrap(), "<|system|>\nS\n<|user|>\nU\n<|assistant|>\n");
        assert_eq!(r.render_chat(&msgs, false).unwrap(), "<|system|>\nS\n<|user|>\nU\n");
        let body = json!({"messages": [{"role": "system", "content": "S"},
            {"role": "user", "content": [{"type": "text", "text": "U"}, {"type": "image_url", "image_url": {}}]}]});
        assert_eq!(
            r.tokenize_request("/v1/chat/completions", &body),
            Some(ids("<|system|>\nS\n<|user|>\nU\n<|assistant|>\n"))
        );
        let mut no_gen = body.clone();
        no_gen["add_generation_prompt"] = json!(false);
        assert_eq!(r.tokenize_request("/v1/chat/completions", &no_gen), Some(ids("<|system|>\nS\n<|user|>\nU\n")));
        assert_eq!(r.tokenize_request("/v1/chat/completions", &json!({"messages": [{"content": "x"}]})), None);
    }

    #[test]
    fn completions_encode_with_special_tokens_and_ids_pass_through() {
        let r = renderer();
        let bos = |s: &str| [vec![256], ids(s)].concat();
        assert_eq!(r.tokenize_request("/v1/completions", &json!({"prompt": "hi"})), Some(bos("hi")));
        assert_eq!(r.tokenize_request("/v1/completions", &json!({"prompt": ["hi"]})), Some(bos("hi")));
        assert_eq!(r.tokenize_request("/v1/completions", &json!({"prompt": [5, 6]})), Some(vec![5, 6]));
        assert_eq!(r.tokenize_request("/v1/completions", &json!({"prompt": ["a", "b"]})), None);
        assert_eq!(r.tokenize_request("/v1/completions", &json!({})), None);
    }

    #[test]
    fn templates_load_from_a_directory_with_fallback() {
        let dir = std::env::temp_dir().join(format!("llmd-openai-render-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // No files: no template, and the fallback.
        assert!(ChatTemplate::from_dir(&dir).unwrap().is_none());
        assert_eq!(ChatTemplate::from_dir_or_fallback(&dir).unwrap().source(), DEFAULT_CHAT_TEMPLATE);
        // A list of named templates in tokenizer_config.json, special tokens in both forms.
        std::fs::write(
            dir.join("tokenizer_config.json"),
            json!({"bos_token": {"content": "<B>"}, "eos_token": "<E>",
                "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}"}]})
            .to_string(),
        )
        .unwrap();
        let t = ChatTemplate::from_dir(&dir).unwrap().unwrap();
        assert_eq!(t.render(&[ChatMessage::new("user", "x")], true).unwrap(), "<B>x<E>");
        // chat_template.jinja wins.
        std::fs::write(dir.join("chat_template.jinja"), "{{ messages | length }}").unwrap();
        assert_eq!(ChatTemplate::from_dir(&dir).unwrap().unwrap().render(&[], false).unwrap(), "0");
        // A missing tokenizer.json is a tokenizer error naming the file.
        let e = PromptRenderer::from_dir(&dir).unwrap_err();
        assert!(matches!(e, OpenAiError::Tokenizer(ref m) if m.contains("tokenizer.json")), "{e}");
        std::fs::write(dir.join("tokenizer_config.json"), "{oops").unwrap();
        assert!(matches!(ChatTemplate::from_dir(&dir), Err(OpenAiError::Config { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn template_errors_are_reported() {
        let bad = ChatTemplate::new("{% if %}", "", "");
        assert!(matches!(bad.render(&[], true), Err(OpenAiError::Template(m)) if m.contains("does not parse")));
        let raising = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "");
        assert!(matches!(raising.render(&[], true), Err(OpenAiError::Template(m)) if m.contains("no system role")));
        // Python string methods work, as in transformers.
        let py = ChatTemplate::new("{{ messages[0]['content'].strip().upper() }}", "", "");
        assert_eq!(py.render(&[ChatMessage::new("user", "  hi ")], true).unwrap(), "HI");
    }
}
