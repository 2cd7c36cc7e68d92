//! The HTTP edge shared by llmd's servers (feature `axum`): error bodies as axum
//! responses, and serving a router with the socket options token streams need.

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::error_body::ErrorBody;

impl IntoResponse for ErrorBody {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self)).into_response()
    }
}

/// Serves `router` on `listener` until `shutdown` resolves (then finishes the requests
/// in progress).
///
/// Every accepted connection gets `TCP_NODELAY`: tokens stream as small writes, and
/// without it Nagle holds each one until the previous is acknowledged, which delayed
/// acknowledgements stretch to tens of milliseconds of TTFT and inter-token latency.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
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
}
