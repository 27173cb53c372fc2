//! Where jobs are kept: one small interface, so that a shared database can serve several
//! replicas later without touching the manager. Calls block; the manager runs them off
//! the async workers.

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
    /// A read or write failed.
    #[error("job database: {what}: {cause}")]
    Query {
        /// What the store was doing.
        what: &'static str,
        /// Why.
        cause: String,
    },
}

/// Keeps job records.
pub trait JobStore: Send + Sync {
    /// Stores a new job and returns it with its id.
    fn create(&self, job: JobRecord) -> Result<JobRecord, StoreError>;
    /// Overwrites the stored record with the same id.
    fn save(&self, job: &JobRecord) -> Result<(), StoreError>;
    /// The job with this id.
    fn get(&self, id: i64) -> Result<Option<JobRecord>, StoreError>;
    /// Jobs matching the filter, newest first.
    fn list(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError>;
    /// Queued and running jobs, oldest first: what a restart has to pick up.
    fn unfinished(&self) -> Result<Vec<JobRecord>, StoreError>;
    /// Deletes finished jobs created before `cutoff`; returns how many.
    fn prune(&self, cutoff: DateTime<Utc>) -> Result<usize, StoreError>;
}
