//! Queue limits in Postgres ([`QueueLimits`]: concurrency and rate, whole queue and per
//! partition, round-robin between partitions): a cache of the limits (re-read at most every
//! second), the operator's setters, and the fetch of a limited queue: one transaction
//! serialized per queue by an advisory lock, then one claim statement ([`claim`]) that counts
//! running jobs and logged starts, claims within what is left, and logs its own starts.

mod claim;
mod index;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::Row;

pub use index::{create_partition_index, drop_partition_index, partition_index_name};

use super::{PgJobStore, fetched};
use crate::error::{Error, Result};
use crate::limits::{PartitionBy, QueueLimits, RateLimit};
use crate::model::FetchedJob;

/// The limits of every limited queue, when they were read, and wake-up hints.
#[derive(Debug, Default)]
pub(super) struct LimitCache {
    read_at: Option<Instant>,
    by_queue: HashMap<String, QueueLimits>,
    /// Rate-limited queues whose last fetch here claimed nothing: when a slot may open.
    hints: HashMap<String, Instant>,
}

const COLUMNS: &str = "name, global_limit, rate_limit, rate_period_ms, partition_by, \
     partition_limit, partition_rate_limit, partition_rate_period_ms";

fn decode(r: &sqlx::postgres::PgRow) -> Result<(String, QueueLimits)> {
    let count = |i: usize| r.get::<Option<i32>, _>(i).map(|n| n.max(1) as u32);
    let rate = |n: usize, ms: usize| {
        Some(RateLimit::new(
            count(n)?,
            Duration::from_millis(r.get::<Option<i64>, _>(ms)?.max(1) as u64),
        ))
    };
    let partition = match r.get::<Option<&str>, _>(4) {
        None => None,
        Some(s) => Some(PartitionBy::from_stored(s).ok_or_else(|| {
            Error::pg(
                "limits",
                format!("unknown partition_by {s:?} in windlass_job_queues"),
            )
        })?),
    };
    let limits = QueueLimits {
        global: count(1),
        rate: rate(2, 3),
        partition,
        per_partition: count(5),
        per_partition_rate: rate(6, 7),
    };
    Ok((r.get(0), limits))
}

fn secs(rate: Option<RateLimit>) -> Option<f64> {
    rate.map(|r| r.period_ms() as f64 / 1000.0)
}

impl PgJobStore {
    /// The limits of `queue` (`None`: unlimited), from a cache refreshed at most every second.
    pub(super) async fn limits_of(&self, queue: &str) -> Result<Option<QueueLimits>> {
        let fresh = {
            let cache = self.limits.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .read_at
                .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
                .then(|| cache.by_queue.get(queue).cloned())
        };
        if let Some(limits) = fresh {
            return Ok(limits);
        }
        let by_queue: HashMap<String, QueueLimits> =
            self.read_limits().await?.into_iter().collect();
        let limits = by_queue.get(queue).cloned();
        let mut cache = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        cache.read_at = Some(Instant::now());
        cache.by_queue = by_queue;
        Ok(limits)
    }

