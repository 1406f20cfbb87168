//! The QUIC server loop: a task per connection, a task per request stream, graceful shutdown.
//!
//! Shutdown, once `shutdown` is cancelled: stop accepting connections; on every connection stop accepting
//! streams, let the streams already accepted finish (their replies acknowledged by the client), then
//! close with [`codes::SHUTTING_DOWN`]. Whatever is still running after the grace period is cut off by
//! closing the endpoint with the same code.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::{Connection, ConnectionError, Endpoint, Incoming, RecvStream, SendStream};
use rustls::pki_types::CertificateDer;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span, info, info_span, warn};

use super::codes;
use crate::service::{Caller, Service};
use crate::storage::Storage;
use crate::transport::budget::ReadBudget;
use crate::transport::exchange::{EarlyData, Served, serve_request};
use crate::transport::frame::FrameError;
use crate::transport::timeouts;
use crate::transport::{Limits, authenticated_caller};

/// How long to wait, after every connection is closed, for the close frames to reach the clients.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves `endpoint` until `shutdown` is cancelled, then shuts down gracefully within `grace`.
/// `permits` is the server-wide connection limit, shared with the other transports. `client_auth`
/// says the endpoint's TLS configuration requires client certificates.
pub async fn serve<S: Storage>(
    endpoint: Endpoint,
    service: Service<S>,
    limits: Arc<Limits>,
    permits: Arc<Semaphore>,
    shutdown: CancellationToken,
    grace: Duration,
    client_auth: bool,
) {
    let connections = TaskTracker::new();
    let mut last_refusal_warning: Option<Instant> = None;
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // One warning a second at most: a flood of refusals must not flood the log too.
            if last_refusal_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                warn!(limit = limits.max_connections, "connection limit reached; refusing new connections");
                last_refusal_warning = Some(Instant::now());
            }
            incoming.refuse();
            continue;
        };
        let (service, limits, shutdown) = (service.clone(), limits.clone(), shutdown.clone());
        connections.spawn(async move {
            handle_connection(incoming, service, limits, shutdown, client_auth).await;
            drop(permit);
        });
    }

    endpoint.set_server_config(None);
    connections.close();
    info!(connections = connections.len(), "shutting down: finishing in-flight requests");
    if tokio::time::timeout(grace, connections.wait()).await.is_err() {
        warn!(
            ?grace,
            connections = connections.len(),
            "grace period over; closing the remaining connections"
        );
        endpoint.close(codes::SHUTDOWN_FORCED, b"server shut down before answering every request");
        connections.wait().await;
    }
    let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, endpoint.wait_idle()).await;
}

async fn handle_connection<S: Storage>(
    incoming: Incoming,
    service: Service<S>,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
    client_auth: bool,
) {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => {
            debug!(%remote, error = %e, "connection attempt failed");
            return;
        }
    };
    // Serve before the handshake completes (0.5-RTT), so that requests a resuming client sent in 0-RTT
    // early data are answered within its first round trip. `handshake` resolves once the client's
    // Finished has arrived; writes from early data wait for it (see `EarlyData`). For a server,
    // `into_0rtt` always succeeds.
    //
    // Except with client certificates: then nothing is served before the handshake completes, so that
    // every request, early data included, runs for a client whose certificate (or whose ticket's
    // certificate) has been proven by its Finished.
    let zero_rtt = if client_auth { Err(connecting) } else { connecting.into_0rtt() };
    let (connection, handshake) = match zero_rtt {
        Ok((connection, accepted)) => {
            // On a server, `accepted` resolves when the handshake completes or the connection fails
            // first (quinn 0.11 resolves it to false either way): a connection still open then has
            // completed its handshake.
            let watched = connection.clone();
            (connection, EarlyData::new(async move { accepted.await || watched.close_reason().is_none() }))
        }
        Err(connecting) => match connecting.await {
            Ok(connection) => (connection, EarlyData::new(std::future::ready(true))),
            Err(e) => {
                debug!(%remote, error = %e, "handshake failed");
                return;
            }
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
        serve_connection(connection, handshake, service, limits, shutdown, caller).await
    }
    .instrument(span)
    .await
}

/// The certificate chain the client presented, once the handshake has got that far.
fn peer_certificates(connection: &Connection) -> Option<Vec<CertificateDer<'static>>> {
    connection.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok().map(|chain| *chain)
}

async fn serve_connection<S: Storage>(
    connection: Connection,
    handshake: EarlyData,
    service: Service<S>,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
    caller: Caller,
) {
    debug!("connection established");
    let streams = TaskTracker::new();
    let budget = ReadBudget::new(limits.max_request_buffer);
    let ended = loop {
        let (send, recv) = tokio::select! {
            _ = shutdown.cancelled() => break None,
            stream = connection.accept_bi() => match stream {
                Ok(stream) => stream,
                Err(e) => break Some(e),
            },
        };
        let stream_id = recv.id();
        let early = recv.is_0rtt().then(|| handshake.clone());
        // Boxed: spawning moves the future into the task, and a request's state is large.
        let stream = Box::pin(handle_stream(
            send,
            recv,
            early,
            service.clone(),
            limits.clone(),
            budget.clone(),
            caller.clone(),
        ));
        // A span per request only when it will be used: an enabled span costs more than the request.
        if tracing::enabled!(tracing::Level::DEBUG) {
            let span = debug_span!("request", stream = %stream_id, command = tracing::field::Empty);
            streams.spawn(stream.instrument(span));
        } else {
            streams.spawn(stream);
        }
    };
    match ended {
        Some(reason) => log_connection_end(&reason),
        None => {
            streams.close();
            streams.wait().await;
            connection.close(codes::SHUTTING_DOWN, b"server shutting down");
            debug!("connection closed for shutdown");
        }
    }
}

fn log_connection_end(reason: &ConnectionError) {
    match reason {
        ConnectionError::ApplicationClosed(_)
        | ConnectionError::LocallyClosed
        | ConnectionError::TimedOut => {
            debug!(%reason, "connection ended")
        }
        _ => info!(%reason, "connection ended abnormally"),
    }
}

async fn handle_stream<S: Storage>(
    mut send: SendStream,
    mut recv: RecvStream,
    early: Option<EarlyData>,
    service: Service<S>,
    limits: Arc<Limits>,
    budget: ReadBudget,
    caller: Caller,
) {
    // A client that abandons its request stops reading the reply (STOP_SENDING): stop working on it
    // at once rather than finish a reply nobody will read.
    let abandoned = send.stopped();
    let served = tokio::select! {
        served = serve_request(budget.reader(&mut recv), &mut send, &service, &limits, early.as_ref(), &caller) => served,
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
        Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::TimedOut => {
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
    if send.finish().is_ok() {
        // Wait until the client has the whole reply. Shutdown waits for this task, so a connection is
        // never closed (which discards unacknowledged data) before its answered requests are delivered.
        let _ = timeouts::deadline(limits.reply_timeout, send.stopped()).await;
    }
}
