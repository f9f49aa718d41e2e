//! The SQLite backend: the embedded outbox (no server), for the quickstart, tests and small
//! single-node services. Same layout, API and guarantees as Postgres (timestamps as Unix epoch
//! milliseconds), with these differences:
//! - SQLite has one writer at a time: a writer's transaction holds the write lock until it
//!   commits, so per key `seq` order is commit order without any extra lock.
//! - Claims and marks are short transactions and nothing is held while publishing, so
//!   application writers wait at most for one short claim or mark (never for a slow bus).
//! - No LISTEN: relays poll (adaptively) and wake at once on an enqueue of their own process.
//! - No schema: [`OutboxConfig::schema`] must be `None`.

mod inbox;
mod outbox;
mod store;

pub use inbox::Inbox;
pub use outbox::Outbox;
pub use store::{SqliteOutboxStore, SqliteWaiter};

use sqlx::SqlitePool;

use crate::config::{OutboxConfig, render_migration};
use crate::error::{Error, Result};

/// The shipped SQLite migration for the default names. Idempotent.
pub const MIGRATION_0001: &str = include_str!("../../migrations/sqlite/0001_outbox.sql");

pub(crate) fn check(config: &OutboxConfig) -> Result<()> {
    config.validate()?;
    if config.schema.is_some() {
        return Err(Error::Config(
            "SQLite has no schemas; leave OutboxConfig::schema unset".into(),
        ));
    }
    if config.jsonb_column || config.debezium_columns {
        return Err(Error::Config(
            "the jsonb and Debezium columns are Postgres features".into(),
        ));
    }
    Ok(())
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
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
