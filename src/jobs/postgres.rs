//! The shared job store: one PostgreSQL database used by every replica at once.
//!
//! Same record-as-JSON layout as [`super::sqlite`], plus the holder columns that let
//! replicas share the queue safely: jobs are taken with `FOR UPDATE SKIP LOCKED` (two
//! replicas never take the same row), each holder keeps a lease renewed by its heartbeat,
//! and every write is fenced by (owner, attempt). All times are the database's `now()`,
//! so the replicas' clocks do not matter.
//!
//! sqlx is async and [`JobStore`] is called from blocking threads (`spawn_blocking`): each
//! call drives its query on the runtime it was opened on. Never call it from async code.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Row;

use super::model::{JobFilter, JobRecord, JobState};
use super::store::{query_error, Claimed, Fence, JobStore, Renewed, SlotAnswer, StoreError};

/// Connections per replica; the budget is replicas × this ≤ PostgreSQL's `max_connections`.
const POOL_SIZE: u32 = 8;
/// How long a call waits for a free or new connection before it fails (readiness, and
/// an error rather than a hang while the database is down).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The channel cancel requests are announced on (payload `{"id": …, "by": …}`).
const CANCEL_CHANNEL: &str = "imagersync_cancel";
/// Wait before a listener that failed connects again.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// The transaction-level advisory lock under which a replica counts the running jobs and
/// starts one ("imagslot"): two replicas never both see the last free slot.
const SLOT_LOCK: i64 = 0x696d_6167_736c_6f74;

