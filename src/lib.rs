//! qkv: a key-value server whose primary transport is QUIC.
//!
//! A request travels in a straight line through these layers, each importing only the ones below it:
//!
//! ```text
//! socket → transport (quic) → frame codec → service (dispatch) → storage backend
//! ```
//!
//! - [`pb`]: the wire messages (generated from `proto/kv.proto`) and their conveniences.
//! - `storage`: the async `Storage` trait and its backends.
//! - `service`: what each command does; shared by all connections and transports.
//! - `memory`: the memory the process may use, and the server-wide budget of what connections can
//!   make it hold.
//! - `pubsub`: topics, subscribers and their bounded queues (the broker behind Subscribe, Unsubscribe
//!   and Publish).
//! - [`transport`]: frames on byte streams, and the QUIC listener and connector.
//! - [`tls`] and `certs`: rustls configurations (ring, TLS 1.3, ALPN `qkv/1`) and certificate files.
//! - `server` and [`client`]: wiring, limits and graceful shutdown; the typed async client.
//! - `metrics`: what the server counts, for the admin listener's `/metrics`.
//! - `bench`: the load generator behind `qkv bench`, built on the client (here rather than in the
//!   binary, so the CLI holds no logic of its own).
//! - `stat`: `qkv stat`'s live view of a server, from its admin listener's Prometheus metrics.
//! - `web`: the web listener, REST and gRPC adapters onto the same service (docs/HTTP.md).
//!
//! The modules named without a link are the server's and the CLI's: only the features below build
//! them (plain names, so that a client-only build's documentation has no broken links).
//!
//! Features: `server` adds the server (service, stores, broker, listeners, certificate generation);
//! `cli` (the default) adds the load generator, `qkv stat`'s scraper and what the `qkv` binary needs.
//! With `default-features = false` the crate is the client and the protocol only.
//!
//! The wire protocol is specified in `docs/PROTOCOL.md`; the design and its measurements in
//! `docs/DESIGN.md`.
#![forbid(unsafe_code)]
// What a client-only user sees is documented item by item (the server's items are documented in
// docs/DESIGN.md and at their definitions, not all as API).
#![cfg_attr(not(feature = "server"), warn(missing_docs))]

#[cfg(feature = "server")]
pub mod admin;
pub mod client;
pub mod pb;
pub mod tls;
pub mod transport;

#[cfg(feature = "server")]
pub mod certs;
#[cfg(feature = "server")]
pub mod memory;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod pubsub;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "server")]
pub mod storage;

#[cfg(feature = "cli")]
pub mod bench;
#[cfg(feature = "server")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "server")]
pub mod stat;
#[cfg(feature = "server")]
pub mod web;

pub use client::Client;
