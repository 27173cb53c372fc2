//! What a job is: its state, its request, its live progress and, once done, its result.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::{BlobKind, ImageStatus, Step, SyncEvent, SyncRequest};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a sync slot.
    Queued,
    /// The engine is copying.
    Running,
    /// Every image landed.
    Succeeded,
    /// The request was unusable or a registry made an image fail.
    Failed,
    /// Someone cancelled it before it ended.
    Cancelled,
}

impl JobState {
    /// Every state, for parsing and documentation.
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The lower-case name used in JSON, query strings and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// The state named `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether the job has ended and will not change again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// What started a job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A caller posted a sync (jobs stored before triggers existed read as this).
    #[default]
    Request,
    /// A mirror's schedule came due.
    Schedule,
    /// A registry announced a push to a mirror's source.
    Push,
    /// An admin started a mirror by hand.
    Manual,
}

impl Trigger {
    /// The lower-case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Request => "request",
            Trigger::Schedule => "schedule",
            Trigger::Push => "push",
            Trigger::Manual => "manual",
        }
    }
}

/// Progress of one image copy of a job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageProgress {
    /// Source reference.
    pub source: String,
    /// Target reference.
    pub target: String,
    /// What the copy is doing.
    pub step: Step,
    /// Distinct blobs the image needs (known once its manifests are read).
    pub blobs_total: u64,
    /// Blobs at the target so far (copied, mounted or already there).
    pub blobs_done: u64,
    /// Total size of those blobs.
    pub bytes_total: u64,
    /// Bytes at the target so far.
    pub bytes_done: u64,
    /// Referrers (signatures, attestations, SBOMs) written to the target so far.
    #[serde(default)]
    pub referrers_copied: u64,
    /// The image's outcome, once it ended.
    pub status: Option<ImageStatus>,
}

/// Progress of a whole job: per image, and summed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobProgress {
    /// One entry per image copy, in plan order.
    pub images: Vec<ImageProgress>,
    /// Sum of the images' `blobs_total`.
    pub blobs_total: u64,
    /// Sum of the images' `blobs_done`.
    pub blobs_done: u64,
    /// Sum of the images' `bytes_total`.
    pub bytes_total: u64,
    /// Sum of the images' `bytes_done`.
    pub bytes_done: u64,
    /// Sum of the images' `referrers_copied`.
    #[serde(default)]
    pub referrers_copied: u64,
    /// Registry steps tried again so far.
    pub retries: u64,
}

impl JobProgress {
    /// Folds one engine event in; returns whether anything visible changed.
    pub fn apply(&mut self, event: &SyncEvent<'_>) -> bool {
        match *event {
            SyncEvent::Planned { images } => {
                self.images = images
                    .iter()
                    .map(|(source, target)| ImageProgress {
                        source: source.clone(),
                        target: target.clone(),
                        ..ImageProgress::default()
                    })
                    .collect();
            }
            SyncEvent::Step { image, step } => {
                let Some(p) = self.images.get_mut(image) else {
                    return false;
                };
                if p.step == step {
                    return false;
                }
                p.step = step;
            }
            SyncEvent::BlobsPlanned {
                image,
                blobs,
                bytes,
            } => {
                let Some(p) = self.images.get_mut(image) else {
                    return false;
                };
                p.blobs_total = blobs;
                p.bytes_total = bytes;
            }
            SyncEvent::BytesMoved { image, delta } => {
                let Some(p) = self.images.get_mut(image) else {
                    return false;
                };
                p.bytes_done = p.bytes_done.saturating_add_signed(delta);
            }
            SyncEvent::BlobDone {
                image, kind, bytes, ..
            } => {
                let Some(p) = self.images.get_mut(image) else {
                    return false;
                };
                p.blobs_done += 1;
                // Copied bytes were counted as they streamed.
                if kind != BlobKind::Copied {
                    p.bytes_done += bytes;
                }
            }
            SyncEvent::ReferrerCopied { image, .. } => {
                let Some(p) = self.images.get_mut(image) else {
                    return false;
                };
                p.referrers_copied += 1;
            }
            SyncEvent::Retry { .. } => self.retries += 1,
            // The job's state and `waiting` show these (see LiveJob).
            SyncEvent::RateLimitWait { .. } | SyncEvent::RateLimitOver { .. } => return false,
            SyncEvent::ImageFinished { image, result } => {
                let Some(p) = self.images.get_mut(image) else {
                    return false;
                };
                p.status = Some(result.status);
                p.step = Step::Done;
            }
        }
        self.sum();
        true
    }

    fn sum(&mut self) {
        let total = |f: fn(&ImageProgress) -> u64| self.images.iter().map(f).sum::<u64>();
        (self.blobs_total, self.blobs_done) = (total(|p| p.blobs_total), total(|p| p.blobs_done));
        (self.bytes_total, self.bytes_done) = (total(|p| p.bytes_total), total(|p| p.bytes_done));
        self.referrers_copied = total(|p| p.referrers_copied);
    }
}

/// Whether the completion webhook got through.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackStatus {
    /// The receiver answered 2xx.
    pub delivered: bool,
    /// Attempts made.
    pub attempts: u32,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// Not sent at all: at delivery the host resolved to an internal address that
    /// `rsyncserver.jobs.callback_allowed_hosts` does not list (`last_error` says which).
    #[serde(default)]
    pub refused: bool,
}

