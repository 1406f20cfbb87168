//! The admin listener (`qkv serve --admin ADDR`): plaintext HTTP/1.1 for loopback or a private network,
//! on axum, the stack the web front doors share.
//!
//! - `GET /metrics`: every metric (docs/OPERATIONS.md), in Prometheus's text format. Gauges of what
//!   the store and the connections hold are read at each scrape.
//! - `GET /healthz`: 200 while the process runs, 503 once the store has failed in a way that only a
//!   restart mends (the disk store's log could not be written).
//! - `GET /readyz`: 200 when the storage backend answers and the server is not shutting down; 503
//!   with the reason otherwise.

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
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// Serves the admin endpoints on `listener` until `stop` is cancelled.
pub async fn serve<S: Storage>(
    listener: TcpListener,
    exporter: Exporter,
    service: Service<S>,
    connections: MemoryBudget,
    draining: Draining,
    stop: CancellationToken,
) {
    let addr = listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string());
    let admin = Arc::new(Admin { exporter, service, connections, draining });
    let router = Router::new()
        .route("/metrics", get(metrics::<S>))
        .route("/healthz", get(healthz::<S>))
        .route("/readyz", get(readyz::<S>))
        .with_state(admin);
    info!(%addr, "admin listener serving /metrics, /healthz and /readyz over plaintext HTTP");
    if listener.local_addr().is_ok_and(|a| !a.ip().is_loopback()) {
        warn!(%addr, "the admin listener is plaintext HTTP without authentication: keep it on a private network");
    }
    let served = axum::serve(listener, router).with_graceful_shutdown(stop.clone().cancelled_owned());
    if let Err(e) = served.await {
        warn!(error = %e, "the admin listener failed");
    }
}

async fn metrics<S: Storage>(State(admin): State<Arc<Admin<S>>>) -> impl IntoResponse {
    crate::metrics::ready(readiness(&admin).await.is_ok());
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
    match admin.service.storage().broken() {
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
