//! When requests are sent. A closed loop keeps a fixed number in flight; an open loop sends at a fixed
//! rate and measures each request's latency from its *intended* send time, so a server that falls
//! behind cannot hide the queueing it causes (no coordinated omission).
//!
//! Open-loop requests go out on their schedule to within tens of microseconds, released by a pacer
//! thread rather than tokio's millisecond timer; a request's latency runs from its release, or from
//! its due time if the loop got to it late: see [`super::pacer`].
//!
//! Every loop stops issuing at the deadline, then waits at most `DRAIN` for the requests still in flight;
//! those that do not finish by then count as errors. So do open-loop requests that fell due inside the
//! measured period but could not be sent before the deadline because the connection was full: a server
//! that falls behind the rate shows up in the error count, never as a shorter schedule. An open loop
//! that is itself late (its machine busy) still sends every request due before the deadline, each with
//! its lateness in its latency: answered, failed and never-sent requests add up to the schedule.
//!
//! An open loop over many connections is one schedule dealt out to them in turn (see [`open_loop`]), so
//! that requests are evenly spaced however many connections carry them.
//!
//! The loops take the request as a function of its sequence number, so that they can be tested with
//! requests whose timing the test controls, on tokio's paused clock.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use tokio::time::Instant;

use super::pacer::{Pacer, Timer};
use super::progress::Progress;
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

/// What one worker saw. A run has one per connection (open loop) or per request in flight (closed
/// loop), so one that saw little takes little room: its latencies are listed until there are many, and
/// its timeline keeps only the slots that had completions.
pub struct Tally {
    pub requests: u64,
    pub errors: u64,
    /// Requests sent (open loop: due) before the measured period and answered successfully in it:
    /// counted in neither `requests` nor the latencies, they say the server was answering a backlog.
    pub earlier: u64,
    /// Requests of the measured period answered successfully after it ended: in `requests`, but not
    /// in the period's throughput.
    pub late: u64,
    latencies: Latencies,
    pub first_error: Option<String>,
    /// When requests completed, from the start of the measured period.
    pub timeline: Timeline,
}

/// Latencies of successful requests, in microseconds: listed while they are few, counted in a
/// histogram once there are many. A histogram of this range and precision takes ~140 KB, so one per
/// worker from the start would fill 1.4 GB for 10,000 connections at 1 request/s, and the page faults
/// of allocating them all as the run starts would stall it for seconds.
enum Latencies {
    Listed(Vec<u64>),
    Counted(Box<Histogram<u64>>),
}

/// How many latencies are listed (8 KB) before they go into a histogram.
const LISTED: usize = 1024;

impl Latencies {
    fn record(&mut self, latency_us: u64) {
        match self {
            Latencies::Listed(listed) if listed.len() < LISTED => listed.push(latency_us),
            Latencies::Listed(listed) => {
                let mut counted = new_histogram();
                for &listed in listed.iter() {
                    counted.saturating_record(listed);
                }
                counted.saturating_record(latency_us);
                *self = Latencies::Counted(Box::new(counted));
            }
            Latencies::Counted(counted) => counted.saturating_record(latency_us),
        }
    }

