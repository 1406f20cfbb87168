//! Requests and replies over any byte stream. What both drivers share (how a bad request is answered,
//! how a reply is written) is here, and so is the driver for a stream that carries exactly one request
//! (QUIC): one frame, then the end of the stream; the reply is one or more frames, the last with
//! `more = false` (docs/PROTOCOL.md, "Exchanges"). `pipeline` drives a stream of many requests (TCP).

use std::time::Duration;

use futures_util::{Sink, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{FramedRead, FramedWrite};

use super::Limits;
use super::frame::{FrameCodec, FrameError, encode_frame};
use super::timeouts::{self, StallTimeout};
use crate::pb::{CommandRequest, CommandResponse, status};
use crate::service::{Reply, Service};
use crate::storage::Storage;

/// Initial size of a request stream's read buffer.
const REQUEST_BUFFER: usize = 256;

/// Why a request could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the request stream ended before a request frame")]
    Empty,
    #[error("unexpected bytes after the request frame: a request stream carries exactly one frame")]
    TrailingData,
    #[error("the request did not arrive within {0:?}")]
    TimedOut(Duration),
}

impl RequestError {
    /// The status of the error response. (A failed stream, `FrameError::Io`, cannot be answered at all;
    /// the drivers handle it before asking.)
    pub fn status(&self) -> u32 {
        match self {
            RequestError::Frame(FrameError::TooLarge { .. }) => status::PAYLOAD_TOO_LARGE,
            RequestError::TimedOut(_) => status::REQUEST_TIMEOUT,
            RequestError::Frame(_) | RequestError::Empty | RequestError::TrailingData => status::BAD_REQUEST,
        }
    }

    /// The error response; `consequence` is appended to the message (", closing the connection").
    pub fn response(&self, consequence: &str) -> CommandResponse {
        CommandResponse::error(self.status(), format!("{self}{consequence}"))
    }
}

/// How a request stream was served.
#[derive(Debug)]
pub enum Served {
    /// The request was read whole and answered.
    Answered,
    /// The request was refused with an error response; unread input may remain on the stream.
    Rejected(RequestError),
}

/// Reads one request (one frame, then the end of the stream) within `limits.request_timeout`.
pub async fn read_request<R: AsyncRead + Unpin>(
    recv: R,
    limits: &Limits,
) -> Result<CommandRequest, RequestError> {
    let codec = FrameCodec::<CommandRequest>::new(limits.max_frame_len);
    // Requests are small; the codec makes room for a large one once its header says so.
    let mut frames = FramedRead::with_capacity(recv, codec, REQUEST_BUFFER);
    let read = async {
        let request = frames.next().await.ok_or(RequestError::Empty)??;
        // Any byte after the frame is an error. Check what is buffered, then wait for one more byte
        // or the end of the stream, rather than for a whole second frame.
        if !frames.read_buffer().is_empty() {
            return Err(RequestError::TrailingData);
        }
        match frames.into_inner().read(&mut [0u8; 1]).await {
            Ok(0) => Ok(request),
            Ok(_) => Err(RequestError::TrailingData),
            Err(e) => Err(FrameError::Io(e).into()),
        }
    };
    timeouts::deadline(limits.request_timeout, read)
        .await
        .unwrap_or(Err(RequestError::TimedOut(limits.request_timeout)))
}

/// Writes every frame of `reply`; fails with `TimedOut` if the peer reads nothing of it for
/// `limits.reply_timeout`.
pub async fn write_reply<W: AsyncWrite + Unpin>(
    send: W,
    reply: Reply,
    limits: &Limits,
) -> Result<(), FrameError> {
    let mut send = StallTimeout::new(send, limits.reply_timeout);
    match reply {
        // The common case, one frame: encoded once into a buffer of its exact size.
        Reply::One(response) => {
            let frame = encode_frame(&response, limits.max_frame_len)?;
            send.write_all(&frame).await?;
            Ok(send.flush().await?)
        }
        reply @ Reply::Stream(_) => {
            let mut frames = FramedWrite::new(send, FrameCodec::<CommandResponse>::new(limits.max_frame_len));
            feed_reply(&mut frames, reply).await?;
            SinkExt::<CommandResponse>::flush(&mut frames).await
        }
    }
}

/// Writes a reply's frames into a sink's buffer: one frame is left unflushed (the caller flushes when
/// it has nothing else to write); a stream of frames is flushed whenever its producer has to wait, so a
/// slow producer's frames are not held back.
pub async fn feed_reply<S>(frames: &mut S, reply: Reply) -> Result<(), FrameError>
where
    S: Sink<CommandResponse, Error = FrameError> + Unpin,
{
    match reply {
        Reply::One(response) => frames.feed(response).await,
        Reply::Stream(mut stream) => frames.send_all(&mut stream.by_ref().map(Ok)).await,
    }
}

/// Serves one request stream: reads the request, executes it, writes the reply. An unreadable request
/// is answered with an error response (docs/PROTOCOL.md, "Errors"). Returns an error only when the
/// stream itself failed, for instance because the peer reset it or the connection was lost.
pub async fn serve_request<R, W, S>(
    mut recv: R,
    send: W,
    service: &Service<S>,
    limits: &Limits,
) -> Result<Served, FrameError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    S: Storage,
{
    // `recv` lives until the reply is written: a budgeted reader keeps its request's bytes charged
    // while the request executes.
    let (reply, served) = match read_request(&mut recv, limits).await {
        Ok(request) => {
            tracing::Span::current().record("command", request.command_name());
            (service.execute(request).await, Served::Answered)
        }
        Err(RequestError::Frame(FrameError::Io(e))) => return Err(FrameError::Io(e)),
        Err(e) => {
            tracing::info!(error = %e, "rejected a request");
            (e.response("").into(), Served::Rejected(e))
        }
    };
    write_reply(send, reply, limits).await?;
    Ok(served)
}
