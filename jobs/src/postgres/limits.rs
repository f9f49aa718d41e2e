//! Global concurrency limits per queue: a cache of the limits (re-read at most every second)
//! and the fetch of a limited queue, serialized per queue by an advisory lock.

use std::sync::LazyLock;
use std::time::Duration;

use super::{PgJobStore, claim_sql, fetched};
use crate::error::{Error, Result};
use crate::model::FetchedJob;

impl PgJobStore {
    /// The global concurrency limit of `queue`, from a cache refreshed at most every second.
    pub(super) async fn global_limit(&self, queue: &str) -> Result<Option<i32>> {
        let fresh = {
            let cache = self.limits.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .0
                .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
                .then(|| cache.1.get(queue).copied())
        };
        if let Some(limit) = fresh {
            return Ok(limit);
        }
        let rows: Vec<(String, i32)> = sqlx::query_as(
            "SELECT name, global_limit FROM windlass_job_queues WHERE global_limit IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::pg("fetch", e))?;
        let map: std::collections::HashMap<String, i32> = rows.into_iter().collect();
        let limit = map.get(queue).copied();
        *self.limits.lock().unwrap_or_else(|p| p.into_inner()) =
            (Some(std::time::Instant::now()), map);
        Ok(limit)
    }

    /// Fetch under a global limit: one transaction serialized per queue by an advisory lock,
    /// counting the queue's running jobs after taking it (a statement of its own, so its
    /// snapshot sees every fetch committed before).
    pub(super) async fn fetch_limited(
        &self,
        queue: &str,
        kinds: &[String],
        limit: usize,
        worker: &str,
        max: i32,
    ) -> Result<Vec<FetchedJob>> {
        let mut tx = self.pool.begin().await.map_err(|e| Error::pg("fetch", e))?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('windlass_jobs.limit:' || $1))")
            .bind(queue)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::pg("fetch", e))?;
        // $5: the limit; the claim takes at most what is left of it.
        static CLAIM_LIMITED: LazyLock<String> = LazyLock::new(|| {
            claim_sql(
                "running AS (SELECT count(*) AS n FROM windlass_jobs WHERE queue = $1 AND state = 'running'), ",
                "greatest(0, least($2, $5 - (SELECT n FROM running)))",
            )
        });
        let rows = sqlx::query(sqlx::AssertSqlSafe(CLAIM_LIMITED.as_str()))
            .bind(queue)
            .bind(limit.min(i32::MAX as usize) as i64)
            .bind(worker)
            .bind(kinds)
            .bind(i64::from(max))
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| Error::pg("fetch", e))?;
        tx.commit().await.map_err(|e| Error::pg("fetch", e))?;
        Ok(fetched(&rows))
    }
}
