//! The SQLite store: the embedded outbox (no server), for the quickstart, tests and small
//! single-node services.
//!
//! Same table layout as Postgres (timestamps as Unix epoch milliseconds). Differences:
//! - No LISTEN: the relay polls ([`RelayOptions::poll_interval`](crate::RelayOptions)).
//! - A claim is a `BEGIN IMMEDIATE` transaction held while the relay publishes: SQLite has one
//!   writer at a time, so relays (and writers) take turns; keep publishing fast (an in-process
//!   bus) or expect writers to wait on the busy timeout.
//! - Per-key order: a claim takes, for every key, the pending rows up to the first one that is
//!   backing off.
//! - No schema: [`OutboxConfig::schema`] must be `None`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, SqliteConnection, SqlitePool, Transaction};
use uuid::Uuid;
use windlass_core::Name;
use windlass_eventbus::{DeliveryContext, Event, Handler, HandlerError, HandlerResult};

use crate::Received;
use crate::config::{OutboxConfig, render_migration};
use crate::error::{Error, Result};
use crate::store::{Claim, ClaimedRow, DeadEvent, FailedRow, OutboxStore, Stats, Waiter};
use crate::write::prepare;

/// The shipped SQLite migration for the default names. Idempotent.
pub const MIGRATION_0001: &str = include_str!("../../migrations/sqlite/0001_outbox.sql");

fn check(config: &OutboxConfig) -> Result<()> {
    config.validate()?;
    if config.schema.is_some() {
        return Err(Error::Config(
            "SQLite has no schemas; leave OutboxConfig::schema unset".into(),
        ));
    }
    Ok(())
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// Creates the outbox and inbox tables with the default names, if missing.
pub async fn migrate(pool: &SqlitePool) -> Result<()> {
    migrate_with(pool, &OutboxConfig::default()).await
}

/// [`migrate`] for configured table names.
pub async fn migrate_with(pool: &SqlitePool, config: &OutboxConfig) -> Result<()> {
    check(config)?;
    let sql = render_migration(MIGRATION_0001, config);
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(|e| Error::db("migrate", e))?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *tx)
        .await
        .map_err(|e| Error::db("migrate", e))?;
    tx.commit().await.map_err(|e| Error::db("migrate", e))
}

/// Writes events into the SQLite outbox inside the caller's transaction. See
/// [`postgres::Outbox`](crate::postgres::Outbox) for the contract (minus `NOTIFY`).
#[derive(Debug, Clone)]
pub struct Outbox {
    inner: Arc<(OutboxConfig, Arc<str>)>,
}

impl Outbox {
    /// An outbox writing to the table `config` names.
    pub fn new(config: OutboxConfig) -> Result<Self> {
        check(&config)?;
        let sql = format!(
            "INSERT INTO {} (id, org_id, topic, partition_key, event, created_at, next_attempt_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            config.table
        );
        Ok(Self {
            inner: Arc::new((config, sql.into())),
        })
    }

    /// Adds `event` for `topic` in the caller's transaction; returns the row id. Invalid topic
    /// and oversized events are refused before any statement runs.
    pub async fn enqueue(
        &self,
        conn: &mut SqliteConnection,
        topic: impl AsRef<str>,
        event: &Event,
    ) -> Result<Uuid> {
        let p = prepare(topic.as_ref(), event, self.inner.0.max_event_size)?;
        sqlx::query(sqlx::AssertSqlSafe(self.inner.1.clone()))
            .bind(p.id.to_string())
            .bind(p.org_id)
            .bind(p.topic.as_str())
            .bind(p.partition_key)
            .bind(p.json)
            .bind(now_ms())
            .execute(conn)
            .await
            .map_err(|e| Error::db("enqueue", e))?;
        Ok(p.id)
    }

