//! What the web listener serves browsers besides the API (docs/PROTOCOL.md, "WebSocket" and
//! "WebTransport"; docs/HTTP.md, "Browsers"):
//!
//! - `/ws`: a WebSocket whose binary messages carry qkv's TCP byte stream: the pipeline of
//!   [`serve_pipelined`] over the WebSocket, not a copy of it.
//! - `/webtransport-cert`: the SHA-256 of the certificate WebTransport sessions on the QUIC port are
//!   presented, for `serverCertificateHashes`, and that port.
//! - `/v1/stats`: the server's figures, as `qkv stat --json` prints them, for the console.
//! - `/` and `/console/…`: the web console, embedded in the binary.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span};

use super::problem::Problem;
use crate::memory::MemoryBudget;
use crate::metrics::Exporter;
use crate::service::{Caller, Handler};
use crate::stat::{Interval, Snapshot, exposition};
use crate::tls::Credentials;
use crate::transport::Limits;
use crate::transport::log_throttle::{self, HeldBack, LogThrottle};
use crate::transport::messages::message_stream;
use crate::transport::origin::{Origins, host_of};
use crate::transport::pipeline::{AfterClose, serve_pipelined};
use crate::transport::timeouts::StallTimeout;

/// The largest WebSocket message a client may send unless configured otherwise
/// (`--websocket-max-message`); larger frames are split over several messages.
pub const DEFAULT_WEBSOCKET_MAX_MESSAGE: usize = 64 * 1024;

/// The smallest message limit accepted: a frame header and a small request.
pub const MIN_WEBSOCKET_MAX_MESSAGE: usize = crate::transport::messages::MIN_MAX_MESSAGE;

/// The WebSocket subprotocol a client may ask for: `qkv.v1`. A subprotocol's name must be an HTTP
/// token (RFC 6455, 4.1), which a `/` is not, so browsers refuse to ask for [`WEBSOCKET_PROTOCOL_ALPN`].
pub const WEBSOCKET_PROTOCOL: &str = "qkv.v1";

/// The name first documented for the subprotocol, that of qkv's ALPN: still selected when asked for,
/// by clients that can send it (not browsers).
pub const WEBSOCKET_PROTOCOL_ALPN: &str = "qkv/1";

/// What the web listener needs to serve browsers.
#[derive(Clone)]
pub struct Browsers {
    /// The pages allowed to open sessions (`--web-origin`, and the listener's own).
    pub origins: Arc<Origins>,
    /// The certificates, for the WebTransport one.
    pub credentials: Credentials,
    /// The QUIC endpoint's address, where WebTransport sessions go.
    pub quic_addr: SocketAddr,
    /// The largest message a WebSocket client may send (`--websocket-max-message`).
    pub websocket_max_message: usize,
    /// The server's metrics, when it records them (`--admin`), and what sets the gauges read at each
    /// render (`metrics::record_usage`).
    pub metrics: Option<(Exporter, Arc<dyn Fn() + Send + Sync>)>,
    /// When the server started: the first figures are since then.
    pub started: Instant,
}

/// What a WebSocket session (or a gRPC `Pipeline` call) holds beyond what its pipeline charges as it
/// goes (its requests and answers): the message being received, the messages queued for sending, and
/// the pipeline's fixed holdings (its read chunk, the allocation it keeps for its next request).
pub fn websocket_share(max_message: usize) -> usize {
    max_message.saturating_mul(3).saturating_add(crate::transport::pipeline::FIXED_HOLDINGS)
}

/// What the connection a request came on gives the requests that outlive it (a WebSocket, after an
/// HTTP/1.1 upgrade): its admission and its shutdown, held until they end.
#[derive(Clone)]
pub(super) struct ConnectionScope {
    /// Keeps the connection's place (and shutdown's wait) until the session ends.
    pub sessions: tokio_util::task::TaskTracker,
    pub shutdown: CancellationToken,
    /// Keeps the connection from being closed as idle while a session is open.
    pub activity: super::Activity,
    pub memory: MemoryBudget,
    pub limits: Arc<Limits>,
}

#[derive(Clone)]
struct BrowserState<H> {
    handler: H,
    browsers: Browsers,
    figures: Arc<parking_lot::Mutex<Option<Figures>>>,
}

/// The routes for browsers, on `handler`.
pub(super) fn router<H: Handler>(handler: H, browsers: Browsers) -> Router {
    let state = BrowserState { handler, browsers, figures: Arc::default() };
    Router::new()
        .route("/", get(console_index))
        .route("/console/{file}", get(console_file))
        .route("/webtransport-cert", get(webtransport_cert::<H>))
        .route("/v1/stats", get(stats::<H>))
        // HTTP/1.1's upgrade is a GET; HTTP/2's (RFC 8441, which browsers use when the connection
        // offers it) is a CONNECT.
        .route("/ws", get(websocket::<H>).connect(websocket::<H>))
        .with_state(state)
}

