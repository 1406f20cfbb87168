//! What one benchmark request is: the workload, the key it touches, and the connection it goes on.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rand::Rng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Zipf};

use super::floor::EchoClient;
use tokio::task::JoinSet;

use crate::client::{Client, ClientConfig, ClientError, ClientStats};
use crate::pb::{Kvpair, Value};

/// What each request does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Workload {
    /// Ping with an empty payload: the transport, framing and dispatch, no storage.
    Ping,
    /// Hget of preloaded keys.
    Hget,
    /// Hset of preloaded keys.
    Hset,
    /// Hget with probability `read_ratio`, Hset otherwise.
    Mixed { read_ratio: f64 },
    /// A `value_size`-byte message echoed by a floor server (`qkv floor`): no KV work at all.
    Echo,
    /// A new connection for every request, then one Hget: connection setup as a user sees it.
    Connect,
    /// Publishes of `value_size`-byte messages to one topic with `subscribers` reading subscribers and
    /// `stalled` that never read; measures deliveries (see `fanout`).
    Fanout { subscribers: usize, stalled: usize },
}

impl Workload {
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Ping => "ping",
            Workload::Hget => "hget",
            Workload::Hset => "hset",
            Workload::Mixed { .. } => "mixed",
            Workload::Echo => "echo",
            Workload::Connect => "connect",
            Workload::Fanout { .. } => "fanout",
        }
    }

    /// Whether the keys must exist before the run.
    pub fn needs_keys(&self) -> bool {
        matches!(self, Workload::Hget | Workload::Hset | Workload::Mixed { .. } | Workload::Connect)
    }
}

/// How keys are picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDist {
    Uniform,
    /// Zipfian with exponent 0.99 (YCSB's): a few keys take most requests.
    Zipf,
}

pub const TABLE: &str = "bench";

pub fn key(i: usize) -> String {
    format!("key:{i:010}")
}

/// Picks keys by `dist` among `keys` keys. The key strings are made once, so that formatting them is
/// not counted as the cost of a request.
#[derive(Clone)]
pub struct KeyPicker {
    names: Arc<[String]>,
    zipf: Option<Zipf<f64>>,
}

impl KeyPicker {
    pub fn new(dist: KeyDist, keys: usize) -> Self {
        let keys = keys.max(1);
        let zipf = match dist {
            KeyDist::Uniform => None,
            // Valid for any n >= 1 and exponent >= 0, which these are.
            KeyDist::Zipf => Zipf::new(keys as f64, 0.99).ok(),
        };
        KeyPicker { names: (0..keys).map(key).collect(), zipf }
    }

    pub fn pick(&self, rng: &mut SmallRng) -> &str {
        let keys = self.names.len();
        let index = match &self.zipf {
            Some(zipf) => (zipf.sample(rng) as usize).saturating_sub(1).min(keys - 1),
            None => rng.random_range(0..keys),
        };
        &self.names[index]
    }
}

/// Where requests go: the qkv client, a floor server's echo, or a new connection each time.
#[derive(Clone)]
pub enum Target {
    Kv(Client),
    Echo { client: EchoClient, max_frame_len: usize },
    Connect(Box<Connector>),
}

/// The longest a connect-workload connection stays open after its answer.
const LINGER_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// For the connect workload: a new client for every request. Clients are closed in the background
/// (a QUIC close lingers for a few round trips) and their statistics summed at the end.
#[derive(Clone)]
pub struct Connector {
    config: ClientConfig,
    closing: Arc<Mutex<JoinSet<ClientStats>>>,
}

impl Connector {
    /// `config.tickets` decides resumption: shared tickets make every connection after the first
    /// resume (0-RTT over QUIC), none make each a full handshake.
    pub fn new(config: ClientConfig) -> Self {
        Connector { config, closing: Arc::default() }
    }

    async fn request(&self, key: &str) -> Result<(), RequestError> {
        let started = tokio::time::Instant::now();
        let client = Client::connect_with(self.config.clone()).await?;
        let found = client.hget(TABLE, key).await;
        // A 0-RTT answer arrives before the server's new session tickets, which it sends only once
        // the handshake completes. Closing at once would use up the ticket store and turn later
        // connections into full handshakes; an app's connection lives on and gets its tickets, so
        // this one lingers for a couple of round trips (its setup time is about one).
        let linger = (started.elapsed() * 2).min(LINGER_LIMIT);
        if let Ok(mut closing) = self.closing.lock() {
            closing.spawn(async move {
                tokio::time::sleep(linger).await;
                client.close().await;
                client.stats()
            });
        }
        match found? {
            Some(_) => Ok(()),
            None => Err(RequestError::Other(format!("preloaded key {key} is missing"))),
        }
    }

