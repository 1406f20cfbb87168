//! The QUIC server loop: a task per connection, a task per request stream, graceful shutdown.
//!
//! Admission: a connection needs a place under the connection limit and its fixed share of the memory
//! budget (its flow-control windows: [`Admission`]), or it is refused at once. Its address must be
//! validated first when unvalidated handshakes pile up (more than `max_unvalidated_handshakes` in
//! progress): the server answers with a stateless Retry, which costs it nothing and a real client one
//! round trip, so that Initial packets from spoofed addresses, whose senders never answer, cannot hold
//! the connection places. A handshake must complete within the request timeout.
//!
//! A connection that chose ALPN `h3` is a browser's WebTransport session ([`webtransport`]): once the
//! session is established, each of its bidirectional streams is served exactly as a QUIC request
//! stream, by the same loop.
//!
//! Shutdown, once `shutdown` is cancelled: stop accepting connections; on every connection stop accepting
//! streams, let the streams already accepted finish (their replies acknowledged by the client), then
//! close with [`codes::SHUTTING_DOWN`]. Whatever is still running after the grace period is cut off by
//! closing the endpoint with the same code. A connection's place and memory are given back only once
//! its last stream task has ended.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use quinn::{Connection, Endpoint, Incoming, RecvStream, SendStream};
use rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span, info, info_span, warn};

use super::{codes, webtransport};
use crate::memory::MemoryBudget;
use crate::metrics::{self, PathSampler};
use crate::service::{Caller, Handler};
use crate::tls::ClientAuth;
use crate::transport::admission::{Admission, Admitted};
use crate::transport::budget::ReadBudget;
use crate::transport::exchange::{AnswerBudget, AnswerShare, EarlyData, Exchange, Served, serve_request};
use crate::transport::frame::FrameError;
use crate::transport::log_throttle;
use crate::transport::origin::Origins;
use crate::transport::timeouts;
use crate::transport::woken::PolledWhenWoken;
use crate::transport::{Limits, Transport, authenticated_caller, untrusted_resumption};

/// How long to wait, after every connection is closed, for the close frames to reach the clients.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Refusals a connection can hold at once when the memory budget is spent (`AnswerBudget`): 4 KiB of
/// its fixed share's bookkeeping (`QUIC_CONNECTION_OVERHEAD`). More wait their turn.
const REFUSALS_AT_ONCE: usize = 4;

