//! The decode response's `usage.prompt_tokens_details.cached_tokens`, rewritten with the
//! prefiller's value (llm-d `pkg/sidecar/proxy/cached_tokens_usage_rewriter.go`).
//!
//! As llm-d: a JSON body is rewritten whole; an SSE stream line by line (only complete
//! `data: ` lines carrying a JSON object with a `usage` object); a `usage` without
//! `prompt_tokens_details` (or with it `null`) gets `{"cached_tokens": n}`; bodies that
//! need no change pass through byte for byte.

use serde_json::{Map, Value};

const DETAILS: &str = "prompt_tokens_details";
const CACHED: &str = "cached_tokens";

/// The prefiller's `usage.prompt_tokens_details.cached_tokens`; 0 when absent (vLLM
/// writes `prompt_tokens_details: null` when nothing was cached).
pub(super) fn prefill_cached_tokens(response: &Value) -> i64 {
    response.get("usage").and_then(|u| u.get(DETAILS)).and_then(|d| d.get(CACHED)).and_then(int_value).unwrap_or(0)
}

/// Go's `intValue`: JSON numbers as integers (floats truncated).
fn int_value(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
}

/// Sets the field; true when the response changed.
fn set_cached_tokens(response: &mut Map<String, Value>, cached: i64) -> bool {
    let Some(Value::Object(usage)) = response.get_mut("usage") else {
        return false;
    };
    match usage.get_mut(DETAILS) {
        Some(Value::Object(details)) => {
            if details.get(CACHED).and_then(int_value) == Some(cached) {
                false
            } else {
                details.insert(CACHED.to_string(), Value::from(cached));
                true
            }
        }
        _ => {
            let mut details = Map::new();
            details.insert(CACHED.to_string(), Value::from(cached));
            usage.insert(DETAILS.to_string(), Value::Object(details));
            true
        }
    }
}

/// A JSON object body rewritten: `None` when `body` is not a JSON object, the same bytes
/// when nothing changed.
fn rewrite_json(body: &[u8], cached: i64) -> Option<Vec<u8>> {
    let Ok(Value::Object(mut response)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    if !set_cached_tokens(&mut response, cached) {
        return Some(body.to_vec());
    }
    Some(serde_json::to_vec(&Value::Object(response)).unwrap_or_else(|_| body.to_vec()))
}

/// One SSE line (with its line ending, if any) rewritten when it is a JSON `data: `
/// line.
fn rewrite_sse_line(line: &[u8], cached: i64) -> Vec<u8> {
    let trimmed_len = line.iter().rposition(|b| *b != b'\r' && *b != b'\n').map_or(0, |i| i + 1);
    let (content, ending) = line.split_at(trimmed_len);
    let Some(data) = content.strip_prefix(b"data: ") else {
        return line.to_vec();
    };
    match rewrite_json(data, cached) {
        Some(new) if new.as_slice() != data => {
            let mut out = Vec::with_capacity(new.len() + 8);
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(&new);
            out.extend_from_slice(ending);
            out
        }
        _ => line.to_vec(),
    }
}

/// A whole (non-streamed) body: as JSON, else as SSE lines, else unchanged.
pub(super) fn rewrite_body(body: &[u8], cached: i64) -> Vec<u8> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return body.to_vec();
    }
    if let Some(out) = rewrite_json(body, cached) {
        return out;
    }
    let mut out = Vec::with_capacity(body.len());
    for line in body.split_inclusive(|b| *b == b'\n') {
        out.extend_from_slice(&rewrite_sse_line(line, cached));
    }
    out
}

/// Rewrites an SSE stream chunk by chunk: complete lines go out as they arrive, a
/// partial line waits for its end (or for [`SseRewriter::finish`]).
#[derive(Debug)]
pub(super) struct SseRewriter {
    buf: Vec<u8>,
    cached: i64,
}

impl SseRewriter {
    pub(super) fn new(cached: i64) -> Self {
        SseRewriter { buf: Vec::new(), cached }
    }

    /// The complete lines now available, rewritten.
    pub(super) fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.buf.extend_from_slice(chunk);
        let Some(last_nl) = self.buf.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        let rest = self.buf.split_off(last_nl + 1);
        let complete = std::mem::replace(&mut self.buf, rest);
        let mut out = Vec::with_capacity(complete.len());
        for line in complete.split_inclusive(|b| *b == b'\n') {
            out.extend_from_slice(&rewrite_sse_line(line, self.cached));
        }
        out
    }

    /// What is left at the end of the stream (a last line without its newline).
    pub(super) fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.buf);
        if rest.is_empty() { rest } else { rewrite_sse_line(&rest, self.cached) }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn json_rewrites_creates_and_leaves_alone() {
        let body = br#"{"usage":{"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":0}}}"#;
        let out: Value = serde_json::from_slice(&rewrite_body(body, 7)).unwrap();
        assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 7);
        let body = br#"{"usage":{"prompt_tokens":5,"prompt_tokens_details":null}}"#;
        let out: Value = serde_json::from_slice(&rewrite_body(body, 3)).unwrap();
        assert_eq!(out["usage"]["prompt_tokens_details"], json!({"cached_tokens": 3}));
        let body = br#"{"id":"x",  "choices":[]}"#;
        assert_eq!(rewrite_body(body, 3), body.to_vec());
        let body = br#"{"usage": {"prompt_tokens_details": {"cached_tokens": 3}}}"#;
        assert_eq!(rewrite_body(body, 3), body.to_vec());
        assert_eq!(rewrite_body(b"not json", 3), b"not json".to_vec());
    }

    #[test]
    fn sse_split_lines() {
        let mut rw = SseRewriter::new(9);
        let mut out = rw.push(b"data: {\"choices\":[]}\n\ndata: {\"usage\":{\"prompt_");
        out.extend(rw.push(b"tokens\":1}}\n\ndata: [DONE]\n\n"));
        out.extend(rw.finish());
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "data: {\"choices\":[]}\n\ndata: {\"usage\":{\"prompt_tokens\":1,\"prompt_tokens_details\":{\"cached_tokens\":9}}}\n\ndata: [DONE]\n\n"
        );
        let mut rw = SseRewriter::new(1);
        assert!(rw.push(b"data: {\"usage\":{}}").is_empty());
        assert_eq!(rw.finish(), b"data: {\"usage\":{\"prompt_tokens_details\":{\"cached_tokens\":1}}}".to_vec());
    }

    #[test]
    fn prefill_value() {
        assert_eq!(prefill_cached_tokens(&json!({"usage":{"prompt_tokens_details":{"cached_tokens":4}}})), 4);
        assert_eq!(prefill_cached_tokens(&json!({"usage":{"prompt_tokens_details":null}})), 0);
        assert_eq!(prefill_cached_tokens(&json!({})), 0);
    }
}
