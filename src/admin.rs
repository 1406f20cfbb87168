//! The admin listener (`qkv serve --admin ADDR`): plaintext HTTP/1.1 for loopback or a private network,
//! on axum, the stack the web front doors share.
//!
//! - `GET /metrics`: every metric (docs/OPERATIONS.md), in Prometheus's text format. Gauges of what
//!   the store and the connections hold are read at each scrape.
//! - `GET /healthz`: 200 while the process runs, 503 once the store has failed in a way that only a
//!   restart mends (the disk store's log could not be written).
//! - `GET /readyz`: 200 when the storage backend answers and the server is not shutting down; 503
//!   with the reason otherwise.
//!
//! It answers from before the store is opened ([`StartingAdmin`]): a disk store's recovery takes time
//! proportional to its data, minutes for tens of GB, and a liveness probe refused meanwhile would
//! restart the server in a loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::memory::MemoryBudget;
use crate::metrics::Exporter;
use crate::service::Service;
use crate::storage::Storage;

/// How long `/readyz` waits for the backend to answer before it says it does not.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// The content type of Prometheus's text exposition format.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether the server is shutting down; set once, when shutdown begins.
#[derive(Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    pub fn start(&self) {
        self.0.store(true, Ordering::Relaxed);
        crate::metrics::ready(false);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

struct Admin<S> {
    exporter: Exporter,
    service: Service<S>,
    connections: MemoryBudget,
    draining: Draining,
}

/// Binds the admin listener (before the server runs, so that a bad address fails the start).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::from_std(bind_std(addr)?)
}

fn bind_std(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// How long the starting admin listener may take to finish the probes it is answering when the server
/// takes its socket over; then they are cut off (a probe client tries again).
const HAND_OVER_GRACE: Duration = Duration::from_secs(1);

/// The admin listener while the server starts, before its store is open: `/healthz` answers 200 (the
/// process runs; a liveness probe must not restart a server that is recovering its data), `/readyz`
/// 503 `not ready: recovering: ...` with what the server is doing, `/metrics` what is recorded so far.
/// The server takes its socket over once it runs ([`crate::server::Server::bind_with_admin`]): the
/// same socket, so a probe in between waits in its backlog rather than being refused.
pub struct StartingAdmin {
    /// The socket, kept for the server; the starting listener answers on a duplicate of it.
    listener: std::net::TcpListener,
    exporter: Exporter,
    stop: CancellationToken,
    served: JoinHandle<()>,
}

impl StartingAdmin {
    /// Binds `addr` and answers on it from a task of the current runtime (which must keep running
    /// tasks while the store opens: open it on a blocking thread). `doing` is what `/readyz` says the
    /// server is doing.
    pub fn start(addr: SocketAddr, exporter: Exporter, doing: String) -> std::io::Result<Self> {
        let listener = bind_std(addr)?;
        let answering = TcpListener::from_std(listener.try_clone()?)?;
        let doing: Arc<str> = format!("not ready: recovering: {doing}\n").into();
        let metrics_exporter = exporter.clone();
        let router = Router::new()
            .route(
                "/metrics",
                get(move || {
                    crate::metrics::ready(false);
                    let rendered = metrics_exporter.render();
                    async move { ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], rendered) }
                }),
            )
            .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
            .route(
                "/readyz",
                get(move || {
                    crate::metrics::ready(false);
                    let doing = doing.to_string();
                    async move { (StatusCode::SERVICE_UNAVAILABLE, doing) }
                }),
            );
        let stop = CancellationToken::new();
        log_serving(&answering);
        let served = tokio::spawn(serve_router(answering, router, stop.clone()));
        Ok(StartingAdmin { listener, exporter, stop, served })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The metrics the starting listener serves, which the server goes on recording.
    pub fn exporter(&self) -> &Exporter {
        &self.exporter
    }

    /// Stops answering (the probes being answered finish, within `HAND_OVER_GRACE`) and gives the
    /// socket back, for the server's own admin listener.
    pub(crate) async fn hand_over(self) -> std::io::Result<TcpListener> {
        let StartingAdmin { listener, exporter: _, stop, mut served } = self;
        stop.cancel();
        if tokio::time::timeout(HAND_OVER_GRACE, &mut served).await.is_err() {
            served.abort();
        }
        TcpListener::from_std(listener)
    }
}

