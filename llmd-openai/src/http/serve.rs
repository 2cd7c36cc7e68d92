//! Serving a router: a hand-written accept loop over hyper's HTTP/1 connections with
//! header, body and keep-alive timeouts, a connection limit answered with a 503, and a
//! drain that can cut what is left with an error event.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Bytes, HttpBody};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt;

use super::fdlimit::open_file_limit;
use crate::error::OpenAiError;
use crate::error_body::ErrorBody;

/// How [`serve_with`] treats connections. The defaults suit an engine or a gateway on
/// the open network; tests shorten them.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// A request head (request line and headers) must arrive whole within this, counted
    /// from the connection's opening for its first request and from the first byte of
    /// each later one; a client that sends half its headers and waits (slowloris) is
    /// disconnected. `None`: no limit.
    pub header_read_timeout: Option<Duration>,
    /// A keep-alive connection idle between requests is closed after this. `None`: kept
    /// open until the client closes it.
    pub idle_timeout: Option<Duration>,
    /// A request body must be read whole within this, counted from its head; past it
    /// the read fails (a 400 from the handler that was reading). `None`: no limit.
    pub body_read_timeout: Option<Duration>,
    /// Connections served at once. Beyond it a new connection gets a short `503` with an
    /// OpenAI-style JSON body and `Connection: close`, so that a flood of connections can
    /// not use up the process's file descriptors and lock out the clients it serves.
    pub max_connections: usize,
    /// After `shutdown` resolves: how long the requests in flight may take to finish.
    /// When it passes, [`Lifecycle`] turns [`Phase::Cut`] (handlers end their streams with
    /// an error event), the connections get [`CUT_GRACE`] to write that, and the rest
    /// are closed; `serve_with` then fails with [`std::io::ErrorKind::TimedOut`].
    /// `None`: wait for them as long as they take (the caller bounds it).
    pub drain_timeout: Option<Duration>,
    /// Told when draining begins and when the deadline cuts, for handlers that answer
    /// differently while draining (readiness) or must end open streams. `None`: nobody.
    pub lifecycle: Option<Lifecycle>,
}

/// The header-read timeout by default (hyper's own default).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The idle keep-alive timeout by default: longer than the 90 s for which `reqwest` (the
/// gateway's client) keeps an idle pooled connection, so that the client retires a
/// connection before the server closes it under a request it just sent.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// The request-body read timeout by default.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connections get, once the drain deadline cut their requests, to write the
/// error events that end them.
pub const CUT_GRACE: Duration = Duration::from_secs(1);

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            header_read_timeout: Some(DEFAULT_HEADER_READ_TIMEOUT),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            body_read_timeout: Some(DEFAULT_BODY_READ_TIMEOUT),
            max_connections: default_max_connections(),
            drain_timeout: None,
            lifecycle: None,
        }
    }
}

/// The connection limit by default: a little under half the open-file limit (a gateway
/// holds an upstream socket for each client connection, and the process needs
/// descriptors for files, metrics scrapes and its own clients besides), between 32 and
/// 16 384. Call [`raise_fd_limit`](super::raise_fd_limit) first.
pub fn default_max_connections() -> usize {
    let limit = open_file_limit().unwrap_or(1024);
    usize::try_from(limit.saturating_sub(256) / 2).unwrap_or(usize::MAX).clamp(32, 16_384)
}

/// Where a server stands in its shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Accepting and serving.
    Serving,
    /// Shutdown began: no longer accepting; requests in flight finish.
    Draining,
    /// The drain deadline passed: requests still in flight are being ended.
    Cut,
}

/// A server's [`Phase`], shared between [`serve_with`] (which moves it forward) and the
/// handlers that read it: readiness answers 503 from [`Phase::Draining`] on, and open
/// streams end with an error event at [`Phase::Cut`] rather than being cut off bare.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    tx: Arc<watch::Sender<Phase>>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle { tx: Arc::new(watch::Sender::new(Phase::Serving)) }
    }
}

