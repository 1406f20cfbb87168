//! How tables, keys and versioned values are laid out in redb's byte keys and values.
//!
//! Every qkv table shares one redb table. A key is the table name's length (4 bytes, big-endian), the
//! table name, then the key: unambiguous for any UTF-8, empty names and names containing ':' or NUL
//! included (the course's sled backend joined names with ':' and lost data), and each qkv table is one
//! contiguous range of keys, so a scan is a range scan. A value is the version (8 bytes, big-endian)
//! then the protobuf encoding of the `Value`.

use prost::Message;

use crate::pb::{Value, Versioned};
use crate::storage::StorageError;

const VERSION_LEN: usize = 8;

/// The prefix every key of `table` starts with.
pub fn table_prefix(table: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(4 + table.len());
    // Table names are limited far below 4 GiB by the frame size; saturate rather than wrap regardless.
    prefix.extend_from_slice(&u32::try_from(table.len()).unwrap_or(u32::MAX).to_be_bytes());
    prefix.extend_from_slice(table.as_bytes());
    prefix
}

/// The redb key of `key` in `table`.
pub fn entry_key(table: &str, key: &str) -> Vec<u8> {
    let mut entry = table_prefix(table);
    entry.extend_from_slice(key.as_bytes());
    entry
}

/// The qkv key of a redb key known to start with `prefix`.
pub fn key_of(entry: &[u8], prefix_len: usize) -> Result<String, StorageError> {
    let bytes = entry.get(prefix_len..).ok_or_else(|| corrupt("a key shorter than its table prefix"))?;
    String::from_utf8(bytes.to_vec()).map_err(|_| corrupt("a key that is not UTF-8"))
}

pub fn encode_versioned(version: u64, value: &Value) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(VERSION_LEN + value.encoded_len());
    bytes.extend_from_slice(&version.to_be_bytes());
    value.encode(&mut bytes).expect("a Vec grows to fit");
    bytes
}

pub fn decode_versioned(bytes: &[u8]) -> Result<Versioned, StorageError> {
    let (version, value) =
        bytes.split_first_chunk::<VERSION_LEN>().ok_or_else(|| corrupt("a value without its version"))?;
    let value = Value::decode(value).map_err(|e| corrupt(&format!("a value that does not decode: {e}")))?;
    Ok(Versioned { value, version: u64::from_be_bytes(*version) })
}

/// Only the version of a stored value, without decoding the value.
pub fn decode_version(bytes: &[u8]) -> Result<u64, StorageError> {
    let (version, _) =
        bytes.split_first_chunk::<VERSION_LEN>().ok_or_else(|| corrupt("a value without its version"))?;
    Ok(u64::from_be_bytes(*version))
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Backend(format!("the data directory holds {what}: it is damaged or not qkv's"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_separators_do_not_collide() {
        // The pairs the course's "table:key" encoding could not tell apart.
        let pairs = [("a", ":b"), ("a:", "b"), ("", "a:b"), ("a:b", ""), ("", ""), ("\0", "")];
        let keys: Vec<Vec<u8>> = pairs.iter().map(|(t, k)| entry_key(t, k)).collect();
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        for (table, key) in pairs {
            let prefix = table_prefix(table);
            let entry = entry_key(table, key);
            assert!(entry.starts_with(&prefix));
            assert_eq!(key_of(&entry, prefix.len()).unwrap(), key);
            // No other table's prefix claims this key.
            for (other, _) in pairs.iter().filter(|(t, _)| *t != table) {
                assert!(!entry.starts_with(&table_prefix(other)), "{table:?}/{key:?} in {other:?}");
            }
        }
    }

    #[test]
    fn versioned_values_round_trip_and_damage_is_an_error() {
        let value = Value::from(vec![1u8, 2, 3]);
        let bytes = encode_versioned(42, &value);
        assert_eq!(decode_versioned(&bytes).unwrap(), Versioned { value, version: 42 });
        assert_eq!(decode_version(&bytes).unwrap(), 42);
        assert!(decode_versioned(&bytes[..5]).is_err());
    }
}
