//! Constructors for every request, so callers write `CommandRequest::hget("t", "k")`.

use bytes::Bytes;

use super::{
    CommandRequest, Hdel, Hexist, Hget, Hgetall, Hmdel, Hmexist, Hmget, Hmset, Hset, Kvpair, Ping, Publish,
    Subscribe, Unsubscribe, Value, command_request::RequestData,
};

fn keys(keys: impl IntoIterator<Item = impl Into<String>>) -> Vec<String> {
    keys.into_iter().map(Into::into).collect()
}

impl From<RequestData> for CommandRequest {
    fn from(data: RequestData) -> Self {
        CommandRequest { request_data: Some(data) }
    }
}

impl Kvpair {
    /// A key and its value, for `Hmset`.
    pub fn new(key: impl Into<String>, value: impl Into<Value>) -> Self {
        Kvpair { key: key.into(), value: Some(value.into()) }
    }
}

impl CommandRequest {
    /// `Hget`: a key's value and version.
    pub fn hget(table: impl Into<String>, key: impl Into<String>) -> Self {
        RequestData::Hget(Hget { table: table.into(), key: key.into() }).into()
    }

    /// `Hgetall`: a whole table, in key order (an answer of several frames when large).
    pub fn hgetall(table: impl Into<String>) -> Self {
        Self::hgetall_page(table, "", 0)
    }

    /// One page of a table read across requests: at most `limit` entries (0: all) in key order,
    /// starting after key `after` (empty: the first key).
    pub fn hgetall_page(table: impl Into<String>, after: impl Into<String>, limit: u32) -> Self {
        RequestData::Hgetall(Hgetall { table: table.into(), after: after.into(), limit }).into()
    }

    /// `Hmget`: several keys' values and versions, in the order given.
    pub fn hmget(table: impl Into<String>, keys: impl IntoIterator<Item = impl Into<String>>) -> Self {
        RequestData::Hmget(Hmget { table: table.into(), keys: self::keys(keys) }).into()
    }

    /// `Hset`: writes a key unconditionally.
    pub fn hset(table: impl Into<String>, key: impl Into<String>, value: impl Into<Value>) -> Self {
        Self::hset_expecting(table, key, value, None)
    }

    /// A conditional `Hset`: written only if the key's version is `expected_version` (0: key absent).
    pub fn hset_if_version(
        table: impl Into<String>,
        key: impl Into<String>,
        value: impl Into<Value>,
        expected_version: u64,
    ) -> Self {
        Self::hset_expecting(table, key, value, Some(expected_version))
    }

    /// An `Hset` that is conditional when `expected_version` is given (0: key absent).
    pub fn hset_expecting(
        table: impl Into<String>,
        key: impl Into<String>,
        value: impl Into<Value>,
        expected_version: Option<u64>,
    ) -> Self {
        RequestData::Hset(Hset { table: table.into(), pair: Some(Kvpair::new(key, value)), expected_version })
            .into()
    }

    /// `Hmset`: writes several keys unconditionally, in order.
    pub fn hmset(table: impl Into<String>, pairs: impl IntoIterator<Item = Kvpair>) -> Self {
        RequestData::Hmset(Hmset { table: table.into(), pairs: pairs.into_iter().collect() }).into()
    }

    /// `Hdel`: deletes a key unconditionally (a missing key is a success).
    pub fn hdel(table: impl Into<String>, key: impl Into<String>) -> Self {
        RequestData::Hdel(Hdel { table: table.into(), key: key.into(), expected_version: None }).into()
    }

    /// A conditional `Hdel`: deleted only if the key's version is `expected_version`.
    pub fn hdel_if_version(table: impl Into<String>, key: impl Into<String>, expected_version: u64) -> Self {
        RequestData::Hdel(Hdel {
            table: table.into(),
            key: key.into(),
            expected_version: Some(expected_version),
        })
        .into()
    }

    /// `Hmdel`: deletes several keys unconditionally, in order.
    pub fn hmdel(table: impl Into<String>, keys: impl IntoIterator<Item = impl Into<String>>) -> Self {
        RequestData::Hmdel(Hmdel { table: table.into(), keys: self::keys(keys) }).into()
    }

    /// `Hexist`: whether a key exists.
    pub fn hexist(table: impl Into<String>, key: impl Into<String>) -> Self {
        RequestData::Hexist(Hexist { table: table.into(), key: key.into() }).into()
    }

    /// `Hmexist`: whether each of several keys exists, in the order given.
    pub fn hmexist(table: impl Into<String>, keys: impl IntoIterator<Item = impl Into<String>>) -> Self {
        RequestData::Hmexist(Hmexist { table: table.into(), keys: self::keys(keys) }).into()
    }

