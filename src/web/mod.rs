//! The web listener (`qkv serve --web ADDR`): REST and gRPC on one port, over HTTPS (ALPN `h2` and
//! `http/1.1`, the server's certificates, mutual TLS when the server asks for client certificates) or,
//! for loopback behind a proxy, plaintext. Both are adapters onto the same [`Handler`] as QUIC and TCP:
//!
//! ```text
//! TCP ─► admission ─► TLS ─► hyper (HTTP/1.1, HTTP/2) ─► body buffered and charged ─┬─► rest  ─┐
//!                                                       content-type application/grpc └─► grpc ─┴─► Handler
//! ```
//!
//! Requests are routed by content type: `application/grpc` and `application/grpc+proto` to gRPC
//! (service `qkv.v1.Kv`, reflection), everything else to REST (which refuses other `application/grpc…`
//! types). Connections are admitted with the other transports' (one connection limit, one memory
//! budget); each request body is read whole, within its limit and `--request-timeout`, charged to the
//! memory budget as it arrives and held against it while its request runs (but gRPC `Pipeline` calls,
//! charged as WebSocket sessions, and reflection streams, charged a fixed share and ended after
//! `--request-timeout`: `bounded_reflection`); an idle connection is
//! closed, an answer or a listing its client stops reading abandoned (answers are paced, charged while
//! they wait: paced.rs). docs/HTTP.md is the API's specification.

pub mod browser;
pub mod grpc;
pub mod openapi;
mod paced;
mod problem;
pub mod rest;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::tls::TlsDoor;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::uri::{Authority, Scheme};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use prost::Message;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, info};

use paced::{Paced, Pacing};
pub use problem::Problem;

use crate::memory::{Charge, MemoryBudget};
use crate::metrics::Metered;
use crate::pb::{CommandRequest, CommandResponse, status};
use crate::service::{Caller, Handler, Reply, ReplyFrame};
use crate::transport::admission::{Admission, Admitted};
use crate::transport::exchange::AnswerShare;
use crate::transport::log_throttle::{self, HeldBack, LogThrottle};
use crate::transport::origin::Origins;
use crate::transport::tcp::{
    Accepting, ByteCounts, Counted, EndLine, Ended, accept_loop, tls_handshake, tune,
};
use crate::transport::timeouts::StallTimeout;
use crate::transport::woken::PolledWhenWoken;
use crate::transport::{Limits, Transport};

/// Binds the web listener (before the server runs, so that a bad address fails the start).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    crate::transport::tcp::bind(addr)
}

/// How the web listener's connections are secured.
#[derive(Clone)]
pub enum WebSecurity {
    /// TLS 1.3, ALPN `h2` and `http/1.1`.
    Tls(TlsDoor),
    /// Plaintext HTTP/1.1 and HTTP/2 (prior knowledge, as gRPC clients send it): loopback behind a
    /// proxy only.
    Plaintext,
}

/// The routes every web connection serves: REST and gRPC, each behind the request body limit, and
/// gRPC's `Pipeline`, whose body is a stream the pipeline charges as it reads it, and server reflection,
/// streams of small requests each answered as it comes.
#[derive(Clone)]
struct Doors {
    rest: Router,
    grpc: Router,
    pipeline: Router,
    reflection: Router,
}

/// Serves the web listener until `shutdown` is cancelled, then shuts down gracefully within `grace`:
/// HTTP/2 connections are sent GOAWAY and HTTP/1.1 ones closed after their current request, in-flight
/// requests finish (subscriptions have ended by then, each with its last event).
pub async fn serve<H: Handler>(
    listener: TcpListener,
    security: WebSecurity,
    handler: H,
    limits: Arc<Limits>,
    admission: Admission,
    shutdown: CancellationToken,
    options: WebOptions,
) {
    let WebOptions { max_header_size, grace, browsers } = options;
    let addr = listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string());
    match security {
        WebSecurity::Tls(_) => {
            info!(%addr, console = %format!("https://{addr}/"), "web listener serving REST, gRPC, WebSocket and the console over HTTPS")
        }
        WebSecurity::Plaintext => {
            info!(%addr, console = %format!("http://{addr}/"), "web listener serving REST, gRPC, WebSocket and the console over plaintext HTTP")
        }
    }
    let tls = matches!(security, WebSecurity::Tls(_));
    let memory = admission.memory().clone();
    let max_message = browsers.websocket_max_message;
    let origins = browsers.origins.clone();
    // A REST body carries a value as text (binary as base64, a third larger); a gRPC body is a frame's
    // protobuf behind gRPC's 5-byte message header. The service's item limits apply to both.
    let deadline = limits.request_timeout;
    let rest_body = BodyLimit { max: rest_body_limit(&limits), memory: memory.clone(), deadline };
    let grpc_body = BodyLimit { max: limits.max_frame_len + GRPC_MESSAGE_HEADER, memory, deadline };
    let doors = Doors {
        rest: for_known_hosts::<false>(
            buffered(
                rest::router(Metered::new(handler.clone(), Transport::Http), &limits)
                    .merge(browser::router(
                        Metered::labelled(handler.clone(), Transport::Http, "websocket"),
                        browsers,
                    ))
                    .method_not_allowed_fallback(rest::method_not_allowed),
                rest_body,
                false,
            ),
            &origins,
            tls,
        ),
        grpc: for_known_hosts::<true>(
            buffered(
                grpc::router(Metered::new(handler.clone(), Transport::Grpc), &limits, max_message),
                grpc_body,
                true,
            ),
            &origins,
            tls,
        ),
        pipeline: for_known_hosts::<true>(
            grpc::pipeline_router(
                Metered::new(handler.clone(), Transport::GrpcPipeline),
                &limits,
                max_message,
            ),
            &origins,
            tls,
        ),
        reflection: for_known_hosts::<true>(
            grpc::reflection_router(limits.max_frame_len).layer(middleware::from_fn_with_state(
                ReflectionBounds { memory: admission.memory().clone(), lifetime: limits.request_timeout },
                bounded_reflection,
            )),
            &origins,
            tls,
        ),
    };
    let memory = admission.memory().clone();
    let accepting = Accepting {
        transport: Transport::Http,
        share: web_connection_share(&limits),
        admission,
        shutdown: shutdown.clone(),
        grace,
    };
    // A refused connection is closed at once: over TLS nothing can be said before a handshake.
    let refuse = |_stream, _refusal, _tasks: &_| {};
    accept_loop(listener, accepting, refuse, move |stream, admitted| {
        let connection = Connection {
            security: security.clone(),
            doors: doors.clone(),
            handler: handler.clone(),
            limits: limits.clone(),
            memory: memory.clone(),
            shutdown: shutdown.clone(),
            max_header_size,
        };
        connection.serve(stream, admitted)
    })
    .await
}

