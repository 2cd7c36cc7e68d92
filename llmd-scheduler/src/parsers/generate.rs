//! The pre-tokenized generate APIs: vLLM's `/inference/v1/generate` (`vllmhttp-parser`,
//! `token_ids`, usage as OpenAI's) and SGLang's `/generate` (`sglanghttp-parser`,
//! `input_ids`, usage under `meta_info`).

use serde_json::Value;

use super::gotypes::{self as go, R};
use super::{ParsedBody, Usage};

/// The router's refusal of a path not ending in `inference/v1/generate`.
pub(super) fn check_vllm_path(path: &str) -> R<()> {
    if path.ends_with("inference/v1/generate") { Ok(()) } else { Err(format!("unsupported path: {path}")) }
}

/// Reads a vLLM generate body: `token_ids` are required; `cache_salt`, the multimodal
/// `features` and `sampling_params.max_tokens` are read.
pub(super) fn parse_vllm(path: &str, body: Option<&Value>) -> R<ParsedBody> {
    check_vllm_path(path)?;
    let body = body.unwrap_or(&Value::Null);
    go::top_level(body, "map[string]interface {}")?;
    let g = decode_generate(body).map_err(|e| format!("invalid generate request: {e}"))?;
    if g.token_ids.is_empty() {
        return Err("invalid generate request: must have non-empty token_ids field".into());
    }
    Ok(ParsedBody {
        model: go::map_string(body, "model").unwrap_or_default().to_string(),
        prompt: String::new(),
        token_ids: Some(g.token_ids),
        stream: go::map_stream(body),
        multimodal: g.mm_items,
        cache_salt: Some(g.cache_salt).filter(|s| !s.is_empty()),
        // `max_tokens` lives under `sampling_params` in the generate wire format.
        max_output_tokens: body
            .get("sampling_params")
            .filter(|sp| sp.is_object())
            .and_then(|sp| go::max_output_tokens(sp, &["max_tokens"])),
        skip_response: false,
    })
}

/// What is read from a decoded `GenerateRequest`.
struct Generate {
    token_ids: Vec<u32>,
    cache_salt: String,
    /// Multimodal items: per modality, the hashes paired with placeholder ranges (up to
    /// the shorter list, as the router pairs them for its token producer).
    mm_items: usize,
}

// `GenerateRequest.UnmarshalJSON`: token ids as float64s (then each checked to be a
// uint32), the salt, and the multimodal features' maps.
fn decode_generate(body: &Value) -> R<Generate> {
    let raw = go::slice(go::field(body, "token_ids"), "[]float64", ".token_ids")?;
    let floats = raw.iter().map(|v| go::float(v, ".token_ids")).collect::<R<Vec<f64>>>()?;
    let cache_salt = go::string(go::field(body, "cache_salt"), ".cache_salt")?.to_string();
    let mut mm_items = 0;
    let features = go::field(body, "features");
    go::structure(features, "struct", ".features")?;
    if let Some(features) = features {
        let hashes = go::map(go::field(features, "mm_hashes"), "map[string][]string", ".features.mm_hashes")?;
        let ranges = go::map(
            go::field(features, "mm_placeholders"),
            "map[string][]struct { Offset int; Length int }",
            ".features.mm_placeholders",
        )?;
        let mut hash_counts = Vec::new();
        for (modality, list) in hashes.into_iter().flatten() {
            let list = go::slice(Some(list).filter(|l| !l.is_null()), "[]string", ".features.mm_hashes")?;
            for h in list {
                go::string(Some(h).filter(|h| !h.is_null()), ".features.mm_hashes")?;
            }
            hash_counts.push((modality, list.len()));
        }
        for (modality, list) in ranges.into_iter().flatten() {
            let list = go::slice(Some(list).filter(|l| !l.is_null()), "[]struct", ".features.mm_placeholders")?;
            for r in list {
                go::structure(Some(r).filter(|r| !r.is_null()), "struct", ".features.mm_placeholders")?;
                go::int(go::field(r, "offset"), ".features.mm_placeholders.offset")?;
                go::int(go::field(r, "length"), ".features.mm_placeholders.length")?;
            }
            if let Some((_, n)) = hash_counts.iter().find(|(m, _)| *m == modality) {
                mm_items += list.len().min(*n);
            }
        }
    }
    let mut token_ids = Vec::with_capacity(floats.len());
    for (i, f) in floats.into_iter().enumerate() {
        if f < 0.0 || f > f64::from(u32::MAX) || f.trunc() != f {
            return Err(format!("token_ids[{i}]: invalid value {}", go::go_float_v(f)));
        }
        token_ids.push(f as u32);
    }
    Ok(Generate { token_ids, cache_salt, mm_items })
}

