//! Runs jobs: creates them in the store, queues them for a sync slot, runs the engine with
//! live progress and a cancel switch, records the end, sends the webhook, and after a
//! restart picks up whatever was queued or running.
//!
//! Each manager is one replica with its own id. It holds the jobs it runs or queues in the
//! store under a lease and an attempt number ([`Fence`]). On a shared store (PostgreSQL) a
//! heartbeat renews the leases, and a poll takes over jobs whose holder stopped renewing
//! (a replica that died); a replica that finds it lost a job stops it and writes nothing
//! more about it.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::Utc;
use futures_util::FutureExt as _;
use serde_json::Value;
use tokio::sync::{oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::live::LiveJob;
use super::model::{JobFilter, JobRecord, JobState, NewJob};
use super::store::{Claimed, Fence, JobStore, SlotAnswer, StoreError};
use super::tracker::SyncTracker;
use super::webhook::WebhookSender;
use crate::engine::{Engine, SyncContext, SyncLog, SyncReport, SyncStatus};

/// How a job ended, handed to [`JobHooks::finished`] to become the result body.
#[derive(Debug)]
pub enum JobEnd {
    /// The engine ran and reported.
    Report(SyncReport),
    /// The engine panicked; the text is the panic message.
    Panicked(String),
    /// Cancelled while queued; the text says by whom.
    CancelledBeforeStart(String),
    /// Not run again: its runs kept being cut off (see [`MAX_INTERRUPTED_RUNS`]); the
    /// text says how often and by which replicas.
    GaveUp(String),
}

/// The result of a finished job, as a synchronous POST answers it.
#[derive(Debug, Clone)]
pub struct JobResult {
    /// The response body.
    pub body: Value,
    /// The response status.
    pub http_status: u16,
}

/// What the API layer does with a finished job: shape the answer, log it.
pub trait JobHooks: Send + Sync {
    /// Turns the end of `job` into its result; also the place to log it.
    fn finished(&self, job: &JobRecord, end: JobEnd) -> JobResult;

    /// `job` got a sync slot after waiting `queued_seconds` in the queue; the place to
    /// count the wait. Does nothing unless implemented.
    fn started(&self, _job: &JobRecord, _queued_seconds: f64) {}
}

/// Why a job could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Every sync slot is taken and the queue of waiting jobs is full.
    #[error("the job queue is full")]
    QueueFull,
    /// The service is shutting down and takes no new jobs.
    #[error("the service is shutting down")]
    ShuttingDown,
    /// The job could not be stored.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a cancel did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// No such job (or not one the caller may see).
    #[error("no such job")]
    NotFound,
    /// It had already ended.
    #[error("the job has already ended ({})", .0.as_str())]
    Finished(JobState),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A job just created.
#[derive(Debug)]
pub struct Submitted {
    /// The record as stored (state queued or running).
    pub job: JobRecord,
    /// Resolves with the final record when the job ends.
    pub done: oneshot::Receiver<JobRecord>,
}

/// What a job waits for before it asks for a sync slot (see [`JobManager::submit_held`]).
pub type Hold = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>;

/// A job's place in the queue for a sync slot; resolves with the slot.
type Ticket = Pin<Box<dyn Future<Output = OwnedSemaphorePermit> + Send + 'static>>;

/// How a job gets its sync slot.
enum Start {
    /// It has one already (a synchronous caller who found a free slot).
    Now(OwnedSemaphorePermit),
    /// It waits in the queue, at the place its ticket took.
    Queue(Ticket),
    /// It waits for the hold, then in the queue.
    Held(Hold),
}

/// Takes a place in the queue for one of `slots` now, in the caller's task, so that jobs
/// start in the order they were created, not in the order their tasks first run (on a
/// busy multi-threaded runtime a job's task can run before the one created just before
/// it). tokio's semaphore queues a waiter at its first poll and serves waiters in order;
/// the job's task polls the ticket again later with its own waker, which finds the permit
/// handed over meanwhile or waits on. Unconstrained: a poll refused for the caller's
/// cooperative budget would not queue it.
fn ticket(slots: &Arc<Semaphore>) -> Ticket {
    let acquire = slots
        .clone()
        .acquire_owned()
        .map(|permit| permit.expect("slots never close"));
    let mut ticket: Ticket = Box::pin(tokio::task::unconstrained(acquire));
    let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
    match ticket.as_mut().poll(&mut cx) {
        Poll::Ready(permit) => Box::pin(std::future::ready(permit)),
        Poll::Pending => ticket,
    }
}

/// Limits of the manager, from `rsyncserver`.
#[derive(Debug, Clone, Copy)]
pub struct JobLimits {
    /// Syncs running at once.
    pub max_running: usize,
    /// Jobs waiting for a slot at once (synchronous and asynchronous alike).
    pub max_queued: usize,
    /// The longest a synchronous job waits for a registry's rate limit when its caller
    /// names no other (`rsyncserver.jobs.sync_wait_seconds`); a longer wait fails at once.
    pub sync_wait: Duration,
    /// How long a job's lease in a shared store lasts without a heartbeat.
    pub lease: Duration,
}

/// Runs and keeps jobs; cheap to clone.
#[derive(Clone)]
pub struct JobManager {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Arc<Engine>,
    store: Arc<dyn JobStore>,
    hooks: Arc<dyn JobHooks>,
    webhook: WebhookSender,
    slots: Arc<Semaphore>,
    limits: JobLimits,
    queued: AtomicUsize,
    live: Mutex<HashMap<i64, Arc<LiveJob>>>,
    syncs: Arc<SyncTracker>,
    stopping: CancellationToken,
    /// Woken when a job of this replica ends (a service-wide slot may be free).
    slot_freed: Notify,
    /// This replica's id: the owner written into the rows it holds.
    replica: String,
}

impl std::fmt::Debug for JobManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobManager")
            .field("limits", &self.inner.limits)
            .field("live", &self.live_count())
            .finish_non_exhaustive()
    }
}

