//! The hash commands: Hget, Hgetall, Hmget, Hset, Hmset, Hdel, Hmdel, Hexist, Hmexist.
//!
//! Every answer about keys carries `versions`, parallel to `values` (or `pairs`): the version of each
//! key as the command left it, 0 for an absent key. Writes answer the previous values (the course
//! protocol's convention) and the new versions.

use std::sync::Arc;

use futures_util::{StreamExt, stream};
use parking_lot::Mutex;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::AbortOnDropHandle;

use prost::Message;

use super::scan_slots::IDLE_BEFORE_YIELDING;
use super::{Reply, ReplyFrame, ReplyStream, Service, ServiceError, shown};
use crate::pb::{
    CommandResponse, Hdel, Hexist, Hget, Hgetall, Hmdel, Hmexist, Hmget, Hmset, Hset, Kvpair, Value,
    split_response,
};
use crate::storage::{PageLimit, ScanPage, Storage, TableScan, Versioned, WriteOutcome};

type CommandResult = Result<CommandResponse, ServiceError>;

/// At most this many pairs per Hgetall page, however small they are.
const MAX_PAIRS_PER_PAGE: usize = 8192;

pub async fn hget(storage: &impl Storage, cmd: Hget) -> CommandResult {
    match storage.get(&cmd.table, &cmd.key).await? {
        Some(Versioned { value, version }) => Ok(CommandResponse::with_values(vec![value], vec![version])),
        None => Err(ServiceError::NotFound { table: cmd.table, key: cmd.key }),
    }
}

/// Reads each distinct key once, and refuses (413) an answer of more than `max_answer` bytes of values
/// before copying a byte of it: the answer is built whole, and a 4 KB request naming one 1 MB value a
/// thousand times made the server copy it a thousand times (strings are copied, not shared). Keys are
/// copied, and values copied per repeat, only when some key is repeated.
pub async fn hmget(storage: &impl Storage, max_answer: usize, cmd: Hmget) -> CommandResult {
    // For each requested key, the index of its first occurrence among the distinct keys.
    let mut positions = Vec::with_capacity(cmd.keys.len());
    let mut firsts = Vec::with_capacity(cmd.keys.len());
    let mut seen: std::collections::HashMap<&str, usize> =
        std::collections::HashMap::with_capacity(cmd.keys.len());
    for (i, key) in cmd.keys.iter().enumerate() {
        let position = *seen.entry(key.as_str()).or_insert_with(|| {
            firsts.push(i);
            firsts.len() - 1
        });
        positions.push(position);
    }
    let repeated = firsts.len() < cmd.keys.len();
    let found = match repeated {
        true => {
            let distinct: Vec<String> = firsts.iter().map(|&i| cmd.keys[i].clone()).collect();
            storage.get_many(&cmd.table, &distinct).await?
        }
        false => storage.get_many(&cmd.table, &cmd.keys).await?,
    };
    let size = |i: usize| found.get(i).and_then(Option::as_ref).map_or(0, |v| v.value.encoded_len());
    let bytes: usize = positions.iter().map(|&i| size(i)).sum();
    if bytes > max_answer {
        crate::metrics::limit_hit(crate::metrics::Limit::MaxAnswerSize);
        return Err(ServiceError::TooLarge(format!(
            "the answer would carry {bytes} bytes of values, over the server's limit of {max_answer} bytes for one Hmget (--max-answer-size): ask for fewer keys at a time"
        )));
    }
    let entry = |found: Option<Versioned>| found.map_or((Value::default(), 0), |v| (v.value, v.version));
    let (values, versions) = match repeated {
        true => positions.iter().map(|&i| entry(found.get(i).cloned().flatten())).unzip(),
        false => found.into_iter().map(entry).unzip(),
    };
    Ok(CommandResponse::with_values(values, versions))
}

pub async fn hexist(storage: &impl Storage, cmd: Hexist) -> CommandResult {
    let versions = storage.versions(&cmd.table, std::slice::from_ref(&cmd.key)).await?;
    Ok(existence(versions))
}

pub async fn hmexist(storage: &impl Storage, cmd: Hmexist) -> CommandResult {
    let versions = storage.versions(&cmd.table, &cmd.keys).await?;
    Ok(existence(versions))
}

