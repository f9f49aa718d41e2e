//! The SQLite dialect of the shared store: its SQL, how it binds and reads values, and its
//! claim and settle as short transactions.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Row as _, Sqlite, SqlitePool, TypeInfo, ValueRef};
use tokio::sync::Notify;

use super::{check, now_ms};
use crate::config::OutboxConfig;
use crate::error::Result;
use crate::sql::{Arg, Backend, ClaimArgs, Queries, Row, Sql, SqlStore, Val, millis};
use crate::store::{Settled, Settlement, Waiter};

/// The SQLite outbox as relays, the maintenance leader and operators use it: implements
/// [`OutboxStore`](crate::OutboxStore), [`OutboxMaintenance`](crate::OutboxMaintenance) and
/// [`OutboxAdmin`](crate::OutboxAdmin). Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqliteOutboxStore {
    pub(crate) inner: Arc<SqlStore<SqliteBackend>>,
}

#[derive(Debug)]
pub(crate) struct SqliteBackend {
    pool: SqlitePool,
    t: String,
    d: String,
    heads: String,
}

/// Heads of free, due keys of the given tenants, round-robin over tenants. ?1 now, ?2
/// destination, ?3 tenants, ?4 batch, ?5 block, ?6 per tenant.
fn heads_sql(d: &str) -> String {
    format!(
        "SELECT seq, tenant, topic, partition_key FROM ( \
           SELECT c.seq, c.tenant, c.topic, c.partition_key, \
                  row_number() OVER (PARTITION BY c.tenant ORDER BY c.seq) AS rnk \
           FROM {d} c \
           WHERE c.destination = ?2 AND c.status = 'pending' \
             AND c.tenant IN (SELECT value FROM json_each(?3)) \
             AND c.next_attempt_at <= ?1 AND coalesce(c.lease_until, 0) < ?1 \
             AND (c.partition_key IS NULL OR NOT EXISTS ( \
               SELECT 1 FROM {d} p WHERE p.destination = ?2 AND p.topic = c.topic \
                 AND p.partition_key = c.partition_key AND p.seq < c.seq \
                 AND (p.status = 'pending' OR (p.status = 'dead' AND ?5))))) \
         WHERE rnk <= ?6 ORDER BY rnk, seq LIMIT ?4"
    )
}

impl SqliteOutboxStore {
    /// A store on `pool` for the default tables.
    pub fn new(pool: SqlitePool) -> Self {
        Self::with_config(pool, OutboxConfig::default()).expect("the default config is valid")
    }

    /// A store on `pool` for the tables `config` names.
    pub fn with_config(pool: SqlitePool, config: OutboxConfig) -> Result<Self> {
        check(&config)?;
        let backend = SqliteBackend {
            pool,
            t: config.qualified_table(),
            d: config.qualified_delivery_table(),
            heads: heads_sql(&config.qualified_delivery_table()),
        };
        let queries = queries(&config);
        Ok(Self {
            inner: SqlStore::new(backend, queries, config),
        })
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.backend.pool
    }

    pub(crate) async fn make_waiter(&self, _listen: bool) -> Result<SqliteWaiter> {
        Ok(SqliteWaiter {
            doorbell: crate::wake::doorbell(&self.inner.config.channel()),
        })
    }
}

crate::sql::store::delegate_sql_store!(SqliteOutboxStore, SqliteWaiter);

/// The SQLite relay polls, and wakes at once when a writer of its process enqueues.
#[derive(Debug)]
pub struct SqliteWaiter {
    doorbell: Arc<Notify>,
}

#[async_trait]
impl Waiter for SqliteWaiter {
    async fn wait(&mut self, max: Duration) -> bool {
        tokio::time::timeout(max, self.doorbell.notified())
            .await
            .is_ok()
    }
}

fn json_of<T: Into<serde_json::Value> + Clone>(v: &[T]) -> String {
    serde_json::Value::Array(v.iter().cloned().map(Into::into).collect()).to_string()
}

fn bind<'q>(
    mut q: sqlx::query::Query<'q, Sqlite, SqliteArguments>,
    args: Vec<Arg>,
) -> sqlx::query::Query<'q, Sqlite, SqliteArguments> {
    for a in args {
        q = match a {
            Arg::I64(v) => q.bind(v),
            Arg::Bool(v) => q.bind(v),
            Arg::Text(v) => q.bind(v),
            Arg::OptText(v) => q.bind(v),
            Arg::I64s(v) => q.bind(json_of(&v)),
            Arg::Texts(v) => q.bind(json_of(&v)),
        };
    }
    q
}

