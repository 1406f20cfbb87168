//! The run's connections: opened concurrently, at most `connect_concurrency` handshakes at a time;
//! over QUIC, `connections_per_socket` of them on each client endpoint (one UDP socket); closed all at
//! once at the end. Opening and closing N connections so costs about N handshakes of CPU, not N round
//! trips and N closing periods one after another.
//!
//! Before it opens anything, the run makes sure the process may hold the file descriptors it needs
//! (raising the soft limit to the hard one), so that a large run fails at once with a clear reason
//! rather than part way through with "too many open files".

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::OnceCell;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::floor::EchoEndpoint;
use super::workload::{Connector, Target};
use super::{BenchConfig, BenchError, Workload};
use crate::client::{ClientEndpoint, ClientStats};
use crate::transport::Transport;

/// How long closing may take: QUIC lingers about three probe timeouts after a close (a few round
/// trips), so this is only reached when something is wrong; the run's figures are kept regardless.
pub(super) const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// Descriptors the process holds besides its connections: standard streams, the runtime's epoll and
/// wake-up descriptors, the certificate files while they are read, the connection that preloads keys.
const OTHER_FILES: u64 = 64;

/// The run's connections, and the endpoints they share.
pub struct Connections {
    /// One per connection, in order: connection `c` is `targets[c]`.
    pub targets: Vec<Target>,
    endpoints: Vec<Endpoint>,
}

/// What a group of connections shares: a qkv client endpoint, or a floor client's.
#[derive(Clone)]
enum Endpoint {
    Kv(Box<ClientEndpoint>),
    Echo(EchoEndpoint),
}

impl Endpoint {
    async fn new(config: &BenchConfig, echo_addr: Option<SocketAddr>) -> Result<Self, BenchError> {
        let client = &config.client;
        Ok(match echo_addr {
            Some(addr) => Endpoint::Echo(
                EchoEndpoint::new(client.transport, addr, &client.ca_file, &client.limits, &client.quic)
                    .map_err(|e| {
                        BenchError::Setup(format!("cannot prepare connections to the floor at {addr}: {e}"))
                    })?,
            ),
            None => Endpoint::Kv(Box::new(ClientEndpoint::new(client.clone()).await?)),
        })
    }

    async fn connect(&self, config: &BenchConfig) -> Result<Target, BenchError> {
        Ok(match self {
            Endpoint::Kv(endpoint) => Target::Kv(endpoint.connect().await?),
            Endpoint::Echo(endpoint) => Target::Echo {
                client: endpoint.connect().await.map_err(|e| {
                    BenchError::Setup(format!("cannot connect to the floor at {}: {e}", config.client.addr))
                })?,
                max_frame_len: config.client.limits.max_frame_len,
            },
        })
    }

    async fn wait_idle(&self) {
        match self {
            Endpoint::Kv(endpoint) => endpoint.wait_idle().await,
            Endpoint::Echo(endpoint) => endpoint.wait_idle().await,
        }
    }
}

