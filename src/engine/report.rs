//! What a sync answers: overall status, the first error, the log and each image's result.

use chrono::{DateTime, Local};
use serde::{Deserialize, Serialize};

/// Overall outcome of one sync request, in the seed's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncStatus {
    /// Every image landed at the target.
    Successfully,
    /// A registry made at least one image fail.
    Failed,
    /// The request itself could not be used (bad reference, nothing to do).
    Unusual,
}

/// Why a sync did not succeed; decides the HTTP status in the API layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The request's references or options are unusable (HTTP 400).
    BadInput,
    /// The registry is not one this service may contact (HTTP 403).
    NotAllowed,
    /// A registry refused or broke the transfer (HTTP 502).
    Registry,
    /// Someone cancelled the sync (its job) before it finished (HTTP 409).
    Cancelled,
    /// The service runs as many syncs as it may; nothing was tried (HTTP 503, try again
    /// after `Retry-After`).
    Busy,
    /// Too many failed logins from the caller's address, or a registry's rate limit
    /// (Docker Hub's pull quota, a 429) asking for a longer wait than the caller waits
    /// (HTTP 429): wait, or run the sync asynchronously.
    RateLimited,
}

/// Result of one source → target image copy.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImageResult {
    /// Source reference as resolved (registry/repository:tag or @digest).
    pub source: String,
    /// Target reference as resolved.
    pub target: String,
    /// Digest of the top manifest that was copied, when it was read.
    pub digest: Option<String>,
    /// `synced`, `already_synced` or `failed`.
    pub status: ImageStatus,
    /// Blobs streamed from source to target.
    pub blobs_copied: u64,
    /// Blobs mounted from another repository of the target registry.
    pub blobs_mounted: u64,
    /// Blobs the target already had.
    pub blobs_skipped: u64,
    /// Bytes streamed from source to target.
    pub bytes_copied: u64,
    /// Manifests written to the target (index, children, tags, referrers and their
    /// fallback indexes).
    pub manifests_pushed: u64,
    /// Referrers (signatures, attestations, SBOMs, and their own referrers) written to
    /// the target; those it already held are not counted.
    pub referrers_copied: u64,
    /// What failed, where, and what to do; absent on success.
    pub error: Option<String>,
    /// The failure came from a registry's rate limit (a 429, or a wait longer than the
    /// sync may wait); decides the sync's failure class.
    #[serde(skip)]
    pub rate_limited: bool,
}

/// Outcome of one image copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageStatus {
    /// The target now holds the source's manifest.
    Synced,
    /// The target already held the source's manifest digest; nothing was sent.
    AlreadySynced,
    /// The copy failed; `error` says why.
    #[default]
    Failed,
}

/// Everything one sync request produced.
#[derive(Debug, Clone)]
pub struct SyncReport {
    /// Overall outcome.
    pub status: SyncStatus,
    /// One readable sentence naming what failed and where; `None` on success.
    pub error: Option<String>,
    /// Set when `status` is not `Successfully`.
    pub failure: Option<FailureKind>,
    /// The sync's own log lines in logrus text format, newline-terminated.
    pub log: String,
    /// Per-image results, in the order the images were planned.
    pub images: Vec<ImageResult>,
    /// When the sync started.
    pub start_time: DateTime<Local>,
    /// When the sync ended.
    pub end_time: DateTime<Local>,
}

impl SyncReport {
    /// Seconds between start and end, as a float.
    pub fn duration_seconds(&self) -> f64 {
        (self.end_time - self.start_time)
            .to_std()
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    }
}
