//! Postgres store: the `windlass_jobs` table (see `migrations/` in the crate), batch fetch with
//! `FOR UPDATE SKIP LOCKED`, one `UPDATE ... FROM unnest(...)` for many finished jobs, `unnest`
//! or COPY bulk insert, and LISTEN/NOTIFY wake-ups (coalesced per queue by the store's limiter,
//! or one per queue per transaction from the insert trigger) with polling as the fallback. Heartbeats run on a connection of their own, outside the pool, so
//! jobs holding every pooled connection cannot starve them.

mod by_id;
mod console;
mod copy;
mod insert;
mod limits;
mod listen;
mod migrate;
mod notify;
mod rows;
mod search;
mod tx;

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio::sync::broadcast;
use windlass_core::TenantScope;

pub use insert::DEFAULT_COPY_THRESHOLD;
pub use limits::{create_partition_index, drop_partition_index, partition_index_name};
pub use migrate::{MIGRATIONS, migrate};
pub use notify::DEFAULT_NOTIFY_INTERVAL;
use rows::{FETCHED_COLUMNS, RECORD_COLUMNS, fetched, org, record, token_arrays};
pub use search::{ARGS_SEARCH_INDEX, create_args_search_index, drop_args_search_index};

use crate::error::{Error, Result};
use crate::model::{
    AttemptToken, Enqueued, FetchedJob, Finish, HeartbeatReply, JobFilter, JobId, JobRecord,
    JobState, MAX_RECORDED_ERRORS, NewJob, QueueCount, Rescued,
};
use crate::store::JobStore;

/// The NOTIFY channel the insert trigger and the store use.
pub const CHANNEL: &str = "windlass_jobs";

/// The former name of [`PgJobStore`].
#[deprecated(
    note = "renamed to `PgJobStore`, after the other stores (`PgOutboxStore`, `RedisCacheStore`)"
)]
pub type PgStore = PgJobStore;

/// The Postgres job store. Cheap to clone.
///
/// Run [`migrate`] once (or apply the crate's SQL files with your own migrator) before use.
///
/// Besides the pool, a store opens one connection of its own for heartbeats (with the pool's
/// connect options), plus one for LISTEN while a worker subscribes.
#[derive(Debug, Clone)]
pub struct PgJobStore {
    pool: PgPool,
    listen: bool,
    wake: Arc<Mutex<Option<broadcast::Sender<String>>>>,
    heartbeat_conn: Arc<tokio::sync::Mutex<Option<PgConnection>>>,
    /// Queue limits, re-read at most every second.
    limits: Arc<Mutex<limits::LimitCache>>,
    /// Coalesces the NOTIFYs of this store's own inserts.
    notify_limiter: Arc<notify::NotifyLimiter>,
    /// Batches of at least this many rows go in with COPY.
    copy_threshold: usize,
}

