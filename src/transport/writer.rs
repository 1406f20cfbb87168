//! Writing answers: [`FrameWriter`] is the sink every transport writes reply frames into.
//!
//! - Frames to encode are encoded into one buffer, so that small answers ready together leave in one
//!   write; the buffer is written out once it holds [`BACKPRESSURE`] bytes or is flushed.
//! - The buffer's capacity is charged to the server-wide memory budget: a frame that does not fit in
//!   the budget is refused with [`FrameError::MemoryExhausted`] (it is not held uncharged), and a
//!   buffer that grew for a large frame is given back once written.
//! - A frame encoded already ([`ReplyFrame::Encoded`]: a published message, shared by every
//!   subscriber) is written from its shared bytes, after its length prefix, without being copied into
//!   the buffer: a fan-out of a large message to many subscribers holds it once (charged by the
//!   broker), plus what each connection's transport buffers (bounded by its flow-control window).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::Sink;
use prost::Message;
use tokio::io::AsyncWrite;

use super::frame::{FrameError, HEADER_LEN};
use crate::memory::{Charge, MemoryBudget};
use crate::service::ReplyFrame;

/// Bytes buffered before they are written out without waiting for a flush.
pub const BACKPRESSURE: usize = 16 * 1024;

/// A buffer grown beyond this (for a large frame) is replaced by a small one once written out.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Shared frames at most this long are copied into the buffer with the frames around them: a copy
/// costs less than a write of their own.
const COPY_SHARED_UP_TO: usize = 1024;

pub struct FrameWriter<W> {
    inner: W,
    buffer: BytesMut,
    /// A shared frame's payload, to be written after everything in `buffer` (which ends with its
    /// length prefix).
    shared: Option<Bytes>,
    max_frame_len: usize,
    /// Covers `buffer`'s capacity.
    charge: Charge,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// A writer of frames of at most `max_frame_len` bytes, whose buffer is charged to `budget`.
    pub fn new(inner: W, max_frame_len: usize, budget: &MemoryBudget) -> Self {
        Self::with_charge(inner, max_frame_len, budget.empty_charge())
    }

