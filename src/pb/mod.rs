//! The wire messages (generated from `proto/kv.proto` by prost) and hand-written conveniences beside them.
//!
//! The generated types are re-exported as they are; `requests`, `responses` and `values` add
//! constructors and conversions so the rest of the crate never assembles a oneof by hand.

#[allow(clippy::all, missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/abi.rs"));
}

#[cfg(any(feature = "server", feature = "web-client"))]
pub mod grpc;
#[cfg(any(feature = "server", feature = "web-client"))]
pub mod json;
mod pubsub;
mod requests;
mod responses;
pub mod status;
mod values;

pub use generated::*;
pub use pubsub::{Published, SubscriptionId};
pub use requests::COMMAND_NAMES;
pub use responses::split_response;
pub use values::Versioned;
