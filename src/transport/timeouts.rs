//! Timeouts that cost nothing when nothing waits: the timer is armed only once an operation has to
//! wait, so the common case (data already there, room to write) registers no timer at all.
//!
//! - [`StallTimeout`]: a writer that fails when its peer stops reading (no progress for `timeout`).
//! - [`deadline`]: a future that fails if it is still waiting `timeout` after it first had to wait.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::time::{Instant, Sleep};

/// `future`, failing with `Elapsed` if it is still pending `timeout` after its first `Pending`.
pub fn deadline<F: Future>(timeout: Duration, future: F) -> Deadline<F> {
    Deadline { future, timeout, timer: None }
}

/// The deadline ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

pin_project_lite::pin_project! {
    pub struct Deadline<F> {
        #[pin]
        future: F,
        timeout: Duration,
        timer: Option<Pin<Box<Sleep>>>,
    }
}

impl<F: Future> Future for Deadline<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        let timeout = *this.timeout;
        let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        timer.as_mut().poll(cx).map(|()| Err(Elapsed))
    }
}

pub struct StallTimeout<W> {
    inner: W,
    timeout: Duration,
    /// Armed when a write first has to wait; disarmed by any progress.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<W> StallTimeout<W> {
    pub fn new(inner: W, timeout: Duration) -> Self {
        StallTimeout { inner, timeout, deadline: None }
    }

    /// Polls the deadline, arming it first if needed; completes with the error once it expires.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.timeout;
        let deadline =
            self.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer read nothing for {timeout:?}"),
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(&mut self, result: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match result {
            Poll::Ready(result) => {
                self.deadline = None;
                Poll::Ready(result)
            }
            Poll::Pending => self.poll_stalled(cx).map(Err),
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for StallTimeout<W> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(result, cx)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(result, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progress(result, cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_deadline_runs_from_the_first_wait() {
        assert_eq!(deadline(Duration::from_secs(1), async { 7 }).await, Ok(7));
        let waiting = deadline(Duration::from_secs(1), std::future::pending::<()>());
        assert_eq!(waiting.await, Err(Elapsed));
        let slow = deadline(Duration::from_secs(1), tokio::time::sleep(Duration::from_millis(500)));
        assert_eq!(slow.await, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_whose_peer_stops_reading_times_out() {
        let (writer, mut reader) = tokio::io::duplex(16);
        let mut writer = StallTimeout::new(writer, Duration::from_secs(5));
        writer.write_all(&[0; 16]).await.unwrap(); // fills the pipe
        let mut buf = [0; 8];
        tokio::io::AsyncReadExt::read_exact(&mut reader, &mut buf).await.unwrap();
        writer.write_all(&[0; 8]).await.unwrap(); // progress: fine
        let err = writer.write_all(&[0; 1]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
