//! Lines a client can cause at will (a refused connection, a failed handshake, a bad frame) are logged
//! at most once a second per client, with how many of its lines were left out since its last, and at
//! most [`LINES_PER_SECOND`] a second of one kind from all clients together: an operator still sees
//! that it happens and to whom (a flood from one client does not hide another's first failure), and
//! clients opening thousands of bad connections cannot fill the disk or bury the other lines.
//!
//! The client is the task's: the listener runs each connection's task inside [`serving`], and the
//! tasks it spawns that log throttled lines keep it ([`keeping_client`]; hyper's HTTP/2 streams,
//! WebSocket and gRPC pipeline sessions; not QUIC's request streams, which log none). A line from a
//! task without one (the accept loops' refusals) is throttled as if one client's. The second a cap
//! counts in is fixed, not sliding: two of them can put up to twice the cap within one real second.
//! One client holding many IPv6 /64s (a /56 has 256) can still take the whole cap.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

tokio::task_local! {
    /// The client the current task serves.
    static CLIENT: IpAddr;
}

/// Runs `future` as serving `client`: the lines it throttles are that client's.
pub fn serving<F: Future>(client: IpAddr, future: F) -> impl Future<Output = F::Output> {
    CLIENT.scope(client, future)
}

/// The client the current task serves (the unspecified address when none).
pub fn client() -> IpAddr {
    CLIENT.try_with(|client| *client).unwrap_or(IpAddr::from([0u8; 4]))
}

/// `future`, serving the client the current task serves: for tasks a connection spawns.
pub fn keeping_client<F: Future>(future: F) -> impl Future<Output = F::Output> {
    serving(client(), future)
}

/// How far apart one client's lines of one kind are.
const INTERVAL: Duration = Duration::from_secs(1);

/// Lines of one kind logged a second at most, all clients together.
pub const LINES_PER_SECOND: u32 = 10;

/// Clients whose last line a throttle remembers at most (those of the last [`INTERVAL`] are kept).
const CLIENTS: usize = 1024;

/// One kind of line, usually a `static` beside the line it throttles, so that a flood of one kind
/// does not hide another.
#[derive(Debug)]
pub struct LogThrottle {
    state: Mutex<Option<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// Per client (an IPv4 address, or an IPv6 /64, which one client can hold whole): when its last
    /// line was logged, and how many of its lines were held back since.
    clients: HashMap<IpAddr, (Instant, u64)>,
    /// The second that `logged` counts lines in, all clients together.
    second: Option<Instant>,
    logged: u32,
    /// Lines held back because [`LINES_PER_SECOND`] had been logged, since the last line.
    crowded_out: u64,
}

/// What a line that may be logged should say it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldBack {
    /// This client's lines of this kind held back since its last one.
    pub suppressed: u64,
    /// Lines of this kind from any client held back by the cap on lines a second (or by clients
    /// forgotten with lines held back), since the last line logged.
    pub crowded_out: u64,
}

impl LogThrottle {
    pub const fn new() -> Self {
        LogThrottle { state: parking_lot::const_mutex(None) }
    }

    /// `Some` when the current task's client may log a line of this kind now, with what the line
    /// should say was held back; `None` when this one is held back.
    pub fn admit(&self) -> Option<HeldBack> {
        self.admit_at(key(client()), Instant::now())
    }

    fn admit_at(&self, client: IpAddr, now: Instant) -> Option<HeldBack> {
        let mut state = self.state.lock();
        let state = state.get_or_insert_with(State::default);
        if let Some((last, suppressed)) = state.clients.get_mut(&client)
            && now.duration_since(*last) < INTERVAL
        {
            *suppressed += 1;
            return None;
        }
        if state.second.is_none_or(|second| now.duration_since(second) >= INTERVAL) {
            state.second = Some(now);
            state.logged = 0;
        }
        if state.logged >= LINES_PER_SECOND {
            state.crowded_out += 1;
            return None;
        }
        if !state.clients.contains_key(&client) && state.clients.len() >= CLIENTS {
            // Those forgotten take what they held back with them, into `crowded_out`.
            let mut forgotten = 0;
            state.clients.retain(|_, (last, suppressed)| {
                let recent = now.duration_since(*last) < INTERVAL;
                if !recent {
                    forgotten += *suppressed;
                }
                recent
            });
            state.crowded_out += forgotten;
            if state.clients.len() >= CLIENTS {
                state.crowded_out += 1;
                return None;
            }
        }
        state.logged += 1;
        let suppressed = state.clients.insert(client, (now, 0)).map_or(0, |(_, suppressed)| suppressed);
        Some(HeldBack { suppressed, crowded_out: std::mem::take(&mut state.crowded_out) })
    }
}

impl Default for LogThrottle {
    fn default() -> Self {
        Self::new()
    }
}

/// The key a client's lines are counted under: its IPv4 address, or its IPv6 address's /64.
fn key(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn one_line_a_second_per_client_and_the_count_of_those_held_back() {
        let (throttle, start) = (LogThrottle::new(), Instant::now());
        let first = HeldBack { suppressed: 0, crowded_out: 0 };
        assert_eq!(throttle.admit_at(client(1), start), Some(first), "the first line is logged");
        assert_eq!(
            (0..5).filter_map(|_| throttle.admit_at(client(1), start)).count(),
            0,
            "not the next ones"
        );
        // Another client's first line is not hidden by the first client's flood.
        assert_eq!(throttle.admit_at(client(2), start), Some(first));
        // A second later, the next line says how many were held back.
        let later = start + INTERVAL;
        assert_eq!(throttle.admit_at(client(1), later), Some(HeldBack { suppressed: 5, crowded_out: 0 }));
        assert_eq!(throttle.admit_at(client(1), later), None);
    }

    #[test]
    fn many_clients_together_log_at_most_the_cap_a_second() {
        let (throttle, start) = (LogThrottle::new(), Instant::now());
        let logged = (0..100).filter_map(|n| throttle.admit_at(client(n), start)).count();
        assert_eq!(logged, LINES_PER_SECOND as usize);
        let next = throttle.admit_at(client(200), start + INTERVAL);
        assert_eq!(next, Some(HeldBack { suppressed: 0, crowded_out: 100 - LINES_PER_SECOND as u64 }));
    }

    #[test]
    fn the_clients_remembered_are_bounded() {
        let throttle = LogThrottle::new();
        let mut now = Instant::now();
        for n in 0..(CLIENTS as u32 * 2) {
            // Never more than the cap a second, so that every client gets a line.
            now += INTERVAL / LINES_PER_SECOND;
            let address = IpAddr::from(n.to_be_bytes());
            assert!(throttle.admit_at(address, now).is_some());
        }
        let state = throttle.state.lock();
        assert!(state.as_ref().is_some_and(|state| state.clients.len() <= CLIENTS));
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(key(a), key(b));
        assert_ne!(key(a), key(other));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(key(mapped), client(1));
    }

    #[tokio::test]
    async fn a_task_serving_a_client_is_throttled_as_that_client() {
        static THROTTLE: LogThrottle = LogThrottle::new();
        assert!(serving(client(1), async { THROTTLE.admit() }).await.is_some());
        assert!(serving(client(1), async { THROTTLE.admit() }).await.is_none());
        let spawned =
            serving(client(2), async { tokio::spawn(keeping_client(async { THROTTLE.admit() })).await });
        assert!(spawned.await.unwrap().is_some(), "another client, in a task its connection spawned");
        let spawned =
            serving(client(2), async { tokio::spawn(keeping_client(async { THROTTLE.admit() })).await });
        assert!(spawned.await.unwrap().is_none(), "the same client again");
    }
}
