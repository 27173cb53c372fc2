//! The sync engine: turns a source/target pair into copied images. Knows nothing of HTTP
//! serving; the API and the command line both drive it through [`Engine::run_request`].

mod allow;
mod copy;
pub mod platforms;
pub mod progress;
mod rechunk;
mod referrers;
mod report;
mod retry;
pub mod rules;
mod synclog;
mod transfers;
mod verify;

pub use progress::{BlobKind, Step, SyncEvent, SyncObserver, Unobserved};
pub use report::{FailureKind, ImageResult, ImageStatus, SyncReport, SyncStatus};
pub use synclog::SyncLog;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::Local;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use self::allow::AllowList;
use self::copy::CopyJob;
use self::platforms::PlatformFilter;
use self::progress::Observers;
use self::rechunk::{Budget, COPY_BUDGET};
use self::referrers::{ReferrerTags, SubjectLocks};
use self::retry::RetryPolicy;
use self::rules::{RuleError, RuleSide, Selector};
use self::transfers::Transfers;
use crate::config::{RsyncConfig, TaskConfig};
use crate::registry::credentials::{AuthFile, WatchedAuthFile};
use crate::registry::reference::ImageRef;
use crate::registry::{ClientPool, Resolved, Timeouts};

/// Shared engine state: registry clients, credentials and limits, reused by every sync.
pub struct Engine {
    /// Swapped whole by [`Engine::reload_registries`]; each sync loads it once and keeps
    /// that snapshot to its end.
    registries: ArcSwap<Registries>,
    task: TaskConfig,
    /// Platform filter of the config (`task.os` / `task.arch`); a request may override it.
    platforms: Option<PlatformFilter>,
    transfers: Transfers,
    subject_locks: SubjectLocks,
    /// Told of every sync's events (the service's metrics).
    observer: Arc<dyn SyncObserver>,
}

/// What a sync reaches registries with: the clients and logins of the `auth` entries
/// and the auth file, and the allow-list. A reload builds a new one; a sync already
/// running holds an `Arc` of the one it started with, so it finishes with the logins
/// (and the permission) it began with.
struct Registries {
    pool: ClientPool,
    allowed: AllowList,
}

impl Registries {
    /// Built from `config` (its `auth`, `auth_file`, `certs_d`, `allowed_registries`);
    /// timeouts and limits from `task`, the engine's start-up settings.
    fn build(config: &RsyncConfig, task: &TaskConfig, auth_file: Option<WatchedAuthFile>) -> Self {
        for (name, credential) in &config.auth {
            if let Some(why) = crate::registry::transport_of(credential).warning() {
                tracing::warn!(
                    "registry {} (rsyncserver.rsyncconfig.auth.{name}): {why}",
                    credential.registry
                );
            }
        }
        let pool = ClientPool::new(
            &config.auth,
            Timeouts {
                connect: Duration::from_secs(task.connect_timeout_seconds),
                idle_read: Duration::from_secs(task.idle_timeout_seconds),
            },
        )
        .with_auth_file(auth_file)
        .with_helper_timeout(Duration::from_secs(task.credential_helper_timeout_seconds))
        .with_pull_floor(task.dockerhub_min_remaining)
        .with_certs_d(config.certs_d.clone());
        for line in pool.describe_sources() {
            tracing::info!("registry credentials: {line}");
        }
        Self {
            pool,
            allowed: AllowList::new(config),
        }
    }
}

/// What the caller of one sync can attach: who watches it, and how to stop it.
#[derive(Clone)]
pub struct SyncContext {
    /// Told of this sync's events (a job's live progress).
    pub observer: Arc<dyn SyncObserver>,
    /// Cancels the sync: transfers stop, no tag is written after it fires.
    pub cancel: CancellationToken,
    /// The sync ran before and was cut short (a job resumed after a restart): its
    /// target repositories may hold blobs without a tag, so every blob is checked
    /// before it is sent, new repository or not.
    pub resumed: bool,
    /// The longest the sync may wait for a registry's rate limit, because its caller waits
    /// for the answer: a longer wait fails at once as `rate_limited`. `None` (an
    /// asynchronous job): waits as long as the quota asks (and up to 30 s for a 429).
    pub max_wait: Option<Duration>,
}

impl Default for SyncContext {
    fn default() -> Self {
        Self {
            observer: Arc::new(Unobserved),
            cancel: CancellationToken::new(),
            resumed: false,
            max_wait: None,
        }
    }
}

