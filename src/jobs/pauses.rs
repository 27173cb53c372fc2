//! The registries' 429 pauses shared by the replicas of one PostgreSQL job database: a
//! row per registry host whose end is computed by the database's clock. The registry
//! layer reads and writes them through [`SharedPauses`], which it defines.

use std::time::Duration;

use sqlx::postgres::PgPool;

use crate::registry::{PauseFuture, SharedPauses};

/// The `registry_pauses` table.
#[derive(Clone)]
pub struct PgPauses {
    pool: PgPool,
}

impl PgPauses {
    /// The pauses in the database `pool` connects to (migrated by the job store).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

impl SharedPauses for PgPauses {
    fn pause<'a>(&'a self, registry: &'a str, pause: Duration) -> PauseFuture<'a, ()> {
        Box::pin(async move {
            // The later end wins: a shorter pause learnt meanwhile does not cut one short.
            let written = sqlx::query(
                "INSERT INTO registry_pauses (registry, paused_until)
                 VALUES ($1, now() + make_interval(secs => $2))
                 ON CONFLICT (registry) DO UPDATE
                 SET paused_until = GREATEST(registry_pauses.paused_until,
                                             EXCLUDED.paused_until)",
            )
            .bind(registry)
            .bind(pause.as_secs_f64())
            .execute(&self.pool)
            .await;
            if let Err(e) = written {
                tracing::warn!(registry, error = %e, "cannot share a registry's 429 pause with the other replicas");
            }
        })
    }

    fn remaining<'a>(&'a self, registry: &'a str) -> PauseFuture<'a, Option<Duration>> {
        Box::pin(async move {
            let left: Result<Option<f64>, sqlx::Error> = sqlx::query_scalar(
                "SELECT extract(epoch FROM paused_until - now())::float8 FROM registry_pauses
                 WHERE registry = $1 AND paused_until > now()",
            )
            .bind(registry)
            .fetch_optional(&self.pool)
            .await;
            match left {
                Ok(left) => left.and_then(|s| Duration::try_from_secs_f64(s).ok()),
                Err(e) => {
                    tracing::debug!(registry, error = %e, "cannot read a registry's shared 429 pause");
                    None
                }
            }
        })
    }
}
