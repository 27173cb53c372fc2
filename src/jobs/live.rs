//! A job while it is queued or running: its record, updated as the engine reports
//! progress, watchable by server-sent-event streams, and its cancel switch.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::model::JobRecord;
use crate::engine::{SyncEvent, SyncObserver};

/// The in-memory side of an unfinished job.
#[derive(Debug)]
pub struct LiveJob {
    /// The job's id (fixed; read without cloning the record).
    pub id: i64,
    /// Fires when someone cancels the job.
    pub cancel: CancellationToken,
    record: watch::Sender<JobRecord>,
}

impl LiveJob {
    /// Wraps a freshly stored or resumed record.
    pub fn new(record: JobRecord) -> Arc<Self> {
        Arc::new(Self {
            id: record.id,
            cancel: CancellationToken::new(),
            record: watch::Sender::new(record),
        })
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
