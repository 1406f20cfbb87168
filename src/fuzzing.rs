//! Fuzz harnesses: what each fuzz target in `fuzz/` runs on an input, with the properties it checks.
//!
//! They live in the library, not in the fuzz crate, so that `tests/fuzz_corpus.rs` replays every
//! committed corpus file through exactly the same code on stable Rust in every test run: a crash found
//! once stays fixed. Each function panics when the server misbehaves on its input (that is how a
//! fuzzer learns of a bug); nothing in the server calls them. How to run the fuzzers:
//! docs/SECURITY.md, "Fuzzing".

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::{FutureExt, StreamExt};
use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio::runtime::Runtime;
use tokio_util::codec::{Decoder, FramedRead};
use tokio_util::sync::CancellationToken;

use crate::memory::MemoryBudget;
use crate::pb::{CommandRequest, CommandResponse, status};
use crate::service::{Caller, ItemLimits, Reply, Service, ServiceConfig};
use crate::storage::{MemoryStore, Storage};
use crate::transport::Limits;
use crate::transport::frame::{FrameCodec, FrameError, encode_frame};
use crate::transport::pipeline::{AfterClose, serve_pipelined};

/// Small limits, so that inputs a fuzzer can produce reach them.
const MAX_FRAME: usize = 64 * 1024;

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
    })
}

fn service() -> Service<MemoryStore> {
    let config = ServiceConfig {
        response_frame_target: 1024,
        max_concurrent_scans: 2,
        items: ItemLimits { max_table_len: 64, max_key_len: 256, max_value_len: 4096 },
        subscriber_queue: 4,
        ..ServiceConfig::default()
    };
    Service::new(MemoryStore::with_budget(64 * 1024), config, MAX_FRAME)
}

/// Every status a response may carry (docs/PROTOCOL.md, "Status codes").
fn documented(status: u32) -> bool {
    status::ALL.contains(&status)
}

/// How a decode of a byte stream ended: after how many frames, and with which error, if any.
#[derive(Debug, PartialEq)]
struct Decoded {
    /// Each frame's request, re-encoded: `CommandRequest` has floats, so bytes compare where `==` cannot.
    frames: Vec<Vec<u8>>,
    error: Option<String>,
}

/// Decodes `wire` fed to the codec `piece` bytes at a time, then ends the stream.
fn decode_in_pieces(wire: &[u8], piece: usize) -> Decoded {
    // As a byte stream's pipeline decodes: compressed frames taken.
    let mut codec = FrameCodec::<CommandRequest>::new(MAX_FRAME).taking_compressed();
    let mut buffer = BytesMut::new();
    let mut frames = Vec::new();
    let error_kind = |e: FrameError| match e {
        FrameError::TooLarge { .. } | FrameError::InflatesTooLarge { .. } => "too large",
        FrameError::Truncated { .. } => "truncated",
        FrameError::Decode { .. } => "decode",
        FrameError::Compressed(_) => "compressed",
        FrameError::MemoryExhausted { .. } | FrameError::Io(_) => "io",
    };
    for chunk in wire.chunks(piece.max(1)) {
        buffer.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(request)) => frames.push(request.encode_to_vec()),
                Ok(None) => break,
                Err(e) => return Decoded { frames, error: Some(error_kind(e).into()) },
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buffer) {
            Ok(Some(request)) => frames.push(request.encode_to_vec()),
            Ok(None) => return Decoded { frames, error: None },
            Err(e) => return Decoded { frames, error: Some(error_kind(e).into()) },
        }
    }
}

/// The frame decoder: any bytes, delivered in pieces of any size, decode to the same frames and end
/// the same way as the same bytes delivered at once; every decoded request survives a round trip
/// through `encode_frame`. The first input byte picks the piece size.
pub fn frame_decoder(data: &[u8]) {
    let Some((&piece, wire)) = data.split_first() else { return };
    let whole = decode_in_pieces(wire, wire.len());
    assert_eq!(decode_in_pieces(wire, usize::from(piece)), whole, "piece size {piece}");
    for encoded in &whole.frames {
        let request = CommandRequest::decode(&encoded[..]).expect("it was decoded before");
        let frame = encode_frame(&request, usize::MAX).expect("a decoded request fits in a frame");
        let again = decode_in_pieces(&frame, frame.len());
        assert_eq!(again.frames, vec![encoded.clone()]);
    }
}

