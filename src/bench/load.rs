//! When requests are sent. A closed loop keeps a fixed number in flight; an open loop sends at a fixed
//! rate and measures each request's latency from its *intended* send time, so a server that falls
//! behind cannot hide the queueing it causes (no coordinated omission).
//!
//! Open-loop send times are accurate to microseconds: see [`wait_until`].
//!
//! Every loop stops issuing at the deadline, then waits at most `DRAIN` for the requests still in flight;
//! those that do not finish by then count as errors. So do open-loop requests that fell due inside the
//! measured period but could not be sent before the deadline because the connection was full: a server
//! that falls behind the rate shows up in the error count, never as a shorter schedule.
//!
//! The loops take the request as a function of its sequence number, so that they can be tested with
//! requests whose timing the test controls.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use tokio::time::Instant;

use super::timeline::Timeline;
use super::workload::RequestError;

/// How long in-flight requests may take to finish after the deadline.
const DRAIN: Duration = Duration::from_secs(5);

/// The run's clock: it starts at `start`, requests that start (or fall due) before `measure_from` are
/// warm-up and not recorded, and none is sent at or after `deadline`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub measure_from: Instant,
    pub deadline: Instant,
}

impl Window {
    pub fn new(warmup: Duration, duration: Duration) -> Self {
        let start = Instant::now();
        Window { start, measure_from: start + warmup, deadline: start + warmup + duration }
    }
}

/// What one worker saw.
pub struct Tally {
    pub requests: u64,
    pub errors: u64,
    /// Latency of successful requests, in microseconds.
    pub latency_us: Histogram<u64>,
    pub first_error: Option<String>,
    /// When requests completed, from the start of the measured period.
    pub timeline: Timeline,
}

pub fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits; longer latencies are clamped, never dropped.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant, valid histogram bounds")
}

impl Tally {
    pub fn new() -> Self {
        Tally {
            requests: 0,
            errors: 0,
            latency_us: new_histogram(),
            first_error: None,
            timeline: Timeline::default(),
        }
    }

    /// Records a request that started (or was due) at `started`, if that was inside the window.
    pub fn record(&mut self, window: &Window, started: Instant, result: Result<(), RequestError>) {
        if started < window.measure_from {
            return;
        }
        let now = Instant::now();
        self.timeline.add(now - window.measure_from, result.is_ok());
        match result {
            Ok(()) => {
                self.requests += 1;
                self.latency_us.saturating_record((now - started).as_micros() as u64);
            }
            Err(e) => self.error(e.to_string()),
        }
    }

    fn error(&mut self, message: String) {
        self.errors += 1;
        self.first_error.get_or_insert(message);
    }

    pub fn merge(&mut self, other: Tally) {
        self.requests += other.requests;
        self.errors += other.errors;
        let _ = self.latency_us.add(&other.latency_us);
        self.first_error = self.first_error.take().or(other.first_error);
        self.timeline.merge(&other.timeline);
    }
}

impl Default for Tally {
    fn default() -> Self {
        Self::new()
    }
}

/// Closed loop: one request in flight at all times, the next sent when the last is answered.
/// `request(n)` sends the worker's `n`th request and waits for its answer.
pub async fn closed_worker<F, R>(request: F, window: Window, completed: Arc<AtomicU64>) -> Tally
where
    F: Fn(u64) -> R,
    R: Future<Output = Result<(), RequestError>>,
{
    let mut tally = Tally::new();
    for n in 0.. {
        let sent = Instant::now();
        if sent >= window.deadline {
            break;
        }
        let Ok(result) = tokio::time::timeout_at(window.deadline + DRAIN, request(n)).await else {
            tally.error(format!("no answer within {DRAIN:?} after the run ended"));
            return tally;
        };
        completed.fetch_add(1, Ordering::Relaxed);
        tally.record(&window, sent, result);
    }
    tally
}

/// Waits until `due` to within microseconds. tokio's timer wakes up to a millisecond late, which an open
/// loop would count against the server (latency runs from when each request was due), so the last
/// millisecond is spent yielding instead: it costs the load generator's core, never the server's.
async fn wait_until(due: Instant) {
    const TIMER_SLACK: Duration = Duration::from_millis(1);
    if let Some(early) = due.checked_sub(TIMER_SLACK)
        && early > Instant::now()
    {
        tokio::time::sleep_until(early).await;
    }
    while Instant::now() < due {
        tokio::task::yield_now().await;
    }
}

