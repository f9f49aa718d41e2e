//! Global concurrency limits per queue: a cache of the limits (re-read at most every second)
//! and the fetch of a limited queue, serialized per queue by an advisory lock.

use std::time::Duration;

use super::{PgJobStore, fetched};
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
        let rows = sqlx::query(
            "WITH running AS ( \
                 SELECT count(*) AS n FROM windlass_jobs WHERE queue = $1 AND state = 'running'), \
             next AS ( \
                 SELECT id FROM windlass_jobs \
                  WHERE queue = $1 AND state IN ('available', 'scheduled', 'retryable') AND run_at <= now() \
                    AND (cardinality($4::text[]) = 0 OR kind = ANY($4)) \
                    AND NOT EXISTS (SELECT 1 FROM windlass_job_queues WHERE name = $1 AND paused) \
                  ORDER BY priority, run_at, id \
                  LIMIT greatest(0, least($2, $5 - (SELECT n FROM running))) \
                  FOR UPDATE SKIP LOCKED) \
             UPDATE windlass_jobs j \
                SET state = 'running', attempt = j.attempt + 1, attempted_at = now(), \
                    heartbeat_at = now(), locked_by = $3 \
               FROM next WHERE j.id = next.id \
             RETURNING j.id, j.queue, j.kind, j.args, j.org_id, j.priority, j.attempt, j.max_attempts, \
                       j.run_at, j.timeout_ms, j.traceparent, j.tracestate",
        )
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
