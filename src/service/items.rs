//! Item limits: how long a table name or key may be and how large a value, checked for every command
//! before it runs. They keep one request from planting huge names that every later answer, log line
//! and scan must carry, and they give a clear 413 naming the limit rather than a failure deep inside.

use prost::Message;

use super::ServiceError;
use crate::metrics::Limit;
use crate::pb::command_request::RequestData;

/// The largest table name (or topic), key and value (encoded) the service accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemLimits {
    pub max_table_len: usize,
    pub max_key_len: usize,
    pub max_value_len: usize,
}

impl Default for ItemLimits {
    fn default() -> Self {
        ItemLimits { max_table_len: 1024, max_key_len: 16 * 1024, max_value_len: 4 * 1024 * 1024 }
    }
}

impl ItemLimits {
    /// Refuses a command naming a table or key, or carrying a value, over the limits. Reads are checked
    /// too: a key that can never be stored is a caller's bug, better reported than answered "not found".
    pub fn check(&self, command: &RequestData) -> Result<(), ServiceError> {
        match command {
            RequestData::Hget(c) => self.names(&c.table, [&c.key]),
            RequestData::Hgetall(c) => self.names(&c.table, [&c.after]),
            RequestData::Hmget(c) => self.names(&c.table, &c.keys),
            RequestData::Hdel(c) => self.names(&c.table, [&c.key]),
            RequestData::Hmdel(c) => self.names(&c.table, &c.keys),
            RequestData::Hexist(c) => self.names(&c.table, [&c.key]),
            RequestData::Hmexist(c) => self.names(&c.table, &c.keys),
            RequestData::Hset(c) => {
                self.names(&c.table, c.pair.iter().map(|p| &p.key))?;
                self.values(c.pair.iter().filter_map(|p| p.value.as_ref()))
            }
            RequestData::Hmset(c) => {
                self.names(&c.table, c.pairs.iter().map(|p| &p.key))?;
                self.values(c.pairs.iter().filter_map(|p| p.value.as_ref()))
            }
            RequestData::Subscribe(c) => self.names(&c.topic, []),
            RequestData::Unsubscribe(c) => self.names(&c.topic, []),
            RequestData::Publish(c) => {
                self.names(&c.topic, [])?;
                self.values(&c.data)
            }
            RequestData::Ping(_) => Ok(()),
        }
    }

    fn names<'a>(&self, table: &str, keys: impl IntoIterator<Item = &'a String>) -> Result<(), ServiceError> {
        if table.len() > self.max_table_len {
            // Topics are names of the same kind, and share the limit.
            return Err(too_long(
                "table name or topic",
                table.len(),
                self.max_table_len,
                Limit::MaxTableSize,
            ));
        }
        match keys.into_iter().find(|key| key.len() > self.max_key_len) {
            Some(key) => Err(too_long("key", key.len(), self.max_key_len, Limit::MaxKeySize)),
            None => Ok(()),
        }
    }

    fn values<'a>(&self, values: impl IntoIterator<Item = &'a crate::pb::Value>) -> Result<(), ServiceError> {
        match values.into_iter().map(Message::encoded_len).find(|&len| len > self.max_value_len) {
            Some(len) => Err(too_long("value", len, self.max_value_len, Limit::MaxValueSize)),
            None => Ok(()),
        }
    }

    /// Checks that each limit allows something; the error says which.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("table name size", self.max_table_len),
            ("key size", self.max_key_len),
            ("value size", self.max_value_len),
        ] {
            if value == 0 {
                return Err(format!("the maximum {name} must be at least 1 byte"));
            }
        }
        Ok(())
    }

    /// Warns (once, where a server starts) when a key and a value at their limits could not be
    /// answered in one frame of `max_entry_len` bytes: allowed, but such writes get 413.
    pub fn warn_if_entries_cannot_fit(&self, max_entry_len: usize) {
        if self.max_key_len.saturating_add(self.max_value_len) > max_entry_len {
            tracing::warn!(
                max_key = self.max_key_len,
                max_value = self.max_value_len,
                max_entry_len,
                "a key and value at their maximum sizes do not fit in one frame; such writes get 413"
            );
        }
    }
}

/// `limit`'s name is its flag's as a metric labels it (`max_key_size` for `--max-key-size`).
fn too_long(what: &str, len: usize, max: usize, limit: Limit) -> ServiceError {
    crate::metrics::limit_hit(limit);
    ServiceError::TooLarge(format!(
        "a {what} of {len} bytes is over the server's limit of {max} bytes ({})",
        limit.flag()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{CommandRequest, Kvpair};

    fn check(request: CommandRequest) -> Result<(), ServiceError> {
        let limits = ItemLimits { max_table_len: 4, max_key_len: 8, max_value_len: 16 };
        limits.check(&request.request_data.unwrap())
    }

    #[test]
    fn names_and_values_at_the_limits_pass_and_one_byte_more_is_refused_naming_the_flag() {
        assert!(check(CommandRequest::hset("tttt", "kkkkkkkk", "v".repeat(14))).is_ok());
        for (request, flag) in [
            (CommandRequest::hget("ttttt", "k"), "--max-table-size"),
            (CommandRequest::hmget("t", ["k", "kkkkkkkkk"]), "--max-key-size"),
            (CommandRequest::hset("t", "k", "v".repeat(15)), "--max-value-size"),
            (
                CommandRequest::hmset("t", [Kvpair::new("k", "v"), Kvpair::new("k", "v".repeat(15))]),
                "--max-value-size",
            ),
            (CommandRequest::hgetall("ttttt"), "--max-table-size"),
        ] {
            let err = check(request).unwrap_err();
            assert!(matches!(err, ServiceError::TooLarge(_)) && err.to_string().contains(flag), "{err}");
        }
    }
}
