//! The relay's view of the Postgres outbox: claims, settling, wake-ups, stats, dead rows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgListener, PgRow};
use sqlx::{PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::config::OutboxConfig;
use crate::error::{Error, Result};
use crate::store::{Claim, ClaimedRow, DeadEvent, FailedRow, OutboxStore, Stats, Waiter};

/// The Postgres outbox as the [`Relay`](crate::Relay) and operators use it.
///
/// Cheap to clone. See the [module docs](super) for how claims keep per-key order.
#[derive(Debug, Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    config: OutboxConfig,
    label: String,
    heads: Arc<str>,
    followers: Arc<str>,
    mark_published: Arc<str>,
    mark_failed: Arc<str>,
    stats: Arc<str>,
    list_dead: Arc<str>,
    requeue: Arc<str>,
    requeue_all: Arc<str>,
    retention: Arc<str>,
}

impl PgStore {
    /// A store on `pool` for the tables `config` names. Fails when a name is invalid.
    pub fn new(pool: PgPool, config: OutboxConfig) -> Result<Self> {
        config.validate()?;
        let t = config.qualified_table();
        let cols = "id, seq, topic, partition_key, event::text AS event, attempts, next_attempt_at <= now() AS due";
        let heads = format!(
            "SELECT {cols} FROM {t} o \
             WHERE o.status = 'pending' AND o.next_attempt_at <= now() \
               AND (o.partition_key IS NULL OR NOT EXISTS ( \
                    SELECT 1 FROM {t} p WHERE p.status = 'pending' AND p.topic = o.topic \
                      AND p.partition_key = o.partition_key AND p.seq < o.seq)) \
             ORDER BY o.seq LIMIT $1 FOR UPDATE SKIP LOCKED"
        );
        let followers = format!(
            "SELECT {cols} FROM {t} \
             WHERE status = 'pending' \
               AND (topic, partition_key) IN (SELECT * FROM unnest($1::text[], $2::text[])) \
               AND id <> ALL($3::uuid[]) \
             ORDER BY seq LIMIT $4 FOR UPDATE"
        );
        let mark_published = format!(
            "UPDATE {t} SET status = 'published', published_at = now(), attempts = attempts + 1, \
             last_error = NULL WHERE id = ANY($1::uuid[])"
        );
        let mark_failed = format!(
            "UPDATE {t} AS t SET attempts = t.attempts + 1, last_error = u.err, status = u.st, \
             next_attempt_at = now() + u.ms * interval '1 millisecond' \
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int8[]) AS u(id, err, st, ms) \
             WHERE t.id = u.id"
        );
        let stats = format!(
            "SELECT (SELECT count(*) FROM {t} WHERE status = 'pending') AS pending, \
                    (SELECT count(*) FROM {t} WHERE status = 'dead') AS dead, \
                    (SELECT count(*) FROM {t} WHERE status = 'published') AS published, \
                    (SELECT EXTRACT(EPOCH FROM now() - created_at)::float8 FROM {t} \
                      WHERE status = 'pending' ORDER BY seq LIMIT 1) AS lag"
        );
        let list_dead = format!(
            "SELECT id, seq, topic, partition_key, event::text AS event, attempts, last_error, created_at \
             FROM {t} WHERE status = 'dead' ORDER BY seq LIMIT $1"
        );
        let requeue = format!(
            "UPDATE {t} SET status = 'pending', attempts = 0, next_attempt_at = now() \
             WHERE id = $1 AND status = 'dead'"
        );
        let requeue_all = format!(
            "UPDATE {t} SET status = 'pending', attempts = 0, next_attempt_at = now() WHERE status = 'dead'"
        );
        let retention = format!(
            "DELETE FROM {t} WHERE status = 'published' AND published_at < now() - $1 * interval '1 millisecond'"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                label: config.label(),
                pool,
                config,
                heads: heads.into(),
                followers: followers.into(),
                mark_published: mark_published.into(),
                mark_failed: mark_failed.into(),
                stats: stats.into(),
                list_dead: list_dead.into(),
                requeue: requeue.into(),
                requeue_all: requeue_all.into(),
                retention: retention.into(),
            }),
        })
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The configuration.
    pub fn config(&self) -> &OutboxConfig {
        &self.inner.config
    }

    fn q(sql: &Arc<str>) -> sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments> {
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
    }
}

