//! The consumer side: (`consumer`, `source`, `id`) recorded in the consumer's own transaction.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};
use windlass_core::Name;
use windlass_eventbus::{DeliveryContext, Event, Handler, HandlerError, HandlerResult};

use crate::Received;
use crate::config::OutboxConfig;
use crate::error::{Error, Result};

/// Deduplicates deliveries for one consumer: turns the bus's at-least-once into
/// effectively-once for work done in the same Postgres transaction.
///
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Inbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    consumer: Name,
    insert: Arc<str>,
    retention: Arc<str>,
}

impl Inbox {
    /// An inbox for `consumer` (validated as a name) in the default `windlass_inbox` table.
    pub fn new(pool: PgPool, consumer: impl Into<String>) -> Result<Self> {
        Self::with_config(pool, consumer, &OutboxConfig::default())
    }

    /// An inbox for `consumer` in the inbox table `config` names.
    pub fn with_config(
        pool: PgPool,
        consumer: impl Into<String>,
        config: &OutboxConfig,
    ) -> Result<Self> {
        config.validate()?;
        let consumer = Name::parse("consumer", consumer)?;
        let t = config.qualified_inbox_table();
        let insert = format!(
            "INSERT INTO {t} (consumer, source, id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
        );
        let retention = format!(
            "DELETE FROM {t} WHERE consumer = $1 AND received_at < now() - $2 * interval '1 millisecond'"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                consumer,
                insert: insert.into(),
                retention: retention.into(),
            }),
        })
    }

    /// The consumer name.
    pub fn consumer(&self) -> &str {
        self.inner.consumer.as_str()
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Records `event` as received by this consumer in the caller's transaction.
    ///
    /// [`Received::New`]: do the work in the same transaction and commit both.
    /// [`Received::Duplicate`]: it was handled (committed) before; skip the work. A concurrent
    /// delivery of the same event waits here until the first transaction ends.
    pub async fn record(&self, conn: &mut PgConnection, event: &Event) -> Result<Received> {
        let done = sqlx::query(sqlx::AssertSqlSafe(self.inner.insert.clone()))
            .bind(self.inner.consumer.as_str())
            .bind(event.source())
            .bind(event.id())
            .execute(conn)
            .await
            .map_err(|e| Error::db("inbox record", e))?;
        Ok(if done.rows_affected() == 1 {
            Received::New
        } else {
            Received::Duplicate
        })
    }

    /// Deletes this consumer's records older than `age`; returns how many. Keep `age` well over
    /// the longest a duplicate can arrive late (bus redelivery, relay retries, replays).
    pub async fn delete_older_than(&self, age: Duration) -> Result<u64> {
        let done = sqlx::query(sqlx::AssertSqlSafe(self.inner.retention.clone()))
            .bind(self.inner.consumer.as_str())
            .bind(age.as_millis().min(i64::MAX as u128) as i64)
            .execute(&self.inner.pool)
            .await
            .map_err(|e| Error::db("inbox retention", e))?;
        Ok(done.rows_affected())
    }

    /// Wraps `work` into a bus [`Handler`]: each delivery opens a transaction, records the
    /// event, runs `work` in the same transaction for a new event and commits both; a
    /// duplicate is acknowledged without running `work`. An error from `work` rolls back the
    /// transaction (the inbox record too) and goes back to the bus for retry or the DLQ.
    ///
    /// ```no_run
    /// # use windlass_outbox::postgres::Inbox;
    /// # fn demo(pool: sqlx::PgPool) -> windlass_outbox::Result<()> {
    /// let handler = Inbox::new(pool, "projections")?.handler(|tx, event| {
    ///     Box::pin(async move {
    ///         sqlx::query("UPDATE totals SET n = n + 1 WHERE kind = $1")
    ///             .bind(event.ty())
    ///             .execute(&mut *tx)
    ///             .await?;
    ///         Ok(())
    ///     })
    /// });
    /// # let _ = handler; Ok(()) }
    /// # let _ = demo;
    /// ```
    pub fn handler<F>(&self, work: F) -> InboxHandler<F>
    where
        F: for<'c> Fn(&'c mut PgConnection, &'c Event) -> BoxFuture<'c, HandlerResult>
            + Send
            + Sync
            + 'static,
    {
        InboxHandler {
            inbox: self.clone(),
            work,
        }
    }
}

/// A bus [`Handler`] made by [`Inbox::handler`].
pub struct InboxHandler<F> {
    inbox: Inbox,
    work: F,
}

impl<F> std::fmt::Debug for InboxHandler<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxHandler")
            .field("consumer", &self.inbox.consumer())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<F> Handler for InboxHandler<F>
where
    F: for<'c> Fn(&'c mut PgConnection, &'c Event) -> BoxFuture<'c, HandlerResult>
        + Send
        + Sync
        + 'static,
{
    async fn handle(&self, event: &Event, _ctx: &DeliveryContext) -> HandlerResult {
        let mut tx = self
            .inbox
            .inner
            .pool
            .begin()
            .await
            .map_err(HandlerError::retry)?;
        let received = match self.inbox.record(&mut tx, event).await {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(HandlerError::retry(e));
            }
        };
        if received == Received::Duplicate {
            metrics::counter!("windlass_inbox_duplicates_total", "consumer" => self.inbox.consumer().to_owned())
                .increment(1);
            tracing::debug!(
                consumer = self.inbox.consumer(),
                id = event.id(),
                "inbox dropped a duplicate"
            );
            tx.rollback().await.map_err(HandlerError::retry)?;
            return Ok(());
        }
        // Roll back explicitly: a dropped transaction only queues its ROLLBACK, and the pooled
        // connection would keep the work's row locks until it is used again.
        if let Err(e) = (self.work)(&mut tx, event).await {
            let _ = tx.rollback().await;
            return Err(e);
        }
        tx.commit().await.map_err(HandlerError::retry)?;
        Ok(())
    }
}
