//! The transport floor: echo servers and clients that use qkv's sockets, quinn and rustls settings and
//! framing, but do no KV work (no protobuf, no service, no storage, no typed client). Comparing qkv with
//! the floor at the same message size and concurrency shows what the KV layer costs, on both sides.
//!
//! - QUIC: one stream per message; the server reads it to the end and writes it back.
//! - TCP (TLS or plaintext): length-prefixed frames, pipelined; the server writes each frame back as it
//!   arrives, flushing when no more are ready.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use quinn::{Connection, Endpoint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsConnector;
use tokio_util::codec::{Framed, FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::BenchError;
use crate::certs::CertDir;
use crate::client::ClientStats;
use crate::tls::{self, Identity, Tickets};
use crate::transport::quic::{self, QuicOptions};
use crate::transport::tcp::TcpSecurity;
use crate::transport::{self, Limits, TcpMode, Transport};

/// Serves echo on QUIC (with `options`) and on TCP (`tcp` decides TLS or plaintext) at `listen` until
/// `shutdown`. Returns the address bound, once serving has started, through `bound`.
pub async fn serve_floor(
    listen: SocketAddr,
    certs_dir: &Path,
    tcp: TcpMode,
    limits: Limits,
    options: &QuicOptions,
    shutdown: CancellationToken,
    bound: oneshot::Sender<SocketAddr>,
) -> Result<(), BenchError> {
    let setup = |e: &dyn std::fmt::Display| BenchError::Floor(e.to_string());
    let certs = CertDir::new(certs_dir);
    certs.ensure_server_certificate().map_err(|e| setup(&e))?;
    let identity =
        Identity::from_pem_files(&certs.server_cert(), &certs.server_key()).map_err(|e| setup(&e))?;
    let tls = tls::server_configs(identity, tls::DEFAULT_SESSION_CACHE, None, tls::WebTransportCert::Server)
        .map_err(|e| setup(&e))?;
    let sockets = transport::bind(listen, tls, tcp, &limits, options)
        .map_err(|e| setup(&format!("cannot listen on {listen} ({}): {}", e.protocol, e.cause)))?;
    let _ = bound.send(sockets.quic.local_addr().map_err(|e| setup(&e))?);
    let max = limits.max_frame_len;
    let quic = echo_quic(sockets.quic, max, shutdown.clone());
    let tcp = async {
        if let Some((listener, security)) = sockets.tcp {
            loop {
                let (stream, _) = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => { debug!(error = %e, "accept failed"); continue; }
                    },
                };
                let _ = stream.set_nodelay(true);
                let security = security.clone();
                tokio::spawn(async move {
                    match security {
                        TcpSecurity::Plaintext => echo_frames(stream, max).await,
                        TcpSecurity::Tls(door) => {
                            if let Ok(tls) = door.acceptor.accept(stream).await {
                                echo_frames(tls, max).await;
                            }
                        }
                    }
                });
            }
        }
    };
    tokio::join!(quic, tcp);
    Ok(())
}

async fn echo_quic(endpoint: Endpoint, max: usize, shutdown: CancellationToken) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming { Some(incoming) => incoming, None => break },
        };
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                tokio::spawn(async move {
                    if let Ok(message) = recv.read_to_end(max).await
                        && send.write_chunk(Bytes::from(message)).await.is_ok()
                    {
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    }
                });
            }
        });
    }
    endpoint.close(quinn::VarInt::from_u32(0), b"");
}

/// Writes every frame back, flushing when no more have arrived.
async fn echo_frames<IO: AsyncRead + AsyncWrite + Unpin>(io: IO, max: usize) {
    let mut frames = Framed::new(io, LengthDelimitedCodec::builder().max_frame_length(max).new_codec());
    while let Some(Ok(frame)) = frames.next().await {
        if frames.feed(frame.freeze()).await.is_err() {
            return;
        }
        // Echo everything already received before paying for a write.
        while let Some(Some(Ok(frame))) = frames.next().now_or_never() {
            if frames.feed(frame.freeze()).await.is_err() {
                return;
            }
        }
        if SinkExt::<Bytes>::flush(&mut frames).await.is_err() {
            return;
        }
    }
}

