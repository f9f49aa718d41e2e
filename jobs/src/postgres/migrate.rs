//! Schema migrations: the SQL files shipped in `jobs/migrations/`, applied in order under an
//! advisory lock, each once (recorded in `windlass_jobs_migrations`). The files are idempotent
//! too, so running them with another migrator is fine.

use sqlx::PgPool;

use crate::error::{Error, Result};

/// The migrations, `(version, name, sql)`, in order. Apply them yourself if you prefer your own
/// migrator.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "windlass_jobs",
        include_str!("../../migrations/0001_windlass_jobs.sql"),
    ),
    (
        2,
        "fenced_attempts",
        include_str!("../../migrations/0002_fenced_attempts.sql"),
    ),
    (
        3,
        "maintenance_leader",
        include_str!("../../migrations/0003_maintenance_leader.sql"),
    ),
    (
        4,
        "queue_limits",
        include_str!("../../migrations/0004_queue_limits.sql"),
    ),
    (
        5,
        "trace_context",
        include_str!("../../migrations/0005_trace_context.sql"),
    ),
    (
        6,
        "console_counts_and_lists",
        include_str!("../../migrations/0006_console_counts_and_lists.sql"),
    ),
    (
        7,
        "rate_and_partition_limits",
        include_str!("../../migrations/0007_rate_and_partition_limits.sql"),
    ),
    (
        8,
        "notify_limiter",
        include_str!("../../migrations/0008_notify_limiter.sql"),
    ),
];

/// Advisory lock key: serializes concurrent `migrate` calls (several workers starting at once).
const LOCK_KEY: i64 = 0x7769_6e64_6a6f_6273; // "windjobs"

/// Creates or upgrades the job tables. Safe to call from many processes at once and on every
/// start.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    let mut tx = pool.begin().await.map_err(|e| Error::pg("migrate", e))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *tx)
        .await
        .map_err(|e| Error::pg("migrate", e))?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS windlass_jobs_migrations ( \
             version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&mut *tx)
    .await
    .map_err(|e| Error::pg("migrate", e))?;
    let applied: Vec<i32> = sqlx::query_scalar("SELECT version FROM windlass_jobs_migrations")
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| Error::pg("migrate", e))?;
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        sqlx::raw_sql(*sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::pg("migrate", e))?;
        sqlx::query("INSERT INTO windlass_jobs_migrations (version, name) VALUES ($1, $2)")
            .bind(version)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::pg("migrate", e))?;
    }
    tx.commit().await.map_err(|e| Error::pg("migrate", e))?;
    Ok(())
}