/// Everything known about one job; what the store keeps and the API shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Assigned by the store; increases with every job.
    pub id: i64,
    /// The service user who asked for it (`mirror:<name>` for a mirror's runs).
    pub user: String,
    /// What started it.
    #[serde(default)]
    pub trigger: Trigger,
    /// Where it is in its life.
    pub state: JobState,
    /// What to copy.
    pub request: SyncRequest,
    /// `rsync_config` as the caller spelled it, echoed in the result.
    pub rsync_config: Value,
    /// Whether the caller asked for a `202` instead of waiting.
    #[serde(rename = "async")]
    pub asynchronous: bool,
    /// Where the result is POSTed when the job ends.
    pub callback_url: Option<String>,
    /// When the request arrived.
    pub created_at: DateTime<Utc>,
    /// When the engine started on it (the latest start, after a resume).
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Seconds it waited in the queue for a sync slot (from `created_at` to the latest
    /// `started_at`); unset until it starts.
    #[serde(default)]
    pub queued_seconds: Option<f64>,
    /// How often it was picked up again after a service restart.
    pub resumed: u32,
    /// Who cancelled it, when someone did.
    pub cancelled_by: Option<String>,
    /// Live counts while running; the final counts afterwards.
    pub progress: JobProgress,
    /// The body a synchronous POST answers with, once the job ended.
    pub result: Option<Value>,
    /// The HTTP status a synchronous POST answers with, once the job ended.
    pub http_status: Option<u16>,
    /// Delivery of the completion webhook, when one was asked for.
    pub callback: Option<CallbackStatus>,
    /// While a started job waits for a registry's rate limit (its state is then `queued`
    /// again): why, and until when. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<JobWaiting>,
}

/// Why a started job waits, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobWaiting {
    /// The failure class the wait avoids: `rate_limited`.
    pub reason: String,
    /// host[:port] of the registry whose limit it waits for.
    pub registry: String,
    /// When the job expects to go on (it looks again then).
    pub until: DateTime<Utc>,
    /// One line for people: `rate_limited: registry R quota, resuming at T: why`.
    pub message: String,
}

impl JobWaiting {
    /// A wait of `wait` from `now` for `registry`'s rate limit, for `why`.
    pub fn rate_limited(
        registry: &str,
        wait: std::time::Duration,
        why: &str,
        now: DateTime<Utc>,
    ) -> Self {
        let until = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
        let at = until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        Self {
            reason: "rate_limited".into(),
            registry: registry.to_owned(),
            until,
            message: format!("rate_limited: registry {registry} quota, resuming at {at}: {why}"),
        }
    }
}

/// What a caller hands over to create a job.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The service user.
    pub user: String,
    /// What started it.
    pub trigger: Trigger,
    /// What to copy.
    pub request: SyncRequest,
    /// `rsync_config` as sent, for the echo.
    pub rsync_config: Value,
    /// Answer 202 at once instead of waiting.
    pub asynchronous: bool,
    /// Completion webhook.
    pub callback_url: Option<String>,
    /// For a synchronous job: the longest its caller waits for a registry's rate limit
    /// (`Prefer: wait=N`); `None` takes `rsyncserver.jobs.sync_wait_seconds`.
    pub max_wait: Option<std::time::Duration>,
}

impl NewJob {
    /// The record of this job before the store gives it an id.
    pub fn into_record(self, now: DateTime<Utc>) -> JobRecord {
        JobRecord {
            id: 0,
            user: self.user,
            trigger: self.trigger,
            state: JobState::Queued,
            request: self.request,
            rsync_config: self.rsync_config,
            asynchronous: self.asynchronous,
            callback_url: self.callback_url,
            created_at: now,
            started_at: None,
            finished_at: None,
            queued_seconds: None,
            resumed: 0,
            cancelled_by: None,
            progress: JobProgress::default(),
            result: None,
            http_status: None,
            callback: None,
            waiting: None,
        }
    }
}

/// Which jobs a listing returns; newest first.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this user's jobs.
    pub user: Option<String>,
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs created at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only jobs with a smaller id (the next page of a listing).
    pub before_id: Option<i64>,
    /// At most this many.
    pub limit: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ImageResult;

    #[test]
    fn progress_counts_bytes_once_and_rewinds_failed_attempts() {
        let mut p = JobProgress::default();
        let images = [("a".to_owned(), "b".to_owned())];
        p.apply(&SyncEvent::Planned { images: &images });
        p.apply(&SyncEvent::BlobsPlanned {
            image: 0,
            blobs: 2,
            bytes: 300,
        });
        p.apply(&SyncEvent::BytesMoved {
            image: 0,
            delta: 100,
        });
        p.apply(&SyncEvent::BytesMoved {
            image: 0,
            delta: -100,
        });
        p.apply(&SyncEvent::BytesMoved {
            image: 0,
            delta: 200,
        });
        for (kind, bytes) in [(BlobKind::Copied, 200), (BlobKind::Skipped, 100)] {
            p.apply(&SyncEvent::BlobDone {
                image: 0,
                registry: "r",
                kind,
                bytes,
            });
        }
        assert_eq!((p.blobs_done, p.blobs_total), (2, 2));
        assert_eq!((p.bytes_done, p.bytes_total), (300, 300));
        assert!(!p.apply(&SyncEvent::Step {
            image: 7,
            step: Step::Done
        }));
        let result = ImageResult {
            status: ImageStatus::Synced,
            ..ImageResult::default()
        };
        p.apply(&SyncEvent::ImageFinished {
            image: 0,
            result: &result,
        });
        assert_eq!(p.images[0].step, Step::Done);
        assert_eq!(p.images[0].status, Some(ImageStatus::Synced));
    }

    #[test]
    fn states_round_trip_by_name() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobState::parse("done"), None);
        assert!(JobState::Cancelled.is_final() && !JobState::Queued.is_final());
    }
}