/// What a floor client's connections share, as a qkv [`ClientEndpoint`](crate::client::ClientEndpoint)
/// does: the TLS configuration and, over QUIC, one endpoint (one UDP socket) for all of them.
#[derive(Clone)]
pub struct EchoEndpoint {
    transport: Transport,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    max_frame_len: usize,
    /// QUIC only.
    quic: Option<Endpoint>,
}

impl EchoEndpoint {
    /// Connections over `transport` to the floor at `addr`, whose certificate `ca_file` signed; QUIC ones
    /// with `options`.
    pub fn new(
        transport: Transport,
        addr: SocketAddr,
        ca_file: &Path,
        limits: &Limits,
        options: &QuicOptions,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let tls = Arc::new(tls::client_config(tls::read_roots(ca_file)?, &Tickets::none(), None)?);
        let quic = match transport {
            Transport::Quic => {
                let bind: SocketAddr = (std::net::Ipv4Addr::UNSPECIFIED, 0).into();
                let config = quic::client_config(tls.clone(), limits, options, limits.idle_timeout / 3)?;
                Some(quic::client_endpoint(bind, config, limits)?)
            }
            _ => None,
        };
        Ok(EchoEndpoint { transport, addr, tls, max_frame_len: limits.max_frame_len, quic })
    }

    /// A new connection to the floor server.
    pub async fn connect(&self) -> Result<EchoClient, Box<dyn std::error::Error + Send + Sync>> {
        let (addr, max) = (self.addr, self.max_frame_len);
        match (&self.quic, self.transport) {
            (Some(endpoint), _) => Ok(EchoClient::Quic(endpoint.connect(addr, "localhost")?.await?)),
            (None, Transport::Tls) => {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let tls =
                    TlsConnector::from(self.tls.clone()).connect("localhost".try_into()?, stream).await?;
                Ok(EchoClient::Tcp(spawn_pipeline(tls, max)))
            }
            (None, _) => {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                Ok(EchoClient::Tcp(spawn_pipeline(stream, max)))
            }
        }
    }

    /// Waits until every QUIC connection of the endpoint has closed and the server been told.
    pub async fn wait_idle(&self) {
        if let Some(endpoint) = &self.quic {
            endpoint.wait_idle().await;
        }
    }
}

/// A client connection to a floor server.
#[derive(Clone)]
pub enum EchoClient {
    /// On an [`EchoEndpoint`]'s socket, which must outlive it.
    Quic(Connection),
    /// Frames go through the connection's task, which matches echoes to callers in order.
    Tcp(mpsc::Sender<(Bytes, oneshot::Sender<usize>)>),
}

impl EchoClient {
    /// Closes a QUIC connection (its endpoint's `wait_idle` waits until the server has been told); a TCP
    /// one closes when its last clone is dropped. Returns what the connection counted, as a qkv
    /// client's do: itself, and over QUIC the packets it sent and took for lost.
    pub fn close(&self) -> ClientStats {
        let mut stats = ClientStats { connections: 1, ..ClientStats::default() };
        if let EchoClient::Quic(connection) = self {
            let path = connection.stats().path;
            (stats.packets_sent, stats.packets_lost) = (path.sent_packets, path.lost_packets);
            connection.close(quinn::VarInt::from_u32(0), b"done");
        }
        stats
    }

    /// Sends `message` and waits for its echo; returns the echo's length.
    pub async fn echo(
        &self,
        message: Bytes,
        max: usize,
    ) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        match self {
            EchoClient::Quic(connection) => {
                let (mut send, mut recv) = connection.open_bi().await?;
                send.write_chunk(message).await?;
                send.finish()?;
                Ok(recv.read_to_end(max).await?.len())
            }
            EchoClient::Tcp(calls) => {
                let (done, echoed) = oneshot::channel();
                calls.send((message, done)).await.map_err(|_| "the connection is closed")?;
                Ok(echoed.await?)
            }
        }
    }
}

