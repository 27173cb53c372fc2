//! The default job store: one embedded SQLite file. Columns hold what listings filter on;
//! the whole record is one JSON column, so new fields need no schema change.

use std::path::Path;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::model::{JobFilter, JobRecord, JobState};
use super::store::{JobStore, StoreError};

/// Schema version written to `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

/// Jobs in one SQLite database file.
pub struct SqliteStore {
    connection: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn query_error(what: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::Query {
        what,
        cause: e.to_string(),
    }
}

fn json_error(what: &'static str) -> impl Fn(serde_json::Error) -> StoreError {
    move |e| StoreError::Query {
        what,
        cause: e.to_string(),
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `path` and its folder.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_error = |cause: String| StoreError::Open {
            path: path.display().to_string(),
            cause,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| open_error(e.to_string()))?;
        }
        let connection = Connection::open(path).map_err(|e| open_error(e.to_string()))?;
        Self::init(connection).map_err(|e| open_error(e.to_string()))
    }

    /// A database that lives only as long as the process (tests, `:memory:`).
    pub fn in_memory() -> Result<Self, StoreError> {
        let connection = Connection::open_in_memory().map_err(query_error("open"))?;
        Self::init(connection).map_err(query_error("create the schema"))
    }

    fn init(connection: Connection) -> Result<Self, rusqlite::Error> {
        // WAL: readers (listings, the dashboard) never wait for the writer; NORMAL sync is
        // durable across a process crash, which is what a restart needs.
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = connection.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version < SCHEMA_VERSION {
            connection.execute_batch(
                "CREATE TABLE IF NOT EXISTS jobs (
                     id INTEGER PRIMARY KEY AUTOINCREMENT,
                     user TEXT NOT NULL,
                     state TEXT NOT NULL,
                     created_ms INTEGER NOT NULL,
                     record TEXT NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, id);
                 CREATE INDEX IF NOT EXISTS jobs_by_user ON jobs(user, id);",
            )?;
            connection.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        Ok(Self {
            connection: Mutex::new(connection),
        })
    }

