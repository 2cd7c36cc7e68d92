//! `http::serve_with` over real sockets on 127.0.0.1, with timeouts shortened to a few
//! hundred milliseconds: slow heads and idle keep-alives are closed, slow bodies fail,
//! the connection limit answers 503 without disturbing the connections it serves, and a
//! drain ends with an error event on streams its deadline cuts. Every wait is bounded.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::response::sse::{Event, Sse};
use axum::routing::{get, post};
use llmd_openai::http::{Lifecycle, Phase, ServeConfig, json_errors, serve_with};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Long enough for a loaded 2-core machine to do everything it must before a deadline.
const BOUND: Duration = Duration::from_secs(10);

fn router(lifecycle: Lifecycle) -> Router {
    let cut = lifecycle.clone();
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/echo", post(|b: Bytes| async move { format!("{} bytes", b.len()) }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(600)).await;
                "slow"
            }),
        )
        .route(
            "/stream",
            get(move || {
                // One event, then nothing until the drain deadline cuts the stream.
                let events = cut_stream(cut.cut());
                async move { Sse::new(events) }
            }),
        )
        .layer(axum::middleware::map_response(json_errors))
}

/// `data: hello`, then (once cut) an OpenAI error event, then the end.
fn cut_stream(
    cut: impl std::future::Future<Output = ()> + Send + 'static,
) -> impl futures_util::Stream<Item = Result<Event, Infallible>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let _ = tx.send(Event::default().data("hello")).await;
        cut.await;
        let e = llmd_openai::ErrorBody::unavailable("cut at the drain deadline");
        let _ = tx.send(Event::default().data(e.to_json())).await;
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) })
}

struct Running {
    addr: String,
    stop: Option<oneshot::Sender<()>>,
    served: JoinHandle<std::io::Result<()>>,
    lifecycle: Lifecycle,
}

async fn start(cfg: ServeConfig) -> Running {
    let lifecycle = Lifecycle::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = oneshot::channel::<()>();
    let cfg = ServeConfig { lifecycle: Some(lifecycle.clone()), ..cfg };
    let app = router(lifecycle.clone());
    let served = tokio::spawn(async move {
        serve_with(
            listener,
            app,
            async move {
                let _ = rx.await;
            },
            &cfg,
        )
        .await
    });
    Running { addr, stop: Some(tx), served, lifecycle }
}

fn short(cfg: ServeConfig) -> ServeConfig {
    ServeConfig {
        header_read_timeout: Some(Duration::from_secs(5)),
        idle_timeout: Some(Duration::from_secs(5)),
        body_read_timeout: Some(Duration::from_secs(5)),
        max_connections: 64,
        ..cfg
    }
}

/// Reads one response (head and a `Content-Length` body) off a kept-alive connection.
async fn read_response(s: &mut TcpStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(BOUND, s.read(&mut byte)).await.unwrap().unwrap();
        assert_eq!(n, 1, "connection closed mid-head: {:?}", String::from_utf8_lossy(&buf));
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let status = head[9..12].parse().unwrap();
    let len = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    tokio::time::timeout(BOUND, s.read_exact(&mut body)).await.unwrap().unwrap();
    (status, head, String::from_utf8(body).unwrap())
}

async fn get_on(s: &mut TcpStream, path: &str) -> (u16, String, String) {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    read_response(s).await
}