/// Serves `endpoint` until `shutdown` is cancelled, then shuts down gracefully within `grace`, refusing
/// new connections until `others_drained` is cancelled too (the server's other listeners are done).
/// `admission` is shared with the other transports. `client_auth`, set when the endpoint's TLS
/// configuration requires client certificates, checks them again once a handshake has completed; `origins` are the web pages whose WebTransport
/// sessions are accepted.
#[allow(clippy::too_many_arguments)] // the loop's owned inputs, gathered in one place
pub async fn serve<H: Handler>(
    endpoint: Endpoint,
    handler: H,
    limits: Arc<Limits>,
    admission: Admission,
    shutdown: CancellationToken,
    grace: Duration,
    client_auth: Option<ClientAuth>,
    origins: Arc<Origins>,
    others_drained: CancellationToken,
) {
    let connections = TaskTracker::new();
    let unvalidated = Arc::new(AtomicUsize::new(0));
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        let validated = incoming.remote_address_validated();
        if !validated && unvalidated.load(Ordering::Acquire) >= limits.max_unvalidated_handshakes {
            // Stateless: nothing is kept for this address until it comes back with the token.
            if incoming.may_retry() {
                match incoming.retry() {
                    Ok(()) => metrics::retry_sent(),
                    Err(e) => debug!(error = %e, "could not send a Retry"),
                }
                continue;
            }
        }
        let admitted = match admission.admit(Transport::Quic, limits.quic_connection_share()) {
            Ok(admitted) => admitted,
            Err(_) => {
                incoming.refuse();
                continue;
            }
        };
        let pending = (!validated).then(|| UnvalidatedHandshake::new(&unvalidated));
        let (handler, limits, shutdown) = (handler.clone(), limits.clone(), shutdown.clone());
        let memory = admission.memory().clone();
        let (origins, client_auth) = (origins.clone(), client_auth.clone());
        let client = incoming.remote_address().ip();
        connections.spawn(log_throttle::serving(client, async move {
            let handshake_deadline = tokio::time::Instant::now() + limits.request_timeout;
            let hold = Hold { admitted, memory, pending, handshake_deadline };
            handle_connection(incoming, handler, limits, shutdown, client_auth, hold, origins).await;
        }));
    }

    // New connections are refused at once (CONNECTION_REFUSED) while the connections there finish,
    // as TCP's closed listener refuses them (without a server configuration, quinn answers a new
    // client's Initial with nothing a client reads). Each costs what a Retry does while serving.
    let refusing = async {
        while let Some(incoming) = endpoint.accept().await {
            incoming.refuse();
        }
    };
    connections.close();
    info!(transport = "quic", connections = connections.len(), "shutting down: finishing in-flight requests");
    let finished = tokio::select! {
        finished = tokio::time::timeout(grace, connections.wait()) => finished.is_ok(),
        // The endpoint closed under the listener: nothing more to refuse.
        () = refusing => tokio::time::timeout(grace, connections.wait()).await.is_ok(),
    };
    if !finished {
        warn!(
            ?grace,
            connections = connections.len(),
            "grace period over; closing the remaining connections"
        );
        endpoint.close(codes::SHUTDOWN_FORCED, b"server shut down before answering every request");
        connections.wait().await;
    } else {
        endpoint.close(codes::SHUTTING_DOWN, b"server shutting down");
    }
    // A closed endpoint refuses new connections itself (CONNECTION_REFUSED) for as long as its socket
    // is open: it stays open until the other listeners are done too, so that a QUIC client meets a
    // refusal for the whole shutdown, not a closed port's silence (it waited out its connect timeout,
    // and was told to check for a firewall).
    others_drained.cancelled().await;
    let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, endpoint.wait_idle()).await;
}

/// A handshake in progress from an address not yet validated; counted until it completes or fails.
struct UnvalidatedHandshake(Arc<AtomicUsize>);

impl UnvalidatedHandshake {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        UnvalidatedHandshake(count.clone())
    }
}

