//! The Postgres store: write side ([`Outbox`]), relay store ([`PgStore`]), [`Inbox`] and
//! [`migrate`].
//!
//! # How claiming keeps per-key order with several relays
//! A relay claims in one transaction that it holds while it publishes:
//! 1. **Heads**: pending, due rows with no older pending row of the same (`topic`,
//!    `partition_key`), `ORDER BY seq LIMIT n FOR UPDATE SKIP LOCKED`. Locking the head of a key
//!    makes the relay that key's owner: another relay skips the locked head, and every younger
//!    row of the key still has an older pending row (the head), so no one else can claim it.
//! 2. **Followers**: the younger pending rows of the keys it owns (`FOR UPDATE`, nobody else can
//!    hold them), cut at the first one not yet due, so a batch carries whole prefixes of keys.
//! 3. Publish, then mark published / failed / dead and commit. A crash or a killed connection
//!    rolls the claim back: the rows are pending again and are published again (at least once).
//!
//! A failed head gets `next_attempt_at` in the future; until then it is not due and its key
//! waits, while other keys go on. Rows without an ordering key are not ordered.

mod inbox;
mod outbox;
mod store;

pub use inbox::{Inbox, InboxHandler};
pub use outbox::Outbox;
pub use store::{PgStore, PgWaiter};

use sqlx::PgPool;

use crate::config::{OutboxConfig, render_migration};
use crate::error::{Error, Result};

/// The shipped migration for the default names (`windlass_outbox`, `windlass_inbox`), for users
/// who run their own migrator. Idempotent.
pub const MIGRATION_0001: &str = include_str!("../../migrations/postgres/0001_outbox.sql");

/// The migration SQL for `config` (schema and table names substituted).
pub fn migration_sql(config: &OutboxConfig) -> Result<String> {
    config.validate()?;
    Ok(render_migration(MIGRATION_0001, config))
}

/// Creates the outbox and inbox tables and their indexes with the default names, if missing.
/// Safe to call from several processes at once (serialised by an advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<()> {
    migrate_with(pool, &OutboxConfig::default()).await
}

/// [`migrate`] for a configured schema / table names.
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
