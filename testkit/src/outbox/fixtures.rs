//! The two backends of the outbox conformance suite: Postgres (a fresh database) and SQLite
//! (a fresh WAL file).

use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};
use windlass_eventbus::{Event, Topic};
use windlass_outbox::postgres::{self, PgOutboxStore};
use windlass_outbox::sqlite::{self, SqliteOutboxStore};
use windlass_outbox::{
    Destination, OutboxAdmin, OutboxConfig, OutboxMaintenance, OutboxStore, Received,
};

use crate::postgres::{TestDatabase, fresh_database};

/// What the outbox conformance suite needs from a backend.
#[async_trait]
pub trait OutboxFixture: Send + Sync + Sized + 'static {
    /// The store under test.
    type Store: OutboxStore + OutboxMaintenance + OutboxAdmin + Clone + std::fmt::Debug;

    /// A fresh, migrated database with this config.
    async fn setup_with(config: OutboxConfig) -> Self;

    /// A fresh, migrated database with the default config.
    async fn setup() -> Self {
        Self::setup_with(OutboxConfig::default()).await
    }

    /// The store on the fixture's pool.
    fn store(&self) -> Self::Store;

    /// A store on a pool of its own (as another process would have).
    async fn other_store(&self) -> Self::Store;

    /// Enqueues `events` to the configured destinations in one committed transaction.
    async fn enqueue(&self, topic: &Topic, events: &[Event]) -> Vec<i64>;

    /// Enqueues `events` to `destinations` in one committed transaction.
    async fn enqueue_to(&self, topic: &Topic, events: &[Event], to: &[Destination]) -> Vec<i64>;

    /// Enqueues `event` in a transaction that rolls back.
    async fn enqueue_rolled_back(&self, topic: &Topic, event: &Event);

    /// Writes a row whose event does not decode, for key `key`, with the raw client.
    async fn insert_garbage(&self, topic: &str, key: &str);

    /// Moves every timestamp (`created_at`, `failed_at`, inbox `received_at`) `secs` back.
    async fn backdate(&self, secs: i64);

    /// Rows in the event table.
    async fn event_rows(&self) -> i64;

    /// Delivery rows (all statuses).
    async fn delivery_rows(&self) -> i64;

    /// Records `event` for `consumer` in the inbox and commits.
    async fn inbox_record(&self, consumer: &str, event: &Event) -> Received;

    /// Inbox records.
    async fn inbox_rows(&self) -> i64;
}

/// Postgres: a fresh database per test.
#[derive(Debug)]
pub struct PgFixture {
    /// The database.
    pub db: TestDatabase,
    /// The config.
    pub config: OutboxConfig,
    outbox: postgres::Outbox,
}

async fn pg_scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[async_trait]
impl OutboxFixture for PgFixture {
    type Store = PgOutboxStore;

    async fn setup_with(config: OutboxConfig) -> Self {
        let db = fresh_database().await;
        postgres::migrate_with(&db.pool, &config).await.unwrap();
        Self {
            outbox: postgres::Outbox::with_config(config.clone()).unwrap(),
            db,
            config,
        }
    }

    fn store(&self) -> PgOutboxStore {
        PgOutboxStore::with_config(self.db.pool.clone(), self.config.clone()).unwrap()
    }

    async fn other_store(&self) -> PgOutboxStore {
        PgOutboxStore::with_config(self.db.new_pool(3).await, self.config.clone()).unwrap()
    }

    async fn enqueue(&self, topic: &Topic, events: &[Event]) -> Vec<i64> {
        let to = self.config.destinations.clone();
        self.enqueue_to(topic, events, &to).await
    }

    async fn enqueue_to(&self, topic: &Topic, events: &[Event], to: &[Destination]) -> Vec<i64> {
        let mut tx = self.db.pool.begin().await.unwrap();
        let mut seqs = Vec::new();
        for e in events {
            seqs.push(self.outbox.enqueue_to(&mut tx, topic, e, to).await.unwrap());
        }
        tx.commit().await.unwrap();
        seqs
    }

    async fn enqueue_rolled_back(&self, topic: &Topic, event: &Event) {
        let mut tx = self.db.pool.begin().await.unwrap();
        self.outbox.enqueue(&mut tx, topic, event).await.unwrap();
        tx.rollback().await.unwrap();
    }

    async fn insert_garbage(&self, topic: &str, key: &str) {
        let t = self.config.qualified_table();
        let d = self.config.qualified_delivery_table();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH e AS (INSERT INTO {t} (topic, partition_key, event_type, destinations, event) \
               VALUES ($1, $2, 'x', ARRAY['default'], '{{\"not\":\"an event\"}}') RETURNING seq) \
             INSERT INTO {d} (seq, destination, topic, partition_key) SELECT seq, 'default', $1, $2 FROM e"
        )))
        .bind(topic)
        .bind(key)
        .execute(&self.db.pool)
        .await
        .unwrap();
    }

    async fn backdate(&self, secs: i64) {
        let t = self.config.qualified_table();
        let d = self.config.qualified_delivery_table();
        let i = self.config.qualified_inbox_table();
        for sql in [
            format!("UPDATE {t} SET created_at = created_at - $1 * interval '1 second'"),
            format!("UPDATE {d} SET failed_at = failed_at - $1 * interval '1 second'"),
            format!("UPDATE {i} SET received_at = received_at - $1 * interval '1 second'"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(secs as f64)
                .execute(&self.db.pool)
                .await
                .unwrap();
        }
    }

    async fn event_rows(&self) -> i64 {
        let t = self.config.qualified_table();
        pg_scalar(&self.db.pool, &format!("SELECT count(*) FROM {t}")).await
    }

    async fn delivery_rows(&self) -> i64 {
        let d = self.config.qualified_delivery_table();
        pg_scalar(&self.db.pool, &format!("SELECT count(*) FROM {d}")).await
    }

    async fn inbox_record(&self, consumer: &str, event: &Event) -> Received {
        let inbox =
            postgres::Inbox::with_config(self.db.pool.clone(), consumer, &self.config).unwrap();
        let mut tx = self.db.pool.begin().await.unwrap();
        let r = inbox.record(&mut tx, event).await.unwrap();
        tx.commit().await.unwrap();
        r
    }

    async fn inbox_rows(&self) -> i64 {
        let i = self.config.qualified_inbox_table();
        pg_scalar(&self.db.pool, &format!("SELECT count(*) FROM {i}")).await
    }
}