impl Lifecycle {
    /// A lifecycle in [`Phase::Serving`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        *self.tx.borrow()
    }

    /// Whether shutdown has begun ([`Phase::Draining`] or later).
    pub fn is_draining(&self) -> bool {
        self.phase() >= Phase::Draining
    }

    /// Moves to `to` if that is later than the phase now (phases never go back).
    pub fn advance(&self, to: Phase) {
        self.tx.send_if_modified(|p| {
            let later = to > *p;
            if later {
                *p = to;
            }
            later
        });
    }

    /// Resolves once the phase is [`Phase::Cut`].
    pub fn cut(&self) -> impl Future<Output = ()> + Send + use<> {
        let mut rx = self.tx.subscribe();
        async move {
            // The sender lives as long as any `Lifecycle` clone; none left means never.
            if rx.wait_for(|p| *p == Phase::Cut).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Serves `router` on `listener` with [`ServeConfig::default`] until `shutdown`
/// resolves, then lets the requests in flight finish (for as long as they take: the
/// caller bounds it by dropping this future). See [`serve_with`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, router, shutdown, &ServeConfig::default()).await
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, closes
/// idle connections, lets the requests in flight finish (up to
/// [`drain_timeout`](ServeConfig::drain_timeout)) and returns.
///
/// Every accepted connection gets `TCP_NODELAY`: tokens stream as small writes, and
/// without it Nagle holds each one until the previous is acknowledged, which delayed
/// acknowledgements stretch to tens of milliseconds of TTFT and inter-token latency.
/// Each is timed as `cfg` says (header read, idle keep-alive, body read), and at most
/// `cfg.max_connections` are served at once (see [`ServeConfig`]). Accept errors (out of
/// file descriptors) are logged and retried after a pause without disturbing the
/// connections being served. HTTP/1.1 only, like the `axum` feature set this crate uses.
///
/// If this future is dropped while draining (a caller's own deadline), `cfg.lifecycle`
/// turns [`Phase::Cut`] and the connections still open get [`CUT_GRACE`] to finish.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    cfg: &ServeConfig,
) -> std::io::Result<()> {
    let cfg = Arc::new(cfg.clone());
    let lifecycle = cfg.lifecycle.clone().unwrap_or_default();
    let max = u32::try_from(cfg.max_connections.clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
    let slots = Arc::new(Semaphore::new(max as usize));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let (stop_tx, stop_rx) = watch::channel(Stop::Serve);
    let mut cut_if_dropped = CutIfDropped(Some(lifecycle.clone()));
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                tokio::spawn(serve_connection(tcp, router.clone(), cfg.clone(), stop_rx.clone(), slot));
            }
            Err(_) => match refusals.clone().try_acquire_owned() {
                Ok(slot) => {
                    tracing::debug!(max, "connection limit reached; refusing a connection with 503");
                    tokio::spawn(refuse(tcp, max, slot));
                }
                // Refusals are limited too: past them a connection is closed unanswered.
                Err(_) => drop(tcp),
            },
        }
    }
    // Stop accepting: from here the OS refuses new connections.
    drop(listener);
    lifecycle.advance(Phase::Draining);
    stop_tx.send_replace(Stop::Drain);
    // Every connection holds a slot until it closes: all of them back means all closed.
    let all_closed = slots.acquire_many(max);
    tokio::pin!(all_closed);
    let Some(drain) = cfg.drain_timeout else {
        let _ = all_closed.await;
        cut_if_dropped.0 = None;
        return Ok(());
    };
    if tokio::time::timeout(drain, &mut all_closed).await.is_ok() {
        cut_if_dropped.0 = None;
        return Ok(());
    }
    let open = max as usize - slots.available_permits();
    tracing::warn!(open, ?drain, "drain deadline passed; ending the requests still in flight");
    lifecycle.advance(Phase::Cut);
    if tokio::time::timeout(CUT_GRACE, &mut all_closed).await.is_err() {
        stop_tx.send_replace(Stop::Close);
        let _ = all_closed.await;
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{open} connections were still open at the drain deadline ({drain:?}) and were cut"),
    ))
}

/// Refusals (503 then close) in progress at once, beyond the connection limit.
const MAX_REFUSALS: usize = 64;
/// How long a refused connection may take to read its 503.
const REFUSE_LINGER: Duration = Duration::from_secs(1);
/// The pause after an accept error that is not about one connection (EMFILE, ENFILE,
/// ENOBUFS): such errors persist for a while, and retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What [`serve_with`] tells its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Serve,
    /// Finish the request in progress, then close.
    Drain,
    /// Close now.
    Close,
}

/// Turns a draining lifecycle [`Phase::Cut`] if `serve_with` is dropped before the
/// connections finished (disarmed by setting `None`).
struct CutIfDropped(Option<Lifecycle>);

impl Drop for CutIfDropped {
    fn drop(&mut self) {
        if let Some(l) = &self.0
            && l.phase() == Phase::Draining
        {
            l.advance(Phase::Cut);
        }
    }
}

async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    // Errors about one connection that went away before it was accepted.
    if matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::warn!(error = %e, "accepting a connection failed (out of file descriptors?); retrying shortly");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

