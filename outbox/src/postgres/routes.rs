//! [`PgRouteStore`]: the Redis -> Kafka migration's routing table in Postgres, shared by
//! every process of the service.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::{PgPool, Row};
use windlass_eventbus::Error as BusError;
use windlass_eventbus::migrate::{
    Backend, PendingSwitch, RouteState, RouteStore, Routes, SwitchTicket,
};

use crate::error::{Error, Result};

/// Default table of [`PgRouteStore`].
pub const DEFAULT_ROUTES_TABLE: &str = "windlass_migration_routes";

/// The routing table of a migration (`windlass_eventbus::migrate`) in Postgres: one row per
/// domain with its committed backend and at most one switch in progress (target, fencing
/// epoch, lease end). Every process of the service builds its `Migration` on the same table
/// (`Migration::with_store`), so they agree on the routes; one switch runs at a time across
/// all of them (`begin_switch` takes a transaction-scoped advisory lock, then refuses while
/// any claim's lease runs), and a switcher that lost its lease cannot commit (the epoch).
///
/// The processes taking part register in `{table}_members` (a heartbeat with a time to live,
/// and the last switch they drained), which is what a switch waits for before it starts the new
/// bus.
///
/// Create the tables with [`PgRouteStore::migrate`] (idempotent).
#[derive(Debug, Clone)]
pub struct PgRouteStore {
    pool: PgPool,
    table: String,
}

fn db(op: &'static str, e: impl Into<windlass_core::BoxError>) -> BusError {
    BusError::backend("postgres", op, e)
}

impl PgRouteStore {
    /// A store on `pool`, table `windlass_migration_routes`.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            table: DEFAULT_ROUTES_TABLE.to_owned(),
        }
    }

    /// A store on `pool` with another table name (optionally `schema.table`; each part
    /// lowercase ASCII letters, digits and `_`, at most 40 bytes).
    pub fn with_table(pool: PgPool, table: &str) -> Result<Self> {
        for part in table.split('.') {
            let ok = !part.is_empty()
                && part.len() <= crate::config::IDENT_MAX_LEN
                && part
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok || table.split('.').count() > 2 {
                return Err(Error::Config(format!(
                    "route table name {table:?} must be [schema.]table, each 1-40 bytes of lowercase ASCII letters, digits and '_'"
                )));
            }
        }
        Ok(Self {
            pool,
            table: table.to_owned(),
        })
    }

    /// Creates the table if missing (safe from several processes at once).
    pub async fn migrate(&self) -> Result<()> {
        let t = &self.table;
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {t} ( \
               domain text PRIMARY KEY, \
               backend text NOT NULL CHECK (backend IN ('redis', 'kafka')), \
               switching_to text CHECK (switching_to IN ('redis', 'kafka')), \
               switch_epoch bigint NOT NULL DEFAULT 0, \
               switch_until timestamptz, \
               updated_at timestamptz NOT NULL DEFAULT now()); \
             CREATE TABLE IF NOT EXISTS {t}_members ( \
               member text PRIMARY KEY, \
               alive_until timestamptz NOT NULL, \
               drained_domain text, \
               drained_epoch bigint)"
        );
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| Error::db("migrate", e))?;
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

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn lock_sql(&self) -> String {
        format!(
            "SELECT pg_advisory_xact_lock(hashtextextended('windlass_migration_routes:{}', 0))",
            self.table
        )
    }
}

fn backend(s: &str) -> Result<Backend, BusError> {
    Backend::from_str(s)
}

