//! The request bodies the estimate backend reads, decoded as llm-d-router's parsers decode
//! them (`json.Unmarshal` into the `requesthandling` types): which JSON fields feed the
//! estimate, which types each field must have for the body to be accepted, and the custom
//! decoders (`Content`, `AnthropicContent`, `Prompt`, `EmbeddingsInput`, `GenerateRequest`).
//!
//! A field of the wrong type fails the whole body in Go, so it does here, fields the
//! estimate does not read included. `null` is the zero value wherever Go allows it.

use std::collections::BTreeMap;

use super::gojson::{Node, Val, go_float, go_int};

type R<T> = Result<T, String>;

fn mismatch(n: &Node<'_>, ty: &str, at: &str) -> String {
    format!("json: cannot unmarshal {} into Go struct field {at} of type {ty}", n.kind())
}

/// A struct value: an object, or `null` (the zero value; `field` finds nothing in it).
fn expect_struct(n: &Node<'_>, at: &str) -> R<()> {
    match n.val {
        Val::Obj(_) | Val::Null => Ok(()),
        _ => Err(mismatch(n, "struct", at)),
    }
}

/// A `string` field: absent and `null` are "".
fn string_of(n: Option<&Node<'_>>, at: &str) -> R<String> {
    match n {
        None => Ok(String::new()),
        Some(n) => match &n.val {
            Val::Null => Ok(String::new()),
            Val::Str(s) => Ok(s.clone()),
            _ => Err(mismatch(n, "string", at)),
        },
    }
}

/// A `*bool` field: absent and `null` are nil.
fn opt_bool(n: Option<&Node<'_>>, at: &str) -> R<Option<bool>> {
    match n.map(|n| (n, &n.val)) {
        None | Some((_, Val::Null)) => Ok(None),
        Some((_, Val::Bool(b))) => Ok(Some(*b)),
        Some((n, _)) => Err(mismatch(n, "bool", at)),
    }
}

/// An `int` field: absent and `null` are 0; a number must be an integer literal.
fn int_of(n: Option<&Node<'_>>, at: &str) -> R<i64> {
    match n.map(|n| (n, &n.val)) {
        None | Some((_, Val::Null)) => Ok(0),
        Some((_, Val::Num(lit))) => go_int(lit).map_err(|e| format!("{e} ({at})")),
        Some((n, _)) => Err(mismatch(n, "int", at)),
    }
}

/// A slice field: absent and `null` are empty.
fn array_of<'n, 'a>(n: Option<&'n Node<'a>>, at: &str) -> R<&'n [Node<'a>]> {
    match n {
        None => Ok(&[]),
        Some(n) => match &n.val {
            Val::Null => Ok(&[]),
            Val::Arr(items) => Ok(items),
            _ => Err(mismatch(n, "slice", at)),
        },
    }
}

/// A `map[string]...` field: an object or `null`.
fn map_of<'n, 'a>(n: Option<&'n Node<'a>>, at: &str) -> R<&'n [(String, Node<'a>)]> {
    match n {
        None => Ok(&[]),
        Some(n) => match &n.val {
            Val::Null => Ok(&[]),
            Val::Obj(members) => Ok(members),
            _ => Err(mismatch(n, "map", at)),
        },
    }
}

/// An `any` field: absent and `null` are nil. (Numbers were checked for the whole body.)
fn any_of<'n, 'a>(n: Option<&'n Node<'a>>) -> Option<&'n Node<'a>> {
    n.filter(|n| !n.is_null())
}

/// A string field of a struct-typed field (`image_url.url`).
fn nested_string(n: &Node<'_>, outer: &str, inner: &str) -> R<String> {
    match n.field(outer) {
        None => Ok(String::new()),
        Some(o) => {
            expect_struct(o, outer)?;
            string_of(o.field(inner), inner)
        }
    }
}

/// A chat-completions content block (`ContentBlock`).
#[derive(Debug, Default)]
pub(crate) struct Block {
    pub(crate) ty: String,
    pub(crate) text: String,
    pub(crate) image_url: String,
    pub(crate) audio_data: String,
    pub(crate) audio_format: String,
    pub(crate) video_url: String,
}