/// The largest request head read unless configured otherwise (`--web-max-header-size`).
pub const DEFAULT_MAX_HEADER_SIZE: usize = 64 * 1024;

/// The smallest header limit accepted: hyper's HTTP/1.1 reader needs at least 8 KiB of buffer.
pub const MIN_MAX_HEADER_SIZE: usize = 8 * 1024;

/// What the web listener adds to the limits every transport shares.
#[derive(Clone)]
pub struct WebOptions {
    /// The largest request head (HTTP/1.1 request line and headers; HTTP/2 decoded header list).
    pub max_header_size: usize,
    /// How long shutdown waits for requests in flight.
    pub grace: Duration,
    /// What browsers are served: WebSocket, the WebTransport certificate, the console.
    pub browsers: browser::Browsers,
}

/// gRPC's length-prefixed message header: a compression flag and a 4-byte length.
const GRPC_MESSAGE_HEADER: usize = 5;

/// The largest REST request body: twice the largest frame, room for a value of the largest frame's size
/// in JSON (base64 takes 4 bytes for 3, escapes up to 6 for 1 in strings of control characters, which
/// the item limits then refuse by their decoded size).
pub fn rest_body_limit(limits: &Limits) -> usize {
    limits.max_frame_len.saturating_mul(2)
}

/// What one web connection can make the server hold beyond the request bodies (which are charged as
/// they are read): HTTP/2's receive window for the whole connection, and what each of its streams may
/// queue for sending.
pub fn web_connection_share(limits: &Limits) -> usize {
    let streams = usize::try_from(limits.max_concurrent_requests).unwrap_or(usize::MAX);
    (h2_window(limits.connection_receive_window) as usize)
        .saturating_add(stream_send_buffer(limits).saturating_mul(streams))
}

/// Runs what hyper spawns for a connection (each HTTP/2 stream's service) in the connection's span
/// (its lines name the client's address) and as serving its client (the lines those throttle are
/// counted as that client's: `log_throttle`).
#[derive(Clone)]
struct ClientExecutor(std::net::IpAddr, tracing::Span);

impl<F> hyper::rt::Executor<F> for ClientExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(tracing::Instrument::instrument(log_throttle::serving(self.0, future), self.1.clone()));
    }
}

struct Connection<H> {
    security: WebSecurity,
    doors: Doors,
    handler: H,
    limits: Arc<Limits>,
    memory: MemoryBudget,
    shutdown: CancellationToken,
    max_header_size: usize,
}

impl<H: Handler> Connection<H> {
    async fn serve(self, stream: TcpStream, _admitted: Admitted) {
        tune(&stream, &self.limits);
        let bytes = Arc::new(ByteCounts::default());
        let mut ended = EndLine {
            transport: Transport::Http,
            started: std::time::Instant::now(),
            bytes: bytes.clone(),
            state: match self.security {
                WebSecurity::Plaintext => Ended::CutOff,
                WebSecurity::Tls(_) => Ended::NoHandshake,
            },
        };
        let stream = Counted::new(stream, Transport::Http, bytes.clone());
        // A client that reads less than the minimum progress in the reply timeout while something waits
        // to be sent to it, on either HTTP version, has its connection closed, as TCP's is. Beneath
        // TLS, where the bytes are seen to leave (TLS's flush waits, counting nothing, while its
        // client takes what it has buffered).
        let stalled = Arc::new(AtomicBool::new(false));
        let stream = StallTimeout::new(stream, self.limits.reply_timeout, self.limits.reply_min_progress)
            .alarm(stalled.clone());
        let requests = match &self.security {
            WebSecurity::Plaintext => self.http(stream, Caller::default(), (bytes.clone(), stalled)).await,
            WebSecurity::Tls(door) => {
                match tls_handshake(door, stream, &self.limits, Transport::Http).await {
                    Some((tls, caller)) => {
                        ended.state = Ended::CutOff;
                        self.http(tls, caller, (bytes.clone(), stalled)).await
                    }
                    None => return,
                }
            }
        };
        ended.state = Ended::Served { requests: Some(requests) };
    }

