//! OpenAI-style error bodies, `{"error": {"message", "type", "param", "code"}}`, as vLLM
//! sends them: `type` names the error class (`BadRequestError`, …) and `code` repeats
//! the HTTP status.

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::OpenAiError;

/// The error classes an OpenAI-compatible server answers with, each with its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// 400: the request is malformed or asks for something unsupported.
    BadRequest,
    /// 401: no or a wrong API key.
    Unauthorized,
    /// 404: an unknown model or route.
    NotFound,
    /// 429: the server is overloaded; retry later.
    RateLimit,
    /// 500: the server failed.
    InternalServer,
    /// 502: a gateway's upstream failed.
    BadGateway,
    /// 503: nothing can serve the request now (engine stopped, no endpoint).
    ServiceUnavailable,
    /// 504: a gateway's upstream did not answer in time.
    GatewayTimeout,
}

impl ErrorKind {
    /// Every kind, for iterating.
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::BadRequest,
        ErrorKind::Unauthorized,
        ErrorKind::NotFound,
        ErrorKind::RateLimit,
        ErrorKind::InternalServer,
        ErrorKind::BadGateway,
        ErrorKind::ServiceUnavailable,
        ErrorKind::GatewayTimeout,
    ];

    /// The HTTP status.
    pub const fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::NotFound => 404,
            ErrorKind::RateLimit => 429,
            ErrorKind::InternalServer => 500,
            ErrorKind::BadGateway => 502,
            ErrorKind::ServiceUnavailable => 503,
            ErrorKind::GatewayTimeout => 504,
        }
    }

    /// The body's `type`, as vLLM and the OpenAI client name it.
    pub const fn type_name(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "BadRequestError",
            ErrorKind::Unauthorized => "AuthenticationError",
            ErrorKind::NotFound => "NotFoundError",
            ErrorKind::RateLimit => "RateLimitError",
            ErrorKind::InternalServer => "InternalServerError",
            ErrorKind::BadGateway => "BadGatewayError",
            ErrorKind::ServiceUnavailable => "ServiceUnavailableError",
            ErrorKind::GatewayTimeout => "GatewayTimeoutError",
        }
    }

    /// The kind for an HTTP status: exact for the statuses above, else `BadRequest` for
    /// other 4xx and `InternalServer` for anything else.
    pub const fn from_status(status: u16) -> Self {
        match status {
            401 => ErrorKind::Unauthorized,
            404 => ErrorKind::NotFound,
            429 => ErrorKind::RateLimit,
            502 => ErrorKind::BadGateway,
            503 => ErrorKind::ServiceUnavailable,
            504 => ErrorKind::GatewayTimeout,
            400..=499 => ErrorKind::BadRequest,
            _ => ErrorKind::InternalServer,
        }
    }

    /// The kind a body's `type` names, if it is one of these.
    pub fn from_type_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.type_name() == name)
    }
}

/// The longest message a body carries, in bytes: messages quote input (a parse error
/// echoes the offending text), and a 1.5 MB field must not come back whole.
pub const MAX_MESSAGE_BYTES: usize = 1024;

fn truncate(mut message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let mut cut = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let dropped = message.len() - cut;
    message.truncate(cut);
    message.push_str(&format!("… ({dropped} more bytes)"));
    message
}

/// A whole error body: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The object inside an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// What went wrong, for people.
    pub message: String,
    /// The error class ([`ErrorKind::type_name`]; other servers may send other names).
    #[serde(rename = "type")]
    pub kind: String,
    /// The request parameter at fault, if one is.
    #[serde(default)]
    pub param: Option<String>,
    /// The HTTP status. OpenAI itself sends string codes (`"invalid_api_key"`) or
    /// `null` here; those read as `None`.
    #[serde(default, deserialize_with = "numeric_code")]
    pub code: Option<u16>,
}

fn numeric_code<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(v.as_u64().and_then(|c| u16::try_from(c).ok()))
}

impl ErrorBody {
    /// An error of `kind`, with `code` set to its status and no `param`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                message: truncate(message.into()),
                kind: kind.type_name().into(),
                param: None,
                code: Some(kind.status()),
            },
        }
    }

    /// An error for an HTTP status: `code` is `status` itself and `type` the
    /// [`ErrorKind::from_status`] name.
    pub fn from_status(status: u16, message: impl Into<String>) -> Self {
        let mut body = Self::new(ErrorKind::from_status(status), message);
        body.error.code = Some(status);
        body
    }

    /// 400 `BadRequestError`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }

    /// 404 `NotFoundError`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// 429 `RateLimitError`.
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::RateLimit, message)
    }

    /// 500 `InternalServerError`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InternalServer, message)
    }

    /// 502 `BadGatewayError`.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadGateway, message)
    }

    /// 503 `ServiceUnavailableError`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ServiceUnavailable, message)
    }

    /// Names the request parameter at fault.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.error.param = Some(param.into());
        self
    }

    /// Sets or clears the parameter at fault.
    pub fn with_param_opt(mut self, param: Option<&str>) -> Self {
        self.error.param = param.map(String::from);
        self
    }

    /// The HTTP status to send it with: `code` when numeric, else the status of the
    /// `type` it names, else 500.
    pub fn status(&self) -> u16 {
        self.error.code.or_else(|| self.kind().map(ErrorKind::status)).unwrap_or(ErrorKind::InternalServer.status())
    }

    /// The error class, when `type` names a known one.
    pub fn kind(&self) -> Option<ErrorKind> {
        ErrorKind::from_type_name(&self.error.kind)
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.error.message
    }

    /// The body as JSON text.
    pub fn to_json(&self) -> String {
        // Strings and integers only: serializing cannot fail, but never panic on it.
        serde_json::to_string(self).unwrap_or_else(|e| format!(r#"{{"error":{{"message":"{e}"}}}}"#))
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error.kind, self.error.message)
    }
}