    fn add_to(&self, histogram: &mut Histogram<u64>) {
        match self {
            Latencies::Listed(listed) => {
                listed.iter().for_each(|&latency| histogram.saturating_record(latency))
            }
            Latencies::Counted(counted) => {
                // Both have the same bounds: adding cannot fail.
                let _ = histogram.add(counted.as_ref());
            }
        }
    }
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
            earlier: 0,
            late: 0,
            latencies: Latencies::Listed(Vec::new()),
            first_error: None,
            timeline: Timeline::default(),
        }
    }

    /// Records a request that started at `started`, if that was inside the window.
    pub fn record(&mut self, window: &Window, started: Instant, result: Result<(), RequestError>) {
        self.record_due(window, started, started, result);
    }

    /// Records an open-loop request if it fell `due` inside the window, its latency from `started`
    /// (which its release may put a little before `due`, see [`super::pacer`]).
    fn record_due(
        &mut self,
        window: &Window,
        due: Instant,
        started: Instant,
        result: Result<(), RequestError>,
    ) {
        let now = Instant::now();
        if due < window.measure_from {
            if result.is_ok() && (window.measure_from..window.deadline).contains(&now) {
                self.earlier += 1;
            }
            return;
        }
        self.timeline.add(now - window.measure_from, result.is_ok());
        match result {
            Ok(()) => {
                self.requests += 1;
                self.late += u64::from(now >= window.deadline);
                self.latencies.record((now - started).as_micros() as u64);
            }
            Err(e) => self.error(e.to_string()),
        }
    }

    fn error(&mut self, message: String) {
        self.errors += 1;
        self.first_error.get_or_insert(message);
    }

    /// Latency of successful requests, in microseconds.
    pub fn latency_us(&self) -> Histogram<u64> {
        let mut histogram = new_histogram();
        self.latencies.add_to(&mut histogram);
        histogram
    }

    pub fn merge(&mut self, other: Tally) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.earlier += other.earlier;
        self.late += other.late;
        match &mut self.latencies {
            Latencies::Counted(counted) => other.latencies.add_to(counted),
            Latencies::Listed(_) => {
                let mut counted = self.latency_us();
                other.latencies.add_to(&mut counted);
                self.latencies = Latencies::Counted(Box::new(counted));
            }
        }
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
/// `request(n, sent)` sends the worker's `n`th request and waits for its answer; `sent` is the instant
/// the run counts it by (measured if in the window), for a request that counts more than its answer
/// by it too (the connect workload's connections).
pub async fn closed_worker<F, R>(request: F, window: Window, progress: Progress) -> Tally
where
    F: Fn(u64, Instant) -> R,
    R: Future<Output = Result<(), RequestError>>,
{
    let mut tally = Tally::new();
    for n in 0.. {
        let sent = Instant::now();
        if sent >= window.deadline {
            break;
        }
        let Ok(result) = tokio::time::timeout_at(window.deadline + DRAIN, request(n, sent)).await else {
            tally.error(format!("no answer within {DRAIN:?} after the run ended"));
            return tally;
        };
        progress.add_completed();
        tally.record(&window, sent, result);
    }
    tally
}

/// Open loop over connections: `rate` requests per second in all, due from `window.start`, one schedule
/// dealt out to the connections in turn (request k goes on connection k mod n). Each connection sends
/// every nth request, so at `rate / n`, from its own offset: connection c's first is due c / `rate` after
/// the start. The run's requests are thus evenly spaced, as if from one sender. Were every connection's
/// schedule to start together, n requests would fall due at each instant and queue behind each other,
/// in the client and the server: latency would grow with n at the same total rate. (Random offsets
/// would spread them too, but would put some close together by chance: the queueing that causes would
/// be the load generator's making, and it would change with the seed.)
///
/// Returns one future per connection, for the caller to run (spawn) as it likes.
pub fn open_loop<F, R>(
    connections: Vec<F>,
    rate: f64,
    max_inflight: usize,
    window: Window,
    progress: &Progress,
    pacer: &Pacer,
) -> Vec<impl Future<Output = Tally> + use<F, R>>
where
    F: Fn(u64, Instant) -> R,
    R: Future<Output = Result<(), RequestError>>,
{
    let n = connections.len().max(1);
    let rate = rate.max(f64::MIN_POSITIVE);
    connections
        .into_iter()
        .enumerate()
        .map(|(c, request)| {
            let first = Duration::from_secs_f64(c as f64 / rate);
            let timer = pacer.timer();
            open_connection(request, rate / n as f64, first, max_inflight, window, progress.clone(), timer)
        })
        .collect()
}

