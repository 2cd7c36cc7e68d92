//! A request as the scheduler sees it.

use std::collections::BTreeMap;

/// What the picker knows about one inference request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LlmRequest {
    /// Request id (`x-request-id`).
    pub id: String,
    /// Target model (or LoRA adapter) name.
    pub model: String,
    /// Prompt text (completions `prompt`, or chat messages flattened).
    pub prompt: String,
    /// Prompt token ids, when the caller tokenized (precise prefix scoring needs them).
    pub token_ids: Option<Vec<u32>>,
    /// Request headers, lower-case names.
    pub headers: BTreeMap<String, String>,
    /// Multimodal items in the prompt (images, audio, video): the E/P/D encode stage
    /// runs for requests that have some.
    pub multimodal: usize,
    /// Attributes request-control plugins set before the pick (session ids, agent
    /// identity), read by filters and scorers.
    pub attributes: crate::plugins::requestcontrol::RequestAttributes,
    /// Content hashes of the prompt's multimodal items, each once, in prompt order
    /// ([`multimodal_hashes`]): `mm-embeddings-cache-producer` remembers which endpoints
    /// were sent which items, so a repeated image routes where it was encoded.
    pub mm_hashes: Vec<String>,
}

/// The multimodal content parts of a chat body's messages (`image_url`, `video_url`,
/// `input_audio`, `audio_url`, and the Anthropic and Responses spellings), as
/// llm-d-router's token producer marks them.
pub fn count_multimodal(body: &serde_json::Value) -> usize {
    const KINDS: [&str; 8] =
        ["image_url", "video_url", "input_audio", "audio_url", "image", "input_image", "video", "audio"];
    let parts = |m: &serde_json::Value| -> usize {
        m.get("content").and_then(serde_json::Value::as_array).map_or(0, |a| {
            a.iter()
                .filter(|p| p.get("type").and_then(serde_json::Value::as_str).is_some_and(|t| KINDS.contains(&t)))
                .count()
        })
    };
    let in_list =
        |key: &str| body.get(key).and_then(serde_json::Value::as_array).map_or(0, |ms| ms.iter().map(parts).sum());
    in_list("messages") + in_list("input")
}

