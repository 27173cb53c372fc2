//! Counts syncs still running, so shutdown can wait for them.
//!
//! A sync runs in its own task and outlives its HTTP request when the caller hangs up,
//! so waiting for open connections (what axum's graceful shutdown does) is not enough.

use std::sync::Arc;

use tokio::sync::watch;

/// The number of running syncs, observable by [`SyncTracker::wait_idle`].
#[derive(Debug)]
pub struct SyncTracker {
    active: watch::Sender<usize>,
}

/// Marks one sync as running until dropped, even when its task panics.
#[derive(Debug)]
pub struct SyncGuard(Arc<SyncTracker>);

impl Default for SyncTracker {
    fn default() -> Self {
        Self {
            active: watch::Sender::new(0),
        }
    }
}

impl SyncTracker {
    /// Counts one more running sync until the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> SyncGuard {
        self.active.send_modify(|n| *n += 1);
        SyncGuard(Arc::clone(self))
    }

    /// Syncs running right now.
    pub fn active(&self) -> usize {
        *self.active.borrow()
    }

    /// Resolves once no sync is running.
    pub async fn wait_idle(&self) {
        let mut rx = self.active.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

impl Drop for SyncGuard {
    fn drop(&mut self) {
        self.0.active.send_modify(|n| *n -= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    // Paused time: the sleep below resolves only once every other task is idle, so the
    // waiter has certainly run and is blocked, not merely unscheduled.
    #[tokio::test(start_paused = true)]
    async fn waits_until_every_guard_is_gone() {
        let tracker = Arc::new(SyncTracker::default());
        tracker.wait_idle().await;
        let a = tracker.start();
        let b = tracker.start();
        assert_eq!(tracker.active(), 2);
        let waiter = tokio::spawn({
            let tracker = tracker.clone();
            async move { tracker.wait_idle().await }
        });
        drop(a);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(b);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("idle after the last guard")
            .unwrap();
        assert_eq!(tracker.active(), 0);
    }
}
