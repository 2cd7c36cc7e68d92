//! Request parsers, as llm-d-router's `requestHandler.parsers` configures them: each
//! parser claims request-path suffixes, the longest matching suffix picks the parser,
//! and a parser claiming none (`passthrough-parser`) takes every other path.
//!
//! A parser reads what routing needs from a request body ([`BodyParser::parse`],
//! [`BodyParser::parse_bytes`]) and the token usage from a response
//! ([`BodyParser::parse_response`], [`BodyParser::parse_usage`]). The request checks and
//! their error messages are the router's (`pkg/epp/framework/plugins/requesthandling/parsers`);
//! fields are matched as Go's `encoding/json` matches struct fields (exactly, else
//! ignoring ASCII case), and `null` is a field's zero value.
//!
//! | type | claims | reads |
//! |---|---|---|
//! | `openai-parser` | `chat/completions`, `completions`, `embeddings`, `responses`, ... | OpenAI JSON |
//! | `anthropic-parser` | `messages`, `messages/count_tokens` | Anthropic Messages JSON |
//! | `vllmhttp-parser` | `inference/v1/generate` | vLLM's pre-tokenized generate JSON |
//! | `sglanghttp-parser` | `generate` (only the path `/generate`) | SGLang's pre-tokenized generate JSON |
//! | `vertexai-parser` | `PredictionService/{ChatCompletions,StreamRawPredict,RawPredict}` | gRPC: OpenAI JSON in a `google.api.HttpBody` |
//! | `vllmgrpc-parser` | `vllm.grpc.engine.VllmEngine/{Generate,Embed}` | gRPC: vLLM's engine protobuf |
//! | `passthrough-parser` | (any other path) | nothing |

mod anthropic;
mod generate;
mod gotypes;
mod grpc;
mod openai;

use serde_json::Value;

use crate::plugin::PluginHandle;
use crate::registry::PluginRegistry;

/// Token usage parsed from a response: llmd-openai's usage type, the shape of the
/// router's `requesthandling.Usage` (prompt, completion and total tokens, and the cached
/// prompt tokens when the response reports them).
pub use llmd_openai::Usage;

/// A request-body parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyParser {
    /// `openai-parser`: OpenAI completions and chat bodies (`prompt`, `messages`).
    OpenAi,
    /// `anthropic-parser`: Anthropic Messages bodies (`system`, `messages`).
    Anthropic,
    /// `vllmhttp-parser`: vLLM's `/inference/v1/generate` (pre-tokenized `token_ids`).
    VllmHttp,
    /// `sglanghttp-parser`: SGLang's native `/generate` (pre-tokenized `input_ids`).
    SglangHttp,
    /// `vertexai-parser`: Vertex AI's gRPC prediction service, an OpenAI body in an
    /// `HttpBody`; reads bytes ([`parse_bytes`](Self::parse_bytes)).
    VertexAi,
    /// `vllmgrpc-parser`: vLLM's gRPC engine service; reads bytes
    /// ([`parse_bytes`](Self::parse_bytes)).
    VllmGrpc,
    /// `passthrough-parser`: the body is not read; any path.
    Passthrough,
}

/// What routing reads from a request body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedBody {
    /// The model the body names (`""` when it names none, as for SGLang and vLLM gRPC
    /// bodies, whose router parsers read no model).
    pub model: String,
    /// The text prefix-aware scoring hashes: for chat-like bodies the messages as
    /// `role\ncontent\n` (text parts only; an Anthropic `system` first, as a message of
    /// role `system`), as `llmd_openai::prompt_text` flattens OpenAI chat; a completions
    /// `prompt` as it is; `""` for pre-tokenized bodies.
    pub prompt: String,
    /// Pre-tokenized input: an OpenAI `prompt` of ids, vLLM generate `token_ids`, SGLang
    /// `input_ids`, vLLM gRPC `tokenized.input_ids`.
    pub token_ids: Option<Vec<u32>>,
    /// Whether the client asked for a stream (`stream: true`).
    pub stream: bool,
    /// Multimodal items in the prompt (content blocks, or generate feature ranges).
    pub multimodal: usize,
    /// The prefix-cache isolation salt (`cache_salt`; SGLang `extra_key`), when not empty.
    pub cache_salt: Option<String>,
    /// The body's output-token cap (`max_tokens` and the like, per API), when it gives a
    /// non-negative integer (the router's `MaxOutputTokens`).
    pub max_output_tokens: Option<u64>,
    /// The router sets `SkipResponseProcessing`: the path is one the parser forwards
    /// unread (Anthropic `count_tokens`, a gRPC method it does not know), and its
    /// response carries no usage to read.
    pub skip_response: bool,
}

