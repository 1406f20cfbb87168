//! The typed async client. One connection, shared by every clone of the [`Client`] and by any number
//! of concurrent calls: over QUIC each call is a request on a stream of its own; over TCP (TLS or
//! plaintext) the calls are pipelined on the connection and answered in order.
//!
//! ```no_run
//! # async fn demo() -> Result<(), qkv::client::ClientError> {
//! let client = qkv::Client::connect("127.0.0.1:9527", "certs/ca.pem").await?;
//! let written = client.hset("users", "ada", "Ada Lovelace").await?;
//! let current = client.hget("users", "ada").await?.expect("just written");
//! assert_eq!(current.version, written.version);
//! # Ok(()) }
//! ```

mod error;
mod frames;
mod quic;
mod tcp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use error::ClientError;
pub use frames::ResponseFrames;

use crate::pb::{CommandRequest, CommandResponse, Kvpair, Value, Versioned, status, value};
use crate::tls;
use crate::transport::frame::{FrameError, encode_frame};
use crate::transport::{Limits, Transport};

pub type ClientResult<T> = Result<T, ClientError>;

/// How to reach a server.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port`; the host may be a DNS name or an IP address.
    pub addr: String,
    /// QUIC (the default), TLS over TCP, or plaintext TCP.
    pub transport: Transport,
    /// PEM file of the CA certificates the server's certificate must chain to (unused for plaintext).
    pub ca_file: PathBuf,
    /// Name to verify the certificate against; defaults to the host part of `addr`.
    pub server_name: Option<String>,
    /// Frame size, idle timeout and socket buffers; the server's limits apply on its side.
    pub limits: Limits,
    /// How long to wait for the server to answer the handshake.
    pub connect_timeout: Duration,
}

impl ClientConfig {
    pub fn new(addr: impl Into<String>, ca_file: impl Into<PathBuf>) -> Self {
        ClientConfig {
            addr: addr.into(),
            transport: Transport::Quic,
            ca_file: ca_file.into(),
            server_name: None,
            limits: Limits::default(),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// The result of a successful write.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// What the key held before, if anything.
    pub previous: Option<Value>,
    /// The key's version now (0 after a delete).
    pub version: u64,
}

/// A connection to a qkv server. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    connection: Connection,
    max_frame_len: usize,
}

enum Connection {
    Quic(quic::QuicConnection),
    Tcp(tcp::TcpConnection),
}

impl Client {
    /// Connects over QUIC to `addr` (`host:port`), trusting the CA certificates in `ca_file`.
    pub async fn connect(addr: &str, ca_file: impl Into<PathBuf>) -> ClientResult<Self> {
        Self::connect_with(ClientConfig::new(addr, ca_file)).await
    }

    pub async fn connect_with(config: ClientConfig) -> ClientResult<Self> {
        let (host, remote) = resolve(&config.addr).await?;
        let server_name = config.server_name.clone().unwrap_or(host);
        let tls = || -> ClientResult<Arc<rustls::ClientConfig>> {
            Ok(Arc::new(tls::client_config(tls::read_roots(&config.ca_file)?)?))
        };
        let connection = match config.transport {
            Transport::Quic => {
                Connection::Quic(quic::QuicConnection::connect(&config, tls()?, &server_name, remote).await?)
            }
            Transport::Tls => Connection::Tcp(
                tcp::TcpConnection::connect(&config, Some(tls()?), &server_name, remote).await?,
            ),
            Transport::Tcp => {
                Connection::Tcp(tcp::TcpConnection::connect(&config, None, &server_name, remote).await?)
            }
        };
        Ok(Client { inner: Arc::new(Inner { connection, max_frame_len: config.limits.max_frame_len }) })
    }

    /// Sends one request and returns its reply as a stream of frames, for answers too large to collect.
    pub async fn call_frames(&self, request: &CommandRequest) -> ClientResult<ResponseFrames> {
        let frame = encode_frame(request, self.inner.max_frame_len).map_err(|e| match e {
            FrameError::TooLarge { declared, max } => ClientError::RequestTooLarge { len: declared, max },
            other => ClientError::Protocol(other.to_string()),
        })?;
        match &self.inner.connection {
            Connection::Quic(quic) => quic.send(frame, self.inner.max_frame_len).await,
            Connection::Tcp(tcp) => tcp.send(frame).await,
        }
    }