/// The console's files, embedded: (name, content type, content).
const CONSOLE: [(&str, &str, &str); 5] = [
    ("index.html", "text/html; charset=utf-8", include_str!("console/index.html")),
    ("console.js", "text/javascript; charset=utf-8", include_str!("console/console.js")),
    ("console.css", "text/css; charset=utf-8", include_str!("console/console.css")),
    ("favicon.svg", "image/svg+xml", include_str!("console/favicon.svg")),
    (CLIENT_BUNDLE, "text/javascript; charset=utf-8", include_str!("console/qkv-client.js")),
];

async fn console_index(headers: HeaderMap) -> Response {
    console_asset("index.html", &headers)
}

async fn console_file(Path(file): Path<String>, headers: HeaderMap) -> Response {
    console_asset(&file, &headers)
}

/// Each console file's ETag: the start of its SHA-256, so that a browser revalidating a file (they
/// are `no-cache`) gets a 304 instead of the file again, until the binary serves another.
static CONSOLE_ETAGS: std::sync::LazyLock<Vec<HeaderValue>> = std::sync::LazyLock::new(|| {
    CONSOLE
        .iter()
        .map(|(_, _, content)| {
            let digest = ring::digest::digest(&ring::digest::SHA256, content.as_bytes());
            let hex: String = digest.as_ref()[..12].iter().map(|b| format!("{b:02x}")).collect();
            HeaderValue::from_str(&format!("\"{hex}\"")).unwrap_or(HeaderValue::from_static("\"\""))
        })
        .collect()
});

/// Whether `If-None-Match` names `etag` (or is `*`): the client's copy is current. Compared weakly,
/// as RFC 9110 (13.1.2) says for this header.
fn unchanged(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let etag = etag.to_str().unwrap_or_default();
    headers.get_all(header::IF_NONE_MATCH).iter().filter_map(|v| v.to_str().ok()).any(|list| {
        list.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
    })
}

/// The client's bundle, which other sites' pages may import as a module (CORS): it is public code, and
/// what such a page may then open is decided where sessions open, by `--web-origin`.
const CLIENT_BUNDLE: &str = "qkv-client.js";

fn console_asset(name: &str, request: &HeaderMap) -> Response {
    let Some(index) = CONSOLE.iter().position(|(file, _, _)| *file == name) else {
        return Problem::new(StatusCode::NOT_FOUND, "the console has no such file").into_response();
    };
    let (_, content_type, content) = CONSOLE[index];
    let etag = CONSOLE_ETAGS.get(index).cloned().unwrap_or(HeaderValue::from_static("\"\""));
    // A 304 carries the headers the 200 would have, but for its content type (RFC 9110, 15.4.5).
    let mut response = match unchanged(request, &etag) {
        // With the 200's length: a Content-Length a 304 carries must be that (RFC 9110, 8.6), and
        // axum would otherwise say 0 for its empty body.
        true => (StatusCode::NOT_MODIFIED, [(header::CONTENT_LENGTH, HeaderValue::from(content.len()))])
            .into_response(),
        false => ([(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], content).into_response(),
    };
    let headers = response.headers_mut();
    // The files change with the binary: revalidate (by the ETag), never serve a stale console.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::ETAG, etag);
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self' https: wss: ws:; frame-ancestors 'none'",
        ),
    );
    if name == CLIENT_BUNDLE {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    }
    response
}