impl PgJobStore {
    /// A store on `pool`, with LISTEN/NOTIFY wake-ups.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            listen: true,
            wake: Arc::new(Mutex::new(None)),
            heartbeat_conn: Arc::new(tokio::sync::Mutex::new(None)),
            limits: Arc::new(Mutex::new(limits::LimitCache::default())),
            notify_limiter: Arc::new(notify::NotifyLimiter::new(DEFAULT_NOTIFY_INTERVAL)),
            copy_threshold: DEFAULT_COPY_THRESHOLD,
        }
    }

    /// Coalesces the NOTIFYs of this store's inserts ([`JobStore::insert`], so
    /// `Jobs::enqueue` and `enqueue_many`): at most one per queue per `interval` (default
    /// [`DEFAULT_NOTIFY_INTERVAL`], 10 ms), sent in the inserting transaction, and one trailing
    /// NOTIFY once the interval has passed for the inserts it held back. A worker hears of every
    /// job at most about `interval` after its commit (polling remains the fallback).
    /// `Duration::ZERO` sends one per queue per insert. Inserts inside a caller's transaction
    /// ([`PgJobStore::insert_in`]) are not limited: the insert trigger notifies at its commit.
    pub fn notify_interval(mut self, interval: Duration) -> Self {
        self.notify_limiter = Arc::new(notify::NotifyLimiter::new(interval));
        self
    }

    /// Batches of at least `rows` jobs are inserted with COPY instead of `INSERT ... unnest`
    /// statements (default [`DEFAULT_COPY_THRESHOLD`]); `usize::MAX` never uses COPY. Both are
    /// atomic and skip duplicates of unique keys the same way.
    pub fn copy_threshold(mut self, rows: usize) -> Self {
        self.copy_threshold = rows.max(1);
        self
    }

    /// Turns LISTEN off (e.g. behind PgBouncer in transaction mode): workers then poll.
    pub fn without_listen(mut self) -> Self {
        self.listen = false;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Inserts jobs inside the caller's transaction (or on any connection): they become
    /// visible, and workers are notified, when the caller commits.
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// use windlass_jobs::{EnqueueOptions, postgres::PgJobStore};
    ///
    /// let mut tx = pool.begin().await?;
    /// // ... the business write on &mut *tx ...
    /// let job = EnqueueOptions::new().build_raw("send_invoice", serde_json::json!({"id": 42}))?;
    /// PgJobStore::insert_in(&mut tx, vec![job]).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// # let _ = demo;
    /// ```
    ///
    /// Atomic at any size: the rows go in under a savepoint (a transaction of its own on a
    /// connection outside one), with COPY from [`DEFAULT_COPY_THRESHOLD`] rows, else 10 000 per
    /// statement; if the database refuses any, none is inserted and the savepoint is rolled
    /// back, so the caller's transaction stays usable. The insert trigger wakes workers at the
    /// caller's commit (one NOTIFY per queue per transaction, not limited).
    pub async fn insert_in(conn: &mut PgConnection, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut sp = conn.begin().await.map_err(|e| Error::pg("insert", e))?;
        match insert::insert_all(&mut sp, &jobs, DEFAULT_COPY_THRESHOLD).await {
            Ok(out) => {
                sp.commit().await.map_err(|e| Error::pg("insert", e))?;
                Ok(out)
            }
            Err(e) => {
                let _ = sp.rollback().await;
                Err(e)
            }
        }
    }

    async fn notify(&self, queues: &[String]) -> Result<()> {
        if queues.is_empty() {
            return Ok(());
        }
        sqlx::query("SELECT pg_notify($1, q) FROM (SELECT DISTINCT unnest($2::text[]) AS q) s")
            .bind(CHANNEL)
            .bind(queues)
            .execute(&self.pool)
            .await
            .map_err(|e| Error::pg("notify", e))?;
        Ok(())
    }
}

/// The claim of a fetch of an unlimited queue, one statement: due jobs of queue `$1` (of kinds
/// `$4`, all when empty) in priority, `run_at`, id order, at most `$2` of them, skipping rows
/// other fetches hold, moved to `running` for worker `$3`; returns [`FETCHED_COLUMNS`] for
/// [`fetched`]. Limited queues claim with the statements of `limits`.
fn claim_sql() -> String {
    format!(
        "WITH next AS ( \
             SELECT id FROM windlass_jobs \
              WHERE queue = $1 AND state IN ('available', 'scheduled', 'retryable') AND run_at <= now() \
                AND (cardinality($4::text[]) = 0 OR kind = ANY($4)) \
                AND NOT EXISTS (SELECT 1 FROM windlass_job_queues WHERE name = $1 AND paused) \
              ORDER BY priority, run_at, id \
              LIMIT $2 \
              FOR UPDATE SKIP LOCKED) \
         UPDATE windlass_jobs j \
            SET state = 'running', attempt = j.attempt + 1, attempted_at = now(), \
                heartbeat_at = now(), locked_by = $3 \
           FROM next WHERE j.id = next.id \
         RETURNING {FETCHED_COLUMNS}"
    )
}

fn interval_secs(d: Duration) -> f64 {
    d.as_secs_f64().min(1e9)
}