    /// Waits (at most `limit`) for every client to close, and sums what they did.
    pub async fn finish(&self, limit: std::time::Duration) -> ClientStats {
        let Ok(mut closing) = self.closing.lock().map(|mut set| std::mem::take(&mut *set)) else {
            return ClientStats::default();
        };
        let mut total = ClientStats::default();
        let _ = tokio::time::timeout(limit, async {
            while let Some(stats) = closing.join_next().await {
                total += stats.unwrap_or_default();
            }
        })
        .await;
        total
    }
}

/// Everything a request needs, shared by the workers of one connection.
#[derive(Clone)]
pub struct RequestMaker {
    pub target: Target,
    pub workload: Workload,
    pub keys: KeyPicker,
    pub value: Value,
    pub message: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Other(String),
}

impl RequestMaker {
    /// Sends one request and waits for its answer.
    pub async fn request(&self, rng: &mut SmallRng) -> Result<(), RequestError> {
        let client = match &self.target {
            Target::Echo { client, max_frame_len } => {
                let echoed = client
                    .echo(self.message.clone(), *max_frame_len)
                    .await
                    .map_err(|e| RequestError::Other(e.to_string()))?;
                return match echoed == self.message.len() {
                    true => Ok(()),
                    false => {
                        Err(RequestError::Other(format!("echoed {echoed} bytes of {}", self.message.len())))
                    }
                };
            }
            Target::Kv(client) => client,
            Target::Connect(connector) => return connector.request(self.keys.pick(rng)).await,
        };
        let read = match self.workload {
            Workload::Ping => return Ok(client.ping(Bytes::new()).await.map(drop)?),
            Workload::Hget => true,
            Workload::Hset => false,
            Workload::Mixed { read_ratio } => rng.random_bool(read_ratio.clamp(0.0, 1.0)),
            Workload::Echo => return Err(RequestError::Other("echo needs a floor server".into())),
            Workload::Connect => return Err(RequestError::Other("connect needs a connector".into())),
            Workload::Fanout { .. } => return Err(RequestError::Other("fan-out runs on its own".into())),
        };
        let key = self.keys.pick(rng);
        if read {
            match client.hget(TABLE, key).await? {
                Some(_) => Ok(()),
                None => Err(RequestError::Other(format!("preloaded key {key} is missing"))),
            }
        } else {
            Ok(client.hset(TABLE, key, self.value.clone()).await.map(drop)?)
        }
    }
}

/// Writes every key the workload reads, so that reads hit.
pub async fn preload(client: &Client, keys: usize, value: &Value) -> Result<(), ClientError> {
    const BATCH: usize = 1000;
    for start in (0..keys).step_by(BATCH) {
        let pairs = (start..(start + BATCH).min(keys)).map(|i| Kvpair::new(key(i), value.clone()));
        client.hmset(TABLE, pairs).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn counts(dist: KeyDist, keys: usize, picks: usize) -> Vec<usize> {
        let picker = KeyPicker::new(dist, keys);
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = vec![0; keys];
        for _ in 0..picks {
            let name = picker.pick(&mut rng);
            let index = (0..keys).position(|i| key(i) == name).expect("a preloaded key");
            counts[index] += 1;
        }
        counts
    }

    #[test]
    fn uniform_keys_are_spread_evenly() {
        let counts = counts(KeyDist::Uniform, 100, 20_000);
        assert!(counts.iter().all(|&c| (100..=300).contains(&c)), "{counts:?}");
    }

    #[test]
    fn zipf_keys_concentrate_on_the_first_ones() {
        // Exponent 0.99 over 100 keys: key 0 takes ~19% of requests, the top ten ~56%.
        let counts = counts(KeyDist::Zipf, 100, 20_000);
        assert!(counts[0] > 3000, "{counts:?}");
        assert!(counts[..10].iter().sum::<usize>() > 10_000, "{counts:?}");
        assert!(counts[0] > counts[50] * 20, "{counts:?}");
    }
}