    /// Serves HTTP/1.1 or HTTP/2 (whichever the client speaks) on `io` until the client closes it or
    /// the server shuts down; then ends what the connection's requests own (their subscriptions).
    /// `bytes`: what the socket has sent; `stalled`: set when its writes time out. Returns how many
    /// requests it was sent (REST and gRPC calls, WebSocket sessions).
    async fn http<I>(self, io: I, caller: Caller, (bytes, stalled): (Arc<ByteCounts>, Arc<AtomicBool>)) -> u64
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Connection { doors, handler, limits, memory, shutdown, max_header_size, .. } = self;
        let request_caller = caller.clone();
        let activity = Activity::new();
        let requests = activity.clone();
        let received = Arc::new(AtomicU64::new(0));
        let counted = received.clone();
        // WebSocket sessions outlive their request (and, upgraded from HTTP/1.1, the connection's HTTP).
        let sessions = tokio_util::task::TaskTracker::new();
        let pacing = Pacing {
            memory: memory.clone(),
            piece: answer_piece(&limits),
            stall: limits.reply_timeout,
            min_progress: limits.reply_min_progress,
            watch: false,
            share: Arc::new(AnswerShare::new(limits.max_request_buffer)),
        };
        let scope = browser::ConnectionScope {
            sessions: sessions.clone(),
            shutdown: shutdown.clone(),
            activity: activity.clone(),
            memory,
            limits: limits.clone(),
        };
        let service =
            hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                counted.fetch_add(1, Ordering::Relaxed);
                request.extensions_mut().insert(request_caller.clone());
                request.extensions_mut().insert(scope.clone());
                let door = match is_grpc(&request) {
                    true if request.uri().path() == grpc::PIPELINE_PATH => doors.pipeline.clone(),
                    true if grpc::is_reflection(request.uri().path()) => doors.reflection.clone(),
                    true => doors.grpc.clone(),
                    false => doors.rest.clone(),
                };
                // Open from here until its answer's end is handed on (or it is abandoned, or dropped),
                // but for while its answer waits for the client to read on (paced.rs).
                let open = requests.open();
                // HTTP/2's streams share a connection that goes on while one of them waits for its
                // client; HTTP/1.1's answers go one after the other, on a connection whose writes
                // time out if its client stops reading (below).
                let pacing =
                    Pacing { watch: request.version() >= axum::http::Version::HTTP_2, ..pacing.clone() };
                // For `read_body`, which waits for room in it before the request runs.
                request.extensions_mut().insert(pacing.share.clone());
                async move {
                    let response = door.oneshot(request.map(Body::new)).await;
                    response.map(|response| response.map(|body| Body::new(Paced::new(body, pacing, open))))
                }
            });
        let executor = ClientExecutor(log_throttle::client(), tracing::Span::current());
        let mut builder = hyper_util::server::conn::auto::Builder::new(executor);
        builder
            .http1()
            .timer(TokioTimer::new())
            // Also how long an idle keep-alive connection waits for its next request.
            .header_read_timeout(limits.idle_timeout)
            .max_buf_size(max_header_size);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_concurrent_requests)
            .initial_connection_window_size(h2_window(limits.connection_receive_window))
            .initial_stream_window_size(h2_window(limits.connection_receive_window))
            .max_send_buf_size(h2_send_queue(&limits))
            .max_header_list_size(u32::try_from(max_header_size).unwrap_or(u32::MAX))
            // WebSocket over HTTP/2 (RFC 8441's extended CONNECT).
            .enable_connect_protocol()
            .keep_alive_interval(Some(limits.idle_timeout / 3))
            .keep_alive_timeout(limits.idle_timeout / 3);
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(connection);
        // Polled whenever the connection is: only once it has something to say. Biased: the
        // connection first, with no random pick of an order on every poll.
        let shutting_down = PolledWhenWoken::new(shutdown.cancelled());
        let served = tokio::select! {
            biased;
            served = connection.as_mut() => Some(served),
            _ = shutting_down => {
                connection.as_mut().graceful_shutdown();
                Some(connection.await)
            }
            // Nothing asked for a while (not even a first request), or only answers waiting for their
            // client to read: the connection is closed, as QUIC's idle timeout would. A connection with
            // a request open (a subscription) is not idle. What it has left to send goes first, as
            // long as its client reads it.
            _ = activity.idle_for(limits.idle_timeout) => {
                debug!(timeout = ?limits.idle_timeout, "closing an idle web connection");
                connection.as_mut().graceful_shutdown();
                let progress = (limits.reply_timeout, limits.reply_min_progress);
                while_sending(connection, &activity, &bytes.sent, progress).await
            }
        };
        match served {
            Some(Err(e)) if stalled.load(Ordering::Relaxed) => {
                debug!(error = %e, "closed a web connection whose client stopped reading");
            }
            Some(Err(e)) => debug!(error = %e, "the HTTP connection ended with an error"),
            _ => {}
        }
        // The connection's place is held until its WebSocket sessions have ended too (they end at
        // shutdown like any connection).
        sessions.close();
        sessions.wait().await;
        // Counted once the sessions have ended too: a WebSocket upgraded from HTTP/1.1 writes on this
        // socket after its HTTP has ended, and a stall of it reaches its session as the WebSocket
        // library's error, which no longer says it was one.
        if stalled.load(Ordering::Relaxed) {
            crate::metrics::limit_hit(crate::metrics::Limit::ReplyTimeout);
        }
        handler.connection_closing(&caller, crate::pubsub::ConnectionEnd::StreamEnded);
        received.load(Ordering::Relaxed)
    }
}

