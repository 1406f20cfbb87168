//! Frames: a 4-byte big-endian length, then that many bytes of protobuf. The same on every transport,
//! and byte-compatible with tokio-util's `LengthDelimitedCodec` defaults (what the course client uses).
//!
//! [`FrameCodec`] decodes frames into protobuf messages and encodes them, with a maximum frame size and
//! typed errors. Invariants of the decoder:
//! - a frame stays whole in the read buffer until all of it has arrived, so a frame delivered in any
//!   number of pieces decodes the same as one delivered at once;
//! - the buffer grows only as bytes arrive: a header alone reserves nothing for its payload, so a peer
//!   cannot make the server allocate by *declaring* large frames. (tokio-util's `LengthDelimitedCodec`
//!   reserves the declared length when it reads a header; that is why framing is not delegated to it.)

use std::io;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use tokio_util::codec::{Decoder, Encoder};

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

/// How the message of a refusal ends when the server closes the connection after it (docs/PROTOCOL.md,
/// section 8): what was sent behind it was not read, so not executed.
pub const CLOSING_SUFFIX: &str = "; closing the connection";

/// The default maximum frame size (payload bytes, excluding the length prefix).
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Why a frame could not be read or written (docs/PROTOCOL.md, section 2).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length header declares more than the maximum frame size: refused from the header alone.
    #[error("frame of {declared} bytes exceeds the maximum frame size of {max} bytes{}", too_large_hint(*declared))]
    TooLarge {
        /// The length the header declares.
        declared: u64,
        /// The maximum frame size.
        max: usize,
    },
    /// A compressed frame whose gzip trailer says it inflates to more than the maximum frame size:
    /// refused before anything is inflated.
    #[error(
        "compressed frame inflates to {claimed} bytes by its gzip trailer (ISIZE), over the maximum frame size of {max} bytes"
    )]
    InflatesTooLarge {
        /// The size the gzip trailer gives.
        claimed: usize,
        /// The maximum frame size.
        max: usize,
    },
    /// The stream or connection ended before the frame was whole.
    #[error("the stream ended inside a frame ({buffered} bytes of it received)")]
    Truncated {
        /// The bytes of the frame that had arrived.
        buffered: usize,
    },
    /// The frame's payload is not the protobuf message expected.
    #[error("frame is not a valid {message}: {cause}")]
    Decode {
        /// The message type expected (`CommandRequest`, `CommandResponse`).
        message: &'static str,
        /// prost's reason.
        cause: prost::DecodeError,
    },
    /// A compressed frame (the course's) whose gzip could not be inflated, or held more than its
    /// trailer said.
    #[error("compressed frame cannot be inflated: {0}")]
    Compressed(String),
    /// The server's connection memory budget could not hold the frame (a server's writer).
    #[error(
        "the server has no memory to hold {needed} more bytes: its connection memory budget (--connection-memory) is spent"
    )]
    MemoryExhausted {
        /// The bytes the frame needed.
        needed: usize,
    },
    /// Reading or writing the stream failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl FrameError {
    /// Whether the "frame" was the start of another protocol (TLS, HTTP): the peer does not speak
    /// qkv's framing on this connection, so it read nothing sent on it as a request.
    pub fn is_other_protocol(&self) -> bool {
        matches!(self, FrameError::TooLarge { declared, .. } if !other_protocol_hint(*declared).is_empty())
    }
}

/// What an impossible length most likely is: the start of another protocol, or the flag of a
/// compressed frame.
fn too_large_hint(declared: u64) -> &'static str {
    match other_protocol_hint(declared) {
        "" if declared & u64::from(COMPRESSED) != 0 => {
            " (its top bit is set: a frame compressed as the course's frame.rs compresses those over 1436 \
             bytes, which qkv takes on TCP and TLS but not on a QUIC stream: send it uncompressed there, \
             docs/PROTOCOL.md sections 3 and 12)"
        }
        hint => hint,
    }
}

/// The top bit of a length prefix, which the course's later frame.rs sets on a gzip-compressed frame.
const COMPRESSED: u32 = 1 << 31;

/// When a "length" is really the start of another protocol, says which: the usual way to meet an
/// absurd frame size is a client and server that disagree about TLS, or a web browser.
fn other_protocol_hint(declared: u64) -> &'static str {
    let bytes = (declared as u32).to_be_bytes();
    match bytes {
        // A TLS record: handshake (0x16) or alert (0x15), version 3.x.
        [0x16 | 0x15, 0x03, ..] => " (this looks like TLS: one side speaks TLS and the other plaintext)",
        [b'G', b'E', b'T', b' ']
        | [b'P', b'O', b'S', b'T']
        | [b'H', b'E', b'A', b'D']
        | [b'P', b'U', b'T', b' '] => {
            " (this looks like an HTTP request: qkv speaks its own framed protocol)"
        }
        // What an HTTP server answers a qkv frame with: the port is a web or admin listener's.
        [b'H', b'T', b'T', b'P'] => {
            " (this looks like an HTTP answer: the server there speaks HTTP, not qkv's framed protocol)"
        }
        _ => "",
    }
}

