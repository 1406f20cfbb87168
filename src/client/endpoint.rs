//! Many clients on one QUIC endpoint. A UDP socket carries any number of QUIC connections (quinn tells
//! their packets apart by connection ID), so a process that keeps many connections to a server (a load
//! generator, a gateway) need not hold a socket, a file descriptor and an endpoint task for each.

use std::net::SocketAddr;
use std::sync::Arc;

use super::{Client, ClientConfig, ClientError, ClientResult, any_port, resolve};
use crate::transport::Transport;
use crate::transport::quic as quic_transport;

/// What clients made from one configuration share: the server's resolved address, the TLS
/// configuration (and so the session tickets) and, over QUIC, one endpoint: one UDP socket and the task
/// that drives it. [`Client::connect_with`] makes one for each client; [`ClientEndpoint::connect`] makes
/// any number of clients on one.
///
/// Over TLS and plaintext TCP there is no endpoint to share: each client still has a TCP connection of
/// its own, and only the resolution and the TLS set-up are done once.
///
/// Sharing is visible in two places, both stated where they happen: [`Client::rebind`] on any of the
/// clients (or [`ClientEndpoint::rebind`]) moves every connection of the endpoint to the new socket, and
/// [`Client::close`] does not wait for a shared endpoint to fall idle; [`ClientEndpoint::wait_idle`]
/// does that once for all its clients.
///
/// ```no_run
/// # async fn demo() -> Result<(), qkv::client::ClientError> {
/// use qkv::client::{ClientConfig, ClientEndpoint};
/// let endpoint = ClientEndpoint::new(ClientConfig::new("127.0.0.1:9527", "certs/ca.pem")).await?;
/// let (a, b) = (endpoint.connect().await?, endpoint.connect().await?); // two connections, one socket
/// a.hset("users", "ada", "Ada Lovelace").await?;
/// assert!(b.hget("users", "ada").await?.is_some());
/// a.close().await;
/// b.close().await;
/// endpoint.wait_idle().await; // the server has been told of both closes
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientEndpoint {
    pub(super) config: ClientConfig,
    pub(super) server_name: String,
    pub(super) remote: SocketAddr,
    /// `None` for plaintext TCP.
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    /// QUIC only: the endpoint (one UDP socket) that every connection of its clients uses.
    pub(super) endpoint: Option<quinn::Endpoint>,
    /// QUIC only: the settings of its clients' connections (TLS, and so tickets, included).
    pub(super) quic: Option<quinn::ClientConfig>,
}

impl std::fmt::Debug for ClientEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientEndpoint")
            .field("addr", &self.config.addr)
            .field("transport", &self.config.transport)
            .field("remote", &self.remote)
            .field("local", &self.local_address())
            .finish_non_exhaustive()
    }
}

impl ClientEndpoint {
    /// Checks `config`, resolves the server's address, builds the TLS configuration and, over QUIC,
    /// binds a UDP socket. Connects to nothing yet.
    pub async fn new(config: ClientConfig) -> ClientResult<Self> {
        config.validate().map_err(ClientError::InvalidConfig)?;
        let (host, remote) = resolve(&config.addr).await?;
        let server_name = config.server_name.clone().unwrap_or(host);
        let tls = match config.transport {
            Transport::Quic | Transport::Tls => {
                Some(config.tickets.client_config(&config.ca_file, config.client_cert.as_ref())?)
            }
            Transport::Tcp => None,
            // The same verification, offering HTTP/2 instead of qkv/1.
            Transport::Http | Transport::Grpc | Transport::GrpcPipeline => {
                let qkv = config.tickets.client_config(&config.ca_file, config.client_cert.as_ref())?;
                let mut http = rustls::ClientConfig::clone(&qkv);
                http.alpn_protocols = vec![b"h2".to_vec()];
                Some(Arc::new(http))
            }
        };
        let quic = Self::quic_config(&config, tls.as_ref())?;
        let endpoint = match &quic {
            Some(quic) => Some(
                quic_transport::client_endpoint(any_port(remote), quic.clone(), &config.limits)
                    .map_err(ClientError::Socket)?,
            ),
            None => None,
        };
        Ok(ClientEndpoint { config, server_name, remote, tls, endpoint, quic })
    }