/// `connection`'s end, or `None` once, with no request open meanwhile, it sends fewer than
/// `min_progress` bytes (at least one) in a `timeout`: an HTTP/2 stream that waits for a client that
/// grants no window would hold a closing connection for ever (its socket has nothing to write, so no
/// write waits and times out). A request open again (a subscription whose client caught up, a stream opened before the
/// GOAWAY) is served on.
async fn while_sending<F: std::future::Future>(
    connection: F,
    activity: &Activity,
    sent: &AtomicU64,
    (timeout, min_progress): (Duration, usize),
) -> Option<F::Output> {
    tokio::pin!(connection);
    // When the window began, and what had been sent by then.
    let mut mark = (tokio::time::Instant::now(), sent.load(Ordering::Relaxed));
    loop {
        tokio::select! {
            biased;
            served = connection.as_mut() => return Some(served),
            _ = tokio::time::sleep(timeout) => {}
        }
        let now = sent.load(Ordering::Relaxed);
        if !activity.open_since(mark.0) && now.saturating_sub(mark.1) < min_progress.max(1) as u64 {
            debug!(?timeout, "closing an idle web connection whose client does not read what is left");
            return None;
        }
        mark = (tokio::time::Instant::now(), now);
    }
}

/// HTTP/2's largest window (RFC 9113, 6.9.1).
const H2_MAX_WINDOW: u32 = (1 << 31) - 1;

fn h2_window(bytes: usize) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX).min(H2_MAX_WINDOW)
}

/// What each HTTP/2 stream may queue for sending: the connection's send window shared among its
/// streams, at least 8 KiB each.
fn stream_send_buffer(limits: &Limits) -> usize {
    let streams = usize::try_from(limits.max_concurrent_requests).unwrap_or(usize::MAX).max(1);
    (limits.send_window / streams).max(8 * 1024).min(u32::MAX as usize)
}

/// The most of an answer handed to hyper at once (paced.rs): a fifth of what a stream may queue, and
/// no more than a client must read within the reply timeout.
fn answer_piece(limits: &Limits) -> usize {
    (stream_send_buffer(limits) / 5).min(limits.reply_min_progress).max(1024)
}

/// h2's limit on a stream's send queue: what a stream may queue less two pieces, as h2 takes a piece
/// while its queue is under the limit (so up to a piece beyond it) and hyper holds one more while it
/// waits for room: a stream holds at most what it may queue, its share of the connection's.
fn h2_send_queue(limits: &Limits) -> usize {
    let piece = answer_piece(limits);
    stream_send_buffer(limits).saturating_sub(2 * piece).max(piece)
}

/// When a connection's requests were last all answered, and how many are open now: its idle timer.
/// A request whose answer waits for its client to read on does not count as open (see
/// [`OpenRequest::waiting`]).
#[derive(Clone)]
pub(crate) struct Activity(Arc<parking_lot::Mutex<(usize, tokio::time::Instant)>>);

impl Activity {
    fn new() -> Self {
        Activity(Arc::new(parking_lot::Mutex::new((0, tokio::time::Instant::now()))))
    }

    /// One more request open until the guard is dropped.
    pub(crate) fn open(&self) -> OpenRequest {
        self.0.lock().0 += 1;
        OpenRequest { activity: self.clone(), waiting: false }
    }

    /// Whether a request has been open at any time since `instant` (one is now, or one closed since).
    fn open_since(&self, instant: tokio::time::Instant) -> bool {
        let (open, since) = *self.0.lock();
        open > 0 || since >= instant
    }

    /// One fewer open, from now.
    fn close_one(&self) {
        let mut state = self.0.lock();
        state.0 = state.0.saturating_sub(1);
        state.1 = tokio::time::Instant::now();
    }

    /// Completes once no request has been open for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let (open, since) = *self.0.lock();
            let idle = since.elapsed();
            if open == 0 && idle >= timeout {
                return;
            }
            // With a request open, look again a timeout later: it cannot be idle before.
            let wait = if open == 0 { timeout - idle } else { timeout };
            tokio::time::sleep(wait).await;
        }
    }
}

pub(crate) struct OpenRequest {
    activity: Activity,
    waiting: bool,
}

impl OpenRequest {
    /// Whether the request waits for its client: its answer is made, or has handed HTTP a frame, and
    /// HTTP asks for the next only once the client has room. Waiting, it does not keep the connection
    /// from being idle, so that a client that stops reading (an HTTP/2 one granting no window still
    /// answers keep-alive PINGs) cannot hold a connection, and what its answers hold, for ever.
    pub(crate) fn waiting(&mut self, waiting: bool) {
        if self.waiting == waiting {
            return;
        }
        self.waiting = waiting;
        match waiting {
            true => self.activity.close_one(),
            false => self.activity.0.lock().0 += 1,
        }
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        if !self.waiting {
            self.activity.close_one();
        }
    }
}

/// gRPC requests say so in their content type: `application/grpc`, or `application/grpc+proto` (the
/// protobuf codec, the one served). Other `application/grpc…` types (gRPC-Web, other codecs) go to the
/// REST router, which refuses them (`rest::well_formed`): served as gRPC, their bodies would be read
/// as protobuf and their answers framed as gRPC's, which their clients cannot read.
fn is_grpc<B>(request: &hyper::Request<B>) -> bool {
    let media =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).and_then(media_type);
    media.is_some_and(|media| media == "application/grpc" || media == "application/grpc+proto")
}

/// A content type's media type, lower-cased, without its parameters.
pub(crate) fn media_type(content_type: &str) -> Option<String> {
    let media = content_type.split(';').next()?.trim();
    (!media.is_empty()).then(|| media.to_ascii_lowercase())
}

/// The limit on request bodies and the budget they are charged to.
#[derive(Clone)]
struct BodyLimit {
    max: usize,
    memory: MemoryBudget,
    /// How long a client may take to send a body (`--request-timeout`).
    deadline: Duration,
}

