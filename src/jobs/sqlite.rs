//! The default job store: one embedded SQLite file. Columns hold what listings filter on;
//! the whole record is one JSON column, so new fields need no schema change.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::model::{JobFilter, JobRecord, JobState};
use super::store::{query_error, Claimed, Fence, JobStore, Renewed, SlotAnswer, StoreError};

/// Schema version written to `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 3;

/// Jobs in one SQLite database file.
pub struct SqliteStore {
    connection: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
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
        if version < 1 {
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
        }
        if version < 2 {
            // The same holder columns as the PostgreSQL schema, so one manager drives both;
            // jobs from version 1 have no owner and are taken at the next start.
            connection.execute_batch(
                "ALTER TABLE jobs ADD COLUMN owner TEXT;
                 ALTER TABLE jobs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE jobs ADD COLUMN lease_ms INTEGER;
                 ALTER TABLE jobs ADD COLUMN cancel_requested_by TEXT;",
            )?;
        }
        if version < 3 {
            // As in PostgreSQL: the holders whose run was cut off (a JSON array here).
            connection.execute_batch(
                "ALTER TABLE jobs ADD COLUMN interrupted_by TEXT NOT NULL DEFAULT '[]';",
            )?;
        }
        if version < SCHEMA_VERSION {
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
    let mut job: JobRecord = serde_json::from_str(text).map_err(query_error("read a job"))?;
    job.id = id;
    Ok(job)
}

/// The end of a lease starting now, in Unix milliseconds.
fn lease_end(lease: Duration) -> i64 {
    let lease = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
    Utc::now().timestamp_millis().saturating_add(lease)
}

impl JobStore for SqliteStore {
    fn shared(&self) -> bool {
        false
    }

    fn create(
        &self,
        mut job: JobRecord,
        owner: &str,
        lease: Duration,
    ) -> Result<(JobRecord, Fence), StoreError> {
        let text = serde_json::to_string(&job).map_err(query_error("write a job"))?;
        let db = self.connection();
        db.execute(
            "INSERT INTO jobs (user, state, created_ms, record, owner, attempt, lease_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6)",
            params![
                job.user,
                job.state.as_str(),
                job.created_at.timestamp_millis(),
                text,
                owner,
                lease_end(lease),
            ],
        )
        .map_err(query_error("create a job"))?;
        job.id = db.last_insert_rowid();
        let fence = Fence {
            owner: owner.to_owned(),
            attempt: 1,
        };
        Ok((job, fence))
    }

    fn save(&self, job: &JobRecord, fence: &Fence) -> Result<bool, StoreError> {
        let text = serde_json::to_string(job).map_err(query_error("write a job"))?;
        let changed = self
            .connection()
            .execute(
                "UPDATE jobs SET state = ?2, record = ?3,
                        lease_ms = CASE WHEN ?2 IN ('queued', 'running') THEN lease_ms END
                 WHERE id = ?1 AND owner = ?4 AND attempt = ?5",
                params![job.id, job.state.as_str(), text, fence.owner, fence.attempt],
            )
            .map_err(query_error("update a job"))?;
        Ok(changed == 1)
    }

    fn start(
        &self,
        job: &JobRecord,
        fence: &Fence,
        _max_running: usize,
    ) -> Result<SlotAnswer, StoreError> {
        Ok(if self.save(job, fence)? {
            SlotAnswer::Started
        } else {
            SlotAnswer::Lost
        })
    }

    fn claim_callback(
        &self,
        _id: i64,
        _fence: &Fence,
        _hold: Duration,
    ) -> Result<bool, StoreError> {
        // One process, and the manager delivers each job's webhook once.
        Ok(true)
    }

    fn renew_callback(&self, _id: i64, _owner: &str, _hold: Duration) -> Result<(), StoreError> {
        Ok(())
    }

    fn callback_sent(&self, job: &JobRecord, owner: &str) -> Result<(), StoreError> {
        let text = serde_json::to_string(job).map_err(query_error("write a job"))?;
        self.connection()
            .execute(
                "UPDATE jobs SET record = ?2 WHERE id = ?1 AND owner = ?3",
                params![job.id, text, owner],
            )
            .map_err(query_error("record a webhook delivery"))?;
        Ok(())
    }

    fn orphaned_callbacks(
        &self,
        _owner: &str,
        _hold: Duration,
        _stale: Duration,
        _limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        Ok(Vec::new())
    }