impl From<&OpenAiError> for ErrorBody {
    /// Request problems are 400s naming the parameter at fault; everything else is a
    /// 500, except tokenizer and template failures, which the request's text caused.
    fn from(e: &OpenAiError) -> Self {
        let msg = e.to_string();
        match e {
            OpenAiError::UnsupportedContentPart { .. } => Self::bad_request(msg).with_param("messages"),
            OpenAiError::EmptyPrompt | OpenAiError::BatchedPrompt => Self::bad_request(msg).with_param("prompt"),
            OpenAiError::Tokenizer(_) | OpenAiError::Template(_) => Self::bad_request(msg),
            // The client was too slow to send; 400 as axum answers a body that fails.
            OpenAiError::BodyReadTimeout { .. } => Self::bad_request(msg),
            OpenAiError::StreamData(_) | OpenAiError::Io { .. } | OpenAiError::Config { .. } => Self::internal(msg),
        }
    }
}

impl From<OpenAiError> for ErrorBody {
    fn from(e: OpenAiError) -> Self {
        Self::from(&e)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn each_kind_has_its_status_and_type_and_the_body_has_its_shape() {
        let want = [
            (ErrorKind::BadRequest, 400, "BadRequestError"),
            (ErrorKind::Unauthorized, 401, "AuthenticationError"),
            (ErrorKind::NotFound, 404, "NotFoundError"),
            (ErrorKind::RateLimit, 429, "RateLimitError"),
            (ErrorKind::InternalServer, 500, "InternalServerError"),
            (ErrorKind::BadGateway, 502, "BadGatewayError"),
            (ErrorKind::ServiceUnavailable, 503, "ServiceUnavailableError"),
            (ErrorKind::GatewayTimeout, 504, "GatewayTimeoutError"),
        ];
        assert_eq!(want.len(), ErrorKind::ALL.len());
        for (kind, status, name) in want {
            assert_eq!((kind.status(), kind.type_name()), (status, name));
            assert_eq!(ErrorKind::from_status(status), kind);
            assert_eq!(ErrorKind::from_type_name(name), Some(kind));
            let body = ErrorBody::from_status(status, "boom");
            let v: serde_json::Value = serde_json::from_str(&body.to_json()).unwrap();
            assert_eq!(v, json!({"error": {"message": "boom", "type": name, "param": null, "code": status}}));
            assert_eq!(body.status(), status);
            assert_eq!(body, ErrorBody::new(kind, "boom"));
        }
        let v = serde_json::to_value(ErrorBody::bad_request("no").with_param("n")).unwrap();
        assert_eq!(v, json!({"error": {"message": "no", "type": "BadRequestError", "param": "n", "code": 400}}));
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(1000); // 2 000 bytes
        let b = ErrorBody::bad_request(format!("bad value {long}"));
        assert!(b.message().len() < MAX_MESSAGE_BYTES + 40, "{}", b.message().len());
        assert!(b.message().ends_with("more bytes)"), "{}", b.message());
        assert_eq!(ErrorBody::bad_request("short").message(), "short");
    }

    #[test]
    fn unlisted_statuses_fall_into_a_class_but_keep_their_code() {
        let b = ErrorBody::from_status(413, "too big");
        assert_eq!((b.error.kind.as_str(), b.status()), ("BadRequestError", 413));
        assert_eq!(ErrorKind::from_status(501), ErrorKind::InternalServer);
        assert_eq!(ErrorKind::from_status(200), ErrorKind::InternalServer);
    }

    #[test]
    fn foreign_bodies_parse_and_round_trip() {
        // OpenAI's own shape: a string code, no param.
        let openai: ErrorBody = serde_json::from_value(
            json!({"error": {"message": "bad key", "type": "invalid_request_error", "code": "invalid_api_key"}}),
        )
        .unwrap();
        assert_eq!((openai.error.code, openai.kind(), openai.status()), (None, None, 500));
        let vllm: ErrorBody = serde_json::from_value(
            json!({"error": {"message": "x", "type": "NotFoundError", "param": null, "code": null}}),
        )
        .unwrap();
        assert_eq!(vllm.status(), 404);
        let b = ErrorBody::unavailable("later").with_param_opt(Some("model"));
        assert_eq!(serde_json::from_str::<ErrorBody>(&b.to_json()).unwrap(), b);
        assert_eq!(b.to_string(), "ServiceUnavailableError: later");
    }

    #[test]
    fn crate_errors_become_fitting_bodies() {
        let b = ErrorBody::from(OpenAiError::UnsupportedContentPart { kind: Some("image_url".into()) });
        assert_eq!((b.status(), b.error.param.as_deref()), (400, Some("messages")));
        assert!(b.message().contains("image_url"), "{b}");
        assert_eq!(ErrorBody::from(OpenAiError::BatchedPrompt).error.param.as_deref(), Some("prompt"));
        assert_eq!(ErrorBody::from(OpenAiError::Config { file: "f".into(), reason: "r".into() }).status(), 500);
    }
}
