//! The server: certificates, the QUIC endpoint, the TCP listener and the shared service wired together,
//! run until a shutdown signal, then stopped gracefully.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quinn::Endpoint;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::{self, Draining, StartingAdmin};
use crate::certs::{CertDir, CertError, Provisioned};
use crate::memory::MemoryBudget;
use crate::metrics::{self, Exporter, Metered};
use crate::service::{Service, ServiceConfig};
use crate::storage::Storage;
use crate::tls::{self, Credentials, Identity, TlsError};
use crate::transport::admission::Admission;
use crate::transport::quic::{self, QuicOptions};
use crate::transport::tcp::{self, TcpSecurity};
use crate::transport::{self, Limits, Transport};
use crate::web::{self, WebSecurity};

/// Where `qkv serve` listens unless told otherwise: loopback only, so a development server is not
/// exposed by accident.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9527));

pub use crate::transport::TcpMode;
use crate::transport::origin::Origins;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address of the QUIC endpoint (UDP) and of the TCP listener (the same port number).
    pub listen: SocketAddr,
    pub tcp: TcpMode,
    /// Directory of `ca.pem`, `server.pem` and their keys; generated on first start if empty.
    pub certs_dir: PathBuf,
    /// Mutual TLS: when set, every client must present a certificate signed by a CA in this PEM file
    /// (on QUIC and on TLS over TCP; plaintext TCP cannot be combined with it).
    pub client_ca: Option<PathBuf>,
    pub limits: Limits,
    /// The server-wide budget of what connections can make the server hold: their fixed shares
    /// (QUIC flow-control windows, TCP buffers), request bytes, answers waiting to be written,
    /// published messages in subscribers' queues. Default: a quarter of the memory the process may use.
    pub connection_memory: usize,
    /// Congestion controller, initial RTT, segmentation offload.
    pub quic: QuicOptions,
    /// Sessions remembered for resumption (0-RTT over QUIC), per transport.
    pub session_cache: usize,
    /// Whether QUIC clients resuming a session may send requests in 0-RTT early data (read-only ones
    /// are served from it, writes wait for the handshake). Off: the server's tickets allow no early
    /// data, so a resuming client sends its requests after the handshake, one round trip later, and
    /// nothing it sends can be replayed.
    pub zero_rtt: bool,
    pub service: ServiceConfig,
    /// How long shutdown waits for in-flight requests before closing connections regardless.
    pub shutdown_grace: Duration,
    /// Where the admin listener (/metrics, /healthz, /readyz) listens, if anywhere; with it, the
    /// server records metrics. Metrics belong to the process: servers in one process share them.
    pub admin: Option<SocketAddr>,
    /// Where the web listener (REST and gRPC, docs/HTTP.md) listens, if anywhere.
    pub web: Option<SocketAddr>,
    /// The web listener in plaintext HTTP, for loopback behind a proxy (refused with `client_ca`).
    pub web_plaintext: bool,
    /// The largest request head the web listener reads (HTTP/1.1 request line and headers, HTTP/2
    /// header list).
    pub web_max_header_size: usize,
    /// Web pages allowed to open WebTransport and WebSocket sessions besides the web listener's own
    /// (`https://app.example.com`, or `*`): docs/SECURITY.md, "Browsers".
    pub web_origins: Vec<String>,
    /// Host names the web listener answers to besides IP addresses, `localhost` and its certificate's
    /// names (`kv.example.com` behind a proxy, or `*`); requests for others are refused (421), which
    /// stops DNS rebinding: docs/SECURITY.md, "Browsers".
    pub web_hosts: Vec<String>,
    /// What WebTransport sessions are presented: a short-lived certificate the server issues itself
    /// (browsers trust it by hash), or the server's own (issued by a CA browsers trust).
    pub webtransport_cert: tls::WebTransportCert,
    /// The largest WebSocket message a client may send.
    pub websocket_max_message: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN,
            tcp: TcpMode::Tls,
            certs_dir: PathBuf::from("certs"),
            client_ca: None,
            limits: Limits::default(),
            connection_memory: transport::default_connection_memory(),
            quic: QuicOptions::default(),
            session_cache: tls::DEFAULT_SESSION_CACHE,
            zero_rtt: true,
            service: ServiceConfig::default(),
            shutdown_grace: Duration::from_secs(10),
            admin: None,
            web: None,
            web_plaintext: false,
            web_max_header_size: crate::web::DEFAULT_MAX_HEADER_SIZE,
            web_origins: Vec::new(),
            web_hosts: Vec::new(),
            webtransport_cert: tls::WebTransportCert::default(),
            websocket_max_message: crate::web::browser::DEFAULT_WEBSOCKET_MAX_MESSAGE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Certs(#[from] CertError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr} ({protocol}): {cause}")]
    Bind { addr: SocketAddr, protocol: &'static str, cause: io::Error },
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

impl ServerConfig {
    /// Settings that cannot work together, said before anything is opened or bound (`qkv serve
    /// --print-config` checks them too, so that what it prints is what a server would run with).
    pub fn validate(&self) -> Result<(), String> {
        self.limits.validate()?;
        self.service.validate(self.limits.max_frame_len)?;
        let share = self.limits.quic_connection_share().max(self.limits.tcp_connection_share());
        if self.connection_memory < share {
            return Err(format!(
                "the connection memory budget ({} bytes) cannot admit a single connection, which takes {share} bytes with these windows: raise --connection-memory or lower --connection-window and --send-window",
                self.connection_memory
            ));
        }
        if !(web::MIN_MAX_HEADER_SIZE..=u32::MAX as usize).contains(&self.web_max_header_size) {
            return Err(format!(
                "the web listener's header limit must be at least {} bytes (and fit 32 bits), not {}",
                web::MIN_MAX_HEADER_SIZE,
                self.web_max_header_size
            ));
        }
        if self.websocket_max_message < web::browser::MIN_WEBSOCKET_MAX_MESSAGE {
            return Err(format!(
                "the WebSocket message limit must be at least {} bytes, not {}",
                web::browser::MIN_WEBSOCKET_MAX_MESSAGE,
                self.websocket_max_message
            ));
        }
        // A web connection is admitted with its share, and each WebSocket session or gRPC Pipeline
        // call on it is charged three messages more: a budget that cannot hold one of each would
        // refuse every session, each with a 503 that says "retry shortly".
        let session = web::web_connection_share(&self.limits)
            .saturating_add(web::browser::websocket_share(self.websocket_max_message));
        if self.web.is_some() && self.connection_memory < session {
            return Err(format!(
                "the connection memory budget ({} bytes) cannot admit a single web connection with a WebSocket session or gRPC Pipeline call, which takes {session} bytes: raise --connection-memory or lower --websocket-max-message",
                self.connection_memory
            ));
        }
        Origins::new(&self.web_origins)?.with_hosts(&self.web_hosts)?;
        if self.web_plaintext && self.web.is_none() {
            return Err("--web-plaintext serves the web listener, which is off: set --web ADDR too".into());
        }
        if self.client_ca.is_some() && self.web_plaintext {
            return Err(
                "client certificates (--client-ca) need TLS on the web listener too: drop --web-plaintext"
                    .into(),
            );
        }
        if self.client_ca.is_some() && self.tcp == TcpMode::Plaintext {
            return Err(
                "client certificates (--client-ca) need TLS on TCP too: drop --tcp-plaintext, or serve QUIC only with --no-tcp".into(),
            );
        }
        Ok(())
    }
}

/// A bound server, ready to run.
pub struct Server<S> {
    quic: Endpoint,
    tcp: Option<(TcpListener, TcpSecurity)>,
    admin: Option<AdminSocket>,
    /// The metrics, when recorded: the admin listener's, and the web listener's figures.
    exporter: Option<Exporter>,
    web: Option<(TcpListener, WebSecurity)>,
    /// The certificate and client CA, reloaded on SIGHUP.
    credentials: Credentials,
    /// SIGHUP, listened for from `bind` on, so that one sent while the server starts is not fatal.
    hangups: Option<Signal>,
    service: Service<S>,
    memory: MemoryBudget,
    config: ServerConfig,
}

/// The admin listener's socket: bound by the server, or taken over from the listener that answered
/// while the store opened.
enum AdminSocket {
    Bound(TcpListener),
    Starting(StartingAdmin),
}

/// Binds `config.admin`, if set, before the store is opened, and answers probes on it meanwhile
/// ([`StartingAdmin`]); `doing` is what `/readyz` says the server is doing. Give it to
/// [`Server::bind_with_admin`]. Must be called within a tokio runtime.
pub fn start_admin(config: &ServerConfig, doing: String) -> Result<Option<StartingAdmin>, ServerError> {
    let Some(addr) = config.admin else { return Ok(None) };
    let exporter = metrics::install()?;
    let starting = StartingAdmin::start(addr, exporter, doing).map_err(|cause| ServerError::Bind {
        addr,
        protocol: "admin HTTP",
        cause,
    })?;
    Ok(Some(starting))
}

impl<S: Storage> Server<S> {
    /// Loads (or first generates) the certificates and binds the endpoint. Must be called within a
    /// tokio runtime.
    pub fn bind(config: ServerConfig, storage: S) -> Result<Self, ServerError> {
        Self::bind_with_admin(config, storage, None)
    }

    /// [`Server::bind`], with the admin listener `starting` that has answered since before the store
    /// was opened ([`start_admin`]); without it, the admin listener is bound here.
    pub fn bind_with_admin(
        config: ServerConfig,
        storage: S,
        starting: Option<StartingAdmin>,
    ) -> Result<Self, ServerError> {
        config.validate().map_err(ServerError::Config)?;
        config.service.warn_of_surprises(config.limits.max_frame_len);
        let certs = CertDir::new(&config.certs_dir);
        let existed = certs.path().exists();
        log_provisioning(&certs, certs.ensure_server_certificate()?, existed);
        let identity = Identity::from_pem_files(&certs.server_cert(), &certs.server_key())?;
        let not_after = identity.not_after();
        let mut tls = tls::server_configs(
            identity,
            config.session_cache,
            config.client_ca.as_deref(),
            config.webtransport_cert,
        )?;
        if !config.zero_rtt {
            // Tickets then allow no early data, and clients do not offer any (QUIC allows 0 or all).
            tls.quic.max_early_data_size = 0;
        }
        let credentials = tls.credentials.clone();
        let web_tls = tls.credentials.door(tls.web.clone());
        let hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => Some(hangups),
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP: certificates will not be reloaded");
                None
            }
        };
        let transport::Bound { quic, tcp } =
            transport::bind(config.listen, tls, config.tcp, &config.limits, &config.quic).map_err(|e| {
                ServerError::Bind { addr: config.listen, protocol: e.protocol, cause: e.cause }
            })?;
        let keep_alive = crate::client::DEFAULT_KEEP_ALIVE;
        if config.limits.idle_timeout < 3 * keep_alive {
            warn!(
                idle_timeout = ?config.limits.idle_timeout,
                client_keep_alive = ?keep_alive,
                "the idle timeout is shorter than three keep-alive intervals of qkv's clients: an idle QUIC connection (a quiet subscriber's) may be closed under its client; give clients --keep-alive under a third of --idle-timeout, or raise it"
            );
        }
        if config.tcp == TcpMode::Plaintext && !config.listen.ip().is_loopback() {
            warn!(
                addr = %config.listen,
                "serving plaintext TCP beyond loopback: anyone on the network can read and change the traffic"
            );
        }
        let (admin, exporter) = match (starting, config.admin) {
            (Some(starting), _) => {
                let exporter = starting.exporter().clone();
                (Some(AdminSocket::Starting(starting)), Some(exporter))
            }
            (None, Some(addr)) => {
                let exporter = metrics::install()?;
                let listener = admin::bind(addr).map_err(|cause| ServerError::Bind {
                    addr,
                    protocol: "admin HTTP",
                    cause,
                })?;
                (Some(AdminSocket::Bound(listener)), Some(exporter))
            }
            (None, None) => (None, None),
        };
        // Once the recorder is installed (above, without an admin listener started before).
        metrics::server_certificate(not_after);
        let web = match config.web {
            Some(addr) => {
                let listener = web::bind(addr).map_err(|cause| ServerError::Bind {
                    addr,
                    protocol: "web HTTP",
                    cause,
                })?;
                let security = if config.web_plaintext {
                    if !addr.ip().is_loopback() {
                        warn!(%addr, "serving the web listener in plaintext beyond loopback: anyone on the network can read and change the traffic");
                    }
                    WebSecurity::Plaintext
                } else {
                    WebSecurity::Tls(web_tls)
                };
                Some((listener, security))
            }
            None => None,
        };
        let memory = MemoryBudget::new(config.connection_memory);
        let service = Service::with_memory(
            storage,
            config.service.clone(),
            config.limits.max_frame_len,
            memory.clone(),
        );
        Ok(Server { quic, tcp, admin, exporter, web, credentials, hangups, service, memory, config })
    }

    /// The address actually bound (useful with port 0); QUIC and TCP share its port number.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.quic.local_addr()
    }

    /// The web listener's address, when there is one.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web.as_ref().and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// The admin listener's address, when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        match self.admin.as_ref()? {
            AdminSocket::Bound(listener) => listener.local_addr().ok(),
            AdminSocket::Starting(starting) => starting.local_addr().ok(),
        }
    }

    pub fn service(&self) -> &Service<S> {
        &self.service
    }

    /// The connection memory budget, shared by every transport and the pub/sub broker.
    pub fn connection_memory(&self) -> &MemoryBudget {
        &self.memory
    }

    /// Serves until `shutdown` completes, then stops gracefully: no new connections or requests, the
    /// in-flight ones finished (for at most the grace period), connections closed with the
    /// `SHUTTING_DOWN` code. Returns once everything is closed.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let token = CancellationToken::new();
        let addr = self.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string());
        let tcp = match (&self.tcp, self.config.tcp) {
            (Some(_), TcpMode::Tls) => "tls",
            (Some(_), _) => "plaintext",
            (None, _) => "off",
        };
        let client_auth = self.credentials.client_auth();
        let started = std::time::Instant::now();
        // Checked in `bind`.
        let mut origins = Origins::new(&self.config.web_origins)
            .and_then(|origins| origins.with_hosts(&self.config.web_hosts))
            .unwrap_or_default();
        if let Some(web) = self.web_addr() {
            origins = origins
                .with_web_listener(if self.config.web_plaintext { "http" } else { "https" }, web.port());
        }
        // The names at start: a reload that renames the server leaves the old names' pages allowed.
        let origins = Arc::new(origins.with_names(self.credentials.server_names()));
        let quic_addr = self.local_addr().unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        match &self.config.client_ca {
            Some(ca) => {
                info!(%addr, quic = "on", tcp, client_ca = %ca.display(), "serving; client certificates required")
            }
            None => info!(%addr, quic = "on", tcp, "serving"),
        }
        let web_listening = self.web_addr().is_some();
        let limits = Arc::new(self.config.limits);
        // What connections can make the server hold at worst, all together: the budget, so that an
        // operator can check it against the machine (docs/SECURITY.md, "Memory").
        let size = |bytes: usize| bytesize::ByteSize(bytes as u64).display().iec().to_string();
        let budget = self.memory.total();
        info!(
            connection_memory = size(budget),
            max_connections = limits.max_connections,
            quic_connection_share = size(limits.quic_connection_share()),
            quic_connections_at_most = budget / limits.quic_connection_share(),
            tcp_connection_share = size(limits.tcp_connection_share()),
            "connections can make the server hold at most the connection memory budget"
        );
        if web_listening {
            let share = web::web_connection_share(&limits);
            info!(
                web_connection_share = size(share),
                web_connections_at_most = budget / share.max(1),
                "each web connection (HTTP/2 or HTTP/1.1) is charged its share of the budget"
            );
        }
        let grace = self.config.shutdown_grace;
        // One admission (connection limit and memory) for all transports together.
        let admission = Admission::new(limits.max_connections, self.memory.clone());
        let draining = Draining::default();
        let admin_stop = CancellationToken::new();
        let admin = match (self.admin, self.exporter.clone()) {
            (Some(socket), Some(exporter)) => {
                let (listener, announce) = match socket {
                    AdminSocket::Bound(listener) => (Ok(listener), true),
                    AdminSocket::Starting(starting) => (starting.hand_over().await, false),
                };
                match listener {
                    Ok(listener) => Some(tokio::spawn(admin::serve(
                        listener,
                        announce,
                        exporter,
                        self.service.clone(),
                        self.memory.clone(),
                        draining.clone(),
                        admin_stop.clone(),
                    ))),
                    Err(e) => {
                        warn!(error = %e, "the admin listener could not be taken over; serving without it");
                        None
                    }
                }
            }
            _ => None,
        };
        // Cancelled once the TCP and web listeners are done: until then a shutting-down QUIC
        // listener keeps refusing new connections.
        let others_drained = CancellationToken::new();
        let quic = quic::serve(
            self.quic,
            Metered::new(self.service.clone(), Transport::Quic),
            limits.clone(),
            admission.clone(),
            token.clone(),
            grace,
            client_auth,
            origins.clone(),
            others_drained.clone(),
        );
        let service = self.service.clone();
        let (handler, web_limits, web_admission) = (self.service.clone(), limits.clone(), admission.clone());
        let browsers = web::browser::Browsers {
            origins,
            credentials: self.credentials.clone(),
            quic_addr,
            websocket_max_message: self.config.websocket_max_message,
            metrics: self.exporter.clone().map(|exporter| {
                let (service, memory) = (self.service.clone(), self.memory.clone());
                let record_usage: Arc<dyn Fn() + Send + Sync> =
                    Arc::new(move || metrics::record_usage(service.storage().usage(), &memory));
                (exporter, record_usage)
            }),
            started,
        };
        let options = web::WebOptions { max_header_size: self.config.web_max_header_size, grace, browsers };
        let web = async {
            if let Some((listener, security)) = self.web {
                web::serve(listener, security, handler, web_limits, web_admission, token.clone(), options)
                    .await;
            }
        };
        let tcp = async {
            if let Some((listener, security)) = self.tcp {
                let handler = Metered::new(self.service, security.transport());
                tcp::serve(listener, security, handler, limits, admission, token.clone(), grace).await;
            }
        };
        let certs = CertDir::new(&self.config.certs_dir);
        let renewing = renew_webtransport_cert(self.credentials.clone());
        let reloading =
            reload_on_hangup(self.hangups, self.credentials, certs.server_cert(), certs.server_key());
        let serving = async {
            tokio::select! {
                _ = async {
                    let others = async {
                        tokio::join!(tcp, web);
                        others_drained.cancel();
                    };
                    tokio::join!(quic, others)
                } => {}
                _ = reloading => {}
                _ = renewing => {}
            }
        };
        tokio::pin!(serving);
        let stopped = tokio::select! {
            _ = &mut serving => false,
            _ = shutdown => {
                // Not ready from now on, so that a load balancer sends new clients elsewhere.
                draining.start();
                // Subscriptions first: each ends with its last frame, so that the connections that
                // carry them can finish within the grace period like any other.
                service.close_subscriptions();
                token.cancel();
                true
            }
        };
        if stopped {
            serving.await;
        }
        admin_stop.cancel();
        if let Some(mut admin) = admin {
            // A scraper that stops reading must not hold the shutdown up.
            if tokio::time::timeout(grace, &mut admin).await.is_err() {
                admin.abort();
            }
        }
        if stopped {
            info!("shut down");
        }
    }
}