impl BodyParser {
    /// Every parser type llmd builds (all of llm-d-router's).
    pub const ALL: [BodyParser; 7] = [
        BodyParser::OpenAi,
        BodyParser::Anthropic,
        BodyParser::VllmHttp,
        BodyParser::SglangHttp,
        BodyParser::VertexAi,
        BodyParser::VllmGrpc,
        BodyParser::Passthrough,
    ];

    /// The parser for a registered type name.
    pub fn from_type(type_name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.type_name() == type_name)
    }

    /// Its type name.
    pub fn type_name(self) -> &'static str {
        match self {
            BodyParser::OpenAi => "openai-parser",
            BodyParser::Anthropic => "anthropic-parser",
            BodyParser::VllmHttp => "vllmhttp-parser",
            BodyParser::SglangHttp => "sglanghttp-parser",
            BodyParser::VertexAi => "vertexai-parser",
            BodyParser::VllmGrpc => "vllmgrpc-parser",
            BodyParser::Passthrough => "passthrough-parser",
        }
    }

    /// The path suffixes it claims (llm-d-router's `Claims().Paths`); none for a fallback.
    pub fn claims(self) -> &'static [&'static str] {
        match self {
            BodyParser::OpenAi => &[
                "chat/completions",
                "completions",
                "embeddings",
                "responses",
                "conversations",
                "chat/completions/render",
                "completions/render",
                "images/generations",
            ],
            BodyParser::Anthropic => &["messages", "messages/count_tokens"],
            BodyParser::VllmHttp => &["inference/v1/generate"],
            BodyParser::SglangHttp => &["generate"],
            BodyParser::VertexAi => &[
                "PredictionService/ChatCompletions",
                "PredictionService/StreamRawPredict",
                "PredictionService/RawPredict",
            ],
            BodyParser::VllmGrpc => &["vllm.grpc.engine.VllmEngine/Generate", "vllm.grpc.engine.VllmEngine/Embed"],
            BodyParser::Passthrough => &[],
        }
    }

    /// Whether it reads the body at all (every parser but `passthrough-parser`).
    pub fn reads_body(self) -> bool {
        self != BodyParser::Passthrough
    }

    /// Whether its bodies are gRPC-framed protobuf rather than JSON: read them with
    /// [`parse_bytes`](Self::parse_bytes), not [`parse`](Self::parse).
    pub fn is_grpc(self) -> bool {
        matches!(self, BodyParser::VertexAi | BodyParser::VllmGrpc)
    }

    /// Reads a JSON request body arriving at `path` (its query is ignored). An error is
    /// the router's refusal of a malformed body (to be answered with 400). The OpenAI
    /// parser refuses nothing (llmd's reading: model, prompt text, prompt ids,
    /// multimodal parts); the gRPC parsers refuse every JSON body (they read bytes).
    pub fn parse(self, path: &str, body: &Value) -> Result<ParsedBody, String> {
        let path = request_path(path);
        match self {
            BodyParser::OpenAi => Ok(openai::parse(path, body)),
            BodyParser::Anthropic => anthropic::parse(path, Some(body)),
            BodyParser::VllmHttp => generate::parse_vllm(path, Some(body)),
            BodyParser::SglangHttp => generate::parse_sglang(path, Some(body)),
            BodyParser::VertexAi | BodyParser::VllmGrpc => {
                Err(format!("{} reads a gRPC-framed protobuf body, not JSON", self.type_name()))
            }
            BodyParser::Passthrough => Ok(ParsedBody::default()),
        }
    }

    /// Reads a request body as it arrived (JSON, or a gRPC frame for the gRPC parsers).
    /// Unlike [`parse`](Self::parse) the JSON parsers see bodies that are not JSON, and
    /// refuse them as the router does, except where the router forwards the body unread
    /// (Anthropic `count_tokens`, unknown gRPC methods, `passthrough-parser`).
    pub fn parse_bytes(self, path: &str, body: &[u8]) -> Result<ParsedBody, String> {
        let json = || serde_json::from_slice::<Value>(body).map_err(|e| e.to_string());
        match self {
            BodyParser::OpenAi => {
                let v = json().map_err(|e| format!("error unmarshaling request bodyMap: {e}"))?;
                self.parse(path, &v)
            }
            BodyParser::Anthropic => {
                let path = request_path(path);
                if anthropic::is_count_tokens(path) {
                    return anthropic::parse(path, None);
                }
                anthropic::check_path(path)?;
                let v = json().map_err(|e| format!("error unmarshaling request body: {e}"))?;
                anthropic::parse(path, Some(&v))
            }
            BodyParser::VllmHttp => {
                let path = request_path(path);
                generate::check_vllm_path(path)?;
                generate::parse_vllm(path, Some(&json()?))
            }
            BodyParser::SglangHttp => {
                let path = request_path(path);
                generate::check_sglang_path(path)?;
                let v = json().map_err(|e| format!("invalid generate request: {e}"))?;
                generate::parse_sglang(path, Some(&v))
            }
            BodyParser::VertexAi => grpc::parse_vertex(path, body),
            BodyParser::VllmGrpc => grpc::parse_vllm(path, body),
            BodyParser::Passthrough => Ok(ParsedBody::default()),
        }
    }

    /// The router's `ParseResponse` of one response body, or one chunk of a streamed one:
    /// `event_stream` when the response's content type is `text/event-stream` (ignored by
    /// the gRPC parsers, whose chunks are gRPC frames). `Ok(None)` when the chunk reports
    /// no usage; an error for a body the parser cannot read (non-streamed JSON that is
    /// not JSON, a malformed gRPC frame).
    pub fn parse_response(self, chunk: &[u8], event_stream: bool) -> Result<Option<Usage>, String> {
        match self {
            BodyParser::OpenAi | BodyParser::VllmHttp => openai::response(chunk, event_stream),
            BodyParser::Anthropic => anthropic::response(chunk, event_stream),
            BodyParser::SglangHttp => generate::sglang_response(chunk, event_stream),
            BodyParser::VertexAi => grpc::vertex_response(chunk),
            BodyParser::VllmGrpc => grpc::vllm_response(chunk),
            BodyParser::Passthrough => Ok(None),
        }
    }

    /// The usage a whole response reports: a JSON body, or an SSE stream (told apart by
    /// its first line: `data:`, `event:`, `id:`, `retry:` or a `:` comment), or the gRPC
    /// frames of a gRPC response. What several events or frames report is merged as the
    /// router merges its chunks' usage ([`merge_usage`]). `None` when nothing reports
    /// usage or the body is unreadable.
    pub fn parse_usage(self, body_or_sse: &[u8]) -> Option<Usage> {
        if self.is_grpc() {
            let mut out: Option<Usage> = None;
            for frame in grpc::frames(body_or_sse) {
                if let Ok(Some(u)) = self.parse_response(frame, false) {
                    merge_usage(out.get_or_insert_with(Usage::default), &u);
                }
            }
            return out;
        }
        self.parse_response(body_or_sse, looks_like_sse(body_or_sse)).ok().flatten()
    }
}

