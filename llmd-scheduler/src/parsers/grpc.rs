//! The gRPC parsers: `vertexai-parser` (Vertex AI's prediction service, whose requests
//! and responses wrap OpenAI JSON in a `google.api.HttpBody`) and `vllmgrpc-parser`
//! (vLLM's engine service, `vllm_engine.proto`).
//!
//! Bodies are gRPC frames (a compression flag, a big-endian length, the message). The
//! protobuf messages are read without generated code: each message the router decodes
//! has a schema of its fields' numbers and wire kinds here, and a message is checked
//! against it as Go's `proto.Unmarshal` checks it (well-formed wire data throughout,
//! valid UTF-8 in `string` fields, nested messages of known fields decoded too; a field
//! of an unexpected wire type is an unknown field, skipped), so the same bodies are
//! refused.

use super::gotypes::R;
use super::{ParsedBody, Usage, openai};

/// The router's `ParseGrpcPayload`: the message of the body's first frame.
pub(super) fn frame(data: &[u8]) -> R<&[u8]> {
    let Some((head, rest)) = data.split_first_chunk::<5>() else {
        return Err(format!("invalid gRPC frame: expected at least 5 bytes for header, got {}", data.len()));
    };
    if head[0] == 1 {
        return Err("compressed gRPC payload is not supported".into());
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
    rest.get(..len_usize).ok_or_else(|| {
        format!("incomplete gRPC payload: header indicates {len} bytes, but only {} bytes are available", rest.len())
    })
}

/// The whole frames of a response body, in order (each with its header), up to the
/// first incomplete one.
pub(super) fn frames(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let len = frame(data).ok()?.len() + 5;
        let (one, rest) = data.split_at(len);
        data = rest;
        Some(one)
    })
}

// ---------------------------------------------------------------------------
// Protobuf wire format

/// How a field is declared, as far as decoding needs.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// `int32`, `uint32`, `bool`: a varint.
    Varint,
    /// `float`.
    Fixed32,
    /// `string`: length-delimited UTF-8.
    Str,
    /// `bytes`.
    Bytes,
    /// A message (or map entry): length-delimited, decoded against its schema.
    Msg(&'static [FieldDef]),
    /// `repeated uint32`: varints, unpacked or packed.
    RepVarint,
    /// `repeated float`: fixed32s, unpacked or packed.
    RepFixed32,
}

/// A field number and its declaration.
type FieldDef = (u32, Kind);

/// A field as it is on the wire.
#[derive(Debug, Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    /// A fixed32 (no float the router reads: only counted).
    Fixed32,
    Len(&'a [u8]),
}

const WIRE_ERR: &str = "proto: cannot parse invalid wire-format data";

/// A varint and its length in bytes (at most ten, the tenth at most 1, as protowire
/// reads them).
fn varint(buf: &[u8]) -> R<(u64, usize)> {
    let mut v = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        if i == 9 && b > 1 {
            return Err(WIRE_ERR.into());
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok((v, i + 1));
        }
    }
    Err(WIRE_ERR.into())
}

/// Reads one field at `buf[*at..]`: its number and value, or `None` for a group (whose
/// contents are skipped, as an unknown field's).
fn next_field<'a>(buf: &'a [u8], at: &mut usize) -> R<(u32, Option<Wire<'a>>)> {
    let (tag, n) = varint(&buf[*at..])?;
    *at += n;
    let num = u32::try_from(tag >> 3).map_err(|_| WIRE_ERR.to_string())?;
    if num == 0 || num > (1 << 29) - 1 {
        return Err(WIRE_ERR.into());
    }
    let take = |at: &mut usize, n: usize| -> R<&'a [u8]> {
        let end = at.checked_add(n).filter(|&e| e <= buf.len()).ok_or(WIRE_ERR)?;
        let out = &buf[*at..end];
        *at = end;
        Ok(out)
    };
    let wire = match tag & 7 {
        0 => {
            let (v, n) = varint(&buf[*at..])?;
            *at += n;
            Some(Wire::Varint(v))
        }
        1 => {
            take(at, 8)?;
            None
        }
        2 => {
            let (len, n) = varint(&buf[*at..])?;
            *at += n;
            Some(Wire::Len(take(at, usize::try_from(len).map_err(|_| WIRE_ERR.to_string())?)?))
        }
        3 => {
            skip_group(buf, at, num)?;
            None
        }
        5 => {
            take(at, 4)?;
            Some(Wire::Fixed32)
        }
        _ => return Err(WIRE_ERR.into()),
    };
    Ok((num, wire))
}