fn claimed(row: &PgRow) -> Result<(ClaimedRow, bool), sqlx::Error> {
    let attempts: i32 = row.try_get("attempts")?;
    Ok((
        ClaimedRow {
            id: row.try_get("id")?,
            seq: row.try_get("seq")?,
            topic: row.try_get("topic")?,
            partition_key: row.try_get("partition_key")?,
            event: row.try_get("event")?,
            attempts: attempts.max(0) as u32,
        },
        row.try_get("due")?,
    ))
}

/// A claim on Postgres: the rows stay locked by this open transaction.
#[derive(Debug)]
pub struct PgClaim {
    tx: Transaction<'static, Postgres>,
    rows: Vec<ClaimedRow>,
    store: PgStore,
}

#[async_trait]
impl Claim for PgClaim {
    fn rows(&self) -> &[ClaimedRow] {
        &self.rows
    }

    async fn settle(mut self, published: &[Uuid], failed: &[FailedRow]) -> Result<()> {
        let s = &self.store.inner;
        if !published.is_empty() {
            PgStore::q(&s.mark_published)
                .bind(published)
                .execute(&mut *self.tx)
                .await
                .map_err(|e| Error::db("mark published", e))?;
        }
        if !failed.is_empty() {
            let ids: Vec<Uuid> = failed.iter().map(|f| f.id).collect();
            let errs: Vec<&str> = failed.iter().map(|f| f.error.as_str()).collect();
            let sts: Vec<&str> = failed
                .iter()
                .map(|f| if f.dead { "dead" } else { "pending" })
                .collect();
            let ms: Vec<i64> = failed
                .iter()
                .map(|f| f.retry_in.as_millis().min(i64::MAX as u128) as i64)
                .collect();
            PgStore::q(&s.mark_failed)
                .bind(ids)
                .bind(errs)
                .bind(sts)
                .bind(ms)
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

/// Wakes the relay on `NOTIFY` of the outbox's channel, or after the polling interval.
#[derive(Debug)]
pub struct PgWaiter {
    listener: Option<PgListener>,
}

#[async_trait]
impl Waiter for PgWaiter {
    async fn wait(&mut self, max: Duration) {
        let Some(listener) = self.listener.as_mut() else {
            tokio::time::sleep(max).await;
            return;
        };
        match tokio::time::timeout(max, listener.try_recv()).await {
            // Coalesce whatever else already arrived: one round serves them all.
            Ok(Ok(Some(_))) => while listener.next_buffered().is_some() {},
            // Connection lost: it reconnects on the next call; poll now since notifications
            // may have been missed.
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "outbox LISTEN failed; polling until it reconnects");
                tokio::time::sleep(max.min(Duration::from_millis(500))).await;
            }
            Err(_) => {}
        }
    }
}

#[async_trait]
impl OutboxStore for PgStore {
    type Claim = PgClaim;
    type Waiter = PgWaiter;