/// Jobs in a PostgreSQL database.
pub struct PostgresStore {
    pool: PgPool,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

fn decode(id: i64, text: &str) -> Result<JobRecord, StoreError> {
    let mut job: JobRecord = serde_json::from_str(text).map_err(query_error("read a job"))?;
    job.id = id;
    Ok(job)
}

fn seconds(lease: Duration) -> f64 {
    lease.as_secs_f64()
}

impl PostgresStore {
    /// Connects to `url` (a `postgres://` URL; `shown` is its form without the password,
    /// for messages) and brings the schema up to date. Migrations run under PostgreSQL's
    /// advisory lock (sqlx's migrator takes it), so replicas starting together migrate once.
    pub async fn connect(url: &str, shown: &str) -> Result<Self, StoreError> {
        let connect_error = |cause: String| StoreError::Connect {
            url: shown.to_owned(),
            cause,
        };
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| connect_error(format!("not a usable URL: {e}")))?
            .application_name("imagersync");
        // A connection the database dropped (a restart) is found dead by the ping before
        // it is handed out, and replaced by a new one once the database answers again.
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(true)
            .connect_with(options)
            .await
            .map_err(|e| connect_error(format!("cannot connect: {e}")))?;
        sqlx::migrate!("migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| connect_error(format!("cannot update the schema: {e}")))?;
        Ok(Self {
            pool,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    fn run<T>(&self, call: impl std::future::Future<Output = T>) -> T {
        self.runtime.block_on(call)
    }

    fn records(
        rows: Vec<sqlx::postgres::PgRow>,
        what: &'static str,
    ) -> Result<Vec<JobRecord>, StoreError> {
        rows.iter()
            .map(|row| {
                let id: i64 = row.try_get(0).map_err(query_error(what))?;
                let text: String = row.try_get(1).map_err(query_error(what))?;
                decode(id, &text)
            })
            .collect()
    }
}

impl JobStore for PostgresStore {
    fn shared(&self) -> bool {
        true
    }

    fn create(
        &self,
        mut job: JobRecord,
        owner: &str,
        lease: Duration,
    ) -> Result<(JobRecord, Fence), StoreError> {
        let text = serde_json::to_string(&job).map_err(query_error("write a job"))?;
        let id: i64 = self
            .run(
                sqlx::query_scalar(
                    "INSERT INTO jobs (\"user\", state, created_at, record, owner, attempt,
                                       heartbeat_at, lease_expires_at)
                     VALUES ($1, $2, $3, $4::jsonb, $5, 1, now(), now() + make_interval(secs => $6))
                     RETURNING id",
                )
                .bind(&job.user)
                .bind(job.state.as_str())
                .bind(job.created_at)
                .bind(text)
                .bind(owner)
                .bind(seconds(lease))
                .fetch_one(&self.pool),
            )
            .map_err(query_error("create a job"))?;
        job.id = id;
        let fence = Fence {
            owner: owner.to_owned(),
            attempt: 1,
        };
        Ok((job, fence))
    }

    fn save(&self, job: &JobRecord, fence: &Fence) -> Result<bool, StoreError> {
        let text = serde_json::to_string(job).map_err(query_error("write a job"))?;
        let done = self
            .run(
                sqlx::query(
                    "UPDATE jobs SET state = $2, record = $3::jsonb,
                            lease_expires_at = CASE WHEN $2 IN ('queued', 'running')
                                                    THEN lease_expires_at END
                     WHERE id = $1 AND owner = $4 AND attempt = $5",
                )
                .bind(job.id)
                .bind(job.state.as_str())
                .bind(text)
                .bind(&fence.owner)
                .bind(fence.attempt)
                .execute(&self.pool),
            )
            .map_err(query_error("update a job"))?;
        Ok(done.rows_affected() == 1)
    }

    fn start(
        &self,
        job: &JobRecord,
        fence: &Fence,
        max_running: usize,
    ) -> Result<SlotAnswer, StoreError> {
        let text = serde_json::to_string(job).map_err(query_error("write a job"))?;
        let max_running = i64::try_from(max_running).unwrap_or(i64::MAX);
        self.run(async {
            let mut tx = self.pool.begin().await?;
            // Held until commit: the count below and the write after it are one step for
            // every replica (the count's snapshot is taken after the lock is granted, so
            // it sees the starts committed before).
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(SLOT_LOCK)
                .execute(&mut *tx)
                .await?;
            let running: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs
                 WHERE state = 'running' AND id <> $1 AND lease_expires_at > now()",
            )
            .bind(job.id)
            .fetch_one(&mut *tx)
            .await?;
            if running >= max_running {
                tx.rollback().await?;
                return Ok(SlotAnswer::Full);
            }
            let done = sqlx::query(
                "UPDATE jobs SET state = 'running', record = $2::jsonb
                 WHERE id = $1 AND owner = $3 AND attempt = $4
                   AND state IN ('queued', 'running')",
            )
            .bind(job.id)
            .bind(text)
            .bind(&fence.owner)
            .bind(fence.attempt)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(if done.rows_affected() == 1 {
                SlotAnswer::Started
            } else {
                SlotAnswer::Lost
            })
        })
        .map_err(query_error("take a sync slot"))
    }

    fn claim(
        &self,
        owner: &str,
        lease: Duration,
        limit: usize,
        everything: bool,
    ) -> Result<Vec<Claimed>, StoreError> {
        // The CTE picks and locks the rows (skipping rows another replica is claiming at
        // this moment); the UPDATE then takes exactly those. `was` is the previous owner.
        let rows = self
            .run(
                sqlx::query(
                    "WITH picked AS (
                         SELECT id, owner AS was FROM jobs
                         WHERE state IN ('queued', 'running')
                           AND owner IS DISTINCT FROM $1
                           AND ($4 OR owner IS NULL OR lease_expires_at IS NULL
                                OR lease_expires_at < now())
                         ORDER BY id LIMIT $3
                         FOR UPDATE SKIP LOCKED)
                     UPDATE jobs j SET owner = $1, attempt = j.attempt + 1, heartbeat_at = now(),
                            lease_expires_at = now() + make_interval(secs => $2),
                            -- A running row whose lease lapsed: its holder's run was cut off.
                            interrupted_by = CASE WHEN j.state = 'running'
                                THEN array_append(j.interrupted_by, COALESCE(picked.was, ''))
                                ELSE j.interrupted_by END
                     FROM picked WHERE j.id = picked.id
                     RETURNING j.id, j.record::text, j.attempt, picked.was, j.cancel_requested_by,
                               j.interrupted_by",
                )
                .bind(owner)
                .bind(seconds(lease))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .bind(everything)
                .fetch_all(&self.pool),
            )
            .map_err(query_error("claim jobs"))?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            let get_error = query_error("claim jobs");
            let id: i64 = row.try_get(0).map_err(&get_error)?;
            let text: String = row.try_get(1).map_err(&get_error)?;
            let attempt: i64 = row.try_get(2).map_err(&get_error)?;
            let previous_owner: Option<String> = row.try_get(3).map_err(&get_error)?;
            let cancel_requested_by: Option<String> = row.try_get(4).map_err(&get_error)?;
            let interrupted_by: Vec<String> = row.try_get(5).map_err(&get_error)?;
            claimed.push(Claimed {
                job: decode(id, &text)?,
                fence: Fence {
                    owner: owner.to_owned(),
                    attempt,
                },
                previous_owner,
                cancel_requested_by,
                interrupted_by,
            });
        }
        claimed.sort_by_key(|c| c.job.id);
        Ok(claimed)
    }