/// Skips a group's fields up to its end-group tag (which must close it), nested groups
/// included, without recursion.
fn skip_group(buf: &[u8], at: &mut usize, num: u32) -> R<()> {
    let mut open = vec![num];
    while let Some(&inner) = open.last() {
        if *at >= buf.len() {
            return Err(WIRE_ERR.into());
        }
        let (tag, _) = varint(&buf[*at..])?;
        if tag & 7 == 4 {
            *at += varint(&buf[*at..])?.1;
            if tag >> 3 != u64::from(inner) {
                return Err(WIRE_ERR.into());
            }
            open.pop();
        } else if tag & 7 == 3 {
            *at += varint(&buf[*at..])?.1;
            open.push(u32::try_from(tag >> 3).map_err(|_| WIRE_ERR.to_string())?);
        } else {
            next_field(buf, at)?;
        }
    }
    Ok(())
}

/// Decodes a message against its schema: its known fields of the declared wire kind, in
/// wire order (unknown fields and fields of another wire kind are skipped, as Go keeps
/// them as unknown fields). Errors as `proto.Unmarshal` errs.
fn decode<'a>(buf: &'a [u8], schema: &[FieldDef]) -> R<Vec<(u32, Wire<'a>)>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let (num, wire) = next_field(buf, &mut at)?;
        let (Some(wire), Some(&(_, kind))) = (wire, schema.iter().find(|(n, _)| *n == num)) else {
            continue;
        };
        let known = match (kind, wire) {
            (Kind::Varint | Kind::RepVarint, Wire::Varint(_)) | (Kind::Fixed32 | Kind::RepFixed32, Wire::Fixed32) => {
                true
            }
            (Kind::Str, Wire::Len(b)) => {
                std::str::from_utf8(b).map_err(|_| "proto: string field contains invalid UTF-8".to_string())?;
                true
            }
            (Kind::Bytes, Wire::Len(_)) => true,
            (Kind::Msg(inner), Wire::Len(b)) => {
                decode(b, inner)?;
                true
            }
            (Kind::RepVarint, Wire::Len(b)) => {
                packed_varints(b)?;
                true
            }
            (Kind::RepFixed32, Wire::Len(b)) => {
                if b.len() % 4 != 0 {
                    return Err(WIRE_ERR.into());
                }
                true
            }
            _ => false,
        };
        if known {
            out.push((num, wire));
        }
    }
    Ok(out)
}

fn packed_varints(mut b: &[u8]) -> R<Vec<u64>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (v, n) = varint(b)?;
        out.push(v);
        b = &b[n..];
    }
    Ok(out)
}

/// The last value of a singular varint field (proto3: the last one on the wire wins).
fn last_varint(fields: &[(u32, Wire<'_>)], num: u32) -> Option<u64> {
    fields.iter().rev().find_map(|(n, w)| match w {
        Wire::Varint(v) if *n == num => Some(*v),
        _ => None,
    })
}

/// The last value of a singular length-delimited field.
fn last_bytes<'a>(fields: &[(u32, Wire<'a>)], num: u32) -> Option<&'a [u8]> {
    fields.iter().rev().find_map(|(n, w)| match w {
        Wire::Len(b) if *n == num => Some(*b),
        _ => None,
    })
}

