//! The client over QUIC: one connection, each request on a stream of its own.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use quinn::{Connection, Endpoint, WriteError};

use super::frames::ResponseFrames;
use super::{ClientConfig, ClientError, ClientResult};
use crate::transport::quic::{self, codes};

pub(super) struct QuicConnection {
    endpoint: Endpoint,
    connection: Connection,
}

impl QuicConnection {
    pub(super) async fn connect(
        config: &ClientConfig,
        tls: Arc<rustls::ClientConfig>,
        server_name: &str,
        remote: SocketAddr,
    ) -> ClientResult<Self> {
        let bind: SocketAddr = if remote.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = quic::client_endpoint(bind, tls, &config.limits).map_err(ClientError::Socket)?;
        let connecting = endpoint
            .connect(remote, server_name)
            .map_err(|e| ClientError::Connect { addr: config.addr.clone(), reason: e.to_string() })?;
        let connection = match tokio::time::timeout(config.connect_timeout, connecting).await {
            Err(_) => {
                return Err(ClientError::ConnectTimeout {
                    addr: config.addr.clone(),
                    timeout: config.connect_timeout,
                });
            }
            Ok(Err(e)) => return Err(handshake_error(config, e)),
            Ok(Ok(connection)) => connection,
        };
        Ok(QuicConnection { endpoint, connection })
    }

    /// Opens a stream, writes the request frame and finishes the stream.
    pub(super) async fn send(&self, frame: Bytes, max_frame_len: usize) -> ClientResult<ResponseFrames> {
        let (mut send, recv) = self.connection.open_bi().await.map_err(ClientError::from_connection)?;
        match send.write_chunk(frame).await {
            // The server stopped reading because it refused the request; its reply says why.
            Ok(()) | Err(WriteError::Stopped(_)) => {}
            Err(e) => return Err(ClientError::from_write(e)),
        }
        let _ = send.finish();
        Ok(ResponseFrames::quic(recv, max_frame_len))
    }

    pub(super) fn remote_address(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    pub(super) async fn close(&self) {
        self.connection.close(codes::NO_ERROR, b"done");
        self.endpoint.wait_idle().await;
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
    if is_alert {
        ClientError::Handshake {
            addr: config.addr.clone(),
            ca_file: config.ca_file.clone(),
            reason: e.to_string(),
        }
    } else {
        ClientError::Connect { addr: config.addr.clone(), reason: e.to_string() }
    }
}
