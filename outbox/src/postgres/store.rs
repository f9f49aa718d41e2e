//! The Postgres dialect of the shared store: its SQL, how it binds and reads values, its
//! one-statement claim and settle, and LISTEN wake-ups.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgArguments, PgListener, PgRow};
use sqlx::{Column, PgPool, Postgres, Row as _, TypeInfo};
use tokio::sync::Notify;

use crate::config::OutboxConfig;
use crate::error::{Error, Result};
use crate::sql::{Arg, Backend, ClaimArgs, Queries, Row, Sql, SqlStore, Val};
use crate::store::{Settled, Settlement, Waiter};

/// The Postgres outbox as relays, the maintenance leader and operators use it: implements
/// [`OutboxStore`](crate::OutboxStore), [`OutboxMaintenance`](crate::OutboxMaintenance) and
/// [`OutboxAdmin`](crate::OutboxAdmin). Cheap to clone.
#[derive(Debug, Clone)]
pub struct PgOutboxStore {
    pub(crate) inner: Arc<SqlStore<PgBackend>>,
}

#[derive(Debug)]
pub(crate) struct PgBackend {
    pool: PgPool,
    persistent: bool,
    lease: Arc<str>,
    settle: Arc<str>,
}

impl PgOutboxStore {
    /// A store on `pool` for the default tables.
    pub fn new(pool: PgPool) -> Self {
        Self::with_config(pool, OutboxConfig::default()).expect("the default config is valid")
    }

    /// A store on `pool` for the tables `config` names. Fails when a name is invalid.
    pub fn with_config(pool: PgPool, config: OutboxConfig) -> Result<Self> {
        config.validate()?;
        let d = config.qualified_delivery_table();
        let t = config.qualified_table();
        // One statement: pick the heads of free, due keys per tenant (skipping heads another
        // claim is locking right now), round-robin over tenants, lease them, lease the rows
        // behind them, and read the events.
        let lease = format!(
            "WITH picked AS ( \
               SELECT seq FROM ( \
                 SELECT h.seq, row_number() OVER (PARTITION BY t.ord ORDER BY h.seq) AS rnk \
                 FROM unnest($4::text[]) WITH ORDINALITY AS t(tenant, ord) CROSS JOIN LATERAL ( \
                   SELECT c.seq FROM {d} c \
                   WHERE c.destination = $1 AND c.status = 'pending' AND c.tenant = t.tenant \
                     AND c.next_attempt_at <= now() AND coalesce(c.lease_until, '-infinity') < now() \
                     AND (c.partition_key IS NULL OR NOT EXISTS ( \
                       SELECT 1 FROM {d} p WHERE p.destination = $1 AND p.topic = c.topic \
                         AND p.partition_key = c.partition_key AND p.seq < c.seq \
                         AND (p.status = 'pending' OR (p.status = 'dead' AND $6)))) \
                   ORDER BY c.destination, c.tenant, c.seq LIMIT $7 \
                   FOR UPDATE SKIP LOCKED) h) z \
               ORDER BY rnk, seq LIMIT $8), \
             won AS ( \
               UPDATE {d} h SET lease_token = $2, lease_until = now() + $3 * interval '1 millisecond' \
               WHERE h.seq = ANY(ARRAY(SELECT seq FROM picked)) AND h.destination = $1 \
               RETURNING h.seq, h.topic, h.partition_key, h.attempts), \
             fol AS ( \
               UPDATE {d} f SET lease_token = $2, lease_until = now() + $3 * interval '1 millisecond' \
               WHERE f.seq = ANY(ARRAY(SELECT x.seq FROM won w CROSS JOIN LATERAL ( \
                       SELECT b.seq FROM {d} b WHERE b.destination = $1 AND b.topic = w.topic \
                         AND b.partition_key = w.partition_key AND b.seq > w.seq AND b.status = 'pending' \
                       ORDER BY b.destination, b.topic, b.partition_key, b.seq LIMIT $5) x \
                     ORDER BY x.seq LIMIT greatest($5 - (SELECT count(*) FROM won), 0))) \
               AND f.destination = $1 \
               RETURNING f.seq, f.topic, f.partition_key, f.attempts), \
             got AS (SELECT * FROM won UNION ALL SELECT * FROM fol) \
             SELECT g.seq, g.topic, g.partition_key, g.attempts::int8, \
               (SELECT e.event FROM {t} e WHERE e.seq = g.seq) \
             FROM got g ORDER BY g.seq"
        );
        let settle = format!(
            "WITH pub AS (DELETE FROM {d} WHERE destination = $1 AND lease_token = $2 \
                 AND seq = ANY($3::int8[]) RETURNING 1), \
             fl AS (UPDATE {d} d SET attempts = d.attempts + u.tried, last_error = u.err, status = u.st, \
                 next_attempt_at = now() + u.ms * interval '1 millisecond', failed_at = now(), \
                 lease_token = NULL, lease_until = NULL \
               FROM unnest($4::int8[], $5::text[], $6::text[], $7::int8[], $8::int4[]) AS u(seq, err, st, ms, tried) \
               WHERE d.destination = $1 AND d.lease_token = $2 AND d.seq = u.seq RETURNING 1), \
             rel AS (UPDATE {d} SET lease_token = NULL, lease_until = NULL \
               WHERE destination = $1 AND lease_token = $2 AND seq = ANY($9::int8[]) RETURNING 1) \
             SELECT (SELECT count(*) FROM pub), (SELECT count(*) FROM fl), (SELECT count(*) FROM rel)"
        );
        let backend = PgBackend {
            pool,
            persistent: config.prepared_statements,
            lease: lease.into(),
            settle: settle.into(),
        };
        let queries = queries(&config);
        Ok(Self {
            inner: SqlStore::new(backend, queries, config),
        })
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.inner.backend.pool
    }

