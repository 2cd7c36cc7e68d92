//! The `token-producer`'s estimate backend: pseudo-tokens for prefix-locality hashing
//! without a tokenizer, as llm-d-router's `estimateBackend` computes them, byte for byte.
//!
//! Pre-tokenized input passes through (generate `token_ids` with their multimodal
//! features, completions and embeddings token-id arrays). Otherwise the request's user
//! input becomes a byte stream, zero-padded to a multiple of 4 bytes and packed 4 bytes a
//! token, little-endian ([`pack_bytes`]):
//!
//! - chat completions: `json.Marshal(tools)` (keys sorted, HTML-safe escapes), then each
//!   message's role and content text; an image, video or audio block becomes placeholder
//!   tokens on a token boundary (its content hash repeated as many times as the image or
//!   video estimator says) and is reported as an [`MmItem`];
//! - Anthropic messages: tools, system text (without Claude Code's billing header), then
//!   each message's role and text, thinking, tool use (id, name, raw input) and tool
//!   result text and images; images as in chat;
//! - completions: the prompt text; several string prompts are one prompt each;
//! - responses, conversations, embeddings: the JSON Go re-encodes of their input.
//!
//! The body is read as llm-d-router's parsers read it (see `estimate_body`): a body they
//! refuse is an error here, with their message. [`estimate_json`] takes the body's bytes
//! and matches Go exactly, `json.RawMessage` fields (Anthropic `input_schema` and tool
//! `input`) included, which Go keeps as they came (compacted, for `input_schema`).
//! [`estimate`] takes a `serde_json::Value`, whose objects are sorted and whose
//! whitespace is gone: the raw fields then come out with sorted keys and no whitespace,
//! which matches Go only where the client sent them so; everything else matches.
//!
//! Not reproduced (exotic, documented where they arise): error texts of Go's JSON decoder
//! (the parsers' own messages are kept), Go's merging of repeated struct keys, nesting
//! deeper than 1 000, base64 padding at a 1 024-character chunk end, hex and `_` forms in
//! video header numbers, the order of generate features that share an offset (random in
//! Go), negative generate placeholder offsets (refused here), and placeholder counts past
//! 2^27 tokens (refused here; Go tries to allocate them). Float literals in a `Value` went
//! through serde_json's float parser, which may differ from Go's by an ulp without its
//! `float_roundtrip` feature.

use std::collections::BTreeMap;

use serde_json::Value;

use super::estimate_body::{self as body, AContent, ChatRequest, MessagesRequest};
pub use super::estimate_config::{CountMode, EstimateConfig, FramesMode, ImageEstimate, VideoEstimate};
use super::gojson::{self, Node, Val, compact_html, fold_eq, marshal_any, write_string};
use super::mm_estimate::{
    VideoMeta, append_asset, asset_count, image_count, image_dims_from_payload, image_dims_from_url, video_count,
    video_meta,
};

/// One prompt's estimated tokens, and the multimodal items found in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EstimatedPrompt {
    /// The pseudo-token ids (or the request's own token ids, passed through).
    pub token_ids: Vec<u32>,
    /// The multimodal items, in token order.
    pub mm: Vec<MmItem>,
}

/// A multimodal item of a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmItem {
    /// `"image"`, `"video"` or `"audio"` (a generate body's features: its own keys).
    pub modality: String,
    /// The content hash: XXH64 (seed 0) of the URL, base64 payload or audio data+format, in
    /// lower-case hex without leading zeros (a generate body's features: its own hashes).
    pub hash: String,
    /// Index of the item's first placeholder token.
    pub offset: usize,
    /// Number of placeholder tokens.
    pub length: usize,
}

/// Packs bytes into u32 tokens, 4 bytes each, little-endian, the last zero-padded.
pub fn pack_bytes(b: &[u8]) -> Vec<u32> {
    b.chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(w)
        })
        .collect()
}

/// What llm-d-router's `estimateBackend` answers for a body with no protocol it reads.
const UNSUPPORTED: &str = "unsupported request body type, skipping estimation";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parser {
    OpenAi,
    Anthropic,
    VllmHttp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    Conversations,
    ImagesGenerations,
    Messages,
    CountTokens,
    Generate,
}

/// `request.MatchPathSuffix`: a plain suffix test (no segment boundary) after trimming
/// blanks and one trailing `/` from the path and every `/` around the suffix.
fn match_path_suffix(path: &str, suffix: &str) -> bool {
    let p = path.trim();
    let p = p.strip_suffix('/').unwrap_or(p);
    p.ends_with(suffix.trim().trim_matches('/'))
}

/// The parser and API a path goes to; `None` when no parser claims it (the router's
/// passthrough fallback: nothing is read).
fn route(path: &str) -> Result<Option<(Parser, Api)>, String> {
    // The router's GetRequestPath: a missing path is /v1/completions; the query is dropped.
    let path = if path.is_empty() { "/v1/completions" } else { path };
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    // The router's default parsers pick the protocol, longest claimed suffix first.
    use crate::parsers::BodyParser;
    let parser = match crate::parsers::router_defaults().resolve(path) {
        Some(BodyParser::OpenAi) => Parser::OpenAi,
        Some(BodyParser::Anthropic) => Parser::Anthropic,
        Some(BodyParser::VllmHttp) => Parser::VllmHttp,
        _ => return Ok(None),
    };
    let m = |s| match_path_suffix(path, s);
    let api = match parser {
        Parser::OpenAi if m("/conversations") => Api::Conversations,
        Parser::OpenAi if m("/responses") => Api::Responses,
        Parser::OpenAi if m("/chat/completions") || m("/chat/completions/render") => Api::ChatCompletions,
        Parser::OpenAi if m("/completions") || m("/completions/render") => Api::Completions,
        Parser::OpenAi if m("/embeddings") => Api::Embeddings,
        Parser::OpenAi if m("/images/generations") => Api::ImagesGenerations,
        Parser::OpenAi => Api::Completions,
        Parser::Anthropic if path.ends_with("/messages/count_tokens") => Api::CountTokens,
        Parser::Anthropic if path.ends_with("/messages") => Api::Messages,
        Parser::Anthropic => return Err(format!("unsupported API endpoint: {path}")),
        Parser::VllmHttp if path.ends_with("inference/v1/generate") => Api::Generate,
        Parser::VllmHttp => return Err(format!("unsupported path: {path}")),
    };
    Ok(Some((parser, api)))
}

/// Estimates the prompts of a request body arriving at `path` (the API path without the
/// host, e.g. `/v1/chat/completions`; routed by suffix as llm-d-router's openai, anthropic
/// and vllm-http parsers route them) with lower-case `headers` (the `x-llm-d-video-*`
/// ones describe videos). `Ok(vec![])` when there is nothing to estimate; `Err` with the
/// router's message for a body it refuses or cannot estimate.
///
/// The `Value` is re-serialized first: see the module docs for what that loses against
/// [`estimate_json`].
pub fn estimate(
    cfg: &EstimateConfig,
    path: &str,
    body: &Value,
    headers: &BTreeMap<String, String>,
) -> Result<Vec<EstimatedPrompt>, String> {
    let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    estimate_json(cfg, path, &bytes, headers)
}

