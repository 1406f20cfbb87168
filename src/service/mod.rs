//! The service: what each command does. Shared by every connection of every transport, cheap to clone,
//! and ignorant of QUIC and TCP. Transports hand it decoded requests and write out the [`Reply`] frames.
//!
//! `execute` is the one place that dispatches commands; each command family has its own module.

mod error;
mod hash;
mod ping;

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;

pub use error::ServiceError;

use crate::pb::{CommandRequest, CommandResponse, command_request::RequestData, split_response};
use crate::storage::Storage;

/// The default target size of one response frame: big enough that framing overhead is negligible,
/// small enough that a client sees the first part of a large answer early.
pub const DEFAULT_RESPONSE_FRAME_TARGET: usize = 64 * 1024;

/// Tuning of the service, independent of any transport.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Responses larger than this are sent as several frames (`more = true` on all but the last).
    pub response_frame_target: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig { response_frame_target: DEFAULT_RESPONSE_FRAME_TARGET }
    }
}

/// What a command answers: most commands one frame, some (large answers, `Hgetall`) a stream of frames
/// whose `more` flags are already set.
pub enum Reply {
    One(CommandResponse),
    Stream(ReplyStream),
}

pub type ReplyStream = Pin<Box<dyn Stream<Item = CommandResponse> + Send>>;

impl From<CommandResponse> for Reply {
    fn from(response: CommandResponse) -> Self {
        Reply::One(response)
    }
}

/// The KV service over storage backend `S`.
pub struct Service<S> {
    inner: Arc<Inner<S>>,
}

struct Inner<S> {
    storage: S,
    config: ServiceConfig,
}

impl<S> Clone for Service<S> {
    fn clone(&self) -> Self {
        Service { inner: self.inner.clone() }
    }
}

impl<S: Storage> Service<S> {
    pub fn new(storage: S, config: ServiceConfig) -> Self {
        Service { inner: Arc::new(Inner { storage, config }) }
    }

    pub fn storage(&self) -> &S {
        &self.inner.storage
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.inner.config
    }

    /// Executes one request. Never fails: errors become error responses with a status and a message.
    pub async fn execute(&self, request: CommandRequest) -> Reply {
        let Some(command) = request.request_data else {
            return ServiceError::InvalidRequest("the request carries no command".into())
                .into_response()
                .into();
        };
        let storage = self.storage();
        let result = match command {
            RequestData::Hget(cmd) => hash::hget(storage, cmd).await,
            RequestData::Hgetall(cmd) => return hash::hgetall(self, cmd).await,
            RequestData::Hmget(cmd) => hash::hmget(storage, cmd).await,
            RequestData::Hset(cmd) => hash::hset(storage, cmd).await,
            RequestData::Hmset(cmd) => hash::hmset(storage, cmd).await,
            RequestData::Hdel(cmd) => hash::hdel(storage, cmd).await,
            RequestData::Hmdel(cmd) => hash::hmdel(storage, cmd).await,
            RequestData::Hexist(cmd) => hash::hexist(storage, cmd).await,
            RequestData::Hmexist(cmd) => hash::hmexist(storage, cmd).await,
            RequestData::Ping(cmd) => Ok(ping::ping(cmd)),
            RequestData::Subscribe(_) | RequestData::Unsubscribe(_) | RequestData::Publish(_) => {
                Err(ServiceError::NotImplemented("pub/sub (Subscribe, Unsubscribe, Publish)"))
            }
        };
        let response = result.unwrap_or_else(ServiceError::into_response);
        self.framed(response)
    }

    /// Spreads a response over several frames when it is larger than the frame target.
    fn framed(&self, response: CommandResponse) -> Reply {
        let mut frames = split_response(response, self.config().response_frame_target);
        match frames.len() {
            1 => Reply::One(frames.remove(0)),
            _ => Reply::Stream(Box::pin(futures_util::stream::iter(frames))),
        }
    }
}
