//! The client over QUIC: each request on a stream of its own, on one connection of the client's
//! endpoint. With a session ticket the connection is resumed in 0-RTT: requests go out with the first
//! packet, before the handshake has completed.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::Shared;
use parking_lot::Mutex;
use quinn::{ConnectError, Connection, Endpoint, SendStream, WriteError, ZeroRttAccepted};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::error::Cause;
use super::frames::ResponseFrames;
use super::{ClientConfig, ClientError, ClientResult, Stats};
use crate::pb::CommandRequest;
use crate::transport::frame::encode_frame;
use crate::transport::quic::codes;

/// What a QUIC connect that got no answer at all should make a user check: that UDP gets through.
pub(super) const UDP_HINT: &str = " (QUIC uses UDP: is the port open for UDP?)";

/// An answer is overdue after this many of the connection's round trips without its first frame...
const OVERDUE_RTTS: u32 = 4;
/// ... and never sooner than this.
const OVERDUE_AT_LEAST: Duration = Duration::from_millis(200);
/// The probe's payload: with its headers, over a third of the 1200-byte datagram a server must be
/// allowed to send to validate a new path (see [`QuicConnection::call`]).
const PROBE_PAYLOAD: usize = 1024;

/// How far the handshake of a connection has come, as its client knows it. Until the handshake
/// completes the client has not sent its Finished, so the server cannot have completed its side
/// either, and it executes no write sent in 0-RTT early data before then (docs/PROTOCOL.md, "0-RTT"):
/// a call that fails before that point was not executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handshake {
    /// Under way (a connection opened in 0-RTT whose handshake is still running).
    Pending,
    Completed,
    /// The connection was lost before its handshake completed.
    Failed,
    /// No handshake within the connect timeout: the client closed the connection.
    GaveUp,
}

#[derive(Clone)]
pub(super) struct QuicConnection {
    connection: Connection,
    /// Where the handshake stands: set by the watcher of a 0-RTT connection, `Completed` from the start
    /// for any other.
    handshake_state: tokio::sync::watch::Receiver<Handshake>,
    /// For a connection opened in 0-RTT, quinn's word that its handshake completed, which the watcher
    /// passes on a scheduling turn later: see [`QuicConnection::handshake_now`].
    accepted: Option<Shared<ZeroRttAccepted>>,
    /// For the errors of calls made before the handshake completed.
    addr: Arc<str>,
    connect_timeout: Duration,
    request_timeout: Duration,
    /// For a connection opened in 0-RTT, the task that waits for its handshake: see
    /// [`watch_handshake`]. It lives no longer than the connection (the last clone of this handle
    /// aborts it) and [`QuicConnection::close`] waits for it, so that once a client is closed its
    /// 0-RTT statistics are final.
    handshake: Option<Arc<Mutex<Option<AbortOnDropHandle<()>>>>>,
    /// When the connection was last probed for an overdue answer.
    probed_at: Arc<Mutex<Option<Instant>>>,
}

impl QuicConnection {
    /// Connects through `endpoint` with the settings `quic`. With `zero_rtt` and a ticket for the
    /// server, returns at once and the first requests travel as early data; otherwise returns when the
    /// handshake is complete.
    pub(super) async fn connect(
        endpoint: &Endpoint,
        quic: &quinn::ClientConfig,
        config: &ClientConfig,
        server_name: &str,
        remote: SocketAddr,
        stats: &Arc<Stats>,
    ) -> ClientResult<Self> {
        let connecting = endpoint.connect_with(quic.clone(), remote, server_name).map_err(|e| match e {
            ConnectError::InvalidServerName(name) => {
                ClientError::InvalidConfig(format!("{name:?} is not a valid server name"))
            }
            other => ClientError::Connect { addr: config.addr.clone(), cause: other.into(), hint: "" },
        })?;
        let established = |connection, handshake, handshake_state, accepted| QuicConnection {
            connection,
            handshake_state,
            accepted,
            addr: config.addr.as_str().into(),
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            handshake,
            probed_at: Arc::default(),
        };
        let connecting = match config.zero_rtt {
            true => match connecting.into_0rtt() {
                Ok((connection, accepted)) => {
                    let (state, handshake_state) = tokio::sync::watch::channel(Handshake::Pending);
                    let accepted = accepted.shared();
                    let watcher =
                        watch_handshake(connection.clone(), accepted.clone(), stats.clone(), config, state);
                    let handshake = Some(Arc::new(Mutex::new(Some(watcher))));
                    return Ok(established(connection, handshake, handshake_state, Some(accepted)));
                }
                Err(connecting) => connecting, // no ticket: a full handshake
            },
            false => connecting,
        };
        let connection = match tokio::time::timeout(config.connect_timeout, connecting).await {
            Err(_) => {
                return Err(ClientError::connect_timeout(&config.addr, config.connect_timeout, UDP_HINT));
            }
            Ok(Err(e)) => return Err(handshake_error(config, e)),
            Ok(Ok(connection)) => connection,
        };
        Ok(established(connection, None, tokio::sync::watch::channel(Handshake::Completed).1, None))
    }