/// `GET /webtransport-cert`: what a page passes as `serverCertificateHashes`, and where to connect.
/// Readable by the allowed origins' pages (CORS), since they connect from another origin.
async fn webtransport_cert<H: Handler>(State(state): State<BrowserState<H>>, headers: HeaderMap) -> Response {
    let identity = state.browsers.credentials.webtransport();
    let sha256: String = identity.sha256.iter().map(|b| format!("{b:02x}")).collect();
    let not_after =
        identity.not_after.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok());
    // A page dials the host it was loaded from, unless the certificate is pinned by hash (which no
    // name is checked against) and the endpoint listens on one address: then that address, since the
    // page's host name may resolve to another first (`localhost` to ::1 for a server on 127.0.0.1),
    // and browsers do not try the next address for WebTransport.
    let quic = state.browsers.quic_addr;
    let host = (identity.self_issued && !quic.ip().is_unspecified()).then(|| match quic.ip() {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    });
    let body = axum::Json(json!({
        "host": host,
        "sha256": sha256,
        "not_after": not_after,
        "self_issued": identity.self_issued,
        "port": quic.port(),
        "path": "/",
    }));
    let mut response =
        ([(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], body).into_response();
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if let Some(origin) = origin
        && state.browsers.origins.allows(Some(origin), request_host(&headers, None))
        && let Ok(value) = HeaderValue::from_str(origin)
    {
        response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        response.headers_mut().insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// The host a request was sent to, without its port: HTTP/2's `:authority`, or HTTP/1.1's `Host`.
pub(super) fn request_host<'a>(headers: &'a HeaderMap, uri: Option<&'a axum::http::Uri>) -> &'a str {
    let authority = uri
        .and_then(|uri| uri.authority())
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    host_of(authority)
}

/// The figures served last: when, the scrape they were measured to, and what they were.
struct Figures {
    at: Instant,
    snapshot: Snapshot,
    interval: Interval,
}

/// The shortest interval figures are measured over; requests in between get the last ones.
const MIN_FIGURES_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// `GET /v1/stats`: the figures `qkv stat --json` prints, from the server's own metrics, over the time
/// since they were last asked for (at least a second; the first time, since the server started).
async fn stats<H: Handler>(State(state): State<BrowserState<H>>) -> Response {
    let Some((exporter, record_usage)) = &state.browsers.metrics else {
        return Problem::new(
            StatusCode::NOT_FOUND,
            "this server records no metrics: start it with --admin ADDR to have figures here",
        )
        .into_response();
    };
    let figures_response = |interval: &Interval| {
        ([(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], axum::Json(interval))
            .into_response()
    };
    let mut last = state.figures.lock();
    if let Some(figures) = last.as_ref()
        && figures.at.elapsed() < MIN_FIGURES_INTERVAL
    {
        return figures_response(&figures.interval);
    }
    record_usage();
    let samples = match exposition::parse(&exporter.render()) {
        Ok(samples) => samples,
        Err(e) => {
            return Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the metrics could not be read: {e}"),
            )
            .into_response();
        }
    };
    let snapshot = Snapshot::new(samples);
    let interval = match last.as_ref() {
        Some(before) => Interval::between(&before.snapshot, &snapshot, before.at.elapsed()),
        None => Interval::between(&Snapshot::default(), &snapshot, state.browsers.started.elapsed()),
    };
    let response = figures_response(&interval);
    *last = Some(Figures { at: Instant::now(), snapshot, interval });
    response
}

/// `GET /ws`: a WebSocket session from an allowed origin, served as a TCP connection is.
async fn websocket<H: Handler>(
    State(state): State<BrowserState<H>>,
    Extension(scope): Extension<ConnectionScope>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    // Not an upgrade (a plain GET, a GET over HTTP/2, where the upgrade is a CONNECT): said as a problem.
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            let status = rejection.status();
            let mut answer =
                Problem::new(status, format!("not a WebSocket upgrade: {}", rejection.body_text()))
                    .into_response();
            if status == StatusCode::METHOD_NOT_ALLOWED {
                answer.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, CONNECT"));
            }
            return answer;
        }
    };
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if !state.browsers.origins.allows(origin, request_host(&headers, Some(&uri))) {
        // Any page can ask at will: throttled, in the connection's span (its address).
        static REFUSED: LogThrottle = LogThrottle::new();
        if let Some(HeldBack { suppressed, crowded_out }) = REFUSED.admit() {
            info!(
                target: "qkv::connection",
                origin,
                suppressed,
                crowded_out,
                "refused a WebSocket session from an origin not allowed (--web-origin)"
            );
        }
        return Problem::new(
            StatusCode::FORBIDDEN,
            "this page's origin may not open qkv sessions: the server allows it with --web-origin",
        )
        .into_response();
    }
    let max_message = state.browsers.websocket_max_message;
    let Some(share) = scope.memory.try_charge(websocket_share(max_message)) else {
        crate::metrics::limit_hit(crate::metrics::Limit::ConnectionMemory);
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server's connection memory budget is spent; nothing was executed: retry shortly",
        )
        .into_response();
    };
    // Held by the session: the connection's place and the shutdown's wait last until it ends.
    let token = scope.sessions.token();
    let open = scope.activity.open();
    let handler = state.handler.clone();
    // The session runs in a task of its own: its lines are still in the connection's span, and the
    // ones it throttles still its client's.
    let (client, connection) = (log_throttle::client(), tracing::Span::current());
    upgrade
        .protocols([WEBSOCKET_PROTOCOL, WEBSOCKET_PROTOCOL_ALPN])
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .read_buffer_size(max_message.min(64 * 1024))
        .write_buffer_size(0)
        .max_write_buffer_size(max_message.saturating_mul(2))
        .on_failed_upgrade(|e| debug!(error = %e, "a WebSocket upgrade failed"))
        .on_upgrade(move |socket| {
            let span =
                info_span!(parent: &connection, "websocket", client = caller.identity.as_deref().unwrap_or(""));
            let session = async move {
                serve_websocket(socket, handler, scope, caller, max_message).await;
                drop((share, open, token));
            };
            log_throttle::serving(client, session).instrument(span)
        })
}

