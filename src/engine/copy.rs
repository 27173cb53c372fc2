//! Copies one image (a manifest, or an index with every child) from a source repository
//! to a target repository: blobs first, then child manifests, then the top manifest, so a
//! tag never points at missing content.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use super::platforms::PlatformFilter;
use super::progress::{BlobKind, Observers, Step, SyncEvent};
use super::rechunk::{Budget, Rechunk};
use super::referrers::{ReferrerTags, SubjectLocks, Walk};
use super::report::{ImageResult, ImageStatus};
use super::retry::RetryPolicy;
use super::synclog::SyncLog;
use super::transfers::Transfers;
use super::verify::VerifyingStream;
use crate::registry::digest::digest_of;
use crate::registry::media::{parse_manifest, Descriptor, ManifestKind};
use crate::registry::reference::ImageRef;
use crate::registry::{BlobCheck, Manifest, RegistryClient, RegistryError};

/// Nesting allowed for indexes inside indexes; real images use one level.
const MAX_INDEX_DEPTH: usize = 4;

/// Blobs up to this size go to a new target repository without a HEAD check first: the
/// check would almost always miss, and costs the registry about as much as the upload
/// of such a blob. Should the blob be there after all (a repository holding blobs but no
/// tag yet, e.g. left by a failed sync of another process), the PUT stores it again,
/// which the distribution API allows: at most this many bytes are sent for nothing.
const SMALL_BLOB: u64 = 1 << 20;

/// Small blobs in flight per large one allowed by `proc_num`: a small blob's time goes
/// on round trips, not on bytes, so more of them at once hide latency without taking
/// bandwidth from the large ones. Each holds its connections' read buffers, a few hundred
/// KiB (the `wan` rows of doc/perf.md); the service-wide `max_transfers` bounds them all.
const SMALL_PER_LARGE: usize = 4;

/// Fewest blobs for which finding out whether the target repository is new (one request)
/// can pay off.
const MIN_BLOBS_TO_PROBE: usize = 2;

/// Everything one image copy needs.
pub(crate) struct CopyJob<'a> {
    /// Where to read; has a tag or a digest.
    pub source: &'a ImageRef,
    /// Where to write; a missing tag and digest means "by digest only".
    pub target: &'a ImageRef,
    /// Client for the source registry.
    pub src: Arc<RegistryClient>,
    /// Client for the target registry.
    pub dst: Arc<RegistryClient>,
    /// The sync's log.
    pub log: &'a SyncLog,
    /// Blob transfers at once.
    pub parallel: usize,
    /// Retries of failed transfers.
    pub retry: RetryPolicy,
    /// Service-wide transfer state (cap, one transfer per blob, known locations).
    pub transfers: &'a Transfers,
    /// Bytes of this image's blobs copied out of the source and not yet taken by their
    /// uploads (engine/rechunk.rs): one image's, so a target that stalls one sync's
    /// uploads never holds back another sync's.
    pub copy_budget: Budget,
    /// Push even when the target already holds the source's digest.
    pub force: bool,
    /// HEAD every blob before sending it, even into a new repository (a resumed sync,
    /// whose earlier attempt may have left blobs there without a tag).
    pub check_every_blob: bool,
    /// Keep only these platforms of an index (rewrites it, so its digest changes).
    pub platforms: Option<&'a PlatformFilter>,
    /// Position of this image in the sync's plan, for progress events.
    pub index: usize,
    /// Told of steps, bytes and blobs as they happen.
    pub observers: &'a Observers,
    /// Stops the copy before the tag is written; see [`CopyJob::run`].
    pub cancel: &'a CancellationToken,
    /// Copy the referrers (signatures, attestations, SBOMs) of every manifest copied.
    pub referrers: bool,
    /// Service-wide: one update at a time of a target's referrers index per subject.
    pub subject_locks: &'a SubjectLocks,
    /// This sync's: the referrer tags of each source repository, listed once.
    pub referrer_tags: &'a ReferrerTags,
}