/// [`estimate`] over the body's bytes as received, which reproduces Go exactly.
pub fn estimate_json(
    cfg: &EstimateConfig,
    path: &str,
    body: &[u8],
    headers: &BTreeMap<String, String>,
) -> Result<Vec<EstimatedPrompt>, String> {
    let Some((parser, api)) = route(path)? else {
        return Err(UNSUPPORTED.to_string());
    };
    if api == Api::CountTokens {
        // Forwarded unparsed: no protocol to estimate.
        return Err(UNSUPPORTED.to_string());
    }
    // Every parser first decodes the body into a map[string]any.
    let root = gojson::parse(body)
        .and_then(|n| match n.val {
            Val::Obj(_) | Val::Null => gojson::check_any(&n).map(|()| n),
            _ => Err(format!("json: cannot unmarshal {} into Go value of type map[string]interface {{}}", n.kind())),
        })
        .map_err(|e| match parser {
            Parser::OpenAi => format!("error unmarshaling request bodyMap: {e}"),
            Parser::Anthropic => format!("error unmarshaling request body: {e}"),
            Parser::VllmHttp => e,
        })?;
    let prompts = match api {
        Api::Generate => {
            let g = body::generate(&root).map_err(|e| format!("invalid generate request: {e}"))?;
            vec![EstimatedPrompt { mm: generate_features(&g)?, token_ids: g.token_ids }]
        }
        Api::Completions => {
            let p = body::completions(&root).map_err(|_| "invalid completions request: must have prompt field")?;
            if !p.token_ids.is_empty() {
                vec![EstimatedPrompt { token_ids: p.token_ids, mm: Vec::new() }]
            } else if p.strings.len() > 1 {
                p.strings
                    .iter()
                    .map(|s| EstimatedPrompt { token_ids: pack_bytes(s.as_bytes()), mm: Vec::new() })
                    .collect()
            } else {
                vec![EstimatedPrompt { token_ids: pack_bytes(p.plain_text().as_bytes()), mm: Vec::new() }]
            }
        }
        Api::Embeddings => {
            let input = body::embeddings(&root).map_err(|_| "invalid embeddings request: must have input field")?;
            if input.token_ids.is_empty() {
                // EmbeddingsInput has no MarshalJSON: Go encodes its exported fields.
                let mut out = b"{\"Raw\":".to_vec();
                write_string(&input.raw, &mut out);
                out.extend_from_slice(b",\"Strings\":");
                if input.strings.is_empty() {
                    out.extend_from_slice(b"null");
                } else {
                    out.push(b'[');
                    for (i, s) in input.strings.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        write_string(s, &mut out);
                    }
                    out.push(b']');
                }
                out.extend_from_slice(b",\"TokenIDs\":null}");
                vec![EstimatedPrompt { token_ids: pack_bytes(&out), mm: Vec::new() }]
            } else {
                vec![EstimatedPrompt { token_ids: input.token_ids, mm: Vec::new() }]
            }
        }
        Api::ChatCompletions => {
            let chat =
                body::chat(&root).map_err(|_| "invalid chat completions request: must have valid messages field")?;
            let (out, mm) = chat_bytes(cfg, &chat, &video_meta(headers))?;
            vec![EstimatedPrompt { token_ids: pack_bytes(&out), mm }]
        }
        Api::Messages => {
            let req = body::messages(&root).map_err(|e| format!("error parsing messages request: {e}"))?;
            if req.messages.is_empty() {
                return Err("invalid messages request: must have at least one message".to_string());
            }
            let (out, mm) = messages_bytes(cfg, &req)?;
            vec![EstimatedPrompt { token_ids: pack_bytes(&out), mm }]
        }
        Api::Responses => {
            let r = body::responses(&root).map_err(|_| "invalid responses request: must have input field")?;
            // json.Marshal([]map[string]any{...}): one single-key object per part.
            let mut out = vec![b'['];
            for (key, part) in [("instructions", r.instructions), ("tools", r.tools), ("input", Some(r.input))] {
                if let Some(n) = part {
                    if out.len() > 1 {
                        out.push(b',');
                    }
                    out.extend_from_slice(format!("{{\"{key}\":").as_bytes());
                    marshal_any(n, &mut out)?;
                    out.push(b'}');
                }
            }
            out.push(b']');
            vec![EstimatedPrompt { token_ids: pack_bytes(&out), mm: Vec::new() }]
        }
        Api::Conversations => {
            let items =
                body::conversations(&root).map_err(|_| "invalid conversations request: must have items field")?;
            // json.Marshal([]ConversationItem): type, role, content, each omitempty.
            let mut out = vec![b'['];
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b'{');
                let mut first = true;
                let mut sep = |out: &mut Vec<u8>, key: &str| {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    out.extend_from_slice(format!("\"{key}\":").as_bytes());
                };
                if !item.ty.is_empty() {
                    sep(&mut out, "type");
                    write_string(&item.ty, &mut out);
                }
                if !item.role.is_empty() {
                    sep(&mut out, "role");
                    write_string(&item.role, &mut out);
                }
                if let Some(c) = item.content {
                    sep(&mut out, "content");
                    marshal_any(c, &mut out)?;
                }
                out.push(b'}');
            }
            out.push(b']');
            vec![EstimatedPrompt { token_ids: pack_bytes(&out), mm: Vec::new() }]
        }
        Api::ImagesGenerations => {
            body::images(&root).map_err(|_| "invalid images generations request: must have prompt field")?;
            return Err(UNSUPPORTED.to_string());
        }
        Api::CountTokens => return Err(UNSUPPORTED.to_string()),
    };
    // The plugin publishes nothing when no prompt has a token.
    if prompts.iter().all(|p| p.token_ids.is_empty()) {
        return Ok(Vec::new());
    }
    Ok(prompts)
}

/// A generate body's features as items (`convertMMFeaturesToUpstream`): per modality with
/// both hashes and ranges, paired up to the shorter list, ordered by offset. Go visits the
/// modalities in random map order and sorts unstably; here modalities go in key order and
/// the sort is stable.
fn generate_features(g: &body::Generate) -> Result<Vec<MmItem>, String> {
    let mut items = Vec::new();
    for (modality, hashes) in &g.mm_hashes {
        let Some(ranges) = g.mm_placeholders.get(modality) else {
            continue;
        };
        for (hash, &(offset, length)) in hashes.iter().zip(ranges) {
            let (Ok(offset), Ok(length)) = (usize::try_from(offset), usize::try_from(length)) else {
                return Err(format!(
                    "invalid generate request: negative placeholder range ({offset}, {length}) is not supported"
                ));
            };
            items.push(MmItem { modality: modality.clone(), hash: hash.clone(), offset, length });
        }
    }
    items.sort_by_key(|i| i.offset);
    Ok(items)
}

// `json.Marshal(tools)` for `[]any`.
fn marshal_list(items: &[Node<'_>], out: &mut Vec<u8>) -> Result<(), String> {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        marshal_any(item, out)?;
    }
    out.push(b']');
    Ok(())
}

/// `chatCompletionsBytes`: tools, then each message's role and content, multimodal blocks
/// as placeholders.
fn chat_bytes(
    cfg: &EstimateConfig,
    chat: &ChatRequest<'_, '_>,
    meta: &VideoMeta,
) -> Result<(Vec<u8>, Vec<MmItem>), String> {
    let mut out = Vec::new();
    let mut mm = Vec::new();
    if !chat.tools.is_empty() {
        marshal_list(chat.tools, &mut out)?;
    }
    for msg in &chat.messages {
        out.extend_from_slice(msg.role.as_bytes());
        if !msg.content.raw.is_empty() {
            out.extend_from_slice(msg.content.raw.as_bytes());
            continue;
        }
        for b in &msg.content.blocks {
            match b.ty.as_str() {
                "text" => out.extend_from_slice(b.text.as_bytes()),
                "image_url" => {
                    let n = image_count(&cfg.image, image_dims_from_url(&b.image_url));
                    append_asset(&mut out, &mut mm, "image", &b.image_url, n)?;
                }
                "video_url" => append_asset(&mut out, &mut mm, "video", &b.video_url, video_count(&cfg.video, meta))?,
                // An audio_url block has no field the router reads: its data is "".
                "input_audio" | "audio_url" => {
                    let data = format!("{}{}", b.audio_data, b.audio_format);
                    append_asset(&mut out, &mut mm, "audio", &data, asset_count(data.len()))?;
                }
                _ => {}
            }
        }
    }
    Ok((out, mm))
}

