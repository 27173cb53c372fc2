//! Where a finished sync is written down: one tracing line and one analysis-log line per
//! sync request, and the answer body a job keeps as its result.

use std::sync::Arc;

use chrono::Local;

use super::response::{AnalysisEntry, Outcome, RsyncConfigEcho, SyncResponse};
use crate::analysis_log::AnalysisLog;
use crate::engine::{FailureKind, SyncStatus};
use crate::jobs::{JobEnd, JobHooks, JobRecord, JobResult};

/// Records sync answers; also the job manager's hook for finished jobs.
#[derive(Debug, Clone)]
pub struct Recorder {
    analysis_log: Arc<AnalysisLog>,
}

impl Recorder {
    /// Records into `analysis_log`.
    pub fn new(analysis_log: Arc<AnalysisLog>) -> Self {
        Self { analysis_log }
    }

    /// The analysis log written to.
    pub fn analysis_log(&self) -> &AnalysisLog {
        &self.analysis_log
    }

    /// Logs one line for the sync and appends it to the analysis log.
    pub fn record(&self, response: &SyncResponse) {
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
    fn finished(&self, job: &JobRecord, end: JobEnd) -> JobResult {
        let echo: RsyncConfigEcho =
            serde_json::from_value(job.rsync_config.clone()).unwrap_or_default();
        let user = job.user.clone();
        let start = job
            .started_at
            .unwrap_or(job.created_at)
            .with_timezone(&Local);
        let response = match end {
            JobEnd::Report(report) => SyncResponse::from_report(user, echo, report),
            JobEnd::Panicked(_) => SyncResponse::rejected(
                user,
                echo,
                Outcome::Internal,
                "internal error in the sync engine: the service log has details",
                start,
            ),
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
        self.record(&response);
        JobResult {
            body: serde_json::to_value(&response).unwrap_or_default(),
            http_status: response.http_status().as_u16(),
        }
    }
}

fn status_word(status: SyncStatus) -> &'static str {
    match status {
        SyncStatus::Successfully => "successfully",
        SyncStatus::Failed => "failed",
        SyncStatus::Unusual => "unusual",
    }
}
