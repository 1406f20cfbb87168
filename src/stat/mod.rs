//! `qkv stat`: a live view of a server from its admin listener's `/metrics` (docs/OPERATIONS.md,
//! "`qkv stat`"). Each interval's figures come from two scrapes: counters' deltas as rates, the
//! request-duration histogram's bucket deltas as that interval's p50 and p99, gauges as they are.
//!
//! - `exposition`: Prometheus's text format, read into samples.
//! - `figures`: two scrapes to one [`Interval`], which is also the `--json` object.
//! - `scrape`: one GET of `/metrics` over HTTP/1.1.
//! - `view`: the table for people.
//!
//! Everything but `scrape` is pure, so the figures are tested on literal exposition text.

//!
//! The web listener's `/v1/stats` (the console's figures) serves the same [`Interval`] from the
//! server's own metrics; the scraper and the table are the command line's.

pub mod exposition;
mod figures;
#[cfg(feature = "cli")]
mod scrape;
#[cfg(feature = "cli")]
mod view;

pub use figures::{Interval, PubsubFigures, RequestFigures, Snapshot, StorageFigures};
#[cfg(feature = "cli")]
pub use scrape::{AdminAddr, Cause, ScrapeError, scrape};
#[cfg(feature = "cli")]
pub use view::{HEADER_EVERY, Table};