#[async_trait]
impl JobStore for PgJobStore {
    async fn insert(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut queues: Vec<String> = jobs.iter().map(|j| j.queue.as_str().to_owned()).collect();
        queues.sort_unstable();
        queues.dedup();
        let (lead, later) = self.notify_limiter.split(queues);
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| Error::pg("insert", e))?;
        // One statement, or one transaction: atomic at any size.
        let out = insert::insert_own(&mut conn, jobs, &lead, self.copy_threshold).await?;
        self.notify_limiter.after_commit(&self.pool, later);
        Ok(out)
    }

    async fn fetch(
        &self,
        queue: &str,
        kinds: &[String],
        limit: usize,
        worker: &str,
    ) -> Result<Vec<FetchedJob>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        if let Some(limits) = self.limits_of(queue).await? {
            return self
                .fetch_limited(queue, kinds, limit, worker, &limits)
                .await;
        }
        static CLAIM: LazyLock<String> = LazyLock::new(claim_sql);
        let rows = sqlx::query(sqlx::AssertSqlSafe(CLAIM.as_str()))
            .bind(queue)
            .bind(limit.min(i32::MAX as usize) as i64)
            .bind(worker)
            .bind(kinds)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::pg("fetch", e))?;
        Ok(fetched(&rows))
    }
    async fn finish(&self, worker: &str, finished: &[Finish]) -> Result<u64> {
        if finished.is_empty() {
            return Ok(0);
        }
        let n = finished.len();
        let mut ids = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut states = Vec::with_capacity(n);
        let mut run_ats = Vec::with_capacity(n);
        let mut errors = Vec::with_capacity(n);
        let mut deltas = Vec::with_capacity(n);
        let mut interrupted = Vec::with_capacity(n);
        for f in finished {
            ids.push(f.id);
            attempts.push(f.attempt);
            states.push(f.outcome.state().as_str());
            run_ats.push(f.outcome.run_at());
            errors.push(f.outcome.error().map(sqlx::types::Json));
            deltas.push(f.outcome.attempt_delta());
            interrupted.push(f.interrupted);
        }
        // A stop requested by id (cancel / discard) wins over a retry or a snooze, and over any
        // outcome of an interrupted attempt (its token fired: it may have returned `Ok` only
        // because it was asked to stop, whoever asked); an attempt that ended on its own keeps
        // a success, a discard or a cancel of its own.
        let done = sqlx::query(
            "UPDATE windlass_jobs j \
                SET state = CASE WHEN j.stop_requested IS NOT NULL AND (u.state = 'retryable' OR u.interrupted) \
                                 THEN j.stop_requested ELSE u.state END, \
                    attempt = j.attempt + CASE WHEN j.stop_requested IS NOT NULL AND (u.state = 'retryable' OR u.interrupted) \
                                               THEN 0 ELSE u.delta END, \
                    run_at = coalesce(u.run_at, j.run_at), \
                    errors = CASE WHEN u.error IS NULL THEN j.errors \
                                  WHEN jsonb_typeof(j.errors) = 'array' AND jsonb_array_length(j.errors) >= $8 \
                                  THEN (j.errors - 0) || jsonb_build_array(u.error) \
                                  ELSE j.errors || jsonb_build_array(u.error) END \
                             || CASE WHEN j.stop_requested IS NOT NULL AND (u.state = 'retryable' OR u.interrupted) \
                                       AND u.state <> j.stop_requested \
                                     THEN jsonb_build_array(jsonb_build_object('attempt', j.attempt, 'at', now(), \
                                          'worker', $7::text, 'error', j.stop_requested || ' by request while running')) \
                                     ELSE '[]'::jsonb END, \
                    finalized_at = CASE WHEN u.state IN ('completed', 'cancelled', 'discarded') \
                                          OR (j.stop_requested IS NOT NULL AND (u.state = 'retryable' OR u.interrupted)) \
                                        THEN now() END, \
                    locked_by = NULL, \
                    stop_requested = NULL \
               FROM unnest($1::int8[], $2::int4[], $3::text[], $4::timestamptz[], $5::jsonb[], $6::int4[], $9::bool[]) \
                    AS u(id, attempt, state, run_at, error, delta, interrupted) \
              WHERE j.id = u.id AND j.state = 'running' AND j.locked_by = $7 AND j.attempt = u.attempt",
        )
        .bind(&ids)
        .bind(&attempts)
        .bind(&states)
        .bind(&run_ats)
        .bind(&errors)
        .bind(&deltas)
        .bind(worker)
        .bind(MAX_RECORDED_ERRORS as i32)
        .bind(&interrupted)
        .execute(&self.pool)
        .await
        .map_err(|e| Error::pg("complete", e))?;
        Ok(done.rows_affected())
    }

    async fn heartbeat(&self, worker: &str, attempts: &[AttemptToken]) -> Result<HeartbeatReply> {
        let (ids, nums) = token_arrays(attempts);
        // One heartbeat at a time on the dedicated connection. The connection is taken out
        // while in use: if the caller gives up (timeout) mid-statement, it is dropped, and the
        // next heartbeat opens a fresh one.
        let mut slot = self.heartbeat_conn.lock().await;
        let mut conn = match slot.take() {
            Some(c) => c,
            None => PgConnection::connect_with(&self.pool.connect_options())
                .await
                .map_err(|e| Error::pg("heartbeat", e))?,
        };
        let rows: Vec<(JobId, i32, Option<String>)> = sqlx::query_as(
            "UPDATE windlass_jobs j SET heartbeat_at = now() \
               FROM unnest($1::int8[], $2::int4[]) AS u(id, attempt) \
              WHERE j.id = u.id AND j.attempt = u.attempt AND j.state = 'running' AND j.locked_by = $3 \
             RETURNING j.id, j.attempt, j.stop_requested",
        )
        .bind(&ids)
        .bind(&nums)
        .bind(worker)
        .fetch_all(&mut conn)
        .await
        .map_err(|e| Error::pg("heartbeat", e))?;
        *slot = Some(conn);
        let mut reply = HeartbeatReply::default();
        for (id, attempt, stop) in rows {
            let token = AttemptToken::new(id, attempt);
            reply.held.push(token);
            if let Some(state) = stop.as_deref().and_then(JobState::parse) {
                reply.stop.push((token, state));
            }
        }
        Ok(reply)
    }

    async fn rescue(&self, stale_after: Duration) -> Result<Vec<Rescued>> {
        let rows = sqlx::query(
            // The stale rows are picked once (a materialized CTE). As `j.id IN (SELECT ... LIMIT
            // ... FOR UPDATE SKIP LOCKED)` the planner could run the subquery once per running
            // row (a nested-loop semi join), each run walking the index entries of every row
            // version that was ever `running` and not vacuumed yet: on a busy queue that took
            // seconds to minutes per rescue and held back vacuum meanwhile.
            "WITH stale AS MATERIALIZED ( \
                SELECT id FROM windlass_jobs \
                 WHERE state = 'running' AND heartbeat_at < now() - make_interval(secs => $1) \
                 ORDER BY heartbeat_at \
                 LIMIT 1000 FOR UPDATE SKIP LOCKED) \
             UPDATE windlass_jobs j \
                SET state = CASE WHEN j.stop_requested IS NOT NULL THEN j.stop_requested \
                                 WHEN j.attempt >= j.max_attempts THEN 'discarded' ELSE 'retryable' END, \
                    finalized_at = CASE WHEN j.stop_requested IS NOT NULL OR j.attempt >= j.max_attempts \
                                        THEN now() END, \
                    run_at = now(), \
                    errors = j.errors || jsonb_build_array(jsonb_build_object( \
                        'attempt', j.attempt, 'at', now(), 'worker', j.locked_by, \
                        'error', 'rescued: worker ' || coalesce(j.locked_by, '?') || ' stopped heartbeating')), \
                    locked_by = NULL, \
                    stop_requested = NULL \
               FROM stale \
              WHERE j.id = stale.id AND j.state = 'running' \
             RETURNING j.id, j.queue, j.state",
        )
        .bind(interval_secs(stale_after))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::pg("rescue", e))?;
        let rescued: Vec<Rescued> = rows
            .iter()
            .map(|r| Rescued {
                id: r.get(0),
                queue: r.get(1),
                state: JobState::parse(r.get::<&str, _>(2)).unwrap_or(JobState::Retryable),
            })
            .collect();
        let queues: Vec<String> = rescued.iter().map(|r| r.queue.clone()).collect();
        self.notify(&queues).await?;
        Ok(rescued)
    }

    async fn release(&self, worker: &str, attempts: &[AttemptToken]) -> Result<u64> {
        if attempts.is_empty() {
            return Ok(0);
        }
        let (ids, nums) = token_arrays(attempts);
        let queues: Vec<String> = sqlx::query_scalar(
            "UPDATE windlass_jobs j \
                SET state = coalesce(j.stop_requested, 'available'), \
                    attempt = CASE WHEN j.stop_requested IS NULL THEN j.attempt - 1 ELSE j.attempt END, \
                    finalized_at = CASE WHEN j.stop_requested IS NOT NULL THEN now() END, \
                    run_at = now(), locked_by = NULL, stop_requested = NULL \
               FROM unnest($1::int8[], $2::int4[]) AS u(id, attempt) \
              WHERE j.id = u.id AND j.attempt = u.attempt AND j.state = 'running' AND j.locked_by = $3 \
             RETURNING j.queue",
        )
        .bind(&ids)
        .bind(&nums)
        .bind(worker)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::pg("release", e))?;
        self.notify(&queues).await?;
        Ok(queues.len() as u64)
    }

    async fn next_due(&self, queue: &str, kinds: &[String]) -> Result<Option<DateTime<Utc>>> {
        let due = sqlx::query_scalar(
            "SELECT min(run_at) FROM windlass_jobs \
              WHERE queue = $1 AND state IN ('available', 'scheduled', 'retryable') \
                AND (cardinality($2::text[]) = 0 OR kind = ANY($2)) \
                AND NOT EXISTS (SELECT 1 FROM windlass_job_queues WHERE name = $1 AND paused)",
        )
        .bind(queue)
        .bind(kinds)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| Error::pg("next_due", e))?;
        Ok(self.hinted(queue, due))
    }

    async fn cancel(&self, scope: &TenantScope, id: JobId) -> Result<bool> {
        self.stop(scope, id, JobState::Cancelled, "cancel").await
    }

    async fn retry_now(&self, scope: &TenantScope, id: JobId) -> Result<bool> {
        self.retry_now_by_id(scope, id).await
    }

    async fn discard(&self, scope: &TenantScope, id: JobId) -> Result<bool> {
        self.stop(scope, id, JobState::Discarded, "discard").await
    }

    async fn prune(&self, older_than: Duration) -> Result<u64> {
        let mut total = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM windlass_jobs WHERE id IN ( \
                     SELECT id FROM windlass_jobs \
                      WHERE finalized_at < now() - make_interval(secs => $1) LIMIT 10000)",
            )
            .bind(interval_secs(older_than))
            .execute(&self.pool)
            .await
            .map_err(|e| Error::pg("prune", e))?;
            total += done.rows_affected();
            if done.rows_affected() < 10_000 {
                // Partitions idle as long are forgotten (the round-robin treats a partition it
                // does not know as never served, which such a partition nearly is).
                sqlx::query(
                    "DELETE FROM windlass_job_partitions \
                      WHERE served_at < now() - make_interval(secs => $1)",
                )
                .bind(interval_secs(older_than))
                .execute(&self.pool)
                .await
                .map_err(|e| Error::pg("prune", e))?;
                return Ok(total);
            }
        }
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        windlass_core::Name::parse("queue", queue)?;
        sqlx::query(
            "INSERT INTO windlass_job_queues (name, paused) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET paused = EXCLUDED.paused, updated_at = now()",
        )
        .bind(queue)
        .bind(paused)
        .execute(&self.pool)
        .await
        .map_err(|e| Error::pg("pause", e))?;
        if !paused {
            self.notify(&[queue.to_owned()]).await?;
        }
        Ok(())
    }

    async fn set_global_limit(&self, queue: &str, limit: Option<u32>) -> Result<()> {
        crate::store::validate_limit(limit)?;
        let limits = crate::QueueLimits {
            global: limit,
            ..Default::default()
        };
        self.write_limits(queue, &limits, true).await
    }

    async fn set_queue_limits(&self, queue: &str, limits: &crate::QueueLimits) -> Result<()> {
        self.write_limits(queue, limits, false).await
    }

    async fn queue_limits(&self) -> Result<Vec<(String, crate::QueueLimits)>> {
        self.read_limits().await
    }

    async fn paused_queues(&self) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT name FROM windlass_job_queues WHERE paused ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::pg("paused_queues", e))
    }

    async fn global_limits(&self) -> Result<Vec<(String, u32)>> {
        let rows: Vec<(String, i32)> = sqlx::query_as(
            "SELECT name, global_limit FROM windlass_job_queues WHERE global_limit IS NOT NULL ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::pg("global_limits", e))?;
        // set_global_limit writes 1..=i32::MAX only.
        Ok(rows
            .into_iter()
            .map(|(q, n)| (q, n.max(0) as u32))
            .collect())
    }

    async fn get(&self, scope: &TenantScope, id: JobId) -> Result<Option<JobRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RECORD_COLUMNS} FROM windlass_jobs WHERE id = $1 AND ($2::text IS NULL OR org_id = $2)"
        )))
        .bind(id)
        .bind(org(scope))
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| Error::pg("get", e))?;
        row.as_ref().map(record).transpose()
    }

    async fn list(&self, scope: &TenantScope, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        console::list(&self.pool, scope, filter).await
    }

    async fn counts(&self, scope: &TenantScope) -> Result<Vec<QueueCount>> {
        let rows = sqlx::query(
            "SELECT queue, state, count(*) FROM windlass_jobs WHERE ($1::text IS NULL OR org_id = $1) \
              GROUP BY queue, state ORDER BY 1, 2",
        )
        .bind(org(scope))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::pg("counts", e))?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(QueueCount {
                    queue: r.get(0),
                    state: JobState::parse(r.get::<&str, _>(1))?,
                    count: r.get(2),
                })
            })
            .collect())
    }

    async fn refresh_counts(&self) -> Result<()> {
        console::refresh_counts(&self.pool).await
    }

    async fn count_snapshot(&self, scope: &TenantScope) -> Result<crate::CountSnapshot> {
        console::count_snapshot(&self.pool, scope).await
    }

    async fn args_search_indexed(&self) -> Result<bool> {
        search::indexed(&self.pool).await
    }

    async fn try_lead(&self, worker: &str, ttl: Duration) -> Result<bool> {
        let holder: Option<String> = sqlx::query_scalar(
            "INSERT INTO windlass_jobs_leader (name, holder, expires_at) \
             VALUES ('maintenance', $1, now() + make_interval(secs => $2)) \
             ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
              WHERE windlass_jobs_leader.holder = EXCLUDED.holder OR windlass_jobs_leader.expires_at < now() \
             RETURNING holder",
        )
        .bind(worker)
        .bind(interval_secs(ttl))
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| Error::pg("lead", e))?;
        Ok(holder.is_some())
    }

    async fn subscribe(&self) -> Result<Option<broadcast::Receiver<String>>> {
        if !self.listen {
            return Ok(None);
        }
        let mut wake = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        match wake.as_ref() {
            Some(tx) if tx.receiver_count() > 0 => Ok(Some(tx.subscribe())),
            _ => {
                let (tx, rx) = broadcast::channel(4096);
                listen::spawn_listener(self.pool.clone(), tx.clone());
                *wake = Some(tx);
                Ok(Some(rx))
            }
        }
    }
}