    /// A writer whose buffer is covered by `charge` as far as it goes, and charged to `charge`'s
    /// budget beyond: a frame charged before it is written (a refusal, from the room set aside for
    /// it) needs nothing more from the budget.
    pub fn with_charge(inner: W, max_frame_len: usize, charge: Charge) -> Self {
        FrameWriter { inner, buffer: BytesMut::new(), shared: None, max_frame_len, charge }
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The writer underneath, once everything has been flushed (what was not is dropped, and the
    /// buffer's charge given back).
    pub fn into_inner(self) -> W {
        self.inner
    }

    /// Makes room for `additional` more bytes in the buffer, charging the growth first; refuses if the
    /// budget cannot take it.
    fn reserve(&mut self, additional: usize) -> Result<(), FrameError> {
        let needed = self.buffer.len() + additional;
        if needed > self.buffer.capacity() {
            let growth = needed.saturating_sub(self.charge.bytes());
            if !self.charge.try_grow(growth) {
                return Err(FrameError::MemoryExhausted { needed: additional });
            }
            self.buffer.reserve(additional);
            // The allocator may have given more than asked: charge it too, if the budget has it (at
            // most what was asked again, since a buffer grows at most twofold).
            let extra = self.buffer.capacity().saturating_sub(self.charge.bytes());
            let _ = self.charge.try_grow(extra);
        }
        Ok(())
    }

    /// Writes out the buffer, then the shared frame after it.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.buffer.is_empty() {
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buffer))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.buffer.advance(written);
        }
        // (The charge, not `capacity()`, tells how much is allocated: written bytes leave the front.)
        if self.charge.bytes() > KEEP_CAPACITY {
            self.buffer = BytesMut::new();
            self.charge.shrink_to(0);
        }
        while let Some(shared) = &mut self.shared {
            if shared.is_empty() {
                self.shared = None;
                break;
            }
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, shared))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            shared.advance(written);
        }
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> Sink<ReplyFrame> for FrameWriter<W> {
    type Error = FrameError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        let this = self.get_mut();
        if this.shared.is_some() || this.buffer.len() >= BACKPRESSURE {
            ready!(this.poll_write_out(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, frame: ReplyFrame) -> Result<(), FrameError> {
        let this = self.get_mut();
        let len = frame.encoded_len();
        if len > this.max_frame_len {
            return Err(FrameError::TooLarge { declared: len as u64, max: this.max_frame_len });
        }
        match frame {
            ReplyFrame::Response(response) => {
                this.reserve(HEADER_LEN + len)?;
                this.buffer.put_u32(len as u32);
                response.encode(&mut this.buffer).map_err(|e| {
                    FrameError::Io(io::Error::other(format!("protobuf encoding failed: {e}")))
                })?;
            }
            ReplyFrame::Encoded(payload) if payload.len() <= COPY_SHARED_UP_TO => {
                this.reserve(HEADER_LEN + len)?;
                this.buffer.put_u32(len as u32);
                this.buffer.put_slice(&payload);
            }
            ReplyFrame::Encoded(payload) => {
                // `poll_ready` has written out any shared frame before this one.
                this.reserve(HEADER_LEN)?;
                this.buffer.put_u32(len as u32);
                this.shared = Some(payload);
            }
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Poll::Ready(Ok(ready!(Pin::new(&mut this.inner).poll_flush(cx))?))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Poll::Ready(Ok(ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use tokio_util::codec::FramedRead;

    use super::*;
    use crate::pb::{CommandResponse, Value};
    use crate::transport::frame::FrameCodec;

    fn response(size: usize) -> CommandResponse {
        CommandResponse::with_values(vec![Value::from(vec![7u8; size])], Vec::new())
    }

    #[tokio::test]
    async fn encoded_and_shared_frames_arrive_in_order_and_decode_alike() {
        let budget = MemoryBudget::new(1 << 20);
        let (client, server) = tokio::io::duplex(1 << 20);
        let mut writer = FrameWriter::new(server, 1 << 20, &budget);
        let shared = |size| ReplyFrame::Encoded(Bytes::from(response(size).encode_to_vec()));
        for frame in [shared(10), response(5000).into(), shared(100_000), response(3).into(), shared(5000)] {
            writer.feed(frame).await.unwrap();
        }
        writer.flush().await.unwrap();
        drop(writer);
        let frames: Vec<CommandResponse> =
            FramedRead::new(client, FrameCodec::<CommandResponse>::new(1 << 20))
                .map(Result::unwrap)
                .collect()
                .await;
        let sizes: Vec<usize> = frames.iter().map(|f| f.values[0].encoded_len()).collect();
        let expected: Vec<usize> =
            [10, 5000, 100_000, 3, 5000].iter().map(|&n| response(n).values[0].encoded_len()).collect();
        assert_eq!(sizes, expected);
        assert_eq!(budget.available(), 1 << 20, "every charge came back");
    }

    #[tokio::test]
    async fn a_frame_the_budget_cannot_hold_is_refused_not_buffered() {
        let budget = MemoryBudget::new(64 * 1024);
        let (_client, server) = tokio::io::duplex(1024);
        let mut writer = FrameWriter::new(server, 1 << 20, &budget);
        let refused = writer.feed(response(100_000).into()).await;
        assert!(matches!(refused, Err(FrameError::MemoryExhausted { .. })), "{refused:?}");
        assert!(writer.buffer.capacity() < 64 * 1024, "nothing was allocated for it");
    }

    #[tokio::test]
    async fn a_buffer_grown_for_a_large_frame_is_given_back_once_written() {
        let budget = MemoryBudget::new(1 << 20);
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut writer = FrameWriter::new(server, 1 << 20, &budget);
        writer.send(response(500_000).into()).await.unwrap();
        assert!(budget.used() < KEEP_CAPACITY, "{} bytes still charged", budget.used());
        let mut sink = Vec::new();
        drop(writer);
        tokio::io::AsyncReadExt::read_to_end(&mut client, &mut sink).await.unwrap();
    }
}