impl Drop for UnvalidatedHandshake {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What an admitted connection holds while it is served.
pub(super) struct Hold {
    /// Its place and fixed share of memory, given back when the connection's task ends.
    admitted: Admitted,
    /// The budget its requests and answers draw from.
    memory: MemoryBudget,
    /// Set while its handshake from an unvalidated address is in progress.
    pending: Option<UnvalidatedHandshake>,
    /// When its handshake must have completed: the request timeout after its first packet was taken.
    /// Every stage counts against it, down to the client's first flight, which a peer can leave
    /// unfinished (the idle timeout alone never ends a connection kept alive by packets).
    pub(super) handshake_deadline: tokio::time::Instant,
}

/// Whether the client certificate of `connection`, whose handshake has completed, is still trusted
/// (see [`ClientAuth`]); if not, the connection is closed, before anything on it is served, and its
/// handshake counted as failed unless it was `counted` already.
pub(super) fn still_trusted(
    connection: &Connection,
    client_auth: Option<&ClientAuth>,
    counted: bool,
) -> bool {
    let Some(Err(e)) = client_auth.map(|auth| auth.verify(peer_certificates(connection).as_deref())) else {
        return true;
    };
    if !counted {
        metrics::handshake(Transport::Quic, metrics::HandshakeResult::Failed);
    }
    untrusted_resumption(&e);
    connection.close(
        codes::CLIENT_CERTIFICATE_UNTRUSTED,
        b"the client certificate of the session this connection resumed is no longer trusted (expired, or its CA replaced)",
    );
    false
}

/// Counts a handshake that did not complete by its deadline, and says so (`remote` unless the span
/// says it).
pub(super) fn handshake_timed_out(limits: &Limits, remote: Option<std::net::SocketAddr>) {
    metrics::handshake(Transport::Quic, metrics::HandshakeResult::TimedOut);
    metrics::limit_hit(metrics::Limit::RequestTimeout);
    debug!(remote = remote.map(tracing::field::display), timeout = ?limits.request_timeout, "handshake did not complete in time");
}

async fn handle_connection<H: Handler>(
    incoming: Incoming,
    handler: H,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
    client_auth: Option<ClientAuth>,
    hold: Hold,
    origins: Arc<Origins>,
) {
    let remote = incoming.remote_address();
    let mut connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => {
            debug!(%remote, error = %e, "connection attempt failed");
            return;
        }
    };
    // The protocol is chosen by the client's first flight, which the server usually has by now (a
    // large one spans packets).
    let deadline = hold.handshake_deadline;
    let browser = match tokio::time::timeout_at(deadline, webtransport::is_browser(&mut connecting)).await {
        Ok(browser) => browser,
        Err(_) => return handshake_timed_out(&limits, Some(remote)),
    };
    if browser {
        let span =
            info_span!("connection", %remote, transport = "webtransport", client = tracing::field::Empty);
        let accept =
            webtransport::accept(connecting, handler, (limits, shutdown), hold, origins, client_auth);
        accept.instrument(span).await;
        return;
    }
    // Serve before the handshake completes (0.5-RTT), so that requests a resuming client sent in 0-RTT
    // early data are answered within its first round trip. `handshake` resolves once the client's
    // Finished has arrived; writes from early data wait for it (see `EarlyData`). For a server,
    // `into_0rtt` always succeeds.
    //
    // Except with client certificates: then nothing is served before the handshake completes, so that
    // every request, early data included, runs for a client whose certificate (or whose ticket's
    // certificate) has been proven by its Finished.
    let zero_rtt = if client_auth.is_some() { Err(connecting) } else { connecting.into_0rtt() };
    let (connection, handshake) = match zero_rtt {
        Ok((connection, accepted)) => {
            // On a server, `accepted` resolves when the handshake completes or the connection fails
            // first (quinn 0.11 resolves it to false either way): a connection still open then has
            // completed its handshake.
            let watched = connection.clone();
            (connection, EarlyData::new(async move { accepted.await || watched.close_reason().is_none() }))
        }
        Err(connecting) => match tokio::time::timeout_at(deadline, connecting).await {
            // Counted as completed with the others, in `serve_connection`.
            Ok(Ok(connection)) => {
                if !still_trusted(&connection, client_auth.as_ref(), false) {
                    return;
                }
                (connection, EarlyData::new(std::future::ready(true)))
            }
            Ok(Err(e)) => {
                metrics::handshake(Transport::Quic, metrics::HandshakeResult::Failed);
                debug!(%remote, error = %e, "handshake failed");
                return;
            }
            Err(_) => return handshake_timed_out(&limits, Some(remote)),
        },
    };
    let span = info_span!(
        "connection",
        %remote,
        transport = "quic",
        id = connection.stable_id(),
        client = tracing::field::Empty
    );
    async move {
        let caller = authenticated_caller(peer_certificates(&connection).as_deref());
        let session = Session::Qkv(connection);
        serve_connection(session, handshake, handler, limits, shutdown, caller, hold).await
    }
    .instrument(span)
    .await
}

/// The certificate chain the client presented, once the handshake has got that far.
pub(super) fn peer_certificates(connection: &Connection) -> Option<Vec<CertificateDer<'static>>> {
    connection.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok().map(|chain| *chain)
}

/// What a connection carries: qkv's protocol (ALPN `qkv/1`), or a browser's WebTransport session
/// (ALPN `h3`), whose bidirectional streams carry the same exchanges.
pub(super) enum Session {
    Qkv(Connection),
    WebTransport(wtransport::Connection),
}

impl Session {
    fn quic(&self) -> &Connection {
        match self {
            Session::Qkv(connection) => connection,
            Session::WebTransport(session) => session.quic_connection(),
        }
    }

    /// The bidirectional streams the session itself holds, beside its requests': HTTP/3's CONNECT
    /// stream for WebTransport (its control and QPACK streams are unidirectional,
    /// `super::HTTP3_UNI_STREAMS`), none for qkv's own protocol.
    fn streams_of_its_own(&self) -> u32 {
        match self {
            Session::Qkv(_) => 0,
            Session::WebTransport(_) => 1,
        }
    }

