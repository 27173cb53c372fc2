//! Where jobs are kept: one small interface with two implementations, the embedded SQLite
//! file ([`super::sqlite`]) and a PostgreSQL database that several replicas share
//! ([`super::postgres`]). Calls block; the manager runs them off the async workers.
//!
//! Every unfinished job is held by one owner (a replica id) under a numbered attempt and a
//! lease. Writes carry the [`Fence`] (owner, attempt) they were given: once another
//! replica has taken the job over (a new attempt), the old owner's writes change nothing.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::model::{JobFilter, JobRecord};

/// Why the job store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or created.
    #[error("job database {path}: cannot open: {cause} (check rsyncserver.jobs.database and the folder's permissions)")]
    Open {
        /// The database file.
        path: String,
        /// Why.
        cause: String,
    },
    /// The PostgreSQL database could not be reached or migrated at start-up.
    #[error("job database {url}: {cause} (check rsyncserver.jobs.database, that PostgreSQL runs and that the user may log in and create tables)")]
    Connect {
        /// The URL, without its password.
        url: String,
        /// Why.
        cause: String,
    },
    /// A read or write failed.
    #[error("job database: {what}: {cause}")]
    Query {
        /// What the store was doing.
        what: &'static str,
        /// Why.
        cause: String,
    },
}

/// Maps a failed query, or a record that would not (de)serialise, during step `what` to
/// [`StoreError::Query`]; one mapping for both stores and their drivers' error types.
pub(super) fn query_error<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> StoreError {
    move |e| StoreError::Query {
        what,
        cause: e.to_string(),
    }
}

/// Who holds a job and which attempt of it this is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The replica id of the holder.
    pub owner: String,
    /// Counts up by one each time the job is taken (created: 1).
    pub attempt: i64,
}

/// A job taken by [`JobStore::claim`].
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The record as stored.
    pub job: JobRecord,
    /// The new holder and attempt.
    pub fence: Fence,
    /// Who held it before, if anyone (a replica that died or restarted).
    pub previous_owner: Option<String>,
    /// Who asked to cancel it, if someone did (through any replica).
    pub cancel_requested_by: Option<String>,
    /// The holders whose run of it was cut off, oldest first, this claim's included: it
    /// was running when each of them stopped renewing its lease (or, on an embedded
    /// store, when the process stopped).
    pub interrupted_by: Vec<String>,
}

/// A lease [`JobStore::renew`] extended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewed {
    /// The job.
    pub id: i64,
    /// Who asked to cancel it, if someone did (through any replica).
    pub cancel_requested_by: Option<String>,
}

/// What [`JobStore::start`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotAnswer {
    /// The job holds a sync slot now: its row says running.
    Started,
    /// Every slot of the service is taken: try again when one frees.
    Full,
    /// Another attempt holds the job (it was taken over): stop it here.
    Lost,
}