/// One sync request, as the API and the command line hand it over (and as a job keeps it).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyncRequest {
    /// Source rule (image-syncer syntax).
    pub source: String,
    /// Target rules; each gets every selected source image.
    pub targets: Vec<String>,
    /// Push even when a target already holds the source's digest.
    #[serde(default)]
    pub force: bool,
    /// `os/arch[/variant]` patterns keeping only those index entries (the index digest then
    /// changes); empty means the config's `task.os` / `task.arch`, which default to all.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// Copy each image's referrers (signatures, attestations, SBOMs); `None` means the
    /// config's `task.referrers`, which defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrers: Option<bool>,
}

/// Why the tags of a source rule could not be listed; says what failed and where.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TagListError(String);

/// How every image of one request is copied.
struct RunOptions<'a> {
    registries: &'a Registries,
    force: bool,
    check_every_blob: bool,
    platforms: Option<&'a PlatformFilter>,
    referrers: bool,
    referrer_tags: &'a ReferrerTags,
    observers: &'a Observers,
    cancel: &'a CancellationToken,
    max_wait: Option<Duration>,
}

/// Why a request could not be turned into image pairs.
#[derive(Debug, thiserror::Error)]
enum PlanError {
    /// The request itself is unusable: nothing was contacted.
    #[error("{0}")]
    BadInput(String),
    /// A registry the service may not contact: nothing was contacted.
    #[error("{0}")]
    NotAllowed(String),
    /// Listing the source's tags failed at the registry.
    #[error("{0}")]
    Registry(#[from] crate::registry::RegistryError),
}

impl Engine {
    /// Builds the engine from the `rsyncserver.rsyncconfig` section.
    pub fn new(config: &RsyncConfig) -> Self {
        let platforms = PlatformFilter::from_task(&config.task.os, &config.task.arch)
            .unwrap_or_else(|e| {
                // Config::load has already refused this; a hand-built config gets no filter.
                tracing::error!("ignoring task.os/task.arch: {e}");
                None
            });
        let auth_file = config.auth_file.as_deref().map(WatchedAuthFile::open);
        Self {
            registries: ArcSwap::from_pointee(Registries::build(config, &config.task, auth_file)),
            task: config.task.clone(),
            platforms,
            transfers: Transfers::new(config.task.max_transfers),
            subject_locks: SubjectLocks::default(),
            observer: Arc::new(Unobserved),
        }
    }

    /// Replaces the registry logins (`auth` entries, `auth_file` as read by the caller,
    /// `certs_d`) and `allowed_registries` with those of `config`; the `task` settings
    /// stay as started. New syncs use them at once; running syncs keep theirs. Clients
    /// (connections, tokens) start afresh; rate-limit pauses carry over.
    pub fn reload_registries(&self, config: &RsyncConfig, auth_file: Option<AuthFile>) {
        let old = self.registries.load();
        let auth_file = auth_file.map(|file| {
            let path = file.path().to_owned();
            WatchedAuthFile::from_loaded(&path, Ok(file))
        });
        let mut next = Registries::build(config, &self.task, auth_file);
        next.pool = next.pool.with_limiters_of(&old.pool);
        self.registries.store(Arc::new(next));
    }

    /// Honours and tells 429 pauses through `shared` (the job database several replicas
    /// use), so a registry's pause learnt by one replica holds for all. At start-up,
    /// before the first sync; reloads keep it.
    pub fn with_shared_pauses(self, shared: Arc<dyn crate::registry::SharedPauses>) -> Self {
        self.registries.load().pool.share_pauses(shared);
        self
    }

    /// Tells `observer` of every sync this engine runs (service-wide metrics).
    pub fn with_observer(mut self, observer: Arc<dyn SyncObserver>) -> Self {
        self.observer = observer;
        self
    }

    /// Blob transfers streaming right now, across every sync.
    pub fn transfers_in_flight(&self) -> usize {
        self.transfers.in_flight()
    }

    /// Copies `source` to `target` (image-syncer rule syntax) and reports what happened.
    /// Never panics on bad input; every problem ends up in the report.
    pub async fn sync(&self, source: &str, target: &str) -> SyncReport {
        self.run_request(&SyncRequest {
            source: source.to_owned(),
            targets: vec![target.to_owned()],
            ..SyncRequest::default()
        })
        .await
    }

