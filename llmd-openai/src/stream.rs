//! Streaming: the chunk types of `"stream": true` responses, and a small server-sent
//! events decoder for clients that read them.
//!
//! A stream is a sequence of `data: {json}` events ended by `data: [DONE]`; an error
//! after the status line was sent arrives as `data: {"error": {...}}`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{OpenAiError, Result};
use crate::error_body::ErrorBody;
use crate::response::{ChatLogprobs, Usage};

/// A chunk of a streamed completion: the same shape as a whole completion.
pub type CompletionChunk = crate::response::CompletionResponse;

/// What a chat chunk adds to the assistant's message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Delta {
    /// `assistant`, on the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The next piece of text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice of a chat chunk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChatChunkChoice {
    /// Its index (always 0 with `n = 1`).
    pub index: u32,
    /// What this chunk adds.
    pub delta: Delta,
    /// The logprobs of this chunk's tokens, when asked for.
    pub logprobs: Option<ChatLogprobs>,
    /// Set on the last chunk.
    pub finish_reason: Option<String>,
    /// vLLM: the stop string or token id that ended it.
    pub stop_reason: Option<Value>,
}

/// A chunk of a streamed chat completion.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChatCompletionChunk {
    /// The request id (`chatcmpl-…`).
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: String,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// The model that serves it.
    pub model: String,
    /// The choices (none in the usage-only last chunk).
    pub choices: Vec<ChatChunkChoice>,
    /// Token counts, on the usage chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl ChatCompletionChunk {
    /// The `object` of chat chunks.
    pub const OBJECT: &'static str = "chat.completion.chunk";

    /// A chunk with `object` set.
    pub fn new(
        id: impl Into<String>,
        created: u64,
        model: impl Into<String>,
        choices: Vec<ChatChunkChoice>,
        usage: Option<Usage>,
    ) -> Self {
        ChatCompletionChunk { id: id.into(), object: Self::OBJECT.into(), created, model: model.into(), choices, usage }
    }
}

/// The data of `[DONE]`, the event that ends a stream.
pub const DONE: &str = "[DONE]";

/// What one event's data holds.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem<T> {
    /// A chunk.
    Chunk(T),
    /// An error reported inside the stream.
    Error(ErrorBody),
    /// `[DONE]`: the stream is complete.
    Done,
}

/// Reads one event's data as a chunk of type `T`, an in-stream error, or `[DONE]`.
pub fn parse_data<T: DeserializeOwned>(data: &str) -> Result<StreamItem<T>> {
    if data.trim() == DONE {
        return Ok(StreamItem::Done);
    }
    let v: Value = serde_json::from_str(data).map_err(OpenAiError::StreamData)?;
    if v.get("error").is_some_and(Value::is_object) {
        return serde_json::from_value(v).map(StreamItem::Error).map_err(OpenAiError::StreamData);
    }
    serde_json::from_value(v).map(StreamItem::Chunk).map_err(OpenAiError::StreamData)
}

/// Splits a byte stream into server-sent events' data, as the chunks arrive.
///
/// Follows the SSE rules a client needs: lines end with `\n` or `\r\n`; `data:` lines
/// (one optional space after the colon) accumulate, joined by `\n`; an empty line ends
/// the event; comments (`: keep-alive`) and other fields are skipped; events without
/// data yield nothing. Bytes are buffered until a whole line is in, so a chunk boundary
/// inside a UTF-8 character or a line does no harm.
#[derive(Debug, Clone, Default)]
pub struct SseDecoder {
    pending: Vec<u8>,
    data: Option<String>,
    ready: std::collections::VecDeque<String>,
}

impl SseDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes of the body.
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(nl) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + nl;
            let line = self.pending[start..end].strip_suffix(b"\r").unwrap_or(&self.pending[start..end]);
            let line = String::from_utf8_lossy(line).into_owned();
            start = end + 1;
            self.line(&line);
        }
        self.pending.drain(..start);
    }

    fn line(&mut self, line: &str) {
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                self.ready.push_back(data);
            }
            return;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        if field == "data" {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            }
        }
    }

    /// The data of the next complete event, if one is in.
    pub fn next_data(&mut self) -> Option<String> {
        self.ready.pop_front()
    }

    /// Feeds bytes and returns the data of every event they complete.
    pub fn decode(&mut self, bytes: &[u8]) -> Vec<String> {
        self.push(bytes);
        self.ready.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::response::CompletionChoice;

    #[test]
    fn events_split_across_chunks_and_line_endings_decode() {
        let body = "data: {\"a\":1}\n\n: keep-alive\n\nevent: x\ndata: one\r\ndata:two\r\n\r\ndata: [DONE]\n\n";
        // Every split point, including inside the CRLFs, gives the same events.
        for cut in 0..body.len() {
            let mut d = SseDecoder::new();
            let mut got = d.decode(&body.as_bytes()[..cut]);
            got.extend(d.decode(&body.as_bytes()[cut..]));
            assert_eq!(got, ["{\"a\":1}", "one\ntwo", "[DONE]"], "cut at {cut}");
        }
        // A multi-byte character split between chunks survives.
        let mut d = SseDecoder::new();
        let bytes = "data: é\n\n".as_bytes();
        d.push(&bytes[..7]);
        assert_eq!(d.next_data(), None);
        d.push(&bytes[7..]);
        assert_eq!(d.next_data().as_deref(), Some("é"));
        // No blank line yet: no event.
        assert!(SseDecoder::new().decode(b"data: x\n").is_empty());
    }

    #[test]
    fn data_reads_as_chunks_errors_and_done() {
        let chunk = CompletionChunk::new(
            "c",
            1,
            "m",
            vec![CompletionChoice { text: "hi".into(), ..Default::default() }],
            Some(Usage::new(1, 1, 0)),
        );
        let text = serde_json::to_string(&chunk).unwrap();
        assert_eq!(parse_data::<CompletionChunk>(&text).unwrap(), StreamItem::Chunk(chunk));
        assert_eq!(parse_data::<CompletionChunk>("[DONE]").unwrap(), StreamItem::Done);
        let err = ErrorBody::unavailable("the engine stopped while streaming").to_json();
        match parse_data::<CompletionChunk>(&err).unwrap() {
            StreamItem::Error(e) => assert_eq!(e.status(), 503),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_data::<CompletionChunk>("{nope"), Err(OpenAiError::StreamData(_))));
    }

    #[test]
    fn chat_chunks_serialize_as_the_engine_always_has() {
        let first = ChatCompletionChunk::new(
            "chatcmpl-1",
            2,
            "m",
            vec![ChatChunkChoice {
                delta: Delta { role: Some("assistant".into()), content: Some(String::new()) },
                ..Default::default()
            }],
            None,
        );
        let v = serde_json::to_value(&first).unwrap();
        assert_eq!(
            v,
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 2, "model": "m",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null,
                    "finish_reason": null, "stop_reason": null}]})
        );
        assert_eq!(serde_json::from_value::<ChatCompletionChunk>(v).unwrap(), first);
        let last = ChatCompletionChunk::new("c", 0, "m", vec![], Some(Usage::new(1, 2, 0)));
        let v = serde_json::to_value(&last).unwrap();
        assert_eq!(v["usage"]["total_tokens"], 3);
        assert_eq!(serde_json::from_value::<ChatCompletionChunk>(v).unwrap(), last);
        let delta = serde_json::to_value(Delta { role: None, content: Some("x".into()) }).unwrap();
        assert_eq!(delta, json!({"content": "x"}));
    }
}