/// Serves qkv's pipeline on the byte stream the WebSocket's binary messages carry. The session ends
/// with a close code that says why: 1000 when the client closed or was idle, 1001 at shutdown, 1003
/// after a text message, 1009 after a message over the limit, 1002 after any other protocol error.
async fn serve_websocket<H: Handler>(
    socket: WebSocket,
    handler: H,
    scope: ConnectionScope,
    caller: Caller,
    max_message: usize,
) {
    let started = Instant::now();
    let (sink, stream) = socket.split();
    let why = Arc::new(parking_lot::Mutex::new(None::<CloseFrame>));
    let failed = why.clone();
    // Received: binary messages' payloads, in order, as bytes; a text message is not qkv's.
    let received = stream.filter_map(move |message| {
        let fail = |code: u16, reason: &'static str| {
            *failed.lock() = Some(CloseFrame { code, reason: reason.into() });
            Some(Err(std::io::Error::new(std::io::ErrorKind::InvalidData, reason)))
        };
        std::future::ready(match message {
            Ok(Message::Binary(bytes)) => Some(Ok(bytes)),
            Ok(Message::Text(_)) => fail(close_code::UNSUPPORTED, "qkv's frames travel in binary messages"),
            // Pings are answered by the WebSocket layer; a close ends the stream after it.
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_)) => None,
            Err(e) if is_too_large(&e) => fail(close_code::SIZE, "a message over --websocket-max-message"),
            Err(e) => {
                debug!(error = %e, "the WebSocket failed");
                fail(close_code::PROTOCOL, "not a valid WebSocket message")
            }
        })
    });
    let shutdown = scope.shutdown.clone();
    let closing = Closing { inner: sink, why, shutdown, closed: false };
    let sent =
        closing.with(|bytes: Bytes| std::future::ready(Ok::<_, std::io::Error>(Message::Binary(bytes))));
    // Each write one message, none larger than what clients may send.
    let io = std::pin::pin!(message_stream(received, sent, max_message));
    let (limits, memory) = (scope.limits.clone(), scope.memory.clone());
    let io = StallTimeout::new(io, limits.reply_timeout, limits.reply_min_progress);
    let requests = serve_pipelined(
        io,
        handler,
        limits,
        memory,
        scope.shutdown.clone(),
        caller,
        AfterClose::EndSubscriptions,
    )
    .await;
    info!(
        target: "qkv::connection",
        transport = "websocket",
        duration_ms = started.elapsed().as_millis() as u64,
        requests,
        "connection ended"
    );
}

/// Whether a WebSocket error is a message (or frame) over the configured limit.
fn is_too_large(error: &axum::Error) -> bool {
    use tungstenite::Error;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(Error::Capacity(_)) = e.downcast_ref::<Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

pin_project_lite::pin_project! {
    /// The session's sending side: closing it sends a close frame that says why the session ended.
    struct Closing<S> {
        #[pin]
        inner: S,
        why: Arc<parking_lot::Mutex<Option<CloseFrame>>>,
        shutdown: CancellationToken,
        closed: bool,
    }
}

impl<S> futures_util::Sink<Message> for Closing<S>
where
    S: futures_util::Sink<Message, Error = axum::Error>,
{
    type Error = std::io::Error;

    fn poll_ready(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_ready(cx).map_err(std::io::Error::other)
    }

    fn start_send(self: std::pin::Pin<&mut Self>, item: Message) -> std::io::Result<()> {
        self.project().inner.start_send(item).map_err(std::io::Error::other)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx).map_err(std::io::Error::other)
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let mut this = self.project();
        if !*this.closed {
            std::task::ready!(this.inner.as_mut().poll_ready(cx)).map_err(std::io::Error::other)?;
            let frame = this.why.lock().take().unwrap_or_else(|| {
                if this.shutdown.is_cancelled() {
                    CloseFrame { code: close_code::AWAY, reason: "the server is shutting down".into() }
                } else {
                    CloseFrame { code: close_code::NORMAL, reason: "".into() }
                }
            });
            // Fails only if the client closed first, which is as good.
            let _ = this.inner.as_mut().start_send(Message::Close(Some(frame)));
            *this.closed = true;
        }
        this.inner.poll_close(cx).map_err(std::io::Error::other)
    }
}