fn read(row: &SqliteRow) -> Result<Row, sqlx::Error> {
    let mut vals = Vec::with_capacity(row.len());
    for i in 0..row.len() {
        let raw = row.try_get_raw(i)?;
        let v = if raw.is_null() {
            Val::Null
        } else {
            match raw.type_info().name() {
                "INTEGER" | "BOOLEAN" => Val::I64(row.try_get(i)?),
                "REAL" => Val::F64(row.try_get(i)?),
                _ => Val::Text(row.try_get(i)?),
            }
        };
        vals.push(v);
    }
    Ok(Row(vals))
}

fn query<'q>(sql: &Sql, mut args: Vec<Arg>) -> sqlx::query::Query<'q, Sqlite, SqliteArguments> {
    if sql.now {
        args.insert(0, Arg::I64(now_ms()));
    }
    bind(sqlx::query(sqlx::AssertSqlSafe(sql.text.clone())), args)
}

#[async_trait]
impl Backend for SqliteBackend {
    async fn fetch(&self, sql: &Sql, args: Vec<Arg>) -> Result<Vec<Row>, sqlx::Error> {
        query(sql, args)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(read)
            .collect()
    }

    async fn execute(&self, sql: &Sql, args: Vec<Arg>) -> Result<u64, sqlx::Error> {
        Ok(query(sql, args).execute(&self.pool).await?.rows_affected())
    }

    async fn execute_all(&self, statements: Vec<(Sql, Vec<Arg>)>) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for (sql, args) in statements {
            query(&sql, args).execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    async fn claim_rows(&self, c: ClaimArgs) -> Result<Vec<Row>, sqlx::Error> {
        let (t, d) = (&self.t, &self.d);
        let now = now_ms();
        let (destination, token, lease_ms) = (c.destination.as_str(), c.token, c.lease_ms);
        // One writer at a time: the whole claim is one short transaction.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let heads: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(self.heads.clone()))
            .bind(now)
            .bind(destination)
            .bind(json_of(&c.tenants))
            .bind(c.keys)
            .bind(c.block)
            .bind(c.per_tenant)
            .fetch_all(&mut *tx)
            .await?;
        let cap = c.batch - heads.len() as i64;
        let won: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "UPDATE {d} SET lease_token = ?3, lease_until = ?1 + ?4 \
             WHERE destination = ?2 AND seq IN (SELECT value FROM json_each(?5)) AND status = 'pending' \
               AND next_attempt_at <= ?1 AND coalesce(lease_until, 0) < ?1 RETURNING seq"
        )))
        .bind(now)
        .bind(destination)
        .bind(token)
        .bind(lease_ms)
        .bind(json_of(&heads))
        .fetch_all(&mut *tx)
        .await?;
        let mut all = won.clone();
        if !won.is_empty() && cap > 0 {
            let followers: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "UPDATE {d} SET lease_token = ?3, lease_until = ?1 + ?4 \
                 WHERE destination = ?2 AND seq IN ( \
                   SELECT b.seq FROM {d} b JOIN {d} w ON w.destination = b.destination \
                     AND w.topic = b.topic AND w.partition_key = b.partition_key \
                   WHERE w.destination = ?2 AND w.seq IN (SELECT value FROM json_each(?5)) \
                     AND b.status = 'pending' AND b.seq > w.seq ORDER BY b.seq LIMIT ?6) \
                 RETURNING seq"
            )))
            .bind(now)
            .bind(destination)
            .bind(token)
            .bind(lease_ms)
            .bind(json_of(&won))
            .bind(cap)
            .fetch_all(&mut *tx)
            .await?;
            all.extend(followers);
        }
        let rows = if all.is_empty() {
            Vec::new()
        } else {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT d.seq, d.topic, d.partition_key, d.attempts, e.event \
                 FROM {d} d JOIN {t} e ON e.seq = d.seq \
                 WHERE d.destination = ?1 AND d.seq IN (SELECT value FROM json_each(?2)) ORDER BY d.seq"
            )))
            .bind(destination)
            .bind(json_of(&all))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(read)
            .collect::<Result<_, _>>()?
        };
        tx.commit().await?;
        Ok(rows)
    }

    async fn settle(
        &self,
        destination: &str,
        token: i64,
        s: &Settlement,
    ) -> Result<Settled, sqlx::Error> {
        let d = &self.d;
        let now = now_ms();
        let mut out = Settled::default();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if !s.published.is_empty() {
            out.published = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {d} WHERE destination = ?1 AND lease_token = ?2 \
                 AND seq IN (SELECT value FROM json_each(?3))"
            )))
            .bind(destination)
            .bind(token)
            .bind(json_of(&s.published))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        for f in &s.failed {
            out.failed += sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE {d} SET attempts = attempts + ?4, last_error = ?5, status = ?6, \
                   next_attempt_at = ?7, failed_at = ?8, lease_token = NULL, lease_until = NULL \
                 WHERE destination = ?1 AND lease_token = ?2 AND seq = ?3"
            )))
            .bind(destination)
            .bind(token)
            .bind(f.seq)
            .bind(i64::from(f.tried))
            .bind(&f.error)
            .bind(if f.dead { "dead" } else { "pending" })
            .bind(now.saturating_add(millis(f.retry_in)))
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        if !s.released.is_empty() {
            out.released = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE {d} SET lease_token = NULL, lease_until = NULL \
                 WHERE destination = ?1 AND lease_token = ?2 AND seq IN (SELECT value FROM json_each(?3))"
            )))
            .bind(destination)
            .bind(token)
            .bind(json_of(&s.released))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(out)
    }
}