/// Waits (bounded) for the server to close `s`; returns how long that took.
async fn closed_within(s: &mut TcpStream, bound: Duration) -> Duration {
    let t = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(bound, s.read(&mut buf)).await {
            Err(_) => panic!("connection still open after {bound:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return t.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_client_that_sends_half_its_headers_is_disconnected_at_the_header_timeout() {
    let timeout = Duration::from_millis(300);
    let srv = start(ServeConfig { header_read_timeout: Some(timeout), ..short(ServeConfig::default()) }).await;
    let mut slow = TcpStream::connect(&srv.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    let took = closed_within(&mut slow, BOUND).await;
    assert!(took >= timeout - Duration::from_millis(50), "closed before the timeout: {took:?}");
    // A connection that sends nothing at all is a slow head too.
    let mut silent = TcpStream::connect(&srv.addr).await.unwrap();
    closed_within(&mut silent, BOUND).await;
    // Control: whole headers in time are answered.
    let mut ok = TcpStream::connect(&srv.addr).await.unwrap();
    assert_eq!(get_on(&mut ok, "/health").await.0, 200);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_and_busy_ones_are_not() {
    let idle = Duration::from_millis(300);
    // The header timeout is shorter than the idle one and must not cut the idle wait.
    let cfg = ServeConfig {
        idle_timeout: Some(idle),
        header_read_timeout: Some(Duration::from_millis(150)),
        ..short(ServeConfig::default())
    };
    let srv = start(cfg).await;
    let mut s = TcpStream::connect(&srv.addr).await.unwrap();
    assert_eq!(get_on(&mut s, "/health").await.0, 200);
    let took = closed_within(&mut s, BOUND).await;
    assert!(took >= idle - Duration::from_millis(50), "closed before the idle timeout: {took:?}");

    // Idle past the header timeout but within the idle one: still open.
    let mut s = TcpStream::connect(&srv.addr).await.unwrap();
    assert_eq!(get_on(&mut s, "/health").await.0, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get_on(&mut s, "/health").await.0, 200);

    // A response slower than the idle timeout is not cut: the connection is not idle.
    let mut s = TcpStream::connect(&srv.addr).await.unwrap();
    let (status, _, body) = get_on(&mut s, "/slow").await;
    assert_eq!((status, body.as_str()), (200, "slow"));
}

#[tokio::test]
async fn a_body_slower_than_its_timeout_gets_a_json_400() {
    let srv =
        start(ServeConfig { body_read_timeout: Some(Duration::from_millis(300)), ..short(ServeConfig::default()) })
            .await;
    let mut s = TcpStream::connect(&srv.addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten b").await.unwrap();
    let (status, _, body) = read_response(&mut s).await;
    assert_eq!(status, 400, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("not received within"), "{body}");
    // Control: a whole body is read.
    let mut s = TcpStream::connect(&srv.addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc").await.unwrap();
    assert_eq!(read_response(&mut s).await.2, "3 bytes");
}

#[tokio::test]
async fn connections_past_the_limit_get_a_503_and_the_served_ones_keep_working() {
    let srv = start(ServeConfig { max_connections: 2, ..short(ServeConfig::default()) }).await;
    let mut a = TcpStream::connect(&srv.addr).await.unwrap();
    let mut b = TcpStream::connect(&srv.addr).await.unwrap();
    assert_eq!(get_on(&mut a, "/health").await.0, 200);
    assert_eq!(get_on(&mut b, "/health").await.0, 200);

    let mut c = TcpStream::connect(&srv.addr).await.unwrap();
    let (status, head, body) = get_on(&mut c, "/health").await;
    assert_eq!(status, 503);
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], 503);
    assert_eq!(v["error"]["type"], "ServiceUnavailableError");
    closed_within(&mut c, BOUND).await;

    // The two served connections are untouched.
    assert_eq!(get_on(&mut a, "/health").await.0, 200);
    assert_eq!(get_on(&mut b, "/health").await.0, 200);

    // Once one closes, its slot is free again (the server notices asynchronously).
    drop(a);
    let t = Instant::now();
    loop {
        let mut d = TcpStream::connect(&srv.addr).await.unwrap();
        if get_on(&mut d, "/health").await.0 == 200 {
            break;
        }
        assert!(t.elapsed() < BOUND, "the closed connection's slot never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_drain_finishes_requests_in_flight_and_refuses_new_connections() {
    let mut srv = start(short(ServeConfig::default())).await;
    let mut busy = TcpStream::connect(&srv.addr).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut idle = TcpStream::connect(&srv.addr).await.unwrap();
    assert_eq!(get_on(&mut idle, "/health").await.0, 200);
    let fresh = TcpStream::connect(&srv.addr).await.unwrap();
    // Let the server see the slow request before shutdown begins.
    tokio::time::sleep(Duration::from_millis(100)).await;
    srv.stop.take().unwrap().send(()).unwrap();

    let (status, head, body) = read_response(&mut busy).await;
    assert_eq!((status, body.as_str()), (200, "slow"));
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
    closed_within(&mut idle, BOUND).await;
    let mut fresh = fresh;
    closed_within(&mut fresh, BOUND).await;
    tokio::time::timeout(BOUND, srv.served).await.unwrap().unwrap().unwrap();
    assert_eq!(srv.lifecycle.phase(), Phase::Draining);
    assert!(TcpStream::connect(&srv.addr).await.is_err(), "still accepting after the drain");
}

#[tokio::test]
async fn streams_cut_at_the_drain_deadline_end_with_an_error_event() {
    let drain = Duration::from_millis(300);
    let mut srv = start(ServeConfig { drain_timeout: Some(drain), ..short(ServeConfig::default()) }).await;
    let mut s = TcpStream::connect(&srv.addr).await.unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("data: hello") {
        let n = tokio::time::timeout(BOUND, s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    let t = Instant::now();
    srv.stop.take().unwrap().send(()).unwrap();
    loop {
        let n = tokio::time::timeout(BOUND, s.read(&mut buf)).await.unwrap().unwrap_or(0);
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(t.elapsed() >= drain - Duration::from_millis(50), "cut before the deadline");
    assert!(text.contains(r#"data: {"error":{"message":"cut at the drain deadline""#), "{text}");
    let err = tokio::time::timeout(BOUND, srv.served).await.unwrap().unwrap().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert_eq!(srv.lifecycle.phase(), Phase::Cut);
}

#[test]
fn the_open_file_limit_is_read_and_raised_where_the_os_has_one() {
    let before = llmd_openai::http::open_file_limit();
    let after = llmd_openai::http::raise_fd_limit();
    if cfg!(unix) {
        assert!(after >= before && after.is_some(), "{before:?} -> {after:?}");
        assert_eq!(llmd_openai::http::open_file_limit(), after);
    }
    let max = llmd_openai::http::default_max_connections();
    assert!((32..=16_384).contains(&max), "{max}");
}