    fn transport(&self) -> &'static str {
        match self {
            Session::Qkv(_) => "quic",
            Session::WebTransport(_) => "webtransport",
        }
    }

    /// The next request stream the client opens; why the connection ended, when it has.
    async fn accept(&self) -> Result<RequestStream, String> {
        match self {
            Session::Qkv(connection) => {
                { connection.accept_bi().await.map(|(send, recv)| RequestStream::Qkv(send, recv)) }
                    .map_err(|e| e.to_string())
            }
            Session::WebTransport(session) => session
                .accept_bi()
                .await
                .map(|(send, recv)| RequestStream::WebTransport(send, recv))
                .map_err(|e| e.to_string()),
        }
    }
}

/// A request's bidirectional stream: a QUIC stream, or one of a WebTransport session (a QUIC stream
/// after its WebTransport header, which `wtransport` has read).
enum RequestStream {
    Qkv(SendStream, RecvStream),
    WebTransport(wtransport::SendStream, wtransport::RecvStream),
}

impl RequestStream {
    fn quic(&mut self) -> (&mut SendStream, &mut RecvStream) {
        match self {
            RequestStream::Qkv(send, recv) => (send, recv),
            RequestStream::WebTransport(send, recv) => (send.quic_stream_mut(), recv.quic_stream_mut()),
        }
    }
}