/// The router's OpenAI parser refusals of a decoded body arriving at `path` (its
/// `extractRequestBody`: a chat body needs a message, a completions body a prompt, and so
/// on, each field of its Go type), which [`BodyParser::parse`] does not apply to OpenAI
/// bodies (llmd's reading refuses nothing). A caller answering as the router answers
/// refuses the body with this error (400) first.
pub fn check_openai(path: &str, body: &Value) -> Result<(), String> {
    openai::parse_checked(request_path(path), body).map(|_| ())
}

/// Folds one chunk's usage into what a response reported so far, as the router's
/// `mergeUsage` does: a field is taken from the chunks that report it (Anthropic streams
/// split prompt and completion counts over two events), and the total is the chunk's own
/// when it reports both counts and a total, else their sum.
pub fn merge_usage(dst: &mut Usage, src: &Usage) {
    if src.prompt_tokens != 0 {
        dst.prompt_tokens = src.prompt_tokens;
    }
    if src.completion_tokens != 0 {
        dst.completion_tokens = src.completion_tokens;
    }
    if src.prompt_tokens_details.is_some() {
        dst.prompt_tokens_details = src.prompt_tokens_details;
    }
    if src.prompt_tokens != 0 && src.completion_tokens != 0 && src.total_tokens != 0 {
        dst.total_tokens = src.total_tokens;
    } else {
        dst.total_tokens = dst.prompt_tokens + dst.completion_tokens;
    }
}