/// Why an image copy failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CopyError {
    /// A registry refused or broke a step.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The source content cannot be copied as it is.
    #[error("source {source_ref}: manifest {digest}: {cause}")]
    Content {
        /// Source reference.
        source_ref: String,
        /// Digest of the offending manifest.
        digest: String,
        /// Why.
        cause: String,
    },
    /// Source and target disagree on what the request asked for.
    #[error("{0}")]
    Mismatch(String),
    /// A referrer of the image could not be copied; the image's tag was not written.
    #[error("referrer {referrer} ({kind}) of {subject}: {cause}")]
    Referrer {
        /// Digest (or tag) of the referrer.
        referrer: String,
        /// Its artifact type or media type.
        kind: String,
        /// The manifest it refers to.
        subject: String,
        /// Why it failed.
        cause: String,
    },
    /// The sync was cancelled before the tag was written.
    #[error("cancelled before the target was tagged; blobs already sent stay, untagged")]
    Cancelled,
}

/// Where an image copy stands once everything but the tag is at the target.
enum Prepared {
    /// The target already holds the source's digest.
    AlreadySynced,
    /// Every blob and child is at the target; `top` goes to `reference` last.
    Ready { top: Manifest, reference: String },
}

/// What the existence check ahead of a blob's copy found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Checked {
    /// Not checked ahead (a small blob into a new repository, or the check failed): the
    /// copy decides for itself.
    No,
    /// The target answered 404: the copy's first attempt needs no HEAD of its own.
    Absent,
    /// Already at the target: nothing to copy.
    Present,
}

/// How one blob reached the target.
enum BlobOutcome {
    Copied(u64),
    Mounted,
    Skipped,
}

/// When a copy attempt may go without its own HEAD of the blob at the target.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SkipHead {
    /// Always check (a retry, or a repository that existed before).
    Never,
    /// The check ahead found the blob absent.
    CheckedAbsent,
    /// A new repository: small blobs go unchecked.
    IfSmall,
}

/// Source content gathered before anything is written.
pub(super) struct Plan {
    /// Child manifests in push order (deepest first).
    pub children: Vec<Manifest>,
    /// Distinct blobs to bring over.
    pub blobs: Vec<Descriptor>,
}

