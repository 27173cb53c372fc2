//! A job while it is queued or running: its record, updated as the engine reports
//! progress, watchable by server-sent-event streams, and its cancel switch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::model::JobRecord;
use super::store::Fence;
use crate::engine::{SyncEvent, SyncObserver};

/// The in-memory side of an unfinished job.
#[derive(Debug)]
pub struct LiveJob {
    /// The job's id (fixed; read without cloning the record).
    pub id: i64,
    /// Fires when someone cancels the job.
    pub cancel: CancellationToken,
    /// This replica's hold on the job's row; every write carries it.
    pub fence: Fence,
    /// Why the job was picked up again (restart, takeover), for the top of its log.
    pub resumed_because: Option<String>,
    lost: AtomicBool,
    record: watch::Sender<JobRecord>,
}

impl LiveJob {
    /// Wraps a freshly stored or resumed record held under `fence`.
    pub fn new(record: JobRecord, fence: Fence, resumed_because: Option<String>) -> Arc<Self> {
        Arc::new(Self {
            id: record.id,
            cancel: CancellationToken::new(),
            fence,
            resumed_because,
            lost: AtomicBool::new(false),
            record: watch::Sender::new(record),
        })
    }

    /// Marks the job as taken over by another replica (its lease lapsed): this replica
    /// stops it and writes nothing more about it.
    pub fn lose(&self) {
        self.lost.store(true, Ordering::SeqCst);
        self.cancel.cancel();
    }

    /// Whether another replica has taken the job over.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// The record as it is now.
    pub fn snapshot(&self) -> JobRecord {
        self.record.borrow().clone()
    }

    /// Changes the record and wakes every watcher.
    pub fn update(&self, change: impl FnOnce(&mut JobRecord)) {
        self.record.send_modify(change);
    }

    /// A receiver that sees each new version of the record; it reports the channel
    /// closed once the job has ended and its final version was published.
    pub fn subscribe(&self) -> watch::Receiver<JobRecord> {
        self.record.subscribe()
    }
}

impl SyncObserver for LiveJob {
    fn on_event(&self, event: &SyncEvent<'_>) {
        self.record
            .send_if_modified(|record| record.progress.apply(event));
    }
}