    async fn claim(&self, limit: usize) -> Result<PgClaim> {
        let s = &self.inner;
        let limit = limit.max(1);
        let mut tx = s.pool.begin().await.map_err(|e| Error::db("claim", e))?;
        let head_rows = PgStore::q(&s.heads)
            .bind(limit as i64)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| Error::db("claim", e))?;
        let mut rows = Vec::with_capacity(head_rows.len());
        for r in &head_rows {
            rows.push(claimed(r).map_err(|e| Error::db("claim", e))?.0);
        }
        let keyed: Vec<&ClaimedRow> = rows.iter().filter(|r| r.partition_key.is_some()).collect();
        if !keyed.is_empty() && rows.len() < limit {
            let topics: Vec<&str> = keyed.iter().map(|r| r.topic.as_str()).collect();
            let keys: Vec<&str> = keyed
                .iter()
                .map(|r| r.partition_key.as_deref().unwrap_or_default())
                .collect();
            let heads: Vec<Uuid> = keyed.iter().map(|r| r.id).collect();
            let follower_rows = PgStore::q(&s.followers)
                .bind(topics)
                .bind(keys)
                .bind(heads)
                .bind((limit - rows.len()) as i64)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| Error::db("claim", e))?;
            // Keep, per key, the followers up to the first one not yet due.
            let mut stopped: HashMap<(String, String), ()> = HashMap::new();
            for r in &follower_rows {
                let (row, due) = claimed(r).map_err(|e| Error::db("claim", e))?;
                let key = (
                    row.topic.clone(),
                    row.partition_key.clone().unwrap_or_default(),
                );
                if stopped.contains_key(&key) {
                    continue;
                }
                if !due {
                    stopped.insert(key, ());
                    continue;
                }
                rows.push(row);
            }
            rows.sort_by_key(|r| r.seq);
        }
        Ok(PgClaim {
            tx,
            rows,
            store: self.clone(),
        })
    }

    async fn waiter(&self, listen: bool) -> Result<PgWaiter> {
        if !listen {
            return Ok(PgWaiter { listener: None });
        }
        let mut listener = PgListener::connect_with(&self.inner.pool)
            .await
            .map_err(|e| Error::db("listen", e))?;
        listener
            .listen(&self.inner.config.channel())
            .await
            .map_err(|e| Error::db("listen", e))?;
        Ok(PgWaiter {
            listener: Some(listener),
        })
    }

    async fn stats(&self) -> Result<Stats> {
        let row = PgStore::q(&self.inner.stats)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|e| Error::db("stats", e))?;
        let get = |name: &str| -> Result<u64> {
            let v: i64 = row.try_get(name).map_err(|e| Error::db("stats", e))?;
            Ok(v.max(0) as u64)
        };
        let lag: Option<f64> = row.try_get("lag").map_err(|e| Error::db("stats", e))?;
        Ok(Stats {
            pending: get("pending")?,
            dead: get("dead")?,
            published: get("published")?,
            oldest_pending_age: lag.map(|s| Duration::from_secs_f64(s.max(0.0))),
        })
    }

    async fn list_dead(&self, limit: usize) -> Result<Vec<DeadEvent>> {
        let rows = PgStore::q(&self.inner.list_dead)
            .bind(limit.min(i64::MAX as usize) as i64)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| Error::db("list dead", e))?;
        rows.iter()
            .map(|r| -> Result<DeadEvent, sqlx::Error> {
                let attempts: i32 = r.try_get("attempts")?;
                let created_at: DateTime<Utc> = r.try_get("created_at")?;
                Ok(DeadEvent {
                    id: r.try_get("id")?,
                    seq: r.try_get("seq")?,
                    topic: r.try_get("topic")?,
                    partition_key: r.try_get("partition_key")?,
                    event: r.try_get("event")?,
                    attempts: attempts.max(0) as u32,
                    last_error: r.try_get("last_error")?,
                    created_at,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(|e| Error::db("list dead", e))
    }

    async fn requeue(&self, id: Uuid) -> Result<()> {
        let done = PgStore::q(&self.inner.requeue)
            .bind(id)
            .execute(&self.inner.pool)
            .await
            .map_err(|e| Error::db("requeue", e))?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound(id));
        }
        self.notify().await;
        Ok(())
    }

    async fn requeue_all_dead(&self) -> Result<u64> {
        let done = PgStore::q(&self.inner.requeue_all)
            .execute(&self.inner.pool)
            .await
            .map_err(|e| Error::db("requeue", e))?;
        self.notify().await;
        Ok(done.rows_affected())
    }

    async fn delete_published_before(&self, age: Duration) -> Result<u64> {
        let done = PgStore::q(&self.inner.retention)
            .bind(age.as_millis().min(i64::MAX as u128) as i64)
            .execute(&self.inner.pool)
            .await
            .map_err(|e| Error::db("retention", e))?;
        Ok(done.rows_affected())
    }

    fn label(&self) -> &str {
        &self.inner.label
    }
}

impl PgStore {
    async fn notify(&self) {
        if self.inner.config.notify {
            let _ = sqlx::query("SELECT pg_notify($1, '')")
                .bind(self.inner.config.channel())
                .execute(&self.inner.pool)
                .await;
        }
    }
}