/// The router's refusal of any path but `/generate` (whitespace and one trailing slash
/// aside): SGLang's native API has no prefix.
pub(super) fn check_sglang_path(path: &str) -> R<()> {
    let p = path.trim();
    let p = p.strip_suffix('/').unwrap_or(p);
    if p == "generate" || p == "/generate" { Ok(()) } else { Err(format!("unsupported path: {p}")) }
}

/// Reads an SGLang generate body: one prompt of `input_ids` (text, embeddings and batched
/// prompts are refused, as the router refuses them); `extra_key` is the cache salt. The
/// router reads no model from it.
pub(super) fn parse_sglang(path: &str, body: Option<&Value>) -> R<ParsedBody> {
    check_sglang_path(path)?;
    let body = body.unwrap_or(&Value::Null);
    let invalid = |e: String| format!("invalid generate request: {e}");
    go::top_level(body, "sglanghttp.sgLangGenerateWire").map_err(invalid)?;
    let stream = go::boolean(go::field(body, "stream"), "sgLangGenerateWire.stream").map_err(invalid)?;
    let Some(input_ids) = go::field(body, "input_ids") else {
        return Err("invalid generate request: input_ids must be provided".into());
    };
    let cache_salt = match go::field(body, "extra_key") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("unsupported generate request: extra_key must be a string".into()),
    };
    // `[]uint32`: unsigned integer literals that fit (`null` elements are 0).
    let ids: Option<Vec<u32>> = input_ids.as_array().and_then(|a| {
        a.iter().map(|v| if v.is_null() { Some(0) } else { v.as_u64().and_then(|n| u32::try_from(n).ok()) }).collect()
    });
    let Some(ids) = ids else {
        return Err("invalid generate request: input_ids must be an array of uint32 integers".into());
    };
    if ids.is_empty() {
        return Err("invalid generate request: input_ids cannot be empty".into());
    }
    // `sampling_params.max_new_tokens` when it decodes as a non-negative int64.
    let max_new_tokens = go::field(body, "sampling_params")
        .filter(|sp| sp.is_object())
        .and_then(|sp| go::field(sp, "max_new_tokens"))
        .and_then(Value::as_i64)
        .and_then(|n| u64::try_from(n).ok());
    Ok(ParsedBody {
        model: String::new(),
        prompt: String::new(),
        token_ids: Some(ids),
        stream: stream.unwrap_or(false),
        multimodal: 0,
        cache_salt: Some(cache_salt).filter(|s| !s.is_empty()),
        max_output_tokens: max_new_tokens,
        skip_response: false,
    })
}

/// The router's SGLang `ParseResponse`: `meta_info`'s counts; in a stream, those of the
/// first event whose `meta_info.finish_reason` is set (the last event).
pub(super) fn sglang_response(chunk: &[u8], event_stream: bool) -> R<Option<Usage>> {
    if chunk.is_empty() {
        return Ok(None);
    }
    if event_stream {
        return Ok(sglang_streaming(chunk));
    }
    let v: Value = serde_json::from_slice(chunk).map_err(|e| e.to_string())?;
    meta_info_usage(&v).map(|(u, _)| u)
}