/// Keeps job records.
pub trait JobStore: Send + Sync {
    /// Whether other processes may use the same store at once (PostgreSQL): then leases
    /// are renewed and lapsed ones taken over. An embedded store has one process.
    fn shared(&self) -> bool;
    /// Stores a new job held by `owner` (attempt 1, lease `lease`); returns it with its id.
    fn create(
        &self,
        job: JobRecord,
        owner: &str,
        lease: Duration,
    ) -> Result<(JobRecord, Fence), StoreError>;
    /// Overwrites the stored record with the same id if `fence` still holds it; `false`
    /// (nothing written) once another attempt took the job over.
    fn save(&self, job: &JobRecord, fence: &Fence) -> Result<bool, StoreError>;
    /// Starts job `job` (its state running) under `fence` if fewer than `max_running`
    /// other jobs of the whole store run now, counted and written atomically: the
    /// service-wide cap on syncs (`rsyncserver.max_concurrent_syncs`) across every
    /// replica of a shared store. A running row whose lease lapsed (a dead holder) does
    /// not count. An embedded store has one process, whose own semaphore is the cap: it
    /// only writes the record.
    fn start(
        &self,
        job: &JobRecord,
        fence: &Fence,
        max_running: usize,
    ) -> Result<SlotAnswer, StoreError>;
    /// Takes up to `limit` queued or running jobs that nobody holds (no owner, or a lapsed
    /// lease), oldest first, for `owner` with the next attempt and a lease `lease`; never
    /// a job `owner` holds already (its lease lapses while the database is away).
    /// `everything` also takes jobs whose lease still runs: for an embedded store after a
    /// restart, whose previous process is known to be gone.
    fn claim(
        &self,
        owner: &str,
        lease: Duration,
        limit: usize,
        everything: bool,
    ) -> Result<Vec<Claimed>, StoreError>;
    /// Extends the leases of the unfinished jobs `owner` holds as (id, attempt); returns
    /// those still held (a missing one was taken over: stop working on it), each with
    /// the cancel request it carries.
    fn renew(
        &self,
        owner: &str,
        held: &[(i64, i64)],
        lease: Duration,
    ) -> Result<Vec<Renewed>, StoreError>;
    /// Asks the holder of an unfinished job to cancel it (it reads the request at its
    /// next heartbeat); returns the job as stored, or `None` when there is no such job.
    /// A finished job is returned unchanged.
    fn request_cancel(&self, id: i64, by: &str) -> Result<Option<JobRecord>, StoreError>;
    /// Lets go of a queued job (its owner is cleared) so any replica may take it at once.
    fn release(&self, id: i64, fence: &Fence) -> Result<(), StoreError>;
    /// Claims the delivery of finished job `id`'s webhook for the holder `fence` (the
    /// outbox): `true` for the one caller that may send it, for `hold` (renewed with
    /// [`Self::renew_callback`] while it sends); `false` when it was claimed already.
    fn claim_callback(&self, id: i64, fence: &Fence, hold: Duration) -> Result<bool, StoreError>;
    /// Extends `owner`'s claim on job `id`'s webhook delivery by `hold`.
    fn renew_callback(&self, id: i64, owner: &str, hold: Duration) -> Result<(), StoreError>;
    /// Records the delivery's outcome (`job` with its `callback`) and closes the claim,
    /// if `owner` still holds it.
    fn callback_sent(&self, job: &JobRecord, owner: &str) -> Result<(), StoreError>;
    /// Claims for `owner` up to `limit` finished jobs whose webhook nobody delivers: the
    /// replica that finished it stopped before it claimed the delivery (unclaimed while
    /// its last heartbeat is older than `stale`), or its claim lapsed mid-delivery.
    /// Always empty on an embedded store (one process: no other replica to step in).
    fn orphaned_callbacks(
        &self,
        owner: &str,
        hold: Duration,
        stale: Duration,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError>;
    /// The registries' 429 pauses kept beside the jobs, for the engine of every replica
    /// to share ([`crate::engine::Engine::with_shared_pauses`]); `None` for an embedded
    /// store, whose one process keeps them in memory.
    fn shared_pauses(&self) -> Option<std::sync::Arc<dyn crate::registry::SharedPauses>> {
        None
    }
    /// Cancel requests as other replicas make them, (job id, who asked): a fast path
    /// (PostgreSQL's LISTEN/NOTIFY); the heartbeat reads every request from the rows
    /// anyway, so one lost while the listener reconnects only comes later. `None` for an
    /// embedded store (one process: a cancel is made where the job runs).
    fn cancel_notices(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<(i64, String)>> {
        None
    }
    /// Answers when the database can be reached (readiness).
    fn ping(&self) -> Result<(), StoreError>;
    /// The job with this id.
    fn get(&self, id: i64) -> Result<Option<JobRecord>, StoreError>;
    /// Jobs matching the filter, newest first.
    fn list(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError>;
    /// Queued and running jobs, oldest first: what a restart has to pick up.
    fn unfinished(&self) -> Result<Vec<JobRecord>, StoreError>;
    /// Deletes finished jobs created before `cutoff`; returns how many.
    fn prune(&self, cutoff: DateTime<Utc>) -> Result<usize, StoreError>;
}