/// `router` for requests that name their host as HTTP requires, and for the host names the listener
/// answers to only.
///
/// - An HTTP/1.1 request without a `Host` header, or with more than one, is refused, 400 (RFC 9112,
///   3.2: a server must), and so is an HTTP/2 or HTTP/1.1 request whose `Host` names another authority
///   than its target (HTTP/2's `:authority`, HTTP/1.1's absolute form; RFC 9113, 8.3.1): which of the
///   two names counts would be up to each proxy and check on the way.
/// - Without TLS, a request for a name the listener does not answer to ([`Origins::answers_to`]) is
///   refused before anything else, 421 Misdirected Request (RFC 9110: this server does not serve that
///   name), so that a page of a name rebound to the server's address (DNS rebinding) reads and changes
///   nothing, and its origin is never the listener's own. Over TLS this check is left out: a browser has
///   checked the name against the certificate already, so a rebound name cannot reach the listener, and
///   a name the certificate covers in a way this check does not know (one added by a reload) keeps
///   being served.
fn for_known_hosts<const GRPC: bool>(router: Router, origins: &Arc<Origins>, tls: bool) -> Router {
    let names = (!tls).then(|| origins.clone());
    router.layer(middleware::from_fn_with_state(names, check_host::<GRPC>))
}

/// What is wrong with how a request names its host, if anything (see [`for_known_hosts`]).
fn host_fault(request: &Request) -> Option<&'static str> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let (host, second) = (hosts.next(), hosts.next());
    if second.is_some() {
        return Some("the request has more than one Host header: send one");
    }
    if host.is_none() && request.version() == axum::http::Version::HTTP_11 {
        return Some("an HTTP/1.1 request needs a Host header (RFC 9112, 3.2)");
    }
    // An http(s) URI always has a host: an empty Host, or one with a port that is not a number, is
    // invalid (RFC 9112, 3.2), and a check by name would be made of what it is not.
    let valid = |host: &axum::http::HeaderValue| {
        Authority::try_from(host.as_bytes())
            .is_ok_and(|a| !a.host().is_empty() && port_is_a_number(a.as_str()))
    };
    if host.is_some_and(|host| !valid(host)) {
        return Some("the request's Host header is not a host name and port: send the host it is meant for");
    }
    let uri = request.uri();
    match (host, uri.authority()) {
        (Some(host), Some(target)) if !same_authority(host.as_bytes(), target, uri.scheme()) => {
            Some("the request's Host header names another host than its target (:authority): send one name")
        }
        _ => None,
    }
}

/// Whether `authority`'s port, if it has one, is a number (`Authority` takes `localhost:abc`, and its
/// `port()` is then `None`).
fn port_is_a_number(authority: &str) -> bool {
    let after_host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once(']').map_or("", |(_, rest)| rest),
        None => authority.find(':').map_or("", |colon| &authority[colon..]),
    };
    match after_host.strip_prefix(':') {
        Some(port) => port.is_empty() || port.parse::<u16>().is_ok(),
        None => after_host.is_empty(),
    }
}

/// Whether a Host header names the same host and port as a request's target, a port left out being
/// its scheme's default (`Host: example.com` and `https://example.com:443/`: RFC 9110, 4.2.3).
fn same_authority(host: &[u8], target: &Authority, scheme: Option<&Scheme>) -> bool {
    let Ok(host) = Authority::try_from(host) else {
        return false;
    };
    let default = match scheme.map(Scheme::as_str) {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    };
    host.host().eq_ignore_ascii_case(target.host())
        && host.port_u16().or(default) == target.port_u16().or(default)
}

async fn check_host<const GRPC: bool>(
    State(names): State<Option<Arc<Origins>>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(fault) = host_fault(&request) {
        return refusal::<GRPC>(StatusCode::BAD_REQUEST, fault.to_owned());
    }
    let host = browser::request_host(request.headers(), Some(request.uri()));
    if names.is_none_or(|origins| origins.answers_to(host)) {
        return next.run(request).await;
    }
    // Any page or client can ask at will: throttled, in the connection's span (its address).
    static REFUSED: LogThrottle = LogThrottle::new();
    if let Some(HeldBack { suppressed, crowded_out }) = REFUSED.admit() {
        info!(
            target: "qkv::connection",
            host,
            suppressed,
            crowded_out,
            "refused a web request for a host name the listener does not answer to (--web-host)"
        );
    }
    let detail = format!(
        "this server does not answer to the host name {host:?}: IP addresses, localhost and its certificate's \
         names only, and those given with --web-host (docs/SECURITY.md, \"Browsers\")"
    );
    refusal::<GRPC>(StatusCode::MISDIRECTED_REQUEST, detail)
}

/// A refusal as every door gives it: a problem for REST; for gRPC the status code that matches, with
/// qkv's frame in its details (so a client knows nothing was executed).
fn refusal<const GRPC: bool>(status: StatusCode, detail: String) -> Response {
    if GRPC {
        let frame = CommandResponse::error(u32::from(status.as_u16()), detail);
        grpc::failure(&frame).into_http::<Body>().into_response()
    } else {
        Problem::new(status, detail).into_response()
    }
}

/// `router` behind [`read_body`]; gRPC's refusals are gRPC statuses.
fn buffered(router: Router, limit: BodyLimit, grpc: bool) -> Router {
    // The body is read (and limited) once, by `read_body`; axum's own default limit stays out of it.
    let router = if grpc {
        router.layer(middleware::from_fn_with_state(limit, read_body::<true>))
    } else {
        router.layer(middleware::from_fn_with_state(limit, read_body::<false>))
    };
    router.layer(DefaultBodyLimit::disable())
}