// Decodes `sgLangResponse`: the usage (`None` when neither count is given) and whether
// `finish_reason` is set.
fn meta_info_usage(v: &Value) -> R<(Option<Usage>, bool)> {
    go::top_level(v, "sglanghttp.sgLangResponse")?;
    let meta = go::field(v, "meta_info");
    go::structure(meta, "struct", "sgLangResponse.meta_info")?;
    let get = |k: &str| meta.and_then(|m| go::field(m, k));
    // `*int`: unset when absent or null; llmd's counts are unsigned.
    let count = |k: &str| -> R<Option<usize>> {
        let n = get(k).map(|n| go::int(Some(n), &format!("sgLangResponse.meta_info.{k}"))).transpose()?;
        Ok(n.map(|n| usize::try_from(n).unwrap_or(0)))
    };
    let (prompt, completion, cached) = (count("prompt_tokens")?, count("completion_tokens")?, count("cached_tokens")?);
    let finished = get("finish_reason").is_some();
    if prompt.is_none() && completion.is_none() {
        return Ok((None, finished));
    }
    let (p, c) = (prompt.unwrap_or(0), completion.unwrap_or(0));
    let details = cached.map(|cached_tokens| llmd_openai::PromptTokensDetails { cached_tokens });
    Ok((
        Some(Usage { prompt_tokens: p, completion_tokens: c, total_tokens: p + c, prompt_tokens_details: details }),
        finished,
    ))
}