/// A `repeated uint32` field's values (unpacked and packed occurrences, in order).
fn repeated_u32(fields: &[(u32, Wire<'_>)], num: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for (_, w) in fields.iter().filter(|(n, _)| *n == num) {
        match w {
            // Go converts with `uint32(v)`: the low 32 bits.
            Wire::Varint(v) => out.push(*v as u32),
            Wire::Len(b) => out.extend(packed_varints(b).unwrap_or_default().into_iter().map(|v| v as u32)),
            Wire::Fixed32 => {}
        }
    }
    out
}

/// A singular message field: its occurrences merged (their fields concatenated, as
/// protobuf merges them), from wire position `from` on; `None` when it does not occur.
fn message<'a>(
    fields: &[(u32, Wire<'a>)],
    num: u32,
    schema: &[FieldDef],
    from: usize,
) -> R<Option<Vec<(u32, Wire<'a>)>>> {
    let mut out: Option<Vec<(u32, Wire<'a>)>> = None;
    for (n, w) in &fields[from..] {
        if let (true, Wire::Len(b)) = (*n == num, w) {
            out.get_or_insert_with(Vec::new).extend(decode(b, schema)?);
        }
    }
    Ok(out)
}

/// A oneof: the member set last on the wire, and the position after which its
/// occurrences count (an earlier occurrence of another member cleared the oneof).
fn oneof(fields: &[(u32, Wire<'_>)], members: &[u32]) -> Option<(u32, usize)> {
    let last = fields.iter().rposition(|(n, _)| members.contains(n))?;
    let member = fields[last].0;
    let from = fields[..last].iter().rposition(|(n, _)| *n != member && members.contains(n)).map_or(0, |i| i + 1);
    Some((member, from))
}

// ---------------------------------------------------------------------------
// Vertex AI

/// `google.protobuf.Any`.
const ANY: &[FieldDef] = &[(1, Kind::Str), (2, Kind::Bytes)];
/// `google.api.HttpBody`: `content_type`, `data`, `extensions`.
const HTTP_BODY: &[FieldDef] = &[(1, Kind::Str), (2, Kind::Bytes), (3, Kind::Msg(ANY))];
/// `ChatCompletionsRequest`, `RawPredictRequest`, `StreamRawPredictRequest` alike:
/// `endpoint`, `http_body`.
const VERTEX_REQUEST: &[FieldDef] = &[(1, Kind::Str), (2, Kind::Msg(HTTP_BODY))];

/// Reads a Vertex AI request: the OpenAI JSON in its `HttpBody`, read as the router's
/// OpenAI parser reads a chat completions body (`ChatCompletions`) or a responses body
/// (`RawPredict`, `StreamRawPredict`), its refusals included. Other methods are
/// forwarded unread.
pub(super) fn parse_vertex(path: &str, body: &[u8]) -> R<ParsedBody> {
    let (ty, api_path) = if path.ends_with("PredictionService/ChatCompletions") {
        ("ChatCompletionsRequest", "/chat/completions")
    } else if path.ends_with("PredictionService/StreamRawPredict") {
        ("StreamRawPredictRequest", "/responses")
    } else if path.ends_with("PredictionService/RawPredict") {
        ("RawPredictRequest", "/responses")
    } else {
        return Ok(ParsedBody { skip_response: true, ..ParsedBody::default() });
    };
    let payload = frame(body).map_err(|e| format!("invalid or unsupported gRPC payload: {e}"))?;
    let unmarshaling = |e: String| format!("unmarshaling {ty}: {e}");
    let fields = decode(payload, VERTEX_REQUEST).map_err(unmarshaling)?;
    let http_body =
        message(&fields, 2, HTTP_BODY, 0).map_err(unmarshaling)?.ok_or_else(|| format!("{ty} has no HttpBody"))?;
    let data = last_bytes(&http_body, 2).unwrap_or_default();
    let json: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| format!("parsing {ty}: error unmarshaling request bodyMap: {e}"))?;
    openai::parse_checked(api_path, &json).map_err(|e| format!("parsing {ty}: {e}"))
}

/// The router's Vertex AI `ParseResponse`: the usage of the OpenAI JSON in the frame's
/// `HttpBody`.
pub(super) fn vertex_response(chunk: &[u8]) -> R<Option<Usage>> {
    if chunk.is_empty() {
        return Ok(None);
    }
    let payload = frame(chunk).map_err(|e| format!("parsing gRPC response payload: {e}"))?;
    let fields = decode(payload, HTTP_BODY).map_err(|e| format!("unmarshaling HttpBody response: {e}"))?;
    openai::response(last_bytes(&fields, 2).unwrap_or_default(), false)
}

// ---------------------------------------------------------------------------
// vLLM gRPC (`vllm.grpc.engine`)

const TOKENIZED_INPUT: &[FieldDef] = &[(1, Kind::Str), (2, Kind::RepVarint)];
const TENSOR_DATA: &[FieldDef] = &[(1, Kind::Bytes), (2, Kind::RepVarint), (3, Kind::Str)];
const TENSOR_ENTRY: &[FieldDef] = &[(1, Kind::Str), (2, Kind::Msg(TENSOR_DATA))];
const STRING_ENTRY: &[FieldDef] = &[(1, Kind::Str), (2, Kind::Str)];
const PLACEHOLDER_RANGE: &[FieldDef] = &[(1, Kind::Varint), (2, Kind::Varint)];
const MULTIMODAL_INPUTS: &[FieldDef] = &[
    (2, Kind::Msg(TENSOR_DATA)),
    (3, Kind::Msg(TENSOR_ENTRY)),
    (4, Kind::Varint),
    (5, Kind::Msg(PLACEHOLDER_RANGE)),
    (6, Kind::Str),
    (7, Kind::Str),
    (8, Kind::Msg(STRING_ENTRY)),
    (9, Kind::Str),
];
const CHOICE_CONSTRAINT: &[FieldDef] = &[(1, Kind::Str)];
const LOGIT_BIAS_ENTRY: &[FieldDef] = &[(1, Kind::Varint), (2, Kind::Fixed32)];
const SAMPLING_PARAMS: &[FieldDef] = &[
    (1, Kind::Fixed32),
    (2, Kind::Fixed32),
    (3, Kind::Varint),
    (4, Kind::Fixed32),
    (5, Kind::Fixed32),
    (6, Kind::Fixed32),
    (7, Kind::Fixed32),
    (8, Kind::Varint),
    (9, Kind::Varint),
    (10, Kind::Str),
    (11, Kind::RepVarint),
    (12, Kind::Varint),
    (13, Kind::Varint),
    (14, Kind::Varint),
    (15, Kind::Varint),
    (16, Kind::Str),
    (17, Kind::Str),
    (18, Kind::Str),
    (19, Kind::Str),
    (20, Kind::Varint),
    (21, Kind::Msg(CHOICE_CONSTRAINT)),
    (22, Kind::Varint),
    (23, Kind::Varint),
    (24, Kind::Varint),
    (25, Kind::Varint),
    (26, Kind::Msg(LOGIT_BIAS_ENTRY)),
    (27, Kind::Varint),
];
/// `GenerateRequest`: `request_id`, oneof input {`tokenized`, `text`},
/// `sampling_params`, `stream`, `mm_inputs`.
const GENERATE_REQUEST: &[FieldDef] = &[
    (1, Kind::Str),
    (2, Kind::Msg(TOKENIZED_INPUT)),
    (3, Kind::Str),
    (4, Kind::Msg(SAMPLING_PARAMS)),
    (5, Kind::Varint),
    (7, Kind::Msg(MULTIMODAL_INPUTS)),
];
/// `EmbedRequest`: `request_id`, `tokenized`.
const EMBED_REQUEST: &[FieldDef] = &[(1, Kind::Str), (2, Kind::Msg(TOKENIZED_INPUT))];
/// `GenerateStreamChunk`: `token_ids`, `prompt_tokens`, `completion_tokens`, `cached_tokens`.
const STREAM_CHUNK: &[FieldDef] = &[(1, Kind::RepVarint), (2, Kind::Varint), (3, Kind::Varint), (4, Kind::Varint)];
/// `GenerateComplete`: `output_ids`, `finish_reason`, then the three counts.
const COMPLETE: &[FieldDef] =
    &[(1, Kind::RepVarint), (2, Kind::Str), (3, Kind::Varint), (4, Kind::Varint), (5, Kind::Varint)];
/// `GenerateResponse`: oneof {`chunk`, `complete`}.
const GENERATE_RESPONSE: &[FieldDef] = &[(1, Kind::Msg(STREAM_CHUNK)), (2, Kind::Msg(COMPLETE))];
/// `EmbedResponse`: `embedding`, `prompt_tokens`, `embedding_dim`.
const EMBED_RESPONSE: &[FieldDef] = &[(1, Kind::RepFixed32), (2, Kind::Varint), (3, Kind::Varint)];

const GENERATE_METHOD: &str = "vllm.grpc.engine.VllmEngine/Generate";
const EMBED_METHOD: &str = "vllm.grpc.engine.VllmEngine/Embed";

/// Reads a vLLM gRPC `Generate` (text, or token ids with their multimodal placeholders,
/// `stream`, `sampling_params.max_tokens`) or `Embed` (token ids) request; other
/// methods are forwarded unread. The engine protocol names no model.
pub(super) fn parse_vllm(path: &str, body: &[u8]) -> R<ParsedBody> {
    let payload = frame(body).map_err(|_| "invalid or unsupported gRPC payload".to_string())?;
    if path.ends_with(EMBED_METHOD) {
        let unmarshaling = |e: String| format!("unmarshaling EmbedRequest: {e}");
        let fields = decode(payload, EMBED_REQUEST).map_err(unmarshaling)?;
        let tokenized = message(&fields, 2, TOKENIZED_INPUT, 0)
            .map_err(unmarshaling)?
            .ok_or_else(|| "missing tokenized input in EmbedRequest".to_string())?;
        let ids = repeated_u32(&tokenized, 2);
        return Ok(ParsedBody { token_ids: Some(ids).filter(|i| !i.is_empty()), ..ParsedBody::default() });
    }
    if !path.ends_with(GENERATE_METHOD) {
        return Ok(ParsedBody { skip_response: true, ..ParsedBody::default() });
    }
    let unmarshaling = |e: String| format!("unmarshaling GenerateRequest: {e}");
    let fields = decode(payload, GENERATE_REQUEST).map_err(unmarshaling)?;
    let mut out = ParsedBody::default();
    match oneof(&fields, &[2, 3]) {
        Some((3, _)) => {
            let text = last_bytes(&fields, 3).unwrap_or_default();
            out.prompt = String::from_utf8_lossy(text).into_owned();
        }
        Some((_, from)) => {
            let tokenized = message(&fields, 2, TOKENIZED_INPUT, from).map_err(unmarshaling)?.unwrap_or_default();
            out.token_ids = Some(repeated_u32(&tokenized, 2)).filter(|i| !i.is_empty());
            if let Some(mm) = message(&fields, 7, MULTIMODAL_INPUTS, 0).map_err(unmarshaling)? {
                out.multimodal = mm.iter().filter(|(n, _)| *n == 5).count();
            }
        }
        None => return Err("not supported request inputType".into()),
    }
    out.stream = last_varint(&fields, 5).is_some_and(|v| v != 0);
    if let Some(sampling) = message(&fields, 4, SAMPLING_PARAMS, 0).map_err(unmarshaling)? {
        // `optional uint32 max_tokens`: an explicit 0 is a cap of 0.
        out.max_output_tokens = last_varint(&sampling, 8).map(|v| u64::from(v as u32));
    }
    Ok(out)
}

/// The router's vLLM gRPC `ParseResponse`: a `GenerateResponse`'s chunk or completion
/// counts (usage only once a count is non-zero), else an `EmbedResponse`'s prompt tokens.
pub(super) fn vllm_response(chunk: &[u8]) -> R<Option<Usage>> {
    let generate = frame(chunk).and_then(|p| decode(p, GENERATE_RESPONSE));
    if let Ok(fields) = &generate
        && let Some((member, from)) = oneof(fields, &[1, 2])
    {
        let (schema, prompt, completion, cached) =
            if member == 1 { (STREAM_CHUNK, 2, 3, 4) } else { (COMPLETE, 3, 4, 5) };
        let m = message(fields, member, schema, from)?.unwrap_or_default();
        let count = |n| last_varint(&m, n).map_or(0, |v| v as u32 as usize);
        let (p, c, cached) = (count(prompt), count(completion), count(cached));
        if p == 0 && c == 0 {
            return Ok(None);
        }
        return Ok(Some(Usage::new(p, c, cached)));
    }
    let embed = frame(chunk).and_then(|p| decode(p, EMBED_RESPONSE));
    if let Ok(fields) = embed {
        let prompt = last_varint(&fields, 2).map_or(0, |v| v as u32 as usize);
        let embedding = fields.iter().any(|(n, w)| *n == 1 && !matches!(w, Wire::Len(b) if b.is_empty()));
        if embedding || prompt > 0 {
            return Ok((prompt > 0).then(|| Usage { prompt_tokens: prompt, total_tokens: prompt, ..Usage::default() }));
        }
    }
    // Go wraps the GenerateResponse error, which is nil when the message only lacked a
    // response.
    let cause = generate.err().unwrap_or_else(|| "%!w(<nil>)".to_string());
    Err(format!("failed to parse gRPC response payload as GenerateResponse or EmbedResponse: {cause}"))
}

#[cfg(test)]
mod tests {
    use super::super::BodyParser;
    use super::*;

    // A protobuf encoder for the tests' messages.
    fn put_varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn varint_field(num: u32, v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(u64::from(num) << 3, &mut out);
        put_varint(v, &mut out);
        out
    }
    fn len_field(num: u32, b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint((u64::from(num) << 3) | 2, &mut out);
        put_varint(b.len() as u64, &mut out);
        out.extend_from_slice(b);
        out
    }
    fn packed(num: u32, vs: &[u32]) -> Vec<u8> {
        let mut b = Vec::new();
        for &v in vs {
            put_varint(u64::from(v), &mut b);
        }
        len_field(num, &b)
    }
    fn grpc_frame(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }
    fn vertex_request(json: &str) -> Vec<u8> {
        grpc_frame(&len_field(2, &len_field(2, json.as_bytes())))
    }
    fn tokenized(text: &str, ids: &[u32]) -> Vec<u8> {
        len_field(2, &[len_field(1, text.as_bytes()), packed(2, ids)].concat())
    }

    const CHAT: &str = "/google.cloud.aiplatform.v1beta1.PredictionService/ChatCompletions";
    const STREAM_RAW: &str = "/google.cloud.aiplatform.v1beta1.PredictionService/StreamRawPredict";
    const RAW: &str = "/google.cloud.aiplatform.v1beta1.PredictionService/RawPredict";
    const GENERATE: &str = "/vllm.grpc.engine.VllmEngine/Generate";
    const EMBED: &str = "/vllm.grpc.engine.VllmEngine/Embed";

    /// `TestParseRequest` (vertexai).
    #[test]
    fn vertex_requests() {
        let v = |path: &str, body: &[u8]| BodyParser::VertexAi.parse_bytes(path, body);
        let chat = vertex_request(r#"{"messages":[{"role":"user","content":"Hello"}],"stream":true}"#);
        let want = ParsedBody { prompt: "user\nHello\n".into(), stream: true, ..ParsedBody::default() };
        assert_eq!(v(CHAT, &chat), Ok(want));
        // The responses API's `input` is no prompt text llmd reads (as for OpenAI).
        assert_eq!(
            v(STREAM_RAW, &vertex_request(r#"{"input":"Hello from stream raw predict"}"#)),
            Ok(ParsedBody::default())
        );
        let named = vertex_request(r#"{"model":"gemma","input":"Hello from raw predict","max_output_tokens":9}"#);
        let want = ParsedBody { model: "gemma".into(), max_output_tokens: Some(9), ..ParsedBody::default() };
        assert_eq!(v(RAW, &named), Ok(want));
        assert_eq!(v("/unsupported/path", b""), Ok(ParsedBody { skip_response: true, ..ParsedBody::default() }));

        let err = |path: &str, body: &[u8]| v(path, body).err().unwrap_or_default();
        assert!(err(CHAT, &[0, 0, 0, 0]).contains("invalid gRPC frame"));
        assert!(err(CHAT, &[0, 0, 0, 0, 1, 0xFF]).contains("unmarshaling ChatCompletionsRequest"));
        assert!(err(STREAM_RAW, &[0, 0, 0, 0, 1, 0xFF]).contains("unmarshaling StreamRawPredictRequest"));
        assert!(err(RAW, &[0, 0, 0, 0, 1, 0xFF]).contains("unmarshaling RawPredictRequest"));
        // Beyond the Go tests: a missing body, inner JSON the OpenAI parser refuses,
        // invalid UTF-8 in a string field, a compressed frame.
        assert_eq!(err(CHAT, &grpc_frame(&len_field(1, b"projects/p"))), "ChatCompletionsRequest has no HttpBody");
        assert_eq!(
            err(CHAT, &vertex_request(r#"{"messages":[]}"#)),
            "parsing ChatCompletionsRequest: invalid chat completions request: must have valid messages field"
        );
        assert_eq!(
            err(RAW, &vertex_request("{}")),
            "parsing RawPredictRequest: invalid responses request: must have input field"
        );
        assert!(
            err(RAW, &vertex_request("")).starts_with("parsing RawPredictRequest: error unmarshaling request bodyMap")
        );
        assert!(err(CHAT, &grpc_frame(&len_field(1, b"\xff"))).contains("invalid UTF-8"));
        assert!(err(CHAT, &[1, 0, 0, 0, 0]).contains("compressed gRPC payload is not supported"));
        // Unknown fields, and fields of another wire type, are skipped.
        let extra = [varint_field(9, 1), varint_field(1, 7), len_field(2, &len_field(2, br#"{"input":"x"}"#))].concat();
        assert_eq!(v(RAW, &grpc_frame(&extra)), Ok(ParsedBody::default()));
    }

    /// `TestParseResponse` (vertexai).
    #[test]
    fn vertex_responses() {
        let body = grpc_frame(&len_field(
            2,
            br#"{"object":"chat.completion","usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30}}"#,
        ));
        let want = Usage { prompt_tokens: 10, completion_tokens: 20, total_tokens: 30, prompt_tokens_details: None };
        assert_eq!(BodyParser::VertexAi.parse_response(&body, false), Ok(Some(want)));
        assert_eq!(BodyParser::VertexAi.parse_response(b"", false), Ok(None));
        let err = |b: &[u8]| BodyParser::VertexAi.parse_response(b, false).err().unwrap_or_default();
        assert!(err(&[0, 0, 0, 0]).contains("invalid gRPC frame"));
        assert!(err(&grpc_frame(&[0xFF])).contains("unmarshaling HttpBody response"));
        // A stream of frames: each frame's usage, merged.
        let stream = [grpc_frame(&len_field(2, br#"{"choices":[]}"#)), body].concat();
        assert_eq!(BodyParser::VertexAi.parse_usage(&stream), Some(want));
    }

    /// `TestVllmGRPCParser_ParseRequest` and `_MaxOutputTokens`.
    #[test]
    fn vllm_grpc_requests() {
        let v = |path: &str, body: &[u8]| BodyParser::VllmGrpc.parse_bytes(path, body);
        let text = grpc_frame(&len_field(3, b"Hello world"));
        assert_eq!(v(GENERATE, &text), Ok(ParsedBody { prompt: "Hello world".into(), ..ParsedBody::default() }));
        let ids = grpc_frame(&tokenized("Tokenized hello", &[11, 12, 13]));
        assert_eq!(v(GENERATE, &ids), Ok(ParsedBody { token_ids: Some(vec![11, 12, 13]), ..ParsedBody::default() }));
        let placeholders = [
            len_field(5, &[varint_field(1, 1), varint_field(2, 2)].concat()),
            len_field(5, &[varint_field(1, 4), varint_field(2, 1)].concat()),
        ];
        let mm = [
            tokenized("Describe image", &[101, 102, 103, 104, 105]),
            len_field(7, &[placeholders.concat(), len_field(6, b"hash-a"), len_field(6, b"hash-b")].concat()),
        ]
        .concat();
        let want =
            ParsedBody { token_ids: Some(vec![101, 102, 103, 104, 105]), multimodal: 2, ..ParsedBody::default() };
        assert_eq!(v(GENERATE, &grpc_frame(&mm)), Ok(want));
        let streamed = grpc_frame(&[len_field(3, b"Hello world"), varint_field(5, 1)].concat());
        assert_eq!(v(GENERATE, &streamed).map(|p| p.stream), Ok(true));
        let embed = grpc_frame(&tokenized("Embed this", &[4, 5, 6]));
        assert_eq!(v(EMBED, &embed), Ok(ParsedBody { token_ids: Some(vec![4, 5, 6]), ..ParsedBody::default() }));
        let skip = v("/unsupported/path", &text);
        assert_eq!(skip, Ok(ParsedBody { skip_response: true, ..ParsedBody::default() }));

        assert!(v(GENERATE, &[0, 0, 0]).is_err());
        assert!(v(GENERATE, &[1, 0, 0, 0, 0]).is_err());
        assert_eq!(v(GENERATE, &grpc_frame(&[])), Err("not supported request inputType".into()));
        assert_eq!(v(EMBED, &grpc_frame(&[])), Err("missing tokenized input in EmbedRequest".into()));
        assert!(v(GENERATE, &grpc_frame(&[0xFF])).is_err_and(|e| e.starts_with("unmarshaling GenerateRequest")));

        let cap = |sampling: Vec<u8>| {
            let body = grpc_frame(&[len_field(3, b"hello"), len_field(4, &sampling)].concat());
            v(GENERATE, &body).map(|p| p.max_output_tokens)
        };
        assert_eq!(cap(varint_field(8, 256)), Ok(Some(256)));
        assert_eq!(cap(Vec::new()), Ok(None));
        assert_eq!(cap(varint_field(8, 0)), Ok(Some(0)), "an explicit zero binds");
        let no_sampling = grpc_frame(&tokenized("", &[1, 2, 3]));
        assert_eq!(v(GENERATE, &no_sampling).map(|p| p.max_output_tokens), Ok(None));
        // The last oneof member set wins; unpacked ids count too.
        let both = grpc_frame(
            &[len_field(3, b"text"), len_field(2, &[varint_field(2, 7), varint_field(2, 8)].concat())].concat(),
        );
        assert_eq!(v(GENERATE, &both).map(|p| (p.prompt, p.token_ids)), Ok((String::new(), Some(vec![7, 8]))));
        // A string field of the sampling params must be UTF-8, as Go checks it.
        let bad_stop = grpc_frame(&[len_field(3, b"x"), len_field(4, &len_field(10, b"\xc3"))].concat());
        assert!(v(GENERATE, &bad_stop).is_err_and(|e| e.contains("invalid UTF-8")));
    }

    /// `TestVllmGRPCParser_ParseResponse`.
    #[test]
    fn vllm_grpc_responses() {
        let r = |payload: Vec<u8>| BodyParser::VllmGrpc.parse_response(&grpc_frame(&payload), false);
        let chunk = len_field(
            1,
            &[packed(1, &[1, 2, 3]), varint_field(2, 10), varint_field(3, 5), varint_field(4, 2)].concat(),
        );
        assert_eq!(r(chunk.clone()), Ok(Some(Usage::new(10, 5, 2))));
        let complete = len_field(
            2,
            &[len_field(2, b"stop"), varint_field(3, 20), varint_field(4, 15), varint_field(5, 5)].concat(),
        );
        assert_eq!(r(complete), Ok(Some(Usage::new(20, 15, 5))));
        assert_eq!(r(len_field(1, &packed(1, &[4]))), Ok(None), "an intermediate chunk");
        assert!(r(Vec::new()).is_err(), "no response");
        let embed = [packed(1, &[]), varint_field(2, 10), varint_field(3, 2)].concat();
        let embed = [len_field(1, &[0, 0, 0x80, 0x3f, 0, 0, 0, 0x40]), embed].concat();
        let want = Usage { prompt_tokens: 10, total_tokens: 10, ..Usage::default() };
        assert_eq!(r(embed), Ok(Some(want)));
        let complete_no_cache = len_field(2, &[varint_field(3, 20), varint_field(4, 15)].concat());
        assert_eq!(r(complete_no_cache.clone()), Ok(Some(Usage::new(20, 15, 0))));
        assert!(BodyParser::VllmGrpc.parse_response(b"", false).is_err());
        // A whole stream: the chunks and the completion, merged.
        let stream =
            [grpc_frame(&len_field(1, &packed(1, &[9]))), grpc_frame(&chunk), grpc_frame(&complete_no_cache)].concat();
        assert_eq!(BodyParser::VllmGrpc.parse_usage(&stream), Some(Usage::new(20, 15, 0)));
    }

    #[test]
    fn frames_and_wire_errors() {
        assert_eq!(
            frame(&[0, 0, 0, 0, 2, 7]),
            Err("incomplete gRPC payload: header indicates 2 bytes, but only 1 bytes are available".into())
        );
        assert_eq!(frame(&[2, 0, 0, 0, 1, 7, 9]), Ok(&[7u8][..]));
        assert_eq!(frames(&[0, 0, 0, 0, 1, 7, 0, 0, 0, 0, 0, 0]).count(), 2);
        // A group is skipped whole; an unmatched end-group is an error.
        let group = [0x1b, 0x08, 0x01, 0x1c, 0x08, 0x05];
        assert_eq!(decode(&group, PLACEHOLDER_RANGE).map(|f| last_varint(&f, 1)), Ok(Some(5)));
        assert!(decode(&[0x1c], PLACEHOLDER_RANGE).is_err());
        assert!(decode(&[0x00], PLACEHOLDER_RANGE).is_err(), "field number 0");
        assert!(
            decode(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02], PLACEHOLDER_RANGE).is_err()
        );
    }
}