    fn renew(
        &self,
        owner: &str,
        held: &[(i64, i64)],
        lease: Duration,
    ) -> Result<Vec<Renewed>, StoreError> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, attempts): (Vec<i64>, Vec<i64>) = held.iter().copied().unzip();
        // One statement for every job this replica holds.
        let rows: Vec<(i64, Option<String>)> = self
            .run(
                sqlx::query_as(
                    "UPDATE jobs SET heartbeat_at = now(),
                            lease_expires_at = now() + make_interval(secs => $2)
                     WHERE owner = $1 AND state IN ('queued', 'running')
                       AND (id, attempt) IN (SELECT * FROM unnest($3::int8[], $4::int8[]))
                     RETURNING id, cancel_requested_by",
                )
                .bind(owner)
                .bind(seconds(lease))
                .bind(ids)
                .bind(attempts)
                .fetch_all(&self.pool),
            )
            .map_err(query_error("renew job leases"))?;
        Ok(rows
            .into_iter()
            .map(|(id, cancel_requested_by)| Renewed {
                id,
                cancel_requested_by,
            })
            .collect())
    }

    fn request_cancel(&self, id: i64, by: &str) -> Result<Option<JobRecord>, StoreError> {
        let text: Option<String> = self
            .run(
                sqlx::query_scalar(
                    "WITH asked AS (
                         UPDATE jobs SET cancel_requested_by = COALESCE(cancel_requested_by, $2)
                         WHERE id = $1 AND state IN ('queued', 'running'))
                     SELECT record::text FROM jobs WHERE id = $1",
                )
                .bind(id)
                .bind(by)
                .fetch_optional(&self.pool),
            )
            .map_err(query_error("cancel a job"))?;
        let job = text.map(|t| decode(id, &t)).transpose()?;
        if job.as_ref().is_some_and(|j| !j.state.is_final()) {
            // After the request is committed: the holder wakes now rather than at its
            // next heartbeat. A lost notification only costs that wait.
            let payload = serde_json::json!({"id": id, "by": by}).to_string();
            if let Err(e) = self.run(
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CANCEL_CHANNEL)
                    .bind(payload)
                    .execute(&self.pool),
            ) {
                tracing::warn!(job = id, error = %e, "cannot announce a cancel request; the holder reads it at its next heartbeat");
            }
        }
        Ok(job)
    }

    fn cancel_notices(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<(i64, String)>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let pool = self.pool.clone();
        // One connection of the pool stays with the listener for the process's life.
        self.runtime.spawn(async move {
            loop {
                let listener = async {
                    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
                    listener.listen(CANCEL_CHANNEL).await?;
                    Ok::<_, sqlx::Error>(listener)
                };
                let mut listener = match listener.await {
                    Ok(listener) => listener,
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot listen for cancel requests; trying again");
                        tokio::time::sleep(LISTEN_RETRY).await;
                        continue;
                    }
                };
                loop {
                    match listener.try_recv().await {
                        Ok(Some(notice)) => {
                            let payload: serde_json::Value =
                                serde_json::from_str(notice.payload()).unwrap_or_default();
                            let (Some(id), Some(by)) =
                                (payload["id"].as_i64(), payload["by"].as_str())
                            else {
                                continue;
                            };
                            if tx.send((id, by.to_owned())).is_err() {
                                return;
                            }
                        }
                        // The connection dropped: it connects again at the next call
                        // (notifications meanwhile are lost; the heartbeat covers them).
                        Ok(None) => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "listening for cancel requests failed; connecting again");
                            tokio::time::sleep(LISTEN_RETRY).await;
                            break;
                        }
                    }
                }
            }
        });
        Some(rx)
    }

    fn release(&self, id: i64, fence: &Fence) -> Result<(), StoreError> {
        self.run(
            sqlx::query(
                "UPDATE jobs SET owner = NULL, lease_expires_at = NULL
                 WHERE id = $1 AND owner = $2 AND attempt = $3 AND state = 'queued'",
            )
            .bind(id)
            .bind(&fence.owner)
            .bind(fence.attempt)
            .execute(&self.pool),
        )
        .map_err(query_error("release a job"))?;
        Ok(())
    }

    fn claim_callback(&self, id: i64, fence: &Fence, hold: Duration) -> Result<bool, StoreError> {
        // Fenced: only the attempt that wrote the end claims it, and only once.
        let done = self
            .run(
                sqlx::query(
                    "UPDATE jobs SET callback_by = $2,
                            callback_until = now() + make_interval(secs => $4)
                     WHERE id = $1 AND owner = $2 AND attempt = $3
                       AND state IN ('succeeded', 'failed', 'cancelled')
                       AND callback_by IS NULL AND NOT callback_done",
                )
                .bind(id)
                .bind(&fence.owner)
                .bind(fence.attempt)
                .bind(seconds(hold))
                .execute(&self.pool),
            )
            .map_err(query_error("claim a webhook delivery"))?;
        Ok(done.rows_affected() == 1)
    }

    fn renew_callback(&self, id: i64, owner: &str, hold: Duration) -> Result<(), StoreError> {
        self.run(
            sqlx::query(
                "UPDATE jobs SET callback_until = now() + make_interval(secs => $3)
                 WHERE id = $1 AND callback_by = $2 AND NOT callback_done",
            )
            .bind(id)
            .bind(owner)
            .bind(seconds(hold))
            .execute(&self.pool),
        )
        .map_err(query_error("renew a webhook delivery"))?;
        Ok(())
    }

    fn callback_sent(&self, job: &JobRecord, owner: &str) -> Result<(), StoreError> {
        let text = serde_json::to_string(job).map_err(query_error("write a job"))?;
        self.run(
            sqlx::query(
                "UPDATE jobs SET record = $2::jsonb, callback_done = true, callback_until = NULL
                 WHERE id = $1 AND callback_by = $3",
            )
            .bind(job.id)
            .bind(text)
            .bind(owner)
            .execute(&self.pool),
        )
        .map_err(query_error("record a webhook delivery"))?;
        Ok(())
    }

    fn orphaned_callbacks(
        &self,
        owner: &str,
        hold: Duration,
        stale: Duration,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let rows = self
            .run(
                sqlx::query(
                    "WITH due AS (
                         SELECT id FROM jobs
                         WHERE state IN ('succeeded', 'failed', 'cancelled')
                           AND NOT callback_done AND record->>'callback_url' IS NOT NULL
                           AND ((callback_by IS NULL
                                 AND heartbeat_at < now() - make_interval(secs => $3))
                                OR callback_until < now())
                         ORDER BY id LIMIT $4
                         FOR UPDATE SKIP LOCKED)
                     UPDATE jobs j SET callback_by = $1,
                            callback_until = now() + make_interval(secs => $2)
                     FROM due WHERE j.id = due.id
                     RETURNING j.id, j.record::text",
                )
                .bind(owner)
                .bind(seconds(hold))
                .bind(seconds(stale))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool),
            )
            .map_err(query_error("claim orphaned webhook deliveries"))?;
        Self::records(rows, "claim orphaned webhook deliveries")
    }

    fn shared_pauses(&self) -> Option<std::sync::Arc<dyn crate::registry::SharedPauses>> {
        Some(std::sync::Arc::new(super::pauses::PgPauses::new(
            self.pool.clone(),
        )))
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.run(sqlx::query("SELECT 1").execute(&self.pool))
            .map_err(query_error("check the database"))?;
        Ok(())
    }

    fn get(&self, id: i64) -> Result<Option<JobRecord>, StoreError> {
        let text: Option<String> = self
            .run(
                sqlx::query_scalar("SELECT record::text FROM jobs WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool),
            )
            .map_err(query_error("read a job"))?;
        text.map(|t| decode(id, &t)).transpose()
    }

    fn list(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        let rows = self
            .run(
                sqlx::query(
                    "SELECT id, record::text FROM jobs
                     WHERE ($1::text IS NULL OR \"user\" = $1)
                       AND ($2::text IS NULL OR state = $2)
                       AND ($3::timestamptz IS NULL OR created_at >= $3)
                       AND ($4::int8 IS NULL OR id < $4)
                     ORDER BY id DESC LIMIT $5",
                )
                .bind(filter.user.as_deref())
                .bind(filter.state.map(JobState::as_str))
                .bind(filter.since)
                .bind(filter.before_id)
                .bind(i64::try_from(filter.limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool),
            )
            .map_err(query_error("list jobs"))?;
        Self::records(rows, "list jobs")
    }

    fn unfinished(&self) -> Result<Vec<JobRecord>, StoreError> {
        let rows = self
            .run(
                sqlx::query(
                    "SELECT id, record::text FROM jobs
                     WHERE state IN ('queued', 'running') ORDER BY id",
                )
                .fetch_all(&self.pool),
            )
            .map_err(query_error("list unfinished jobs"))?;
        Self::records(rows, "list unfinished jobs")
    }

    fn prune(&self, cutoff: DateTime<Utc>) -> Result<usize, StoreError> {
        let done = self
            .run(
                sqlx::query(
                    "DELETE FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled')
                       AND created_at < $1",
                )
                .bind(cutoff)
                .execute(&self.pool),
            )
            .map_err(query_error("delete old jobs"))?;
        Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
    }
}
