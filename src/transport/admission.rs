//! Admitting connections: one place, shared by every listener, decides whether a new connection may be
//! served. It needs a place under the connection limit (`--max-connections`, all transports together)
//! and its fixed share of the server-wide memory budget: what the connection can make the server hold
//! whatever it does (QUIC: its flow-control windows; TCP: its read and TLS buffers), on top of the
//! bytes it later charges as it sends requests and waits for answers. A connection that cannot have
//! both is refused, so that the budget, not a product of limits, is the worst case.

use std::fmt;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Transport;
use super::log_throttle::{HeldBack, LogThrottle};
use crate::memory::{Charge, MemoryBudget};
use crate::metrics::{self, OpenConnection};

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections` connections are being served.
    ConnectionLimit,
    /// The memory budget cannot take the connection's fixed share.
    Memory,
}

impl Refusal {
    /// The flag of the limit that refused.
    pub fn limit(self) -> metrics::Limit {
        match self {
            Refusal::ConnectionLimit => metrics::Limit::MaxConnections,
            Refusal::Memory => metrics::Limit::ConnectionMemory,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::ConnectionLimit => "the connection limit (--max-connections) is reached",
            Refusal::Memory => "the connection memory budget (--connection-memory) is spent",
        })
    }
}

/// What an admitted connection holds until it ends: its place and its fixed share of memory.
#[derive(Debug)]
pub struct Admitted {
    _place: OwnedSemaphorePermit,
    _share: Charge,
    _open: OpenConnection,
}

/// The server's admission of connections. Cheap to clone; clones share the limits.
#[derive(Clone)]
pub struct Admission {
    places: Arc<Semaphore>,
    max_connections: usize,
    memory: MemoryBudget,
    /// At most one warning a second, so that a flood of refusals does not flood the log too: the accept
    /// loops refuse outside any client's task, so every refusal counts as one client's
    /// (`log_throttle`).
    warnings: Arc<LogThrottle>,
}

impl Admission {
    pub fn new(max_connections: usize, memory: MemoryBudget) -> Self {
        Admission {
            places: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            memory,
            warnings: Arc::default(),
        }
    }

    /// The budget connections draw from.
    pub fn memory(&self) -> &MemoryBudget {
        &self.memory
    }

    /// Admits a connection on `transport` whose fixed share of memory is `share` bytes, or says why
    /// not (and logs it, at most once a second). Both count in the metrics.
    pub fn admit(&self, transport: Transport, share: usize) -> Result<Admitted, Refusal> {
        let refusal = match self.places.clone().try_acquire_owned() {
            Err(_) => Refusal::ConnectionLimit,
            Ok(place) => match self.memory.try_charge(share) {
                Some(share) => {
                    let open = OpenConnection::new(transport);
                    return Ok(Admitted { _place: place, _share: share, _open: open });
                }
                None => Refusal::Memory,
            },
        };
        metrics::connection_refused(transport, refusal.limit());
        if let Some(HeldBack { suppressed, crowded_out }) = self.warnings.admit() {
            tracing::warn!(
                reason = %refusal,
                suppressed,
                crowded_out,
                max_connections = self.max_connections,
                memory_used = self.memory.used(),
                memory_total = self.memory.total(),
                "refusing new connections"
            );
        }
        Err(refusal)
    }

    /// Connections served now.
    pub fn connections(&self) -> usize {
        self.max_connections - self.places.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_needs_a_place_and_its_share_and_gives_both_back() {
        let admission = Admission::new(2, MemoryBudget::new(1000));
        let first = admission.admit(Transport::Quic, 600).unwrap();
        assert_eq!(admission.admit(Transport::Quic, 600).unwrap_err(), Refusal::Memory);
        assert_eq!(admission.connections(), 1, "a refused connection keeps no place");
        let second = admission.admit(Transport::Quic, 300).unwrap();
        assert_eq!(admission.admit(Transport::Quic, 1).unwrap_err(), Refusal::ConnectionLimit);
        assert_eq!(admission.memory().used(), 900, "a refused connection keeps no memory");
        drop((first, second));
        assert_eq!((admission.connections(), admission.memory().used()), (0, 0));
    }
}