fn existence(versions: Vec<u64>) -> CommandResponse {
    let values = versions.iter().map(|&version| Value::from(version != 0)).collect();
    CommandResponse::with_values(values, versions)
}

pub async fn hset(storage: &impl Storage, max_entry_len: usize, cmd: Hset) -> CommandResult {
    let pair = cmd.pair.ok_or_else(|| ServiceError::InvalidRequest("Hset needs a pair".into()))?;
    let (key, value) = storable(pair, max_entry_len)?;
    let outcome = storage.set(&cmd.table, &key, value, cmd.expected_version).await?;
    write_response(outcome, cmd.expected_version)
}

pub async fn hmset(storage: &impl Storage, max_entry_len: usize, cmd: Hmset) -> CommandResult {
    // Validate every pair before writing any, so a bad request changes nothing.
    let pairs =
        cmd.pairs.into_iter().map(|pair| storable(pair, max_entry_len)).collect::<Result<Vec<_>, _>>()?;
    let outcomes = storage.set_many(&cmd.table, pairs).await?;
    Ok(writes_response(outcomes))
}

pub async fn hdel(storage: &impl Storage, cmd: Hdel) -> CommandResult {
    let outcome = storage.delete(&cmd.table, &cmd.key, cmd.expected_version).await?;
    write_response(outcome, cmd.expected_version)
}

pub async fn hmdel(storage: &impl Storage, cmd: Hmdel) -> CommandResult {
    let outcomes = storage.delete_many(&cmd.table, &cmd.keys).await?;
    Ok(writes_response(outcomes))
}

/// A pair the service agrees to store: its value is set (an empty Value is how multi-key answers say
/// "absent"), and every answer that carries it, with key and value, fits in one frame.
fn storable(pair: Kvpair, max_entry_len: usize) -> Result<(String, Value), ServiceError> {
    let size = pair.encoded_len();
    let Kvpair { key, value } = pair;
    let value = match value {
        Some(value) if !value.is_empty() => value,
        _ => {
            return Err(ServiceError::InvalidRequest(format!(
                "the value for key {} is not set",
                shown(&key)
            )));
        }
    };
    if size > max_entry_len {
        return Err(ServiceError::TooLarge(format!(
            "key {} and its value take {size} bytes; the most that fits in an answer is {max_entry_len} bytes",
            shown(&key)
        )));
    }
    Ok((key, value))
}

fn write_response(outcome: WriteOutcome, expected_version: Option<u64>) -> CommandResult {
    match outcome {
        WriteOutcome::Written { previous, version } => Ok(CommandResponse::with_values(
            vec![previous.map(|p| p.value).unwrap_or_default()],
            vec![version],
        )),
        WriteOutcome::Conflict { current } => {
            Err(ServiceError::Conflict { expected: expected_version.unwrap_or_default(), current })
        }
    }
}

fn writes_response(outcomes: Vec<WriteOutcome>) -> CommandResponse {
    let (values, versions) = outcomes
        .into_iter()
        .map(|outcome| match outcome {
            WriteOutcome::Written { previous, version } => {
                (previous.map(|p| p.value).unwrap_or_default(), version)
            }
            // Unconditional writes cannot conflict; if a backend says otherwise, report the current state.
            WriteOutcome::Conflict { current } => {
                current.map_or((Value::default(), 0), |c| (c.value, c.version))
            }
        })
        .unzip();
    CommandResponse::with_values(values, versions)
}

