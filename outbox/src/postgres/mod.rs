//! The Postgres backend: write side ([`Outbox`]), relay and operator store
//! ([`PgOutboxStore`]), [`Inbox`] and [`migrate`].
//!
//! # How order per key survives many writers and many relays
//! - **Writers**: `enqueue` takes a transaction-scoped advisory lock on the (`topic`, key) hash
//!   before inserting, so the writers of one key are serialised until commit: per key, `seq`
//!   order is enqueue order and commit order, and no row of a key can become visible below a
//!   row a relay already saw.
//! - **Relays** claim keys, not rows: a claim leases the oldest undelivered row of each free
//!   key (the head) and the rows behind it, with one statement that sets a lease expiry and a
//!   fencing token (compare-and-set: a head another relay leased in the meantime is not won).
//!   It publishes without holding any transaction, then marks the rows in one statement where
//!   every change is conditional on its token: a relay whose lease ended and whose keys were
//!   claimed since cannot mark anything.
//!
//! See `docs/outbox.md` for the whole design.

mod inbox;
mod outbox;
mod routes;
mod store;

pub use inbox::Inbox;
pub use outbox::Outbox;
pub use routes::{DEFAULT_ROUTES_TABLE, PgRouteStore};
pub use store::{PgOutboxStore, PgWaiter};

use sqlx::PgPool;

use crate::config::{OutboxConfig, render_migration};
use crate::error::{Error, Result};

/// The shipped migration for the default names (`windlass_outbox*`, `windlass_inbox`), for
/// users who run their own migrator. Idempotent.
pub const MIGRATION_0001: &str = include_str!("../../migrations/postgres/0001_outbox.sql");
/// The optional `event_json jsonb` column ([`OutboxConfig::jsonb_column`]).
pub const MIGRATION_JSONB: &str = include_str!("../../migrations/postgres/optional_jsonb.sql");
/// The optional Debezium outbox-router columns ([`OutboxConfig::debezium_columns`]).
pub const MIGRATION_DEBEZIUM: &str =
    include_str!("../../migrations/postgres/optional_debezium.sql");

/// The migration SQL for `config` (schema and table names substituted, optional columns
/// included when the config declares them).
pub fn migration_sql(config: &OutboxConfig) -> Result<String> {
    config.validate()?;
    let mut sql = render_migration(MIGRATION_0001, config);
    if config.jsonb_column {
        sql.push_str(&render_migration(MIGRATION_JSONB, config));
    }
    if config.debezium_columns {
        sql.push_str(&render_migration(MIGRATION_DEBEZIUM, config));
    }
    Ok(sql)
}

/// Creates the outbox tables and indexes with the default names, if missing. Safe to call
/// from several processes at once (serialised by an advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<()> {
    migrate_with(pool, &OutboxConfig::default()).await
}

/// [`migrate`] for a configured schema / table names / optional columns.
pub async fn migrate_with(pool: &PgPool, config: &OutboxConfig) -> Result<()> {
    let sql = migration_sql(config)?;
    let mut tx = pool.begin().await.map_err(|e| Error::db("migrate", e))?;
    // One key for every windlass-outbox migration: concurrent `CREATE ... IF NOT EXISTS` can
    // still collide in the catalog without it.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('windlass_outbox.migrate', 0))")
        .execute(&mut *tx)
        .await
        .map_err(|e| Error::db("migrate", e))?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *tx)
        .await
        .map_err(|e| Error::db("migrate", e))?;
    tx.commit().await.map_err(|e| Error::db("migrate", e))?;
    Ok(())
}