    /// Sends one request and returns its whole reply: the frames' values, pairs and versions
    /// concatenated, with the status and message of the last frame. Any status is returned as is.
    pub async fn call(&self, request: &CommandRequest) -> ClientResult<CommandResponse> {
        let mut frames = self.call_frames(request).await?;
        let Some(first) = frames.next().await else {
            return Err(ClientError::Protocol("the reply had no frame".into()));
        };
        let mut whole = first?;
        // Most replies are one frame; the others are concatenated into it.
        while let Some(frame) = frames.next().await {
            let frame = frame?;
            whole.values.extend(frame.values);
            whole.pairs.extend(frame.pairs);
            whole.versions.extend(frame.versions);
            (whole.status, whole.message, whole.more) = (frame.status, frame.message, frame.more);
        }
        Ok(whole)
    }

    /// Round trip with an arbitrary payload, which the server echoes.
    pub async fn ping(&self, payload: impl Into<Bytes>) -> ClientResult<Bytes> {
        let response = ok(self.call(&CommandRequest::ping(payload)).await?)?;
        match response.values.into_iter().next().and_then(|v| v.value) {
            Some(value::Value::Binary(payload)) => Ok(payload),
            other => Err(ClientError::Protocol(format!("Ping answered with {other:?}"))),
        }
    }

    /// The key's value and version, or `None` when it does not exist.
    pub async fn hget(&self, table: &str, key: &str) -> ClientResult<Option<Versioned>> {
        let response = self.call(&CommandRequest::hget(table, key)).await?;
        if response.status == status::NOT_FOUND {
            return Ok(None);
        }
        Ok(versioned_values(ok(response)?).into_iter().next().flatten())
    }

    /// One answer per key, in order; `None` for keys that do not exist.
    pub async fn hmget(&self, table: &str, keys: &[&str]) -> ClientResult<Vec<Option<Versioned>>> {
        let response = self.call(&CommandRequest::hmget(table, keys.iter().copied())).await?;
        Ok(versioned_values(ok(response)?))
    }

    /// Every key of the table with its value and version, in no particular order.
    pub async fn hgetall(&self, table: &str) -> ClientResult<Vec<(String, Versioned)>> {
        let response = ok(self.call(&CommandRequest::hgetall(table)).await?)?;
        let mut versions = response.versions.into_iter();
        Ok(response
            .pairs
            .into_iter()
            .map(|pair| {
                let version = versions.next().unwrap_or_default();
                (pair.key, Versioned { value: pair.value.unwrap_or_default(), version })
            })
            .collect())
    }

    pub async fn hset(&self, table: &str, key: &str, value: impl Into<Value>) -> ClientResult<Written> {
        written(self.call(&CommandRequest::hset(table, key, value)).await?)
    }

    /// Writes only if the key's version is `expected_version` (0: only if the key does not exist);
    /// otherwise fails with [`ClientError::Conflict`], which carries the key's current value and version.
    pub async fn hset_if_version(
        &self,
        table: &str,
        key: &str,
        value: impl Into<Value>,
        expected_version: u64,
    ) -> ClientResult<Written> {
        written(self.call(&CommandRequest::hset_if_version(table, key, value, expected_version)).await?)
    }

    /// Sets several keys of one table; one result per pair, in order.
    pub async fn hmset(
        &self,
        table: &str,
        pairs: impl IntoIterator<Item = Kvpair>,
    ) -> ClientResult<Vec<Written>> {
        all_written(self.call(&CommandRequest::hmset(table, pairs)).await?)
    }

    /// Deletes the key; the result's `previous` is what it held (`None` if it did not exist).
    pub async fn hdel(&self, table: &str, key: &str) -> ClientResult<Written> {
        written(self.call(&CommandRequest::hdel(table, key)).await?)
    }

    /// Deletes only if the key's version is `expected_version`; otherwise [`ClientError::Conflict`].
    pub async fn hdel_if_version(
        &self,
        table: &str,
        key: &str,
        expected_version: u64,
    ) -> ClientResult<Written> {
        written(self.call(&CommandRequest::hdel_if_version(table, key, expected_version)).await?)
    }