/// Chat content (`Content`): a string, or blocks.
#[derive(Debug, Default)]
pub(crate) struct Content {
    pub(crate) raw: String,
    pub(crate) blocks: Vec<Block>,
}

/// A chat message.
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) role: String,
    pub(crate) content: Content,
}

/// `ChatCompletionsRequest`, the fields the estimate reads.
#[derive(Debug)]
pub(crate) struct ChatRequest<'n, 'a> {
    pub(crate) messages: Vec<Message>,
    /// `tools` (`[]any`).
    pub(crate) tools: &'n [Node<'a>],
}

// `Content.UnmarshalJSON`: a string (null counts as ""), else an array of blocks; any
// failure is one error.
fn content(n: Option<&Node<'_>>) -> R<Content> {
    let Some(n) = n else {
        return Ok(Content::default());
    };
    let blocks = match &n.val {
        Val::Str(s) => return Ok(Content { raw: s.clone(), blocks: Vec::new() }),
        Val::Null => return Ok(Content::default()),
        Val::Arr(items) => items
            .iter()
            .map(|b| {
                expect_struct(b, "content")?;
                Ok(Block {
                    ty: string_of(b.field("type"), "type")?,
                    text: string_of(b.field("text"), "text")?,
                    image_url: nested_string(b, "image_url", "url")?,
                    audio_data: nested_string(b, "input_audio", "data")?,
                    audio_format: nested_string(b, "input_audio", "format")?,
                    video_url: nested_string(b, "video_url", "url")?,
                })
            })
            .collect::<R<Vec<Block>>>(),
        _ => Err(String::new()),
    };
    blocks.map(|blocks| Content { raw: String::new(), blocks }).map_err(|_| "content format not supported".to_string())
}

/// Decodes a `/v1/chat/completions` body; the parser also requires a message.
pub(crate) fn chat<'n, 'a>(body: &'n Node<'a>) -> R<ChatRequest<'n, 'a>> {
    expect_struct(body, "ChatCompletionsRequest")?;
    let mut messages = Vec::new();
    for m in array_of(body.field("messages"), "messages")? {
        expect_struct(m, "messages")?;
        let role = string_of(m.field("role"), "messages.role")?;
        let content = content(m.field("content"))?;
        array_of(m.field("tool_calls"), "messages.tool_calls")?;
        messages.push(Message { role, content });
    }
    let tools = array_of(body.field("tools"), "tools")?;
    array_of(body.field("documents"), "documents")?;
    string_of(body.field("chat_template"), "chat_template")?;
    for f in ["return_assistant_tokens_mask", "continue_final_message", "add_generation_prompt"] {
        if let Some(n) = body.field(f)
            && !matches!(n.val, Val::Bool(_) | Val::Null)
        {
            return Err(mismatch(n, "bool", f));
        }
    }
    map_of(body.field("chat_template_kwargs"), "chat_template_kwargs")?;
    string_of(body.field("cache_salt"), "cache_salt")?;
    if messages.is_empty() {
        return Err("chat-completions request must have at least one message".to_string());
    }
    Ok(ChatRequest { messages, tools })
}

/// An Anthropic image source (`AnthropicImageSource`).
#[derive(Debug, Default)]
pub(crate) struct ImageSource {
    pub(crate) ty: String,
    pub(crate) media_type: String,
    pub(crate) data: String,
    pub(crate) url: String,
}

/// An Anthropic content block (`AnthropicContentBlock`).
#[derive(Debug, Default)]
pub(crate) struct ABlock<'a> {
    pub(crate) ty: String,
    pub(crate) text: String,
    pub(crate) source: Option<ImageSource>,
    pub(crate) id: String,
    pub(crate) name: String,
    /// `input` (`json.RawMessage`): the value's bytes verbatim; `null` is `b"null"`.
    pub(crate) input: Option<&'a [u8]>,
    pub(crate) content: AContent<'a>,
    pub(crate) thinking: String,
}

/// Anthropic content (`AnthropicContent`): a string, or blocks.
#[derive(Debug, Default)]
pub(crate) struct AContent<'a> {
    pub(crate) raw: String,
    pub(crate) blocks: Vec<ABlock<'a>>,
}

