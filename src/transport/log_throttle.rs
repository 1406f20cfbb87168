//! Lines a client can cause at will (a refused connection, a failed handshake, a bad frame) are logged
//! at most once a second each, with how many were left out since the last: an operator still sees
//! that it happens and to whom, and a client opening thousands of bad connections cannot fill the
//! disk or bury the other lines.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// At most one line a second, counting the ones it holds back. One per kind of line, usually a
/// `static` beside the line it throttles, so that a flood of one kind does not hide another.
#[derive(Debug, Default)]
pub struct LogThrottle {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last: Option<Instant>,
    suppressed: u64,
}

/// How far apart throttled lines are.
const INTERVAL: Duration = Duration::from_secs(1);

impl LogThrottle {
    pub const fn new() -> Self {
        LogThrottle { state: parking_lot::const_mutex(State { last: None, suppressed: 0 }) }
    }

    /// `Some(suppressed)` when a line may be logged now, `suppressed` being how many were held back
    /// since the last one (for the line to say); `None` when this one is held back.
    pub fn admit(&self) -> Option<u64> {
        let mut state = self.state.lock();
        let now = Instant::now();
        if state.last.is_some_and(|at| now.duration_since(at) < INTERVAL) {
            state.suppressed += 1;
            return None;
        }
        state.last = Some(now);
        Some(std::mem::take(&mut state.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_and_the_count_of_those_held_back() {
        let throttle = LogThrottle::new();
        assert_eq!(throttle.admit(), Some(0), "the first line is logged");
        assert_eq!((0..5).filter_map(|_| throttle.admit()).count(), 0, "the next ones, at once, are not");
        // A second later (as if), the next line says how many were held back.
        throttle.state.lock().last = Some(Instant::now() - INTERVAL);
        assert_eq!(throttle.admit(), Some(5));
        assert_eq!(throttle.admit(), None);
    }
}
