//! The consumer side on SQLite.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};
use windlass_core::Name;
use windlass_eventbus::{DeliveryContext, Event, HandlerError};

use super::{check, now_ms};
use crate::config::OutboxConfig;
use crate::error::{Error, Result};
use crate::inbox::{InboxBackend, InboxHandler, Received, sealed};

/// The SQLite inbox: see [`postgres::Inbox`](crate::postgres::Inbox) for the contract. Its
/// handler opens `BEGIN IMMEDIATE` transactions (SQLite's one writer at a time).
#[derive(Debug, Clone)]
pub struct Inbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: SqlitePool,
    consumer: Name,
    insert: Arc<str>,
}

impl Inbox {
    /// An inbox for `consumer` in the default table.
    pub fn new(pool: SqlitePool, consumer: impl Into<String>) -> Result<Self> {
        Self::with_config(pool, consumer, &OutboxConfig::default())
    }

    /// An inbox for `consumer` in the inbox table `config` names.
    pub fn with_config(
        pool: SqlitePool,
        consumer: impl Into<String>,
        config: &OutboxConfig,
    ) -> Result<Self> {
        check(config)?;
        let consumer = Name::parse("consumer", consumer)?;
        let insert = format!(
            "INSERT INTO {} (consumer, source, id, received_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            config.qualified_inbox_table()
        );
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                consumer,
                insert: insert.into(),
            }),
        })
    }

    /// The consumer name.
    pub fn consumer(&self) -> &str {
        self.inner.consumer.as_str()
    }

    /// Records `event` in the caller's transaction; says whether it is new.
    pub async fn record(&self, conn: &mut SqliteConnection, event: &Event) -> Result<Received> {
        let done = sqlx::query(sqlx::AssertSqlSafe(self.inner.insert.clone()))
            .bind(self.inner.consumer.as_str())
            .bind(event.source())
            .bind(event.id())
            .bind(now_ms())
            .execute(conn)
            .await
            .map_err(|e| Error::db("inbox record", e))?;
        Ok(if done.rows_affected() == 1 {
            Received::New
        } else {
            Received::Duplicate
        })
    }

    /// Wraps `work` into a bus handler: see
    /// [`postgres::Inbox::handler`](crate::postgres::Inbox::handler).
    pub fn handler<F, Fut>(&self, work: F) -> InboxHandler<Self, F>
    where
        F: Fn(Transaction<'static, Sqlite>, Event, DeliveryContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Transaction<'static, Sqlite>, HandlerError>> + Send,
    {
        InboxHandler::new(self.clone(), work)
    }
}

impl sealed::Sealed for Inbox {}

#[async_trait]
impl InboxBackend for Inbox {
    type Tx = Transaction<'static, Sqlite>;

    async fn begin_tx(&self) -> Result<Self::Tx, sqlx::Error> {
        self.inner.pool.begin_with("BEGIN IMMEDIATE").await
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