/// Open loop: one connection's share of the rate, `rate` requests per second due from `window.start` +
/// `first`, at most `max_inflight` at once (a request due while the connection is full waits, and its
/// wait counts in its latency). `request(n, due)` sends the `n`th request and waits for its answer; `timer`
/// releases each request when it is due.
async fn open_connection<F, R>(
    request: F,
    rate: f64,
    first: Duration,
    max_inflight: usize,
    window: Window,
    progress: Progress,
    timer: Timer,
) -> Tally
where
    F: Fn(u64, Instant) -> R,
    R: Future<Output = Result<(), RequestError>>,
{
    let interval = Duration::from_secs_f64(1.0 / rate.max(f64::MIN_POSITIVE));
    let start = window.start + first;
    let due = |n: u64| start + interval.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
    let max_inflight = max_inflight.max(1);
    let mut tally = Tally::new();
    let mut in_flight = FuturesUnordered::new();
    let mut issued: u64 = 0;
    // When the timer released the request due next, if it did (from then on its latency counts).
    let mut released = None;
    let mut deadline = std::pin::pin!(tokio::time::sleep_until(window.deadline));
    loop {
        let next_due = due(issued);
        if next_due >= window.deadline {
            break;
        }
        let now = Instant::now();
        // A request due before the deadline goes out even if the loop gets to it late (a busy machine
        // can keep a task waiting for milliseconds, or the connection was full): its latency counts
        // from when it was due, so its lateness counts like any wait.
        if (next_due <= now || released.is_some()) && in_flight.len() < max_inflight {
            // Counted by when it fell due, as its answer is.
            let answer = request(issued, next_due);
            let sent = released.take().unwrap_or(next_due);
            in_flight.push(async move { (next_due, sent, answer.await) });
            issued += 1;
            continue; // everything already due goes out at once: timers are coarser than the interval
        }
        if now >= window.deadline {
            break; // full at the deadline: the rest were never sent
        }
        tokio::select! {
            biased; // answers first: the room they make is used at once
            Some((due, sent, result)) = in_flight.next(), if !in_flight.is_empty() => {
                progress.add_completed();
                tally.record_due(&window, due, sent, result);
            }
            at = timer.until(next_due), if in_flight.len() < max_inflight => released = Some(at),
            () = &mut deadline => {}
        }
    }
    // How many requests fall due before `t`: those with start + n × interval < t.
    let due_before = |t: Instant| {
        let elapsed = t.saturating_duration_since(start).as_nanos();
        u64::try_from(elapsed.div_ceil(interval.as_nanos().max(1))).unwrap_or(u64::MAX)
    };
    let first_unsent = issued.max(due_before(window.measure_from));
    let unsent = due_before(window.deadline).saturating_sub(first_unsent);
    if unsent > 0 {
        tally.errors += unsent;
        // In the timeline where each fell due: an outage shows where it was.
        for n in first_unsent..first_unsent + unsent {
            tally.timeline.add(due(n).saturating_duration_since(window.measure_from), false);
        }
        tally.first_error.get_or_insert(format!(
            "{unsent} requests fell due but were never sent: all {max_inflight} in flight were still waiting \
             (the server fell behind the rate or stopped answering, or --inflight is too low for it)"
        ));
    }
    let drained = tokio::time::timeout(DRAIN, async {
        while let Some((due, sent, result)) = in_flight.next().await {
            progress.add_completed();
            tally.record_due(&window, due, sent, result);
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
    use std::sync::Arc;

    use parking_lot::Mutex;

    use futures_util::future::join_all;

    use super::*;

    // On tokio's paused clock: time moves only when every task waits on a timer, so these tests count
    // exactly, however busy the machine is.

    /// A request sent (or due) in the warm-up and answered in the measured period is not the period's:
    /// not in its requests or latencies, but counted apart, so that a run whose own requests all
    /// failed can say the server was answering a backlog.
    #[test]
    fn an_answer_to_a_warm_up_request_counts_apart() {
        let now = Instant::now();
        let window = Window {
            start: now - Duration::from_millis(200),
            measure_from: now - Duration::from_millis(100),
            deadline: now + Duration::from_secs(60),
        };
        let mut tally = Tally::new();
        let in_warm_up = now - Duration::from_millis(150);
        tally.record_due(&window, in_warm_up, in_warm_up, Ok(()));
        tally.record_due(&window, in_warm_up, in_warm_up, Err(RequestError::Other("lost".into())));
        assert_eq!((tally.requests, tally.errors, tally.earlier), (0, 0, 1));
        let in_period = now - Duration::from_millis(50);
        tally.record_due(&window, in_period, in_period, Ok(()));
        assert_eq!((tally.requests, tally.errors, tally.earlier), (1, 0, 1));
        // Answered after the period: one of its requests, but not of its throughput.
        let ended = Window { deadline: now - Duration::from_millis(10), ..window };
        tally.record_due(&ended, in_period, in_period, Ok(()));
        assert_eq!((tally.requests, tally.late), (2, 1));
    }

    fn window(warmup_ms: u64, duration_ms: u64) -> Window {
        Window::new(Duration::from_millis(warmup_ms), Duration::from_millis(duration_ms))
    }

    async fn answer_after(delay: Duration) -> Result<(), RequestError> {
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// One connection's open loop at 1000/s from the window's start, on tokio's timers.
    async fn at_1000_per_second<F, R>(request: F, max_inflight: usize, window: Window) -> Tally
    where
        F: Fn(u64, Instant) -> R,
        R: Future<Output = Result<(), RequestError>>,
    {
        let timer = Pacer::tokio().timer();
        open_connection(request, 1000.0, Duration::ZERO, max_inflight, window, Progress::new(), timer).await
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_sends_every_request_due_in_the_window_and_none_of_the_warm_up() {
        // 1000/s: one due every millisecond (tokio's timer's resolution); 100 ms of warm-up, then 250 ms
        // measured → exactly 250 recorded.
        let request = |_, _| async { Ok(()) };
        let tally = at_1000_per_second(request, 8, window(100, 250)).await;
        assert_eq!(tally.requests, 250);
        assert_eq!(tally.errors, 0, "{:?}", tally.first_error);
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_latency_runs_from_the_intended_send_time() {
        // Due every 1 ms, but each answer takes 10 ms and only one may be in flight: the server has
        // fallen behind. Measured from the actual send, every latency would be 10 ms; measured from
        // when each request was due, the queue that builds up is visible.
        let request = |_, _| answer_after(Duration::from_millis(10));
        let tally = at_1000_per_second(request, 1, window(0, 200)).await;
        // Sent at 0, 10, ... 200 ms (the answer at the deadline made room for one more), the nth due at
        // n ms: the last waited 190 ms.
        assert_eq!(tally.requests, 21);
        assert_eq!(tally.latency_us().max() / 1000, 190, "queueing was hidden");
        // The requests that fell due but could not be sent are errors, not a shorter schedule.
        assert_eq!(tally.errors, 179, "{:?}", tally.first_error);
        assert!(tally.first_error.as_ref().is_some_and(|e| e.contains("never sent")));
        // The timeline has them too, where they fell due (the 22nd on, at 21 ms): 79 in the first 100 ms,
        // 100 in the second.
        let timeline = tally.timeline.report(Duration::from_millis(100), Duration::from_millis(200));
        assert_eq!(timeline.errors, [79, 100], "{timeline:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_loop_spreads_the_requests_of_its_connections_evenly() {
        // Ten connections at 1 request/s each: one schedule of 10/s, so one request every 100 ms, never
        // two at once (had every connection started its schedule at once, all ten would go out at 0).
        let window = window(0, 1000);
        let sent = Arc::new(Mutex::new(Vec::new()));
        let connections = (0..10)
            .map(|_| {
                let sent = sent.clone();
                move |_, _| {
                    sent.lock().push(window.start.elapsed());
                    async { Ok(()) }
                }
            })
            .collect();
        let tallies =
            join_all(open_loop(connections, 10.0, 1, window, &Progress::new(), &Pacer::tokio())).await;
        assert!(tallies.iter().all(|t| t.requests == 1 && t.errors == 0));
        let mut sent = sent.lock().clone();
        sent.sort();
        let every_100_ms: Vec<_> = (0..10).map(|k| Duration::from_millis(100 * k)).collect();
        assert_eq!(sent, every_100_ms);
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_keeps_its_request_in_flight_and_stops_at_the_deadline() {
        let started = Instant::now();
        let tally =
            closed_worker(|_, _| answer_after(Duration::from_millis(5)), window(0, 100), Progress::new())
                .await;
        assert_eq!(started.elapsed(), Duration::from_millis(100), "the loop outlived its deadline");
        assert_eq!(tally.requests, 20, "100 ms at 5 ms each");
        assert_eq!(tally.latency_us().min(), 5000, "every request takes its 5 ms");
    }

    #[test]
    fn latencies_are_all_kept_whether_listed_or_counted() {
        let (mut few, mut many) = (Tally::new(), Tally::new());
        (1..=10).for_each(|us| few.latencies.record(us));
        (1..=5000).for_each(|us| many.latencies.record(us));
        assert!(matches!(few.latencies, Latencies::Listed(_)), "ten latencies take no histogram");
        assert!(matches!(many.latencies, Latencies::Counted(_)));
        let mut all = Tally::new();
        all.merge(few);
        all.merge(many);
        let latency_us = all.latency_us();
        assert_eq!((latency_us.len(), latency_us.min()), (5010, 1));
        assert_eq!(latency_us.count_between(1, 10), 20, "1-10 µs from both");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_counted_with_the_first_reason() {
        let refused = |n, _| async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Err(RequestError::Other(format!("refused #{n}")))
        };
        let tally = closed_worker(refused, window(0, 20), Progress::new()).await;
        assert_eq!((tally.requests, tally.errors), (0, 20));
        assert_eq!(tally.first_error.as_deref(), Some("refused #0"));
    }
}