    /// Runs one request: every selected source image to every target. A failed image does
    /// not stop the others.
    pub async fn run_request(&self, request: &SyncRequest) -> SyncReport {
        self.run_request_with(request, &SyncContext::default())
            .await
    }

    /// [`Engine::run_request`], observed and cancellable through `context`.
    pub async fn run_request_with(
        &self,
        request: &SyncRequest,
        context: &SyncContext,
    ) -> SyncReport {
        let start_time = Local::now();
        // This sync's registries from start to end, whatever a reload swaps in meanwhile.
        let registries = self.registries.load_full();
        let observers = Observers::new(self.observer.clone(), context.observer.clone());
        let log = SyncLog::default();
        let referrer_tags = ReferrerTags::default();
        let planned = match PlatformFilter::from_patterns(&request.platforms) {
            Ok(filter) => {
                let targets: Vec<&str> = request.targets.iter().map(String::as_str).collect();
                let pairs = self
                    .plan(&registries, &request.source, &targets, &log, &referrer_tags)
                    .await;
                pairs.map(|p| (p, filter.or_else(|| self.platforms.clone())))
            }
            Err(e) => Err(PlanError::BadInput(format!("platforms: {e}"))),
        };
        let (images, plan_error) = match planned {
            Ok((pairs, filter)) => {
                let named: Vec<(String, String)> = pairs
                    .iter()
                    .map(|(s, t)| (s.to_string(), t.to_string()))
                    .collect();
                observers.emit(&SyncEvent::Planned { images: &named });
                let run = RunOptions {
                    registries: &registries,
                    force: request.force,
                    check_every_blob: context.resumed,
                    platforms: filter.as_ref(),
                    referrers: request.referrers.unwrap_or(self.task.referrers),
                    referrer_tags: &referrer_tags,
                    observers: &observers,
                    cancel: &context.cancel,
                    max_wait: context.max_wait,
                };
                let images = self.run(&pairs, &run, &log).await;
                (images, None)
            }
            Err(e) => {
                log.error(format!("Generate sync task failed: {e}"));
                (Vec::new(), Some(e))
            }
        };
        let failed = images
            .iter()
            .filter(|i| i.status == ImageStatus::Failed)
            .count();
        log.info(format!(
            "Finished, {failed} sync tasks failed, {} tasks generate failed",
            usize::from(plan_error.is_some())
        ));
        let (status, failure, error) = match plan_error {
            Some(e @ PlanError::BadInput(_)) => (
                SyncStatus::Unusual,
                Some(FailureKind::BadInput),
                Some(e.to_string()),
            ),
            Some(e @ PlanError::NotAllowed(_)) => (
                SyncStatus::Unusual,
                Some(FailureKind::NotAllowed),
                Some(e.to_string()),
            ),
            Some(PlanError::Registry(e)) => (
                SyncStatus::Failed,
                Some(if e.is_rate_limited() {
                    FailureKind::RateLimited
                } else {
                    FailureKind::Registry
                }),
                Some(e.to_string()),
            ),
            None if context.cancel.is_cancelled() && failed > 0 => (
                SyncStatus::Failed,
                Some(FailureKind::Cancelled),
                Some(format!(
                    "the sync was cancelled: {failed} of {} images not copied; nothing was tagged after the cancel",
                    images.len()
                )),
            ),
            // A rate limit is what the caller can act on (wait, or go asynchronous), so
            // it names the failure even when another image failed first.
            None => match images
                .iter()
                .find(|i| i.status == ImageStatus::Failed && i.rate_limited)
                .map(|i| (i, FailureKind::RateLimited))
                .or_else(|| {
                    images
                        .iter()
                        .find(|i| i.status == ImageStatus::Failed)
                        .map(|i| (i, FailureKind::Registry))
                }) {
                Some((first, kind)) => (SyncStatus::Failed, Some(kind), first.error.clone()),
                None => (SyncStatus::Successfully, None, None),
            },
        };
        SyncReport {
            status,
            error,
            failure,
            log: log.text(),
            images,
            start_time,
            end_time: Local::now(),
        }
    }

