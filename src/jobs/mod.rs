//! Jobs: every sync request becomes a job with an id, kept from request to end in a
//! store (SQLite by default), so that a caller can leave and come back, watch progress,
//! cancel, and find the history after a restart.
//!
//! One job per module: [`model`] says what a job is, [`store`] is the storage interface
//! with [`sqlite`] (the default) and [`postgres`] (shared by replicas) implementing it, [`live`] holds an unfinished job's progress
//! and cancel switch, [`manager`] runs jobs, [`webhook`] delivers completion callbacks,
//! [`tracker`] counts running syncs for shutdown, [`pauses`] shares registries' 429
//! pauses between replicas on PostgreSQL. Nothing here knows HTTP.

pub mod live;
pub mod manager;
pub mod model;
pub mod pauses;
pub mod postgres;
pub mod sqlite;
pub mod store;
pub mod tracker;
pub mod webhook;

pub use manager::{
    CancelError, Hold, JobEnd, JobHooks, JobLimits, JobManager, JobResult, SubmitError, Submitted,
};
pub use model::{JobFilter, JobProgress, JobRecord, JobState, NewJob, Trigger};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use store::{Claimed, Fence, JobStore, Renewed, SlotAnswer, StoreError};
