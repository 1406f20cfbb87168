//! The model of one direction of a link: each packet is lost with a fixed probability, or delivered
//! after a base delay plus jitter. Packets leave in the order they arrived (a packet never overtakes
//! the one before it, as on a real radio link or a single queue).
//!
//! Jitter is uniform within ±jitter but drawn once per `JITTER_PERIOD` (10 ms), not per packet: a real
//! path's delay wanders with its queues and radio, and packets sent close together see about the same
//! delay. Drawn per packet, with packets in order, every packet would wait for the slowest before it,
//! and dense traffic would see the base delay plus nearly the whole jitter (netem avoids that only by
//! reordering, which TCP takes for loss).
//!
//! The model is pure: the daemon asks it for each packet's fate, and tests drive it with chosen times.

use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

/// What happens to a link's packets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkSpec {
    /// Added to every packet.
    pub delay: Duration,
    /// Each packet's delay varies uniformly within ±`jitter` of `delay` (never below zero).
    pub jitter: Duration,
    /// Probability that a packet is dropped, from 0 to 1, each packet independently.
    pub loss: f64,
}

/// A packet's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Drop,
    /// Release the packet at this time.
    DeliverAt(Instant),
}

pub struct Link {
    spec: LinkSpec,
    rng: SmallRng,
    /// When the previous packet leaves: no packet leaves before it.
    last_due: Option<Instant>,
    /// The jitter of packets arriving before `until`.
    jitter: Option<(Instant, f64)>,
}

/// How long one draw of the jitter lasts.
pub const JITTER_PERIOD: Duration = Duration::from_millis(10);

impl Link {
    /// `seed` makes the losses and delays of a run reproducible.
    pub fn new(spec: LinkSpec, seed: u64) -> Result<Self, String> {
        if !(0.0..=1.0).contains(&spec.loss) {
            return Err(format!("loss must be between 0 and 1, not {}", spec.loss));
        }
        Ok(Link { spec, rng: SmallRng::seed_from_u64(seed), last_due: None, jitter: None })
    }

    /// The fate of a packet that arrived at `arrived`. Arrival times must not go backwards.
    pub fn admit(&mut self, arrived: Instant) -> Fate {
        if self.spec.loss > 0.0 && self.rng.random_bool(self.spec.loss) {
            return Fate::Drop;
        }
        let offset = match self.jitter {
            Some((until, offset)) if arrived < until => offset,
            _ => {
                let jitter = self.spec.jitter.as_secs_f64();
                let offset = if jitter > 0.0 { self.rng.random_range(-jitter..=jitter) } else { 0.0 };
                self.jitter = Some((arrived + JITTER_PERIOD, offset));
                offset
            }
        };
        let delay = Duration::from_secs_f64((self.spec.delay.as_secs_f64() + offset).max(0.0));
        let due = (arrived + delay).max(self.last_due.unwrap_or(arrived));
        self.last_due = Some(due);
        Fate::DeliverAt(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKETS: usize = 100_000;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// Packets arriving every 100 µs, and the delay each was given (`None` if dropped).
    fn delays(spec: LinkSpec, seed: u64) -> Vec<Option<Duration>> {
        let mut link = Link::new(spec, seed).unwrap();
        let start = Instant::now();
        (0..PACKETS)
            .map(|i| {
                let arrived = start + Duration::from_micros(100 * i as u64);
                match link.admit(arrived) {
                    Fate::Drop => None,
                    Fate::DeliverAt(due) => Some(due - arrived),
                }
            })
            .collect()
    }

    #[test]
    fn without_jitter_every_packet_gets_exactly_the_delay() {
        let spec = LinkSpec { delay: ms(25), jitter: Duration::ZERO, loss: 0.0 };
        assert!(delays(spec, 1).iter().all(|d| *d == Some(ms(25))));
    }

    #[test]
    fn the_loss_rate_is_the_one_asked_for() {
        for loss in [0.01, 0.05] {
            let spec = LinkSpec { delay: ms(1), jitter: Duration::ZERO, loss };
            let lost = delays(spec, 7).iter().filter(|d| d.is_none()).count() as f64 / PACKETS as f64;
            // 100,000 draws: the standard deviation of the rate is under 0.07 percentage points.
            assert!((lost - loss).abs() < 0.003, "asked {loss}, lost {lost}");
        }
        let none = LinkSpec { delay: ms(1), jitter: Duration::ZERO, loss: 0.0 };
        assert!(delays(none, 7).iter().all(Option::is_some));
        let all = LinkSpec { delay: ms(1), jitter: Duration::ZERO, loss: 1.0 };
        assert!(delays(all, 7).iter().all(Option::is_none));
    }

    #[test]
    fn jitter_spreads_delays_around_the_base_without_reordering() {
        // Packets 1 ms apart with ±10 ms of jitter: when the delay drops, FIFO holds packets back
        // rather than let them overtake.
        let spec = LinkSpec { delay: ms(25), jitter: ms(10), loss: 0.0 };
        let mut link = Link::new(spec, 3).unwrap();
        let start = Instant::now();
        let mut last = start;
        let mut total = Duration::ZERO;
        let (mut shortest, mut longest) = (Duration::MAX, Duration::ZERO);
        for i in 0..10_000u64 {
            let arrived = start + ms(i);
            let Fate::DeliverAt(due) = link.admit(arrived) else { panic!("no loss was asked for") };
            assert!(due >= last, "packet {i} overtook the one before it");
            last = due;
            let delay = due - arrived;
            total += delay;
            (shortest, longest) = (shortest.min(delay), longest.max(delay));
        }
        assert!(shortest >= ms(15) && longest <= ms(35), "{shortest:?}..{longest:?}");
        // FIFO only ever adds delay, so the mean sits a little above the base.
        let mean = total / 10_000;
        assert!(mean >= ms(25) && mean <= ms(27), "mean {mean:?}");
        // The delay does vary, over nearly the whole range asked for.
        assert!(longest >= ms(33) && shortest <= ms(17), "{shortest:?}..{longest:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let spec = LinkSpec { delay: ms(50), jitter: ms(10), loss: 0.02 };
        assert_eq!(delays(spec, 42), delays(spec, 42));
        assert_ne!(delays(spec, 42), delays(spec, 43));
    }

    #[test]
    fn an_impossible_loss_rate_is_refused() {
        let spec = LinkSpec { delay: ms(1), jitter: Duration::ZERO, loss: 1.5 };
        assert!(Link::new(spec, 1).is_err());
    }
}
