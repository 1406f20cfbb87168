//! Timeouts that cost nothing when nothing waits: the timer is armed only once an operation has to
//! wait, so the common case (data already there, room to write) registers no timer at all.
//!
//! - [`StallTimeout`]: a writer that fails when its peer stops reading, or reads only a trickle (less
//!   than [`DEFAULT_MIN_PROGRESS`] bytes, or what is set, within `timeout` of having to wait). Wrapped
//!   around a whole connection (a TCP or web listener's socket, beneath TLS), it reads as the
//!   connection does.
//! - [`deadline`]: a future that fails if it is still waiting `timeout` after it first had to wait.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `future`, failing with `Elapsed` if it is still pending `timeout` after its first `Pending`.
pub fn deadline<F: Future>(timeout: Duration, future: F) -> Deadline<F> {
    Deadline { future, timeout, timer: None }
}

/// The deadline ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

pin_project_lite::pin_project! {
    /// A future bounded by a timeout that starts at its first poll.
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

/// The default of what a stalled writer must get written within its timeout for the stall to count as
/// over: a peer that reads less than this per timeout (16 KiB per 30 s by default, about 550 bytes a
/// second) is treated as one that does not read, so that reading a byte now and then cannot hold a
/// reply open.
pub const DEFAULT_MIN_PROGRESS: usize = 16 * 1024;

/// The error a [`StallTimeout`] fails with (kind `TimedOut`): its peer read too little.
#[derive(Debug)]
pub struct Stalled {
    min_progress: usize,
    timeout: Duration,
}

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the peer read less than {} bytes in {:?}", self.min_progress, self.timeout)
    }
}

impl std::error::Error for Stalled {}

impl Stalled {
    /// Whether `error` is a [`StallTimeout`]'s (not another timeout, such as TCP keep-alive's).
    pub fn is(error: &io::Error) -> bool {
        error.get_ref().is_some_and(|inner| inner.is::<Stalled>())
    }
}

/// A writer that fails once its peer reads too little (see the module documentation). Wrap what sees
/// the bytes leave: a socket beneath TLS, not the TLS stream, whose flush waits (counting nothing)
/// while the client takes what TLS has buffered.
pub struct StallTimeout<W> {
    inner: W,
    timeout: Duration,
    /// Bytes a stall must see written within `timeout` (see `DEFAULT_MIN_PROGRESS`).
    min_progress: usize,
    /// Armed when a write first has to wait; disarmed once the stall is over (see `progress`).
    deadline: Option<Pin<Box<Sleep>>>,
    /// The last poll returned `Pending`: the writer is waiting for the peer.
    waiting: bool,
    /// Bytes written since the deadline was armed.
    written_in_stall: usize,
    /// Set when the stall times out (see [`StallTimeout::alarm`]).
    alarm: Option<Arc<AtomicBool>>,
}

impl<W> StallTimeout<W> {
    /// A writer that fails when, once it has had to wait, fewer than `min_progress` bytes get written
    /// within `timeout`.
    pub fn new(inner: W, timeout: Duration, min_progress: usize) -> Self {
        StallTimeout {
            inner,
            timeout,
            min_progress,
            deadline: None,
            waiting: false,
            written_in_stall: 0,
            alarm: None,
        }
    }

    /// Sets `alarm` when the stall times out: for a caller whose error reaches it rebuilt (h2 keeps an
    /// I/O error's kind and text only), to tell a stall from other failures.
    pub fn alarm(mut self, alarm: Arc<AtomicBool>) -> Self {
        self.alarm = Some(alarm);
        self
    }

    /// The writer underneath.
    pub fn into_inner(self) -> W {
        self.inner
    }

    /// Polls the deadline, arming it first if needed; completes with the error once it expires.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let (timeout, min_progress) = (self.timeout, self.min_progress);
        let deadline =
            self.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                if let Some(alarm) = &self.alarm {
                    alarm.store(true, Ordering::Relaxed);
                }
                Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, Stalled { min_progress, timeout }))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Tracks a stall: it ends when an operation completes without waiting (the peer has made room),
    /// or when `min_progress` bytes have been written since it began.
    fn progress<T>(
        &mut self,
        result: Poll<io::Result<T>>,
        written: impl FnOnce(&T) -> usize,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Ready(result) => {
                let waited = std::mem::replace(&mut self.waiting, false);
                if let Ok(value) = &result {
                    self.written_in_stall += written(value);
                }
                if !waited || self.written_in_stall >= self.min_progress {
                    self.deadline = None;
                    self.written_in_stall = 0;
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                self.waiting = true;
                self.poll_stalled(cx).map(Err)
            }
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for StallTimeout<W> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(result, |&n| n, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(result, |&n| n, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(result, |_| 0, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progress(result, |_| 0, cx)
    }
}

/// Reads are the connection's own: only writes wait for the peer to read.
impl<W: AsyncRead + Unpin> AsyncRead for StallTimeout<W> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
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
        let alarm = Arc::new(AtomicBool::new(false));
        let mut writer =
            StallTimeout::new(writer, Duration::from_secs(5), DEFAULT_MIN_PROGRESS).alarm(alarm.clone());
        writer.write_all(&[0; 16]).await.unwrap(); // fills the pipe
        let mut buf = [0; 8];
        tokio::io::AsyncReadExt::read_exact(&mut reader, &mut buf).await.unwrap();
        writer.write_all(&[0; 8]).await.unwrap(); // progress: fine
        assert!(!alarm.load(Ordering::Relaxed));
        let err = writer.write_all(&[0; 1]).await.unwrap_err();
        assert!(alarm.load(Ordering::Relaxed), "the alarm is set");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(Stalled::is(&err), "{err}");
        assert!(!Stalled::is(&io::Error::from(io::ErrorKind::TimedOut)));
    }

    /// Reads `chunk` bytes every `every` until the writer is done or fails.
    async fn reader(mut reader: tokio::io::DuplexStream, chunk: usize, every: Duration) {
        let mut buf = vec![0; chunk];
        loop {
            tokio::time::sleep(every).await;
            match tokio::io::AsyncReadExt::read(&mut reader, &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_reads_a_trickle_times_out_and_a_slow_steady_one_does_not() {
        let timeout = Duration::from_secs(5);
        // A byte every 4 s: always some progress within the timeout, never enough.
        let (writer, trickle) = tokio::io::duplex(1024);
        tokio::spawn(reader(trickle, 1, Duration::from_secs(4)));
        let mut writer = StallTimeout::new(writer, timeout, DEFAULT_MIN_PROGRESS);
        let err = writer.write_all(&[0; 4096]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        // 8 KiB every 2 s: slow, but more than the minimum progress per timeout.
        let (writer, steady) = tokio::io::duplex(8 * 1024);
        let reading = tokio::spawn(reader(steady, 8 * 1024, Duration::from_secs(2)));
        let mut writer = StallTimeout::new(writer, timeout, DEFAULT_MIN_PROGRESS);
        writer.write_all(&[0; 256 * 1024]).await.unwrap();
        drop(writer);
        reading.await.unwrap();
    }
}