    /// Adds several events for one topic, in order. Every event is checked first.
    pub async fn enqueue_batch(
        &self,
        conn: &mut SqliteConnection,
        topic: impl AsRef<str>,
        events: &[Event],
    ) -> Result<Vec<Uuid>> {
        let prepared = events
            .iter()
            .map(|e| prepare(topic.as_ref(), e, self.inner.0.max_event_size))
            .collect::<Result<Vec<_>>>()?;
        let now = now_ms();
        let mut ids = Vec::with_capacity(prepared.len());
        for p in prepared {
            sqlx::query(sqlx::AssertSqlSafe(self.inner.1.clone()))
                .bind(p.id.to_string())
                .bind(p.org_id)
                .bind(p.topic.as_str())
                .bind(p.partition_key)
                .bind(p.json)
                .bind(now)
                .execute(&mut *conn)
                .await
                .map_err(|e| Error::db("enqueue", e))?;
            ids.push(p.id);
        }
        Ok(ids)
    }
}

/// The SQLite outbox as the [`Relay`](crate::Relay) and operators use it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<StoreInner>,
}

#[derive(Debug)]
struct StoreInner {
    pool: SqlitePool,
    table: String,
    label: String,
    claim: Arc<str>,
}

impl SqliteStore {
    /// A store on `pool` for the table `config` names.
    pub fn new(pool: SqlitePool, config: OutboxConfig) -> Result<Self> {
        check(&config)?;
        let t = config.table.clone();
        let claim = format!(
            "SELECT seq, id, topic, partition_key, event, attempts FROM {t} o \
             WHERE o.status = 'pending' AND o.next_attempt_at <= ?1 \
               AND (o.partition_key IS NULL OR NOT EXISTS ( \
                    SELECT 1 FROM {t} p WHERE p.status = 'pending' AND p.topic = o.topic \
                      AND p.partition_key = o.partition_key AND p.seq < o.seq AND p.next_attempt_at > ?1)) \
             ORDER BY o.seq LIMIT ?2"
        );
        Ok(Self {
            inner: Arc::new(StoreInner {
                pool,
                label: config.label(),
                table: t,
                claim: claim.into(),
            }),
        })
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    fn sql(&self, s: String) -> sqlx::query::Query<'static, Sqlite, sqlx::sqlite::SqliteArguments> {
        sqlx::query(sqlx::AssertSqlSafe(s))
    }
}

fn uuid_of(row: &SqliteRow, col: &str) -> Result<Uuid, sqlx::Error> {
    let s: String = row.try_get(col)?;
    Uuid::parse_str(&s).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// A claim on SQLite: the rows are held by an open `BEGIN IMMEDIATE` transaction.
#[derive(Debug)]
pub struct SqliteClaim {
    tx: Transaction<'static, Sqlite>,
    rows: Vec<ClaimedRow>,
    table: String,
}

#[async_trait]
impl Claim for SqliteClaim {
    fn rows(&self) -> &[ClaimedRow] {
        &self.rows
    }

    async fn settle(mut self, published: &[Uuid], failed: &[FailedRow]) -> Result<()> {
        let t = &self.table;
        let now = now_ms();
        if !published.is_empty() {
            let ids =
                serde_json::to_string(&published.iter().map(|u| u.to_string()).collect::<Vec<_>>())
                    .map_err(|e| Error::db("mark published", e))?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE {t} SET status = 'published', published_at = ?1, attempts = attempts + 1, \
                 last_error = NULL WHERE id IN (SELECT value FROM json_each(?2))"
            )))
            .bind(now)
            .bind(ids)
            .execute(&mut *self.tx)
            .await
            .map_err(|e| Error::db("mark published", e))?;
        }
        for f in failed {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE {t} SET attempts = attempts + 1, last_error = ?1, status = ?2, next_attempt_at = ?3 \
                 WHERE id = ?4"
            )))
            .bind(&f.error)
            .bind(if f.dead { "dead" } else { "pending" })
            .bind(now.saturating_add(ms(f.retry_in)))
            .bind(f.id.to_string())
            .execute(&mut *self.tx)
            .await
            .map_err(|e| Error::db("mark failed", e))?;
        }
        self.tx
            .commit()
            .await
            .map_err(|e| Error::db("commit claim", e))
    }
}