    /// Clients configured by `config` (their own tickets, say, as separate devices have) on this
    /// endpoint's socket: an endpoint that shares the socket but not the settings. Over TCP there is no
    /// socket to share, and this is [`ClientEndpoint::new`].
    pub async fn with_config(&self, config: ClientConfig) -> ClientResult<Self> {
        let Some(endpoint) = &self.endpoint else { return Self::new(config).await };
        if config.transport != Transport::Quic {
            return Err(ClientError::InvalidConfig("a QUIC endpoint carries QUIC connections only".into()));
        }
        config.validate().map_err(ClientError::InvalidConfig)?;
        let (host, remote) = resolve(&config.addr).await?;
        let server_name = config.server_name.clone().unwrap_or(host);
        let tls = Some(config.tickets.client_config(&config.ca_file, config.client_cert.as_ref())?);
        let quic = Self::quic_config(&config, tls.as_ref())?;
        Ok(ClientEndpoint { config, server_name, remote, tls, endpoint: Some(endpoint.clone()), quic })
    }

    /// The settings of QUIC connections made as `config` says, with TLS configuration `tls`.
    fn quic_config(
        config: &ClientConfig,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> ClientResult<Option<quinn::ClientConfig>> {
        let (Some(tls), Transport::Quic) = (tls, config.transport) else { return Ok(None) };
        let quic =
            quic_transport::client_config(tls.clone(), &config.limits, &config.quic, config.keep_alive)
                .map_err(|e| ClientError::Connect { addr: config.addr.clone(), cause: e.into(), hint: "" })?;
        Ok(Some(quic))
    }

    /// A new client with a connection of its own, on this endpoint's socket (over QUIC). Returns once
    /// the connection is established, or at once when it is resumed in 0-RTT.
    pub async fn connect(&self) -> ClientResult<Client> {
        Client::connect_on(self, true).await
    }

    /// A new client on this endpoint that connects when it is first used (and fails then, if the server
    /// cannot be reached). Over TCP a client that only subscribes never opens its shared connection:
    /// each subscription has a connection of its own.
    pub fn client(&self) -> Client {
        Client::on(self, true)
    }

    /// Moves every connection of this endpoint to a new local UDP socket (a new port, and the address
    /// the system now routes from): what [`Client::rebind`] does for a client of its own. Over TCP
    /// there is nothing to move: each client's [`Client::rebind`] drops its own connection instead.
    pub fn rebind(&self) -> ClientResult<()> {
        match &self.endpoint {
            Some(endpoint) => rebind(endpoint, self.remote, &self.config),
            None => Ok(()),
        }
    }

    /// The local address of the endpoint's UDP socket; `None` over TCP.
    pub fn local_address(&self) -> Option<SocketAddr> {
        self.endpoint.as_ref().and_then(|endpoint| endpoint.local_addr().ok())
    }

    /// Waits until every connection of the endpoint has been closed and the server told so (QUIC
    /// lingers a few round trips after a close, to repeat it if it was lost). Close the clients first:
    /// a client still open keeps this waiting. Returns at once over TCP.
    pub async fn wait_idle(&self) {
        if let Some(endpoint) = &self.endpoint {
            endpoint.wait_idle().await;
        }
    }
}

/// Moves `endpoint` to a new UDP socket bound as a client's first one is, for talking to `remote`.
pub(super) fn rebind(
    endpoint: &quinn::Endpoint,
    remote: SocketAddr,
    config: &ClientConfig,
) -> ClientResult<()> {
    let socket = quic_transport::bind_udp(any_port(remote), config.limits.udp_socket_buffer)
        .map_err(ClientError::Socket)?;
    endpoint.rebind(socket).map_err(ClientError::Socket)
}