/// Reloads the certificate and key (and the client CA) on every SIGHUP, for new handshakes; a bad new
/// file is refused with a warning, and the files in use stay in use. Never completes.
async fn reload_on_hangup(hangups: Option<Signal>, credentials: Credentials, cert: PathBuf, key: PathBuf) {
    let Some(mut hangups) = hangups else {
        return std::future::pending().await;
    };
    while hangups.recv().await.is_some() {
        let (credentials, cert, key) = (credentials.clone(), cert.clone(), key.clone());
        // Reading and parsing files: off the runtime's thread.
        let reloaded = tokio::task::spawn_blocking(move || credentials.reload(&cert, &key)).await;
        // The metrics before the log, which says they are up to date.
        match reloaded {
            Ok(Ok(not_after)) => {
                metrics::server_certificate(not_after);
                metrics::certificate_reload(metrics::ReloadResult::Reloaded);
                info!("SIGHUP: reloaded the certificates; new handshakes use them");
            }
            Ok(Err(e)) => {
                metrics::certificate_reload(metrics::ReloadResult::Refused);
                warn!(error = %e, "SIGHUP: the new certificates were refused; the ones in use stay in use")
            }
            Err(e) => {
                metrics::certificate_reload(metrics::ReloadResult::Refused);
                warn!(error = %e, "SIGHUP: reloading the certificates failed; the ones in use stay in use")
            }
        }
    }
    std::future::pending().await
}