/// The SQLite relay polls.
#[derive(Debug)]
pub struct SqliteWaiter;

#[async_trait]
impl Waiter for SqliteWaiter {
    async fn wait(&mut self, max: Duration) {
        tokio::time::sleep(max).await;
    }
}

#[async_trait]
impl OutboxStore for SqliteStore {
    type Claim = SqliteClaim;
    type Waiter = SqliteWaiter;

    async fn claim(&self, limit: usize) -> Result<SqliteClaim> {
        let mut tx = self
            .inner
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| Error::db("claim", e))?;
        let found = sqlx::query(sqlx::AssertSqlSafe(self.inner.claim.clone()))
            .bind(now_ms())
            .bind(limit.max(1) as i64)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| Error::db("claim", e))?;
        let rows = found
            .iter()
            .map(|r| -> Result<ClaimedRow, sqlx::Error> {
                let attempts: i64 = r.try_get("attempts")?;
                Ok(ClaimedRow {
                    id: uuid_of(r, "id")?,
                    seq: r.try_get("seq")?,
                    topic: r.try_get("topic")?,
                    partition_key: r.try_get("partition_key")?,
                    event: r.try_get("event")?,
                    attempts: attempts.clamp(0, u32::MAX as i64) as u32,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::db("claim", e))?;
        Ok(SqliteClaim {
            tx,
            rows,
            table: self.inner.table.clone(),
        })
    }

    async fn waiter(&self, _listen: bool) -> Result<SqliteWaiter> {
        Ok(SqliteWaiter)
    }

    async fn stats(&self) -> Result<Stats> {
        let t = &self.inner.table;
        let row = self
            .sql(format!(
                "SELECT (SELECT count(*) FROM {t} WHERE status = 'pending') AS pending, \
                        (SELECT count(*) FROM {t} WHERE status = 'dead') AS dead, \
                        (SELECT count(*) FROM {t} WHERE status = 'published') AS published, \
                        (SELECT min(created_at) FROM {t} WHERE status = 'pending') AS oldest"
            ))
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|e| Error::db("stats", e))?;
        let get = |c: &str| -> Result<u64> {
            let v: i64 = row.try_get(c).map_err(|e| Error::db("stats", e))?;
            Ok(v.max(0) as u64)
        };
        let oldest: Option<i64> = row.try_get("oldest").map_err(|e| Error::db("stats", e))?;
        Ok(Stats {
            pending: get("pending")?,
            dead: get("dead")?,
            published: get("published")?,
            oldest_pending_age: oldest.map(|o| Duration::from_millis((now_ms() - o).max(0) as u64)),
        })
    }

    async fn list_dead(&self, limit: usize) -> Result<Vec<DeadEvent>> {
        let t = &self.inner.table;
        let rows = self
            .sql(format!(
                "SELECT id, seq, topic, partition_key, event, attempts, last_error, created_at FROM {t} \
                 WHERE status = 'dead' ORDER BY seq LIMIT ?1"
            ))
            .bind(limit.min(i64::MAX as usize) as i64)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| Error::db("list dead", e))?;
        rows.iter()
            .map(|r| -> Result<DeadEvent, sqlx::Error> {
                let attempts: i64 = r.try_get("attempts")?;
                let created: i64 = r.try_get("created_at")?;
                Ok(DeadEvent {
                    id: uuid_of(r, "id")?,
                    seq: r.try_get("seq")?,
                    topic: r.try_get("topic")?,
                    partition_key: r.try_get("partition_key")?,
                    event: r.try_get("event")?,
                    attempts: attempts.clamp(0, u32::MAX as i64) as u32,
                    last_error: r.try_get("last_error")?,
                    created_at: DateTime::from_timestamp_millis(created).unwrap_or_default(),
                })
            })
            .collect::<Result<_, _>>()
            .map_err(|e| Error::db("list dead", e))
    }

    async fn requeue(&self, id: Uuid) -> Result<()> {
        let t = &self.inner.table;
        let done = self
            .sql(format!(
                "UPDATE {t} SET status = 'pending', attempts = 0, next_attempt_at = ?1 WHERE id = ?2 AND status = 'dead'"
            ))
            .bind(now_ms())
            .bind(id.to_string())
            .execute(&self.inner.pool)
            .await
            .map_err(|e| Error::db("requeue", e))?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound(id));
        }
        Ok(())
    }

    async fn requeue_all_dead(&self) -> Result<u64> {
        let t = &self.inner.table;
        let done = self
            .sql(format!("UPDATE {t} SET status = 'pending', attempts = 0, next_attempt_at = ?1 WHERE status = 'dead'"))
            .bind(now_ms())
            .execute(&self.inner.pool)
            .await
            .map_err(|e| Error::db("requeue", e))?;
        Ok(done.rows_affected())
    }

    async fn delete_published_before(&self, age: Duration) -> Result<u64> {
        let t = &self.inner.table;
        let done = self
            .sql(format!(
                "DELETE FROM {t} WHERE status = 'published' AND published_at < ?1"
            ))
            .bind(now_ms().saturating_sub(ms(age)))
            .execute(&self.inner.pool)
            .await
            .map_err(|e| Error::db("retention", e))?;
        Ok(done.rows_affected())
    }

    fn label(&self) -> &str {
        &self.inner.label
    }
}

