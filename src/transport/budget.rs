//! A budget for request bytes held in memory. Every reader of a connection shares one budget, and every
//! connection the server-wide [`MemoryBudget`]; a reader must cover the bytes it has read with both
//! before it may read more, so however many streams a peer opens and however slowly it finishes them,
//! the requests buffered stay within the connection's budget, and all connections' within the server's
//! (plus at most one read's worth each, itself capped by the transport's flow-control window, which the
//! connection's admission reserved).
//!
//! A reader that waits longer than its wait limit for the server-wide budget fails with
//! `io::ErrorKind::OutOfMemory`: the request was not executed, and is answered 503. (Waiting for the
//! connection's own budget is the peer's doing; the request timeout bounds it.)
//!
//! Both are returned when the reader is dropped, that is once its request has been executed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::sync::PollSemaphore;

use crate::memory::{Charge, MemoryBudget};

/// Bytes that the readers sharing this budget may hold at once.
#[derive(Clone)]
pub struct ReadBudget {
    bytes: Arc<Semaphore>,
    server: MemoryBudget,
    server_wait: Duration,
}

impl ReadBudget {
    /// Readers sharing `bytes`, drawing also from `server`, for which they wait at most `server_wait`.
    pub fn new(bytes: usize, server: MemoryBudget, server_wait: Duration) -> Self {
        ReadBudget { bytes: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))), server, server_wait }
    }

    /// Wraps `inner` so that what it reads is charged to this budget.
    pub fn reader<R>(&self, inner: R) -> BudgetedReader<R> {
        BudgetedReader {
            inner,
            budget: PollSemaphore::new(self.bytes.clone()),
            permits: None,
            covered: 0,
            read: 0,
            server: self.server.empty_charge(),
            server_wait: self.server_wait,
            waiting_since: None,
        }
    }

    /// Bytes currently available (for tests and metrics).
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

pub struct BudgetedReader<R> {
    inner: R,
    budget: PollSemaphore,
    permits: Option<OwnedSemaphorePermit>,
    /// Bytes covered by `permits`.
    covered: usize,
    /// Bytes read so far.
    read: usize,
    /// What has been read, charged to the server-wide budget.
    server: Charge,
    server_wait: Duration,
    /// Armed while waiting for the server-wide budget.
    waiting_since: Option<Pin<Box<Sleep>>>,
}

impl<R> BudgetedReader<R> {
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for BudgetedReader<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Pay for what has been read before reading more.
        while this.covered < this.read {
            let debt = u32::try_from(this.read - this.covered).unwrap_or(u32::MAX);
            let Some(permit) = ready!(this.budget.poll_acquire_many(cx, debt)) else {
                return Poll::Ready(Err(io::Error::other("read budget closed")));
            };
            this.covered += permit.num_permits();
            match &mut this.permits {
                Some(held) => held.merge(permit),
                None => this.permits = Some(permit),
            }
        }
        if this.server.poll_cover(cx, this.read).is_pending() {
            let wait = this.server_wait;
            let timer = this.waiting_since.get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
            ready!(timer.as_mut().poll(cx));
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "the server's connection memory budget stayed spent",
            )));
        }
        this.waiting_since = None;
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.read += buf.filled().len() - before;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn readers_wait_for_budget_and_return_it_when_dropped() {
        let budget = ReadBudget::new(10, MemoryBudget::unlimited(), std::time::Duration::from_secs(1));
        let mut first = budget.reader(&[1u8; 8][..]);
        let mut buf = [0u8; 8];
        first.read_exact(&mut buf).await.unwrap();
        // The next read pays for the first 8 bytes, leaving 2.
        assert_eq!(first.read(&mut [0u8; 1]).await.unwrap(), 0);
        assert_eq!(budget.available(), 2);

        let mut second = budget.reader(&[2u8; 8][..]);
        let mut buf = [0u8; 8];
        second.read_exact(&mut buf).await.unwrap();
        // Paying for these 8 bytes needs the first reader's budget back.
        let blocked =
            tokio::time::timeout(std::time::Duration::from_millis(50), second.read(&mut [0u8; 1])).await;
        assert!(blocked.is_err(), "a reader over budget must wait");
        drop(first);
        assert_eq!(second.read(&mut [0u8; 1]).await.unwrap(), 0);
        drop(second);
        assert_eq!(budget.available(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_cannot_get_server_memory_fails_after_its_wait() {
        let server = MemoryBudget::new(100);
        let held = server.try_charge(95).unwrap();
        let budget = ReadBudget::new(1000, server.clone(), std::time::Duration::from_secs(2));
        let mut reader = budget.reader(&[1u8; 20][..]);
        let mut buf = [0u8; 20];
        reader.read_exact(&mut buf).await.unwrap();
        let started = tokio::time::Instant::now();
        let failed = reader.read(&mut [0u8; 1]).await.unwrap_err();
        assert_eq!(failed.kind(), io::ErrorKind::OutOfMemory);
        assert_eq!(started.elapsed(), std::time::Duration::from_secs(2));
        drop((reader, held));
        assert_eq!(server.available(), 100, "every charge came back");
    }
}