    /// The tags the source rule `source` selects right now: the registry's listing for a
    /// rule without a tag or with a regex, the given tags for a list; `None` for a digest.
    /// Mirrors filter these further before they hand a tag list to [`Engine::run_request`].
    pub async fn source_tags(&self, source: &str) -> Result<Option<Vec<String>>, TagListError> {
        let log = SyncLog::default();
        let src = RuleSide::parse(source).map_err(|e| TagListError(format!("source: {e}")))?;
        let registries = self.registries.load_full();
        registries
            .allowed
            .check(&src.image.registry)
            .map_err(TagListError)?;
        let listing = match &src.selector {
            Selector::Digest(_) => return Ok(None),
            Selector::Tags(tags) => return Ok(Some(tags.clone())),
            Selector::All | Selector::Regex(_) => {
                let client = Self::client(&registries, &src.image, &log)
                    .map_err(|e| TagListError(e.to_string()))?;
                client
                    .tags(&src.image.repository)
                    .await
                    .map_err(|e| TagListError(e.to_string()))?
            }
        };
        Ok(Some(match &src.selector {
            Selector::Regex(re) => listing.into_iter().filter(|t| re.is_match(t)).collect(),
            _ => listing,
        }))
    }

    /// Turns the rule into (source, target) pairs. Everything that can be checked without
    /// the network is checked first; only "every tag" and regex rules list the source's tags.
    async fn plan(
        &self,
        registries: &Registries,
        source: &str,
        targets: &[&str],
        log: &SyncLog,
        referrer_tags: &ReferrerTags,
    ) -> Result<Vec<(ImageRef, ImageRef)>, PlanError> {
        let bad =
            |side: &str, e: &dyn std::fmt::Display| PlanError::BadInput(format!("{side}: {e}"));
        let src = RuleSide::parse(source).map_err(|e| bad("source", &e))?;
        if targets.is_empty() {
            return Err(PlanError::BadInput("target: no target given".into()));
        }
        let dsts = targets
            .iter()
            .map(|t| RuleSide::parse(t).map_err(|e| bad("target", &e)))
            .collect::<Result<Vec<_>, _>>()?;
        for side in std::iter::once(&src).chain(&dsts) {
            registries
                .allowed
                .check(&side.image.registry)
                .map_err(PlanError::NotAllowed)?;
        }
        let needs_listing = matches!(src.selector, Selector::All | Selector::Regex(_));
        // Shapes first, with a stand-in tag list, so a bad rule never costs a request.
        for dst in &dsts {
            let stand_in = [String::from("latest")];
            match rules::pair(&src, dst, needs_listing.then_some(&stand_in[..])) {
                Err(e @ RuleError::Shape(_)) => return Err(bad("rule", &e)),
                Err(RuleError::NothingMatched(_)) | Ok(_) => {}
            }
        }
        let tags = if needs_listing {
            let client = Self::client(registries, &src.image, log)?;
            let mut tags = client.tags(&src.image.repository).await?;
            log.info(format!("Found {} tags in {}", tags.len(), src.image.name()));
            // The copies will look for referrer tags here: they need not list again.
            referrer_tags.remember(src.image.name(), &tags);
            // Signature, attestation and referrers-index tags are not images: they
            // travel with their subject (when referrers are copied), never on their own.
            let before = tags.len();
            tags.retain(|t| !crate::registry::media::is_referrer_tag(t));
            if tags.len() < before {
                log.info(format!(
                    "Leave out {} referrer tags (sha256-...) of {}: they travel with their subject",
                    before - tags.len(),
                    src.image.name()
                ));
            }
            Some(tags)
        } else {
            None
        };
        let mut pairs = Vec::new();
        for dst in &dsts {
            let more = rules::pair(&src, dst, tags.as_deref()).map_err(|e| bad("source", &e))?;
            // A pair whose source is its target stays: the seed answered it 200
            // (`already_synced`), and callers' scripts rely on that; the copy reads the
            // source and writes nothing (see `CopyJob::prepare`).
            pairs.extend(more);
        }
        Ok(pairs)
    }

