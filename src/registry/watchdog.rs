//! Idle detection for uploads. reqwest's read timeout runs from the moment a request is
//! sent until its answer's headers arrive, so a long upload would trip it however steadily
//! it moves. Uploads therefore use a client without one, and this watchdog instead: it
//! fails the upload only when no byte went out, and no answer came, for the idle limit.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use futures_util::Stream;
/// When an upload body last moved.
#[derive(Clone)]
pub(crate) struct Activity {
    origin: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    /// Starts counting now.
    pub(crate) fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_ms: Arc::default(),
        }
    }

    fn touch(&self) {
        let now = self.origin.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// How long nothing has moved.
    pub(crate) fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }

    /// Wraps a body stream so every chunk taken counts as activity.
    pub(crate) fn track<S>(&self, inner: S) -> Tracked<S> {
        Tracked {
            inner,
            activity: self.clone(),
        }
    }

    /// Resolves once nothing has moved for `limit`; checked a few times per limit.
    pub(crate) async fn stalled(&self, limit: Duration) {
        let tick = (limit / 4).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(tick).await;
            if self.idle_for() >= limit {
                return;
            }
        }
    }
}

/// A body stream that records activity.
pub(crate) struct Tracked<S> {
    inner: S,
    activity: Activity,
}

impl<S> Stream for Tracked<S>
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
{
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        if polled.is_ready() {
            self.activity.touch();
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test(start_paused = true)]
    async fn stalls_only_after_the_limit_without_activity() {
        let activity = Activity::new();
        let chunks = futures_util::stream::iter(vec![Ok(Bytes::from_static(b"ab"))]);
        let mut tracked = activity.track(chunks);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(activity.idle_for() >= Duration::from_secs(3));
        tracked.next().await.unwrap().unwrap();
        assert!(activity.idle_for() < Duration::from_millis(10));
        let start = tokio::time::Instant::now();
        activity.stalled(Duration::from_secs(2)).await;
        assert!(start.elapsed() >= Duration::from_secs(2));
    }
}