impl CopyJob<'_> {
    /// Copies the image and reports the outcome; never panics on registry input.
    ///
    /// Cancellation stops transfers at once (their futures are dropped) but never the tag
    /// write itself: a tag is either not written or written whole, never half.
    pub async fn run(&self) -> ImageResult {
        let mut result = ImageResult {
            source: self.source.to_string(),
            target: self.target.to_string(),
            ..ImageResult::default()
        };
        let outcome = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(CopyError::Cancelled),
            prepared = self.prepare(&mut result) => prepared,
        };
        let outcome = match outcome {
            Ok(Prepared::AlreadySynced) => Ok(ImageStatus::AlreadySynced),
            Ok(Prepared::Ready { .. }) if self.cancel.is_cancelled() => Err(CopyError::Cancelled),
            Ok(Prepared::Ready { top, reference }) => self.tag(&top, &reference, &mut result).await,
            Err(e) => Err(e),
        };
        self.observers.step(self.index, Step::Done);
        match outcome {
            Ok(status) => {
                result.status = status;
                result.error = None;
            }
            Err(err) => {
                result.rate_limited = matches!(&err, CopyError::Registry(e) if e.is_rate_limited());
                let message = err.to_string();
                self.log.error(format!(
                    "Synchronization failed from {} to {}: {message}",
                    self.source, self.target
                ));
                result.status = ImageStatus::Failed;
                result.error = Some(message);
            }
        }
        self.observers.emit(&SyncEvent::ImageFinished {
            image: self.index,
            result: &result,
        });
        result
    }

    /// Everything up to the tag: manifests read, target checked, blobs and children sent.
    async fn prepare(&self, result: &mut ImageResult) -> Result<Prepared, CopyError> {
        let src_repo = &self.source.repository;
        let source_ref = self.source.reference().expect("source has a tag or digest");
        let waited = std::sync::atomic::AtomicBool::new(false);
        let registry = self.src.registry();
        let report = |wait: Option<(std::time::Duration, &str)>| {
            let Some((wait, why)) = wait else {
                self.observers.emit(&SyncEvent::RateLimitOver { registry });
                return;
            };
            let again = waited.swap(true, std::sync::atomic::Ordering::Relaxed);
            if !again {
                self.observers.step(self.index, Step::RateLimited);
            }
            self.log.info(why);
            self.observers.emit(&SyncEvent::RateLimitWait {
                image: Some(self.index),
                registry,
                wait,
                reason: why,
                again,
            });
        };
        self.src
            .wait_for_pull_quota(src_repo, source_ref, self.retry.max_wait, &report)
            .await?;
        self.observers.step(self.index, Step::ReadingManifest);
        let read_source = self
            .retry
            .run(self.log, "fetching the source manifest", || {
                self.src.manifest_get(src_repo, source_ref)
            });
        // A tagged target is checked while the source manifest is on its way: an image
        // already in sync then costs one round trip, not two (a mirror run of many tags
        // is mostly such images).
        let check_tag = async {
            match &self.target.tag {
                Some(tag) if self.source != self.target => Some(self.check_target(tag).await),
                _ => None,
            }
        };
        let (top, checked_early) = tokio::join!(read_source, check_tag);
        let top = top?;
        self.log.info(format!(
            "Get manifest from {} ({}, {})",
            self.source, top.media_type, top.digest
        ));
        if self.source == self.target {
            // The seed's own example syncs an image onto itself. The source was read (so
            // it exists); writing it back, forced or platform-filtered, could only
            // change or damage the one image, so nothing is written.
            result.digest = Some(top.digest.clone());
            self.log.info(format!(
                "Skip synchronization because source and target are the same image ({}, {}); nothing is written",
                self.target, top.digest
            ));
            return Ok(Prepared::AlreadySynced);
        }
        let top = self.filter_platforms(top)?;
        result.digest = Some(top.digest.clone());
        if let Some(wanted) = &self.target.digest {
            if *wanted != top.digest {
                return Err(CopyError::Mismatch(format!(
                    "target digest {wanted} differs from the source's {}: a copy preserves digests, so drop the digest from the target or make it equal",
                    top.digest
                )));
            }
        }
        let target_ref = self
            .target
            .tag
            .clone()
            .unwrap_or_else(|| top.digest.clone());
        self.observers.step(self.index, Step::CheckingTarget);
        let existing = match checked_early {
            Some(existing) => existing?,
            None => self.check_target(&target_ref).await?,
        };
        let in_sync = existing.as_ref().is_some_and(|(d, _)| *d == top.digest);
        if in_sync && self.force {
            self.log.info(format!(
                "Destination {} already has {}; pushing again as forced",
                self.target, top.digest
            ));
        } else if in_sync {
            self.log.info(format!(
                "Skip synchronization because destination {} already has {}",
                self.target, top.digest
            ));
            // Signatures are often added after the image was pushed: look for new ones.
            let subjects = std::iter::once(top.digest.clone())
                .chain(index_entries_of(&top))
                .collect();
            let mut walk = Walk::new((0, 0));
            self.copy_referrers(subjects, &mut walk, result).await?;
            return Ok(Prepared::AlreadySynced);
        }

        self.observers.step(self.index, Step::ReadingChildren);
        // Whether the target repository is new is asked while the children are read:
        // one round trip in sequence less on a distant registry.
        let probe = existing.is_none() && !self.check_every_blob;
        let (plan, fresh) = tokio::join!(self.gather(&top), async {
            probe && self.target_is_new(blobs_hint(&top)).await
        });
        let plan = plan?;
        self.observers.emit(&SyncEvent::BlobsPlanned {
            image: self.index,
            blobs: plan.blobs.len() as u64,
            bytes: plan.blobs.iter().map(|b| b.size).sum(),
        });
        self.observers.step(self.index, Step::CopyingBlobs);
        // The first steps of the referrers' search (reads at the source) go while the
        // blobs are copied, not after them.
        let (copied, ahead) = tokio::join!(
            self.copy_blobs(&plan.blobs, fresh, result),
            self.look_ahead(&top.digest)
        );
        copied?;
        self.observers.step(self.index, Step::PushingManifests);
        self.push_children(&plan.children, result).await?;
        // Referrers before the tag: a policy engine never sees the tag unsigned.
        let subjects = std::iter::once(top.digest.clone())
            .chain(plan.children.iter().map(|c| c.digest.clone()))
            .collect();
        let planned = (
            plan.blobs.len() as u64,
            plan.blobs.iter().map(|b| b.size).sum(),
        );
        let mut walk = Walk::new(planned).with_ahead(ahead);
        self.copy_referrers(subjects, &mut walk, result).await?;
        Ok(Prepared::Ready {
            top,
            reference: target_ref,
        })
    }

    /// The digest (and media type) the target holds under `reference`, if any.
    async fn check_target(
        &self,
        reference: &str,
    ) -> Result<Option<(String, String)>, RegistryError> {
        self.retry
            .run(self.log, "checking the target manifest", || {
                self.dst.manifest_digest(&self.target.repository, reference)
            })
            .await
    }

    /// Writes the top manifest under the target's tag (or digest): the last write.
    async fn tag(
        &self,
        top: &Manifest,
        reference: &str,
        result: &mut ImageResult,
    ) -> Result<ImageStatus, CopyError> {
        self.put_manifest(reference, top).await?;
        result.manifests_pushed += 1;
        self.log.info(format!(
            "Synchronization successfully from {} to {}",
            self.source, self.target
        ));
        Ok(ImageStatus::Synced)
    }

    /// Applies the platform filter to an index; other manifests pass unchanged.
    fn filter_platforms(&self, top: Manifest) -> Result<Manifest, CopyError> {
        let Some(filter) = self.platforms else {
            return Ok(top);
        };
        if !matches!(
            parse_manifest(&top.media_type, &top.bytes),
            Ok(ManifestKind::Index(_))
        ) {
            return Ok(top);
        }
        let content_error = |cause: &str| CopyError::Content {
            source_ref: self.source.to_string(),
            digest: top.digest.clone(),
            cause: cause.to_owned(),
        };
        let (filtered, dropped) = filter.apply(&top).ok_or_else(|| {
            content_error("the index cannot be rewritten for the platform filter")
        })?;
        if matches!(parse_manifest(&filtered.media_type, &filtered.bytes), Ok(ManifestKind::Index(e)) if e.is_empty())
        {
            return Err(content_error(
                "no entry of the index matches the platform filter",
            ));
        }
        self.log.info(format!(
            "Platform filter dropped {dropped} index entries; the target index digest becomes {}",
            filtered.digest
        ));
        Ok(filtered)
    }

    /// Reads every child manifest of an index (all before any write, so a missing child
    /// fails the copy with nothing written) and lists the distinct blobs.
    pub(super) async fn gather(&self, top: &Manifest) -> Result<Plan, CopyError> {
        let mut plan = Plan {
            children: Vec::new(),
            blobs: Vec::new(),
        };
        let mut seen_blobs = HashSet::new();
        let mut seen_manifests = HashSet::new();
        // (manifest, depth, is_child): children are pushed by digest before their parent.
        let mut pending = vec![(top.clone(), 0usize, false)];
        while let Some((manifest, depth, is_child)) = pending.pop() {
            let kind = parse_manifest(&manifest.media_type, &manifest.bytes).map_err(|e| {
                CopyError::Content {
                    source_ref: self.source.to_string(),
                    digest: manifest.digest.clone(),
                    cause: e.to_string(),
                }
            })?;
            match kind {
                ManifestKind::Index(entries) => {
                    if depth >= MAX_INDEX_DEPTH {
                        return Err(CopyError::Content {
                            source_ref: self.source.to_string(),
                            digest: manifest.digest.clone(),
                            cause: format!("indexes nest deeper than {MAX_INDEX_DEPTH} levels"),
                        });
                    }
                    let fresh: Vec<_> = entries
                        .into_iter()
                        .filter(|e| seen_manifests.insert(e.digest.clone()))
                        .collect();
                    let children = self.fetch_children(&fresh).await?;
                    for child in children {
                        pending.push((child, depth + 1, true));
                    }
                }
                ManifestKind::Image(blobs) => {
                    for blob in blobs {
                        if !blob.urls.is_empty() {
                            self.log.info(format!(
                                "Skip foreign layer {} (it has external urls; it is never fetched)",
                                blob.digest
                            ));
                            continue;
                        }
                        if seen_blobs.insert(blob.digest.clone()) {
                            plan.blobs.push(blob);
                        }
                    }
                }
            }
            if is_child {
                plan.children.push(manifest);
            }
        }
        // Deepest first: a nested index must follow the manifests it lists.
        plan.children.reverse();
        Ok(plan)
    }

    async fn fetch_children(&self, entries: &[Descriptor]) -> Result<Vec<Manifest>, CopyError> {
        // Futures are collected first: a closure inside the stream type trips the
        // compiler's Send check for spawned tasks (rust-lang/rust#102211).
        let fetches: Vec<_> = entries
            .iter()
            .map(|entry| self.fetch_child(entry))
            .collect();
        let fetched: Vec<Manifest> = futures_util::stream::iter(fetches)
            .buffered(self.parallel)
            .try_collect()
            .await?;
        Ok(fetched)
    }

    async fn fetch_child(&self, entry: &Descriptor) -> Result<Manifest, RegistryError> {
        let repo = &self.source.repository;
        let manifest = self
            .retry
            .run(self.log, "fetching a child manifest", || {
                self.src.manifest_get(repo, &entry.digest)
            })
            .await?;
        let platform = entry
            .platform
            .as_ref()
            .map(|p| format!(" for {p}"))
            .unwrap_or_default();
        self.log.info(format!(
            "Get manifest {}{platform} from {}",
            entry.digest,
            self.source.name()
        ));
        Ok(manifest)
    }

    /// Whether the target repository does not exist yet, so HEAD checks of its blobs
    /// would miss. Only asked when the image has blobs enough to gain from the answer; a
    /// failure to ask only means "not known", and the blobs are checked as usual.
    async fn target_is_new(&self, blobs: usize) -> bool {
        if blobs < MIN_BLOBS_TO_PROBE {
            return false;
        }
        let repo = &self.target.repository;
        match self.dst.repository_is_new(repo).await {
            Ok(true) => {
                self.log.info(format!(
                    "Destination repository {} is new: blobs up to {} KiB are uploaded without checking for them first",
                    self.target.name(),
                    SMALL_BLOB >> 10
                ));
                true
            }
            Ok(false) => false,
            Err(e) => {
                self.log.warn(format!(
                    "Could not tell whether {} is new, checking every blob: {e}",
                    self.target.name()
                ));
                false
            }
        }
    }

    /// Brings every blob over; the first failure stops the rest. `fresh`: the target
    /// repository did not exist when the copy began.
    ///
    /// Two stages run at once, so a distant registry's round trips overlap instead of
    /// adding up: existence checks (HEAD) of many blobs go ahead, and copies follow as
    /// their checks answer. Large blobs are copied `parallel` at a time; small ones (up
    /// to [`SMALL_BLOB`]) up to [`SMALL_PER_LARGE`] times as many (unless `parallel` is 1),
    /// never more than the service-wide cap of streams, which bounds every stream in any case.
    pub(super) async fn copy_blobs(
        &self,
        blobs: &[Descriptor],
        fresh: bool,
        result: &mut ImageResult,
    ) -> Result<(), CopyError> {
        // `proc_num: 1` keeps its plain meaning, one request at a time, for a registry
        // that cannot take more.
        let in_flight = if self.parallel == 1 {
            1
        } else {
            (self.parallel * SMALL_PER_LARGE)
                .min(self.transfers.max_streams())
                .max(self.parallel)
        };
        let large = tokio::sync::Semaphore::new(self.parallel);
        // One log line per target repository when its registry refuses blob HEADs.
        let head_refused = AtomicBool::new(false);
        let head_refused = &head_refused;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        // `move`: the sender must go when the checks are done, or the copies wait forever.
        let checks = async move {
            let checks: Vec<_> = blobs
                .iter()
                .map(|b| async move { (b, self.check_ahead(b, fresh).await) })
                .collect();
            let mut checks = futures_util::stream::iter(checks).buffer_unordered(in_flight);
            while let Some(checked) = checks.next().await {
                // The receiver only goes away when the copies failed: stop checking.
                if tx.send(checked).is_err() {
                    break;
                }
            }
        };
        let copies = async {
            // A plain loop rather than stream combinators over the channel: closures in
            // the stream type trip the compiler's Send check (rust-lang/rust#102211).
            let (mut rx, mut open) = (rx, true);
            let mut running = futures_util::stream::FuturesUnordered::new();
            loop {
                tokio::select! {
                    item = rx.recv(), if open && running.len() < in_flight => match item {
                        Some((blob, checked)) => {
                            running.push(self.copy_checked(blob, fresh, checked, &large, head_refused));
                        }
                        None => open = false,
                    },
                    Some((size, outcome)) = running.next(), if !running.is_empty() => {
                        self.count(size, outcome?, result);
                    }
                    else => return Ok(()),
                }
            }
        };
        tokio::pin!(checks, copies);
        let mut checks_done = false;
        loop {
            tokio::select! {
                () = &mut checks, if !checks_done => checks_done = true,
                copied = &mut copies => return copied,
            }
        }
    }

    /// One blob after its check ahead; a large one waits for one of `large`'s permits.
    async fn copy_checked(
        &self,
        blob: &Descriptor,
        fresh: bool,
        checked: Checked,
        large: &tokio::sync::Semaphore,
        head_refused: &AtomicBool,
    ) -> (u64, Result<BlobOutcome, RegistryError>) {
        let outcome = if checked == Checked::Present {
            Ok(BlobOutcome::Skipped)
        } else if blob.size > SMALL_BLOB {
            let _large = large.acquire().await.expect("never closed");
            self.copy_blob(blob, fresh, checked, head_refused).await
        } else {
            self.copy_blob(blob, fresh, checked, head_refused).await
        };
        (blob.size, outcome)
    }

    /// Adds one blob's outcome to the result and tells the observers.
    fn count(&self, size: u64, outcome: BlobOutcome, result: &mut ImageResult) {
        let kind = match outcome {
            BlobOutcome::Copied(bytes) => {
                result.blobs_copied += 1;
                result.bytes_copied += bytes;
                BlobKind::Copied
            }
            BlobOutcome::Mounted => {
                result.blobs_mounted += 1;
                BlobKind::Mounted
            }
            BlobOutcome::Skipped => {
                result.blobs_skipped += 1;
                BlobKind::Skipped
            }
        };
        self.observers.emit(&SyncEvent::BlobDone {
            image: self.index,
            registry: self.dst.registry(),
            kind,
            bytes: size,
        });
    }

    /// The existence check of a blob, ahead of its copy. Left to the copy where it would
    /// not be sent at all (a small blob into a new repository) and where it fails (the
    /// copy checks again, with retries).
    async fn check_ahead(&self, blob: &Descriptor, fresh: bool) -> Checked {
        if fresh && blob.size <= SMALL_BLOB {
            return Checked::No;
        }
        let (dst_repo, digest) = (&self.target.repository, &blob.digest);
        match self.dst.blob_check(dst_repo, digest).await {
            Ok(BlobCheck::Present(_)) => {
                self.transfers
                    .remember(self.dst.registry(), digest, dst_repo);
                self.log.info(format!(
                    "Blob {digest}({}) has been pushed to {}, will not be pulled",
                    blob.size,
                    self.target.name()
                ));
                Checked::Present
            }
            Ok(BlobCheck::Absent) => Checked::Absent,
            // A refused HEAD is logged once by the copy, which checks again.
            Ok(BlobCheck::Refused(_)) | Err(_) => Checked::No,
        }
    }

    async fn copy_blob(
        &self,
        blob: &Descriptor,
        fresh: bool,
        checked: Checked,
        head_refused: &AtomicBool,
    ) -> Result<BlobOutcome, RegistryError> {
        let what = format!("transferring blob {}", blob.digest);
        // Only a first attempt may go without the HEAD check: a retry must find out
        // whether the failed attempt landed (a lost answer to the PUT).
        let first = AtomicBool::new(true);
        self.retry
            .run(self.log, &what, || {
                let first = first.swap(false, Ordering::Relaxed);
                let skip = match checked {
                    _ if !first => SkipHead::Never,
                    Checked::Absent => SkipHead::CheckedAbsent,
                    _ if fresh => SkipHead::IfSmall,
                    _ => SkipHead::Never,
                };
                self.copy_blob_once(blob, skip, head_refused)
            })
            .await
    }

    async fn copy_blob_once(
        &self,
        blob: &Descriptor,
        skip: SkipHead,
        head_refused: &AtomicBool,
    ) -> Result<BlobOutcome, RegistryError> {
        let (src_repo, dst_repo) = (&self.source.repository, &self.target.repository);
        let (digest, dst_registry) = (&blob.digest, self.dst.registry());
        self.transfers
            .remember(self.src.registry(), digest, src_repo);
        // One transfer per blob and target registry: a concurrent sync that needs the same
        // blob waits here, then finds it present or mountable.
        let _turn = self.transfers.turn(dst_registry, digest).await;
        let known = self.transfers.location(dst_registry, digest);
        // HEAD first: also what makes a retry after a lost PUT answer cheap. It is left
        // out where it cannot pay: for a blob to mount (the mount answers for itself), for
        // a blob the check ahead found absent, and in a new repository for a small blob;
        // unless a concurrent sync put the blob into this repository meanwhile (it
        // recorded that, within its turn, in `known`).
        let skip_head = skip != SkipHead::Never
            && match &known {
                Some(repo) => repo != dst_repo,
                None => skip == SkipHead::CheckedAbsent || blob.size <= SMALL_BLOB,
            };
        let present = if skip_head {
            false
        } else {
            match self.dst.blob_check(dst_repo, digest).await? {
                BlobCheck::Present(_) => true,
                BlobCheck::Absent => false,
                BlobCheck::Refused(status) => {
                    // Harbor robot accounts, Artifact Registry and ECR refuse a HEAD in a
                    // repository they do not have yet (skopeo#2484): "unknown", so upload;
                    // a refused upload is still an error of its own.
                    if !head_refused.swap(true, Ordering::Relaxed) {
                        self.log.warn(format!(
                            "Destination {} answered HTTP {status} to a blob check (usual for a repository that does not exist yet); uploading its blobs without checking",
                            self.target.name()
                        ));
                    }
                    false
                }
            }
        };
        if present {
            self.transfers.remember(dst_registry, digest, dst_repo);
            self.log.info(format!(
                "Blob {digest}({}) has been pushed to {}, will not be pulled",
                blob.size,
                self.target.name()
            ));
            return Ok(BlobOutcome::Skipped);
        }
        if let Some(from) = known.filter(|repo| repo != dst_repo) {
            match self.dst.blob_mount(dst_repo, digest, &from).await {
                Ok(true) => {
                    self.transfers.remember(dst_registry, digest, dst_repo);
                    self.log.info(format!(
                        "Mount blob {digest}({}) from {from} to {}",
                        blob.size,
                        self.target.name()
                    ));
                    return Ok(BlobOutcome::Mounted);
                }
                Ok(false) => self.transfers.forget(dst_registry, digest),
                Err(e) => self.log.warn(format!(
                    "Mount of blob {digest} failed, uploading instead: {e}"
                )),
            }
        }
        let _slot = self.transfers.slot().await;
        let bytes = self.stream_blob(blob).await?;
        self.transfers.remember(dst_registry, digest, dst_repo);
        self.log.info(format!(
            "Put blob {digest}({}) to {} success",
            blob.size,
            self.target.name()
        ));
        Ok(BlobOutcome::Copied(bytes))
    }

    /// Streams one blob from the source GET into the target PUT, verifying it on the way.
    async fn stream_blob(&self, blob: &Descriptor) -> Result<u64, RegistryError> {
        let (src_repo, dst_repo, digest) = (
            &self.source.repository,
            &self.target.repository,
            &blob.digest,
        );
        let step = format!("fetching blob {digest} from {src_repo}");
        if blob.size == 0 && digest_of(b"", digest) != *digest {
            return Err(RegistryError::Protocol {
                registry: self.src.registry().to_owned(),
                step,
                cause: "the manifest declares size 0 for a non-empty blob".into(),
            });
        }
        // The upload session is opened while the GET is on its way: a blob costs two
        // round trips in sequence (GET and POST at once, then the PUT), not three.
        let (response, location) = tokio::try_join!(
            self.src.blob_get(src_repo, digest),
            self.dst.upload_open(dst_repo, digest)
        )?;
        let sent = Arc::new(AtomicU64::new(0));
        let (stream, source_failure) = VerifyingStream::new(
            response.bytes_stream(),
            digest,
            blob.size,
            self.src.registry(),
            &step,
        );
        let stream = stream.on_chunk({
            let (sent, observers, image) = (sent.clone(), self.observers.clone(), self.index);
            Box::new(move |n| {
                sent.fetch_add(n, Ordering::Relaxed);
                observers.emit(&SyncEvent::BytesMoved {
                    image,
                    delta: i64::try_from(n).unwrap_or(i64::MAX),
                });
            })
        });
        let upload = self
            .dst
            .upload_put(
                dst_repo,
                &location,
                digest,
                blob.size,
                Rechunk::new(stream, &self.copy_budget),
            )
            .await;
        let source_err = source_failure.lock().expect("source failure lock").take();
        if source_err.is_some() || upload.is_err() {
            // The attempt's bytes did not land; progress must not count them twice.
            let sent = sent.load(Ordering::Relaxed);
            self.observers.emit(&SyncEvent::BytesMoved {
                image: self.index,
                delta: -i64::try_from(sent).unwrap_or(i64::MAX),
            });
        }
        // A failing source stream surfaces at the target as a broken upload; report the cause.
        if let Some(source_err) = source_err {
            return Err(source_err);
        }
        upload?;
        Ok(blob.size)
    }

    /// Pushes child manifests by digest: image manifests all at once (up to `parallel`;
    /// one round trip, not one per platform), then indexes one by one in plan order, so
    /// an index never reaches the target before a manifest it lists.
    pub(super) async fn push_children(
        &self,
        children: &[Manifest],
        result: &mut ImageResult,
    ) -> Result<(), CopyError> {
        let (indexes, images): (Vec<&Manifest>, Vec<&Manifest>) = children.iter().partition(|c| {
            matches!(
                parse_manifest(&c.media_type, &c.bytes),
                Ok(ManifestKind::Index(_))
            )
        });
        // Futures collected first, as in `fetch_children` (rust-lang/rust#102211).
        let puts: Vec<_> = images
            .iter()
            .map(|c| self.put_manifest(&c.digest, c))
            .collect();
        let mut puts = futures_util::stream::iter(puts).buffer_unordered(self.parallel);
        while let Some(put) = puts.next().await {
            put?;
            result.manifests_pushed += 1;
        }
        for child in indexes {
            self.put_manifest(&child.digest, child).await?;
            result.manifests_pushed += 1;
        }
        Ok(())
    }

    /// PUTs a manifest; returns the target's `OCI-Subject` answer.
    pub(super) async fn put_manifest(
        &self,
        reference: &str,
        manifest: &Manifest,
    ) -> Result<Option<String>, RegistryError> {
        let repo = &self.target.repository;
        // One PUT per manifest digest and registry at a time: distribution stores a
        // manifest as a blob shared by every repository, and two PUTs of the same bytes
        // at once (two tags of one image, or two syncs) race on that file and one of them
        // gets DIGEST_INVALID. The second PUT then finds the bytes there.
        let _turn = self
            .transfers
            .turn(self.dst.registry(), &manifest.digest)
            .await;
        let put = || {
            self.retry.run(self.log, "pushing a manifest", || {
                self.dst.manifest_put(repo, reference, manifest)
            })
        };
        let subject = match put().await {
            // The turn above only orders this process; another replica or tool pushing
            // the same bytes at that moment races the same way. Our bytes match their
            // digest (checked when read), so the registry's refusal is that race: once
            // more, after the other PUT has had time to land.
            Err(e) if is_digest_invalid(&e) => {
                self.log.info(format!(
                    "{} refused manifest {} as DIGEST_INVALID (another push of the same manifest at that moment?); pushing it once more",
                    self.target.name(),
                    manifest.digest
                ));
                tokio::time::sleep(MANIFEST_RACE_PAUSE).await;
                put().await?
            }
            other => other?,
        };
        self.log.info(format!(
            "Put manifest to {}:{reference} ({})",
            self.target.name(),
            manifest.digest
        ));
        Ok(subject)
    }
}