/// An Anthropic message.
#[derive(Debug)]
pub(crate) struct AMessage<'a> {
    pub(crate) role: String,
    pub(crate) content: AContent<'a>,
}

/// An Anthropic tool definition (`AnthropicTool`).
#[derive(Debug)]
pub(crate) struct ATool<'a> {
    pub(crate) name: String,
    pub(crate) description: String,
    /// `input_schema` (`json.RawMessage`); `None` when absent.
    pub(crate) input_schema: Option<&'a [u8]>,
    pub(crate) strict: Option<bool>,
    pub(crate) defer_loading: Option<bool>,
}

/// `MessagesRequest`, the fields the estimate reads.
#[derive(Debug)]
pub(crate) struct MessagesRequest<'a> {
    pub(crate) messages: Vec<AMessage<'a>>,
    pub(crate) system: AContent<'a>,
    pub(crate) tools: Vec<ATool<'a>>,
}

const ANTHROPIC_CONTENT_ERR: &str = "anthropic content: must be a string or an array of content blocks";

// `AnthropicContent.UnmarshalJSON`: a string (null counts as ""), else an array of blocks.
fn a_content<'a>(n: Option<&Node<'a>>) -> R<AContent<'a>> {
    let Some(n) = n else {
        return Ok(AContent::default());
    };
    match &n.val {
        Val::Str(s) => Ok(AContent { raw: s.clone(), blocks: Vec::new() }),
        Val::Null => Ok(AContent::default()),
        Val::Arr(items) => {
            let blocks = items.iter().map(a_block).collect::<R<Vec<_>>>();
            blocks.map(|blocks| AContent { raw: String::new(), blocks }).map_err(|_| ANTHROPIC_CONTENT_ERR.to_string())
        }
        _ => Err(ANTHROPIC_CONTENT_ERR.to_string()),
    }
}

fn a_block<'a>(b: &Node<'a>) -> R<ABlock<'a>> {
    expect_struct(b, "content")?;
    let source = match b.field("source") {
        None => None,
        Some(s) if s.is_null() => None,
        Some(s) => {
            expect_struct(s, "source")?;
            Some(ImageSource {
                ty: string_of(s.field("type"), "source.type")?,
                media_type: string_of(s.field("media_type"), "source.media_type")?,
                data: string_of(s.field("data"), "source.data")?,
                url: string_of(s.field("url"), "source.url")?,
            })
        }
    };
    string_of(b.field("tool_use_id"), "tool_use_id")?;
    Ok(ABlock {
        ty: string_of(b.field("type"), "type")?,
        text: string_of(b.field("text"), "text")?,
        source,
        id: string_of(b.field("id"), "id")?,
        name: string_of(b.field("name"), "name")?,
        input: b.field("input").map(|n| n.raw),
        content: a_content(b.field("content"))?,
        thinking: string_of(b.field("thinking"), "thinking")?,
    })
}

/// Decodes a `/v1/messages` body; the parser also requires a message.
pub(crate) fn messages<'a>(body: &Node<'a>) -> R<MessagesRequest<'a>> {
    expect_struct(body, "MessagesRequest")?;
    let mut messages = Vec::new();
    for m in array_of(body.field("messages"), "messages")? {
        expect_struct(m, "messages")?;
        messages.push(AMessage {
            role: string_of(m.field("role"), "messages.role")?,
            content: a_content(m.field("content"))?,
        });
    }
    let system = a_content(body.field("system"))?;
    let mut tools = Vec::new();
    for t in array_of(body.field("tools"), "tools")? {
        expect_struct(t, "tools")?;
        tools.push(ATool {
            name: string_of(t.field("name"), "tools.name")?,
            description: string_of(t.field("description"), "tools.description")?,
            input_schema: t.field("input_schema").map(|n| n.raw),
            strict: opt_bool(t.field("strict"), "tools.strict")?,
            defer_loading: opt_bool(t.field("defer_loading"), "tools.defer_loading")?,
        });
    }
    string_of(body.field("cache_salt"), "cache_salt")?;
    Ok(MessagesRequest { messages, system, tools })
}