    /// Copies the planned pairs, `task.proc_num` images at a time (image-syncer's meaning
    /// of proc_num); the service-wide transfer cap still bounds the blob streams, and a
    /// blob shared by several images goes once (the others wait for its turn, then find it
    /// there). Results keep the plan's order. A failed image does not stop the others, a
    /// cancel stops them all.
    async fn run(
        &self,
        pairs: &[(ImageRef, ImageRef)],
        options: &RunOptions<'_>,
        log: &SyncLog,
    ) -> Vec<ImageResult> {
        // Futures are collected first: a closure inside the stream type trips the
        // compiler's Send check for spawned tasks (rust-lang/rust#102211).
        let copies: Vec<_> = pairs
            .iter()
            .enumerate()
            .map(|(index, (source, target))| async move {
                (
                    index,
                    self.run_one(index, source, target, options, log).await,
                )
            })
            .collect();
        // Unordered: with `buffered`, one slow image would hold back every later start.
        let mut results: Vec<(usize, ImageResult)> = futures_util::stream::iter(copies)
            .buffer_unordered(self.task.proc_num.max(1))
            .collect()
            .await;
        results.sort_by_key(|(index, _)| *index);
        results.into_iter().map(|(_, result)| result).collect()
    }

    /// Copies one planned pair; an image that fails before its copy starts still gets its
    /// result and event.
    async fn run_one(
        &self,
        index: usize,
        source: &ImageRef,
        target: &ImageRef,
        options: &RunOptions<'_>,
        log: &SyncLog,
    ) -> ImageResult {
        let not_started = |error: String| {
            let result = ImageResult {
                source: source.to_string(),
                target: target.to_string(),
                error: Some(error),
                ..ImageResult::default()
            };
            options.observers.emit(&SyncEvent::ImageFinished {
                image: index,
                result: &result,
            });
            result
        };
        if options.cancel.is_cancelled() {
            return not_started("cancelled before this image started".into());
        }
        let registries = options.registries;
        let clients = Self::client(registries, source, log)
            .and_then(|src| Ok((src, Self::client(registries, target, log)?)));
        match clients {
            Ok((src, dst)) => {
                CopyJob {
                    source,
                    target,
                    src,
                    dst,
                    log,
                    parallel: self.task.proc_num,
                    retry: RetryPolicy {
                        retries: self.task.retries,
                        observers: options.observers.clone(),
                        max_wait: options.max_wait,
                    },
                    transfers: &self.transfers,
                    copy_budget: Budget::new(COPY_BUDGET),
                    force: options.force,
                    check_every_blob: options.check_every_blob,
                    platforms: options.platforms,
                    index,
                    observers: options.observers,
                    cancel: options.cancel,
                    referrers: options.referrers,
                    subject_locks: &self.subject_locks,
                    referrer_tags: options.referrer_tags,
                }
                .run()
                .await
            }
            Err(e) => {
                log.error(e.to_string());
                not_started(e.to_string())
            }
        }
    }

    /// The pooled client for `image`'s repository; logs which credential applies.
    fn client(
        registries: &Registries,
        image: &ImageRef,
        log: &SyncLog,
    ) -> Result<std::sync::Arc<crate::registry::RegistryClient>, crate::registry::RegistryError>
    {
        let Resolved { client, source } = registries
            .pool
            .resolve(&image.registry, &image.repository)?;
        match source {
            Some(source) => log.info(format!("Find auth information for {image}: {source}")),
            None => log.info(format!(
                "Cannot find auth information for {image}, access will be anonymous"
            )),
        }
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_rules_are_refused_without_network() {
        let engine = Engine::new(&RsyncConfig {
            allowed_registries: vec!["127.0.0.1:9".into()],
            ..RsyncConfig::default()
        });
        let refused = engine.sync("127.0.0.1:9/a:v1", "10.0.0.1:5000/a").await;
        assert_eq!(refused.failure, Some(FailureKind::NotAllowed));
        assert!(refused
            .error
            .unwrap()
            .contains("10.0.0.1:5000 is not allowed"));
        let d = format!("sha256:{}", "a".repeat(64));
        for (s, t) in [
            ("127.0.0.1:9/a:v1", &format!("127.0.0.1:9/b@{d}") as &str),
            ("127.0.0.1:9/Upper:v1", "127.0.0.1:9/a"),
            ("127.0.0.1:9/a:v1", ""),
            ("127.0.0.1:9/a", "127.0.0.1:9/b:x"),
        ] {
            let report = engine.sync(s, t).await;
            assert_eq!(
                report.status,
                SyncStatus::Unusual,
                "{s} -> {t}: {:?}",
                report.error
            );
            assert_eq!(report.failure, Some(FailureKind::BadInput));
            assert!(report.images.is_empty());
            assert!(report
                .log
                .contains("Finished, 0 sync tasks failed, 1 tasks generate failed"));
        }
    }
}