/// The prefix of Claude Code's per-request system text, dropped from the system prompt.
const BILLING_HEADER_PREFIX: &str = "x-anthropic-billing-header";

/// `anthropicSystemText`: the string, or the text blocks joined with nothing, skipping
/// empty ones and the billing header.
fn system_text(c: &AContent<'_>) -> String {
    if !c.raw.is_empty() {
        return c.raw.clone();
    }
    c.blocks
        .iter()
        .filter(|b| b.ty == "text" && !b.text.is_empty() && !b.text.starts_with(BILLING_HEADER_PREFIX))
        .map(|b| b.text.as_str())
        .collect()
}

/// `anthropicImageToURL`: a URL source's URL, else a data URL (media type defaulting to
/// image/jpeg) of the base64 data; "" drops the image.
fn anthropic_image_url(src: Option<&body::ImageSource>) -> String {
    let Some(src) = src else {
        return String::new();
    };
    if src.ty == "url" || !src.url.is_empty() {
        return src.url.clone();
    }
    if src.data.is_empty() {
        return String::new();
    }
    let media = if src.media_type.is_empty() { "image/jpeg" } else { &src.media_type };
    format!("data:{media};base64,{}", src.data)
}

/// `messagesBytes`: tools, system text, then each message's role and blocks.
fn messages_bytes(cfg: &EstimateConfig, req: &MessagesRequest<'_>) -> Result<(Vec<u8>, Vec<MmItem>), String> {
    let mut out = Vec::new();
    let mut mm = Vec::new();
    if !req.tools.is_empty() {
        // json.Marshal([]AnthropicTool): name, description (omitempty), input_schema
        // (omitempty, raw: compacted), strict and defer_loading (omitempty pointers).
        out.push(b'[');
        for (i, t) in req.tools.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"name\":");
            write_string(&t.name, &mut out);
            if !t.description.is_empty() {
                out.extend_from_slice(b",\"description\":");
                write_string(&t.description, &mut out);
            }
            if let Some(raw) = t.input_schema {
                out.extend_from_slice(b",\"input_schema\":");
                compact_html(raw, &mut out);
            }
            for (key, flag) in [("strict", t.strict), ("defer_loading", t.defer_loading)] {
                if let Some(f) = flag {
                    out.extend_from_slice(format!(",\"{key}\":{f}").as_bytes());
                }
            }
            out.push(b'}');
        }
        out.push(b']');
    }
    out.extend_from_slice(system_text(&req.system).as_bytes());
    for msg in &req.messages {
        out.extend_from_slice(msg.role.as_bytes());
        if !msg.content.raw.is_empty() {
            out.extend_from_slice(msg.content.raw.as_bytes());
            continue;
        }
        for b in &msg.content.blocks {
            match b.ty.as_str() {
                "text" => out.extend_from_slice(b.text.as_bytes()),
                "image" => {
                    // placeholderForAnthropicImage: the URL, else the raw base64 data.
                    if let Some(src) = &b.source {
                        if !src.url.is_empty() {
                            let n = image_count(&cfg.image, image_dims_from_url(&src.url));
                            append_asset(&mut out, &mut mm, "image", &src.url, n)?;
                        } else if !src.data.is_empty() {
                            let n = image_count(&cfg.image, image_dims_from_payload(&src.data));
                            append_asset(&mut out, &mut mm, "image", &src.data, n)?;
                        }
                    }
                }
                "thinking" => out.extend_from_slice(b.thinking.as_bytes()),
                "tool_use" => {
                    out.extend_from_slice(b.id.as_bytes());
                    out.extend_from_slice(b.name.as_bytes());
                    out.extend_from_slice(b.input.unwrap_or_default());
                }
                "tool_result" => {
                    // anthropicToolResultContent: the string, else text blocks joined with
                    // newlines, then the image blocks.
                    if !b.content.raw.is_empty() {
                        out.extend_from_slice(b.content.raw.as_bytes());
                        continue;
                    }
                    let texts: Vec<&str> =
                        b.content.blocks.iter().filter(|i| i.ty == "text").map(|i| i.text.as_str()).collect();
                    out.extend_from_slice(texts.join("\n").as_bytes());
                    for item in b.content.blocks.iter().filter(|i| i.ty == "image") {
                        let url = anthropic_image_url(item.source.as_ref());
                        if !url.is_empty() {
                            let n = image_count(&cfg.image, image_dims_from_url(&url));
                            append_asset(&mut out, &mut mm, "image", &url, n)?;
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok((out, mm))
}

/// The request's cache salt (`cache_salt` in the body, as `CacheSaltFromBody` reads it
/// from every protocol's request struct); `None` when absent, empty or not a string.
pub fn cache_salt(body: &Value) -> Option<String> {
    let obj = body.as_object()?;
    // Go matches the key case-insensitively; an exact key is preferred here.
    let v = obj.get("cache_salt").or_else(|| obj.iter().find(|(k, _)| fold_eq(k, "cache_salt")).map(|(_, v)| v))?;
    v.as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenproducer::imageconfig::b64_encode;
    use crate::tokenproducer::mm_estimate::xxh64;
    use proptest::prelude::*;
    use serde_json::json;

    /// Go's estimate_test.go fixture: a 64x32 RGBA PNG, 64*32/1024 = 2 placeholders.
    const PNG_B64: &str = "iVBORw0KGgoAAAANSUhEUgAAAEAAAAAgCAIAAAAt/+nTAAAARUlEQVR4nOzP0QnAUAzDwBSy/8zlTSECdxj/a2fmu7x9d5mAmoCagJqAmoCagJqAmoCagJqAmoCagJqAmoCagJqAmoCagNofAAD//57WAN8yR4QZAAAAAElFTkSuQmCC";
    const CHAT: &str = "/v1/chat/completions";
    const MESSAGES: &str = "/v1/messages";
    // XXH64 (seed 0) values from the reference implementation (xxhash-rust's xxh64).
    const H_URL: &str = "9f4fdeae6ee1ceba"; // "https://example.com/a.png"
    const H_CLIP: &str = "34569481d4b7590b"; // "https://example.com/clip.mp4"
    const H_AUDIO: &str = "ebf9dfbc6413c16a"; // "AAAAwav"

    fn png_url() -> String {
        format!("data:image/png;base64,{PNG_B64}")
    }

    fn run(
        cfg: &EstimateConfig,
        path: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> Result<Vec<EstimatedPrompt>, String> {
        let h = headers.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect();
        estimate(cfg, path, &body, &h)
    }

    fn one(path: &str, body: Value) -> EstimatedPrompt {
        one_cfg(&EstimateConfig::default(), path, body, &[])
    }

    fn one_cfg(cfg: &EstimateConfig, path: &str, body: Value, headers: &[(&str, &str)]) -> EstimatedPrompt {
        let mut p = run(cfg, path, body.clone(), headers).unwrap_or_else(|e| panic!("{body}: {e}"));
        assert_eq!(p.len(), 1, "{body}");
        p.remove(0)
    }

    fn raw(path: &str, body: &str) -> Result<Vec<EstimatedPrompt>, String> {
        estimate_json(&EstimateConfig::default(), path, body.as_bytes(), &BTreeMap::new())
    }

    fn err(path: &str, body: Value) -> String {
        run(&EstimateConfig::default(), path, body.clone(), &[]).expect_err(&body.to_string())
    }

    fn chat_block(block: Value) -> Value {
        json!({"messages": [{"role": "user", "content": [block]}]})
    }

    fn image_chat(url: &str) -> Value {
        chat_block(json!({"type": "image_url", "image_url": {"url": url}}))
    }

    fn video_chat() -> Value {
        chat_block(json!({"type": "video_url", "video_url": {"url": "https://example.com/clip.mp4"}}))
    }

    /// The byte stream behind a prompt's tokens (zero padding included).
    fn stream(p: &EstimatedPrompt) -> Vec<u8> {
        p.token_ids.iter().flat_map(|t| t.to_le_bytes()).collect()
    }

    /// The tokens of `text` followed by `count` placeholders of `hash`.
    fn with_placeholders(text: &[u8], hash: &str, count: usize) -> Vec<u32> {
        let mut ids = pack_bytes(text);
        let h = u64::from_str_radix(hash, 16).expect("hex") as u32;
        ids.extend(std::iter::repeat_n(h, count));
        ids
    }

    fn item(modality: &str, hash: &str, offset: usize, length: usize) -> MmItem {
        MmItem { modality: modality.into(), hash: hash.into(), offset, length }
    }

    fn video_cfg(v: Value) -> EstimateConfig {
        EstimateConfig::from_params(&json!({"video": v})).expect("valid video config")
    }

    // --- Ports of estimate_test.go -------------------------------------------------------

    #[test]
    fn pack_bytes_key_preserving() {
        // TestPackBytes_KeyPreserving: hashing the tokens' bytes is hashing the input.
        let raw = b"the quick brown fox jumps over!!";
        let tokens = pack_bytes(raw);
        assert_eq!(tokens.len(), 8);
        let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        assert_eq!(xxh64(&bytes), xxh64(raw));
        assert_eq!(xxh64(raw), 0x9ca9_aef3_c948_0f55);
        assert_eq!(pack_bytes(b""), Vec::<u32>::new());
    }

    #[test]
    fn generate_passthrough() {
        // TestEstimateBackend_GeneratePassthrough / TestProduce_GenerateUsesPreTokenizedIDs.
        let p = one("/inference/v1/generate", json!({"token_ids": [7, 8, 9]}));
        assert_eq!(p, EstimatedPrompt { token_ids: vec![7, 8, 9], mm: vec![] });
    }

    #[test]
    fn generate_flattens_features() {
        // TestProduce_GenerateFlattensFeatures.
        let ids = [151_644, 872, 198, 3838, 374, 279, 6722];
        let p = one(
            "/inference/v1/generate",
            json!({"token_ids": ids, "features": {
                "mm_hashes": {"image": ["abc123hash", "def456hash"]},
                "mm_placeholders": {"image": [{"offset": 1, "length": 3}, {"offset": 4, "length": 3}]},
            }}),
        );
        assert_eq!(p.token_ids, ids);
        assert_eq!(p.mm, vec![item("image", "abc123hash", 1, 3), item("image", "def456hash", 4, 3)]);
        // Modalities merge by offset; unmatched hashes and modalities without ranges drop.
        let p = one(
            "/inference/v1/generate",
            json!({"token_ids": [1], "features": {
                "mm_hashes": {"video": ["v1"], "image": ["i1", "i2"], "audio": ["a1"]},
                "mm_placeholders": {"image": [{"offset": 9, "length": 1}], "video": [{"offset": 2, "length": 5}]},
            }}),
        );
        assert_eq!(p.mm, vec![item("video", "v1", 2, 5), item("image", "i1", 9, 1)]);
    }

    #[test]
    fn generate_token_ids_as_the_parser_checks_them() {
        assert_eq!(one("/inference/v1/generate", json!({"token_ids": [1, null, 3.0]})).token_ids, [1, 0, 3]);
        for (ids, want) in [
            (json!([1.5]), "invalid generate request: token_ids[0]: invalid value 1.5"),
            (json!([2, -1]), "invalid generate request: token_ids[1]: invalid value -1"),
            (json!([4_294_967_296u64]), "invalid generate request: token_ids[0]: invalid value 4294967296"),
            (json!([]), "invalid generate request: must have non-empty token_ids field"),
            (json!(["1"]), "invalid generate request: json: cannot unmarshal string"),
        ] {
            let e = err("/inference/v1/generate", json!({"token_ids": ids}));
            assert!(e.starts_with(want), "{ids}: {e}");
        }
    }

    #[test]
    fn completions_token_ids_passthrough() {
        // TestEstimateBackend_CompletionsTokenIDsPassthrough.
        assert_eq!(one("/v1/completions", json!({"prompt": [11, 22, 33]})).token_ids, [11, 22, 33]);
        // TestEstimateBackend_EmbeddingsTokenIDsPassthrough.
        assert_eq!(one("/v1/embeddings", json!({"input": [4, 5]})).token_ids, [4, 5]);
    }

    #[test]
    fn completions_deterministic() {
        // TestEstimateBackend_CompletionsDeterministic, with the exact tokens:
        // "hell" "o wo" "rld\0" little-endian.
        let a = one("/v1/completions", json!({"prompt": "hello world"}));
        assert_eq!(a.token_ids, [0x6c6c_6568, 0x6f77_206f, 0x0064_6c72]);
        assert_eq!(a, one("/v1/completions", json!({"prompt": "hello world"})));
        assert_ne!(a, one("/v1/completions", json!({"prompt": "hello there"})));
        // TestEstimateBackend_NonChatNoFeatures.
        assert!(a.mm.is_empty());
    }

    #[test]
    fn multi_string_completions_populate_prompts() {
        // TestEstimateBackend_MultiStringCompletionsPopulatesPrompts: one prompt per string.
        let p = run(&EstimateConfig::default(), "/v1/completions", json!({"prompt": ["hello world", "foo bar"]}), &[])
            .expect("estimates");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].token_ids, pack_bytes(b"hello world"));
        assert_eq!(p[1].token_ids, [0x206f_6f66, 0x0072_6162]);
        // TestEstimateBackend_SingleStringCompletionsSetsPrompts.
        assert_eq!(one("/v1/completions", json!({"prompt": ["hello world"]})).token_ids, pack_bytes(b"hello world"));
        // Empty strings stay prompts unless no prompt has a token (nothing published).
        let p = run(&EstimateConfig::default(), "/v1/completions", json!({"prompt": ["", "ab"]}), &[]).expect("ok");
        assert_eq!(p.iter().map(|p| p.token_ids.len()).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(run(&EstimateConfig::default(), "/v1/completions", json!({"prompt": ["", ""]}), &[]), Ok(vec![]));
        assert_eq!(run(&EstimateConfig::default(), "/v1/completions", json!({"prompt": [""]}), &[]), Ok(vec![]));
    }

    #[test]
    fn chat_image_feature() {
        // TestEstimateBackend_ChatImageFeature, exactly: "userdescribe this" (17 bytes) is
        // padded to 20, then the 64x32 PNG takes 2 placeholders of its URL's hash.
        let url = png_url();
        let p = one(
            CHAT,
            chat_block(json!({"type": "text", "text": "describe this"}))
                .pointer("/messages/0/content")
                .map(|c| {
                    let mut c = c.clone();
                    c.as_array_mut().expect("array").push(json!({"type": "image_url", "image_url": {"url": url}}));
                    json!({"messages": [{"role": "user", "content": c}]})
                })
                .expect("content"),
        );
        let hash = format!("{:x}", xxh64(url.as_bytes()));
        assert_eq!(p.mm, vec![item("image", &hash, 5, 2)]);
        assert_eq!(p.token_ids, with_placeholders(b"userdescribe this", &hash, 2));
    }

    #[test]
    fn chat_modality_labels() {
        // TestEstimateBackend_ChatModalityLabels, with hashes and counts: an undecodable
        // image is 640*360/1024 = 225, audio ceil(len("AAAAwav")/4) = 2, a video
        // 10 s * 2 fps * 225 = 4500.
        let img = one(CHAT, image_chat("https://example.com/a.png"));
        assert_eq!(img.mm, vec![item("image", H_URL, 1, 225)]);
        assert_eq!(img.token_ids, with_placeholders(b"user", H_URL, 225));
        let audio =
            one(CHAT, chat_block(json!({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}})));
        assert_eq!(audio.mm, vec![item("audio", H_AUDIO, 1, 2)]);
        let video = one(CHAT, video_chat());
        assert_eq!(video.mm, vec![item("video", H_CLIP, 1, 4500)]);
        // audio_url has no field the router reads: the hash of "", one placeholder.
        let a = one(CHAT, chat_block(json!({"type": "audio_url", "audio_url": {"url": "https://x/a.wav"}})));
        assert_eq!(a.mm, vec![item("audio", "ef46db3751d8e999", 1, 1)]);
    }

    #[test]
    fn chat_image_weighting_distinct() {
        // TestEstimateBackend_ChatImageWeightingDistinct.
        assert_eq!(one(CHAT, image_chat("https://example.com/a.png")).mm[0].length, 225);
        assert_eq!(one(CHAT, image_chat(&png_url())).mm[0].length, 2);
    }

    #[test]
    fn image_estimator_knobs() {
        let cfg = |v: Value| EstimateConfig::from_params(&json!({"image": v})).expect("valid image config");
        let len = |c: &EstimateConfig, url: &str| one_cfg(c, CHAT, image_chat(url), &[]).mm[0].length;
        // TestImageEstimator_StaticMode.
        assert_eq!(len(&cfg(json!({"mode": "static", "static": {"staticToken": 7}})), &png_url()), 7);
        assert_eq!(len(&cfg(json!({"mode": "static"})), &png_url()), 1);
        // TestImageEstimator_CustomFactor: 640*360/2048.
        assert_eq!(len(&cfg(json!({"dynamic": {"factor": 2048}})), "https://example.com/a.png"), 112);
        // TestImageEstimator_CustomDefaultResolution.
        let c = cfg(json!({"defaultResolution": {"width": 1024, "height": 1024}}));
        assert_eq!(len(&c, "https://example.com/a.png"), 1024);
        // Decoded dimensions win over the default resolution; tiny images still count 1.
        assert_eq!(len(&c, &png_url()), 2);
        assert_eq!(len(&cfg(json!({"dynamic": {"factor": 4096}})), &png_url()), 1);
    }

    #[test]
    fn video_estimator_configs() {
        let len = |c: &EstimateConfig, h: &[(&str, &str)]| one_cfg(c, CHAT, video_chat(), h).mm[0].length;
        let static_tpf = |n: i64| json!({"mode": "static", "static": {"numTokensPerFrame": n}});
        // TestVideoEstimator_Default / NoHeadersUseDefaults: 20 frames * 225.
        assert_eq!(len(&EstimateConfig::default(), &[]), 4500);
        // TestVideoEstimator_StaticTokensPerFrame.
        assert_eq!(len(&video_cfg(json!({"tokensPerFrame": static_tpf(100)})), &[]), 2000);
        // TestVideoEstimator_DynamicFactor: 20 * (640*360/2048 = 112).
        let c = video_cfg(json!({"tokensPerFrame": {"mode": "dynamic", "dynamic": {"factor": 2048}}}));
        assert_eq!(len(&c, &[]), 2240);
        // TestVideoEstimator_SampledFrames: 8 s * 2 fps * 10.
        let c = video_cfg(json!({"defaultDuration": 8, "frames": {"mode": "sampled", "sampled": {"sampleFPS": 2}},
            "tokensPerFrame": static_tpf(10)}));
        assert_eq!(len(&c, &[]), 160);
        // TestVideoEstimator_StridedFramesCapped: 10*24/4 = 60, capped to 16.
        let c = video_cfg(json!({"defaultDuration": 10, "tokensPerFrame": static_tpf(100),
            "frames": {"mode": "strided", "maxFrames": 16, "strided": {"defaultSourceFPS": 24, "frameStride": 4}}}));
        assert_eq!(len(&c, &[]), 1600);
        // TestVideoEstimator_StridedFramesFloored: 1*24/4 = 6, floored to 8.
        let c = video_cfg(json!({"defaultDuration": 1, "tokensPerFrame": static_tpf(100),
            "frames": {"mode": "strided", "minFrames": 8, "strided": {"defaultSourceFPS": 24, "frameStride": 4}}}));
        assert_eq!(len(&c, &[]), 800);
        // TestVideoEstimator_MaxVideoTokens.
        assert_eq!(len(&video_cfg(json!({"maxVideoTokens": 500})), &[]), 500);
        // TestVideoEstimator_Qwen3AndGemma4.
        let qwen3 = video_cfg(json!({"defaultResolution": {"width": 640, "height": 480}, "defaultDuration": 10,
            "tokensPerFrame": {"mode": "dynamic", "dynamic": {"factor": 1024}},
            "frames": {"mode": "sampled", "sampled": {"sampleFPS": 2}}, "maxVideoTokens": 100_000}));
        assert_eq!(len(&qwen3, &[]), 20 * 300);
        let gemma4 = video_cfg(json!({"defaultDuration": 10, "tokensPerFrame": static_tpf(256),
            "frames": {"mode": "strided", "maxFrames": 16, "strided": {"defaultSourceFPS": 24, "frameStride": 4}}}));
        assert_eq!(len(&gemma4, &[]), 16 * 256);
    }

    #[test]
    fn video_estimator_headers() {
        let len = |c: &EstimateConfig, h: &[(&str, &str)]| one_cfg(c, CHAT, video_chat(), h).mm[0].length;
        let res = "x-llm-d-video-resolution";
        let dur = "x-llm-d-video-duration-seconds";
        let fps = "x-llm-d-video-fps";
        // TestVideoEstimator_HeaderMetadataOverridesDefaults: 3 s * 2 fps * 320*240/1024.
        assert_eq!(len(&EstimateConfig::default(), &[(res, "320x240"), (dur, "3")]), 6 * 75);
        // TestVideoEstimator_HeaderFPSStridedMode: int(3*30)/2.
        let c = video_cfg(json!({"frames": {"mode": "strided", "strided": {"frameStride": 2}},
            "tokensPerFrame": {"mode": "static", "static": {"numTokensPerFrame": 1}}}));
        assert_eq!(len(&c, &[(dur, "3"), (fps, "30")]), 45);
        // TestVideoEstimator_SampledIgnoresHeaderFPS.
        let c = video_cfg(json!({"frames": {"mode": "sampled", "sampled": {"sampleFPS": 2}},
            "tokensPerFrame": {"mode": "static", "static": {"numTokensPerFrame": 1}}}));
        assert_eq!(len(&c, &[(dur, "3"), (fps, "30")]), 6);
        assert_eq!(len(&c, &[(dur, "3"), (fps, "60")]), 6);
        // TestVideoEstimator_TemporalMergeAndMinFrames: 20/2 = 10; 2 floored to 4, /2 = 2.
        let c = video_cfg(json!({"frames": {"mode": "sampled", "minFrames": 4,
            "sampled": {"sampleFPS": 2, "temporalPatchSize": 2}},
            "tokensPerFrame": {"mode": "static", "static": {"numTokensPerFrame": 1}}}));
        assert_eq!(len(&c, &[(dur, "10")]), 10);
        assert_eq!(len(&c, &[(dur, "1")]), 2);
        // TestVideoEstimator_HeaderRespectsMaxVideoTokens.
        assert_eq!(len(&video_cfg(json!({"maxVideoTokens": 100})), &[(res, "320x240"), (dur, "3")]), 100);
    }

    #[test]
    fn messages_image_feature() {
        // TestEstimateBackend_MessagesImageFeature: a base64 source hashes by its payload.
        let p = one(
            MESSAGES,
            json!({"messages": [{"role": "user", "content": [
                {"type": "text", "text": "describe this"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
            ]}]}),
        );
        let hash = format!("{:x}", xxh64(PNG_B64.as_bytes()));
        assert_eq!(p.mm, vec![item("image", &hash, 5, 2)]);
        assert_eq!(p.token_ids, with_placeholders(b"userdescribe this", &hash, 2));
        // TestEstimateBackend_MessagesURLImageKey: a url source hashes by its URL.
        let p = one(
            MESSAGES,
            json!({"messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
            ]}]}),
        );
        assert_eq!(p.mm, vec![item("image", H_URL, 1, 225)]);
        // A source with neither, or none: no placeholder.
        let p = one(MESSAGES, json!({"messages": [{"role": "user", "content": [{"type": "image", "source": null}]}]}));
        assert_eq!((p.token_ids, p.mm), (pack_bytes(b"user"), vec![]));
    }

    #[test]
    fn messages_deterministic_and_system() {
        // TestEstimateBackend_MessagesDeterministic, exactly.
        let build = |system: &str| json!({"system": system, "messages": [{"role": "user", "content": "hello world"}]});
        let a = one(MESSAGES, build("you are helpful"));
        assert_eq!(a.token_ids, pack_bytes(b"you are helpfuluserhello world"));
        assert_eq!(a, one(MESSAGES, build("you are helpful")));
        assert_ne!(a, one(MESSAGES, build("you are concise")));
        // System blocks join with nothing, dropping empty ones and the billing header.
        let p = one(
            MESSAGES,
            json!({"system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=1; cch=ab;"},
                {"type": "text", "text": "You are "}, {"type": "text", "text": ""}, {"type": "text", "text": "Claude."}],
                "messages": [{"role": "user", "content": "hi"}]}),
        );
        assert_eq!(p.token_ids, pack_bytes(b"You are Claude.userhi"));
    }

    #[test]
    fn tools_come_first() {
        // TestEstimateBackend_ChatToolsBeforeSystem: the tools JSON leads the stream.
        let tools = json!([{"name": "search_for_long_enough_byte_segment_for_this_ordering_test"}]);
        let tools_json = br#"[{"name":"search_for_long_enough_byte_segment_for_this_ordering_test"}]"#;
        let chat = |sys: &str| json!({"tools": tools, "messages": [{"role": "system", "content": sys}, {"role": "user", "content": "hi"}]});
        let a = one(CHAT, chat("you are a helpful assistant"));
        let b = one(CHAT, chat("you are a concise assistant"));
        assert_ne!(a, b);
        let shared = tools_json.len() / 4 - 1;
        assert_eq!(a.token_ids[..shared], b.token_ids[..shared]);
        assert_eq!(&stream(&a)[..tools_json.len()], tools_json);
        // TestEstimateBackend_MessagesToolsBeforeSystem.
        let build = |sys: &str| {
            json!({"system": sys, "messages": [{"role": "user", "content": "hi"}], "tools": [{
                "name": "search_for_long_enough_byte_segment_for_this_ordering_test",
                "description": "ensures stable byte length", "input_schema": {"type": "object"}}]})
        };
        let a = one(MESSAGES, build("you are a helpful assistant"));
        let b = one(MESSAGES, build("you are a concise assistant"));
        let tools_json = br#"[{"name":"search_for_long_enough_byte_segment_for_this_ordering_test","description":"ensures stable byte length","input_schema":{"type":"object"}}]"#;
        assert_ne!(a, b);
        assert_eq!(&stream(&a)[..tools_json.len()], tools_json);
        assert_eq!(a.token_ids[..tools_json.len() / 4 - 1], b.token_ids[..tools_json.len() / 4 - 1]);
    }

    #[test]
    fn tools_affect_prefix() {
        // TestEstimateBackend_ChatToolsAffectPrefix.
        let chat = |tools: Value| json!({"tools": tools, "messages": [{"role": "user", "content": "hello world"}]});
        let none = one(CHAT, chat(Value::Null));
        assert_eq!(none, one(CHAT, chat(json!([]))), "an empty tools list writes nothing");
        let weather = one(CHAT, chat(json!([{"type": "function", "function": {"name": "get_weather"}}])));
        let stock = one(CHAT, chat(json!([{"type": "function", "function": {"name": "get_stock_price"}}])));
        assert_ne!(none, weather);
        assert_ne!(weather, stock);
        // TestEstimateBackend_MessagesToolsAffectPrefix.
        let msgs = |tools: Value| json!({"tools": tools, "messages": [{"role": "user", "content": "hello world"}]});
        let none = one(MESSAGES, msgs(Value::Null));
        let weather = one(MESSAGES, msgs(json!([{"name": "get_weather", "description": "Get the current weather"}])));
        let stock = one(MESSAGES, msgs(json!([{"name": "get_stock_price", "description": "Get a stock price"}])));
        assert_ne!(none, weather);
        assert_ne!(weather, stock);
        assert_eq!(
            weather.token_ids,
            pack_bytes(br#"[{"name":"get_weather","description":"Get the current weather"}]userhello world"#)
        );
    }

    #[test]
    fn messages_tool_blocks_affect_prefix() {
        // TestEstimateBackend_MessagesToolBlocksAffectPrefix, with the exact streams.
        let build = |blocks: Value| json!({"messages": [{"role": "assistant", "content": blocks}]});
        let base = one(MESSAGES, build(json!([])));
        assert_eq!(stream(&base), b"assistant\0\0\0");
        let thinking = one(MESSAGES, build(json!([{"type": "thinking", "thinking": "deep thought"}])));
        assert_eq!(thinking.token_ids, pack_bytes(b"assistantdeep thought"));
        let tool_use = one(
            MESSAGES,
            build(json!([{"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Zurich"}}])),
        );
        assert_eq!(tool_use.token_ids, pack_bytes(br#"assistanttoolu_01get_weather{"city":"Zurich"}"#));
        let tool_result =
            one(MESSAGES, build(json!([{"type": "tool_result", "tool_use_id": "toolu_01", "content": "Sunny, 22C"}])));
        assert_eq!(tool_result.token_ids, pack_bytes(b"assistantSunny, 22C"));
        for p in [&thinking, &tool_use, &tool_result] {
            assert_ne!(&base, p);
        }
    }

    // --- Exact streams of the common cases, derived from the Go code ----------------------

    #[test]
    fn plain_chat_bytes() {
        // Roles and contents, raw: no JSON, no escaping.
        let p = one(
            CHAT,
            json!({"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi <b>&</b> ünï"}]}),
        );
        assert_eq!(p.token_ids, pack_bytes("systemBe brief.userHi <b>&</b> ünï".as_bytes()));
        assert!(p.mm.is_empty());
        // Structured text blocks concatenate; unknown blocks are skipped.
        let p = one(
            CHAT,
            json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                {"type": "file", "file": {"file_id": "f"}}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c"}]}]}),
        );
        assert_eq!(p.token_ids, pack_bytes(b"userabassistant"));
    }

    #[test]
    fn chat_tools_bytes() {
        // json.Marshal of []any: keys sorted at every level, HTML-safe escapes, float64
        // numbers in Go's format.
        let want = r#"[{"function":{"description":"Weather in \u003ccity\u003e \u0026 more","n":1.5,"name":"get_weather","parameters":{"properties":{"city":{"type":"string"}},"required":["city"],"type":"object"},"strict":true},"type":"function"}]userWhat is the weather?"#;
        let p = one(
            CHAT,
            json!({"messages": [{"role": "user", "content": "What is the weather?"}], "tools": [{"type": "function",
                "function": {"name": "get_weather", "description": "Weather in <city> & more", "strict": true, "n": 1.50,
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]}),
        );
        assert_eq!(p.token_ids, pack_bytes(want.as_bytes()));
        // The same from the wire, keys in another order, with whitespace.
        let body = r#"{ "tools": [ { "type": "function", "function": { "parameters": { "required": ["city"],
            "type": "object", "properties": { "city": { "type": "string" } } }, "strict": true, "n": 15e-1,
            "description": "Weather in \u003ccity> & more", "name": "get_weather" } } ],
            "messages": [ { "role": "user", "content": "What is the weather?" } ] }"#;
        assert_eq!(raw(CHAT, body), Ok(vec![EstimatedPrompt { token_ids: pack_bytes(want.as_bytes()), mm: vec![] }]));
    }

    #[test]
    fn anthropic_conversation_bytes() {
        // Tools (input_schema raw: compacted, wire order kept), system, then each message.
        let body = r#"{"model": "claude", "max_tokens": 64,
            "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=1"}, {"type": "text", "text": "You are Claude."}],
            "tools": [{"name": "get_weather", "description": "Get the <weather>",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": false}],
            "messages": [
                {"role": "user", "content": "Weather in Zurich?"},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "Use the tool.", "signature": "sig"},
                    {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Zurich"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01",
                    "content": [{"type": "text", "text": "Sunny"}, {"type": "text", "text": "22C"}]}]}]}"#;
        let tools = r#"[{"name":"get_weather","description":"Get the \u003cweather\u003e","input_schema":{"type":"object","properties":{"city":{"type":"string"}}},"strict":false}]"#;
        // tool_use input is appended verbatim, whitespace included.
        let rest = "You are Claude.userWeather in Zurich?assistantUse the tool.toolu_01get_weather{\"city\": \"Zurich\"}userSunny\n22C";
        let want = pack_bytes(format!("{tools}{rest}").as_bytes());
        assert_eq!(raw(MESSAGES, body), Ok(vec![EstimatedPrompt { token_ids: want, mm: vec![] }]));
        // From a Value the raw fields come out sorted and compact (documented difference).
        let v: Value = serde_json::from_str(body).expect("json");
        let tools_sorted = r#"[{"name":"get_weather","description":"Get the \u003cweather\u003e","input_schema":{"properties":{"city":{"type":"string"}},"type":"object"},"strict":false}]"#;
        let rest_compact = rest.replace("{\"city\": \"Zurich\"}", "{\"city\":\"Zurich\"}");
        assert_eq!(one(MESSAGES, v).token_ids, pack_bytes(format!("{tools_sorted}{rest_compact}").as_bytes()));
    }

    #[test]
    fn anthropic_tool_result_images() {
        // A tool_result image becomes a data URL (media type defaulting to image/jpeg),
        // hashed and measured as such; the PNG payload still decodes (format is sniffed).
        let p = one(
            MESSAGES,
            json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                "content": [{"type": "image", "source": {"type": "base64", "data": PNG_B64}},
                    {"type": "text", "text": "a"}, {"type": "image", "source": {"type": "url", "url": ""}}]}]}]}),
        );
        let url = format!("data:image/jpeg;base64,{PNG_B64}");
        let hash = format!("{:x}", xxh64(url.as_bytes()));
        assert_eq!(p.mm, vec![item("image", &hash, 2, 2)]);
        assert_eq!(p.token_ids, with_placeholders(b"usera", &hash, 2));
    }

    #[test]
    fn other_protocols_bytes() {
        // Responses: [{"instructions":…},{"tools":…},{"input":…}], maps sorted.
        let p = one(
            "/v1/responses",
            json!({"input": [{"role": "user", "content": "hi"}], "instructions": "Be <nice>",
                "tools": [{"type": "web_search"}], "model": "m"}),
        );
        let want = r#"[{"instructions":"Be \u003cnice\u003e"},{"tools":[{"type":"web_search"}]},{"input":[{"content":"hi","role":"user"}]}]"#;
        assert_eq!(p.token_ids, pack_bytes(want.as_bytes()));
        let p = one("/v1/responses", json!({"input": "hi", "instructions": null}));
        assert_eq!(p.token_ids, pack_bytes(br#"[{"input":"hi"}]"#));
        // Conversations: type, role, content in struct order, empty ones omitted.
        let p = one(
            "/v1/conversations",
            json!({"items": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello"}]},
                {"role": "assistant", "content": null}, {"type": "", "content": ""}]}),
        );
        let want = r#"[{"type":"message","role":"user","content":[{"text":"Hello","type":"input_text"}]},{"role":"assistant"},{"content":""}]"#;
        assert_eq!(p.token_ids, pack_bytes(want.as_bytes()));
        // Embeddings: Go encodes EmbeddingsInput's exported fields.
        let p = one("/v1/embeddings", json!({"input": "hello"}));
        assert_eq!(p.token_ids, pack_bytes(br#"{"Raw":"hello","Strings":null,"TokenIDs":null}"#));
        let p = one("/v1/embeddings", json!({"input": ["a", "b<"]}));
        assert_eq!(p.token_ids, pack_bytes(br#"{"Raw":"","Strings":["a","b\u003c"],"TokenIDs":null}"#));
    }

    #[test]
    fn images_of_each_registered_format() {
        let jpeg: Vec<u8> = [
            &[0xff, 0xd8, 0xff, 0xe0, 0, 16][..],
            b"JFIF\0",
            &[1, 1, 0, 0, 1, 0, 1, 0, 0],
            // SOF0: 8-bit, 600 high, 800 wide, 3 components (4:2:0).
            &[0xff, 0xc0, 0, 17, 8, 0x02, 0x58, 0x03, 0x20, 3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1],
        ]
        .concat();
        let gif: Vec<u8> = [&b"GIF89a"[..], &[0x40, 0x01, 0xf0, 0x00, 0, 0, 0]].concat();
        let webp: &[u8] = b"RIFF\x24\0\0\0WEBPVP8X\x0a\0\0\0\0\0\0\0\x3f\0\0\x1f\0\0";
        for (mime, data, want) in [
            ("jpeg", jpeg, 800 * 600 / 1024),
            ("gif", gif, 320 * 240 / 1024),
            // WebP is not registered in the router: the default 640x360.
            ("webp", webp.to_vec(), 225),
        ] {
            let url = format!("data:image/{mime};base64,{}", b64_encode(&data));
            assert_eq!(one(CHAT, image_chat(&url)).mm[0].length, want, "{mime}");
        }
        // Not an image data URL, or not base64: the default.
        assert_eq!(one(CHAT, image_chat(&format!("data:text/plain;base64,{PNG_B64}"))).mm[0].length, 225);
        assert_eq!(one(CHAT, image_chat("data:image/png,raw")).mm[0].length, 225);
        // A payload cut off inside the header: the default.
        assert_eq!(one(CHAT, image_chat(&format!("data:image/png;base64,{}", &PNG_B64[..40]))).mm[0].length, 225);
    }

    // --- Routing and the parsers' refusals ------------------------------------------------

    #[test]
    fn paths_route_as_the_parsers_do() {
        let hi = json!({"messages": [{"role": "user", "content": "hi"}], "prompt": "hi"});
        let chat = pack_bytes(b"userhi");
        let completion = pack_bytes(b"hi");
        for (path, want) in [
            ("/v1/chat/completions", &chat),
            ("/v1/chat/completions/", &chat),
            ("/v1/chat/completions?stream=true", &chat),
            ("/v1/chat/completions/render", &chat),
            ("/v1/projects/p/locations/l/endpoints/openapi/chat/completions", &chat),
            ("/v1/completions", &completion),
            ("/v1/completions/render", &completion),
            ("", &completion),
        ] {
            assert_eq!(&one(path, hi.clone()).token_ids, want, "{path}");
        }
        for (path, want) in [
            ("/v1/messages/count_tokens", UNSUPPORTED),
            ("/v1/models", UNSUPPORTED),
            ("/health", UNSUPPORTED),
            ("/v1/messages/", "unsupported API endpoint: /v1/messages/"),
            ("/inference/v1/generate/", "unsupported path: /inference/v1/generate/"),
        ] {
            assert_eq!(err(path, hi.clone()), want, "{path}");
        }
        assert_eq!(err("/v1/images/generations", json!({"prompt": "a cat"})), UNSUPPORTED);
        assert_eq!(
            err("/v1/images/generations", json!({"prompt": ""})),
            "invalid images generations request: must have prompt field"
        );
    }

    #[test]
    fn bodies_the_parsers_refuse() {
        let chat_err = "invalid chat completions request: must have valid messages field";
        for body in [
            json!({}),
            json!({"messages": []}),
            json!({"messages": [{"role": "user", "content": 5}]}),
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "https://x"}]}]}),
            json!({"messages": [{"role": 1, "content": "hi"}]}),
            json!({"messages": [{"role": "user", "content": "hi"}], "tools": {"a": 1}}),
            json!({"messages": [{"role": "user", "content": "hi"}], "add_generation_prompt": "yes"}),
        ] {
            assert_eq!(err(CHAT, body.clone()), chat_err, "{body}");
        }
        assert!(err(CHAT, json!([1])).starts_with("error unmarshaling request bodyMap: json: cannot unmarshal array"));
        let e =
            raw(CHAT, r#"{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}"#).expect_err("range");
        assert!(e.starts_with("error unmarshaling request bodyMap: json: cannot unmarshal number 1e400"), "{e}");
        assert!(raw(CHAT, "{").expect_err("syntax").starts_with("error unmarshaling request bodyMap:"));
        assert!(raw(MESSAGES, "nope").expect_err("syntax").starts_with("error unmarshaling request body:"));
        assert_eq!(err(MESSAGES, json!({"messages": []})), "invalid messages request: must have at least one message");
        assert!(
            err(MESSAGES, json!({"messages": [{"role": "user", "content": 5}]}))
                .starts_with("error parsing messages request: anthropic content")
        );
        assert!(
            err(MESSAGES, json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"strict": "yes"}]}))
                .starts_with("error parsing messages request: json: cannot unmarshal string")
        );
        for (path, body, want) in [
            ("/v1/completions", json!({"prompt": ""}), "invalid completions request: must have prompt field"),
            ("/v1/completions", json!({"prompt": null}), "invalid completions request: must have prompt field"),
            ("/v1/completions", json!({"prompt": [1, "a"]}), "invalid completions request: must have prompt field"),
            ("/v1/completions", json!({"prompt": [1.5]}), "invalid completions request: must have prompt field"),
            ("/v1/completions", json!({"prompt": [[1, 2]]}), "invalid completions request: must have prompt field"),
            ("/v1/embeddings", json!({"input": null}), "invalid embeddings request: must have input field"),
            ("/v1/responses", json!({"input": null}), "invalid responses request: must have input field"),
            ("/v1/conversations", json!({"items": []}), "invalid conversations request: must have items field"),
        ] {
            assert_eq!(err(path, body.clone()), want, "{path} {body}");
        }
    }

    #[test]
    fn fields_match_as_in_go() {
        // Go matches struct keys case-insensitively; the last matching key wins.
        assert_eq!(
            one(CHAT, json!({"Messages": [{"ROLE": "user", "Content": "hi"}]})).token_ids,
            pack_bytes(b"userhi")
        );
        let r = raw(
            CHAT,
            r#"{"messages": [{"role": "user", "content": "a"}], "MESSAGES": [{"role": "x", "content": "b"}]}"#,
        );
        assert_eq!(r, Ok(vec![EstimatedPrompt { token_ids: pack_bytes(b"xb"), mm: vec![] }]));
        // Strings decode as Go decodes them: escapes resolved, invalid UTF-8 replaced.
        let r = estimate_json(
            &EstimateConfig::default(),
            "/v1/completions",
            b"{\"prompt\": \"a\\u00e9\\ud800\xff\"}",
            &BTreeMap::new(),
        );
        assert_eq!(
            r,
            Ok(vec![EstimatedPrompt { token_ids: pack_bytes("a\u{e9}\u{FFFD}\u{FFFD}".as_bytes()), mm: vec![] }])
        );
    }

    #[test]
    fn cache_salt_from_body() {
        assert_eq!(cache_salt(&json!({"cache_salt": "s", "prompt": "x"})), Some("s".into()));
        assert_eq!(cache_salt(&json!({"Cache_Salt": "t"})), Some("t".into()));
        assert_eq!(cache_salt(&json!({"cache_salt": ""})), None);
        assert_eq!(cache_salt(&json!({"cache_salt": 5})), None);
        assert_eq!(cache_salt(&json!({"prompt": "x"})), None);
        assert_eq!(cache_salt(&json!("x")), None);
    }

    // --- pack_bytes is a little-endian reinterpretation -----------------------------------

    fn unpack_le(ids: &[u32]) -> Vec<u8> {
        ids.iter().flat_map(|t| t.to_le_bytes()).collect()
    }

    // Whether `pack` round-trips `b` through little-endian unpacking: the bytes, then the
    // zero pad up to a token boundary.
    fn round_trips(pack: fn(&[u8]) -> Vec<u32>, b: &[u8]) -> bool {
        let ids = pack(b);
        let bytes = unpack_le(&ids);
        ids.len() == b.len().div_ceil(4) && bytes[..b.len()] == *b && bytes[b.len()..].iter().all(|&z| z == 0)
    }

    // A deliberately wrong packing: big-endian.
    fn pack_bytes_be(b: &[u8]) -> Vec<u32> {
        b.chunks(4)
            .map(|c| {
                let mut w = [0u8; 4];
                w[..c.len()].copy_from_slice(c);
                u32::from_be_bytes(w)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn pack_bytes_inverts_little_endian_unpacking(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert!(round_trips(pack_bytes, &b));
        }

        #[test]
        fn unpacking_then_packing_is_identity(ids in proptest::collection::vec(any::<u32>(), 0..16)) {
            prop_assert_eq!(pack_bytes(&unpack_le(&ids)), ids);
        }
    }

    #[test]
    fn big_endian_packing_fails_the_property() {
        // The negative control: the property tells the wrong packing apart.
        assert!(round_trips(pack_bytes, b"abcde"));
        assert!(!round_trips(pack_bytes_be, b"abcde"));
        // Palindromic words are the only inputs it cannot tell apart.
        assert!(round_trips(pack_bytes_be, b"abba"));
        assert_ne!(pack_bytes_be(&unpack_le(&[1])), [1]);
    }
}
