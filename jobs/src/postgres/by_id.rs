//! By-id operations: cancel and discard (at once for a waiting job, a request for a running
//! one) and `retry_now` (refused while the job runs).

use windlass_core::TenantScope;

use super::{PgJobStore, org};
use crate::error::{Error, Result};
use crate::model::{JobId, JobState};

impl PgJobStore {
    /// Cancel or discard by id: at once for a waiting job, a request for a running one (the
    /// first request wins; the row takes its state when the attempt ends).
    pub(super) async fn stop(
        &self,
        scope: &TenantScope,
        id: JobId,
        state: JobState,
        op: &'static str,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE windlass_jobs \
                SET state = CASE WHEN state = 'running' THEN state ELSE $2 END, \
                    stop_requested = CASE WHEN state = 'running' THEN coalesce(stop_requested, $2) END, \
                    finalized_at = CASE WHEN state = 'running' THEN NULL ELSE now() END, \
                    locked_by = CASE WHEN state = 'running' THEN locked_by END \
              WHERE id = $1 AND state NOT IN ('completed', 'cancelled', 'discarded') \
                AND ($3::text IS NULL OR org_id = $3)",
        )
        .bind(id)
        .bind(state.as_str())
        .bind(org(scope))
        .execute(&self.pool)
        .await
        .map_err(|e| Error::pg(op, e))?;
        Ok(done.rows_affected() == 1)
    }

    /// `retry_now` by id (see [`JobStore::retry_now`](crate::JobStore::retry_now)).
    pub(super) async fn retry_now_by_id(&self, scope: &TenantScope, id: JobId) -> Result<bool> {
        // The update refuses a running row; the state read that explains a refusal is a second
        // statement, so an attempt that ended in between (the row is final now) is retried
        // rather than reported as missing.
        for _ in 0..3 {
            let res = sqlx::query_scalar::<_, String>(
                "UPDATE windlass_jobs SET state = 'available', run_at = now(), finalized_at = NULL, locked_by = NULL, \
                        max_attempts = greatest(max_attempts, attempt + 1) \
                  WHERE id = $1 AND state <> 'running' AND ($2::text IS NULL OR org_id = $2) RETURNING queue",
            )
            .bind(id)
            .bind(org(scope))
            .fetch_optional(&self.pool)
            .await;
            match res {
                Ok(Some(queue)) => {
                    self.notify(&[queue]).await?;
                    return Ok(true);
                }
                Ok(None) => {
                    let state: Option<String> = sqlx::query_scalar(
                        "SELECT state FROM windlass_jobs WHERE id = $1 AND ($2::text IS NULL OR org_id = $2)",
                    )
                    .bind(id)
                    .bind(org(scope))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| Error::pg("retry", e))?;
                    match state.as_deref() {
                        Some("running") => return Err(Error::JobRunning { id }),
                        None => return Ok(false),
                        Some(_) => continue,
                    }
                }
                Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                    let key: Option<String> =
                        sqlx::query_scalar("SELECT unique_key FROM windlass_jobs WHERE id = $1")
                            .bind(id)
                            .fetch_optional(&self.pool)
                            .await
                            .map_err(|e| Error::pg("retry", e))?
                            .flatten();
                    return Err(Error::UniqueConflict {
                        id,
                        unique_key: key.unwrap_or_default(),
                    });
                }
                Err(e) => return Err(Error::pg("retry", e)),
            }
        }
        // Running again each time we looked (another caller's retry started a new attempt).
        Err(Error::JobRunning { id })
    }
}