#[async_trait]
impl RouteStore for PgRouteStore {
    async fn init(&self, routes: &Routes) -> windlass_eventbus::Result<RouteState> {
        routes.validate()?;
        let (domains, backends): (Vec<String>, Vec<String>) = routes
            .domains()
            .map(|(d, b)| (d.to_owned(), b.as_str().to_owned()))
            .unzip();
        let sql = format!(
            "INSERT INTO {} (domain, backend) SELECT * FROM unnest($1::text[], $2::text[]) \
             ON CONFLICT (domain) DO NOTHING",
            self.table
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(domains)
            .bind(backends)
            .execute(&self.pool)
            .await
            .map_err(|e| db("route init", e))?;
        self.load(routes.default_backend()).await
    }

    async fn load(&self, default: Backend) -> windlass_eventbus::Result<RouteState> {
        let sql = format!(
            "SELECT domain, backend, switching_to, switch_epoch, coalesce(switch_until > now(), false) \
             FROM {} ORDER BY domain",
            self.table
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db("route load", e))?;
        let mut routes = Routes::new(default);
        let mut switching = Vec::new();
        for r in rows {
            let domain: String = r.get(0);
            let from = backend(r.get::<&str, _>(1))?;
            routes.set(domain.clone(), from);
            let to: Option<String> = r.get(2);
            if let (Some(to), true) = (to, r.get::<bool, _>(4)) {
                let epoch = r.get::<i64, _>(3) as u64;
                switching.push(PendingSwitch::new(domain, from, backend(&to)?, epoch));
            }
        }
        Ok(RouteState::new(routes, switching))
    }

    async fn begin_switch(
        &self,
        domain: &str,
        to: Backend,
        lease: Duration,
    ) -> windlass_eventbus::Result<SwitchTicket> {
        let t = &self.table;
        let mut tx = self.pool.begin().await.map_err(|e| db("route switch", e))?;
        sqlx::query(sqlx::AssertSqlSafe(self.lock_sql()))
            .execute(&mut *tx)
            .await
            .map_err(|e| db("route switch", e))?;
        let live = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT domain, switching_to FROM {t} \
             WHERE switching_to IS NOT NULL AND switch_until > now() LIMIT 1"
        )))
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| db("route switch", e))?;
        if let Some(r) = live {
            return Err(BusError::SwitchInProgress {
                domain: r.get(0),
                to: r.get(1),
            });
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {t} SET switching_to = $2, switch_epoch = switch_epoch + 1, \
               switch_until = now() + make_interval(secs => $3), updated_at = now() \
             WHERE domain = $1 RETURNING backend, switch_epoch"
        )))
        .bind(domain)
        .bind(to.as_str())
        .bind(lease.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| db("route switch", e))?;
        let Some(row) = row else {
            return Err(BusError::UnknownDomain(domain.to_owned()));
        };
        let from = backend(row.get::<&str, _>(0))?;
        let epoch = row.get::<i64, _>(1) as u64;
        tx.commit().await.map_err(|e| db("route switch", e))?;
        Ok(SwitchTicket::new(domain.to_owned(), from, to, epoch))
    }

    async fn finish_switch(&self, ticket: &SwitchTicket) -> windlass_eventbus::Result<()> {
        let sql = format!(
            "UPDATE {} SET backend = switching_to, switching_to = NULL, switch_until = NULL, \
               updated_at = now() \
             WHERE domain = $1 AND switch_epoch = $2 AND switching_to = $3 AND switch_until > now()",
            self.table
        );
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&ticket.domain)
            .bind(ticket.epoch as i64)
            .bind(ticket.to.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| db("route commit", e))?;
        if done.rows_affected() == 0 {
            return Err(BusError::Timeout(
                "the switch's claim (its lease ended or it was aborted)",
            ));
        }
        Ok(())
    }

    async fn abort_switch(&self, ticket: &SwitchTicket) -> windlass_eventbus::Result<()> {
        let sql = format!(
            "UPDATE {} SET switching_to = NULL, switch_until = NULL, updated_at = now() \
             WHERE domain = $1 AND switch_epoch = $2",
            self.table
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&ticket.domain)
            .bind(ticket.epoch as i64)
            .execute(&self.pool)
            .await
            .map_err(|e| db("route abort", e))?;
        Ok(())
    }

    async fn heartbeat(
        &self,
        member: &str,
        ttl: Duration,
        drained: Option<(&str, u64)>,
    ) -> windlass_eventbus::Result<()> {
        let sql = format!(
            "INSERT INTO {}_members (member, alive_until, drained_domain, drained_epoch) \
             VALUES ($1, now() + make_interval(secs => $2), $3, $4) \
             ON CONFLICT (member) DO UPDATE SET alive_until = excluded.alive_until, \
               drained_domain = coalesce(excluded.drained_domain, {0}_members.drained_domain), \
               drained_epoch = coalesce(excluded.drained_epoch, {0}_members.drained_epoch)",
            self.table
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(member)
            .bind(ttl.as_secs_f64())
            .bind(drained.map(|d| d.0))
            .bind(drained.map(|d| d.1 as i64))
            .execute(&self.pool)
            .await
            .map_err(|e| db("route heartbeat", e))?;
        Ok(())
    }

    async fn not_drained(
        &self,
        domain: &str,
        epoch: u64,
        except: &str,
    ) -> windlass_eventbus::Result<Vec<String>> {
        let sql = format!(
            "SELECT member FROM {}_members WHERE alive_until > now() AND member <> $3 \
             AND (drained_domain IS DISTINCT FROM $1 OR drained_epoch IS DISTINCT FROM $2) \
             ORDER BY member",
            self.table
        );
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(domain)
            .bind(epoch as i64)
            .bind(except)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db("route members", e))
    }
}
