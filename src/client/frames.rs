//! The frames of one reply, as they arrive, whichever the transport.

use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_util::{FutureExt, StreamExt};
use quinn::RecvStream;
use tokio_util::codec::FramedRead;

use super::tcp::{AnswerReceiver, State};
use super::{ClientError, ClientResult};
use crate::pb::CommandResponse;
use crate::transport::frame::FrameCodec;
use crate::transport::quic::codes;

/// Initial size of a QUIC answer's read buffer.
const ANSWER_BUFFER: usize = 512;

/// The frames of one reply, read as they arrive. Dropping it before the last frame abandons the
/// request: over QUIC the server is told to stop sending (STOP_SENDING with code 0x12); over TCP the
/// rest of the reply is read and discarded. Over TCP, a reply that is neither read nor dropped is kept
/// in memory as it arrives: the connection goes on serving other calls.
pub struct ResponseFrames {
    source: Source,
    /// A frame read ahead by [`ResponseFrames::wait_first`], returned by the next `next`.
    peeked: Option<CommandResponse>,
    /// The last frame has been read.
    done: bool,
}

enum Source {
    Quic(FramedRead<RecvStream, FrameCodec<CommandResponse>>),
    /// Frames routed to this request by the connection's reader; `state` says why they stopped early.
    Tcp {
        frames: AnswerReceiver,
        state: Arc<State>,
    },
    /// Frames as a web transport translated them.
    #[cfg(feature = "web-client")]
    Web(super::web::WebFrames),
}

impl ResponseFrames {
    pub(super) fn quic(recv: RecvStream, max_frame_len: usize) -> Self {
        // Answers are usually small; the codec makes room for a large one once its header says so.
        let frames = FramedRead::with_capacity(recv, FrameCodec::new(max_frame_len), ANSWER_BUFFER);
        ResponseFrames { source: Source::Quic(frames), peeked: None, done: false }
    }

    pub(super) fn tcp(frames: AnswerReceiver, state: Arc<State>) -> Self {
        ResponseFrames { source: Source::Tcp { frames, state }, peeked: None, done: false }
    }

    #[cfg(feature = "web-client")]
    pub(super) fn web(frames: super::web::WebFrames) -> Self {
        ResponseFrames { source: Source::Web(frames), peeked: None, done: false }
    }

    /// The message of the first frame when it is a 503 (read ahead already), which refuses the request.
    pub(super) fn unavailable(&self) -> Option<String> {
        let first = self.peeked.as_ref().filter(|first| first.status == crate::pb::status::UNAVAILABLE);
        first.map(|first| first.message.clone())
    }

    /// The next frame, or `None` after the last one (the one with `more = false`).
    pub async fn next(&mut self) -> Option<ClientResult<CommandResponse>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// [`ResponseFrames::next`] for code that polls (a `Stream` built on it).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<ClientResult<CommandResponse>>> {
        if let Some(frame) = self.peeked.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let frame = match &mut self.source {
            Source::Quic(frames) => match ready!(frames.poll_next_unpin(cx)) {
                Some(Ok(frame)) => Ok(frame),
                Some(Err(e)) => Err(ClientError::from_frame(e)),
                None => Err(ClientError::Protocol("the reply ended before its last frame".into())),
            },
            Source::Tcp { frames, state } => match ready!(frames.poll_next_unpin(cx)) {
                Some(Ok(frame)) => Ok(frame),
                Some(Err(closed)) => Err(closed.error()),
                None => Err(state.reason().error()),
            },
            #[cfg(feature = "web-client")]
            Source::Web(frames) => match ready!(frames.poll_next_unpin(cx)) {
                Some(frame) => frame,
                None => Err(ClientError::Protocol("the reply ended before its last frame".into())),
            },
        };
        self.done = frame.as_ref().map_or(true, |frame| !frame.more);
        Poll::Ready(Some(frame))
    }

    /// Waits for the first frame and keeps it for `next`: until it has come, a failure may mean the
    /// request was never executed, and the call may be retried.
    pub(super) async fn wait_first(&mut self) -> ClientResult<()> {
        if let Some(frame) = self.next().await {
            self.peeked = Some(frame?);
        }
        Ok(())
    }
}

impl futures_util::Stream for ResponseFrames {
    type Item = ClientResult<CommandResponse>;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        ResponseFrames::poll_next(self.get_mut(), cx)
    }
}

impl Drop for ResponseFrames {
    fn drop(&mut self) {
        let Source::Quic(frames) = &mut self.source else { return };
        let stream = frames.get_mut();
        match self.done {
            false => {
                let _ = stream.stop(codes::CANCELLED);
            }
            // Every frame is in, but the codec stopped at the last one without reading on: take the
            // stream's end, which the server sends with its last frame, so that quinn counts the stream
            // read to its end. Dropped before that, it sends the server STOP_SENDING for a stream read
            // whole (a frame for nothing, after every request). An end still on its way is not waited
            // for.
            true => {
                let _ = stream.read_chunk(usize::MAX, true).now_or_never();
            }
        }
    }
}
