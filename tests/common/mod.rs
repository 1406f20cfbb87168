//! Test harness: a real server on an ephemeral loopback port with its own temporary certificates, and
//! raw QUIC access for tests that must send what a well-behaved client never would.
#![allow(dead_code)] // each test binary uses its own subset

pub mod process;
pub mod relay;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use qkv::client::{Client, ClientConfig};
use qkv::memory::MemoryBudget;
use qkv::pb::{CommandRequest, CommandResponse};
use qkv::server::{Server, ServerConfig, TcpMode};
use qkv::service::Service;
use qkv::storage::MemoryStore;
use qkv::tls;
use qkv::transport::frame::{FrameCodec, encode_frame};
use qkv::transport::quic;
use qkv::transport::{Limits, Transport};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;

/// Instantiates async test functions `fn(Transport)` once per listed transport:
/// `transport_tests!(group: quic, tls, tcp => test_a, test_b);` makes `group::quic::test_a` and so on.
#[allow(unused_macros)]
macro_rules! transport_tests {
    ($group:ident: $($transport:ident),+ => $($test:ident),+ $(,)?) => {
        transport_tests!(@group $group [$($transport)+] [$($test)+]);
    };
    (@group $group:ident [$($transport:ident)+] $tests:tt) => {
        mod $group {
            $( transport_tests!(@one $transport $tests); )+
        }
    };
    (@one $transport:ident [$($test:ident)+]) => {
        mod $transport {
            $(
                #[tokio::test]
                async fn $test() {
                    // `grpc_pipeline` names `grpc-pipeline`.
                    let name = stringify!($transport).replace('_', "-");
                    let transport = name.parse().expect("a transport name");
                    super::super::$test(transport).await
                }
            )+
        }
    };
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub certs: TempDir,
    /// The transport `client()` uses; the server also serves QUIC and TLS or plaintext TCP to match.
    pub transport: Transport,
    /// The server's service, and through it its store: still readable after the server has stopped.
    pub service: Service<MemoryStore>,
    /// The admin listener's address, if the configuration asked for one.
    pub admin: Option<SocketAddr>,
    /// The web listener's address (REST and gRPC): always there for a web transport's server.
    pub web: Option<SocketAddr>,
    /// The server-wide connection memory budget, which a test may spend to stand in for other clients.
    pub memory: MemoryBudget,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// A server for QUIC clients (it serves TLS over TCP too).
    pub async fn start() -> Self {
        Self::start_for_with(Transport::Quic, |_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::start_for_with(Transport::Quic, configure).await
    }

    /// A server whose `client()` uses `transport` (plaintext TCP instead of TLS when it is `tcp`).
    pub async fn start_for(transport: Transport) -> Self {
        Self::start_for_with(transport, |_| {}).await
    }

    /// Starts a server whose configuration `configure` may adjust (limits, frame target...).
    pub async fn start_for_with(transport: Transport, configure: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::start_with_store(transport, MemoryStore::new(), configure).await
    }

    /// Starts a server on `store` (a memory budget, say) whose configuration `configure` may adjust.
    pub async fn start_with_store(
        transport: Transport,
        store: MemoryStore,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let certs = tempfile::tempdir().expect("temporary directory");
        let mut config = ServerConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            tcp: if transport == Transport::Tcp { TcpMode::Plaintext } else { TcpMode::Tls },
            certs_dir: certs.path().to_owned(),
            web: transport.is_web().then(|| "127.0.0.1:0".parse().expect("address")),
            ..ServerConfig::default()
        };
        configure(&mut config);
        Self::spawn(config, store, certs, transport)
    }

    fn spawn(config: ServerConfig, store: MemoryStore, certs: TempDir, transport: Transport) -> Self {
        let server = Server::bind(config, store).expect("server binds");
        let addr = server.local_addr().expect("bound address");
        let admin = server.admin_addr();
        let web = server.web_addr();
        let service = server.service().clone();
        let memory = server.connection_memory().clone();
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = signal.await;
        }));
        TestServer {
            addr,
            certs,
            transport,
            service,
            admin,
            web,
            memory,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// Stops the server and starts a new one on the same address with the same certificates: a new
    /// process, as far as clients can tell (an empty store, no sessions remembered).
    pub async fn restart(mut self) -> Self {
        self.begin_stop();
        self.stopped().await;
        let config = ServerConfig {
            listen: self.addr,
            tcp: if self.transport == Transport::Tcp { TcpMode::Plaintext } else { TcpMode::Tls },
            certs_dir: self.certs.path().to_owned(),
            web: self.web,
            ..ServerConfig::default()
        };
        let certs = std::mem::replace(&mut self.certs, tempfile::tempdir().expect("temporary directory"));
        Self::spawn(config, MemoryStore::new(), certs, self.transport)
    }

    pub fn ca(&self) -> PathBuf {
        self.certs.path().join("ca.pem")
    }

    /// Where `client()` connects: the web listener for the web transports, the main port otherwise.
    pub fn client_addr(&self) -> SocketAddr {
        match (self.transport.is_web(), self.web) {
            (true, Some(web)) => web,
            _ => self.addr,
        }
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new(self.client_addr().to_string(), self.ca());
        config.transport = self.transport;
        config
    }

    pub async fn client(&self) -> Client {
        Client::connect_with(self.client_config()).await.expect("client connects")
    }

    /// A bare quinn connection, trusting the server's CA, for sending arbitrary bytes.
    pub async fn raw_connection(&self) -> quinn::Connection {
        raw_quic(self.addr, &self.ca()).await
    }

    /// A bare TCP connection to the server, for sending arbitrary bytes (plaintext servers).
    pub async fn raw_tcp(&self) -> tokio::net::TcpStream {
        tokio::net::TcpStream::connect(self.addr).await.expect("TCP connect")
    }

    /// Signals shutdown and waits until the server has stopped.
    pub async fn stop(mut self) {
        self.begin_stop();
        self.stopped().await;
    }

    /// Signals shutdown without waiting.
    pub fn begin_stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Waits until the server task has ended.
    pub async fn stopped(&mut self) {
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Writes `bytes` on a new stream, finishes it, and collects every response frame until the server
/// finishes its side.
pub async fn raw_exchange(connection: &quinn::Connection, bytes: &[u8]) -> Vec<CommandResponse> {
    let (mut send, recv) = connection.open_bi().await.expect("open stream");
    // The server may stop reading early (a rejected request); its reply says why.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    read_responses(recv).await
}

/// Every response frame on `recv` until its end.
pub async fn read_responses(recv: quinn::RecvStream) -> Vec<CommandResponse> {
    FramedRead::new(recv, FrameCodec::<CommandResponse>::new(64 << 20))
        .map(|frame| frame.expect("well-formed response frame"))
        .collect()
        .await
}

/// A request as it travels: length prefix and protobuf.
pub fn frame(request: &CommandRequest) -> Bytes {
    frame_of(request)
}

/// Any message as a frame.
pub fn frame_of(message: &impl prost::Message) -> Bytes {
    encode_frame(message, u32::MAX as usize).expect("encodable")
}

/// A bare quinn connection to `addr`, trusting `ca`, for sending arbitrary bytes.
pub async fn raw_quic(addr: SocketAddr, ca: &std::path::Path) -> quinn::Connection {
    let endpoint = quic_client_endpoint(ca, &tls::Tickets::none());
    endpoint.connect(addr, "localhost").expect("connect").await.expect("handshake")
}

/// Any byte stream a test can write arbitrary bytes to and read the server's from.
pub trait ByteStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> ByteStream for T {}

/// A bare TCP connection to `addr`, inside TLS (trusting `ca`) unless `transport` is plaintext TCP.
pub async fn raw_byte_stream(
    addr: SocketAddr,
    ca: &std::path::Path,
    transport: Transport,
) -> Box<dyn ByteStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("TCP connect");
    if transport == Transport::Tcp {
        return Box::new(tcp);
    }
    let roots = tls::read_roots(ca).expect("CA");
    let config = tls::client_config(roots, &tls::Tickets::none(), None).expect("TLS config");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    Box::new(connector.connect(name, tcp).await.expect("TLS handshake"))
}

/// A TLS connection to `addr` trusting `ca`, asking for ALPN `alpn` (a web listener's).
pub async fn raw_tls(addr: SocketAddr, ca: &std::path::Path, alpn: &[u8]) -> Box<dyn ByteStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("TCP connect");
    let roots = tls::read_roots(ca).expect("CA");
    let mut config = tls::client_config(roots, &tls::Tickets::none(), None).expect("TLS config");
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    Box::new(connector.connect(name, tcp).await.expect("TLS handshake"))
}