    pub(crate) async fn make_waiter(&self, listen: bool) -> Result<PgWaiter> {
        let doorbell = crate::wake::doorbell(&self.inner.config.channel());
        if !listen {
            return Ok(PgWaiter {
                listener: None,
                doorbell,
            });
        }
        let mut listener = PgListener::connect_with(self.pool())
            .await
            .map_err(|e| Error::db("listen", e))?;
        listener
            .listen(&self.inner.config.channel())
            .await
            .map_err(|e| Error::db("listen", e))?;
        Ok(PgWaiter {
            listener: Some(listener),
            doorbell,
        })
    }
}

crate::sql::store::delegate_sql_store!(PgOutboxStore, PgWaiter);

/// Wakes a relay on `NOTIFY` of the outbox's channel (when listening), on an enqueue by a
/// writer of this process, or after the wait.
#[derive(Debug)]
pub struct PgWaiter {
    listener: Option<PgListener>,
    doorbell: Arc<Notify>,
}

#[async_trait]
impl Waiter for PgWaiter {
    async fn wait(&mut self, max: Duration) -> bool {
        let rung = self.doorbell.notified();
        let Some(listener) = self.listener.as_mut() else {
            return tokio::time::timeout(max, rung).await.is_ok();
        };
        tokio::select! {
            _ = rung => true,
            r = tokio::time::timeout(max, listener.try_recv()) => match r {
                // Coalesce whatever else already arrived: one round serves them all.
                Ok(Ok(Some(_))) => { while listener.next_buffered().is_some() {} true }
                // Connection lost: it reconnects on the next call; poll now since
                // notifications may have been missed.
                Ok(Ok(None)) => true,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "outbox LISTEN failed; polling until it reconnects");
                    tokio::time::sleep(max.min(Duration::from_millis(500))).await;
                    false
                }
                Err(_) => false,
            },
        }
    }
}

