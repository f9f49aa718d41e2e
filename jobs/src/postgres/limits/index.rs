//! The opt-in partition index of partitioned queues: `(queue, <partition>, priority, run_at,
//! id)` over waiting jobs. With it, a partitioned fetch finds the partitions with waiting jobs
//! with one index probe each and reads only the jobs it claims; without it, the fetch is as
//! correct but reads the queue's waiting jobs once per partition. Opt-in because every
//! insert and every state change of a waiting job also updates it (all queues share the table).

use sqlx::PgPool;

use super::claim::part_expr;
use crate::error::{Error, Result};
use crate::limits::PartitionBy;

/// The name of the partition index for `by`: `windlass_jobs_part_org_id`,
/// `windlass_jobs_part_kind`, `windlass_jobs_part_args_<field>` (a long field is cut and
/// given a hash suffix, within Postgres's 63 bytes).
pub fn partition_index_name(by: &PartitionBy) -> String {
    match by {
        PartitionBy::Org => "windlass_jobs_part_org_id".to_owned(),
        PartitionBy::Kind => "windlass_jobs_part_kind".to_owned(),
        PartitionBy::Arg(f) if f.len() <= 32 => format!("windlass_jobs_part_args_{f}"),
        PartitionBy::Arg(f) => {
            // FNV-1a: stable across builds and platforms.
            let h = f.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            format!("windlass_jobs_part_args_{}_{:08x}", &f[..24], h as u32)
        }
    }
}

/// Creates the partition index for `by` (`CREATE INDEX CONCURRENTLY IF NOT EXISTS`, which does
/// not block writes while it builds; an invalid index left by an interrupted build is dropped
/// first). Idempotent. One index serves every queue partitioned the same way.
pub async fn create_partition_index(pool: &PgPool, by: &PartitionBy) -> Result<()> {
    crate::QueueLimits::new()
        .partition_by(by.clone())
        .validate()?;
    let name = partition_index_name(by);
    let err = |e| Error::pg("create_partition_index", e);
    let valid: Option<bool> = sqlx::query_scalar(
        "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass($1)",
    )
    .bind(&name)
    .fetch_optional(pool)
    .await
    .map_err(err)?;
    if valid == Some(false) {
        drop_partition_index(pool, by).await?;
    }
    // Outside any transaction block (CONCURRENTLY requires it). The name and the expression
    // hold only validated characters.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS \"{name}\" ON windlass_jobs \
             (queue, ({}), priority, run_at, id) \
          WHERE state IN ('available', 'scheduled', 'retryable')",
        part_expr(by)
    )))
    .execute(pool)
    .await
    .map_err(err)?;
    Ok(())
}

/// Drops the partition index for `by`, if any (`DROP INDEX CONCURRENTLY`).
pub async fn drop_partition_index(pool: &PgPool, by: &PartitionBy) -> Result<()> {
    crate::QueueLimits::new()
        .partition_by(by.clone())
        .validate()?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP INDEX CONCURRENTLY IF EXISTS \"{}\"",
        partition_index_name(by)
    )))
    .execute(pool)
    .await
    .map_err(|e| Error::pg("drop_partition_index", e))?;
    Ok(())
}