/// Decodes frames into `In` messages and encodes any protobuf message into a frame.
#[derive(Debug)]
pub struct FrameCodec<In> {
    max_frame_len: usize,
    /// Whether a frame flagged compressed is inflated ([`FrameCodec::taking_compressed`]).
    compressed: bool,
    _in: PhantomData<fn() -> In>,
}

impl<In> FrameCodec<In> {
    /// A codec refusing frames over `max_frame_len` bytes (capped at `u32::MAX`, the most a 4-byte
    /// prefix can say).
    pub fn new(max_frame_len: usize) -> Self {
        FrameCodec {
            max_frame_len: max_frame_len.min(u32::MAX as usize),
            compressed: false,
            _in: PhantomData,
        }
    }

    /// Also takes frames compressed as the course's later `frame.rs` compresses them: the top bit of
    /// the length set, the rest the length of a gzip stream, which inflates to the message (at most
    /// the maximum frame size). A caller must hold room for what a compressed frame at the front of
    /// its buffer inflates to ([`inflated_len`]) before it decodes it.
    #[cfg(feature = "server")]
    pub fn taking_compressed(self) -> Self {
        FrameCodec { compressed: true, ..self }
    }
}

/// What the compressed frame at the front of `src`, if one is there whole, inflates to by its gzip
/// trailer (which the codec holds it to), at most `max_frame_len`: what its decoding will hold.
#[cfg(feature = "server")]
pub fn inflated_len(src: &[u8], max_frame_len: usize) -> Option<usize> {
    let header = u32::from_be_bytes(src.get(..HEADER_LEN)?.try_into().ok()?);
    if header & COMPRESSED == 0 {
        return None;
    }
    let frame = src.get(HEADER_LEN..HEADER_LEN + (header & !COMPRESSED) as usize)?;
    // One over the maximum, or without a size, or not gzip at all, is refused before anything is
    // inflated.
    Some(gzip_size(frame).filter(|&size| size <= max_frame_len).unwrap_or(0))
}

/// What every gzip member begins with (RFC 1952: ID1, ID2).
#[cfg(feature = "server")]
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The size a gzip stream says it inflates to (its trailer's ISIZE), if it is gzip (by its first
/// bytes) and long enough to have a trailer.
#[cfg(feature = "server")]
fn gzip_size(gzip: &[u8]) -> Option<usize> {
    if !gzip.starts_with(&GZIP_MAGIC) {
        return None;
    }
    let trailer: [u8; 4] = gzip.get(gzip.len().checked_sub(4)?..)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(trailer)).ok()
}

/// Inflates a compressed frame's gzip, one member (RFC 1952), into at most what its trailer says
/// (and at most `max_frame_len`): the room its caller held for it. Several members are refused: the
/// trailer gives the last one's size only, so the room could not be known before inflating.
#[cfg(feature = "server")]
fn inflate(gzip: &[u8], max_frame_len: usize) -> Result<Bytes, FrameError> {
    use std::io::Read;
    let claimed = gzip_size(gzip).ok_or_else(|| {
        let start = &gzip[..gzip.len().min(2)];
        FrameError::Compressed(format!(
            "it is not a gzip stream (gzip begins 1f 8b; its {} bytes begin {start:02x?})",
            gzip.len()
        ))
    })?;
    if claimed > max_frame_len {
        return Err(FrameError::InflatesTooLarge { claimed, max: max_frame_len });
    }
    // Into exactly the room charged for it: one byte more is an error, not a larger buffer.
    let mut inflated = vec![0; claimed];
    let mut decoder = flate2::bufread::GzDecoder::new(gzip);
    // What is left of the frame once the first member has been inflated.
    let after_member = |decoder: &flate2::bufread::GzDecoder<&[u8]>| match decoder.get_ref().len() {
        0 => String::new(),
        left => {
            format!(", and {left} bytes follow its first gzip member: send the message as one gzip member")
        }
    };
    let inflating = decoder.read_exact(&mut inflated);
    if let Err(e) = inflating {
        return Err(FrameError::Compressed(match e.kind() {
            std::io::ErrorKind::UnexpectedEof => format!(
                "it inflates to fewer bytes than the {claimed} its gzip trailer says{}",
                after_member(&decoder)
            ),
            _ => e.to_string(),
        }));
    }
    match decoder.read(&mut [0u8; 1]) {
        Ok(0) if decoder.get_ref().is_empty() => Ok(Bytes::from(inflated)),
        Ok(0) => {
            Err(FrameError::Compressed(format!("it inflates to {claimed} bytes{}", after_member(&decoder))))
        }
        // The size is read from the frame's last 4 bytes: bytes after the member make it wrong.
        Ok(_) => Err(FrameError::Compressed(format!(
            "it inflates to more than the {claimed} bytes its gzip trailer (the frame's last 4 bytes) says: the frame must end with its gzip member's trailer, nothing after it"
        ))),
        Err(e) => Err(FrameError::Compressed(e.to_string())),
    }
}