pub(super) async fn serve_connection<H: Handler>(
    session: Session,
    handshake: EarlyData,
    handler: H,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
    caller: Caller,
    hold: Hold,
) {
    debug!("connection established");
    let connection = session.quic().clone();
    let Hold { admitted, memory, mut pending, handshake_deadline } = hold;
    let streams = TaskTracker::new();
    let budget = ReadBudget::new(limits.max_request_buffer, memory.clone(), limits.memory_wait);
    // Requests in progress: every stream the client may open is accepted and read, and a request read
    // whole waits for a permit to execute, given back once its answer is complete. Once a client
    // uses them all, quinn grants it more streams (`super::STREAM_CREDIT`), so that those whose
    // answers wait for its acknowledgement do not hold back its next requests. Those are read too:
    // a stream left unread would hold its bytes in the connection's flow-control window, which all
    // streams share, until the requests being served could not receive the rest of theirs.
    let in_progress = Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent_requests as usize));
    let exchange = Exchange {
        handler,
        limits: limits.clone(),
        answers: AnswerBudget::new(memory.clone(), REFUSALS_AT_ONCE),
        caller,
        in_progress: Some(in_progress),
        answer_share: Some(Arc::new(AnswerShare::new(limits.max_request_buffer))),
    };
    // A WebTransport session's CONNECT stream is a bidirectional stream of the connection's credit,
    // open for the session's life, so a page short of one would never have all of its permits in
    // use, which is what raises the credit. And a browser cannot wait for credit: it refuses a
    // stream beyond it at once (Chromium), so a page needs the headroom that covers answers not yet
    // acknowledged from its first request on. So a session starts with the raised credit, its CONNECT
    // stream beside it. (One stream more alone would not even be announced: quinn sends MAX_STREAMS
    // only for a rise of an eighth of the limit.)
    let session_streams = session.streams_of_its_own();
    let raised_credit = |limits: &Limits| {
        limits.max_concurrent_requests.saturating_mul(super::STREAM_CREDIT).saturating_add(session_streams)
    };
    let mut credit_raised = session_streams > 0;
    if credit_raised {
        connection.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(raised_credit(&limits)));
    }
    let handshake_done = tokio::time::timeout_at(handshake_deadline, handshake.completed());
    tokio::pin!(handshake_done);
    // A WebTransport session's handshake is complete already, and counted (`webtransport::accept`).
    let mut handshaking = matches!(session, Session::Qkv(_));
    if !handshaking {
        pending = None;
    }
    let path = Arc::new(parking_lot::Mutex::new(PathSampler::new(&connection)));
    let sampling = CancellationToken::new();
    if metrics::enabled() {
        streams.spawn(metrics::sample_path(connection.clone(), path.clone(), sampling.clone()));
    }
    let started = std::time::Instant::now();
    let mut requests = 0u64;
    let mut accepts_uni = matches!(session, Session::Qkv(_));
    // Polled for every stream accepted: only once it has something to say.
    let mut shutting_down = PolledWhenWoken::new(shutdown.cancelled_owned());
    let ended = loop {
        let mut stream = tokio::select! {
            _ = &mut shutting_down => break None,
            done = &mut handshake_done, if handshaking => {
                handshaking = false;
                pending = None;
                match done {
                    Ok(true) => metrics::handshake(Transport::Quic, metrics::HandshakeResult::Completed),
                    Ok(false) => metrics::handshake(Transport::Quic, metrics::HandshakeResult::Failed),
                    Err(_) => {
                        handshake_timed_out(&limits, None);
                        connection.close(codes::HANDSHAKE_TIMEOUT, b"handshake did not complete in time");
                    }
                }
                continue;
            }
            accepted = session.accept() => match accepted {
                Ok(stream) => stream,
                Err(e) => break Some(e),
            },
            // qkv's protocol has no unidirectional streams (the server grants some for HTTP/3): read
            // nothing of one, and say so. An error here is the connection's, which `accept` reports.
            uni = connection.accept_uni(), if accepts_uni => {
                match uni {
                    Ok(mut uni) => {
                        let _ = uni.stop(codes::REQUEST_REJECTED);
                    }
                    Err(_) => accepts_uni = false,
                }
                continue;
            }
        };
        requests += 1;
        // Every stream's task holds a clone of the exchange's `in_progress` until its answer is
        // acknowledged (when quinn gives its credit back): with the connection's own, the streams open
        // are its count of clones.
        let streams_open = exchange.in_progress.as_ref().map_or(0, Arc::strong_count);
        let limit = limits.max_concurrent_requests as usize;
        if !credit_raised && streams_open + limit / 8 >= limit {
            // The client uses (nearly) every stream it may: more credit, so that those waiting for
            // its acknowledgement do not hold back its next requests (`super::STREAM_CREDIT`).
            // Nearly: quinn announces credit freed only an eighth of the limit at a time, so a client
            // holding more than seven eighths in streams that last (subscriptions) would never hear
            // of the few others freed, and wait for a stream for good.
            credit_raised = true;
            connection.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(raised_credit(&limits)));
        }
        let (_, recv) = stream.quic();
        let stream_id = recv.id();
        let early = recv.is_0rtt().then(|| handshake.clone());
        if early.is_some() {
            metrics::zero_rtt_request();
        }
        // What the client waits counts from now (`Handler::answered`), when metrics want it.
        let accepted = exchange.handler.times_answers().then(std::time::Instant::now);
        // Boxed: spawning moves the future into the task, and a request's state is large.
        let stream = Box::pin(handle_stream(stream, exchange.clone(), budget.clone(), early, accepted));
        // A span per request only when it will be used: an enabled span costs more than the request.
        // Request-level events are logged at debug, some under `qkv::connection`: if those are on
        // but not the request span, the connection's span still names the client.
        if tracing::enabled!(tracing::Level::DEBUG)
            || tracing::enabled!(target: "qkv::connection", tracing::Level::DEBUG)
        {
            let span = debug_span!("request", stream = %stream_id, command = tracing::field::Empty);
            let span = if span.is_disabled() { tracing::Span::current() } else { span };
            streams.spawn(stream.instrument(span));
        } else {
            streams.spawn(stream);
        }
    };
    if handshaking && ended.is_some() {
        // The connection failed before its handshake's end was seen.
        metrics::handshake(Transport::Quic, metrics::HandshakeResult::Failed);
    }
    drop(pending);
    sampling.cancel();
    streams.close();
    let reason = match ended {
        Some(reason) => {
            // The connection is gone, so its streams end soon; they still hold their requests and
            // answers until then, which the connection's place and memory must cover.
            streams.wait().await;
            reason
        }
        None => {
            streams.wait().await;
            match connection.close_reason() {
                None => {
                    connection.close(codes::SHUTTING_DOWN, b"server shutting down");
                    "closed for shutdown".to_owned()
                }
                // The grace period ran out first: the endpoint closed it with its requests unanswered.
                Some(quinn::ConnectionError::LocallyClosed) => {
                    "cut off when the shutdown grace period ran out".to_owned()
                }
                // Closed by the client, or lost, while its requests finished.
                Some(other) => other.to_string(),
            }
        }
    };
    let migrations = {
        let mut path = path.lock();
        path.sample(&connection);
        path.migrations()
    };
    let stats = connection.stats();
    info!(
        target: "qkv::connection",
        transport = session.transport(),
        %reason,
        duration_ms = started.elapsed().as_millis() as u64,
        requests,
        bytes_in = stats.udp_rx.bytes,
        bytes_out = stats.udp_tx.bytes,
        rtt_us = stats.path.rtt.as_micros() as u64,
        lost_packets = stats.path.lost_packets,
        migrations,
        "connection ended"
    );
    drop(admitted);
}