impl JobManager {
    /// A manager running `engine` with jobs kept in `store`.
    pub fn new(
        engine: Arc<Engine>,
        store: Arc<dyn JobStore>,
        hooks: Arc<dyn JobHooks>,
        webhook: WebhookSender,
        limits: JobLimits,
    ) -> Self {
        let limits = JobLimits {
            max_running: limits.max_running.max(1),
            ..limits
        };
        Self {
            inner: Arc::new(Inner {
                engine,
                store,
                hooks,
                webhook,
                slots: Arc::new(Semaphore::new(limits.max_running)),
                limits,
                queued: AtomicUsize::new(0),
                live: Mutex::default(),
                syncs: Arc::new(SyncTracker::default()),
                stopping: CancellationToken::new(),
                slot_freed: Notify::new(),
                replica: replica_id(),
            }),
        }
    }

    /// Checks a `callback_url` against `rsyncserver.jobs.callback_allowed_hosts` now, so
    /// a refused one is a 400 at submit; delivery checks again.
    pub async fn check_callback(&self, url: &reqwest::Url) -> Result<(), String> {
        self.inner.webhook.policy().admit(url).await.map(|_| ())
    }

    /// The engine jobs run on.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// This replica's id (host name, process id and a random part: unique per process).
    pub fn replica(&self) -> &str {
        &self.inner.replica
    }