/// The configured parsers, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParserSet {
    claiming: Vec<BodyParser>,
    fallback: Option<BodyParser>,
}

impl ParserSet {
    /// As llm-d-router builds its registry: a type listed twice counts once, and the
    /// first parser claiming no paths is the fallback, after which nothing is read.
    pub fn new(list: &[BodyParser]) -> Self {
        let mut claiming: Vec<BodyParser> = Vec::new();
        for &p in list {
            if p.claims().is_empty() {
                return ParserSet { claiming, fallback: Some(p) };
            }
            if !claiming.contains(&p) {
                claiming.push(p);
            }
        }
        ParserSet { claiming, fallback: None }
    }

    /// The parser for a request `path` (query ignored): the longest claimed suffix, else
    /// the fallback; `None` when no parser takes it.
    pub fn resolve(&self, path: &str) -> Option<BodyParser> {
        let path = path.split('?').next().unwrap_or_default().trim().trim_end_matches('/');
        let mut best: Option<(usize, BodyParser)> = None;
        for &p in &self.claiming {
            for suffix in p.claims() {
                let suffix = suffix.trim().trim_matches('/');
                if path.ends_with(suffix) && best.is_none_or(|(len, _)| suffix.len() > len) {
                    best = Some((suffix.len(), p));
                }
            }
        }
        best.map(|(_, p)| p).or(self.fallback)
    }
}

/// The parsers llm-d-router configures when `requestHandler.parsers` names none
/// (`ensureParsers`): OpenAI, Anthropic and vLLM HTTP, then passthrough for every other
/// path.
pub fn router_defaults() -> ParserSet {
    ParserSet::new(&[BodyParser::OpenAi, BodyParser::Anthropic, BodyParser::VllmHttp, BodyParser::Passthrough])
}

/// Registers the parser types (their parameters are ignored, as the router's are).
pub(crate) fn register(r: &mut PluginRegistry) {
    for p in BodyParser::ALL {
        r.register(p.type_name(), move |n, _| {
            Ok(PluginHandle { name: n.into(), type_name: p.type_name().into(), parser: Some(p), ..Default::default() })
        });
    }
}

/// The request path as the router's `GetRequestPath` gives it to a parser: without its
/// query.
fn request_path(path: &str) -> &str {
    path.split_once('?').map_or(path, |(p, _)| p)
}

