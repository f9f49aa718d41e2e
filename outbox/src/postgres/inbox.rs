//! The consumer side on Postgres: (`consumer`, `source`, `id`) recorded in the consumer's own
//! transaction.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use windlass_core::Name;
use windlass_eventbus::{DeliveryContext, Event, HandlerError};

use crate::config::OutboxConfig;
use crate::error::{Error, Result};
use crate::inbox::{InboxBackend, InboxHandler, Received, sealed};

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
    persistent: bool,
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
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                consumer,
                insert: insert.into(),
                persistent: config.prepared_statements,
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
            .persistent(self.inner.persistent)
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

    /// Wraps `work` into a bus [`Handler`](windlass_eventbus::Handler): each delivery opens a
    /// transaction, records the event, gives `work` the transaction, the event and its
    /// delivery context, and commits the transaction `work` hands back; a duplicate is
    /// acknowledged without running `work`. An error from `work` rolls everything back (the
    /// inbox record too) and goes back to the bus for retry or the DLQ. Old records are
    /// deleted by the relays' maintenance leader ([`RelayOptions::inbox_retention`]).
    ///
    /// ```no_run
    /// # use windlass_outbox::postgres::Inbox;
    /// # fn demo(pool: sqlx::PgPool) -> windlass_outbox::Result<()> {
    /// let handler = Inbox::new(pool, "projections")?.handler(|mut tx, event, _ctx| async move {
    ///     sqlx::query("UPDATE totals SET n = n + 1 WHERE kind = $1")
    ///         .bind(event.ty())
    ///         .execute(&mut *tx)
    ///         .await?;
    ///     Ok(tx)
    /// });
    /// # let _ = handler; Ok(()) }
    /// # let _ = demo;
    /// ```
    ///
    /// [`RelayOptions::inbox_retention`]: crate::RelayOptions::inbox_retention
    pub fn handler<F, Fut>(&self, work: F) -> InboxHandler<Self, F>
    where
        F: Fn(Transaction<'static, Postgres>, Event, DeliveryContext) -> Fut
            + Send
            + Sync
            + 'static,
        Fut: Future<Output = Result<Transaction<'static, Postgres>, HandlerError>> + Send,
    {
        InboxHandler::new(self.clone(), work)
    }
}

impl sealed::Sealed for Inbox {}

#[async_trait]
impl InboxBackend for Inbox {
    type Tx = Transaction<'static, Postgres>;

    async fn begin_tx(&self) -> Result<Self::Tx, sqlx::Error> {
        self.inner.pool.begin().await
    }

    async fn record_in(&self, tx: &mut Self::Tx, event: &Event) -> Result<Received> {
        self.record(tx, event).await
    }

    async fn commit_tx(tx: Self::Tx) -> Result<(), sqlx::Error> {
        tx.commit().await
    }

    async fn rollback_tx(tx: Self::Tx) -> Result<(), sqlx::Error> {
        tx.rollback().await
    }

    fn consumer_name(&self) -> &str {
        self.consumer()
    }
}
