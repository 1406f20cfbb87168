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

pub mod exposition;
mod figures;
mod scrape;
mod view;

pub use figures::{Interval, PubsubFigures, RequestFigures, Snapshot, StorageFigures};
pub use scrape::{AdminAddr, Cause, ScrapeError, scrape};
pub use view::{HEADER_EVERY, Table};