/// Streams the table page by page, one frame per page, so a table of any size is answered in frames of
/// about `response_frame_target` bytes without being copied whole.
///
/// A listing reads its table holding one of the service's scan slots (`scan_slots`). Between pages,
/// while its client has not asked for the next one, it keeps the slot and its scan for
/// [`IDLE_BEFORE_YIELDING`], and after that only until another listing wants a slot: then it lets
/// both go, and when its client reads on it takes a slot again and a new scan from after the last key
/// it sent. (A key present for the whole listing is still sent exactly once, in key order.)
pub async fn hgetall<S: Storage>(service: &Service<S>, cmd: Hgetall) -> Reply {
    let listing = Listing {
        service: service.clone(),
        table: cmd.table,
        after: (!cmd.after.is_empty()).then_some(cmd.after),
        // Entries still to send when the request set a limit.
        remaining: (cmd.limit > 0).then_some(cmd.limit as usize),
        held: Arc::new(Mutex::new(None)),
        yielding: None,
        done: false,
    };
    // Nothing happens until the reply is first polled, when it is its turn to be written: on a pipelined
    // connection an Hgetall queued behind other requests holds no scan slot and no snapshot yet.
    let pages = stream::unfold(listing, |mut listing| async move {
        let page = listing.next_page().await?;
        Some((page, listing))
    });
    // Page sizes count keys and values only; the one splitting rule of every response keeps the frames,
    // protobuf overhead included, near the target.
    let target = service.config().response_frame_target;
    let frames = pages.flat_map(move |page| stream::iter(split_response(page, target)).map(ReplyFrame::from));
    Reply::Stream(ReplyStream::new(frames))
}

/// A scan and the slot it holds.
type Held<S> = (<S as Storage>::Scan, Option<OwnedSemaphorePermit>);

/// Where a listing stands between its pages.
struct Listing<S: Storage> {
    service: Service<S>,
    table: String,
    /// The last key sent (or the request's `after`): where a new scan starts.
    after: Option<String>,
    remaining: Option<usize>,
    /// The scan and its slot, while the listing holds them; taken by `yielding` when another listing
    /// wants the slot.
    held: Arc<Mutex<Option<Held<S>>>>,
    /// Gives `held` up once the listing has waited for its client long enough and a slot is wanted.
    yielding: Option<AbortOnDropHandle<()>>,
    done: bool,
}

impl<S: Storage> Listing<S> {
    /// The next page's answer, or `None` after the last.
    async fn next_page(&mut self) -> Option<CommandResponse> {
        if self.done {
            return None;
        }
        // The client reads on: nothing is given up while this page is made.
        self.yielding = None;
        let held = self.held.lock().take();
        let (mut scan, slot) = match held {
            Some(held) => held,
            None => {
                // The slot travels with the scan, and is released when the reply ends or is abandoned.
                let slot = self.service.scan_slots().acquire().await;
                match self.service.storage().scan(&self.table, self.after.as_deref()).await {
                    Ok(scan) => (scan, slot),
                    Err(e) => {
                        self.done = true;
                        return Some(ServiceError::from(e).into_response());
                    }
                }
            }
        };
        let bytes = self.service.config().response_frame_target;
        let entries = self.remaining.map_or(MAX_PAIRS_PER_PAGE, |left| left.min(MAX_PAIRS_PER_PAGE));
        let mut page = match scan.next_page(PageLimit { entries, bytes }).await {
            Ok(page) => page,
            // A failure mid-scan ends the response with an error frame; the client discards what came
            // before.
            Err(e) => {
                self.done = true;
                return Some(ServiceError::from(e).into_response());
            }
        };
        if let Some(left) = self.remaining.as_mut() {
            page.entries.truncate(*left);
            *left -= page.entries.len();
            // The limit reached ends the reply, whether or not the table goes on.
            page.done |= *left == 0;
        }
        if let Some((key, _)) = page.entries.last() {
            self.after = Some(key.clone());
        }
        self.done = page.done;
        if !page.done {
            *self.held.lock() = Some((scan, slot));
            let (held, slots) = (self.held.clone(), self.service.scan_slots().clone());
            self.yielding = Some(AbortOnDropHandle::new(tokio::spawn(async move {
                tokio::time::sleep(IDLE_BEFORE_YIELDING).await;
                slots.wanted().await;
                let given_up = held.lock().take();
                if given_up.is_none() {
                    slots.unclaim();
                }
            })));
        }
        Some(page_frame(page))
    }
}

fn page_frame(page: ScanPage) -> CommandResponse {
    let (pairs, versions) =
        page.entries.into_iter().map(|(key, v)| (Kvpair { key, value: Some(v.value) }, v.version)).unzip();
    CommandResponse { more: !page.done, ..CommandResponse::with_pairs(pairs, versions) }
}