    /// Whether the job database answers (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.blocking(|store| store.ping()).await
    }

    /// The configured limits.
    pub fn limits(&self) -> JobLimits {
        self.inner.limits
    }

    /// One permit per sync allowed to run at once.
    pub fn slots(&self) -> &Arc<Semaphore> {
        &self.inner.slots
    }

    /// Syncs running right now; shutdown waits on it.
    pub fn syncs(&self) -> &Arc<SyncTracker> {
        &self.inner.syncs
    }

    /// Jobs waiting for a slot right now.
    pub fn queued(&self) -> usize {
        self.inner.queued.load(Ordering::Relaxed)
    }

    fn live_count(&self) -> usize {
        self.inner.live.lock().expect("live jobs lock").len()
    }

    /// Creates a job. It takes a free slot at once, or waits in one FIFO queue (bounded by
    /// [`JobLimits::max_queued`], else [`SubmitError::QueueFull`]) whether its caller waits
    /// for the answer (`asynchronous: false`) or not. A synchronous caller that goes away
    /// while its job waits calls [`Self::abandon`].
    pub async fn submit(&self, new: NewJob) -> Result<Submitted, SubmitError> {
        self.submit_held(new, None).await
    }

    /// [`Self::submit`] for a job that, before it asks for a sync slot, waits for `hold`
    /// (it stays `queued` meanwhile, and a cancel or shutdown still ends the wait). A
    /// mirror's push job waits so for more pushes of its tag and for the mirror's
    /// previous run to end. After a restart a resumed job no longer waits.
    pub async fn submit_held(
        &self,
        new: NewJob,
        hold: Option<Hold>,
    ) -> Result<Submitted, SubmitError> {
        if self.inner.stopping.is_cancelled() {
            return Err(SubmitError::ShuttingDown);
        }
        // A free slot is taken at once only by a caller who waits: an asynchronous job
        // always goes through the queue, as before. The semaphore hands freed permits to
        // waiters first, so this never jumps ahead of a job already queued. A held job
        // always queues: it must not take a slot before its hold ends.
        // On a shared store every job queues: a free slot here may be taken elsewhere,
        // and a job waiting for a service-wide slot is waiting.
        let permit = if new.asynchronous || hold.is_some() || self.inner.store.shared() {
            None
        } else {
            self.inner.slots.clone().try_acquire_owned().ok()
        };
        let queued = permit.is_none();
        if queued {
            let limit = self.inner.limits.max_queued;
            let taken = self
                .inner
                .queued
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < limit).then_some(n + 1)
                });
            if taken.is_err() {
                return Err(SubmitError::QueueFull);
            }
        }
        // Only a caller who waits for the answer bounds the rate-limit wait; an
        // asynchronous job waits for the quota as long as it takes.
        let max_wait =
            (!new.asynchronous).then(|| new.max_wait.unwrap_or(self.inner.limits.sync_wait));
        let record = new.into_record(Utc::now());
        let (owner, lease) = (self.inner.replica.clone(), self.inner.limits.lease);
        let stored = self
            .blocking(move |store| store.create(record, &owner, lease))
            .await;
        let (job, fence) = match stored {
            Ok(job) => job,
            Err(e) => {
                if queued {
                    self.inner.queued.fetch_sub(1, Ordering::SeqCst);
                }
                return Err(e.into());
            }
        };
        let (done_tx, done) = oneshot::channel();
        let start = match hold {
            Some(hold) => Start::Held(hold),
            None => permit.map_or_else(|| Start::Queue(ticket(&self.inner.slots)), Start::Now),
        };
        self.spawn(job.clone(), fence, None, start, Some(done_tx), max_wait);
        Ok(Submitted { job, done })
    }

    /// Picks up the jobs the store holds as queued or running that nobody holds any more
    /// (the service stopped before they ended; on a shared store, only those whose
    /// holder's lease lapsed or that were let go); each is queued again and says it was
    /// resumed. On a shared store it then starts the heartbeat and the takeover poll.
    pub async fn resume_unfinished(&self) -> Result<usize, StoreError> {
        let shared = self.inner.store.shared();
        // An embedded store has one process: whatever it holds is left from the last one.
        let count = self.take_over(usize::MAX, !shared).await?;
        if shared {
            self.start_lease_tasks();
        }
        Ok(count)
    }

    /// Claims up to `limit` jobs nobody holds and queues them here as resumed jobs.
    async fn take_over(&self, limit: usize, everything: bool) -> Result<usize, StoreError> {
        let (owner, lease) = (self.inner.replica.clone(), self.inner.limits.lease);
        let claimed = self
            .blocking(move |store| store.claim(&owner, lease, limit, everything))
            .await?;
        let count = claimed.len();
        for Claimed {
            mut job,
            fence,
            previous_owner,
            cancel_requested_by,
            interrupted_by,
        } in claimed
        {
            if interrupted_by.len() >= MAX_INTERRUPTED_RUNS {
                self.give_up(job, fence, &interrupted_by).await;
                continue;
            }
            let was = job.state;
            job.resumed += 1;
            job.state = JobState::Queued;
            // On a shared store a job with a previous owner was taken from a replica that
            // stopped renewing its lease (it died or lost the database).
            let because = match &previous_owner {
                Some(previous) if !everything => format!(
                    "a service restart: taken over from replica {previous}, whose lease lapsed (attempt {})",
                    fence.attempt
                ),
                _ => "a service restart".to_owned(),
            };
            tracing::info!(
                job = job.id,
                user = %job.user,
                was = was.as_str(),
                previous_owner = previous_owner.as_deref().unwrap_or(""),
                attempt = fence.attempt,
                "resuming job after {because}"
            );
            let (saved, saved_fence) = (job.clone(), fence.clone());
            match self
                .blocking(move |store| store.save(&saved, &saved_fence))
                .await
            {
                Ok(true) => {}
                Ok(false) => continue,
                // The claim holds it under this replica's fence: run it anyway (its row
                // is written again as it starts), or nobody would until the lease lapses.
                Err(e) => tracing::warn!(job = job.id, error = %e, "cannot save a resumed job"),
            }
            self.inner.queued.fetch_add(1, Ordering::SeqCst);
            // Nobody waits for a resumed job's answer: no bound on its waits.
            let start = Start::Queue(ticket(&self.inner.slots));
            let live = self.spawn(job, fence, Some(because), start, None, None);
            if let Some(by) = cancel_requested_by {
                self.cancel_live(&live, &by);
            }
        }
        Ok(count)
    }

    /// Fails a claimed job whose runs were cut off too often instead of running it again:
    /// a job that kills (or starves) every replica that runs it must not loop for ever.
    async fn give_up(&self, job: JobRecord, fence: Fence, interrupted_by: &[String]) {
        let who = interrupted_by
            .iter()
            .map(|r| {
                if r.is_empty() {
                    "(unknown)"
                } else {
                    r.as_str()
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let message = format!(
            "the sync was given up: its run was cut off {} times (attempt {}); each holder \
             stopped while it ran the job (the process died or was killed, or lost the job \
             database, and its lease lapsed): {who}. It is not run again, as the job itself may \
             be what stops them: read those replicas' logs, then submit it again",
            interrupted_by.len(),
            fence.attempt
        );
        tracing::error!(
            job = job.id,
            user = %job.user,
            attempt = fence.attempt,
            interrupted_by = %who,
            "job given up after {} cut-off runs",
            interrupted_by.len()
        );
        let live = LiveJob::new(job, fence, None);
        let job = self
            .finish(&live, JobEnd::GaveUp(message), JobState::Failed)
            .await;
        if !live.is_lost() {
            self.notify(job, &live).await;
        }
    }

    /// Renews the leases of the jobs held here every third of the lease, and takes over
    /// jobs whose holder let its lease lapse while this replica has a free slot; acts at
    /// once on the cancel requests the store announces.
    fn start_lease_tasks(&self) {
        if let Some(mut notices) = self.inner.store.cancel_notices() {
            let manager = self.clone();
            tokio::spawn(async move {
                while let Some((id, by)) = notices.recv().await {
                    if let Some(live) = manager.live(id).filter(|l| !l.cancel.is_cancelled()) {
                        tracing::info!(
                            job = id,
                            by,
                            "cancel request received through a database notification"
                        );
                        manager.cancel_live(&live, &by);
                    }
                }
            });
        }
        let every = self.inner.limits.lease / 3;
        let manager = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let renewed = manager.heartbeat().await;
                // Not while the leases of this replica's own jobs may have lapsed unrenewed
                // (the database was away): it would take its own running jobs as lapsed.
                if manager.inner.stopping.is_cancelled() || !renewed {
                    continue;
                }
                manager.deliver_orphaned_callbacks().await;
                let free = manager.inner.slots.available_permits();
                let room = manager
                    .inner
                    .limits
                    .max_queued
                    .saturating_sub(manager.queued());
                let limit = free.min(room);
                if limit > 0 {
                    if let Err(e) = manager.take_over(limit, false).await {
                        tracing::warn!(error = %e, "cannot look for jobs to take over");
                    }
                }
            }
        });
    }

    /// One heartbeat: extends the leases of every job held here; a job whose lease was
    /// taken by another replica meanwhile is stopped here. Returns whether the renewal
    /// went through (`false` while the database cannot be reached; the jobs go on).
    async fn heartbeat(&self) -> bool {
        let live: Vec<Arc<LiveJob>> = self
            .inner
            .live
            .lock()
            .expect("live jobs lock")
            .values()
            .filter(|l| !l.is_lost())
            .cloned()
            .collect();
        if live.is_empty() {
            return true;
        }
        let held: Vec<(i64, i64)> = live.iter().map(|l| (l.id, l.fence.attempt)).collect();
        let (owner, lease) = (self.inner.replica.clone(), self.inner.limits.lease);
        match self
            .blocking(move |store| store.renew(&owner, &held, lease))
            .await
        {
            Ok(kept) => {
                for renewed in &kept {
                    let asked = renewed.cancel_requested_by.as_deref();
                    if let (Some(by), Some(job)) = (asked, self.live(renewed.id)) {
                        if !job.cancel.is_cancelled() {
                            self.cancel_live(&job, by);
                        }
                    }
                }
                for job in live.iter().filter(|l| !kept.iter().any(|k| k.id == l.id)) {
                    // It may have just ended (its final save takes it out of the renewal):
                    // only a job still unfinished here was really lost.
                    if !job.snapshot().state.is_final() {
                        tracing::warn!(
                            job = job.id,
                            attempt = job.fence.attempt,
                            "lease lost: another replica has taken the job over; stopping it here"
                        );
                        job.lose();
                    }
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew job leases; the jobs go on");
                false
            }
        }
    }

    /// Deletes finished jobs older than `days`.
    pub async fn prune(&self, days: u32) -> Result<usize, StoreError> {
        let cutoff = Utc::now() - chrono::Duration::days(i64::from(days));
        self.blocking(move |store| store.prune(cutoff)).await
    }

    /// The job as it is now: live while unfinished, from the store afterwards.
    pub async fn get(&self, id: i64) -> Result<Option<JobRecord>, StoreError> {
        if let Some(live) = self.live(id) {
            return Ok(Some(live.snapshot()));
        }
        self.blocking(move |store| store.get(id)).await
    }

    /// Jobs matching `filter`, newest first, with live progress for unfinished ones.
    pub async fn list(&self, filter: JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        let wanted = filter.clone();
        let mut jobs = self.blocking(move |store| store.list(&filter)).await?;
        for job in &mut jobs {
            if let Some(live) = self.live(job.id) {
                *job = live.snapshot();
            }
        }
        // A live job's state may differ from the stored one (a running job waiting for a
        // registry's quota shows as queued without a save): filter by what is shown.
        if let Some(state) = wanted.state {
            jobs.retain(|job| job.state == state);
            let live: Vec<JobRecord> = {
                let live = self.inner.live.lock().expect("live jobs lock");
                live.values().map(|job| job.snapshot()).collect()
            };
            for job in live {
                let matches = job.state == state
                    && wanted.user.as_ref().is_none_or(|u| *u == job.user)
                    && wanted.since.is_none_or(|t| job.created_at >= t)
                    && wanted.before_id.is_none_or(|id| job.id < id);
                if matches && !jobs.iter().any(|j| j.id == job.id) {
                    jobs.push(job);
                }
            }
            jobs.sort_by_key(|job| std::cmp::Reverse(job.id));
            jobs.truncate(wanted.limit);
        }
        Ok(jobs)
    }

    /// Watches an unfinished job; `None` once it has ended (read it with [`Self::get`]).
    pub fn watch(&self, id: i64) -> Option<watch::Receiver<JobRecord>> {
        self.live(id).map(|live| live.subscribe())
    }

    /// Cancels a queued or running job. Transfers stop; no tag is written afterwards.
    /// Returns the record as it is at the moment of the cancel.
    pub async fn cancel(&self, id: i64, by: &str) -> Result<JobRecord, CancelError> {
        let Some(live) = self.live(id) else {
            // Not run here: another replica may hold it. The request goes through the
            // database; the holder reads it at its next heartbeat and stops the job.
            let asker = by.to_owned();
            return match self
                .blocking(move |store| store.request_cancel(id, &asker))
                .await?
            {
                Some(job) if job.state.is_final() => Err(CancelError::Finished(job.state)),
                Some(mut job) => {
                    tracing::info!(
                        job = id,
                        by,
                        "cancel requested of the replica holding the job"
                    );
                    job.cancelled_by.get_or_insert_with(|| by.to_owned());
                    Ok(job)
                }
                None => Err(CancelError::NotFound),
            };
        };
        self.cancel_live(&live, by);
        Ok(live.snapshot())
    }

    /// Cancels a job that runs or waits here.
    fn cancel_live(&self, live: &Arc<LiveJob>, by: &str) {
        live.update(|job| {
            if job.cancelled_by.is_none() {
                job.cancelled_by = Some(by.to_owned());
            }
        });
        live.cancel.cancel();
        tracing::info!(job = live.id, by, "job cancelled");
    }

    /// Cancels job `id` if it is still waiting for a slot, so that it never runs; a job
    /// already running goes on (its copy must not stop half-way). For a synchronous
    /// caller that hung up while waiting. Returns whether the job was cancelled.
    pub fn abandon(&self, id: i64, by: &str) -> bool {
        let Some(live) = self.live(id) else {
            return false;
        };
        let mut abandoned = false;
        // Decided under the record's lock, as `run` decides to start: the two cannot
        // interleave, so a job either starts or is cancelled, never both.
        live.update(|job| {
            if job.state == JobState::Queued && !live.cancel.is_cancelled() {
                job.cancelled_by = Some(by.to_owned());
                live.cancel.cancel();
                abandoned = true;
            }
        });
        if abandoned {
            tracing::info!(job = id, by, "queued job cancelled: its caller went away");
        }
        abandoned
    }

    /// Stops starting queued jobs (they stay queued in the store for the next start);
    /// running ones go on. Used when the service shuts down.
    pub fn stop_starting(&self) {
        self.inner.stopping.cancel();
    }

    fn live(&self, id: i64) -> Option<Arc<LiveJob>> {
        self.inner
            .live
            .lock()
            .expect("live jobs lock")
            .get(&id)
            .cloned()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn JobStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || call(store.as_ref()))
            .await
            .map_err(|e| StoreError::Query {
                what: "run a database call",
                cause: e.to_string(),
            })?
    }

    fn spawn(
        &self,
        job: JobRecord,
        fence: Fence,
        resumed_because: Option<String>,
        start: Start,
        done: Option<oneshot::Sender<JobRecord>>,
        max_wait: Option<Duration>,
    ) -> Arc<LiveJob> {
        let live = LiveJob::new(job, fence, resumed_because);
        self.inner
            .live
            .lock()
            .expect("live jobs lock")
            .insert(live.id, live.clone());
        let manager = self.clone();
        let task_live = live.clone();
        // Every line logged while the job runs (engine, registry client) names the job
        // and its user; a root span, as the job outlives the request that made it.
        let span = {
            let job = live.snapshot();
            tracing::info_span!(parent: None, "job", job = job.id, user = %job.user)
        };
        // Its own task: a caller hanging up must not cancel the copy half-way.
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let live = task_live;
                let finished = manager.run(&live, start, max_wait).await;
                if let Some(job) = finished {
                    if let Some(done) = done {
                        let _ = done.send(job.clone());
                    }
                    // Taken over by another replica: that one ends it and sends the webhook.
                    if !live.is_lost() {
                        manager.notify(job, &live).await;
                    }
                }
            },
            span,
        ));
        live
    }

    /// Runs one job to its end; `None` when shutdown came first and it stays queued.
    async fn run(
        &self,
        live: &Arc<LiveJob>,
        start: Start,
        max_wait: Option<Duration>,
    ) -> Option<JobRecord> {
        let queued = !matches!(start, Start::Now(_));
        let waited = self.wait_for_slot(live, start).await;
        if queued {
            self.inner.queued.fetch_sub(1, Ordering::SeqCst);
        }
        let permit = match waited {
            Ok(permit) => permit,
            Err(Interrupted::Lost) => {
                // Taken over while it waited: the new holder runs and ends it.
                self.forget(live);
                return None;
            }
            Err(Interrupted::Cancelled) => {
                let by = live.snapshot().cancelled_by.unwrap_or_default();
                let end = JobEnd::CancelledBeforeStart(by);
                return Some(self.finish(live, end, JobState::Cancelled).await);
            }
            Err(Interrupted::Stopping) if !live.snapshot().asynchronous => {
                // Its caller is told to run it again; resuming it after the
                // restart would run a sync nobody waits for.
                let end = JobEnd::CancelledBeforeStart("the service shutting down".into());
                return Some(self.finish(live, end, JobState::Cancelled).await);
            }
            Err(Interrupted::Stopping) => {
                // Let go, so another replica may run it now rather than after
                // this one's lease lapses.
                let (id, fence) = (live.id, live.fence.clone());
                if let Err(e) = self.blocking(move |s| s.release(id, &fence)).await {
                    tracing::warn!(job = id, error = %e, "cannot let go of a queued job");
                }
                self.forget(live);
                return None;
            }
        };
        let _slot = permit;
        let now = Utc::now();
        let mut starts = false;
        live.update(|job| {
            // A caller that hung up between the slot and this line has cancelled: the
            // job must not start (see `abandon`).
            if !live.cancel.is_cancelled() {
                mark_running(job, now);
                starts = true;
            }
        });
        if !starts {
            let by = live.snapshot().cancelled_by.unwrap_or_default();
            let end = JobEnd::CancelledBeforeStart(by);
            return Some(self.finish(live, end, JobState::Cancelled).await);
        }
        let _running = self.inner.syncs.start();
        let job = live.snapshot();
        self.inner
            .hooks
            .started(&job, job.queued_seconds.unwrap_or_default());
        self.save(live, &job).await;
        let context = SyncContext {
            observer: live.clone(),
            cancel: live.cancel.clone(),
            resumed: job.resumed > 0,
            max_wait,
        };
        let sync = self.inner.engine.run_request_with(&job.request, &context);
        // A panic in the engine ends this one job as an internal error.
        let sync = AssertUnwindSafe(sync).catch_unwind();
        let outcome = if self.inner.store.shared() {
            // Other replicas show this job from its row: keep its progress there fresh.
            // Stopped and awaited before the final save, so no progress write lands after it.
            let stop = CancellationToken::new();
            let saver = tokio::spawn({
                let (manager, live, stop) = (self.clone(), live.clone(), stop.clone());
                async move { manager.save_progress(&live, &stop).await }
            });
            let outcome = sync.await;
            stop.cancel();
            let _ = saver.await;
            outcome
        } else {
            sync.await
        };
        let (end, state) = match outcome {
            Ok(mut report) => {
                if job.resumed > 0 {
                    let because = live.resumed_because.as_deref();
                    prepend_resume_note(&mut report, job.resumed, because);
                }
                let state =
                    if live.cancel.is_cancelled() && report.status != SyncStatus::Successfully {
                        JobState::Cancelled
                    } else if report.status == SyncStatus::Successfully {
                        JobState::Succeeded
                    } else {
                        JobState::Failed
                    };
                (JobEnd::Report(report), state)
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %what, job = job.id, "sync engine panicked");
                (JobEnd::Panicked(what), JobState::Failed)
            }
        };
        Some(self.finish(live, end, state).await)
    }

    /// Waits for this replica's sync slot (FIFO among its jobs) and, on a shared store,
    /// for one of the service-wide slots too.
    async fn wait_for_slot(
        &self,
        live: &Arc<LiveJob>,
        start: Start,
    ) -> Result<OwnedSemaphorePermit, Interrupted> {
        let permit = match start {
            Start::Now(permit) => permit,
            Start::Queue(ticket) => self.wait_in_queue(live, ticket).await?,
            Start::Held(hold) => {
                // Its place in the queue is taken only once the hold ends.
                let slots = self.inner.slots.clone();
                let after_hold: Ticket = Box::pin(async move {
                    hold.await;
                    ticket(&slots).await
                });
                self.wait_in_queue(live, after_hold).await?
            }
        };
        if self.inner.store.shared() {
            self.shared_slot(live).await?;
        }
        Ok(permit)
    }

    /// Waits on `ticket` for this replica's slot, unless the job is cancelled or the
    /// service stops first.
    async fn wait_in_queue(
        &self,
        live: &Arc<LiveJob>,
        ticket: Ticket,
    ) -> Result<OwnedSemaphorePermit, Interrupted> {
        tokio::select! {
            biased;
            _ = live.cancel.cancelled() => Err(Interrupted::cancelled(live)),
            _ = self.inner.stopping.cancelled() => Err(Interrupted::Stopping),
            permit = ticket => Ok(permit),
        }
    }

    /// Waits until the store grants job `live` one of the service-wide slots (its row
    /// then says running): asked again whenever a job of this replica ends, and every
    /// [`SHARED_SLOT_POLL`] for the slots other replicas free.
    async fn shared_slot(&self, live: &Arc<LiveJob>) -> Result<(), Interrupted> {
        let max_running = self.inner.limits.max_running;
        let mut said = false;
        loop {
            let freed = self.inner.slot_freed.notified();
            tokio::pin!(freed);
            // Registered before the store is asked: an end in between still wakes us.
            freed.as_mut().enable();
            let mut job = live.snapshot();
            mark_running(&mut job, Utc::now());
            let fence = live.fence.clone();
            match self
                .blocking(move |store| store.start(&job, &fence, max_running))
                .await
            {
                Ok(SlotAnswer::Started) => return Ok(()),
                Ok(SlotAnswer::Lost) => {
                    tracing::warn!(
                        job = live.id,
                        attempt = live.fence.attempt,
                        "job taken over by another replica while it waited for a slot"
                    );
                    live.lose();
                    return Err(Interrupted::Lost);
                }
                Ok(SlotAnswer::Full) if !said => {
                    said = true;
                    tracing::info!(
                        job = live.id,
                        max_running,
                        "every service-wide sync slot is taken (rsyncserver.max_concurrent_syncs, counted over all replicas): waiting"
                    );
                }
                Ok(SlotAnswer::Full) => {}
                // The database is away: the job waits, and asks again.
                Err(e) => tracing::warn!(job = live.id, error = %e, "cannot take a sync slot"),
            }
            tokio::select! {
                biased;
                _ = live.cancel.cancelled() => return Err(Interrupted::cancelled(live)),
                _ = self.inner.stopping.cancelled() => return Err(Interrupted::Stopping),
                () = freed => {}
                () = tokio::time::sleep(SHARED_SLOT_POLL) => {}
            }
        }
    }

    /// Records the end of a job: result, state, store; then forgets it as live.
    async fn finish(&self, live: &Arc<LiveJob>, end: JobEnd, state: JobState) -> JobRecord {
        let result = self.inner.hooks.finished(&live.snapshot(), end);
        live.update(|job| {
            job.state = state;
            // A wait cut short by a cancel never said it was over.
            job.waiting = None;
            job.finished_at = Some(Utc::now());
            job.result = Some(result.body);
            job.http_status = Some(result.http_status);
        });
        let job = live.snapshot();
        self.save_end(live, &job).await;
        self.forget(live);
        // Its row no longer counts as running: a job waiting for a shared slot asks again.
        self.inner.slot_freed.notify_waiters();
        job
    }

    /// Saves the live record about once a second while it changes, until `stop`.
    async fn save_progress(&self, live: &Arc<LiveJob>, stop: &CancellationToken) {
        let mut changes = live.subscribe();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(PROGRESS_SAVE_GAP) => {}
            }
            if changes.has_changed().unwrap_or(false) {
                let job = changes.borrow_and_update().clone();
                self.save(live, &job).await;
            }
        }
    }

    /// Sends the webhook, if asked for, and records whether it got through: once per
    /// job, by whoever claims it in the store's outbox first (see [`JobStore::claim_callback`]).
    async fn notify(&self, job: JobRecord, live: &Arc<LiveJob>) {
        if job.callback_url.is_none() {
            return;
        }
        let (id, fence, hold) = (job.id, live.fence.clone(), self.inner.limits.lease);
        match self
            .blocking(move |store| store.claim_callback(id, &fence, hold))
            .await
        {
            Ok(true) => self.deliver(job).await,
            Ok(false) => tracing::info!(job = id, "webhook claimed already: not sent again"),
            // Another replica's sweep sends it once this one's last heartbeat is old.
            Err(e) => tracing::warn!(job = id, error = %e, "cannot claim the webhook delivery"),
        }
    }

    /// Delivers the webhook of a job whose delivery this replica claimed, renewing the
    /// claim while it tries (retries with backoff take longer than a lease), then records
    /// the outcome.
    async fn deliver(&self, mut job: JobRecord) {
        let (id, lease) = (job.id, self.inner.limits.lease);
        let renew = async {
            loop {
                tokio::time::sleep(lease / 3).await;
                let owner = self.inner.replica.clone();
                if let Err(e) = self
                    .blocking(move |store| store.renew_callback(id, &owner, lease))
                    .await
                {
                    tracing::warn!(job = id, error = %e, "cannot renew the webhook claim");
                }
            }
        };
        job.callback = tokio::select! {
            callback = self.inner.webhook.deliver(&job) => callback,
            () = renew => unreachable!("the renewal never ends"),
        };
        let owner = self.inner.replica.clone();
        if let Err(e) = self
            .blocking(move |store| store.callback_sent(&job, &owner))
            .await
        {
            tracing::error!(job = id, error = %e, "cannot record the webhook delivery");
        }
    }

    /// Claims and delivers the webhooks of finished jobs whose finishing replica stopped
    /// before it could send them (a shared store's sweep, at each heartbeat).
    async fn deliver_orphaned_callbacks(&self) {
        let (owner, lease) = (self.inner.replica.clone(), self.inner.limits.lease);
        let orphaned = self
            .blocking(move |store| store.orphaned_callbacks(&owner, lease, lease, 4))
            .await;
        match orphaned {
            Ok(jobs) => {
                for job in jobs {
                    tracing::info!(
                        job = job.id,
                        "sending the webhook of a job whose finishing replica stopped before it got through"
                    );
                    let manager = self.clone();
                    tokio::spawn(async move { manager.deliver(job).await });
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot look for webhooks nobody sent"),
        }
    }

    fn forget(&self, live: &Arc<LiveJob>) {
        self.inner
            .live
            .lock()
            .expect("live jobs lock")
            .remove(&live.id);
    }

    /// Writes the record under the job's fence. A write refused because another replica
    /// took the job over stops the job here.
    async fn save(&self, live: &Arc<LiveJob>, job: &JobRecord) {
        if let Err(e) = self.try_save(live, job).await {
            // The job goes on; only its record in the store is stale until the next save.
            tracing::warn!(job = job.id, error = %e, "cannot save job");
        }
    }

    /// [`Self::save`] that hands back a store error.
    async fn try_save(&self, live: &Arc<LiveJob>, job: &JobRecord) -> Result<(), StoreError> {
        if live.is_lost() {
            return Ok(());
        }
        let (copy, fence) = (job.clone(), live.fence.clone());
        if !self
            .blocking(move |store| store.save(&copy, &fence))
            .await?
        {
            tracing::warn!(
                job = job.id,
                attempt = live.fence.attempt,
                "job taken over by another replica (newer attempt): stopping it here"
            );
            live.lose();
        }
        Ok(())
    }

    /// Writes a job's end. On a shared store a write that fails (PostgreSQL restarting,
    /// unreachable) is tried again until it goes through: a row left `running` would be
    /// taken over and run again once its lease lapsed. The job stays live here meanwhile,
    /// so the heartbeat goes on renewing its lease and readers see its end. At shutdown
    /// it gives up after a few tries (the job is then resumed by a replica later).
    async fn save_end(&self, live: &Arc<LiveJob>, job: &JobRecord) {
        let mut gap = END_SAVE_FIRST_GAP;
        let mut tries = 0;
        loop {
            let Err(e) = self.try_save(live, job).await else {
                if tries > 0 {
                    tracing::info!(
                        job = job.id,
                        tries,
                        "job's end saved after the database came back"
                    );
                }
                return;
            };
            tries += 1;
            let stopping = self.inner.stopping.is_cancelled();
            if !self.inner.store.shared() || (stopping && tries >= END_SAVE_TRIES_AT_SHUTDOWN) {
                tracing::error!(job = job.id, error = %e, "cannot save the end of the job");
                return;
            }
            tracing::warn!(
                job = job.id,
                error = %e,
                "cannot save the end of the job; trying again in {gap:?}"
            );
            tokio::time::sleep(gap).await;
            gap = (gap * 2).min(END_SAVE_MAX_GAP);
        }
    }
}

/// The first pause before a failed save of a job's end is tried again; it doubles up to
/// [`END_SAVE_MAX_GAP`].
const END_SAVE_FIRST_GAP: Duration = Duration::from_millis(250);
/// The longest pause between tries of a job's end.
const END_SAVE_MAX_GAP: Duration = Duration::from_secs(5);
/// Tries of a job's end once the service is shutting down, before it gives up.
const END_SAVE_TRIES_AT_SHUTDOWN: u32 = 3;

/// How many cut-off runs a job gets: a claim that finds its runs cut off this often
/// (its holder died, was killed or lost the database while running it, each time) fails
/// it rather than starting it again. Resumes of a job that was only queued do not count.
pub const MAX_INTERRUPTED_RUNS: usize = 3;

/// How often a job waiting for a service-wide slot asks the shared store again (a slot
/// freed on this replica wakes it at once).
const SHARED_SLOT_POLL: Duration = Duration::from_millis(500);

/// Why a job stopped waiting for its slot.
enum Interrupted {
    /// Someone cancelled it.
    Cancelled,
    /// The service is shutting down.
    Stopping,
    /// Another replica took it over.
    Lost,
}

impl Interrupted {
    /// A fired cancel switch: a cancel, or the job lost to another replica.
    fn cancelled(live: &LiveJob) -> Self {
        if live.is_lost() {
            Self::Lost
        } else {
            Self::Cancelled
        }
    }
}

/// The record of a job starting at `now`.
fn mark_running(job: &mut JobRecord, now: chrono::DateTime<Utc>) {
    job.state = JobState::Running;
    job.started_at = Some(now);
    job.queued_seconds = Some(seconds_between(job.created_at, now));
}

/// How often a running job's progress is written to a shared store, for other replicas.
const PROGRESS_SAVE_GAP: Duration = Duration::from_secs(1);

/// Seconds from `from` to `to`, never negative (the clock may step back).
fn seconds_between(from: chrono::DateTime<Utc>, to: chrono::DateTime<Utc>) -> f64 {
    ((to - from).num_milliseconds().max(0) as f64) / 1000.0
}

/// Puts a line at the top of a resumed job's log, so its reader knows why blobs were
/// found already at the target.
fn prepend_resume_note(report: &mut SyncReport, times: u32, because: Option<&str>) {
    let note = SyncLog::default();
    let because = because.unwrap_or("a service restart");
    note.info(format!(
        "Resumed after {because} (resume {times}); blobs already at the target are skipped"
    ));
    report.log.insert_str(0, &note.text());
}

/// An id unique to this process among the replicas: host name, process id and a random
/// part (a restarted process on the same host is a new replica).
fn replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    let random = std::collections::hash_map::RandomState::new();
    let salt = std::hash::BuildHasher::hash_one(&random, std::time::SystemTime::now()) & 0xffff;
    format!("{host}-{}-{salt:04x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `ticket` once, as a task would.
    fn poll(ticket: &mut Ticket) -> Option<OwnedSemaphorePermit> {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        match ticket.as_mut().poll(&mut cx) {
            Poll::Ready(permit) => Some(permit),
            Poll::Pending => None,
        }
    }

    #[tokio::test]
    async fn tickets_are_served_in_the_order_they_were_taken_not_polled() {
        let slots = Arc::new(Semaphore::new(1));
        let held = slots.clone().try_acquire_owned().expect("a free slot");
        let mut first = ticket(&slots);
        let mut second = ticket(&slots);
        drop(held);
        // The second job's task runs first: the slot is not its own.
        assert!(
            poll(&mut second).is_none(),
            "the second ticket jumped the queue"
        );
        let slot = poll(&mut first).expect("the first ticket holds the freed slot");
        assert!(poll(&mut second).is_none());
        drop(slot);
        assert!(poll(&mut second).is_some());
    }

    #[tokio::test]
    async fn a_ticket_taken_with_a_slot_free_holds_it_and_a_dropped_one_gives_it_back() {
        let slots = Arc::new(Semaphore::new(1));
        let mut first = ticket(&slots);
        assert_eq!(slots.available_permits(), 0, "taken when the ticket was");
        let mut second = ticket(&slots);
        drop(first);
        let slot = poll(&mut second).expect("the dropped ticket's slot went on");
        drop(slot);
        assert_eq!(slots.available_permits(), 1);
        first = ticket(&slots);
        assert!(poll(&mut first).is_some());
    }
}