    /// Opens a stream, writes the request frame and finishes the stream.
    pub(super) async fn send(&self, frame: Bytes, max_frame_len: usize) -> ClientResult<ResponseFrames> {
        self.send_noting(frame, max_frame_len, &AtomicBool::new(false)).await
    }

    /// [`QuicConnection::send`], setting `finished` once the stream is finished.
    async fn send_noting(
        &self,
        frame: Bytes,
        max_frame_len: usize,
        finished: &AtomicBool,
    ) -> ClientResult<ResponseFrames> {
        let (send, recv) = self.connection.open_bi().await.map_err(ClientError::before_sending)?;
        let mut send = ResetUnlessFinished(Some(send));
        if let Some(stream) = send.0.as_mut() {
            match stream.write_chunk(frame).await {
                // The server stopped reading because it refused the request; its reply says why.
                Ok(()) | Err(WriteError::Stopped(_)) => {}
                Err(e) => return Err(ClientError::before_finish(e)),
            }
        }
        send.finish();
        finished.store(true, Ordering::Relaxed);
        Ok(ResponseFrames::quic(recv, max_frame_len))
    }

    /// Sends `frame` and waits for the first frame of its answer, until `deadline` (`None` past it),
    /// probing the connection while the answer is overdue. One timer serves both.
    ///
    /// Why probe: after a client's address changes without its knowing (a phone moving from Wi-Fi to
    /// cellular), the server may send to the new address only three times what it has received from
    /// there until it has validated it (RFC 9000's anti-amplification limit). If the server's first
    /// datagram there, padded to 1200 bytes with its PATH_CHALLENGE, is lost, the server may send
    /// nothing more; a client whose requests were all acknowledged has nothing to retransmit, and both
    /// wait until the client next sends (quinn-rs/quinn#1160). So once an answer is overdue (4 round
    /// trips, at least 200 ms, doubling while it stays so) the client sends a `Ping` of 1 KiB on a
    /// stream of its own, at most one per connection in that time: its bytes lift the server's limit,
    /// and its acknowledgements give the new path a round-trip time. Its answer is read and dropped.
    ///
    /// A call that fails, or is not answered by `deadline`, before the connection's handshake has
    /// completed was not executed (see [`Handshake`]): it fails as such, with
    /// [`ClientError::ConnectTimeout`] when no server answered the handshake.
    pub(super) async fn call(
        &self,
        frame: Bytes,
        max_frame_len: usize,
        deadline: Instant,
        idempotent: bool,
    ) -> Option<ClientResult<ResponseFrames>> {
        match self.answer(frame, max_frame_len, deadline).await {
            Some(Ok(frames)) => Some(Ok(frames)),
            None => match self.handshake_now() {
                Handshake::Completed => None,
                _ => {
                    // Still pending, the handshake could complete later and the server then run a write
                    // held in early data: closed now, it never completes (unless it did meanwhile, and
                    // then the request may have been executed). A read's connection is left to finish.
                    if !idempotent {
                        self.connection.close(codes::NO_ERROR, b"no handshake within the request timeout");
                    }
                    match self.handshake_now() {
                        Handshake::Completed => None,
                        _ => Some(Err(self.no_handshake(self.request_timeout))),
                    }
                }
            },
            Some(Err(e)) => Some(Err(self.before_handshake(e).await)),
        }
    }

