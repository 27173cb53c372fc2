//! A job while it is queued or running: its record, updated as the engine reports
//! progress, watchable by server-sent-event streams, and its cancel switch.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::model::{JobRecord, JobState, JobWaiting};
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
    /// Rate-limit waits of the engine in progress (several images may wait at once).
    waits: AtomicUsize,
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
            waits: AtomicUsize::new(0),
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
        match *event {
            // A job waiting for a registry's quota is not copying: it shows as queued, with
            // the reason, until the wait is over (the engine knows nothing of jobs; it only
            // says that it waits).
            SyncEvent::RateLimitWait {
                registry,
                wait,
                reason,
                again,
                ..
            } => {
                let waiting = JobWaiting::rate_limited(registry, wait, reason, chrono::Utc::now());
                tracing::info!(job = self.id, "{}", waiting.message);
                self.record.send_modify(|job| {
                    if !again {
                        self.waits.fetch_add(1, Ordering::SeqCst);
                    }
                    if job.state == JobState::Running {
                        job.state = JobState::Queued;
                    }
                    job.waiting = Some(waiting);
                });
            }
            SyncEvent::RateLimitOver { .. } => {
                self.record.send_modify(|job| {
                    let left = self.waits.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
                    if left == 0 {
                        job.waiting = None;
                        if job.state == JobState::Queued {
                            job.state = JobState::Running;
                        }
                    }
                });
            }
            _ => {
                self.record
                    .send_if_modified(|record| record.progress.apply(event));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::model::{NewJob, Trigger};
    use std::time::Duration;

    #[test]
    fn a_rate_limit_wait_shows_as_queued_with_the_reason_until_it_is_over() {
        let mut record = NewJob {
            user: "u".into(),
            trigger: Trigger::Request,
            request: crate::engine::SyncRequest::default(),
            rsync_config: serde_json::Value::Null,
            asynchronous: true,
            callback_url: None,
            max_wait: None,
        }
        .into_record(chrono::Utc::now());
        record.state = JobState::Running;
        let live = LiveJob::new(
            record,
            Fence {
                owner: "r1".into(),
                attempt: 1,
            },
            None,
        );
        let wait = |image, again| SyncEvent::RateLimitWait {
            image,
            registry: "docker.io",
            wait: Duration::from_secs(216),
            reason: "only 2 of 100 pulls left",
            again,
        };
        let over = SyncEvent::RateLimitOver {
            registry: "docker.io",
        };
        live.on_event(&wait(Some(0), false));
        live.on_event(&wait(Some(0), true));
        live.on_event(&wait(Some(1), false));
        let job = live.snapshot();
        assert_eq!(job.state, JobState::Queued);
        let waiting = job.waiting.expect("waiting");
        assert_eq!(waiting.reason, "rate_limited");
        assert!(
            waiting
                .message
                .starts_with("rate_limited: registry docker.io quota, resuming at ")
                && waiting.message.ends_with(": only 2 of 100 pulls left"),
            "{}",
            waiting.message
        );
        live.on_event(&over);
        assert_eq!(
            live.snapshot().state,
            JobState::Queued,
            "image 1 still waits"
        );
        live.on_event(&over);
        let job = live.snapshot();
        assert_eq!(job.state, JobState::Running);
        assert!(job.waiting.is_none());
    }
}