/// A completions `prompt` or embeddings `input`: a string, strings, or token ids.
#[derive(Debug, Default)]
pub(crate) struct PromptInput {
    pub(crate) raw: String,
    pub(crate) strings: Vec<String>,
    pub(crate) token_ids: Vec<u32>,
}

impl PromptInput {
    pub(crate) fn is_empty(&self) -> bool {
        self.raw.is_empty() && self.strings.is_empty() && self.token_ids.is_empty()
    }

    /// `PlainText`: the string, or the strings joined with spaces.
    pub(crate) fn plain_text(&self) -> String {
        if self.raw.is_empty() { self.strings.join(" ") } else { self.raw.clone() }
    }
}

/// A float as Go's `uint32(f)` round-trips it on amd64: integral and in [0, 2^32).
fn token_id(f: f64) -> Option<u32> {
    (f.trunc() == f && (0.0..4_294_967_296.0).contains(&f)).then_some(f as u32)
}

// `Prompt` / `EmbeddingsInput` `UnmarshalJSON`: a string, or an array of all strings or
// all token ids (decoded as float64); anything else, `null` included, is an error.
fn prompt_input(n: Option<&Node<'_>>, what: &str) -> R<PromptInput> {
    let Some(n) = n else {
        return Ok(PromptInput::default());
    };
    let items = match &n.val {
        Val::Str(s) => return Ok(PromptInput { raw: s.clone(), ..PromptInput::default() }),
        Val::Arr(items) => items,
        _ => return Err(format!("{what}: must be a string or an array")),
    };
    let mut out = PromptInput::default();
    match items.first().map(|n| &n.val) {
        None => {}
        Some(Val::Str(_)) => {
            for i in items {
                let Val::Str(s) = &i.val else {
                    return Err(format!("{what}: mixed types in array"));
                };
                out.strings.push(s.clone());
            }
        }
        Some(Val::Num(_)) => {
            for i in items {
                let Val::Num(lit) = &i.val else {
                    return Err(format!("{what}: mixed types in array"));
                };
                let f = go_float(lit)?;
                let id = token_id(f)
                    .ok_or_else(|| format!("{what}: floating-point number {f:.6} is not a valid token ID"))?;
                out.token_ids.push(id);
            }
        }
        Some(_) => return Err(format!("{what}: unsupported array element type")),
    }
    Ok(out)
}

/// Decodes a `/v1/completions` body's `prompt`; the parser requires it non-empty.
pub(crate) fn completions(body: &Node<'_>) -> R<PromptInput> {
    expect_struct(body, "CompletionsRequest")?;
    let prompt = prompt_input(body.field("prompt"), "prompt")?;
    string_of(body.field("cache_salt"), "cache_salt")?;
    if prompt.is_empty() {
        return Err("prompt is empty".to_string());
    }
    Ok(prompt)
}

/// Decodes a `/v1/embeddings` body's `input`; the parser requires it non-empty.
pub(crate) fn embeddings(body: &Node<'_>) -> R<PromptInput> {
    expect_struct(body, "EmbeddingsRequest")?;
    let input = prompt_input(body.field("input"), "embeddings input")?;
    string_of(body.field("cache_salt"), "cache_salt")?;
    if input.is_empty() {
        return Err("input is empty".to_string());
    }
    Ok(input)
}

/// `ResponsesRequest`: `input`, `instructions`, `tools` (each `any`; nil when null).
#[derive(Debug)]
pub(crate) struct Responses<'n, 'a> {
    pub(crate) input: &'n Node<'a>,
    pub(crate) instructions: Option<&'n Node<'a>>,
    pub(crate) tools: Option<&'n Node<'a>>,
}

/// Decodes a `/v1/responses` body; the parser requires `input`.
pub(crate) fn responses<'n, 'a>(body: &'n Node<'a>) -> R<Responses<'n, 'a>> {
    expect_struct(body, "ResponsesRequest")?;
    string_of(body.field("cache_salt"), "cache_salt")?;
    let input = any_of(body.field("input")).ok_or("input is missing")?;
    Ok(Responses { input, instructions: any_of(body.field("instructions")), tools: any_of(body.field("tools")) })
}