/// How often the server looks at its WebTransport certificate's expiry.
const WEBTRANSPORT_CERT_CHECK: Duration = Duration::from_secs(3600);

/// Renews the self-issued WebTransport certificate when less than this is left of its validity (13
/// days): browsers that fetch its hash get one valid for a week at least.
const WEBTRANSPORT_CERT_RENEW_BEFORE: time::Duration = time::Duration::days(7);

/// Issues the WebTransport certificate again before it expires, hourly looked at. Never completes.
async fn renew_webtransport_cert(credentials: Credentials) {
    let mut checks = tokio::time::interval(WEBTRANSPORT_CERT_CHECK);
    loop {
        checks.tick().await;
        let credentials = credentials.clone();
        let renewed = tokio::task::spawn_blocking(move || {
            credentials.renew_webtransport(WEBTRANSPORT_CERT_RENEW_BEFORE)
        })
        .await;
        match renewed {
            Ok(Ok(true)) => info!("renewed the WebTransport certificate; browsers fetch its new hash"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "could not renew the WebTransport certificate; retrying in an hour")
            }
            Err(e) => warn!(error = %e, "could not renew the WebTransport certificate; retrying in an hour"),
        }
    }
}

/// Says what the server does for certificates; `existed` whether the directory did before. A new CA
/// made in a directory that did not exist is warned about: most likely a mistyped `--certs` or an
/// unmounted volume, and every client that trusts the real CA would refuse the server.
fn log_provisioning(certs: &CertDir, provisioned: Provisioned, existed: bool) {
    let dir = certs.path().display();
    match provisioned {
        Provisioned::Existing => {
            info!(%dir, "using the server certificate in the certificate directory")
        }
        Provisioned::IssuedByExistingCa { names } => {
            info!(%dir, ?names, "issued a server certificate from the CA in the certificate directory")
        }
        Provisioned::NewCaAndServer { names } if !existed => warn!(
            %dir,
            ?names,
            ca = %certs.ca_cert().display(),
            "the certificate directory did not exist: created it with a new development CA and server certificate, which only clients trusting this CA file accept (is --certs mistyped, or its volume not mounted?)"
        ),
        Provisioned::NewCaAndServer { names } => info!(
            %dir,
            ?names,
            ca = %certs.ca_cert().display(),
            "generated a development CA and a server certificate; clients must trust the CA file"
        ),
    }
}

