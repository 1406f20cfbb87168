//! `linkem`: delays, jitters and drops the packets netfilter queues to it (NFQUEUE), one direction of
//! an emulated link per queue. The qkv network lab runs two in its router namespace, one per
//! direction, because this kernel has no `netem` qdisc. Bandwidth is `tbf`'s job, not this one's.
//!
//! Each packet is received at once and held in user space until its due time, then accepted (or
//! dropped at once if the link loses it). The nfq crate exposes no file descriptor to wait on, so the
//! loop polls the queue without blocking every `POLL` (100 µs): that is the timing error a packet can
//! get, small against the milliseconds of delay this emulates. Held packets are bounded by the kernel's
//! queue length (`--max-held`); beyond it the kernel drops new packets, as a full router queue would.
//!
//! On SIGTERM or SIGINT it releases what it holds and prints what it did.

#![forbid(unsafe_code)]

mod link;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use nfq::{Message, Queue, Verdict};

use link::{Fate, Link, LinkSpec};

/// How often the queue is polled: the timing resolution of the emulated link.
const POLL: Duration = Duration::from_micros(100);

#[derive(Parser)]
#[command(name = "linkem", about = "Delay, jitter and loss for the packets of one NFQUEUE queue")]
struct Args {
    /// The netfilter queue number (iptables -j NFQUEUE --queue-num N).
    #[arg(long)]
    queue: u16,
    /// Delay added to every packet, e.g. 25ms.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    delay: Duration,
    /// Uniform variation of the delay, ± this much; packets stay in order.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    jitter: Duration,
    /// Share of packets dropped, from 0 to 1 (0.01 is 1%).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Seed of the losses and jitter, for reproducible runs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Packets the kernel may queue for this daemon; more are dropped.
    #[arg(long, default_value_t = 65_536)]
    max_held: u32,
}

#[derive(Default)]
struct Counts {
    delivered: u64,
    dropped: u64,
    receive_errors: u64,
    /// Sum of the delays given to delivered packets, for the mean.
    delay: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let spec = LinkSpec { delay: args.delay, jitter: args.jitter, loss: args.loss };
    let mut link = Link::new(spec, args.seed).map_err(anyhow::Error::msg)?;

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("cannot handle signals")?;
    }
    let mut queue = Queue::open().context("cannot open a netfilter queue socket (are you root?)")?;
    queue.bind(args.queue).with_context(|| format!("cannot bind queue {}", args.queue))?;
    // Only the verdict matters: copy as little of each packet as the kernel allows.
    queue.set_copy_range(args.queue, 64)?;
    queue.set_queue_max_len(args.queue, args.max_held)?;
    queue.set_nonblocking(true);
    eprintln!(
        "linkem: queue {}: delay {:?} ± {:?}, loss {}, seed {}",
        args.queue, args.delay, args.jitter, args.loss, args.seed
    );

    let mut held: VecDeque<(Instant, Instant, Message)> = VecDeque::new();
    let mut counts = Counts::default();
    while !stop.load(Ordering::Relaxed) {
        loop {
            match queue.recv() {
                Ok(mut message) => {
                    let arrived = Instant::now();
                    match link.admit(arrived) {
                        Fate::Drop => {
                            message.set_verdict(Verdict::Drop);
                            queue.verdict(message).context("cannot hand the packet back to the kernel")?;
                            counts.dropped += 1;
                        }
                        Fate::DeliverAt(due) => held.push_back((arrived, due, message)),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    counts.receive_errors += 1;
                    break;
                }
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(_, due, _)| *due <= now) {
            if let Some((arrived, _, mut message)) = held.pop_front() {
                message.set_verdict(Verdict::Accept);
                queue.verdict(message).context("cannot hand the packet back to the kernel")?;
                counts.delivered += 1;
                counts.delay += now - arrived;
            }
        }
        let wait = held.front().map_or(POLL, |(_, due, _)| due.saturating_duration_since(now).min(POLL));
        std::thread::sleep(wait);
    }
    // Let go of what is held, rather than leave it to the kernel when the socket closes.
    for (_, _, mut message) in held.drain(..) {
        message.set_verdict(Verdict::Accept);
        let _ = queue.verdict(message);
    }
    let total = counts.delivered + counts.dropped;
    let mean = counts.delay.checked_div(counts.delivered.max(1) as u32).unwrap_or_default();
    eprintln!(
        "linkem: queue {}: {} packets, {} delivered (mean delay {:.2} ms), {} dropped ({:.2}%), {} receive errors",
        args.queue,
        total,
        counts.delivered,
        mean.as_secs_f64() * 1000.0,
        counts.dropped,
        100.0 * counts.dropped as f64 / total.max(1) as f64,
        counts.receive_errors
    );
    Ok(())
}
