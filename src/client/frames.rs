//! The frames of one reply, as they arrive, whichever the transport.

use std::sync::{Arc, OnceLock};

use futures_util::StreamExt;
use quinn::RecvStream;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

use super::tcp::Closed;
use super::{ClientError, ClientResult};
use crate::pb::CommandResponse;
use crate::transport::frame::FrameCodec;
use crate::transport::quic::codes;

/// The frames of one reply, read as they arrive. Dropping it before the last frame abandons the
/// request: over QUIC the server is told to stop sending (STOP_SENDING with code 0x12); over TCP the
/// rest of the reply is read and discarded.
pub struct ResponseFrames {
    source: Source,
    done: bool,
}

enum Source {
    Quic(FramedRead<RecvStream, FrameCodec<CommandResponse>>),
    /// Frames routed to this request by the connection's task; `closed` says why they stopped early.
    Tcp {
        frames: mpsc::Receiver<CommandResponse>,
        closed: Arc<OnceLock<Closed>>,
    },
}

impl ResponseFrames {
    pub(super) fn quic(recv: RecvStream, max_frame_len: usize) -> Self {
        ResponseFrames {
            source: Source::Quic(FramedRead::new(recv, FrameCodec::new(max_frame_len))),
            done: false,
        }
    }

    pub(super) fn tcp(frames: mpsc::Receiver<CommandResponse>, closed: Arc<OnceLock<Closed>>) -> Self {
        ResponseFrames { source: Source::Tcp { frames, closed }, done: false }
    }

    /// The next frame, or `None` after the last one (the one with `more = false`).
    pub async fn next(&mut self) -> Option<ClientResult<CommandResponse>> {
        if self.done {
            return None;
        }
        let frame = match &mut self.source {
            Source::Quic(frames) => match frames.next().await {
                Some(Ok(frame)) => Ok(frame),
                Some(Err(e)) => Err(ClientError::from_frame(e)),
                None => Err(ClientError::Protocol("the reply ended before its last frame".into())),
            },
            Source::Tcp { frames, closed } => match frames.recv().await {
                Some(frame) => Ok(frame),
                None => Err(closed
                    .get()
                    .map_or_else(|| Closed::Lost("the connection ended".into()).error(), Closed::error)),
            },
        };
        self.done = frame.as_ref().map_or(true, |frame| !frame.more);
        Some(frame)
    }
}

impl Drop for ResponseFrames {
    fn drop(&mut self) {
        if let (false, Source::Quic(frames)) = (self.done, &mut self.source) {
            let _ = frames.get_mut().stop(codes::CANCELLED);
        }
    }
}