    /// `e` as it stands when the handshake completed; otherwise a failure that left the request
    /// unexecuted.
    async fn before_handshake(&self, e: ClientError) -> ClientError {
        let mut state = self.handshake_state.clone();
        // A lost connection settles its handshake at once: wait for the watcher to say how.
        let settled = match self.connection.close_reason() {
            Some(_) => state.wait_for(|state| *state != Handshake::Pending).await.map(|state| *state),
            None => Ok(self.handshake_now()),
        };
        match (settled.unwrap_or(Handshake::Completed), e) {
            (Handshake::GaveUp, _) => self.no_handshake(self.connect_timeout),
            (Handshake::Failed, ClientError::ConnectionLost(cause) | ClientError::Stream(cause)) => {
                ClientError::NotSent { cause }
            }
            (_, e) => e,
        }
    }

    /// Where the handshake stands now: the watcher's word, or quinn's if the handshake has settled and
    /// the watcher has not yet run since. A call that read `Pending` there would report a write the
    /// server may still execute (the client's Finished is on its way) as not executed.
    fn handshake_now(&self) -> Handshake {
        let state = *self.handshake_state.borrow();
        let Some(accepted) = self.accepted.as_ref().filter(|_| state == Handshake::Pending) else {
            return state;
        };
        match accepted.clone().now_or_never() {
            None => Handshake::Pending,
            // quinn says "not accepted" also of a connection lost before its handshake completed.
            Some(false) if self.connection.close_reason().is_some() => Handshake::Failed,
            Some(_) => Handshake::Completed,
        }
    }

    /// No server completed the handshake within `waited`.
    fn no_handshake(&self, waited: Duration) -> ClientError {
        ClientError::connect_timeout(self.addr.to_string(), waited, UDP_HINT)
    }

    /// [`QuicConnection::call`], whatever the state of the handshake. A request whose stream was not
    /// finished by `deadline` fails as not sent (the server runs a request only once it has its end,
    /// and the stream is reset as the call drops it).
    async fn answer(
        &self,
        frame: Bytes,
        max_frame_len: usize,
        deadline: Instant,
    ) -> Option<ClientResult<ResponseFrames>> {
        let finished = AtomicBool::new(false);
        let mut answered = pin!(super::first_frame(self.send_noting(frame, max_frame_len, &finished)));
        let mut overdue = (self.connection.rtt() * OVERDUE_RTTS).max(OVERDUE_AT_LEAST);
        let mut timer = pin!(tokio::time::sleep_until((Instant::now() + overdue).min(deadline)));
        let mut probe: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = None;
        loop {
            tokio::select! {
                biased;
                answered = answered.as_mut() => return Some(answered),
                () = async { if let Some(probe) = probe.as_mut() { probe.await } }, if probe.is_some() => probe = None,
                () = timer.as_mut() => {
                    let now = Instant::now();
                    if now >= deadline {
                        if !finished.load(Ordering::Relaxed) {
                            let cause = Cause::NotSentWithin(self.request_timeout);
                            return Some(Err(ClientError::NotSent { cause }));
                        }
                        return None;
                    }
                    if probe.is_none() && self.due_for_probe(overdue) {
                        probe = Some(Box::pin(self.clone().probe(max_frame_len)));
                    }
                    overdue *= 2;
                    timer.as_mut().reset((now + overdue).min(deadline));
                }
            }
        }
    }

    /// Whether no probe went out on this connection within `interval`; if so, counts one as sent now.
    fn due_for_probe(&self, interval: Duration) -> bool {
        let mut probed_at = self.probed_at.lock();
        let now = Instant::now();
        if probed_at.is_some_and(|at| now < at + interval) {
            return false;
        }
        *probed_at = Some(now);
        true
    }

    /// Sends a probe and reads its answer to the end (see [`QuicConnection::call`]).
    async fn probe(self, max_frame_len: usize) {
        let ping = CommandRequest::ping(Bytes::from(vec![0u8; PROBE_PAYLOAD]));
        let Ok(frame) = encode_frame(&ping, max_frame_len) else { return };
        if let Ok(mut answer) = self.send(frame, max_frame_len).await {
            while let Some(Ok(_)) = answer.next().await {}
        }
    }

    /// False once the connection has failed or been closed: the next call needs a new one.
    pub(super) fn is_usable(&self) -> bool {
        self.connection.close_reason().is_none()
    }