/// Answers a connection over the limit with a 503 and closes it.
async fn refuse(mut tcp: TcpStream, max: u32, _slot: OwnedSemaphorePermit) {
    let body =
        ErrorBody::unavailable(format!("the server is at its limit of {max} connections; retry later")).to_json();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n",
        body.len()
    );
    let answered = tokio::time::timeout(REFUSE_LINGER, async {
        tcp.write_all(head.as_bytes()).await?;
        tcp.write_all(body.as_bytes()).await?;
        tcp.shutdown().await?;
        // Read what the client sends until it closes: closing with unread bytes makes the
        // kernel reset the connection, which can destroy the 503 before it is read.
        let mut sink = [0u8; 4096];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
    if let Ok(Err(e)) = answered {
        tracing::debug!(error = %e, "refused connection");
    }
}

/// "No head in progress", in [`ConnState::head_since`].
const NO_HEAD: u64 = u64::MAX;

/// One connection's timing, shared by its watchdog, its socket and its requests. Times
/// are milliseconds since the connection opened.
struct ConnState {
    opened: Instant,
    /// Requests whose response has not been sent whole.
    in_flight: AtomicUsize,
    /// Whether the client ever sent a byte (a connection that never did can be closed at
    /// any moment without cutting a request or a response short).
    heard: AtomicBool,
    /// When the last response ended (or the connection opened).
    idle_since: AtomicU64,
    /// When the head now being read began, or [`NO_HEAD`].
    head_since: AtomicU64,
    /// Wakes the watchdog when the deadline may have changed.
    wake: Notify,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            heard: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            // The first request's head is timed from the opening: a connection that sends
            // nothing counts as a slow head, not as an idle keep-alive.
            head_since: AtomicU64::new(0),
            wake: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(NO_HEAD - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.opened + Duration::from_millis(ms)
    }

    /// When the connection is to be closed if nothing changes: a head not finished in
    /// time, or an idle keep-alive; never while a request is in flight.
    fn deadline(&self, cfg: &ServeConfig) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        match self.head_since.load(Ordering::SeqCst) {
            NO_HEAD => cfg.idle_timeout.map(|t| self.at(self.idle_since.load(Ordering::SeqCst)) + t),
            since => cfg.header_read_timeout.map(|t| self.at(since) + t),
        }
    }

    /// Bytes arrived: between requests, they begin a head.
    fn read_some(&self) {
        self.heard.store(true, Ordering::SeqCst);
        if self.in_flight.load(Ordering::SeqCst) == 0
            && self.head_since.compare_exchange(NO_HEAD, self.now(), Ordering::SeqCst, Ordering::SeqCst).is_ok()
        {
            self.wake.notify_one();
        }
    }

    /// A request's head was read; its response is on its way.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.head_since.store(NO_HEAD, Ordering::SeqCst);
        InFlight(self.clone())
    }
}

/// A request in flight, until its response body has been sent whole (or dropped).
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle_since.store(self.0.now(), Ordering::SeqCst);
        }
        self.0.wake.notify_one();
    }
}

/// The socket, noting when bytes arrive.
struct Watched {
    tcp: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.state.read_some();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

/// A request body that fails once its read deadline passes.
struct BodyWithDeadline {
    inner: Incoming,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    after: Duration,
}

impl HttpBody for BodyWithDeadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match this.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Some(Err(OpenAiError::BodyReadTimeout { after: this.after }.into()))),
            _ => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its request counted in flight until sent whole.
struct Counted {
    inner: axum::body::Body,
    _in_flight: InFlight,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves one connection until it closes, a timeout or [`Stop::Close`] ends it.
async fn serve_connection(
    tcp: TcpStream,
    router: Router,
    cfg: Arc<ServeConfig>,
    mut stop: watch::Receiver<Stop>,
    _slot: OwnedSemaphorePermit,
) {
    let state = Arc::new(ConnState::new());
    let io = TokioIo::new(Watched { tcp, state: state.clone() });
    let body_timeout = cfg.body_read_timeout;
    let requests = state.clone();
    let service = hyper::service::service_fn(move |req: axum::http::Request<Incoming>| {
        let in_flight = requests.begin();
        let req = req.map(|inner| BodyWithDeadline {
            inner,
            deadline: body_timeout.map(|t| Box::pin(tokio::time::sleep(t))),
            after: body_timeout.unwrap_or_default(),
        });
        let response = router.clone().oneshot(req);
        async move {
            let response = response.await?;
            Ok::<_, Infallible>(response.map(|inner| Counted { inner, _in_flight: in_flight }))
        }
    });
    // Heads are timed here rather than by hyper, whose header-read timer also runs while
    // a connection waits idle for its next request.
    let conn = hyper::server::conn::http1::Builder::new().header_read_timeout(None).serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    // Set once `serve_with` is gone (dropped at a caller's deadline): close after a grace.
    let mut orphaned_at: Option<Instant> = None;
    loop {
        match *stop.borrow_and_update() {
            Stop::Close => return,
            Stop::Drain if !draining => {
                draining = true;
                // A connection that never sent anything has nothing to finish.
                if !state.heard.load(Ordering::SeqCst) {
                    return;
                }
                // Closes the connection now if idle, else after the request in progress.
                conn.as_mut().graceful_shutdown();
            }
            _ => {}
        }
        let deadline = match (state.deadline(&cfg), orphaned_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = state.wake.notified() => {}
            changed = stop.changed(), if orphaned_at.is_none() => {
                if changed.is_err() {
                    orphaned_at = Some(Instant::now() + CUT_GRACE);
                }
            }
            () = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                let now = Instant::now();
                if orphaned_at.is_some_and(|t| t <= now) {
                    return;
                }
                if state.deadline(&cfg).is_some_and(|d| d <= now) {
                    tracing::debug!("closing a connection: request head too slow, or idle too long");
                    return;
                }
            }
        }
    }
}