    pub async fn hmdel(&self, table: &str, keys: &[&str]) -> ClientResult<Vec<Written>> {
        all_written(self.call(&CommandRequest::hmdel(table, keys.iter().copied())).await?)
    }

    pub async fn hexist(&self, table: &str, key: &str) -> ClientResult<bool> {
        let found = booleans(ok(self.call(&CommandRequest::hexist(table, key)).await?)?)?;
        found.into_iter().next().ok_or_else(|| ClientError::Protocol("Hexist answered no value".into()))
    }

    pub async fn hmexist(&self, table: &str, keys: &[&str]) -> ClientResult<Vec<bool>> {
        booleans(ok(self.call(&CommandRequest::hmexist(table, keys.iter().copied())).await?)?)
    }

    /// The server's address as this connection currently sees it.
    pub fn remote_address(&self) -> SocketAddr {
        match &self.inner.connection {
            Connection::Quic(quic) => quic.remote_address(),
            Connection::Tcp(tcp) => tcp.remote_address(),
        }
    }

    /// Closes the connection and waits until the server has been told, so it need not time it out.
    pub async fn close(&self) {
        match &self.inner.connection {
            Connection::Quic(quic) => quic.close().await,
            Connection::Tcp(tcp) => tcp.close().await,
        }
    }
}

/// Resolves `host:port`, returning the host (for certificate verification) and the first address.
async fn resolve(addr: &str) -> ClientResult<(String, SocketAddr)> {
    let resolve_error = |reason: String| ClientError::Resolve { addr: addr.to_owned(), reason };
    let host = match addr.parse::<SocketAddr>() {
        Ok(socket_addr) => socket_addr.ip().to_string(),
        Err(_) => match addr.rsplit_once(':') {
            Some((host, _port)) => host.trim_start_matches('[').trim_end_matches(']').to_owned(),
            None => return Err(resolve_error("expected host:port".into())),
        },
    };
    let remote = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| resolve_error(e.to_string()))?
        .next()
        .ok_or_else(|| resolve_error("no addresses found".into()))?;
    Ok((host, remote))
}

/// Passes 200 responses through; turns every other status into the matching error.
fn ok(response: CommandResponse) -> ClientResult<CommandResponse> {
    match response.status {
        status::OK => Ok(response),
        // Over TCP: the server is shutting down and did not execute this request.
        // The server did not execute this request (it is shutting down, or at its connection limit).
        status::UNAVAILABLE => Err(ClientError::Unavailable { reason: response.message }),
        status::CONFLICT => {
            Err(ClientError::Conflict { current: versioned_values(response).into_iter().next().flatten() })
        }
        status => Err(ClientError::Status { status, message: response.message }),
    }
}

/// Pairs each value with its version; an empty value (a miss) becomes `None`.
fn versioned_values(response: CommandResponse) -> Vec<Option<Versioned>> {
    let mut versions = response.versions.into_iter();
    response
        .values
        .into_iter()
        .map(|value| {
            let version = versions.next().unwrap_or_default();
            (!value.is_empty()).then_some(Versioned { value, version })
        })
        .collect()
}

fn booleans(response: CommandResponse) -> ClientResult<Vec<bool>> {
    response
        .values
        .into_iter()
        .map(|v| match v.value {
            Some(value::Value::Bool(exists)) => Ok(exists),
            other => Err(ClientError::Protocol(format!("expected a bool, got {other:?}"))),
        })
        .collect()
}

fn all_written(response: CommandResponse) -> ClientResult<Vec<Written>> {
    let response = ok(response)?;
    let mut versions = response.versions.into_iter();
    Ok(response
        .values
        .into_iter()
        .map(|previous| Written {
            previous: (!previous.is_empty()).then_some(previous),
            version: versions.next().unwrap_or_default(),
        })
        .collect())
}

fn written(response: CommandResponse) -> ClientResult<Written> {
    all_written(response)?
        .into_iter()
        .next()
        .ok_or_else(|| ClientError::Protocol("a write was answered without a result".into()))
}