/// Whether a response body is an SSE stream rather than JSON, by its first line.
fn looks_like_sse(body: &[u8]) -> bool {
    let start = body.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(body.len());
    let rest = &body[start..];
    [&b"data:"[..], b"event:", b"id:", b"retry:", b":"].iter().any(|p| rest.starts_with(p))
}

/// Go's `strings.HasSuffix(path, suffix)` after `MatchPathSuffix`'s trimming (the
/// router's API-type dispatch inside a parser).
fn match_path_suffix(path: &str, suffix: &str) -> bool {
    let path = path.trim();
    let path = path.strip_suffix('/').unwrap_or(path);
    path.ends_with(suffix.trim().trim_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_claimed_suffix_wins_then_the_fallback() {
        let only_openai = ParserSet::new(&[BodyParser::OpenAi]);
        assert_eq!(only_openai.resolve("/v1/chat/completions"), Some(BodyParser::OpenAi));
        assert_eq!(only_openai.resolve("/v1/completions/?x=1"), Some(BodyParser::OpenAi));
        assert_eq!(only_openai.resolve("/v1/messages"), None);
        let both = ParserSet::new(&[BodyParser::OpenAi, BodyParser::Passthrough]);
        assert_eq!(both.resolve("/v1/messages"), Some(BodyParser::Passthrough));
        assert_eq!(both.resolve("/v1/embeddings"), Some(BodyParser::OpenAi));
        // Nothing after the fallback is read.
        let first = ParserSet::new(&[BodyParser::Passthrough, BodyParser::OpenAi]);
        assert_eq!(first.resolve("/v1/completions"), Some(BodyParser::Passthrough));
    }

    /// Each parser's `Claims().Paths` (the Go tests `TestAnthropicParser_Claims`,
    /// `TestVllmHTTPParser_Claims`, `TestSGLangHTTPParser_Claims`,
    /// `TestVertexAIParser_Metadata`, `TestVllmGRPCParser_Claims`) and type names
    /// (`TestNew*Parser`).
    #[test]
    fn claims_and_type_names_are_the_routers() {
        let cases: [(&str, &[&str]); 7] = [
            (
                "openai-parser",
                &[
                    "chat/completions",
                    "completions",
                    "embeddings",
                    "responses",
                    "conversations",
                    "chat/completions/render",
                    "completions/render",
                    "images/generations",
                ],
            ),
            ("anthropic-parser", &["messages", "messages/count_tokens"]),
            ("vllmhttp-parser", &["inference/v1/generate"]),
            ("sglanghttp-parser", &["generate"]),
            (
                "vertexai-parser",
                &[
                    "PredictionService/ChatCompletions",
                    "PredictionService/StreamRawPredict",
                    "PredictionService/RawPredict",
                ],
            ),
            ("vllmgrpc-parser", &["vllm.grpc.engine.VllmEngine/Generate", "vllm.grpc.engine.VllmEngine/Embed"]),
            ("passthrough-parser", &[]),
        ];
        for (t, claims) in cases {
            let p = BodyParser::from_type(t).unwrap_or_else(|| panic!("{t}"));
            assert_eq!((p.type_name(), p.claims()), (t, claims));
        }
        assert_eq!(BodyParser::from_type("nope"), None);
        let mut reg = PluginRegistry::default();
        register(&mut reg);
        for p in BodyParser::ALL {
            let h = reg.get(p.type_name()).map(|f| f("mine", &serde_json::json!({"ignored": 1})));
            assert_eq!(h.map(|h| h.map(|h| (h.name, h.parser))), Some(Ok(("mine".to_string(), Some(p)))));
        }
    }

    /// `ensureParsers`' default list, resolved as the router's `ParserRegistry` does
    /// (handlers' `TestParserRegistry*`): each API to its parser, anything else to
    /// passthrough.
    #[test]
    fn the_router_default_list_resolves_each_api() {
        use BodyParser::*;
        let d = router_defaults();
        for (path, want) in [
            ("/v1/chat/completions", OpenAi),
            ("/v1/completions", OpenAi),
            ("/v1/responses", OpenAi),
            ("/v1/messages", Anthropic),
            ("/v1/messages/count_tokens", Anthropic),
            ("/v1/messages?beta=true", Anthropic),
            ("/inference/v1/generate", VllmHttp),
            ("/generate", Passthrough),
            ("/v1/models", Passthrough),
            ("/google.cloud.aiplatform.v1beta1.PredictionService/ChatCompletions", Passthrough),
        ] {
            assert_eq!(d.resolve(path), Some(want), "{path}");
        }
    }

    /// With vLLM HTTP and SGLang both configured, `/inference/v1/generate` is vLLM's
    /// whatever the order (the longer suffix), and SGLang takes the other `generate` paths.
    #[test]
    fn vllm_generate_outranks_sglang_generate_in_either_order() {
        use BodyParser::*;
        for list in [[VllmHttp, SglangHttp], [SglangHttp, VllmHttp]] {
            let s = ParserSet::new(&list);
            assert_eq!(s.resolve("/inference/v1/generate"), Some(VllmHttp), "{list:?}");
            assert_eq!(s.resolve("/generate"), Some(SglangHttp), "{list:?}");
            // Resolution only matches suffixes; the SGLang parser then refuses paths
            // other than `/generate` (TestSGLangHTTPParser_RejectsPathWithoutSegmentBoundary).
            assert_eq!(s.resolve("/regenerate"), Some(SglangHttp), "{list:?}");
        }
        let s = ParserSet::new(&[SglangHttp, VllmHttp]);
        let body = serde_json::json!({"input_ids": [1]});
        let e = s.resolve("/regenerate").map(|p| p.parse("/regenerate", &body));
        assert_eq!(e, Some(Err("unsupported path: /regenerate".to_string())));
        // `RawPredict` does not claim `StreamRawPredict`'s path: the longer suffix wins.
        let v = ParserSet::new(&[VertexAi]);
        assert_eq!(v.resolve("/x.PredictionService/StreamRawPredict"), Some(VertexAi));
        assert_eq!(v.resolve("/x.PredictionService/Predict"), None);
    }

    /// The router's `mergeUsage` (handlers' response tests): fields come from the chunks
    /// reporting them, the total from a complete chunk or the sum.
    #[test]
    fn usage_merges_as_the_router_merges_chunks() {
        let mut u = Usage::default();
        merge_usage(&mut u, &Usage { prompt_tokens: 25, total_tokens: 25, ..Usage::default() });
        merge_usage(&mut u, &Usage { completion_tokens: 15, total_tokens: 15, ..Usage::default() });
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens), (25, 15, 40));
        merge_usage(&mut u, &Usage::new(10, 5, 2));
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens, u.cached_tokens()), (10, 5, 15, 2));
        let mut own = Usage::default();
        merge_usage(&mut own, &Usage { prompt_tokens: 1, completion_tokens: 1, total_tokens: 7, ..Usage::default() });
        assert_eq!(own.total_tokens, 7);
    }

    #[test]
    fn passthrough_reads_nothing_and_grpc_parsers_refuse_json() {
        let body = serde_json::json!({"model": "m", "prompt": "p"});
        assert_eq!(BodyParser::Passthrough.parse("/v1/completions", &body), Ok(ParsedBody::default()));
        assert_eq!(BodyParser::Passthrough.parse_bytes("/x", b"not json"), Ok(ParsedBody::default()));
        assert_eq!(BodyParser::Passthrough.parse_usage(br#"{"usage":{"prompt_tokens":1}}"#), None);
        for p in [BodyParser::VertexAi, BodyParser::VllmGrpc] {
            assert!(p.is_grpc() && p.reads_body());
            assert!(p.parse("/x", &body).is_err_and(|e| e.contains("gRPC")), "{p:?}");
        }
        assert!(!BodyParser::Passthrough.reads_body());
    }
}