/// The content hashes of a body's multimodal items, each once, in prompt order: what
/// llm-d-router's `mm-embeddings-cache-producer` reads from the token producer's
/// multimodal features, hashed as its estimate backend hashes them (`appendMMAsset`:
/// XXH64, seed 0, of the item's content, in lower-case hex without leading zeros), so the
/// same image hashes the same in every request.
///
/// - Chat messages (`messages[].content` blocks; a string content has no items):
///   `image_url` hashes `image_url.url`, `video_url` hashes `video_url.url`, and
///   `input_audio` / `audio_url` hash `input_audio.data` followed by `input_audio.format`
///   (an `audio_url` block has no field the router reads, so all of them hash as "").
/// - Anthropic messages: an `image` block hashes its `source.url`, else its base64
///   `source.data`, and has no item without either; an image inside a `tool_result`
///   (whose content is not a string) hashes its URL, else
///   `data:<media_type, default image/jpeg>;base64,<data>`.
/// - A vLLM generate body (`token_ids` with `features`): the hashes it carries, per
///   modality with a placeholder range each (paired up to the shorter list), by offset.
///
/// The router picks the protocol by the request path; from the body alone both message
/// spellings are read (a chat body has no `image` or `tool_result` blocks, an Anthropic
/// one no `image_url`). Keys match exactly, else ignoring ASCII case, as Go's
/// `encoding/json` does; a block whose fields have the wrong JSON types, which the router
/// refuses with the whole request, has no item here. Responses and completions bodies
/// have no items (the router's estimate backend reports none for them).
pub fn multimodal_hashes(body: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    let mut out: Vec<String> = Vec::new();
    let mut add = |h: String| {
        if !h.is_empty() && !out.contains(&h) {
            out.push(h);
        }
    };
    let hash = |content: &str| format!("{:x}", xxh64(content.as_bytes()));
    if let (Some(Value::Array(_)), Some(features)) = (field(body, "token_ids"), field(body, "features")) {
        for h in generate_feature_hashes(features) {
            add(h);
        }
        return out;
    }
    let Some(Value::Array(messages)) = field(body, "messages") else { return out };
    for msg in messages {
        // A string content is text only; anything but a list of blocks has no items.
        let Some(Value::Array(blocks)) = field(msg, "content") else { continue };
        for block in blocks {
            match field(block, "type").and_then(Value::as_str) {
                Some("image_url") => {
                    if let Some(url) = string_at(block, &["image_url", "url"]) {
                        add(hash(url));
                    }
                }
                Some("video_url") => {
                    if let Some(url) = string_at(block, &["video_url", "url"]) {
                        add(hash(url));
                    }
                }
                Some("input_audio" | "audio_url") => {
                    let (Some(data), Some(format)) =
                        (string_at(block, &["input_audio", "data"]), string_at(block, &["input_audio", "format"]))
                    else {
                        continue;
                    };
                    add(hash(&format!("{data}{format}")));
                }
                Some("image") => {
                    // placeholderForAnthropicImage: the URL, else the raw base64 payload.
                    let url = string_at(block, &["source", "url"]).unwrap_or_default();
                    let data = string_at(block, &["source", "data"]).unwrap_or_default();
                    if !url.is_empty() {
                        add(hash(url));
                    } else if !data.is_empty() {
                        add(hash(data));
                    }
                }
                Some("tool_result") => {
                    let Some(Value::Array(items)) = field(block, "content") else { continue };
                    for item in items.iter().filter(|i| field(i, "type").and_then(Value::as_str) == Some("image")) {
                        if let Some(url) = anthropic_image_url(item) {
                            add(hash(&url));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// `v[key]`: the exact key, else one equal ignoring ASCII case (Go's `encoding/json`
/// matching); `null` counts as absent.
fn field<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    let obj = v.as_object()?;
    obj.get(key)
        .or_else(|| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
        .filter(|v| !v.is_null())
}

/// The string at `path` below `v`: `Some("")` when a step is absent (Go's zero value),
/// `None` when a step has the wrong JSON type (the router refuses such a body).
fn string_at<'a>(v: &'a serde_json::Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for key in path {
        if !cur.is_object() {
            return None;
        }
        match field(cur, key) {
            Some(next) => cur = next,
            None => return Some(""),
        }
    }
    cur.as_str()
}

/// `anthropicImageToURL` of an image block's `source`: its URL when it is a URL source
/// (or has one), else a data URL of its base64 data; `None` when there is neither.
fn anthropic_image_url(item: &serde_json::Value) -> Option<String> {
    let ty = string_at(item, &["source", "type"])?;
    let url = string_at(item, &["source", "url"])?;
    if ty == "url" || !url.is_empty() {
        return Some(url.to_string()).filter(|u| !u.is_empty());
    }
    let data = string_at(item, &["source", "data"])?;
    if data.is_empty() {
        return None;
    }
    let media = string_at(item, &["source", "media_type"])?;
    let media = if media.is_empty() { "image/jpeg" } else { media };
    Some(format!("data:{media};base64,{data}"))
}

/// A generate body's `features` hashes (`convertMMFeaturesToUpstream`): per modality
/// with a placeholder range for each hash (paired up to the shorter list), ordered by
/// range offset. Go visits modalities in random map order and sorts unstably; here
/// modalities go in key order and the sort is stable.
fn generate_feature_hashes(features: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    let (Some(Value::Object(hashes)), Some(Value::Object(ranges))) =
        (field(features, "mm_hashes"), field(features, "mm_placeholders"))
    else {
        return Vec::new();
    };
    let mut items: Vec<(i64, String)> = Vec::new();
    let mut modalities: Vec<&String> = hashes.keys().collect();
    modalities.sort();
    for modality in modalities {
        let (Some(Value::Array(hs)), Some(Value::Array(rs))) = (hashes.get(modality), ranges.get(modality)) else {
            continue;
        };
        for (h, r) in hs.iter().zip(rs) {
            let offset = field(r, "offset").and_then(Value::as_i64).unwrap_or(0);
            if let Some(h) = h.as_str() {
                items.push((offset, h.to_string()));
            }
        }
    }
    items.sort_by_key(|(offset, _)| *offset);
    items.into_iter().map(|(_, h)| h).collect()
}

/// XXH64 with seed 0 (Go's `github.com/cespare/xxhash/v2`), the hash llm-d-router's
/// estimate backend gives multimodal content.
fn xxh64(data: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(data, 0)
}

impl LlmRequest {
    /// A request for `model` with a text prompt.
    pub fn new(id: impl Into<String>, model: impl Into<String>, prompt: impl Into<String>) -> Self {
        LlmRequest { id: id.into(), model: model.into(), prompt: prompt.into(), ..Default::default() }
    }

    /// Prompt length in tokens: the token ids when known, else llm-d-router's estimate
    /// of a token per four bytes, rounded up (its `estimate` token producer packs the
    /// prompt's bytes into 4-byte pseudo-tokens, the last one zero-padded).
    pub fn prompt_tokens(&self) -> usize {
        self.token_ids.as_ref().map_or(self.prompt.len().div_ceil(4), Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn hex(s: &str) -> String {
        format!("{:x}", xxh64(s.as_bytes()))
    }

    fn chat(blocks: serde_json::Value) -> serde_json::Value {
        json!({"model": "m", "messages": [{"role": "user", "content": blocks}]})
    }

    #[test]
    fn xxh64_matches_the_reference() {
        // XXH64 seed 0 reference values (xxhash's sanity tests, python-xxhash's docs).
        assert_eq!(xxh64(b""), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64(b"a"), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxh64(b"abc"), 0x44BC_2CF5_AD77_0999);
        assert_eq!(xxh64(b"Nobody inspects the spammish repetition"), 0xFBCE_A83C_8A37_8BF1);
        // Hex as Go's strconv.FormatUint(sum, 16): lower case, no leading zeros.
        assert_eq!(hex(""), "ef46db3751d8e999");
    }

    #[test]
    fn identical_images_hash_the_same_and_different_ones_differ() {
        let cat = "https://example.com/cat.png";
        let dog = "data:image/png;base64,iVBORw0KGgo=";
        let a = multimodal_hashes(&chat(json!([
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": cat}},
        ])));
        let b = multimodal_hashes(&json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": cat, "detail": "high"}}]},
        ]}));
        let c = multimodal_hashes(&chat(json!([{"type": "image_url", "image_url": {"url": dog}}])));
        assert_eq!(a, vec![hex(cat)]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        // An item repeated in one request counts once; order is the prompt's.
        let both = multimodal_hashes(&chat(json!([
            {"type": "image_url", "image_url": {"url": dog}},
            {"type": "image_url", "image_url": {"url": cat}},
            {"type": "image_url", "image_url": {"url": dog}},
        ])));
        assert_eq!(both, vec![hex(dog), hex(cat)]);
    }

    #[test]
    fn chat_video_and_audio_blocks_hash_as_the_estimate_backend() {
        let h = multimodal_hashes(&chat(json!([
            {"type": "video_url", "video_url": {"url": "https://example.com/clip.mp4"}},
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        ])));
        assert_eq!(h, vec![hex("https://example.com/clip.mp4"), hex("AAAAwav")]);
        // audio_url carries no field the router reads: its content is "".
        let h = multimodal_hashes(&chat(json!([{"type": "audio_url", "audio_url": {"url": "https://x/a.wav"}}])));
        assert_eq!(h, vec![hex("")]);
        // A missing url hashes "" as Go's zero value; keys match ignoring case.
        assert_eq!(multimodal_hashes(&chat(json!([{"type": "image_url"}]))), vec![hex("")]);
        let upper = multimodal_hashes(&chat(json!([{"type": "image_url", "Image_URL": {"URL": "u"}}])));
        assert_eq!(upper, vec![hex("u")]);
    }

    #[test]
    fn bodies_without_typed_media_have_no_items() {
        assert!(multimodal_hashes(&json!({"messages": [{"role": "user", "content": "hi"}]})).is_empty());
        assert!(multimodal_hashes(&json!({"prompt": "hi"})).is_empty());
        assert!(multimodal_hashes(&json!(null)).is_empty());
        // Responses bodies: the estimate backend reports no features for them.
        let responses = json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]});
        assert!(multimodal_hashes(&responses).is_empty());
        // Wrong JSON types (the router refuses the request): no item.
        assert!(multimodal_hashes(&chat(json!([{"type": "image_url", "image_url": "u"}]))).is_empty());
        assert!(multimodal_hashes(&chat(json!([{"type": "image_url", "image_url": {"url": 7}}]))).is_empty());
    }

    #[test]
    fn anthropic_images_hash_their_url_or_payload() {
        let body = json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
            {"type": "image", "source": {"type": "base64"}},
            {"type": "tool_result", "tool_use_id": "t", "content": [
                {"type": "text", "text": "shot"},
                {"type": "image", "source": {"type": "base64", "data": "QUJD"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": "R0lG"}},
            ]},
            {"type": "tool_result", "tool_use_id": "u", "content": "plain"},
        ]}]});
        assert_eq!(
            multimodal_hashes(&body),
            vec![
                hex("https://example.com/a.png"),
                // A top-level base64 image hashes its raw payload...
                hex("iVBOR"),
                // ...one inside a tool result its data URL (image/jpeg by default).
                hex("data:image/jpeg;base64,QUJD"),
                hex("data:image/gif;base64,R0lG"),
            ]
        );
    }

    /// The hashes are the token producer's estimate backend's (the router's
    /// `appendMMAsset`), each once, for every protocol that reports items.
    #[test]
    fn hashes_agree_with_the_estimate_backend() {
        use crate::tokenproducer::estimate::{EstimateConfig, estimate};
        let chat = json!({"model": "m", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [
                {"type": "text", "text": "compare"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}},
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ]},
        ]});
        let messages = json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/b.png"}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "tool_result", "tool_use_id": "t", "content": [
                {"type": "image", "source": {"type": "base64", "data": "QUJD"}},
            ]},
        ]}]});
        let generate = json!({"token_ids": [1, 2, 3], "features": {
            "mm_hashes": {"image": ["i1", "i2"], "video": ["v1"]},
            "mm_placeholders": {"image": [{"offset": 0, "length": 1}, {"offset": 2, "length": 1}], "video": [{"offset": 1, "length": 1}]},
        }});
        for (path, body) in
            [("/v1/chat/completions", chat), ("/v1/messages", messages), ("/inference/v1/generate", generate)]
        {
            let prompts = estimate(&EstimateConfig::default(), path, &body, &BTreeMap::new()).expect(path);
            let mut want: Vec<String> = Vec::new();
            for item in prompts.iter().flat_map(|p| &p.mm) {
                if !want.contains(&item.hash) {
                    want.push(item.hash.clone());
                }
            }
            assert!(!want.is_empty(), "{path}");
            assert_eq!(multimodal_hashes(&body), want, "{path}");
        }
    }

    #[test]
    fn generate_bodies_carry_their_own_hashes() {
        let body = json!({"token_ids": [1, 2, 3], "features": {
            "mm_hashes": {"video": ["v1"], "image": ["i1", "i2", ""], "audio": ["a1"]},
            "mm_placeholders": {"image": [{"offset": 9, "length": 1}, {"offset": 1, "length": 1}], "video": [{"offset": 2, "length": 5}]},
        }});
        // Audio has no ranges, i2 pairs with offset 1; ordered by offset.
        assert_eq!(multimodal_hashes(&body), vec!["i2", "v1", "i1"]);
    }
}