    /// `Subscribe`: an answer of one frame per message published to the topic, until it ends.
    pub fn subscribe(topic: impl Into<String>) -> Self {
        RequestData::Subscribe(Subscribe { topic: topic.into() }).into()
    }

    /// `Unsubscribe`: ends the subscription `id` (from its first frame) to `topic`.
    pub fn unsubscribe(topic: impl Into<String>, id: u32) -> Self {
        RequestData::Unsubscribe(Unsubscribe { topic: topic.into(), id }).into()
    }

    /// `Publish`: sends the values to the topic's subscribers.
    pub fn publish(topic: impl Into<String>, data: impl IntoIterator<Item = Value>) -> Self {
        RequestData::Publish(Publish { topic: topic.into(), data: data.into_iter().collect() }).into()
    }

    /// `Ping`: answered with its payload.
    pub fn ping(payload: impl Into<Bytes>) -> Self {
        RequestData::Ping(Ping { payload: payload.into() }).into()
    }

    /// Whether the command changes what other requests observe. On a pipelined connection, writes wait
    /// for the requests before them and the requests after them wait for writes, so that every request
    /// sees exactly the writes sent before it. Publish counts as a write, so that a message published
    /// after a write goes out after the write is applied, and messages go out in request order.
    /// Subscribe and Unsubscribe do not: an Unsubscribe must run while the subscription it ends is
    /// still being answered.
    pub fn is_write(&self) -> bool {
        matches!(
            self.request_data,
            Some(
                RequestData::Hset(_)
                    | RequestData::Hmset(_)
                    | RequestData::Hdel(_)
                    | RequestData::Hmdel(_)
                    | RequestData::Publish(_)
            )
        )
    }

    /// True for commands that change nothing: they may be executed from 0-RTT early data (which an
    /// attacker can replay) and retried after a lost connection. Requests without a command are
    /// answered 400 without touching anything, so they count as read-only too.
    pub fn is_read_only(&self) -> bool {
        match &self.request_data {
            None
            | Some(RequestData::Hget(_))
            | Some(RequestData::Hgetall(_))
            | Some(RequestData::Hmget(_))
            | Some(RequestData::Hexist(_))
            | Some(RequestData::Hmexist(_))
            | Some(RequestData::Ping(_)) => true,
            Some(RequestData::Hset(_))
            | Some(RequestData::Hmset(_))
            | Some(RequestData::Hdel(_))
            | Some(RequestData::Hmdel(_))
            | Some(RequestData::Subscribe(_))
            | Some(RequestData::Unsubscribe(_))
            | Some(RequestData::Publish(_)) => false,
        }
    }

    /// True for commands that can be sent again after a failure that may have executed them: the
    /// read-only ones, and Subscribe (a subscription whose answer was lost ended with its stream or
    /// connection).
    pub fn is_idempotent(&self) -> bool {
        self.is_read_only() || matches!(self.request_data, Some(RequestData::Subscribe(_)))
    }

    /// The command's name as the protocol spells it, for logs and error messages.
    pub fn command_name(&self) -> &'static str {
        COMMAND_NAMES[self.command_index()]
    }

    /// The command's place in [`COMMAND_NAMES`] (0 for a request without a command).
    pub fn command_index(&self) -> usize {
        match &self.request_data {
            None => 0,
            Some(RequestData::Hget(_)) => 1,
            Some(RequestData::Hgetall(_)) => 2,
            Some(RequestData::Hmget(_)) => 3,
            Some(RequestData::Hset(_)) => 4,
            Some(RequestData::Hmset(_)) => 5,
            Some(RequestData::Hdel(_)) => 6,
            Some(RequestData::Hmdel(_)) => 7,
            Some(RequestData::Hexist(_)) => 8,
            Some(RequestData::Hmexist(_)) => 9,
            Some(RequestData::Subscribe(_)) => 10,
            Some(RequestData::Unsubscribe(_)) => 11,
            Some(RequestData::Publish(_)) => 12,
            Some(RequestData::Ping(_)) => 13,
        }
    }
}

/// Every command's name as the protocol spells it, "none" first (a request without a command), in
/// the order of [`CommandRequest::command_index`].
pub const COMMAND_NAMES: [&str; 14] = [
    "none",
    "Hget",
    "Hgetall",
    "Hmget",
    "Hset",
    "Hmset",
    "Hdel",
    "Hmdel",
    "Hexist",
    "Hmexist",
    "Subscribe",
    "Unsubscribe",
    "Publish",
    "Ping",
];
