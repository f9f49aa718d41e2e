//! Work inside the caller's (or the job's own) transaction: typed enqueue, and completion of
//! the running attempt together with the job's effects.

use sqlx::PgConnection;

use super::PgJobStore;
use crate::error::{Error, Result};
use crate::model::{AttemptToken, Enqueued};

impl PgJobStore {
    /// Enqueues one typed job inside the caller's transaction (see [`PgJobStore::insert_in`]).
    pub async fn enqueue_in<J: crate::Job>(
        conn: &mut PgConnection,
        job: &J,
        options: &crate::EnqueueOptions,
    ) -> Result<Enqueued> {
        crate::otel::enqueue(J::KIND, async {
            let mut out = Self::insert_in(conn, vec![options.build(job)?]).await?;
            Ok(out.pop().unwrap_or(Enqueued::Duplicate(None)))
        })
        .await
    }

    /// Completes the running attempt of `ctx` inside the job's own transaction (River's
    /// `JobCompleteTx`): commit it together with the job's database effects and the two happen
    /// exactly once together. A crash between the commit and the worker's own outcome write
    /// changes nothing (the worker's later write is refused); a crash before the commit rolls
    /// both back. Fenced like every transition: [`Error::AttemptLost`] when the attempt no
    /// longer holds its job (rescued after a stall): roll the transaction back, so a rescued
    /// attempt's effects never commit.
    ///
    /// ```no_run
    /// # use windlass_jobs::{Job, JobContext, JobError, postgres::PgJobStore};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Charge { order: i64 }
    /// impl Job for Charge {
    ///     const KIND: &'static str = "charge";
    ///     async fn run(&self, ctx: JobContext) -> Result<(), JobError> {
    ///         // The pool was given to the worker with `Worker::state(pool)`.
    ///         let pool = ctx.state::<sqlx::PgPool>()?;
    ///         let mut tx = pool.begin().await?;
    ///         sqlx::query("UPDATE orders SET charged = true WHERE id = $1")
    ///             .bind(self.order)
    ///             .execute(&mut *tx)
    ///             .await?;
    ///         PgJobStore::complete_in(&mut tx, &ctx).await?;
    ///         tx.commit().await?;
    ///         Ok(())
    ///     }
    /// }
    /// # let _ = Charge { order: 1 };
    /// ```
    pub async fn complete_in(conn: &mut PgConnection, ctx: &crate::JobContext) -> Result<()> {
        Self::complete_attempt_in(conn, ctx.worker_id(), ctx.token()).await
    }

    /// [`PgJobStore::complete_in`] for an explicit worker and attempt token.
    pub async fn complete_attempt_in(
        conn: &mut PgConnection,
        worker: &str,
        token: AttemptToken,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE windlass_jobs \
                SET state = 'completed', finalized_at = now(), locked_by = NULL, stop_requested = NULL \
              WHERE id = $1 AND attempt = $2 AND state = 'running' AND locked_by = $3",
        )
        .bind(token.id)
        .bind(token.attempt)
        .bind(worker)
        .execute(&mut *conn)
        .await
        .map_err(|e| Error::pg("complete", e))?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(Error::AttemptLost {
                id: token.id,
                attempt: u32::try_from(token.attempt).unwrap_or(0),
            })
        }
    }
}
