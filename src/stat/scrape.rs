//! One GET of the admin listener's `/metrics`: hyper's HTTP/1.1 client on a new TCP connection per
//! scrape (one a second costs nothing, and a server that restarted is simply connected to again).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{ACCEPT, HOST};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::exposition::{self, ExpositionError};
use super::figures::Snapshot;

/// What every qkv server exports from its start, and tells its metrics from another exporter's.
const BUILD_INFO: &str = "qkv_build_info";

/// Largest /metrics body read: qkv's is a few tens of kilobytes.
const MAX_BODY: usize = 16 << 20;

/// Where the admin listener is: `HOST:PORT`, or `http://HOST:PORT` (with a path other than `/metrics`
/// if a proxy puts it elsewhere). Shown as `HOST:PORT`, as `qkv serve --admin` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAddr {
    authority: String,
    path: String,
}

impl AdminAddr {
    /// `HOST:PORT`.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The path asked for, `/metrics` unless the address named another.
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl fmt::Display for AdminAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.authority)
    }
}

impl FromStr for AdminAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<AdminAddr, String> {
        if text.starts_with("https://") {
            return Err("the admin listener speaks plain HTTP: give HOST:PORT or http://HOST:PORT".into());
        }
        let rest = text.strip_prefix("http://").unwrap_or(text);
        let uri: Uri = format!("http://{rest}").parse().map_err(|e| format!("expected HOST:PORT: {e}"))?;
        let authority = uri.authority().ok_or("expected HOST:PORT")?;
        if authority.as_str().contains('@') {
            return Err("expected HOST:PORT, without a user".into());
        }
        if authority.port_u16().is_none() {
            return Err(format!("expected HOST:PORT: {authority} has no port"));
        }
        let path = match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("" | "/") => "/metrics".to_owned(),
            Some(path) => path.to_owned(),
        };
        Ok(AdminAddr { authority: authority.as_str().to_owned(), path })
    }
}

/// Why a scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("cannot reach the admin listener at {addr}: {cause} (is qkv serve running with --admin {addr}?)")]
    Unreachable {
        addr: AdminAddr,
        #[source]
        cause: Cause,
    },
    #[error("the admin listener at {addr} answered {status} to GET {} (is it qkv serve's --admin address?)", .addr.path())]
    Status { addr: AdminAddr, status: StatusCode },
    #[error("the admin listener at {addr} answered GET {} with what is not Prometheus's text format", .addr.path())]
    Exposition {
        addr: AdminAddr,
        #[source]
        source: ExpositionError,
    },
    /// Metrics, but not a qkv server's (another exporter's, Prometheus's own): without this check its
    /// figures would pass for an idle qkv server's.
    #[error("{addr} answered GET {} with metrics, but not a qkv server's: no qkv_build_info (is it qkv serve's --admin address?)", .addr.path())]
    NotQkv { addr: AdminAddr },
}

/// What went wrong on the way to an answer.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error(transparent)]
    Connect(std::io::Error),
    #[error(transparent)]
    Request(hyper::http::Error),
    #[error(transparent)]
    Http(hyper::Error),
    #[error("the answer could not be read: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// GETs the metrics at `addr` and reads them, all within `timeout`. They must be a qkv server's
/// (`qkv_build_info`, which every qkv server exports from its start).
pub async fn scrape(addr: &AdminAddr, timeout: Duration) -> Result<Snapshot, ScrapeError> {
    let unreachable = |cause| ScrapeError::Unreachable { addr: addr.clone(), cause };
    let (status, body) = tokio::time::timeout(timeout, get(addr))
        .await
        .unwrap_or(Err(Cause::Timeout(timeout)))
        .map_err(unreachable)?;
    if !status.is_success() {
        return Err(ScrapeError::Status { addr: addr.clone(), status });
    }
    let samples = exposition::parse(&String::from_utf8_lossy(&body))
        .map_err(|source| ScrapeError::Exposition { addr: addr.clone(), source })?;
    if !samples.iter().any(|sample| sample.name == BUILD_INFO) {
        return Err(ScrapeError::NotQkv { addr: addr.clone() });
    }
    Ok(Snapshot::new(samples))
}

async fn get(addr: &AdminAddr) -> Result<(StatusCode, Bytes), Cause> {
    let stream = TcpStream::connect(addr.authority()).await.map_err(Cause::Connect)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(Cause::Http)?;
    // The connection reads and writes the socket; it ends when `sender` is dropped or the peer closes.
    tokio::spawn(connection);
    let request = Request::get(addr.path())
        .header(HOST, addr.authority())
        .header(ACCEPT, "text/plain; version=0.0.4")
        .body(Empty::<Bytes>::new())
        .map_err(Cause::Request)?;
    let response = sender.send_request(request).await.map_err(Cause::Http)?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_BODY).collect().await.map_err(Cause::Body)?;
    Ok((status, body.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_addresses_with_or_without_the_scheme() {
        for (text, authority, path) in [
            ("127.0.0.1:9100", "127.0.0.1:9100", "/metrics"),
            ("http://127.0.0.1:9100", "127.0.0.1:9100", "/metrics"),
            ("http://localhost:9100/", "localhost:9100", "/metrics"),
            ("[::1]:9100", "[::1]:9100", "/metrics"),
            ("http://10.0.0.1:80/qkv/metrics", "10.0.0.1:80", "/qkv/metrics"),
        ] {
            let addr: AdminAddr = text.parse().unwrap();
            assert_eq!((addr.authority(), addr.path()), (authority, path), "{text}");
            assert_eq!(addr.to_string(), authority);
        }
    }

    #[test]
    fn admin_addresses_need_a_port_and_plain_http() {
        for text in ["127.0.0.1", "https://127.0.0.1:9100", "user@127.0.0.1:9100", "", "a b:1"] {
            assert!(text.parse::<AdminAddr>().is_err(), "{text:?}");
        }
    }
}