    fn connection(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (each statement is atomic).
        self.connection.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn decode(id: i64, text: &str) -> Result<JobRecord, StoreError> {
    let mut job: JobRecord = serde_json::from_str(text).map_err(json_error("read a job"))?;
    job.id = id;
    Ok(job)
}

impl JobStore for SqliteStore {
    fn create(&self, mut job: JobRecord) -> Result<JobRecord, StoreError> {
        let text = serde_json::to_string(&job).map_err(json_error("write a job"))?;
        let db = self.connection();
        db.execute(
            "INSERT INTO jobs (user, state, created_ms, record) VALUES (?1, ?2, ?3, ?4)",
            params![
                job.user,
                job.state.as_str(),
                job.created_at.timestamp_millis(),
                text
            ],
        )
        .map_err(query_error("create a job"))?;
        job.id = db.last_insert_rowid();
        Ok(job)
    }

    fn save(&self, job: &JobRecord) -> Result<(), StoreError> {
        let text = serde_json::to_string(job).map_err(json_error("write a job"))?;
        self.connection()
            .execute(
                "UPDATE jobs SET state = ?2, record = ?3 WHERE id = ?1",
                params![job.id, job.state.as_str(), text],
            )
            .map_err(query_error("update a job"))?;
        Ok(())
    }

    fn get(&self, id: i64) -> Result<Option<JobRecord>, StoreError> {
        let text: Option<String> = self
            .connection()
            .query_row("SELECT record FROM jobs WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(query_error("read a job"))?;
        text.map(|t| decode(id, &t)).transpose()
    }

    fn list(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        let db = self.connection();
        let mut statement = db
            .prepare_cached(
                "SELECT id, record FROM jobs
                 WHERE (?1 IS NULL OR user = ?1)
                   AND (?2 IS NULL OR state = ?2)
                   AND (?3 IS NULL OR created_ms >= ?3)
                   AND (?4 IS NULL OR id < ?4)
                 ORDER BY id DESC LIMIT ?5",
            )
            .map_err(query_error("list jobs"))?;
        let rows = statement
            .query_map(
                params![
                    filter.user,
                    filter.state.map(JobState::as_str),
                    filter.since.map(|t| t.timestamp_millis()),
                    filter.before_id,
                    i64::try_from(filter.limit).unwrap_or(i64::MAX),
                ],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .map_err(query_error("list jobs"))?;
        rows.map(|row| {
            let (id, text) = row.map_err(query_error("list jobs"))?;
            decode(id, &text)
        })
        .collect()
    }

    fn unfinished(&self) -> Result<Vec<JobRecord>, StoreError> {
        let db = self.connection();
        let mut statement = db
            .prepare("SELECT id, record FROM jobs WHERE state IN ('queued', 'running') ORDER BY id")
            .map_err(query_error("list unfinished jobs"))?;
        let rows = statement
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map_err(query_error("list unfinished jobs"))?;
        rows.map(|row| {
            let (id, text) = row.map_err(query_error("list unfinished jobs"))?;
            decode(id, &text)
        })
        .collect()
    }

    fn prune(&self, cutoff: DateTime<Utc>) -> Result<usize, StoreError> {
        self.connection()
            .execute(
                "DELETE FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled')
                   AND created_ms < ?1",
                [cutoff.timestamp_millis()],
            )
            .map_err(query_error("delete old jobs"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::SyncRequest;
    use crate::jobs::model::NewJob;

    fn job(user: &str, at: DateTime<Utc>) -> JobRecord {
        NewJob {
            user: user.into(),
            trigger: crate::jobs::model::Trigger::Request,
            request: SyncRequest {
                source: "r/a:v1".into(),
                targets: vec!["r/b:v1".into()],
                ..SyncRequest::default()
            },
            rsync_config: serde_json::json!({"source": "r/a:v1", "target": "r/b:v1"}),
            asynchronous: true,
            callback_url: None,
            max_wait: None,
        }
        .into_record(at)
    }

    #[test]
    fn keeps_lists_filters_and_prunes_jobs_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("jobs.sqlite3");
        let now = Utc::now();
        let old = now - chrono::Duration::days(40);
        {
            let store = SqliteStore::open(&path).unwrap();
            let a = store.create(job("alice", old)).unwrap();
            let mut b = store.create(job("bob", now)).unwrap();
            let c = store.create(job("alice", now)).unwrap();
            assert!(a.id < b.id && b.id < c.id);
            b.state = JobState::Running;
            store.save(&b).unwrap();
            let mut a = a;
            a.state = JobState::Succeeded;
            store.save(&a).unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let all = store
            .list(&JobFilter {
                limit: 10,
                ..JobFilter::default()
            })
            .unwrap();
        assert_eq!(all.len(), 3);
        assert!(all[0].id > all[1].id, "newest first");
        let alice = store
            .list(&JobFilter {
                user: Some("alice".into()),
                limit: 10,
                ..JobFilter::default()
            })
            .unwrap();
        assert_eq!(alice.len(), 2);
        let page = store
            .list(&JobFilter {
                before_id: Some(all[0].id),
                limit: 1,
                ..JobFilter::default()
            })
            .unwrap();
        assert_eq!(page[0].id, all[1].id);
        let running = store
            .list(&JobFilter {
                state: Some(JobState::Running),
                since: Some(now - chrono::Duration::seconds(5)),
                limit: 10,
                ..JobFilter::default()
            })
            .unwrap();
        assert_eq!(running.len(), 1);
        assert_eq!(running[0].user, "bob");
        let unfinished: Vec<_> = store.unfinished().unwrap().iter().map(|j| j.id).collect();
        assert_eq!(unfinished.len(), 2, "queued and running");
        assert_eq!(store.prune(now - chrono::Duration::days(30)).unwrap(), 1);
        assert!(store.get(all[2].id).unwrap().is_none());
        assert_eq!(store.get(all[0].id).unwrap().unwrap().user, "alice");
    }

    #[test]
    fn a_folder_that_cannot_be_created_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let err = SqliteStore::open(&file.join("jobs.sqlite3")).unwrap_err();
        assert!(
            err.to_string().contains("rsyncserver.jobs.database"),
            "{err}"
        );
    }
}