/// One echo on a connection of its own before the run, as the keys are preloaded for the other
/// workloads: a server that is not a floor (a qkv server answers with its own frames), or one that
/// speaks TLS where the bench speaks plaintext, would otherwise fail every request of the run, as fast
/// as they could be sent. Bounded by the connect timeout.
async fn probe_floor(config: &BenchConfig, addr: SocketAddr) -> Result<(), BenchError> {
    let max_frame_len = config.client.limits.max_frame_len;
    if config.value_size > max_frame_len {
        return Err(BenchError::Setup(format!(
            "--value-size {} is over the largest frame, {max_frame_len} bytes",
            config.value_size
        )));
    }
    let not_a_floor = |what: String| {
        BenchError::Setup(format!(
            "the server at {} {what}: --workload echo needs a floor server (qkv floor) speaking --transport {}",
            config.client.addr, config.client.transport
        ))
    };
    let endpoint = Endpoint::new(config, Some(addr)).await?;
    let probe = async {
        let Target::Echo { client, .. } = endpoint.connect(config).await? else {
            return Err(BenchError::Setup("the floor's endpoint made no echo client".into()));
        };
        let echoed = client.echo(bytes::Bytes::from(vec![b'p'; config.value_size]), max_frame_len).await;
        client.close();
        Ok(echoed)
    };
    let echoed = tokio::time::timeout(config.client.connect_timeout, probe).await;
    // Its connection closed (a QUIC one told to the server), within bounds for one that never opened.
    let _ = tokio::time::timeout(config.client.connect_timeout, endpoint.wait_idle()).await;
    match echoed {
        Ok(Ok(Ok(echoed))) if echoed == config.value_size => Ok(()),
        Ok(Ok(Ok(echoed))) => {
            Err(not_a_floor(format!("answered a {}-byte message with {echoed} bytes", config.value_size)))
        }
        Ok(Ok(Err(e))) => Err(not_a_floor(format!("did not echo a first message ({e})"))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(not_a_floor(format!(
            "did not echo a first message within the connect timeout ({:?})",
            config.client.connect_timeout
        ))),
    }
}

impl Connections {
    /// Opens the run's connections (the connect workload's connectors open theirs per request).
    pub async fn open(config: &BenchConfig) -> Result<Self, BenchError> {
        let n = config.connections.max(1);
        if config.workload == Workload::Connect {
            let fleet = Connector::fleet(&config.client, n, config.zero_rtt).await?;
            let targets = fleet.into_iter().map(|connector| Target::Connect(Box::new(connector))).collect();
            return Ok(Connections { targets, endpoints: Vec::new() });
        }
        let echo_addr = match config.workload {
            Workload::Echo => Some(
                tokio::net::lookup_host(&config.client.addr)
                    .await
                    .ok()
                    .and_then(|mut addrs| addrs.next())
                    .ok_or_else(|| BenchError::Setup(format!("cannot resolve {}", config.client.addr)))?,
            ),
            _ => None,
        };
        if let Some(addr) = echo_addr {
            probe_floor(config, addr).await?;
        }
        // Over TCP there is no socket to share; one endpoint still builds the TLS configuration once.
        let per_endpoint = match config.client.transport {
            Transport::Quic => config.connections_per_socket.max(1),
            _ => n,
        };
        // Each endpoint is made by the first of its connections to need it, inside the concurrent
        // opening, so that binding thousands of sockets does not hold up the first handshakes.
        let groups: Vec<Arc<OnceCell<Endpoint>>> =
            (0..n.div_ceil(per_endpoint)).map(|_| Arc::default()).collect();
        let mut targets: Vec<Option<Target>> = vec![None; n];
        let mut opening = JoinSet::new();
        let mut next = 0;
        loop {
            while next < n && opening.len() < config.connect_concurrency.max(1) {
                let (group, config) = (groups[next / per_endpoint].clone(), config.clone());
                opening.spawn(async move {
                    let endpoint = group.get_or_try_init(|| Endpoint::new(&config, echo_addr)).await?;
                    endpoint.connect(&config).await.map(|target| (next, target))
                });
                next += 1;
            }
            let Some(opened) = opening.join_next().await else { break };
            let opened = opened.map_err(|e| BenchError::Setup(format!("a connection task failed: {e}")));
            match opened.and_then(|opened| opened) {
                Ok((c, target)) => targets[c] = Some(target),
                Err(e) => {
                    // A failure ends the run: the handshakes still under way are aborted, and the
                    // connections made are closed, so that the server is told rather than holding
                    // them (and their places under its connection limit) until they time out.
                    opening.abort_all();
                    let endpoints = groups.iter().filter_map(|group| group.get().cloned()).collect();
                    let made = Connections { targets: targets.into_iter().flatten().collect(), endpoints };
                    made.close(Instant::now()).await;
                    return Err(e);
                }
            }
        }
        let endpoints = groups.iter().filter_map(|group| group.get().cloned()).collect();
        Ok(Connections { targets: targets.into_iter().flatten().collect(), endpoints })
    }

    /// Closes every connection at once, waits (at most [`CLOSE_LIMIT`]) until the server has been told,
    /// and sums what the clients did (for the connect workload, the clients of the requests that
    /// started at or after `counted_from`: the measured ones).
    pub async fn close(self, counted_from: Instant) -> ClientStats {
        let mut echoes = ClientStats::default();
        for target in &self.targets {
            if let Target::Echo { client, .. } = target {
                echoes += client.close();
            }
        }
        let closing = async {
            join_all(self.targets.iter().map(|target| async move {
                if let Target::Kv(client) = target {
                    client.close().await;
                }
            }))
            .await;
            join_all(self.endpoints.iter().map(Endpoint::wait_idle)).await;
        };
        // The connect workload's connections close in the background as they finish their requests;
        // the connectors of a fleet share them, and the first collects them all.
        let connector = self.targets.iter().find_map(|target| match target {
            Target::Connect(connector) => Some(connector),
            _ => None,
        });
        let finishing =
            join_all(connector.into_iter().map(|connector| connector.finish(CLOSE_LIMIT, counted_from)));
        let (closed, finished) = tokio::join!(tokio::time::timeout(CLOSE_LIMIT, closing), finishing);
        if closed.is_err() {
            tracing::warn!(limit = ?CLOSE_LIMIT, "the connections did not all close in time");
        }
        let mut stats = echoes;
        for target in &self.targets {
            if let Target::Kv(client) = target {
                stats += client.stats();
            }
        }
        for finished in finished {
            stats += finished;
        }
        stats
    }
}

/// How many file descriptors a run needs at most: a socket per QUIC endpoint or TCP connection.
pub fn files_needed(config: &BenchConfig) -> u64 {
    let n = config.connections.max(1) as u64;
    let sockets = match config.workload {
        // Each worker's connection, and about two more closing behind it (they linger a few round
        // trips for their session tickets).
        Workload::Connect => n * config.inflight.max(1) as u64 * 3,
        // Subscribers on shared QUIC sockets or a TCP connection each; the publishers on clients of
        // their own.
        Workload::Fanout { subscribers, stalled } => {
            let subscribers = (subscribers + stalled) as u64;
            let subscriber_sockets = match config.client.transport {
                Transport::Quic => subscribers.div_ceil(config.connections_per_socket.max(1) as u64),
                _ => subscribers,
            };
            subscriber_sockets + n
        }
        _ => match config.client.transport {
            Transport::Quic => n.div_ceil(config.connections_per_socket.max(1) as u64),
            _ => n,
        },
    };
    sockets + OTHER_FILES
}

/// Makes sure the process may open `needed` files: raises the soft limit to the hard limit if it is
/// lower, and fails, saying what to change, if even the hard limit is too low.
pub fn ensure_open_files(needed: u64) -> Result<(), BenchError> {
    #[cfg(unix)]
    {
        let (soft, _hard) =
            rlimit::Resource::NOFILE.get().map_err(|e| BenchError::OpenFileLimit { needed, source: e })?;
        if soft >= needed {
            return Ok(());
        }
        let raised = rlimit::increase_nofile_limit(u64::MAX)
            .map_err(|e| BenchError::OpenFileLimit { needed, source: e })?;
        tracing::info!(from = soft, to = raised, needed, "raised the limit of open files");
        if raised < needed {
            return Err(BenchError::TooFewOpenFiles { needed, limit: raised });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::KeyDist;
    use crate::client::ClientConfig;

    fn config(transport: Transport, connections: usize, per_socket: usize) -> BenchConfig {
        let mut client = ClientConfig::new("127.0.0.1:9527", "ca.pem");
        client.transport = transport;
        BenchConfig {
            client,
            workload: Workload::Hget,
            connections,
            connect_concurrency: 64,
            connections_per_socket: per_socket,
            inflight: 1,
            rate: None,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            value_size: 16,
            keys: 10,
            key_dist: KeyDist::Uniform,
            seed: 1,
            zero_rtt: false,
            timeline: None,
        }
    }

    #[test]
    fn quic_connections_need_a_file_per_socket_tcp_ones_one_each() {
        assert_eq!(files_needed(&config(Transport::Quic, 10_000, 100)), 100 + OTHER_FILES);
        assert_eq!(files_needed(&config(Transport::Quic, 10_001, 100)), 101 + OTHER_FILES);
        assert_eq!(files_needed(&config(Transport::Tls, 10_000, 100)), 10_000 + OTHER_FILES);
    }

    #[cfg(unix)]
    #[test]
    fn a_run_that_needs_more_files_than_the_hard_limit_is_refused_with_the_limit() {
        assert!(ensure_open_files(OTHER_FILES).is_ok());
        match ensure_open_files(u64::MAX) {
            Err(BenchError::TooFewOpenFiles { needed, limit }) => assert!(needed > limit, "{needed} {limit}"),
            other => panic!("expected TooFewOpenFiles, got {other:?}"),
        }
    }
}