fn spawn_pipeline<IO>(io: IO, max: usize) -> mpsc::Sender<(Bytes, oneshot::Sender<usize>)>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (calls, mut queue) = mpsc::channel::<(Bytes, oneshot::Sender<usize>)>(1024);
    tokio::spawn(async move {
        let codec = || LengthDelimitedCodec::builder().max_frame_length(max).new_codec();
        let (read, write) = tokio::io::split(io);
        let (mut echoes, mut frames) = (FramedRead::new(read, codec()), FramedWrite::new(write, codec()));
        let mut waiting: VecDeque<oneshot::Sender<usize>> = VecDeque::new();
        let mut unflushed = false;
        loop {
            tokio::select! {
                biased;
                call = queue.recv() => {
                    let Some((message, done)) = call else { return };
                    if frames.feed(message).await.is_err() { return }
                    waiting.push_back(done);
                    unflushed = true;
                }
                echo = echoes.next() => {
                    let Some(Ok(echo)) = echo else { return };
                    if let Some(done) = waiting.pop_front() {
                        let _ = done.send(echo.len());
                    }
                }
                flushed = SinkExt::<Bytes>::flush(&mut frames), if unflushed => {
                    if flushed.is_err() { return }
                    unflushed = false;
                }
            }
        }
    });
    calls
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A UDP relay between one client and the server at `server`: where the client should send, and the
    /// size of the largest datagram the server has sent so far.
    async fn relay(server: std::net::SocketAddr) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let to_client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to_server = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        to_server.connect(server).await.unwrap();
        let (addr, largest) = (to_client.local_addr().unwrap(), Arc::new(AtomicUsize::new(0)));
        let recorded = largest.clone();
        tokio::spawn(async move {
            let (mut from_client, mut from_server) = ([0u8; 2048], [0u8; 2048]);
            let mut client = None;
            loop {
                tokio::select! {
                    Ok((n, from)) = to_client.recv_from(&mut from_client) => {
                        client = Some(from);
                        let _ = to_server.send(&from_client[..n]).await;
                    }
                    Ok(n) = to_server.recv(&mut from_server) => {
                        recorded.fetch_max(n, Ordering::SeqCst);
                        if let Some(client) = client {
                            let _ = to_client.send_to(&from_server[..n], client).await;
                        }
                    }
                }
            }
        });
        (addr, largest)
    }

    /// The floor runs with the QUIC options it is given, on both sides: `qkv floor --no-mtu-discovery`
    /// and `qkv bench --workload echo --no-mtu-discovery` measure the transport as a server and clients
    /// with that flag would run it. The client counts its own path MTU probes; the server's is seen on
    /// the way, through a relay, as a datagram larger than QUIC's 1200 bytes (a retransmission or a
    /// probe for a lost packet never is, without discovery). The server sends its probe in the turn
    /// that completes the handshake, so before the echo.
    #[tokio::test]
    async fn the_floor_and_its_clients_use_the_quic_options_given() {
        for discovery in [true, false] {
            let options = QuicOptions { mtu_discovery: discovery, ..QuicOptions::default() };
            let certs = tempfile::tempdir().unwrap();
            let (shutdown, (bound, addr)) = (CancellationToken::new(), oneshot::channel());
            let listen = "127.0.0.1:0".parse().unwrap();
            let serving = tokio::spawn({
                let dir = certs.path().to_owned();
                let options = options.clone();
                let shutdown = shutdown.clone();
                async move {
                    serve_floor(listen, &dir, TcpMode::Off, Limits::default(), &options, shutdown, bound)
                        .await
                }
            });
            let (addr, largest) = relay(addr.await.unwrap()).await;
            let clients = EchoEndpoint::new(
                Transport::Quic,
                addr,
                &CertDir::new(certs.path()).ca_cert(),
                &Limits::default(),
                &options,
            )
            .unwrap();
            let client = clients.connect().await.unwrap();
            assert_eq!(client.echo(Bytes::from_static(b"ping"), 64).await.unwrap(), 4);
            let EchoClient::Quic(connection) = &client else { panic!("not over QUIC") };
            let path = connection.stats().path;
            let server_probed = largest.load(Ordering::SeqCst) > 1200;
            assert_eq!(
                (path.sent_plpmtud_probes, server_probed),
                (u64::from(discovery), discovery),
                "{path:?}"
            );
            if !discovery {
                assert_eq!(path.current_mtu, 1200, "{path:?}");
            }
            client.close();
            shutdown.cancel();
            serving.await.unwrap().unwrap();
        }
    }
}