fn bind<'q>(
    mut q: sqlx::query::Query<'q, Postgres, PgArguments>,
    args: Vec<Arg>,
) -> sqlx::query::Query<'q, Postgres, PgArguments> {
    for a in args {
        q = match a {
            Arg::I64(v) => q.bind(v),
            Arg::Bool(v) => q.bind(v),
            Arg::Text(v) => q.bind(v),
            Arg::OptText(v) => q.bind(v),
            Arg::I64s(v) => q.bind(v),
            Arg::Texts(v) => q.bind(v),
        };
    }
    q
}

fn read(row: &PgRow) -> Result<Row, sqlx::Error> {
    let mut vals = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let v = match col.type_info().name() {
            "INT8" => row.try_get::<Option<i64>, _>(i)?.map(Val::I64),
            "INT4" => row
                .try_get::<Option<i32>, _>(i)?
                .map(|v| Val::I64(v.into())),
            "INT2" => row
                .try_get::<Option<i16>, _>(i)?
                .map(|v| Val::I64(v.into())),
            "FLOAT8" => row.try_get::<Option<f64>, _>(i)?.map(Val::F64),
            "BOOL" => row
                .try_get::<Option<bool>, _>(i)?
                .map(|b| Val::I64(b.into())),
            _ => row.try_get::<Option<String>, _>(i)?.map(Val::Text),
        };
        vals.push(v.unwrap_or(Val::Null));
    }
    Ok(Row(vals))
}

#[async_trait]
impl Backend for PgBackend {
    async fn fetch(&self, sql: &Sql, args: Vec<Arg>) -> Result<Vec<Row>, sqlx::Error> {
        let q = sqlx::query(sqlx::AssertSqlSafe(sql.text.clone())).persistent(self.persistent);
        bind(q, args)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(read)
            .collect()
    }

    async fn execute(&self, sql: &Sql, args: Vec<Arg>) -> Result<u64, sqlx::Error> {
        let q = sqlx::query(sqlx::AssertSqlSafe(sql.text.clone())).persistent(self.persistent);
        Ok(bind(q, args).execute(&self.pool).await?.rows_affected())
    }

    async fn claim_rows(&self, c: ClaimArgs) -> Result<Vec<Row>, sqlx::Error> {
        // The claim's cost estimate grows with the backlog; past `jit_above_cost` Postgres
        // would JIT-compile it on every call (tens to hundreds of milliseconds for a statement
        // that runs in a few). A short transaction with JIT off avoids that without touching
        // the pool's other sessions; BEGIN and SET go in one round trip.
        let mut tx = self.pool.begin_with("BEGIN; SET LOCAL jit = off").await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(self.lease.clone()))
            .persistent(self.persistent)
            .bind(c.destination)
            .bind(c.token)
            .bind(c.lease_ms)
            .bind(c.tenants)
            .bind(c.batch)
            .bind(c.block)
            .bind(c.per_tenant)
            .bind(c.keys)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(read).collect()
    }

    async fn settle(
        &self,
        destination: &str,
        token: i64,
        s: &Settlement,
    ) -> Result<Settled, sqlx::Error> {
        let f = &s.failed;
        let row = sqlx::query(sqlx::AssertSqlSafe(self.settle.clone()))
            .persistent(self.persistent)
            .bind(destination)
            .bind(token)
            .bind(&s.published)
            .bind(f.iter().map(|x| x.seq).collect::<Vec<_>>())
            .bind(f.iter().map(|x| x.error.as_str()).collect::<Vec<_>>())
            .bind(
                f.iter()
                    .map(|x| if x.dead { "dead" } else { "pending" })
                    .collect::<Vec<_>>(),
            )
            .bind(
                f.iter()
                    .map(|x| crate::sql::millis(x.retry_in))
                    .collect::<Vec<_>>(),
            )
            .bind(f.iter().map(|x| i32::from(x.tried)).collect::<Vec<_>>())
            .bind(&s.released)
            .fetch_one(&self.pool)
            .await?;
        let n =
            |i: usize| -> Result<u64, sqlx::Error> { Ok(row.try_get::<i64, _>(i)?.max(0) as u64) };
        Ok(Settled {
            published: n(0)?,
            failed: n(1)?,
            released: n(2)?,
        })
    }
}