/// Checks the frames of one reply: each fits in a frame, all but the last say `more`, every status
/// is documented and every error explains itself.
fn check_reply(frames: &[CommandResponse]) {
    let (last, before) = frames.split_last().expect("every reply has a frame");
    assert!(!last.more, "the last frame of a reply says more");
    assert!(
        before.iter().all(|f| f.more && f.status == status::OK),
        "a frame before the last ends the reply"
    );
    for frame in frames {
        assert!(frame.encoded_len() <= MAX_FRAME, "a reply frame of {} bytes", frame.encoded_len());
        assert!(documented(frame.status), "undocumented status {}", frame.status);
        assert!(frame.is_ok() || !frame.message.is_empty(), "status {} without a message", frame.status);
    }
}

/// Request decode and dispatch: the input is a sequence of requests, each a protobuf message with a
/// varint length prefix, executed in order against one store with small limits, all from one
/// connection. Every request gets a well-formed reply (see `check_reply`), and the store never holds
/// more than its memory budget. A reply that waits (a subscription with nothing published) is ended
/// as a closing connection ends it.
pub fn request_dispatch(data: &[u8]) {
    let service = service();
    let caller = Caller::default();
    let mut input = data;
    runtime().block_on(async {
        while input.has_remaining() {
            let Ok(request) = CommandRequest::decode_length_delimited(&mut input) else { return };
            let frames: Vec<CommandResponse> = match service.execute(request, &caller).await {
                Reply::One(response) => vec![response],
                Reply::Stream(mut stream) => {
                    let mut frames = Vec::new();
                    loop {
                        let next = match stream.next().now_or_never() {
                            Some(next) => next,
                            None => {
                                service
                                    .connection_closing(&caller, crate::pubsub::ConnectionEnd::StreamEnded);
                                stream.next().await
                            }
                        };
                        match next {
                            Some(frame) => frames
                                .push(frame.into_response().expect("a frame the service encoded decodes")),
                            None => break,
                        }
                    }
                    frames
                }
            };
            check_reply(&frames);
            let memory = service.storage().memory();
            assert!(memory.used <= memory.budget, "the store holds {memory:?}");
        }
    });
}

/// The TCP codec and pipeline: any bytes sent on a connection (then closed) are answered with
/// well-formed frames, one reply per request frame, in order, plus one error frame if the bytes end
/// in something that is not a whole, valid request frame.
pub fn tcp_pipeline(data: &[u8]) {
    let expected = decode_in_pieces(data, data.len());
    let limits = Limits { max_frame_len: MAX_FRAME, max_request_buffer: 4 * MAX_FRAME, ..Limits::default() };
    runtime().block_on(async {
        let (mut client, server) = tokio::io::duplex(16 * 1024);
        let serving = tokio::spawn(serve_pipelined(
            server,
            service(),
            Arc::new(limits),
            MemoryBudget::unlimited(),
            CancellationToken::new(),
            Caller::default(),
            // Closing its side ends the exchange, a subscription at the end of the bytes included
            // (over TCP it would read on until its client went away, which a duplex cannot show).
            AfterClose::EndSubscriptions,
        ));
        let (read, mut write) = tokio::io::split(&mut client);
        let sending = async {
            // The server stops reading after a bad frame; what it does not read is not an error here.
            let _ = write.write_all(data).await;
            let _ = write.shutdown().await;
        };
        let receiving = async {
            let mut answers = FramedRead::new(read, FrameCodec::<CommandResponse>::new(MAX_FRAME));
            let mut replies = Vec::new();
            let mut reply = Vec::new();
            while let Some(frame) = answers.next().await {
                let frame = frame.expect("the server writes whole, valid frames");
                let more = frame.more;
                reply.push(frame);
                if !more {
                    check_reply(&reply);
                    replies.push(std::mem::take(&mut reply));
                }
            }
            assert!(reply.is_empty(), "the connection ended inside a reply");
            replies
        };
        let (_, replies) =
            tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(sending, receiving) })
                .await
                .expect("the server answers and closes within 30 s");
        let _ = serving.await;
        let expected_replies = expected.frames.len() + usize::from(expected.error.is_some());
        assert_eq!(replies.len(), expected_replies, "replies to {expected:?}");
        if expected.error.is_some() {
            let last = &replies[replies.len() - 1][0];
            assert!(!last.is_ok(), "a bad frame was answered with {last:?}");
        }
    });
}