    /// Every queue's limits, by name.
    pub(super) async fn read_limits(&self) -> Result<Vec<(String, QueueLimits)>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM windlass_job_queues \
              WHERE global_limit IS NOT NULL OR rate_limit IS NOT NULL OR partition_by IS NOT NULL \
              ORDER BY name"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::pg("limits", e))?;
        rows.iter().map(decode).collect()
    }

    /// Writes every limit of `queue` (or only the global one, `global_only`).
    pub(super) async fn write_limits(
        &self,
        queue: &str,
        limits: &QueueLimits,
        global_only: bool,
    ) -> Result<()> {
        windlass_core::Name::parse("queue", queue)?;
        limits.validate()?;
        let n = |v: Option<u32>| v.map(|n| n as i32);
        let ms = |r: Option<RateLimit>| r.map(|r| r.period_ms());
        let partitioned = limits.partition.is_some();
        sqlx::query(
            "INSERT INTO windlass_job_queues (name, global_limit, rate_limit, rate_period_ms, partition_by, \
                 partition_limit, partition_rate_limit, partition_rate_period_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (name) DO UPDATE SET global_limit = EXCLUDED.global_limit, \
                 rate_limit = CASE WHEN $9 THEN windlass_job_queues.rate_limit ELSE EXCLUDED.rate_limit END, \
                 rate_period_ms = CASE WHEN $9 THEN windlass_job_queues.rate_period_ms ELSE EXCLUDED.rate_period_ms END, \
                 partition_by = CASE WHEN $9 THEN windlass_job_queues.partition_by ELSE EXCLUDED.partition_by END, \
                 partition_limit = CASE WHEN $9 THEN windlass_job_queues.partition_limit ELSE EXCLUDED.partition_limit END, \
                 partition_rate_limit = CASE WHEN $9 THEN windlass_job_queues.partition_rate_limit \
                                        ELSE EXCLUDED.partition_rate_limit END, \
                 partition_rate_period_ms = CASE WHEN $9 THEN windlass_job_queues.partition_rate_period_ms \
                                            ELSE EXCLUDED.partition_rate_period_ms END, \
                 updated_at = now()",
        )
        .bind(queue)
        .bind(n(limits.global))
        .bind(n(limits.rate.map(|r| r.jobs)))
        .bind(ms(limits.rate))
        .bind(limits.partition.as_ref().map(PartitionBy::as_stored))
        .bind(n(limits.per_partition.filter(|_| partitioned)))
        .bind(n(limits.per_partition_rate.filter(|_| partitioned).map(|r| r.jobs)))
        .bind(ms(limits.per_partition_rate.filter(|_| partitioned)))
        .bind(global_only)
        .execute(&self.pool)
        .await
        .map_err(|e| Error::pg("limit", e))?;
        // This process sees it at once.
        let mut cache = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        cache.read_at = None;
        cache.hints.remove(queue);
        Ok(())
    }

    /// `due` pushed back to when a slot may open, when the last fetch of this rate-limited
    /// queue here claimed nothing (a hint for the worker's sleep; enforcement never reads it).
    pub(super) fn hinted(
        &self,
        queue: &str,
        due: Option<chrono::DateTime<Utc>>,
    ) -> Option<chrono::DateTime<Utc>> {
        let cache = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        let wait = cache
            .hints
            .get(queue)
            .and_then(|at| at.checked_duration_since(Instant::now()));
        match (due, wait) {
            (Some(d), Some(w)) => Some(d.max(Utc::now() + chrono::Duration::from_std(w).ok()?)),
            (due, _) => due,
        }
    }

    /// Fetch of a limited queue: one transaction serialized per queue by an advisory lock, then
    /// one claim statement (its snapshot, taken after the lock, sees every fetch committed
    /// before).
    pub(super) async fn fetch_limited(
        &self,
        queue: &str,
        kinds: &[String],
        limit: usize,
        worker: &str,
        limits: &QueueLimits,
    ) -> Result<Vec<FetchedJob>> {
        let err = |e| Error::pg("fetch", e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('windlass_jobs.limit:' || $1))")
            .bind(queue)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        let wanted = limit.min(i32::MAX as usize) as i64;
        let global = limits.global.map(i64::from);
        let rate = limits.rate.map(|r| i64::from(r.jobs));
        let horizon = limits.log_horizon().as_secs_f64();
        let rows = match &limits.partition {
            None => {
                sqlx::query(sqlx::AssertSqlSafe(claim::unpartitioned()))
                    .bind(queue)
                    .bind(wanted)
                    .bind(worker)
                    .bind(kinds)
                    .bind(global)
                    .bind(rate)
                    .bind(secs(limits.rate).unwrap_or(0.0))
                    .bind(horizon)
                    .fetch_all(&mut *tx)
                    .await
            }
            Some(by) => {
                sqlx::query(sqlx::AssertSqlSafe(claim::partitioned(by)))
                    .bind(queue)
                    .bind(wanted)
                    .bind(worker)
                    .bind(kinds)
                    .bind(global)
                    .bind(rate)
                    .bind(secs(limits.rate).unwrap_or(0.0))
                    .bind(limits.per_partition.map(i64::from))
                    .bind(limits.per_partition_rate.map(|r| i64::from(r.jobs)))
                    .bind(secs(limits.per_partition_rate).unwrap_or(0.0))
                    .bind(horizon)
                    .fetch_all(&mut *tx)
                    .await
            }
        }
        .map_err(err)?;
        let next_slot: Option<f64> = if rows.is_empty() && limits.has_rate() {
            sqlx::query_scalar(claim::NEXT_SLOT)
                .bind(queue)
                .bind(secs(limits.rate))
                .bind(secs(limits.per_partition_rate))
                .fetch_one(&mut *tx)
                .await
                .map_err(err)?
        } else {
            None
        };
        tx.commit().await.map_err(err)?;
        let mut cache = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        match next_slot.filter(|s| *s > 0.0) {
            Some(s) => {
                let at = Instant::now() + Duration::from_secs_f64(s.min(86_400.0));
                cache.hints.insert(queue.to_owned(), at);
            }
            None => {
                cache.hints.remove(queue);
            }
        }
        Ok(fetched(&rows))
    }
}