/// Reads a request's body whole, refusing one over the limit (413) and one the connection memory
/// budget cannot hold now (503), and has it wait for room in its connection's share for answers; the
/// charge is held until the request's answer has begun.
async fn read_body<const GRPC: bool>(
    State(limit): State<BodyLimit>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let refuse = refusal::<GRPC>;
    // A client that waits for `100 Continue` before sending a body it declares too large is refused
    // before it is invited to send it (hyper sends the 100 when the body is first read).
    let expects_continue = parts
        .headers
        .get(header::EXPECT)
        .is_some_and(|expect| expect.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let declared =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let read = match declared {
        Some(declared) if expects_continue && declared > limit.max as u64 => Ok(Err(BodyError::TooLarge)),
        _ => tokio::time::timeout(limit.deadline, read_limited(body, limit.max, &limit.memory)).await,
    };
    let (bytes, charge) = match read {
        Ok(Ok(read)) => read,
        Ok(Err(BodyError::TooLarge)) => {
            crate::metrics::limit_hit(crate::metrics::Limit::MaxFrameSize);
            let detail = format!(
                "the request body is over the limit of {} bytes (set by --max-frame-size, docs/HTTP.md)",
                limit.max
            );
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, detail);
        }
        Ok(Err(BodyError::NoMemory)) => {
            crate::metrics::limit_hit(crate::metrics::Limit::ConnectionMemory);
            let detail =
                "the server's connection memory budget is spent; nothing was executed: retry shortly"
                    .to_string();
            return refuse(StatusCode::SERVICE_UNAVAILABLE, detail);
        }
        Ok(Err(BodyError::Read(e))) => {
            let detail = format!("the request body could not be read: {e}");
            return refuse(StatusCode::BAD_REQUEST, detail);
        }
        Err(_) => {
            crate::metrics::limit_hit(crate::metrics::Limit::RequestTimeout);
            let detail = format!(
                "the request body did not arrive within {:?} (--request-timeout); nothing was executed",
                limit.deadline
            );
            return refuse(StatusCode::REQUEST_TIMEOUT, detail);
        }
    };
    // Execute and ExecuteStream take one message: tonic decodes the first and drops any after it, so
    // a client that sent two would think both ran.
    if GRPC
        && grpc::UNARY_PATHS.contains(&parts.uri.path())
        && let Some(extra) = after_first_grpc_message(&bytes)
    {
        let detail = format!(
            "the call carries more than one request message ({extra} bytes follow the first): Execute and ExecuteStream take one, Pipeline many; nothing was executed"
        );
        return refuse(StatusCode::BAD_REQUEST, detail);
    }
    // While the connection's answers its client has not read fill their share, the request waits to
    // run, its body read (so that it holds no flow-control window the requests running need) and
    // charged, until the client reads on or the answers are abandoned (paced.rs); for at most the
    // time a body may take to arrive, so that waiting bodies do not hold the budget for as long as
    // the client reads its answers slowly.
    if let Some(share) = parts.extensions.get::<Arc<AnswerShare>>()
        && tokio::time::timeout(limit.deadline, share.room()).await.is_err()
    {
        let detail = format!(
            "the connection's earlier answers, unread, fill its share (--max-request-buffer) and did not \
             make room within {:?} (--request-timeout); nothing was executed: read them, then retry",
            limit.deadline
        );
        return refuse(StatusCode::SERVICE_UNAVAILABLE, detail);
    }
    let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    drop(charge);
    response
}

/// How many bytes of a gRPC request body follow its first message, when any do.
fn after_first_grpc_message(body: &[u8]) -> Option<usize> {
    let length = body.get(1..GRPC_MESSAGE_HEADER)?;
    let length = u32::from_be_bytes(length.try_into().ok()?) as usize;
    let after = body.len().checked_sub(GRPC_MESSAGE_HEADER.checked_add(length)?)?;
    (after > 0).then_some(after)
}

/// What a reflection stream may hold and how long it may last ([`bounded_reflection`]).
#[derive(Clone)]
struct ReflectionBounds {
    memory: MemoryBudget,
    lifetime: Duration,
}

/// What a reflection stream is charged for while it lasts: a request being read and the answer to
/// it (qkv's descriptors, tens of KB, and the request echoed back).
const REFLECTION_STREAM_SHARE: usize = 4 * grpc::MAX_REFLECTION_REQUEST + 128 * 1024;

/// A reflection stream, whose body is not read whole first (its requests are answered one by one as
/// they come): charged a fixed share of the connection memory budget while it lasts (503 when the
/// budget cannot give it), and ended once it has lasted `--request-timeout` (grpcurl's takes
/// milliseconds), so that streams left open hold neither memory nor connections for long.
async fn bounded_reflection(
    State(bounds): State<ReflectionBounds>,
    request: Request,
    next: Next,
) -> Response {
    let Some(charge) = bounds.memory.try_charge(REFLECTION_STREAM_SHARE) else {
        crate::metrics::limit_hit(crate::metrics::Limit::ConnectionMemory);
        let detail = "the server's connection memory budget is spent; retry shortly".to_string();
        return refusal::<true>(StatusCode::SERVICE_UNAVAILABLE, detail);
    };
    let deadline = tokio::time::Instant::now() + bounds.lifetime;
    let (parts, body) = request.into_parts();
    // The answer ends first, with its status; the request's end, a moment later, is a backstop.
    let request =
        Request::from_parts(parts, Body::new(Lasting::request(body, deadline + Duration::from_secs(1))));
    let (parts, body) = next.run(request).await.into_parts();
    Response::from_parts(parts, Body::new(Lasting::response(body, deadline, charge)))
}