/// `abi::CommandRequest` → `CommandRequest`, for error messages.
fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

impl<In: Message + Default> Decoder for FrameCodec<In> {
    type Item = In;
    type Error = FrameError;

    /// Takes one whole frame off the front of `src`, or nothing. The header stays in `src` until its
    /// payload is complete (and after an error), so what `src` holds is always where the next frame
    /// starts.
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        let Some(header) = src.get(..HEADER_LEN) else { return Ok(None) };
        let header = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let compressed = self.compressed && header & COMPRESSED != 0;
        let declared = if compressed { header & !COMPRESSED } else { header } as usize;
        if declared > self.max_frame_len {
            return Err(FrameError::TooLarge { declared: declared as u64, max: self.max_frame_len });
        }
        if src.len() < HEADER_LEN + declared {
            // Not reserving the rest: the buffer grows as the bytes arrive, never on a promise.
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let payload = src.split_to(declared).freeze();
        #[cfg(feature = "server")]
        let payload = if compressed { inflate(&payload, self.max_frame_len)? } else { payload };
        In::decode(payload)
            .map(Some)
            .map_err(|cause| FrameError::Decode { message: short_type_name::<In>(), cause })
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated { buffered: src.len() }),
        }
    }
}

impl<In, Out: Message> Encoder<Out> for FrameCodec<In> {
    type Error = FrameError;

    fn encode(&mut self, message: Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_into(&message, self.max_frame_len, dst)
    }
}

/// Encodes one message as a complete frame, refusing (before encoding) one over `max_frame_len`.
/// The frame is built in a `Vec` of its exact size: writing protobuf's byte-at-a-time varints into a
/// `Vec` costs a fraction of what it costs into a `BytesMut` (measured: docs/bench/).
pub fn encode_frame(message: &impl Message, max_frame_len: usize) -> Result<Bytes, FrameError> {
    let len = checked_len(message, max_frame_len)?;
    let mut frame = Vec::with_capacity(HEADER_LEN + len);
    frame.extend_from_slice(&(len as u32).to_be_bytes());
    message.encode(&mut frame).map_err(encoding_failed)?;
    Ok(Bytes::from(frame))
}

fn checked_len(message: &impl Message, max_frame_len: usize) -> Result<usize, FrameError> {
    let len = message.encoded_len();
    if len > max_frame_len {
        return Err(FrameError::TooLarge { declared: len as u64, max: max_frame_len });
    }
    Ok(len)
}

fn encoding_failed(e: prost::EncodeError) -> FrameError {
    FrameError::Io(io::Error::other(format!("protobuf encoding failed: {e}")))
}

