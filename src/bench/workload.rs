//! What one benchmark request is: the workload, the key it touches, and the connection it goes on.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use rand::RngExt;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Zipf};

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::BenchError;
use super::floor::EchoClient;
use crate::client::{Client, ClientConfig, ClientEndpoint, ClientError, ClientStats};
use crate::pb::{Kvpair, Value};
use crate::tls::Tickets;

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

/// For the connect workload: a new connection for every request, as a fleet of reconnecting clients
/// makes them (at the end of an outage, say). Each connector is one client of the fleet: with
/// resumption it keeps session tickets of its own, as a phone does, so that every connection after
/// its first resumes (0-RTT over QUIC) however many connect at once; without, each makes a full
/// handshake.
///
/// Over QUIC every connector sends through one shared endpoint (one UDP socket): quinn carries any
/// number of connections on it, and an endpoint per connection would cost the load generator a
/// zeroed receive buffer of a few megabytes each, which at hundreds of setups a second outweighs the
/// handshakes being measured. The server sees the same packets either way, from one address.
///
/// Clients are closed in the background (a QUIC close lingers for a few round trips) and their
/// statistics summed at the end, for the connections whose request was measured.
#[derive(Clone)]
pub struct Connector {
    /// This connector's settings (its tickets) on the socket every connector shares (over QUIC).
    endpoint: ClientEndpoint,
    /// Clients closing in the background, shared by every connector of the run.
    closing: Arc<Mutex<JoinSet<(Instant, ClientStats)>>>,
}

impl Connector {
    /// `count` connectors to `config`'s server. With `resume`, each keeps the session tickets its
    /// connections are given and resumes with them; without, each connection is a full handshake.
    pub async fn fleet(config: &ClientConfig, count: usize, resume: bool) -> Result<Vec<Self>, BenchError> {
        let mut config = config.clone();
        config.zero_rtt = resume;
        // A fresh connection per request: a failure is the measurement, not something to retry.
        config.retry.attempts = 1;
        let shared = ClientEndpoint::new(config.clone()).await?;
        let closing = Arc::default();
        let mut connectors = Vec::with_capacity(count.max(1));
        for _ in 0..count.max(1) {
            // rustls keeps at most 8 tickets per server in a store: one store for the whole fleet
            // would leave all but 8 of many concurrent connections without a ticket.
            let tickets = if resume { Tickets::in_memory(1) } else { Tickets::none() };
            let endpoint = shared.with_config(ClientConfig { tickets, ..config.clone() }).await?;
            connectors.push(Connector { endpoint, closing: Arc::clone(&closing) });
        }
        Ok(connectors)
    }

    /// One connection and its request; `counted_by`: the instant the run counts the request by, by
    /// which its connection is counted too (`finish`), so that the two figures agree.
    async fn request(&self, key: &str, counted_by: Instant) -> Result<(), RequestError> {
        let started = Instant::now();
        let client = self.endpoint.connect().await?;
        let found = match client.hget(TABLE, key).await {
            // Early data the server refused (its ticket unknown: a restarted server) was not executed:
            // a client sends it again in the connection, now established, as `Client`'s retries would
            // (they are off here, so that a failed connection counts as one). The setup took a round
            // trip more, which the latency shows; it is no error.
            Err(ClientError::ZeroRttRejected) => client.hget(TABLE, key).await,
            found => found,
        };
        // A 0-RTT answer arrives before the server's new session tickets, which it sends only once
        // the handshake completes. Closing at once would use up the ticket store and turn later
        // connections into full handshakes; an app's connection lives on and gets its tickets, so
        // this one lingers for a couple of round trips (its setup time is about one).
        let linger = (started.elapsed() * 2).min(LINGER_LIMIT);
        self.closing.lock().spawn(async move {
            tokio::time::sleep(linger).await;
            client.close().await;
            (counted_by, client.stats())
        });
        match found? {
            Some(_) => Ok(()),
            None => Err(RequestError::Other(format!("preloaded key {key} is missing"))),
        }
    }

    /// Waits (at most `limit`) for every client to close, and sums what the clients whose request
    /// started at or after `counted_from` did: the connections of the measured requests, not those of
    /// the warm-up. Every connector of a fleet shares the clients: the first call collects them all.
    pub async fn finish(&self, limit: std::time::Duration, counted_from: Instant) -> ClientStats {
        let mut closing = std::mem::take(&mut *self.closing.lock());
        let mut total = ClientStats::default();
        let _ = tokio::time::timeout(limit, async {
            while let Some(closed) = closing.join_next().await {
                if let Ok((started, stats)) = closed
                    && started >= counted_from
                {
                    total += stats;
                }
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
    /// One request; `counted_by`: the instant the run counts it by (see `load::closed_worker`).
    pub async fn request(&self, rng: &mut SmallRng, counted_by: Instant) -> Result<(), RequestError> {
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
            Target::Connect(connector) => return connector.request(self.keys.pick(rng), counted_by).await,
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

/// Writes every key the workload reads, so that reads hit: in Hmsets of up to 1000 keys, and fewer
/// when their values are large, so that each request fits in half of `max_frame_len` (the rest is room
/// for framing).
pub async fn preload(
    client: &Client,
    keys: usize,
    value: &Value,
    max_frame_len: usize,
) -> Result<(), ClientError> {
    let batch = preload_batch(keys, value, max_frame_len);
    for start in (0..keys).step_by(batch) {
        let pairs = (start..(start + batch).min(keys)).map(|i| Kvpair::new(key(i), value.clone()));
        client.hmset(TABLE, pairs).await?;
    }
    Ok(())
}

/// How many keys one preloading Hmset carries (at least one: a single value too large for a frame
/// fails as the request it is).
fn preload_batch(keys: usize, value: &Value, max_frame_len: usize) -> usize {
    const MOST: usize = 1000;
    // The longest key's pair, with the tag and length that put it in the request.
    let pair = prost::Message::encoded_len(&Kvpair::new(key(keys.max(1) - 1), value.clone())) + 8;
    (max_frame_len / 2 / pair).clamp(1, MOST)
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
    fn preloading_large_values_takes_requests_that_fit_in_a_frame() {
        let max = crate::transport::frame::DEFAULT_MAX_FRAME_LEN;
        assert_eq!(preload_batch(10_000, &Value::from(vec![b'p'; 100]), max), 1000);
        let large = Value::from(vec![b'p'; 100_000]);
        let batch = preload_batch(10_000, &large, max);
        let pairs = (0..batch).map(|i| Kvpair::new(key(i), large.clone()));
        let request = crate::pb::CommandRequest::hmset(TABLE, pairs);
        assert!(crate::transport::frame::encode_frame(&request, max).is_ok(), "{batch} pairs");
        assert_eq!(preload_batch(10, &Value::from(vec![b'p'; 20 << 20]), max), 1);
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
