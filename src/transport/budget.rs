//! A budget for request bytes held in memory. Every reader of a connection shares one budget; a reader
//! must cover the bytes it has read with budget before it may read more, so however many streams a
//! peer opens and however slowly it finishes them, the requests buffered stay within the budget (plus at
//! most one read's worth, itself capped by the transport's flow-control window).
//!
//! The budget is returned when the reader is dropped, that is when its request has been read.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;

/// Bytes that the readers sharing this budget may hold at once.
#[derive(Clone)]
pub struct ReadBudget {
    bytes: Arc<Semaphore>,
}

impl ReadBudget {
    pub fn new(bytes: usize) -> Self {
        ReadBudget { bytes: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))) }
    }

    /// Wraps `inner` so that what it reads is charged to this budget.
    pub fn reader<R>(&self, inner: R) -> BudgetedReader<R> {
        BudgetedReader {
            inner,
            budget: PollSemaphore::new(self.bytes.clone()),
            permits: None,
            covered: 0,
            read: 0,
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
        let budget = ReadBudget::new(10);
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
}