const MS: &str = "* interval '1 millisecond'";

fn epoch_ms(col: &str) -> String {
    format!("(extract(epoch from {col}) * 1000)::int8")
}

fn queries(c: &OutboxConfig) -> Queries {
    let t = c.qualified_table();
    let d = c.qualified_delivery_table();
    let s = c.qualified_stats_table();
    let l = c.qualified_leader_table();
    let i = c.qualified_inbox_table();
    // Tenants with pending rows by a loose index scan (one probe per tenant), at most $3,
    // from the first one or after $2.
    let tenants = |start: &str| {
        format!(
            "WITH RECURSIVE t(tenant, n) AS ( \
               SELECT (SELECT min(x.tenant) FROM {d} x WHERE x.destination = $1 AND x.status = 'pending' {start}), 1 \
             UNION ALL \
               SELECT (SELECT min(x.tenant) FROM {d} x WHERE x.destination = $1 AND x.status = 'pending' \
                         AND x.tenant > t.tenant), t.n + 1 \
               FROM t WHERE t.tenant IS NOT NULL AND t.n < $3) \
             SELECT tenant FROM t WHERE tenant IS NOT NULL AND $2::text IS NOT NULL"
        )
    };
    let filters = "($1::text IS NULL OR d.tenant = $1) AND ($2::text IS NULL OR d.destination = $2) \
                   AND ($3::text IS NULL OR d.topic = $3)";
    let requeue_set = "status = 'pending', attempts = 0, next_attempt_at = now(), \
                       lease_token = NULL, lease_until = NULL";
    let skip_set = "status = 'skipped', failed_at = now(), lease_token = NULL, lease_until = NULL";
    let by_refs = |set: &str| {
        format!(
            "UPDATE {d} d SET {set} FROM unnest($2::int8[], $3::text[]) AS u(seq, destination) \
             WHERE d.seq = u.seq AND d.destination = u.destination AND d.status = 'dead' \
               AND ($1::text IS NULL OR d.tenant = $1)"
        )
    };
    let by_filter =
        |set: &str| format!("UPDATE {d} d SET {set} WHERE d.status = 'dead' AND {filters}");
    Queries {
        tenants_first: Sql::new(tenants("AND x.tenant >= $2")),
        tenants_after: Sql::new(tenants("AND x.tenant > $2")),
        has_pending: Sql::new(format!(
            "SELECT 1 FROM {d} WHERE destination = $1 AND status = 'pending' LIMIT 1"
        )),
        lead: Sql::new(format!(
            "INSERT INTO {l} AS l (name, holder, expires_at) VALUES ('maintenance', $1, now() + $2 {MS}) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE l.holder = excluded.holder OR l.expires_at < now() \
             RETURNING holder"
        )),
        resign: Sql::new(format!(
            "UPDATE {l} SET expires_at = now() - interval '1 millisecond' WHERE name = 'maintenance' AND holder = $1"
        )),
        retention: Sql::new(format!(
            "DELETE FROM {t} WHERE seq IN (SELECT e.seq FROM {t} e \
               WHERE e.created_at < now() - $1 {MS} \
                 AND NOT EXISTS (SELECT 1 FROM {d} x WHERE x.seq = e.seq) \
               ORDER BY e.seq LIMIT $2)"
        )),
        purge_dead: Sql::new(format!(
            "DELETE FROM {d} WHERE (seq, destination) IN (SELECT seq, destination FROM {d} \
               WHERE status <> 'pending' AND failed_at < now() - $1 {MS} LIMIT $2)"
        )),
        purge_inbox: Sql::new(format!(
            "DELETE FROM {i} WHERE ctid IN (SELECT ctid FROM {i} \
               WHERE received_at < now() - $1 {MS} LIMIT $2)"
        )),
        refresh_stats: vec![(
            Sql::new(format!(
                "WITH s AS ( \
               SELECT destination, topic, tenant, \
                 count(*) FILTER (WHERE status = 'pending') AS pending, \
                 count(*) FILTER (WHERE status = 'dead') AS dead, \
                 count(*) FILTER (WHERE status = 'dead' AND partition_key IS NOT NULL AND $1) AS blocked, \
                 min(seq) FILTER (WHERE status = 'pending') AS oldest \
               FROM {d} WHERE status IN ('pending', 'dead') GROUP BY destination, topic, tenant), \
             gone AS (DELETE FROM {s}), \
             ins AS (INSERT INTO {s} (destination, topic, tenant, pending, dead, blocked, oldest_pending_at) \
               SELECT s.destination, s.topic, s.tenant, s.pending, s.dead, s.blocked, e.created_at \
               FROM s LEFT JOIN {t} e ON e.seq = s.oldest \
               ON CONFLICT (destination, topic, tenant) DO UPDATE SET pending = excluded.pending, \
                 dead = excluded.dead, blocked = excluded.blocked, oldest_pending_at = excluded.oldest_pending_at) \
             INSERT INTO {l} (name, holder, expires_at) VALUES ('stats', '', now()) \
             ON CONFLICT (name) DO UPDATE SET expires_at = now()"
            )),
            true,
        )],
        read_stats: Sql::new(format!(
            "SELECT destination, topic, sum(pending)::int8, sum(dead)::int8, sum(blocked)::int8, \
               {} FROM {s} WHERE ($1::text IS NULL OR tenant = $1) \
             GROUP BY destination, topic ORDER BY destination, topic",
            "(extract(epoch from now() - min(oldest_pending_at)) * 1000)::int8"
        )),
        refreshed_at: Sql::new(format!(
            "SELECT {} FROM {l} WHERE name = 'stats'",
            epoch_ms("expires_at")
        )),
        list_dead: Sql::new(format!(
            "SELECT d.seq, d.destination, d.topic, d.partition_key, e.org_id, e.event, d.attempts::int8, \
               d.last_error, {}, {} \
             FROM {d} d JOIN {t} e ON e.seq = d.seq \
             WHERE d.status = 'dead' AND {filters} AND (d.seq, d.destination) > ($4, $5) \
             ORDER BY d.seq, d.destination LIMIT $6",
            epoch_ms("d.failed_at"),
            epoch_ms("e.created_at")
        )),
        blocked: Sql::new(format!(
            "SELECT d.seq, d.destination, d.topic, d.partition_key, e.org_id, d.last_error, {}, \
               (SELECT count(*) FROM (SELECT 1 FROM {d} w WHERE w.destination = d.destination \
                  AND w.topic = d.topic AND w.partition_key = d.partition_key AND w.seq > d.seq \
                  AND w.status = 'pending' LIMIT 10001) x) \
             FROM {d} d JOIN {t} e ON e.seq = d.seq \
             WHERE d.status = 'dead' AND d.partition_key IS NOT NULL AND {filters} \
               AND (d.seq, d.destination) > ($4, $5) \
             ORDER BY d.seq, d.destination LIMIT $6",
            epoch_ms("d.failed_at")
        )),
        requeue: Sql::new(by_refs(requeue_set)),
        requeue_all: Sql::new(by_filter(requeue_set)),
        skip: Sql::new(by_refs(skip_set)),
        skip_all: Sql::new(by_filter(skip_set)),
        leader: Sql::new(format!(
            "SELECT holder, {} FROM {l} WHERE name = 'maintenance' AND expires_at > now()",
            epoch_ms("expires_at")
        )),
    }
}