    fn claim(
        &self,
        owner: &str,
        lease: Duration,
        limit: usize,
        everything: bool,
    ) -> Result<Vec<Claimed>, StoreError> {
        let mut db = self.connection();
        // One writer: selecting then updating in one transaction cannot race.
        let tx = db.transaction().map_err(query_error("claim jobs"))?;
        let picked = {
            let mut statement = tx
                .prepare(
                    "SELECT id, record, owner, attempt, cancel_requested_by, state,
                            interrupted_by FROM jobs
                     WHERE state IN ('queued', 'running')
                       AND owner IS NOT ?4
                       AND (?1 OR owner IS NULL OR lease_ms IS NULL OR lease_ms < ?2)
                     ORDER BY id LIMIT ?3",
                )
                .map_err(query_error("claim jobs"))?;
            let rows = statement
                .query_map(
                    params![
                        everything,
                        Utc::now().timestamp_millis(),
                        i64::try_from(limit).unwrap_or(i64::MAX),
                        owner
                    ],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Option<String>>(2)?,
                            r.get::<_, i64>(3)?,
                            r.get::<_, Option<String>>(4)?,
                            r.get::<_, String>(5)?,
                            r.get::<_, String>(6)?,
                        ))
                    },
                )
                .map_err(query_error("claim jobs"))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(query_error("claim jobs"))?
        };
        let mut claimed = Vec::with_capacity(picked.len());
        for (id, text, previous_owner, attempt, cancel_requested_by, state, interrupted) in picked {
            let mut interrupted_by: Vec<String> =
                serde_json::from_str(&interrupted).map_err(query_error("claim jobs"))?;
            // Running when its holder (the previous process) stopped: its run was cut off.
            if state == JobState::Running.as_str() {
                interrupted_by.push(previous_owner.clone().unwrap_or_default());
            }
            let interrupted =
                serde_json::to_string(&interrupted_by).map_err(query_error("claim jobs"))?;
            tx.execute(
                "UPDATE jobs SET owner = ?2, attempt = ?3, lease_ms = ?4, interrupted_by = ?5
                 WHERE id = ?1",
                params![id, owner, attempt + 1, lease_end(lease), interrupted],
            )
            .map_err(query_error("claim jobs"))?;
            claimed.push(Claimed {
                job: decode(id, &text)?,
                fence: Fence {
                    owner: owner.to_owned(),
                    attempt: attempt + 1,
                },
                previous_owner,
                cancel_requested_by,
                interrupted_by,
            });
        }
        tx.commit().map_err(query_error("claim jobs"))?;
        Ok(claimed)
    }

    fn renew(
        &self,
        owner: &str,
        held: &[(i64, i64)],
        lease: Duration,
    ) -> Result<Vec<Renewed>, StoreError> {
        let db = self.connection();
        let mut kept = Vec::with_capacity(held.len());
        for &(id, attempt) in held {
            let renewed = db
                .query_row(
                    "UPDATE jobs SET lease_ms = ?4
                     WHERE id = ?1 AND owner = ?2 AND attempt = ?3
                       AND state IN ('queued', 'running')
                     RETURNING cancel_requested_by",
                    params![id, owner, attempt, lease_end(lease)],
                    |r| r.get::<_, Option<String>>(0),
                )
                .optional()
                .map_err(query_error("renew job leases"))?;
            if let Some(cancel_requested_by) = renewed {
                kept.push(Renewed {
                    id,
                    cancel_requested_by,
                });
            }
        }
        Ok(kept)
    }

    fn request_cancel(&self, id: i64, by: &str) -> Result<Option<JobRecord>, StoreError> {
        let db = self.connection();
        db.execute(
            "UPDATE jobs SET cancel_requested_by = COALESCE(cancel_requested_by, ?2)
             WHERE id = ?1 AND state IN ('queued', 'running')",
            params![id, by],
        )
        .map_err(query_error("cancel a job"))?;
        let text: Option<String> = db
            .query_row("SELECT record FROM jobs WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(query_error("cancel a job"))?;
        text.map(|t| decode(id, &t)).transpose()
    }

    fn release(&self, id: i64, fence: &Fence) -> Result<(), StoreError> {
        self.connection()
            .execute(
                "UPDATE jobs SET owner = NULL, lease_ms = NULL
                 WHERE id = ?1 AND owner = ?2 AND attempt = ?3 AND state = 'queued'",
                params![id, fence.owner, fence.attempt],
            )
            .map_err(query_error("release a job"))?;
        Ok(())
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.connection()
            .query_row("SELECT 1", [], |_| Ok(()))
            .map_err(query_error("check the database"))
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
            let lease = Duration::from_secs(30);
            let (a, fa) = store.create(job("alice", old), "r1", lease).unwrap();
            let (mut b, fb) = store.create(job("bob", now), "r1", lease).unwrap();
            let (c, _) = store.create(job("alice", now), "r1", lease).unwrap();
            assert!(a.id < b.id && b.id < c.id);
            b.state = JobState::Running;
            assert!(store.save(&b, &fb).unwrap());
            let mut a = a;
            a.state = JobState::Succeeded;
            assert!(store.save(&a, &fa).unwrap());
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
