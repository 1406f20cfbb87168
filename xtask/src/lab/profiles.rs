//! The link profiles: what each direction of the path does to packets.

use std::time::Duration;

#[derive(Debug, Clone, Copy, serde::Serialize, PartialEq)]
pub struct Profile {
    pub name: &'static str,
    /// Added in each direction, so the round trip gains twice this.
    pub one_way_delay_ms: u64,
    /// ± this in each direction.
    pub jitter_ms: u64,
    /// Share of packets lost in each direction.
    pub loss: f64,
    /// Bandwidth of each direction; `None` for no limit.
    pub mbit: Option<u32>,
}

impl Profile {
    pub const CLEAN: Profile =
        Profile { name: "clean", one_way_delay_ms: 0, jitter_ms: 0, loss: 0.0, mbit: None };
    /// The target conditions: 25 ms and 1% loss each way.
    pub const TARGET: Profile =
        Profile { name: "target", one_way_delay_ms: 25, jitter_ms: 0, loss: 0.01, mbit: None };
    /// The reconnect storm's link (`cargo xtask storm-report`): 25 ms each way and nothing else, so
    /// that what limits connection setup is the hosts, not the link.
    pub const STORM: Profile =
        Profile { name: "storm", one_way_delay_ms: 25, jitter_ms: 0, loss: 0.0, mbit: None };
    pub const ALL: [Profile; 5] = [
        Profile::CLEAN,
        Profile::TARGET,
        Profile { name: "lte", one_way_delay_ms: 25, jitter_ms: 5, loss: 0.01, mbit: Some(20) },
        Profile { name: "3g", one_way_delay_ms: 75, jitter_ms: 0, loss: 0.02, mbit: Some(2) },
        Profile { name: "lossy-wifi", one_way_delay_ms: 5, jitter_ms: 0, loss: 0.05, mbit: Some(50) },
    ];

    pub fn named(name: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.name == name)
    }

    pub fn rtt(&self) -> Duration {
        Duration::from_millis(2 * self.one_way_delay_ms)
    }

    /// Whether packets need the NFQUEUE daemon at all.
    pub fn impairs(&self) -> bool {
        self.one_way_delay_ms > 0 || self.jitter_ms > 0 || self.loss > 0.0
    }

    pub fn describe(&self) -> String {
        let bandwidth = self.mbit.map_or("unlimited".to_owned(), |m| format!("{m} Mbit/s"));
        format!(
            "RTT {} ms ± {} ms, {}% loss each way, {bandwidth}",
            2 * self.one_way_delay_ms,
            2 * self.jitter_ms,
            self.loss * 100.0
        )
    }
}