/// A body that ends once `deadline` passes, holding `charge` until it ends: a request's fails (which
/// ends the reflection task reading it), a response's ends with gRPC trailers saying
/// DEADLINE_EXCEEDED, as a call cut at its deadline does (not with a reset stream).
struct Lasting<B> {
    /// `None` once ended at the deadline.
    inner: Option<B>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Trailers to end with at the deadline; none: fail.
    at_deadline: Option<axum::http::HeaderMap>,
    _charge: Option<Charge>,
}

impl<B> Lasting<B> {
    /// A request's body, failing at `deadline`.
    fn request(inner: B, deadline: tokio::time::Instant) -> Self {
        Lasting {
            inner: Some(inner),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            at_deadline: None,
            _charge: None,
        }
    }

    /// A response's body, holding `charge`, ending at `deadline` with DEADLINE_EXCEEDED.
    fn response(inner: B, deadline: tokio::time::Instant, charge: Charge) -> Self {
        let mut trailers = axum::http::HeaderMap::new();
        let status =
            tonic::Status::deadline_exceeded("the reflection stream lasted its time (--request-timeout)");
        let _ = status.add_header(&mut trailers);
        Lasting {
            inner: Some(inner),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            at_deadline: Some(trailers),
            _charge: Some(charge),
        }
    }
}

impl<B> hyper::body::Body for Lasting<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, axum::BoxError>>> {
        if self.inner.is_none() {
            return std::task::Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            // What the stream was still to send goes (and the task making it with it).
            self.inner = None;
            return std::task::Poll::Ready(Some(match self.at_deadline.take() {
                Some(trailers) => Ok(hyper::body::Frame::trailers(trailers)),
                None => Err("the reflection stream lasted its time (--request-timeout)".into()),
            }));
        }
        match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_frame(cx).map_err(Into::into),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|inner| inner.is_end_stream())
    }
}

/// A [`Handler`] behind a trait object: what the REST handlers call.
pub trait Run: Send + Sync + 'static {
    fn run(&self, request: CommandRequest, caller: Caller)
    -> futures_util::future::BoxFuture<'static, Reply>;

    /// [`Handler::answered_at_door`].
    fn answered_at_door(&self, command: usize, status: u32);
}

impl<H: Handler> Run for H {
    fn run(
        &self,
        request: CommandRequest,
        caller: Caller,
    ) -> futures_util::future::BoxFuture<'static, Reply> {
        let handler = self.clone();
        Box::pin(async move { handler.execute(request, &caller).await })
    }

    fn answered_at_door(&self, command: usize, status: u32) {
        Handler::answered_at_door(self, command, status);
    }
}

/// How many bytes of a body over the limit are read and dropped before the refusal is sent: a client
/// that is still sending when the answer comes may take the stream's reset for a failure (curl does)
/// instead of reading the 413. A body larger still is refused at once.
const DRAIN_OVER_LIMIT: usize = 1024 * 1024;

enum BodyError {
    TooLarge,
    /// The connection memory budget cannot hold the body.
    NoMemory,
    Read(axum::Error),
}

/// The whole body if it is at most `max` bytes, charged to `memory` as it arrives (so that the bytes
/// HTTP/2's flow control lets in once they are read are never held uncounted). A larger one is read on,
/// neither kept nor charged, up to [`DRAIN_OVER_LIMIT`] bytes, so that the client has sent it all
/// when it is refused.
async fn read_limited(
    mut body: Body,
    max: usize,
    memory: &MemoryBudget,
) -> Result<(Bytes, Charge), BodyError> {
    let mut kept = bytes::BytesMut::new();
    let mut charge = memory.empty_charge();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Read)?;
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len());
        if seen > max {
            if seen > max.saturating_add(DRAIN_OVER_LIMIT) {
                return Err(BodyError::TooLarge);
            }
            kept = bytes::BytesMut::new();
            charge = memory.empty_charge();
            continue;
        }
        // The charge covers the buffer's allocation, not only what it holds: grown by doubling (within
        // the limit), it held up to twice what was charged.
        let needed = kept.len() + data.len();
        if needed > kept.capacity() {
            let capacity = needed.max(kept.capacity().saturating_mul(2).min(max));
            if !charge.try_grow(capacity.saturating_sub(charge.bytes())) {
                return Err(BodyError::NoMemory);
            }
            // Exactly that: reserving would let the allocator double past the limit, uncharged.
            let mut grown = bytes::BytesMut::with_capacity(capacity);
            grown.extend_from_slice(&kept);
            kept = grown;
        }
        kept.extend_from_slice(&data);
    }
    if seen > max { Err(BodyError::TooLarge) } else { Ok((kept.freeze(), charge)) }
}

/// The frames of a reply after the first, decoded.
pub type Frames = Pin<Box<dyn Stream<Item = Result<CommandResponse, prost::DecodeError>> + Send>>;

