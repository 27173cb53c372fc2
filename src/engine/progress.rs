//! What a running sync tells the outside while it works: live progress for jobs and
//! dashboards, counts for metrics. The engine calls observers; it never waits on them,
//! so an observer must be quick (update counters, notify, return).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::report::ImageResult;

/// How a blob reached the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    /// Streamed from the source.
    Copied,
    /// Mounted from another repository of the target registry.
    Mounted,
    /// Already at the target.
    Skipped,
}

impl BlobKind {
    /// Lower-case name, as used in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            BlobKind::Copied => "copied",
            BlobKind::Mounted => "mounted",
            BlobKind::Skipped => "skipped",
        }
    }
}

/// What an image copy is doing right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Planned, not started.
    #[default]
    Waiting,
    /// Waiting because the source announced too few remaining pulls (Docker Hub).
    RateLimited,
    /// Reading the source's top manifest.
    ReadingManifest,
    /// Asking the target whether it already holds the image.
    CheckingTarget,
    /// Reading child manifests of an index.
    ReadingChildren,
    /// Bringing blobs over.
    CopyingBlobs,
    /// Writing child manifests and the tag.
    PushingManifests,
    /// Finished, one way or the other.
    Done,
}

/// Something that happened during a sync. `image` is the position of the image in the
/// sync's plan (the order of [`SyncEvent::Planned`] and of the report's `images`).
#[derive(Debug)]
pub enum SyncEvent<'a> {
    /// The request became these (source, target) pairs.
    Planned {
        /// One entry per image copy, in order.
        images: &'a [(String, String)],
    },
    /// An image copy moved to another step.
    Step {
        /// Image position.
        image: usize,
        /// The new step.
        step: Step,
    },
    /// The blobs an image needs, known once its manifests are read.
    BlobsPlanned {
        /// Image position.
        image: usize,
        /// Distinct blobs.
        blobs: u64,
        /// Their total size in bytes.
        bytes: u64,
    },
    /// Bytes of a blob passed on to the target; negative when an attempt that had sent
    /// them failed and the blob will be sent again (or not at all).
    BytesMoved {
        /// Image position.
        image: usize,
        /// Bytes since the last event of this transfer.
        delta: i64,
    },
    /// One blob is at the target.
    BlobDone {
        /// Image position.
        image: usize,
        /// Target registry host[:port].
        registry: &'a str,
        /// How it got there.
        kind: BlobKind,
        /// Its size.
        bytes: u64,
    },
    /// A referrer of an image (signature, attestation, SBOM...) was written to the target.
    ReferrerCopied {
        /// Image position.
        image: usize,
        /// Target registry host[:port].
        registry: &'a str,
    },
    /// A registry step failed and is tried again.
    Retry {
        /// host[:port] of the registry that failed.
        registry: &'a str,
        /// Low-cardinality cause (`network`, `rate_limited`, `server_error`, ...).
        cause: &'static str,
    },
    /// The sync waits for a registry's rate limit (Docker Hub's pull quota under
    /// `task.dockerhub_min_remaining`, or a 429's `Retry-After`) before it goes on;
    /// [`SyncEvent::RateLimitOver`] follows when the wait ends.
    RateLimitWait {
        /// Image position, when one image's pull waits (a retry after a 429 names none).
        image: Option<usize>,
        /// host[:port] of the registry.
        registry: &'a str,
        /// How long this wait lasts.
        wait: Duration,
        /// Why, in the registry's numbers (for the sync log and the job).
        reason: &'a str,
        /// A further wait of the same pull after looking again: it updates the reason
        /// and the time, and is ended by the same one [`SyncEvent::RateLimitOver`].
        again: bool,
    },
    /// A wait announced by [`SyncEvent::RateLimitWait`] (and its repeats) is over.
    RateLimitOver {
        /// host[:port] of the registry.
        registry: &'a str,
    },
    /// An image copy ended.
    ImageFinished {
        /// Image position.
        image: usize,
        /// Its result, as the report will hold it.
        result: &'a ImageResult,
    },
}

/// Receives a sync's events; see the module doc for what it may do.
pub trait SyncObserver: Send + Sync {
    /// Called for every event, from whichever task produced it.
    fn on_event(&self, event: &SyncEvent<'_>);
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unobserved;

impl SyncObserver for Unobserved {
    fn on_event(&self, _: &SyncEvent<'_>) {}
}

/// The engine's service-wide observer and one request's, both told every event.
#[derive(Clone)]
pub(crate) struct Observers {
    service: Arc<dyn SyncObserver>,
    request: Arc<dyn SyncObserver>,
}

impl Observers {
    /// Pairs the service-wide observer with the request's.
    pub fn new(service: Arc<dyn SyncObserver>, request: Arc<dyn SyncObserver>) -> Self {
        Self { service, request }
    }

    /// Tells both observers.
    pub fn emit(&self, event: &SyncEvent<'_>) {
        self.service.on_event(event);
        self.request.on_event(event);
    }

    /// Shorthand for a step change of image `image`.
    pub fn step(&self, image: usize, step: Step) {
        self.emit(&SyncEvent::Step { image, step });
    }
}

impl Default for Observers {
    fn default() -> Self {
        Self::new(Arc::new(Unobserved), Arc::new(Unobserved))
    }
}
