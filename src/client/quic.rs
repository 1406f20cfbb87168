//! The client over QUIC: each request on a stream of its own, on one connection of the client's
//! endpoint. With a session ticket the connection is resumed in 0-RTT: requests go out with the first
//! packet, before the handshake has completed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use quinn::{Connection, Endpoint, SendStream, WriteError};

use super::frames::ResponseFrames;
use super::{ClientConfig, ClientError, ClientResult, Stats};
use crate::transport::quic::codes;

#[derive(Clone)]
pub(super) struct QuicConnection {
    connection: Connection,
}

impl QuicConnection {
    /// Connects through `endpoint`. With `zero_rtt` and a ticket for the server, returns at once and
    /// the first requests travel as early data; otherwise returns when the handshake is complete.
    pub(super) async fn connect(
        endpoint: &Endpoint,
        config: &ClientConfig,
        server_name: &str,
        remote: SocketAddr,
        stats: &Arc<Stats>,
    ) -> ClientResult<Self> {
        let connecting = endpoint
            .connect(remote, server_name)
            .map_err(|e| ClientError::Connect { addr: config.addr.clone(), reason: e.to_string() })?;
        let connecting = match config.zero_rtt {
            true => match connecting.into_0rtt() {
                Ok((connection, accepted)) => {
                    // Whether the server took the early data is known when the handshake completes;
                    // requests it refused fail with `ZeroRttRejected` and are sent again. A handshake
                    // that does not complete within the connect timeout (no server there any more,
                    // say) ends the connection, as a full handshake's would.
                    let (stats, watched, timeout) =
                        (stats.clone(), connection.clone(), config.connect_timeout);
                    tokio::spawn(async move {
                        let counter = match tokio::time::timeout(timeout, accepted).await {
                            Ok(true) => &stats.zero_rtt_accepted,
                            Ok(false) => &stats.zero_rtt_rejected,
                            Err(_) => {
                                watched.close(codes::NO_ERROR, b"no handshake within the connect timeout");
                                return;
                            }
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    });
                    return Ok(QuicConnection { connection });
                }
                Err(connecting) => connecting, // no ticket: a full handshake
            },
            false => connecting,
        };
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
        Ok(QuicConnection { connection })
    }

    /// Opens a stream, writes the request frame and finishes the stream.
    pub(super) async fn send(&self, frame: Bytes, max_frame_len: usize) -> ClientResult<ResponseFrames> {
        let (send, recv) = self.connection.open_bi().await.map_err(ClientError::before_sending)?;
        let mut send = ResetUnlessFinished(Some(send));
        if let Some(stream) = send.0.as_mut() {
            match stream.write_chunk(frame).await {
                // The server stopped reading because it refused the request; its reply says why.
                Ok(()) | Err(WriteError::Stopped(_)) => {}
                Err(e) => return Err(ClientError::from_write(e)),
            }
        }
        send.finish();
        Ok(ResponseFrames::quic(recv, max_frame_len))
    }

    /// False once the connection has failed or been closed: the next call needs a new one.
    pub(super) fn is_usable(&self) -> bool {
        self.connection.close_reason().is_none()
    }

    pub(super) fn remote_address(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    pub(super) fn close(&self) {
        self.connection.close(codes::NO_ERROR, b"done");
    }
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
