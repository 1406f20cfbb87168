//! Constructors for responses, and the rule that spreads one large response over several frames.

use prost::Message;
use prost::encoding::encoded_len_varint;

use super::{CommandResponse, Kvpair, Value, status};

impl CommandResponse {
    /// An empty 200 response.
    pub fn ok() -> Self {
        CommandResponse { status: status::OK, ..Default::default() }
    }

    /// An error response; `message` must say what went wrong in words a user can act on.
    pub fn error(status: u32, message: impl Into<String>) -> Self {
        CommandResponse { status, message: message.into(), ..Default::default() }
    }

    /// A 200 response carrying values and their versions.
    pub fn with_values(values: Vec<Value>, versions: Vec<u64>) -> Self {
        CommandResponse { values, versions, ..Self::ok() }
    }

    /// A 200 response carrying key-value pairs and their versions.
    pub fn with_pairs(pairs: Vec<Kvpair>, versions: Vec<u64>) -> Self {
        CommandResponse { pairs, versions, ..Self::ok() }
    }

    /// Whether its status is 200.
    pub fn is_ok(&self) -> bool {
        self.status == status::OK
    }
}

/// Splits `response` into frames of about `target_bytes` each, by dividing its `values` (or `pairs`)
/// and the matching `versions` between them. Every frame but the last has `more = true` and status 200;
/// the last keeps the response's status, message and `more`. A response at or under the target, or one
/// that carries both values and pairs, is returned whole. Each frame holds at least one item, so a
/// single item larger than the target gets a frame of its own.
pub fn split_response(mut response: CommandResponse, target_bytes: usize) -> Vec<CommandResponse> {
    if response.encoded_len() <= target_bytes || (!response.values.is_empty() && !response.pairs.is_empty()) {
        return vec![response];
    }
    let versions = std::mem::take(&mut response.versions);
    let mut frames = if response.pairs.is_empty() {
        let values = std::mem::take(&mut response.values);
        split_items(values, versions, target_bytes, |v| 2 + v.encoded_len(), CommandResponse::with_values)
    } else {
        let pairs = std::mem::take(&mut response.pairs);
        split_items(pairs, versions, target_bytes, |p| 4 + p.encoded_len(), CommandResponse::with_pairs)
    };
    if let Some(last) = frames.last_mut() {
        last.status = response.status;
        last.message = response.message;
        last.more = response.more;
    }
    frames
}

/// One `more = true` frame per group of items (and their versions), built by `frame`.
fn split_items<T>(
    items: Vec<T>,
    versions: Vec<u64>,
    target_bytes: usize,
    size: impl Fn(&T) -> usize,
    frame: impl Fn(Vec<T>, Vec<u64>) -> CommandResponse,
) -> Vec<CommandResponse> {
    let mut versions = versions.into_iter();
    chunk(items, target_bytes, size)
        .into_iter()
        .map(|group| {
            let group_versions = versions.by_ref().take(group.len()).collect();
            CommandResponse { more: true, ..frame(group, group_versions) }
        })
        .collect()
}

/// Groups items so that each group's estimated size stays near `target_bytes`; 10 bytes per item
/// account for its version.
fn chunk<T>(items: Vec<T>, target_bytes: usize, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut current_bytes = 0;
    for item in items {
        let item_bytes = size(&item) + encoded_len_varint(u64::MAX);
        if !current.is_empty() && current_bytes + item_bytes > target_bytes {
            chunks.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes += item_bytes;
        current.push(item);
    }
    if !current.is_empty() || chunks.is_empty() {
        chunks.push(current);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big_values(n: usize, size: usize) -> CommandResponse {
        let values = (0..n).map(|i| Value::from(vec![i as u8; size])).collect();
        CommandResponse::with_values(values, (1..=n as u64).collect())
    }

    #[test]
    fn small_responses_stay_whole() {
        let response = big_values(3, 10);
        assert_eq!(split_response(response.clone(), 1024), vec![response]);
    }

    #[test]
    fn large_responses_split_into_frames_that_reassemble() {
        let response = big_values(100, 1000);
        let frames = split_response(response.clone(), 10_000);
        assert!(frames.len() >= 10, "{} frames", frames.len());
        for frame in &frames {
            assert!(frame.encoded_len() <= 10_000 + 1100, "frame of {} bytes", frame.encoded_len());
            assert_eq!(frame.values.len(), frame.versions.len());
        }
        let (last, rest) = frames.split_last().unwrap();
        assert!(rest.iter().all(|f| f.more && f.is_ok()));
        assert!(!last.more);
        let values: Vec<Value> = frames.iter().flat_map(|f| f.values.clone()).collect();
        let versions: Vec<u64> = frames.iter().flat_map(|f| f.versions.clone()).collect();
        assert_eq!(values, response.values);
        assert_eq!(versions, response.versions);
    }

    #[test]
    fn pairs_split_too_and_the_last_frame_keeps_status_and_more() {
        let pairs = (0..50).map(|i| Kvpair::new(format!("k{i}"), vec![0u8; 500])).collect();
        let response = CommandResponse {
            more: true,
            message: "kept".into(),
            ..CommandResponse::with_pairs(pairs, vec![7; 50])
        };
        let frames = split_response(response, 2_000);
        let last = frames.last().unwrap();
        assert!(last.more, "a chunk of a longer stream must still say more follows");
        assert_eq!(last.message, "kept");
        assert_eq!(frames.iter().map(|f| f.pairs.len()).sum::<usize>(), 50);
    }

    #[test]
    fn an_item_larger_than_the_target_gets_its_own_frame() {
        let frames = split_response(big_values(3, 5000), 100);
        assert_eq!(frames.iter().map(|f| f.values.len()).collect::<Vec<_>>(), vec![1, 1, 1]);
    }
}