/// A `ConversationItem`.
#[derive(Debug)]
pub(crate) struct ConversationItem<'n, 'a> {
    pub(crate) ty: String,
    pub(crate) role: String,
    pub(crate) content: Option<&'n Node<'a>>,
}

/// Decodes a `/v1/conversations` body's `items`; the parser requires one.
pub(crate) fn conversations<'n, 'a>(body: &'n Node<'a>) -> R<Vec<ConversationItem<'n, 'a>>> {
    expect_struct(body, "ConversationsRequest")?;
    let mut items = Vec::new();
    for i in array_of(body.field("items"), "items")? {
        expect_struct(i, "items")?;
        items.push(ConversationItem {
            ty: string_of(i.field("type"), "items.type")?,
            role: string_of(i.field("role"), "items.role")?,
            content: any_of(i.field("content")),
        });
    }
    map_of(body.field("metadata"), "metadata")?;
    string_of(body.field("cache_salt"), "cache_salt")?;
    if items.is_empty() {
        return Err("items is empty".to_string());
    }
    Ok(items)
}

/// `GenerateRequest`: token ids and the multimodal features' hashes and placeholder ranges
/// per modality (a map in Go: duplicate keys, the last wins).
#[derive(Debug)]
pub(crate) struct Generate {
    pub(crate) token_ids: Vec<u32>,
    pub(crate) mm_hashes: BTreeMap<String, Vec<String>>,
    pub(crate) mm_placeholders: BTreeMap<String, Vec<(i64, i64)>>,
}

/// Decodes a `/inference/v1/generate` body (`GenerateRequest.UnmarshalJSON`); the parser
/// requires token ids.
pub(crate) fn generate(body: &Node<'_>) -> R<Generate> {
    expect_struct(body, "GenerateRequest")?;
    let mut token_ids = Vec::new();
    for (i, t) in array_of(body.field("token_ids"), "token_ids")?.iter().enumerate() {
        let v = match &t.val {
            Val::Null => 0.0,
            Val::Num(lit) => go_float(lit)?,
            _ => return Err(mismatch(t, "float64", "token_ids")),
        };
        token_ids.push(token_id(v).ok_or_else(|| format!("token_ids[{i}]: invalid value {v}"))?);
    }
    string_of(body.field("cache_salt"), "cache_salt")?;
    let mut mm_hashes = BTreeMap::new();
    let mut mm_placeholders = BTreeMap::new();
    if let Some(f) = body.field("features") {
        expect_struct(f, "features")?;
        for (modality, hashes) in map_of(f.field("mm_hashes"), "features.mm_hashes")? {
            let list = array_of(Some(hashes), "features.mm_hashes")?
                .iter()
                .map(|h| string_of(Some(h), "features.mm_hashes"))
                .collect::<R<Vec<_>>>()?;
            mm_hashes.insert(modality.clone(), list);
        }
        for (modality, ranges) in map_of(f.field("mm_placeholders"), "features.mm_placeholders")? {
            let list = array_of(Some(ranges), "features.mm_placeholders")?
                .iter()
                .map(|r| {
                    expect_struct(r, "features.mm_placeholders")?;
                    Ok((int_of(r.field("offset"), "offset")?, int_of(r.field("length"), "length")?))
                })
                .collect::<R<Vec<_>>>()?;
            mm_placeholders.insert(modality.clone(), list);
        }
    }
    if token_ids.is_empty() {
        return Err("must have non-empty token_ids field".to_string());
    }
    Ok(Generate { token_ids, mm_hashes, mm_placeholders })
}

/// Checks a `/v1/images/generations` body as the parser does (a non-empty `prompt`).
pub(crate) fn images(body: &Node<'_>) -> R<()> {
    expect_struct(body, "ImagesGenerationsRequest")?;
    let prompt = string_of(body.field("prompt"), "prompt")?;
    int_of(body.field("n"), "n")?;
    string_of(body.field("size"), "size")?;
    int_of(body.field("num_inference_steps"), "num_inference_steps")?;
    if prompt.is_empty() {
        return Err("prompt is empty".to_string());
    }
    Ok(())
}