/// Serves one request stream with what its connection serves them all with (`exchange`), its
/// request's bytes charged to `budget`; `early` and `accepted` as [`serve_request`] takes them.
async fn handle_stream<H: Handler>(
    mut stream: RequestStream,
    exchange: Exchange<H>,
    budget: ReadBudget,
    early: Option<EarlyData>,
    accepted: Option<std::time::Instant>,
) {
    let (send, recv) = stream.quic();
    // A client that abandons its request stops reading the reply (STOP_SENDING): stop working on it
    // at once rather than finish a reply nobody will read.
    let abandoned = send.stopped();
    let served = tokio::select! {
        served = serve_request(budget.reader(&mut *recv), &mut *send, &exchange, early.as_ref(), accepted) => served,
        _ = abandoned => {
            debug!("the client abandoned the request");
            let _ = recv.stop(codes::CANCELLED);
            return;
        }
    };
    match served {
        Ok(Served::Answered) => {}
        Ok(Served::Rejected(_)) => {
            // Tell the client to stop sending the rest of a request that will never be read.
            let _ = recv.stop(codes::REQUEST_REJECTED);
        }
        Ok(Served::RefusalLost(e)) => {
            // Not executed, whatever became of the answer saying so: never a code that says it was.
            debug!(error = %e, "could not deliver a refusal");
            let _ = recv.stop(codes::REQUEST_REJECTED);
            let _ = send.reset(codes::REQUEST_REJECTED);
            return;
        }
        Ok(Served::Unread(e)) => {
            // The client reset its request before the end (or the connection failed): nothing ran,
            // and the code says so, as the one the client cancelled with does (not 0x11, "maybe").
            debug!(error = %e, "the request stream ended before the request was whole");
            let _ = send.reset(codes::CANCELLED);
            return;
        }
        Err(e @ FrameError::MemoryExhausted { .. }) => {
            metrics::limit_hit(metrics::Limit::ConnectionMemory);
            info!(error = %e, "no memory for an answer; dropped it");
            let _ = send.reset(codes::ANSWER_DROPPED);
            return;
        }
        Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::TimedOut => {
            metrics::limit_hit(metrics::Limit::ReplyTimeout);
            debug!(error = %e, "abandoned a reply the client does not read");
            let _ = send.reset(codes::REPLY_TIMEOUT);
            return;
        }
        Err(e) => {
            debug!(error = %e, "request stream failed");
            let _ = send.reset(codes::REPLY_FAILED);
            return;
        }
    }
    // The answer is complete, and the request no longer counts as in progress (`serve_request` gave
    // its permit back), while its stream's credit comes back only with the client's acknowledgement
    // (up to its ack delay, 25 ms, later).
    if send.finish().is_ok() {
        // Wait until the client has the whole reply. Shutdown waits for this task, so a connection is
        // never closed (which discards unacknowledged data) before its answered requests are delivered.
        let _ = timeouts::deadline(exchange.limits.reply_timeout, send.stopped()).await;
    }
}
