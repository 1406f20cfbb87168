//! A byte stream carried in messages: a WebSocket's binary messages, or the `Frames` messages of a
//! gRPC `Pipeline` call. The pipeline (server) and the pipelined client run on it exactly as on a TCP
//! socket; message boundaries mean nothing to them.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::io::{CopyToBytes, SinkWriter, StreamReader};

/// The smallest message limit a server accepts (`--websocket-max-message`): a frame header and a small
/// request. A peer that does not say what it accepts is sent messages no larger.
pub const MIN_MAX_MESSAGE: usize = 1024;

/// Reads the payloads of `incoming` in order; each write becomes one message into `outgoing`, of at
/// most `max_message` bytes (so that none is over what the peer accepts).
pub fn message_stream<I, O>(incoming: I, outgoing: O, max_message: usize) -> impl AsyncRead + AsyncWrite
where
    I: Stream<Item = std::io::Result<Bytes>>,
    O: Sink<Bytes, Error = std::io::Error>,
{
    let writer = Chunked { inner: SinkWriter::new(CopyToBytes::new(outgoing)), max: max_message.max(1) };
    tokio::io::join(StreamReader::new(incoming), writer)
}

pin_project_lite::pin_project! {
    /// Writes at most `max` bytes at a time.
    struct Chunked<W> {
        #[pin]
        inner: W,
        max: usize,
    }
}

impl<W: AsyncWrite> AsyncWrite for Chunked<W> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let len = buf.len().min(*this.max);
        this.inner.poll_write(cx, &buf[..len])
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt, stream};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn tokio_stream_of(mut received: tokio::sync::mpsc::Receiver<Bytes>) -> impl Stream<Item = Bytes> {
        stream::poll_fn(move |cx| received.poll_recv(cx))
    }

    #[tokio::test]
    async fn bytes_cross_message_boundaries_both_ways() {
        let incoming = stream::iter([Bytes::from_static(b"ab"), Bytes::from_static(b"cde")].map(Ok));
        let (sent, received) = tokio::sync::mpsc::channel::<Bytes>(8);
        let outgoing = tokio_util::sync::PollSender::new(sent).sink_map_err(std::io::Error::other);
        let mut io = Box::pin(message_stream(incoming, outgoing, 4));
        let mut read = String::new();
        io.read_to_string(&mut read).await.expect("read");
        assert_eq!(read, "abcde", "the messages' payloads, in order, as one stream");
        io.write_all(b"0123456789").await.expect("write");
        io.shutdown().await.expect("shutdown");
        drop(io);
        let messages: Vec<Bytes> = tokio_stream_of(received).collect().await;
        assert_eq!(messages, [&b"0123"[..], b"4567", b"89"], "writes are cut at the message limit");
    }
}
