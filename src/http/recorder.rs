//! Where a finished sync is written down: one tracing line, one analysis-log line and
//! one count in the metrics per sync request, and the answer body a job keeps as its
//! result.

use std::sync::Arc;

use chrono::Local;

use super::response::{AnalysisEntry, Outcome, RsyncConfigEcho, SyncResponse};
use crate::analysis_log::AnalysisLog;
use crate::engine::{FailureKind, SyncStatus};
use crate::jobs::{JobEnd, JobHooks, JobRecord, JobResult};
use crate::metrics::{Metrics, SyncOutcome};

/// Records sync answers; also the job manager's hook for finished jobs.
#[derive(Debug, Clone)]
pub struct Recorder {
    analysis_log: Arc<AnalysisLog>,
    metrics: Arc<Metrics>,
}

impl Recorder {
    /// Records into `analysis_log` and counts into `metrics`.
    pub fn new(analysis_log: Arc<AnalysisLog>, metrics: Arc<Metrics>) -> Self {
        Self {
            analysis_log,
            metrics,
        }
    }

    /// The analysis log written to.
    pub fn analysis_log(&self) -> &AnalysisLog {
        &self.analysis_log
    }

    /// Logs one line for a sync refused before the engine ran, appends it to the
    /// analysis log and counts it.
    pub fn record(&self, response: &SyncResponse) {
        self.record_with(response, false);
    }

    /// [`Recorder::record`]; `ran` says whether the engine ran, so that only real syncs
    /// go into the duration histogram.
    fn record_with(&self, response: &SyncResponse, ran: bool) {
        let data = &response.rsync_data;
        self.metrics.record_sync(
            sync_outcome(response.outcome),
            response.http_status().as_u16(),
            ran.then_some(data.duration_time_seconds),
        );
        self.log(response);
    }

    fn log(&self, response: &SyncResponse) {
        let data = &response.rsync_data;
        // Debug formatting (`?`) quotes and escapes caller-supplied text, so a newline in a
        // reference cannot forge a log line.
        tracing::info!(
            user = %response.username,
            source = ?response.rsync_config.source,
            target = ?response.rsync_config.target.joined(),
            status = status_word(data.rsync_status),
            http_status = response.http_status().as_u16(),
            duration_s = data.duration_time_seconds,
            error = ?data.rsync_error.as_deref().unwrap_or(""),
            "sync"
        );
        if let Err(e) = self.analysis_log.append(&AnalysisEntry::new(response)) {
            tracing::error!(
                file = %self.analysis_log.path().display(),
                error = %e,
                "cannot append to the analysis log (rsyncserver.logfile)"
            );
        }
    }
}

impl JobHooks for Recorder {
    fn started(&self, _job: &JobRecord, queued_seconds: f64) {
        self.metrics.record_queue_wait(queued_seconds);
    }

    fn finished(&self, job: &JobRecord, end: JobEnd) -> JobResult {
        let echo: RsyncConfigEcho =
            serde_json::from_value(job.rsync_config.clone()).unwrap_or_default();
        let user = job.user.clone();
        let start = job
            .started_at
            .unwrap_or(job.created_at)
            .with_timezone(&Local);
        let ran = matches!(end, JobEnd::Report(_));
        let response = match end {
            JobEnd::Report(report) => SyncResponse::from_report(user, echo, report),
            JobEnd::Panicked(_) => SyncResponse::rejected(
                user,
                echo,
                Outcome::Internal,
                "internal error in the sync engine: the service log has details",
                start,
            ),
            JobEnd::GaveUp(why) => {
                SyncResponse::rejected(user, echo, Outcome::Internal, why, start)
            }
            JobEnd::CancelledBeforeStart(by) => SyncResponse::rejected(
                user,
                echo,
                Outcome::Sync {
                    status: SyncStatus::Failed,
                    failure: Some(FailureKind::Cancelled),
                },
                format!("the sync was cancelled by {by} before it started; nothing was copied"),
                start,
            ),
        };
        self.record_with(&response, ran);
        JobResult {
            body: serde_json::to_value(&response).unwrap_or_default(),
            http_status: response.http_status().as_u16(),
        }
    }
}

/// The metrics' view of an outcome: `rsync_status`, with cancels apart (they are the
/// caller's doing, not a registry's).
fn sync_outcome(outcome: Outcome) -> SyncOutcome {
    match outcome {
        Outcome::Sync {
            failure: Some(FailureKind::Cancelled),
            ..
        } => SyncOutcome::Cancelled,
        Outcome::Sync {
            status: SyncStatus::Successfully,
            ..
        } => SyncOutcome::Succeeded,
        Outcome::Sync {
            status: SyncStatus::Failed,
            ..
        }
        | Outcome::Internal => SyncOutcome::Failed,
        Outcome::Sync {
            status: SyncStatus::Unusual,
            ..
        }
        | Outcome::BodyTooLarge
        | Outcome::Unauthenticated
        | Outcome::TooManyLogins
        | Outcome::Busy => SyncOutcome::Unusual,
    }
}

fn status_word(status: SyncStatus) -> &'static str {
    match status {
        SyncStatus::Successfully => "successfully",
        SyncStatus::Failed => "failed",
        SyncStatus::Unusual => "unusual",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancels_count_apart_from_failures() {
        let sync = |status, failure| Outcome::Sync { status, failure };
        let cases = [
            (sync(SyncStatus::Successfully, None), SyncOutcome::Succeeded),
            (
                sync(SyncStatus::Failed, Some(FailureKind::Registry)),
                SyncOutcome::Failed,
            ),
            (
                sync(SyncStatus::Failed, Some(FailureKind::Cancelled)),
                SyncOutcome::Cancelled,
            ),
            (
                sync(SyncStatus::Unusual, Some(FailureKind::BadInput)),
                SyncOutcome::Unusual,
            ),
            (Outcome::Busy, SyncOutcome::Unusual),
            (Outcome::BodyTooLarge, SyncOutcome::Unusual),
            (Outcome::Internal, SyncOutcome::Failed),
        ];
        for (outcome, expected) in cases {
            assert_eq!(sync_outcome(outcome), expected, "{outcome:?}");
        }
    }
}