/// `frames` read ahead by a task of their own, which waits at most `stall` for the consumer to take
/// each: a client that stops reading a long answer (HTTP/2's flow control holds it back) does not hold
/// what producing it holds (a scan and its slot) for longer. Abandoned, the stream ends with a 408
/// frame (`--reply-timeout`), which the doors turn into a failed answer.
pub fn unstalled(mut frames: Frames, stall: Duration) -> Frames {
    use tokio::sync::mpsc::error::SendTimeoutError;
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while let Some(frame) = frames.next().await {
            match sender.send_timeout(frame, stall).await {
                Ok(()) => {}
                Err(SendTimeoutError::Timeout(_)) => {
                    crate::metrics::limit_hit(crate::metrics::Limit::ReplyTimeout);
                    return;
                }
                // Dropped unread, which is no stall: a HEAD's body, a client gone.
                Err(SendTimeoutError::Closed(_)) => return,
            }
        }
    });
    Box::pin(stream::unfold((receiver, true), move |(mut receiver, more)| async move {
        if !more {
            return None;
        }
        match receiver.recv().await {
            Some(frame) => {
                let more = frame.as_ref().is_ok_and(|frame| frame.more);
                Some((frame, (receiver, more)))
            }
            None => {
                let abandoned = CommandResponse::error(
                    status::REQUEST_TIMEOUT,
                    format!(
                        "the client did not read the answer for {stall:?} (--reply-timeout); it was abandoned"
                    ),
                );
                Some((Ok(abandoned), (receiver, false)))
            }
        }
    }))
}

/// A reply's first frame, and a stream of the others (empty when the first was the last).
pub async fn first_frame(reply: Reply) -> (CommandResponse, Frames) {
    match reply {
        Reply::One(response) => (response, Box::pin(stream::empty())),
        Reply::Stream(mut frames) => match frames.next().await.map(ReplyFrame::into_response) {
            Some(Ok(first)) if first.more => (first, Box::pin(frames.map(ReplyFrame::into_response))),
            Some(Ok(first)) => (first, Box::pin(stream::empty())),
            Some(Err(e)) => (decode_failure(e), Box::pin(stream::empty())),
            None => (ended_early(), Box::pin(stream::empty())),
        },
    }
}

/// The most bytes `request`'s answer may carry when it is gathered whole ([`complete`]): `max_answer`,
/// but no limit for a write's, whose change is made by then (a 413 said it was not, and the keys were
/// overwritten or deleted all the same); its previous values were the store's a moment before.
pub fn answer_limit(request: &CommandRequest, max_answer: usize) -> usize {
    match &request.request_data {
        Some(command) if crate::service::is_write(command) => usize::MAX,
        _ => max_answer,
    }
}

/// A reply's whole answer in one response, for doors that answer once: the frames' values, pairs and
/// versions in order; or the first error frame. An answer of more than `max_bytes` (its frames'
/// encodings together) is refused with 413 as soon as it is seen to be, rather than gathered: one
/// small `Hmget` naming a large key a thousand times would otherwise make the server hold gigabytes.
pub async fn complete(reply: Reply, max_bytes: usize) -> CommandResponse {
    let too_large = || {
        crate::metrics::limit_hit(crate::metrics::Limit::MaxFrameSize);
        CommandResponse::error(
            status::PAYLOAD_TOO_LARGE,
            format!(
                "the answer is over {max_bytes} bytes (--max-frame-size), the most one answer may carry when it comes whole; ask for fewer keys at a time (gRPC's ExecuteStream, QUIC and TCP send long answers in frames)"
            ),
        )
    };
    let (mut whole, mut rest) = first_frame(reply).await;
    if whole.status != status::OK {
        return whole;
    }
    let mut bytes = whole.encoded_len();
    if bytes > max_bytes {
        return too_large();
    }
    while whole.more {
        let frame = match rest.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return decode_failure(e),
            None => return ended_early(),
        };
        if frame.status != status::OK {
            return frame;
        }
        bytes += frame.encoded_len();
        if bytes > max_bytes {
            return too_large();
        }
        whole.values.extend(frame.values);
        whole.pairs.extend(frame.pairs);
        whole.versions.extend(frame.versions);
        whole.more = frame.more;
    }
    whole
}

fn decode_failure(e: prost::DecodeError) -> CommandResponse {
    CommandResponse::error(status::INTERNAL_ERROR, format!("an answer could not be decoded: {e}"))
}

fn ended_early() -> CommandResponse {
    CommandResponse::error(status::INTERNAL_ERROR, "the answer ended before its last frame")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body read in pieces is charged for the buffer it grows into, not only for its bytes: grown
    /// by doubling, the buffer held up to twice what was charged. A million bytes in pieces of 10,000
    /// grow it to 1.28 MB, which a budget of a million and one does not have.
    #[tokio::test]
    async fn a_body_is_charged_for_the_buffer_that_keeps_it() {
        let body = || {
            let pieces = (0..100)
                .map(|_| Ok::<_, std::io::Error>(hyper::body::Frame::data(Bytes::from(vec![1u8; 10_000]))));
            Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(pieces)))
        };
        let roomy = MemoryBudget::new(2_000_000);
        let (kept, charge) = read_limited(body(), 4 << 20, &roomy).await.ok().unwrap();
        assert_eq!((kept.len(), charge.bytes()), (1_000_000, 1_280_000));
        let tight = MemoryBudget::new(1_000_001);
        assert!(matches!(read_limited(body(), 4 << 20, &tight).await, Err(BodyError::NoMemory)));
    }

    #[test]
    fn a_hosts_port_is_a_number_or_nothing() {
        for valid in ["localhost", "localhost:8443", "localhost:", "[::1]", "[::1]:443", "10.0.0.1:65535"] {
            assert!(port_is_a_number(valid), "{valid}");
        }
        for invalid in ["localhost:abc", "localhost:65536", "[::1]:x", "[::1]x", "a:1:2"] {
            assert!(!port_is_a_number(invalid), "{invalid}");
        }
    }
}