/// Writes the prefix and encodes the message straight into `dst`: one copy, no intermediate buffer.
fn encode_into(message: &impl Message, max_frame_len: usize, dst: &mut BytesMut) -> Result<(), FrameError> {
    let len = checked_len(message, max_frame_len)?;
    dst.reserve(HEADER_LEN + len);
    dst.put_u32(len as u32);
    message.encode(dst).map_err(encoding_failed)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;
    use tokio_test::io::Builder;
    use tokio_util::codec::FramedRead;

    use tokio_util::codec::LengthDelimitedCodec;

    use super::*;
    use crate::pb::{CommandRequest, Kvpair};

    fn request() -> CommandRequest {
        CommandRequest::hmset("table", (0..50).map(|i| Kvpair::new(format!("key{i}"), format!("value{i}"))))
    }

    /// A reader that delivers `bytes` in pieces of `chunk` bytes, returning `Pending` between pieces the
    /// way a socket does when the rest has not arrived yet.
    fn chunked_reader(bytes: &[u8], chunk: usize) -> tokio_test::io::Mock {
        let mut builder = Builder::new();
        for piece in bytes.chunks(chunk) {
            builder.read(piece).wait(Duration::from_millis(1));
        }
        builder.build()
    }

    // Paused time: the mock's waits between pieces return `Pending` without making the test slow.
    #[tokio::test(start_paused = true)]
    async fn frames_split_at_every_boundary_decode_whole() {
        // Two frames back to back, delivered in pieces of every size from one byte up: the bug class of
        // the course's reader, which lost data whenever a frame arrived in more than one read.
        let mut wire = encode_frame(&request(), 1 << 20).unwrap().to_vec();
        wire.extend_from_slice(&encode_frame(&CommandRequest::ping("x"), 1 << 20).unwrap());
        for chunk in [1, 2, 3, 4, 5, 7, 64, 1000] {
            let mut frames =
                FramedRead::new(chunked_reader(&wire, chunk), FrameCodec::<CommandRequest>::new(1 << 20));
            assert_eq!(frames.next().await.unwrap().unwrap(), request(), "chunk size {chunk}");
            assert_eq!(frames.next().await.unwrap().unwrap(), CommandRequest::ping("x"));
            assert!(frames.next().await.is_none(), "chunk size {chunk}");
        }
    }

    #[tokio::test]
    async fn an_oversized_header_is_rejected_before_its_payload_arrives() {
        let wire = [0xFF, 0xFF, 0xFF, 0xFF];
        let mut frames = FramedRead::new(&wire[..], FrameCodec::<CommandRequest>::new(1024));
        match frames.next().await {
            Some(Err(FrameError::TooLarge { declared, max })) => {
                assert_eq!((declared, max), (u32::MAX as u64, 1024));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn a_header_alone_reserves_nothing_for_its_payload() {
        // A peer declaring a maximum-size frame and sending a few bytes of it: the buffer holds what
        // arrived, not what was promised.
        let mut codec = FrameCodec::<CommandRequest>::new(DEFAULT_MAX_FRAME_LEN);
        let mut buffer = BytesMut::with_capacity(64);
        buffer.put_u32(DEFAULT_MAX_FRAME_LEN as u32);
        buffer.put_slice(&[0u8; 10]);
        assert!(codec.decode(&mut buffer).unwrap().is_none());
        assert!(buffer.capacity() < 1024, "{} bytes reserved for 14 received", buffer.capacity());
        assert_eq!(buffer.len(), 14, "the partial frame stays whole in the buffer");
    }

    #[tokio::test]
    async fn a_stream_ending_inside_a_frame_is_truncated() {
        let wire = encode_frame(&request(), 1 << 20).unwrap();
        for cut in [1, HEADER_LEN, HEADER_LEN + 3, wire.len() - 1] {
            let mut frames = FramedRead::new(&wire[..cut], FrameCodec::<CommandRequest>::new(1 << 20));
            assert!(matches!(frames.next().await, Some(Err(FrameError::Truncated { .. }))), "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn garbage_payload_is_a_decode_error() {
        let mut wire = vec![0, 0, 0, 4];
        wire.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
        let mut frames = FramedRead::new(&wire[..], FrameCodec::<CommandRequest>::new(1 << 20));
        let err = frames.next().await.unwrap().unwrap_err();
        assert!(matches!(err, FrameError::Decode { message: "CommandRequest", .. }), "{err}");
    }

    #[test]
    fn encoding_matches_length_delimited_codec_byte_for_byte() {
        let message = request();
        let mut ours = BytesMut::new();
        FrameCodec::<CommandRequest>::new(1 << 20).encode(message.clone(), &mut ours).unwrap();
        let mut theirs = BytesMut::new();
        LengthDelimitedCodec::new().encode(bytes::Bytes::from(message.encode_to_vec()), &mut theirs).unwrap();
        assert_eq!(ours, theirs);
        assert_eq!(encode_frame(&message, 1 << 20).unwrap(), theirs);
    }

    #[test]
    fn absurd_lengths_that_are_really_another_protocol_are_named() {
        let too_large =
            |bytes: [u8; 4]| FrameError::TooLarge { declared: u32::from_be_bytes(bytes) as u64, max: 1024 };
        assert!(too_large([0x16, 0x03, 0x01, 0x02]).to_string().contains("looks like TLS"));
        assert!(too_large(*b"GET ").to_string().contains("looks like an HTTP request"));
        assert!(too_large(*b"HTTP").to_string().contains("looks like an HTTP answer"));
        assert!(!too_large([0, 1, 0, 0]).to_string().contains("looks like"));
        // The course's frame.rs flags a gzip-compressed frame with the top bit: said, and not taken
        // for another protocol (the connection's peer speaks qkv's framing).
        let compressed = too_large([0x80, 0, 0x05, 0xa0]);
        assert!(
            compressed.to_string().contains("compressed") && !compressed.is_other_protocol(),
            "{compressed}"
        );
        assert!(!too_large([0, 1, 0, 0]).to_string().contains("compressed"));
    }

    #[test]
    fn encoding_refuses_frames_over_the_limit() {
        let err = FrameCodec::<CommandRequest>::new(10).encode(request(), &mut BytesMut::new()).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { max: 10, .. }));
    }
}