fn queries(c: &OutboxConfig) -> Queries {
    let t = c.qualified_table();
    let d = c.qualified_delivery_table();
    let s = c.qualified_stats_table();
    let l = c.qualified_leader_table();
    let i = c.qualified_inbox_table();
    // ?1 destination, ?2 bound, ?3 max.
    let tenants = |start: &str| {
        format!(
            "WITH RECURSIVE t(tenant, n) AS ( \
               SELECT (SELECT min(x.tenant) FROM {d} x WHERE x.destination = ?1 AND x.status = 'pending' {start}), 1 \
             UNION ALL \
               SELECT (SELECT min(x.tenant) FROM {d} x WHERE x.destination = ?1 AND x.status = 'pending' \
                         AND x.tenant > t.tenant), t.n + 1 \
               FROM t WHERE t.tenant IS NOT NULL AND t.n < ?3) \
             SELECT tenant FROM t WHERE tenant IS NOT NULL"
        )
    };
    // Operator filters: (tenant?, destination?, topic?) at ?a, ?a+1, ?a+2.
    let filters = |a: usize| {
        format!(
            "(?{a} IS NULL OR d.tenant = ?{a}) AND (?{b} IS NULL OR d.destination = ?{b}) \
             AND (?{c} IS NULL OR d.topic = ?{c})",
            b = a + 1,
            c = a + 2
        )
    };
    let requeue_set = "status = 'pending', attempts = 0, next_attempt_at = ?1, \
                       lease_token = NULL, lease_until = NULL";
    let skip_set = "status = 'skipped', failed_at = ?1, lease_token = NULL, lease_until = NULL";
    let by_refs = |set: &str| {
        format!(
            "UPDATE {d} AS d SET {set} WHERE d.status = 'dead' AND (?2 IS NULL OR d.tenant = ?2) \
               AND (d.seq, d.destination) IN (SELECT a.value, b.value FROM json_each(?3) a \
                 JOIN json_each(?4) b ON a.key = b.key)"
        )
    };
    let by_filter = |set: &str| {
        format!(
            "UPDATE {d} AS d SET {set} WHERE d.status = 'dead' AND {}",
            filters(2)
        )
    };
    Queries {
        tenants_first: Sql::new(tenants("AND x.tenant >= ?2")),
        tenants_after: Sql::new(tenants("AND x.tenant > ?2")),
        has_pending: Sql::new(format!(
            "SELECT 1 FROM {d} WHERE destination = ?1 AND status = 'pending' LIMIT 1"
        )),
        lead: Sql::timed(format!(
            "INSERT INTO {l} (name, holder, expires_at) VALUES ('maintenance', ?2, ?1 + ?3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE {l}.holder = excluded.holder OR {l}.expires_at < ?1 \
             RETURNING holder"
        )),
        resign: Sql::timed(format!(
            "UPDATE {l} SET expires_at = ?1 - 1 WHERE name = 'maintenance' AND holder = ?2"
        )),
        retention: Sql::timed(format!(
            "DELETE FROM {t} WHERE seq IN (SELECT e.seq FROM {t} e WHERE e.created_at < ?1 - ?2 \
               AND NOT EXISTS (SELECT 1 FROM {d} x WHERE x.seq = e.seq) ORDER BY e.seq LIMIT ?3)"
        )),
        purge_dead: Sql::timed(format!(
            "DELETE FROM {d} WHERE rowid IN (SELECT rowid FROM {d} \
               WHERE status <> 'pending' AND failed_at < ?1 - ?2 LIMIT ?3)"
        )),
        purge_inbox: Sql::timed(format!(
            "DELETE FROM {i} WHERE rowid IN (SELECT rowid FROM {i} WHERE received_at < ?1 - ?2 LIMIT ?3)"
        )),
        refresh_stats: vec![
            (Sql::new(format!("DELETE FROM {s}")), false),
            (
                Sql::new(format!(
                    "INSERT INTO {s} (destination, topic, tenant, pending, dead, blocked, oldest_pending_at) \
                     SELECT g.destination, g.topic, g.tenant, g.pending, g.dead, g.blocked, e.created_at \
                     FROM (SELECT destination, topic, tenant, sum(status = 'pending') AS pending, \
                             sum(status = 'dead') AS dead, \
                             sum(status = 'dead' AND partition_key IS NOT NULL AND ?1) AS blocked, \
                             min(CASE WHEN status = 'pending' THEN seq END) AS oldest \
                           FROM {d} WHERE status IN ('pending', 'dead') \
                           GROUP BY destination, topic, tenant) g \
                     LEFT JOIN {t} e ON e.seq = g.oldest"
                )),
                true,
            ),
            (
                Sql::timed(format!(
                    "INSERT INTO {l} (name, holder, expires_at) VALUES ('stats', '', ?1) \
                     ON CONFLICT (name) DO UPDATE SET expires_at = excluded.expires_at"
                )),
                false,
            ),
        ],
        read_stats: Sql::timed(format!(
            "SELECT destination, topic, sum(pending), sum(dead), sum(blocked), ?1 - min(oldest_pending_at) \
             FROM {s} WHERE (?2 IS NULL OR tenant = ?2) \
             GROUP BY destination, topic ORDER BY destination, topic"
        )),
        refreshed_at: Sql::new(format!("SELECT expires_at FROM {l} WHERE name = 'stats'")),
        list_dead: Sql::new(format!(
            "SELECT d.seq, d.destination, d.topic, d.partition_key, e.org_id, e.event, d.attempts, \
               d.last_error, d.failed_at, e.created_at \
             FROM {d} d JOIN {t} e ON e.seq = d.seq \
             WHERE d.status = 'dead' AND {} AND (d.seq, d.destination) > (?4, ?5) \
             ORDER BY d.seq, d.destination LIMIT ?6",
            filters(1)
        )),
        blocked: Sql::new(format!(
            "SELECT d.seq, d.destination, d.topic, d.partition_key, e.org_id, d.last_error, d.failed_at, \
               (SELECT count(*) FROM (SELECT 1 FROM {d} w WHERE w.destination = d.destination \
                  AND w.topic = d.topic AND w.partition_key = d.partition_key AND w.seq > d.seq \
                  AND w.status = 'pending' LIMIT 10001)) \
             FROM {d} d JOIN {t} e ON e.seq = d.seq \
             WHERE d.status = 'dead' AND d.partition_key IS NOT NULL AND {} \
               AND (d.seq, d.destination) > (?4, ?5) \
             ORDER BY d.seq, d.destination LIMIT ?6",
            filters(1)
        )),
        requeue: Sql::timed(by_refs(requeue_set)),
        requeue_all: Sql::timed(by_filter(requeue_set)),
        skip: Sql::timed(by_refs(skip_set)),
        skip_all: Sql::timed(by_filter(skip_set)),
        leader: Sql::timed(format!(
            "SELECT holder, expires_at FROM {l} WHERE name = 'maintenance' AND expires_at > ?1"
        )),
    }
}
