//! When requests completed, in 10 ms slots from the start of the measured period: how throughput and
//! errors move during a run (an address change, say), and the longest time nothing succeeded.

use std::time::Duration;

use serde::Serialize;

/// The width of one slot.
pub const SLOT: Duration = Duration::from_millis(10);

/// Kept sparse, as (slot, successes, failures) in the order completions came: a run may have a
/// timeline for each of 10,000 connections, most with a completion a second, and dense slots would
/// cost each of them 16 KB for a 10 s run.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    counts: Vec<Counts>,
}

#[derive(Debug, Clone, Copy)]
struct Counts {
    slot: u32,
    ok: u64,
    errors: u64,
}

/// A timeline for programs, in coarser slots.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TimelineReport {
    pub slot_ms: u64,
    pub ok: Vec<u64>,
    pub errors: Vec<u64>,
}

impl Timeline {
    /// Counts a completion `at` after the start of the measured period.
    pub fn add(&mut self, at: Duration, ok: bool) {
        let Ok(slot) = u32::try_from(at.as_nanos() / SLOT.as_nanos()) else {
            return; // beyond 497 days: not a run this tool makes
        };
        let counts = match self.counts.last_mut() {
            Some(last) if last.slot == slot => last,
            _ => {
                self.counts.push(Counts { slot, ok: 0, errors: 0 });
                let pushed = self.counts.len() - 1;
                &mut self.counts[pushed]
            }
        };
        match ok {
            true => counts.ok += 1,
            false => counts.errors += 1,
        }
    }

    pub fn merge(&mut self, other: &Timeline) {
        self.counts.extend_from_slice(&other.counts);
    }

    /// Successes and failures per slot over the first `slots` slots.
    fn dense(&self, slots: usize) -> (Vec<u64>, Vec<u64>) {
        let (mut ok, mut errors) = (vec![0; slots], vec![0; slots]);
        for counts in &self.counts {
            if let Some(slot) = usize::try_from(counts.slot).ok().filter(|&slot| slot < slots) {
                ok[slot] += counts.ok;
                errors[slot] += counts.errors;
            }
        }
        (ok, errors)
    }

    /// The longest stretch of the first `period` in which no request succeeded, to the slot.
    pub fn longest_gap(&self, period: Duration) -> Duration {
        let slots = usize::try_from(period.as_nanos() / SLOT.as_nanos()).unwrap_or(usize::MAX);
        let (ok, _) = self.dense(slots);
        let (mut longest, mut current) = (0u32, 0u32);
        for successes in ok {
            match successes {
                0 => current += 1,
                _ => current = 0,
            }
            longest = longest.max(current);
        }
        SLOT * longest
    }

    /// The counts in slots of `slot` (a multiple of 10 ms) over the first `period`.
    pub fn report(&self, slot: Duration, period: Duration) -> TimelineReport {
        let per = (slot.as_nanos() / SLOT.as_nanos()).max(1) as usize;
        let slots = (period.as_nanos() / SLOT.as_nanos()) as usize;
        let (ok, errors) = self.dense(slots);
        let coarse = |counts: &[u64]| -> Vec<u64> {
            (0..slots.div_ceil(per))
                .map(|i| counts.iter().skip(i * per).take(per.min(slots - i * per)).sum())
                .collect()
        };
        TimelineReport {
            slot_ms: (SLOT * per as u32).as_millis() as u64,
            ok: coarse(&ok),
            errors: coarse(&errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn the_longest_gap_is_the_longest_run_of_slots_without_a_success() {
        let mut timeline = Timeline::default();
        for at in (0..1000).step_by(5) {
            // Nothing succeeds from 300 ms to 720 ms; failures do not fill the gap.
            let ok = !(300..720).contains(&at);
            timeline.add(ms(at), ok);
        }
        assert_eq!(timeline.longest_gap(ms(1000)), ms(420));
        // Silence after the last success counts too, up to the end of the period.
        assert_eq!(timeline.longest_gap(ms(1500)), ms(500));
    }

    #[test]
    fn merged_timelines_add_up_and_coarse_slots_sum_fine_ones() {
        let (mut a, mut b) = (Timeline::default(), Timeline::default());
        a.add(ms(5), true);
        a.add(ms(150), false);
        b.add(ms(95), true);
        b.add(ms(250), true);
        a.merge(&b);
        let report = a.report(ms(100), ms(300));
        assert_eq!((report.slot_ms, report.ok, report.errors), (100, vec![2, 0, 1], vec![0, 1, 0]));
    }
}