/// Wait before the one more PUT of a manifest the registry refused as DIGEST_INVALID.
const MANIFEST_RACE_PAUSE: Duration = Duration::from_millis(500);

/// A registry's 400 `DIGEST_INVALID`, which distribution answers a manifest PUT that
/// raced another PUT of the same bytes.
fn is_digest_invalid(err: &RegistryError) -> bool {
    matches!(err, RegistryError::Status { status: 400, code: Some(code), .. } if code == "DIGEST_INVALID")
}

/// How many blobs an image copy may bring, as far as the top manifest tells without
/// reading more: an image manifest's own count; an index is taken to have enough.
fn blobs_hint(top: &Manifest) -> usize {
    match parse_manifest(&top.media_type, &top.bytes) {
        Ok(ManifestKind::Image(blobs)) => blobs.len(),
        Ok(ManifestKind::Index(_)) => MIN_BLOBS_TO_PROBE,
        Err(_) => 0,
    }
}

/// Digests an index lists (none for an image manifest).
fn index_entries_of(manifest: &Manifest) -> Vec<String> {
    match parse_manifest(&manifest.media_type, &manifest.bytes) {
        Ok(ManifestKind::Index(entries)) => entries.into_iter().map(|e| e.digest).collect(),
        _ => Vec::new(),
    }
}