/// Log recovery: the input is the body of a log segment (what follows its header), as a crash or a
/// damaged disk could leave it. The first byte picks how the rest is read: odd, as raw bytes; even, as
/// record bodies (each a length byte and that many bytes) given valid checksums, so that the fuzzer
/// reaches the decoding behind the checksum. Replaying never panics and never trusts a length beyond
/// the input; the store then holds what the records say (checked against a plain map); and the log cut
/// where replay stopped reads back as exactly the same records, ending cleanly: what recovery does to a
/// torn tail repairs it.
pub fn log_recovery(data: &[u8]) {
    use std::collections::BTreeMap;

    use crate::storage::disk::format::{Next, Reader, Record, encode};
    use crate::storage::disk::log::Log;
    use crate::storage::disk::recovery::{Stop, replay};

    let Some((&mode, rest)) = data.split_first() else { return };
    let log = match mode % 2 {
        1 => rest.to_vec(),
        _ => {
            let mut log = Vec::new();
            let mut bodies = rest;
            while let Some((&len, tail)) = bodies.split_first() {
                let (body, tail) = tail.split_at(usize::from(len).min(tail.len()));
                let start = log.len();
                log.extend_from_slice(&(body.len() as u32).to_le_bytes());
                log.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
                log.extend_from_slice(body);
                debug_assert_eq!(log.len() - start, 8 + body.len());
                bodies = tail;
            }
            log
        }
    };
    let read_all = |bytes: &[u8]| {
        let mut reader = Reader::new(bytes, 0, bytes.len() as u64);
        let mut records = Vec::new();
        loop {
            match reader.next().expect("reading from memory does not fail") {
                Next::Record(record) => records.push(record),
                end => return (records, end, reader.offset()),
            }
        }
    };
    let (records, end, whole) = read_all(&log);
    if let Next::Unwritten { offset } = end {
        assert_eq!(
            (offset, &log[whole as usize..][..8]),
            (whole, &[0u8; 8][..]),
            "unwritten: a head of zeros"
        );
    }

    let store = MemoryStore::with_journal(usize::MAX, Arc::new(Log::new(0, std::time::Duration::ZERO)));
    let replayed = replay(&mut Reader::new(&log[..], 0, log.len() as u64), &store).expect("from memory");
    let mut model: BTreeMap<(String, String), crate::pb::Versioned> = BTreeMap::new();
    for record in &records {
        match record {
            Record::Set { table, key, versioned } => {
                model.insert((table.clone(), key.clone()), versioned.clone());
            }
            Record::Delete { table, key, .. } => {
                model.remove(&(table.clone(), key.clone()));
            }
            Record::End { .. } => break,
        }
    }
    let applied = records.iter().take_while(|r| !matches!(r, Record::End { .. })).count();
    assert_eq!(replayed.records, applied as u64, "replay applied every whole record and no more");
    assert_eq!(replayed.stop == Stop::End, matches!(end, Next::End) && applied == records.len());
    // Values and records compare by their encodings: a float NaN is not equal to itself, though it is
    // stored and read back whole.
    let encoded = |records: &[Record]| {
        let mut bytes = Vec::new();
        records.iter().for_each(|record| encode(&mut bytes, record));
        bytes
    };
    for ((table, key), versioned) in &model {
        let held = runtime().block_on(store.get(table, key)).expect("a memory read");
        assert_eq!(
            held.map(|held| (held.value.encode_to_vec(), held.version)),
            Some((versioned.value.encode_to_vec(), versioned.version)),
            "{table:?}/{key:?}"
        );
    }
    assert_eq!(store.usage().keys, Some(model.len() as u64), "no key beyond what the records set");

    // Cut where reading stopped, the log is whole: the same records, then a clean end.
    let (again, end, _) = read_all(&log[..whole as usize]);
    assert_eq!(encoded(&again), encoded(&records));
    assert_eq!(end, Next::End);
    // And the records re-encode to a log that reads back the same.
    let log = encoded(&records);
    assert_eq!(encoded(&read_all(&log).0), log);
}