/// Open loop: one connection's share of the rate, `rate` requests per second due from `window.start`,
/// at most `max_inflight` at once (a request due while the connection is full waits, and its wait counts
/// in its latency). `request(n)` sends the `n`th request and waits for its answer.
pub async fn open_connection<F, R>(
    request: F,
    rate: f64,
    max_inflight: usize,
    window: Window,
    completed: Arc<AtomicU64>,
) -> Tally
where
    F: Fn(u64) -> R,
    R: Future<Output = Result<(), RequestError>>,
{
    let interval = Duration::from_secs_f64(1.0 / rate.max(f64::MIN_POSITIVE));
    let due = |n: u64| window.start + interval.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
    let max_inflight = max_inflight.max(1);
    let mut tally = Tally::new();
    let mut in_flight = FuturesUnordered::new();
    let mut issued: u64 = 0;
    loop {
        let next_due = due(issued);
        let now = Instant::now();
        if next_due >= window.deadline || now >= window.deadline {
            break;
        }
        if next_due <= now && in_flight.len() < max_inflight {
            let answer = request(issued);
            in_flight.push(async move { (next_due, answer.await) });
            issued += 1;
            continue; // everything already due goes out at once: timers are coarser than the interval
        }
        tokio::select! {
            Some((due, result)) = in_flight.next(), if !in_flight.is_empty() => {
                completed.fetch_add(1, Ordering::Relaxed);
                tally.record(&window, due, result);
            }
            _ = wait_until(next_due), if in_flight.len() < max_inflight => {}
            _ = tokio::time::sleep_until(window.deadline) => {}
        }
    }
    // How many requests fall due before `t`: those with start + n × interval < t.
    let due_before = |t: Instant| {
        let elapsed = t.saturating_duration_since(window.start).as_nanos();
        u64::try_from(elapsed.div_ceil(interval.as_nanos().max(1))).unwrap_or(u64::MAX)
    };
    let unsent = due_before(window.deadline).saturating_sub(issued.max(due_before(window.measure_from)));
    if unsent > 0 {
        tally.errors += unsent;
        tally.first_error.get_or_insert(format!(
            "{unsent} requests fell due but were never sent: all {max_inflight} in flight were still waiting \
             (the server fell behind the rate, or --inflight is too low for it)"
        ));
    }
    let drained = tokio::time::timeout(DRAIN, async {
        while let Some((due, result)) = in_flight.next().await {
            completed.fetch_add(1, Ordering::Relaxed);
            tally.record(&window, due, result);
        }
    })
    .await;
    if drained.is_err() {
        for _ in 0..in_flight.len() {
            tally.error(format!("no answer within {DRAIN:?} after the run ended"));
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(warmup_ms: u64, duration_ms: u64) -> Window {
        Window::new(Duration::from_millis(warmup_ms), Duration::from_millis(duration_ms))
    }

    async fn answer_after(delay: Duration) -> Result<(), RequestError> {
        tokio::time::sleep(delay).await;
        Ok(())
    }

    #[tokio::test]
    async fn open_loop_sends_every_request_due_in_the_window_and_none_of_the_warm_up() {
        // 2000/s: one due every 500 µs; 100 ms of warm-up, then 250 ms measured → exactly 500 recorded.
        let tally =
            open_connection(|_| async { Ok(()) }, 2000.0, 8, window(100, 250), Arc::new(AtomicU64::new(0)))
                .await;
        assert_eq!(tally.requests, 500);
        assert_eq!(tally.errors, 0, "{:?}", tally.first_error);
    }

    #[tokio::test]
    async fn open_loop_latency_runs_from_the_intended_send_time() {
        // Due every 1 ms, but each answer takes 10 ms and only one may be in flight: the server has
        // fallen behind. Measured from the actual send, every latency would be ~10 ms; measured from
        // when each request was due, the queue that builds up is visible.
        let tally = open_connection(
            |_| answer_after(Duration::from_millis(10)),
            1000.0,
            1,
            window(0, 200),
            Arc::new(AtomicU64::new(0)),
        )
        .await;
        assert!(tally.requests >= 5, "{} answered", tally.requests);
        let max_ms = tally.latency_us.max() / 1000;
        assert!(max_ms >= 40, "the longest wait was {max_ms} ms: queueing was hidden");
        // The requests that fell due but could not be sent are errors, not a shorter schedule.
        assert_eq!(tally.requests + tally.errors, 200, "{:?}", tally.first_error);
        assert!(tally.first_error.is_some_and(|e| e.contains("never sent")));
    }

    #[tokio::test]
    async fn closed_loop_keeps_its_request_in_flight_and_stops_at_the_deadline() {
        let started = Instant::now();
        let tally =
            closed_worker(|_| answer_after(Duration::from_millis(5)), window(0, 100), Arc::default()).await;
        assert!(started.elapsed() < Duration::from_secs(1), "the loop outlived its deadline");
        assert!((2..=20).contains(&tally.requests), "{} requests in 100 ms at 5 ms each", tally.requests);
        assert!(
            tally.latency_us.min() >= 5000,
            "a latency shorter than the request: {}",
            tally.latency_us.min()
        );
    }

    #[tokio::test]
    async fn failures_are_counted_with_the_first_reason() {
        let tally = closed_worker(
            |n| async move { Err(RequestError::Other(format!("refused #{n}"))) },
            window(0, 20),
            Arc::default(),
        )
        .await;
        assert_eq!(tally.requests, 0);
        assert!(tally.errors > 0);
        assert_eq!(tally.first_error.as_deref(), Some("refused #0"));
    }
}