/// How the tokio runtime is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeLayout {
    /// Everything (quinn's endpoint driver, connections, requests) on one thread. The default: on a
    /// 2-core machine it measured fastest, because quinn drives each endpoint from a single task and
    /// cross-thread wake-ups cost more than they parallelise (docs/DESIGN.md, "Runtime layout").
    CurrentThread,
    /// A work-stealing runtime with this many worker threads.
    MultiThread { workers: usize },
}

/// A runtime of `layout`; `idle` hears whenever one of its threads runs out of work (a disk store
/// commits then: [`crate::storage::RuntimeIdle`]).
pub fn runtime(
    layout: RuntimeLayout,
    idle: Option<crate::storage::RuntimeIdle>,
) -> io::Result<tokio::runtime::Runtime> {
    let mut builder = match layout {
        RuntimeLayout::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        RuntimeLayout::MultiThread { workers } => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers.max(1));
            builder
        }
    };
    if let Some(idle) = idle {
        let unparked = idle.clone();
        builder.on_thread_park(move || idle.parked());
        builder.on_thread_unpark(move || unparked.unparked());
    }
    builder.enable_all().build()
}

/// The signals that stop a server, listened for from the moment this is made (a signal that comes
/// before anyone waits is kept, not lost).
struct StopSignals {
    interrupt: Option<tokio::signal::unix::Signal>,
    terminate: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| tracing::error!(error = %e, "cannot listen for {name}")).ok()
        };
        StopSignals {
            interrupt: listen(SignalKind::interrupt(), "Ctrl-C"),
            terminate: listen(SignalKind::terminate(), "SIGTERM"),
        }
    }

    /// The next signal's name (never, if neither could be listened for).
    async fn next(&mut self) -> &'static str {
        async fn received(signal: &mut Option<tokio::signal::unix::Signal>) {
            let delivered = match signal {
                Some(signal) => signal.recv().await.is_some(),
                None => false,
            };
            if !delivered {
                std::future::pending::<()>().await;
            }
        }
        tokio::select! {
            () = received(&mut self.interrupt) => "Ctrl-C",
            () = received(&mut self.terminate) => "SIGTERM",
        }
    }
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() {
    let name = StopSignals::new().next().await;
    info!("received {name}");
}

/// [`shutdown_signal`], after which every further signal is answered in the log until the process
/// ends: it changes nothing (the grace period, `grace`, is what it is), but whoever sends it knows it
/// was heard. The same listeners go on, so that a second signal sent at once is not lost.
pub async fn shutdown_signal_answering_repeats(grace: Duration) {
    let mut signals = StopSignals::new();
    let name = signals.next().await;
    info!("received {name}");
    let ends = tokio::time::Instant::now() + grace;
    tokio::spawn(async move {
        loop {
            let name = signals.next().await;
            let left = ends.saturating_duration_since(tokio::time::Instant::now());
            info!(grace_left = ?left, "received {name}: already shutting down; connections still open are cut off when the grace period ends");
        }
    });
}