/// SQLite: a fresh database file in WAL mode per test.
#[derive(Debug)]
pub struct SqliteFixture {
    /// The pool.
    pub pool: SqlitePool,
    /// The config.
    pub config: OutboxConfig,
    path: std::path::PathBuf,
    outbox: sqlite::Outbox,
}

impl Drop for SqliteFixture {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }
}

impl SqliteFixture {
    /// A pool on the fixture's file (as another process would open it).
    pub async fn new_pool(&self, max: u32) -> SqlitePool {
        sqlite_pool(&self.path, max).await
    }
}

/// A pool on a SQLite file in WAL mode with a 10 s busy timeout.
pub async fn sqlite_pool(path: &std::path::Path, max: u32) -> SqlitePool {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    SqlitePoolOptions::new()
        .max_connections(max)
        .connect_with(opts)
        .await
        .unwrap()
}

async fn lite_scalar(pool: &SqlitePool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[async_trait]
impl OutboxFixture for SqliteFixture {
    type Store = SqliteOutboxStore;

    async fn setup_with(config: OutboxConfig) -> Self {
        let path = std::env::temp_dir().join(format!(
            "windlass-outbox-{}.db",
            uuid::Uuid::new_v4().simple()
        ));
        let pool = sqlite_pool(&path, 4).await;
        sqlite::migrate_with(&pool, &config).await.unwrap();
        sqlite::migrate_with(&pool, &config).await.unwrap(); // idempotent
        Self {
            outbox: sqlite::Outbox::with_config(config.clone()).unwrap(),
            pool,
            config,
            path,
        }
    }

    fn store(&self) -> SqliteOutboxStore {
        SqliteOutboxStore::with_config(self.pool.clone(), self.config.clone()).unwrap()
    }

    async fn other_store(&self) -> SqliteOutboxStore {
        SqliteOutboxStore::with_config(self.new_pool(2).await, self.config.clone()).unwrap()
    }

    async fn enqueue(&self, topic: &Topic, events: &[Event]) -> Vec<i64> {
        let to = self.config.destinations.clone();
        self.enqueue_to(topic, events, &to).await
    }

    async fn enqueue_to(&self, topic: &Topic, events: &[Event], to: &[Destination]) -> Vec<i64> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        let mut seqs = Vec::new();
        for e in events {
            seqs.push(self.outbox.enqueue_to(&mut tx, topic, e, to).await.unwrap());
        }
        tx.commit().await.unwrap();
        seqs
    }

    async fn enqueue_rolled_back(&self, topic: &Topic, event: &Event) {
        let mut tx = self.pool.begin().await.unwrap();
        self.outbox.enqueue(&mut tx, topic, event).await.unwrap();
        tx.rollback().await.unwrap();
    }

    async fn insert_garbage(&self, topic: &str, key: &str) {
        let t = self.config.qualified_table();
        let d = self.config.qualified_delivery_table();
        let seq: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {t} (topic, partition_key, event_type, destinations, event, created_at) \
             VALUES (?1, ?2, 'x', 'default', '{{\"not\":\"an event\"}}', 0) RETURNING seq"
        )))
        .bind(topic)
        .bind(key)
        .fetch_one(&self.pool)
        .await
        .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {d} (seq, destination, topic, partition_key, next_attempt_at) VALUES (?1, 'default', ?2, ?3, 0)"
        )))
        .bind(seq)
        .bind(topic)
        .bind(key)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    async fn backdate(&self, secs: i64) {
        let ms = secs * 1000;
        let t = self.config.qualified_table();
        let d = self.config.qualified_delivery_table();
        let i = self.config.qualified_inbox_table();
        for sql in [
            format!("UPDATE {t} SET created_at = created_at - ?1"),
            format!("UPDATE {d} SET failed_at = failed_at - ?1"),
            format!("UPDATE {i} SET received_at = received_at - ?1"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(ms)
                .execute(&self.pool)
                .await
                .unwrap();
        }
    }

    async fn event_rows(&self) -> i64 {
        let t = self.config.qualified_table();
        lite_scalar(&self.pool, &format!("SELECT count(*) FROM {t}")).await
    }

    async fn delivery_rows(&self) -> i64 {
        let d = self.config.qualified_delivery_table();
        lite_scalar(&self.pool, &format!("SELECT count(*) FROM {d}")).await
    }

    async fn inbox_record(&self, consumer: &str, event: &Event) -> Received {
        let inbox = sqlite::Inbox::with_config(self.pool.clone(), consumer, &self.config).unwrap();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        let r = inbox.record(&mut tx, event).await.unwrap();
        tx.commit().await.unwrap();
        r
    }

    async fn inbox_rows(&self) -> i64 {
        let i = self.config.qualified_inbox_table();
        lite_scalar(&self.pool, &format!("SELECT count(*) FROM {i}")).await
    }
}