fn sglang_streaming(chunk: &[u8]) -> Option<Usage> {
    let text = String::from_utf8_lossy(chunk);
    for line in text.trim().split('\n') {
        let Some(data) = line.trim().strip_prefix("data: ") else { continue };
        let data = data.trim();
        if data == "[DONE]" {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else { continue };
        // Intermediate events carry no `finish_reason`; the final one does.
        match meta_info_usage(&v) {
            Ok((usage, true)) => return usage,
            _ => continue,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::BodyParser;
    use super::*;

    fn vllm(body: Value) -> R<ParsedBody> {
        BodyParser::VllmHttp.parse("/inference/v1/generate", &body)
    }

    fn sglang(body: Value) -> R<ParsedBody> {
        BodyParser::SglangHttp.parse("/generate", &body)
    }

    fn ids(ids: &[u32]) -> ParsedBody {
        ParsedBody { token_ids: Some(ids.to_vec()), ..ParsedBody::default() }
    }

    /// `TestVllmHTTPParser_ParseRequest_Generate` and `_MaxOutputTokens`.
    #[test]
    fn vllm_generate_bodies() {
        assert_eq!(vllm(json!({"token_ids": [1, 2, 3]})), Ok(ids(&[1, 2, 3])));
        let salted = ParsedBody { cache_salt: Some("abc123".into()), ..ids(&[10, 20, 30]) };
        assert_eq!(vllm(json!({"token_ids": [10, 20, 30], "cache_salt": "abc123"})), Ok(salted));
        let sampled =
            json!({"token_ids": [1, 2, 3], "sampling_params": {"temperature": 0.8, "max_tokens": 128}, "stream": true});
        let want = ParsedBody { stream: true, max_output_tokens: Some(128), ..ids(&[1, 2, 3]) };
        assert_eq!(vllm(sampled), Ok(want));
        assert_eq!(vllm(json!({"token_ids": [1], "sampling_params": {"temperature": 0.8}})), Ok(ids(&[1])));
        let named = ParsedBody { model: "m".into(), ..ids(&[5, 6, 7]) };
        assert_eq!(
            BodyParser::VllmHttp.parse("/x/inference/v1/generate?q=1", &json!({"token_ids": [5, 6, 7], "model": "m"})),
            Ok(named)
        );
        let mm = json!({
            "token_ids": [151644, 872, 198, 3838, 374, 279, 6722, 315, 9625, 30, 151645, 198, 151644, 77091, 198],
            "features": {"mm_hashes": {"image": ["abc123hash", "def456hash"]},
                "mm_placeholders": {"image": [{"offset": 1, "length": 3}, {"offset": 4, "length": 3}]}}});
        assert_eq!(vllm(mm).map(|p| (p.multimodal, p.token_ids.map(|t| t.len()))), Ok((2, Some(15))));
        // Floats that are integers are ids, as float64 decoding takes them.
        assert_eq!(vllm(json!({"token_ids": [1.0, 2e0]})), Ok(ids(&[1, 2])));

        let missing = "invalid generate request: must have non-empty token_ids field";
        assert_eq!(vllm(json!({"sampling_params": {"temperature": 0.8}})), Err(missing.into()));
        assert_eq!(vllm(json!({"token_ids": []})), Err(missing.into()));
    }

    /// `TestVllmHTTPParser_ParseRequest_GenerateErrorPaths` and
    /// `TestVllmHTTPParser_RejectsNonGeneratePaths`.
    #[test]
    fn vllm_generate_refusals() {
        assert_eq!(
            vllm(json!({"token_ids": [1, 2, -1]})),
            Err("invalid generate request: token_ids[2]: invalid value -1".into())
        );
        assert_eq!(
            vllm(json!({"token_ids": [1.5]})),
            Err("invalid generate request: token_ids[0]: invalid value 1.5".into())
        );
        assert_eq!(
            vllm(json!({"token_ids": [4294967296u64]})),
            Err("invalid generate request: token_ids[0]: invalid value 4.294967296e+09".into())
        );
        for bad in [
            json!({"token_ids": "1"}),
            json!({"token_ids": ["1"]}),
            json!({"token_ids": [1], "cache_salt": 2}),
            json!({"token_ids": [1], "features": {"mm_placeholders": {"image": [{"offset": 1.5}]}}}),
        ] {
            let got = vllm(bad.clone());
            assert!(
                got.as_ref().is_err_and(|e| e.starts_with("invalid generate request: json: cannot unmarshal")),
                "{bad}: {got:?}"
            );
        }
        assert!(
            vllm(json!([1]))
                .is_err_and(|e| e == "json: cannot unmarshal array into Go value of type map[string]interface {}")
        );
        let other = BodyParser::VllmHttp.parse("/v1/completions", &json!({"prompt": "hello world"}));
        assert_eq!(other, Err("unsupported path: /v1/completions".into()));
        assert!(BodyParser::VllmHttp.parse_bytes("/inference/v1/generate", b"{").is_err());
        assert!(BodyParser::VllmHttp.parse_bytes("/v1/x", b"{").is_err_and(|e| e.starts_with("unsupported path")));
    }

    /// `TestSGLangHTTPParser_ParseRequest`.
    #[test]
    fn sglang_generate_bodies() {
        assert_eq!(sglang(json!({"input_ids": [1, 2, 3]})), Ok(ids(&[1, 2, 3])));
        let salted = ParsedBody { cache_salt: Some("salt-abc".into()), ..ids(&[10, 20]) };
        assert_eq!(sglang(json!({"input_ids": [10, 20], "extra_key": "salt-abc"})), Ok(salted));
        let capped = ParsedBody { max_output_tokens: Some(256), ..ids(&[1, 2, 3]) };
        assert_eq!(sglang(json!({"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 256}})), Ok(capped));
        let streamed = ParsedBody { stream: true, ..ids(&[1, 2, 3]) };
        assert_eq!(sglang(json!({"input_ids": [1, 2, 3], "stream": true})), Ok(streamed));
        assert_eq!(sglang(json!({"text": "ignored by the parser", "input_ids": [7, 8]})), Ok(ids(&[7, 8])));
        // No model is read; a malformed cap is no cap.
        assert_eq!(
            sglang(json!({"input_ids": [5], "model": "m", "sampling_params": {"max_new_tokens": -1}})),
            Ok(ids(&[5]))
        );
        assert_eq!(BodyParser::SglangHttp.parse(" /generate/ ", &json!({"input_ids": [5, 6, 7]})), Ok(ids(&[5, 6, 7])));
        let err = |b: Value| sglang(b).err().unwrap_or_default();
        assert!(
            err(json!({"input_ids": [1, 2], "extra_key": ["tenant-a", "tenant-b"]}))
                .contains("extra_key must be a string")
        );
        assert!(err(json!({"sampling_params": {"temperature": 0.8}})).contains("input_ids must be provided"));
        assert!(err(json!({"input_ids": []})).contains("input_ids cannot be empty"));
        let wrong = BodyParser::SglangHttp.parse("/v1/completions", &json!({"input_ids": [1, 2, 3]}));
        assert_eq!(wrong, Err("unsupported path: /v1/completions".into()));
    }

    /// `TestSGLangHTTPParser_ParseRequest_ErrorPaths` and
    /// `TestSGLangHTTPParser_RejectsPathWithoutSegmentBoundary`.
    #[test]
    fn sglang_refusals() {
        let uint32s = "invalid generate request: input_ids must be an array of uint32 integers";
        for (body, want) in [
            (r#"{"input_ids":[1,2,-1]}"#, uint32s),
            (r#"{"input_ids":[1,2.5]}"#, uint32s),
            (r#"{"input_ids":[4294967296]}"#, uint32s),
            (r#"{"input_ids":[[1,2],[3,4]]}"#, uint32s),
            (r#"{"input_ids":[]}"#, "invalid generate request: input_ids cannot be empty"),
            (r#"{"input_embeds":[[0.1,0.2]]}"#, "invalid generate request: input_ids must be provided"),
            (r#"{"text":"hello"}"#, "invalid generate request: input_ids must be provided"),
            (
                r#"{"input_ids":[1,2],"extra_key":["a","b"]}"#,
                "unsupported generate request: extra_key must be a string",
            ),
        ] {
            assert_eq!(
                BodyParser::SglangHttp.parse_bytes("/generate", body.as_bytes()),
                Err(want.to_string()),
                "{body}"
            );
        }
        let stream = BodyParser::SglangHttp.parse_bytes("/generate", br#"{"input_ids":[1],"stream":"yes"}"#);
        assert!(stream.is_err_and(|e| e.starts_with("invalid generate request: json: cannot unmarshal string")));
        assert!(
            BodyParser::SglangHttp
                .parse_bytes("/generate", b"nope")
                .is_err_and(|e| e.starts_with("invalid generate request: "))
        );
        for path in
            ["/regenerate", "/health_generate", "/vertex_generate", "/inference/v1/generate", "/prefix/generate"]
        {
            let got = BodyParser::SglangHttp.parse_bytes(path, br#"{"input_ids":[1]}"#);
            assert_eq!(got, Err(format!("unsupported path: {path}")));
        }
    }

    /// `TestSGLangHTTPParser_ParseResponse`.
    #[test]
    fn sglang_usage() {
        let usage = |p: usize, c: usize, cached: Option<usize>| {
            Some(Usage {
                prompt_tokens: p,
                completion_tokens: c,
                total_tokens: p + c,
                prompt_tokens_details: cached.map(|cached_tokens| llmd_openai::PromptTokensDetails { cached_tokens }),
            })
        };
        let json = |b: &str| BodyParser::SglangHttp.parse_response(b.as_bytes(), false);
        let sse = |b: &str| BodyParser::SglangHttp.parse_response(b.as_bytes(), true);
        assert_eq!(
            json(r#"{"text":"hello","meta_info":{"prompt_tokens":10,"completion_tokens":5}}"#),
            Ok(usage(10, 5, None))
        );
        assert_eq!(
            json(
                r#"{"text":"hi","output_ids":[1,2],"meta_info":{"id":"req-1","prompt_tokens":8,"completion_tokens":3,"cached_tokens":2}}"#
            ),
            Ok(usage(8, 3, Some(2)))
        );
        let stream = "data: {\"text\":\"he\",\"meta_info\":{\"prompt_tokens\":10,\"completion_tokens\":2}}\n\n\
            data: {\"text\":\"hello\",\"meta_info\":{\"prompt_tokens\":10,\"completion_tokens\":5,\"finish_reason\":{\"type\":\"stop\"}}}\n\n\
            data: [DONE]\n\n";
        assert_eq!(sse(stream), Ok(usage(10, 5, None)));
        assert_eq!(
            sse("data: {\"text\":\"he\",\"meta_info\":{\"prompt_tokens\":10,\"completion_tokens\":2}}\n\n"),
            Ok(None)
        );
        let event = "event: generation\ndata: {\"text\":\"hello\",\"meta_info\":{\"prompt_tokens\":10,\"completion_tokens\":5,\"finish_reason\":{\"type\":\"stop\"}}}\n\n";
        assert_eq!(sse(event), Ok(usage(10, 5, None)));
        assert_eq!(sse("data: [DONE]\n\n"), Ok(None));
        assert_eq!(json(""), Ok(None));
        assert_eq!(json(r#"{"text":"","meta_info":{"prompt_tokens":0,"completion_tokens":0}}"#), Ok(usage(0, 0, None)));
        assert!(json(r#"{"meta_info":"#).is_err());
        // Whole bodies, told apart by their first line.
        assert_eq!(BodyParser::SglangHttp.parse_usage(stream.as_bytes()), usage(10, 5, None));
        assert_eq!(BodyParser::SglangHttp.parse_usage(br#"{"meta_info":{"prompt_tokens":4}}"#), usage(4, 0, None));
    }
}
