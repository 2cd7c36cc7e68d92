//! The HTTP edge shared by llmd's servers (feature `axum`): error bodies as axum
//! responses, the API key, and serving a router the way a server on the open network
//! must ([`serve_with`]: socket options token streams need, timeouts for slow and idle
//! clients, a connection limit below the file-descriptor limit, a graceful drain).

mod fdlimit;
mod serve;

pub use fdlimit::{open_file_limit, raise_fd_limit};
pub use serve::*;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error_body::ErrorBody;

impl IntoResponse for ErrorBody {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self)).into_response()
    }
}

/// Turns any error reply that is not JSON already — the framework's own 404, 405, 413
/// (a body over the size limit) or 415 — into an OpenAI-style body with the same status
/// and headers (`Allow` included). Add it to a router with
/// `.layer(axum::middleware::map_response(json_errors))`.
pub async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/event-stream"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    // Framework messages are short; anything longer is cut by `ErrorBody` anyway.
    let text = axum::body::to_bytes(body, 64 * 1024).await.map(|b| String::from_utf8_lossy(&b).trim().to_string());
    let message = match text {
        Ok(t) if !t.is_empty() => t,
        _ => status.canonical_reason().unwrap_or("error").to_string(),
    };
    let mut out = ErrorBody::from_status(status.as_u16(), message).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// Requires `Authorization: Bearer <key>` on the OpenAI routes (`/v1/...`), as vLLM's
/// `--api-key` does; `/health` and `/metrics` stay open for probes and scrapers. A
/// missing or wrong key gets a 401 `AuthenticationError`. The comparison takes the same
/// time wherever the keys differ.
pub fn require_api_key(router: Router, key: String) -> Router {
    let key = std::sync::Arc::new(key);
    router.layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
        let key = key.clone();
        async move {
            if !req.uri().path().starts_with("/v1") {
                return next.run(req).await;
            }
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if same(given.as_bytes(), key.as_bytes()) {
                next.run(req).await
            } else {
                ErrorBody::new(
                    crate::ErrorKind::Unauthorized,
                    "a valid API key is required (Authorization: Bearer ...)",
                )
                .into_response()
            }
        }
    }))
}

// Constant time in the contents: every byte is looked at, whatever differs first.
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn error_bodies_answer_with_their_status() {
        let r = ErrorBody::new(ErrorKind::RateLimit, "slow down").into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    }

    #[test]
    fn keys_compare_equal_only_when_equal() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
        assert!(same(b"", b""));
    }

    #[tokio::test]
    async fn plain_framework_errors_become_openai_json() {
        let plain = (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "POST")], "").into_response();
        let r = json_errors(plain).await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "POST");
        let body = axum::body::to_bytes(r.into_body(), 4096).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], 405);
        assert_eq!(v["error"]["message"], "Method Not Allowed");
        // JSON errors and successes pass untouched.
        let ok = json_errors(StatusCode::OK.into_response()).await;
        assert_eq!(ok.status(), StatusCode::OK);
        let typed = json_errors(ErrorBody::bad_request("x").into_response()).await;
        let body = axum::body::to_bytes(typed.into_body(), 4096).await.unwrap();
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["error"]["message"], "x");
    }
}