/// The SQLite inbox: see [`postgres::Inbox`](crate::postgres::Inbox) for the contract.
#[derive(Debug, Clone)]
pub struct Inbox {
    inner: Arc<InboxInner>,
}

#[derive(Debug)]
struct InboxInner {
    pool: SqlitePool,
    consumer: Name,
    table: String,
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
        Ok(Self {
            inner: Arc::new(InboxInner {
                pool,
                consumer,
                table: config.inbox_table.clone(),
            }),
        })
    }

    /// The consumer name.
    pub fn consumer(&self) -> &str {
        self.inner.consumer.as_str()
    }

    /// Records `event` in the caller's transaction; says whether it is new.
    pub async fn record(&self, conn: &mut SqliteConnection, event: &Event) -> Result<Received> {
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT OR IGNORE INTO {} (consumer, source, id, received_at) VALUES (?1, ?2, ?3, ?4)",
            self.inner.table
        )))
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

    /// Deletes this consumer's records older than `age`.
    pub async fn delete_older_than(&self, age: Duration) -> Result<u64> {
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {} WHERE consumer = ?1 AND received_at < ?2",
            self.inner.table
        )))
        .bind(self.inner.consumer.as_str())
        .bind(now_ms().saturating_sub(ms(age)))
        .execute(&self.inner.pool)
        .await
        .map_err(|e| Error::db("inbox retention", e))?;
        Ok(done.rows_affected())
    }

    /// Wraps `work` into a bus [`Handler`]: record + work + commit in one transaction,
    /// duplicates acknowledged without running `work`.
    pub fn handler<F>(&self, work: F) -> InboxHandler<F>
    where
        F: for<'c> Fn(&'c mut SqliteConnection, &'c Event) -> BoxFuture<'c, HandlerResult>
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
    F: for<'c> Fn(&'c mut SqliteConnection, &'c Event) -> BoxFuture<'c, HandlerResult>
        + Send
        + Sync
        + 'static,
{
    async fn handle(&self, event: &Event, _ctx: &DeliveryContext) -> HandlerResult {
        let mut tx = self
            .inbox
            .inner
            .pool
            .begin_with("BEGIN IMMEDIATE")
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