/// A bare quinn client endpoint trusting `ca`, resuming sessions with `tickets`.
pub fn quic_client_endpoint(ca: &std::path::Path, tickets: &tls::Tickets) -> quinn::Endpoint {
    quic_client_endpoint_with(ca, tickets, &Default::default())
}

/// [`quic_client_endpoint`] with QUIC settings of the test's choosing.
pub fn quic_client_endpoint_with(
    ca: &std::path::Path,
    tickets: &tls::Tickets,
    options: &quic::QuicOptions,
) -> quinn::Endpoint {
    let roots = tls::read_roots(ca).expect("CA");
    let tls = std::sync::Arc::new(tls::client_config(roots, tickets, None).expect("TLS config"));
    let limits = Limits::default();
    let config = quic::client_config(tls, &limits, options, Duration::from_secs(10)).expect("config");
    quic::client_endpoint("127.0.0.1:0".parse().expect("address"), config, &limits).expect("client endpoint")
}

/// A bare quinn server with qkv's QUIC settings (`options`, default limits) and a certificate of its
/// own, standing in for qkv where a test must see exactly what a client does. Clients trust `ca`.
pub struct BareQuicServer {
    pub endpoint: quinn::Endpoint,
    pub addr: SocketAddr,
    pub ca: PathBuf,
    /// Holds the certificates until the server is dropped.
    _certs: TempDir,
}

impl BareQuicServer {
    pub fn start(options: &quic::QuicOptions) -> Self {
        let certs = tempfile::tempdir().expect("temporary directory");
        let dir = qkv::certs::CertDir::new(certs.path());
        dir.ensure_server_certificate().expect("certificate");
        let identity =
            tls::Identity::from_pem_files(&dir.server_cert(), &dir.server_key()).expect("identity");
        let tls = tls::server_configs(identity, 16, None, tls::WebTransportCert::Server).expect("TLS config");
        let any_port = "127.0.0.1:0".parse().expect("address");
        let endpoint =
            quic::server_endpoint(any_port, tls.quic, tls.quic_endpoint, &Limits::default(), options)
                .expect("server endpoint");
        let addr = endpoint.local_addr().expect("local address");
        BareQuicServer { endpoint, addr, ca: dir.ca_cert(), _certs: certs }
    }
}

/// GET `path` from the admin listener: its status and body.
pub async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(admin).await.expect("the admin listener accepts");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("request sent");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("response read");
        response
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange).await.expect("an answer in time");
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

/// The value of the sample `name{labels}` exactly as the exposition writes it (labels in the order
/// the exporter writes them), 0 if absent.
pub fn sample(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}