fn log_serving(listener: &TcpListener) {
    let addr = listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string());
    info!(%addr, "admin listener serving /metrics, /healthz and /readyz over plaintext HTTP");
    if listener.local_addr().is_ok_and(|a| !a.ip().is_loopback()) {
        warn!(%addr, "the admin listener is plaintext HTTP without authentication: keep it on a private network");
    }
}

/// Admin connections served at once; more are closed as soon as they are accepted, so that nothing
/// that reaches this port can take the file descriptors the data ports need.
const MAX_CONNECTIONS: usize = 64;

/// How long a request head may take to arrive (also how long a kept-alive connection waits for its
/// next request).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection lasts at most: a scraper that keeps its connection opens another for its next
/// scrape.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// How long a connection asked to close may take to finish the request it is answering.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` until `stop` is cancelled, within the limits above; then lets each
/// connection finish the request it is answering (an idle one closes at once).
async fn serve_router(listener: TcpListener, router: Router, stop: CancellationToken) {
    let places = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        while connections.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait for some to close rather than spin.
                debug!(error = %e, "the admin listener could not accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Full: dropping the connection closes it.
        let Ok(place) = places.clone().try_acquire_owned() else { continue };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            let _place = place;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
            let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                () = stop.cancelled() => {}
                () = tokio::time::sleep(CONNECTION_LIFETIME) => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
        });
    }
    let finished = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(CLOSE_GRACE, finished).await.is_err() {
        warn!("admin connections did not finish their requests in time; they are dropped");
    }
}

/// Serves the admin endpoints on `listener` until `stop` is cancelled; `announce`: logs where (not
/// again for a socket taken over from a [`StartingAdmin`], which did).
pub async fn serve<S: Storage>(
    listener: TcpListener,
    announce: bool,
    exporter: Exporter,
    service: Service<S>,
    connections: MemoryBudget,
    draining: Draining,
    stop: CancellationToken,
) {
    let admin = Arc::new(Admin { exporter, service, connections, draining });
    let router = Router::new()
        .route("/metrics", get(metrics::<S>))
        .route("/healthz", get(healthz::<S>))
        .route("/readyz", get(readyz::<S>))
        .with_state(admin);
    if announce {
        log_serving(&listener);
    }
    serve_router(listener, router, stop).await;
}

async fn metrics<S: Storage>(State(admin): State<Arc<Admin<S>>>) -> impl IntoResponse {
    crate::metrics::ready(readiness(&admin).await.is_ok());
    crate::metrics::healthy(admin.service.storage().broken().is_none());
    crate::metrics::record_usage(admin.service.storage().usage(), &admin.connections);
    ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], admin.exporter.render())
}

/// Ready, or why not: shutting down, or the storage backend does not answer.
async fn readiness<S: Storage>(admin: &Admin<S>) -> Result<(), String> {
    if admin.draining.is_set() {
        return Err("shutting down".to_owned());
    }
    match tokio::time::timeout(HEALTH_TIMEOUT, admin.service.storage().health()).await {
        Ok(health) => health.map_err(|reason| format!("storage: {reason}")),
        Err(_) => Err(format!("storage: no answer within {HEALTH_TIMEOUT:?}")),
    }
}

/// Alive unless the store has failed in a way only a restart mends (a liveness probe then restarts it).
async fn healthz<S: Storage>(State(admin): State<Arc<Admin<S>>>) -> (StatusCode, String) {
    let broken = admin.service.storage().broken();
    crate::metrics::healthy(broken.is_none());
    match broken {
        None => (StatusCode::OK, "ok\n".into()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("broken: {reason}\n")),
    }
}

async fn readyz<S: Storage>(State(admin): State<Arc<Admin<S>>>) -> (StatusCode, String) {
    let ready = readiness(&admin).await;
    crate::metrics::ready(ready.is_ok());
    match ready {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
    }
}