    pub(super) fn remote_address(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    /// Closes the connection, adding what it sent and lost to `stats`, and waits until its handshake
    /// watcher has recorded how the handshake ended (at once: closing ends a handshake still under way).
    pub(super) async fn close(&self, stats: &Stats) {
        let path = self.connection.stats().path;
        stats.packets_sent.fetch_add(path.sent_packets, Ordering::Relaxed);
        stats.packets_lost.fetch_add(path.lost_packets, Ordering::Relaxed);
        self.connection.close(codes::NO_ERROR, b"done");
        let watcher = self.handshake.as_ref().and_then(|watcher| watcher.lock().take());
        if let Some(watcher) = watcher {
            let _ = watcher.await;
        }
    }
}

/// Waits for the handshake of a connection opened in 0-RTT, and says in `state` how it ended. Whether
/// the server took the early data is known when the handshake completes; requests it refused fail with
/// `ZeroRttRejected` and are sent again, and the outcome is counted in `stats`. A handshake that does
/// not complete within the connect timeout (no server there any more, say) ends the connection, as a
/// full handshake's would.
fn watch_handshake(
    connection: Connection,
    accepted: Shared<ZeroRttAccepted>,
    stats: Arc<Stats>,
    config: &ClientConfig,
    state: tokio::sync::watch::Sender<Handshake>,
) -> AbortOnDropHandle<()> {
    let timeout = config.connect_timeout;
    AbortOnDropHandle::new(tokio::spawn(async move {
        let accepted = match tokio::time::timeout(timeout, accepted).await {
            Ok(accepted) => accepted,
            Err(_) => {
                // Before closing: the calls the close fails read the state.
                state.send_replace(Handshake::GaveUp);
                connection.close(codes::NO_ERROR, b"no handshake within the connect timeout");
                return;
            }
        };
        // quinn says "not accepted" also of a connection lost before its handshake completed. (One
        // that completed with its early data refused and was lost before this task ran counts as
        // failed too: a window of one scheduling turn.)
        if !accepted && connection.close_reason().is_some() {
            state.send_replace(Handshake::Failed);
            return;
        }
        state.send_replace(Handshake::Completed);
        let counter = if accepted { &stats.zero_rtt_accepted } else { &stats.zero_rtt_rejected };
        counter.fetch_add(1, Ordering::Relaxed);
    }))
}

/// A request stream that is reset with [`codes::CANCELLED`] if its call is dropped before the whole
/// request was written (quinn would otherwise finish it, and the server would read half a frame).
struct ResetUnlessFinished(Option<SendStream>);

impl ResetUnlessFinished {
    fn finish(&mut self) {
        if let Some(mut stream) = self.0.take() {
            let _ = stream.finish();
        }
    }
}

impl Drop for ResetUnlessFinished {
    fn drop(&mut self) {
        if let Some(mut stream) = self.0.take() {
            let _ = stream.reset(codes::CANCELLED);
        }
    }
}

fn handshake_error(config: &ClientConfig, e: quinn::ConnectionError) -> ClientError {
    use quinn::ConnectionError::*;
    // Certificate and ALPN failures arrive as TLS alerts (QUIC crypto errors 0x100-0x1ff), raised here
    // or sent by the server; anything else (a refused connection, say) is not about certificates.
    let tls_alert = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    let is_alert = match &e {
        TransportError(error) => tls_alert(error.code),
        ConnectionClosed(close) => tls_alert(close.error_code),
        _ => false,
    };
    // A qkv server refuses a connection (CONNECTION_REFUSED) for the reasons the hint gives.
    let refused = matches!(&e, ConnectionClosed(close) if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED);
    let (addr, cause) = (config.addr.clone(), Cause::QuicConnection(e));
    match (is_alert, refused) {
        (true, _) => ClientError::Handshake { addr, ca_file: config.ca_file.clone(), cause },
        (false, true) => ClientError::Connect { addr, cause, hint: REFUSED_HINT },
        (false, false) => ClientError::Connect { addr, cause, hint: "" },
    }
}

/// What a refused QUIC connection suggests.
const REFUSED_HINT: &str = " (the server takes no new connections now: it is shutting down, or at its connection limit or memory budget)";
