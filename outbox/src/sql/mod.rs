//! The store logic shared by Postgres and SQLite, written once.
//!
//! A backend provides a [`Backend`]: how to run one statement with a few kinds of arguments
//! ([`Arg`]) and read its rows back as plain values ([`Row`]), its SQL text for each operation
//! ([`Queries`], one dialect each), and the two multi-statement steps whose shape differs
//! (leasing a claim, settling it). [`SqlStore`] implements the relay, maintenance and operator
//! traits on top, once. Timestamps cross this boundary as Unix epoch milliseconds.

pub(crate) mod store;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::store::{Settled, Settlement};

pub(crate) use store::SqlStore;

/// A statement: its text and whether it takes the current time as its first parameter
/// (SQLite, which has no server clock shared by relays; Postgres uses `now()`).
#[derive(Debug, Clone)]
pub(crate) struct Sql {
    pub(crate) text: Arc<str>,
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) now: bool,
}

impl Sql {
    pub(crate) fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into().into(),
            now: false,
        }
    }
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn timed(text: impl Into<String>) -> Self {
        Self {
            text: text.into().into(),
            now: true,
        }
    }
}

/// A statement argument.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    I64(i64),
    Bool(bool),
    Text(String),
    OptText(Option<String>),
    I64s(Vec<i64>),
    Texts(Vec<String>),
}

/// A column value read back.
#[derive(Debug, Clone)]
pub(crate) enum Val {
    Null,
    I64(i64),
    F64(f64),
    Text(String),
}

/// A row read back, by column position.
#[derive(Debug, Clone)]
pub(crate) struct Row(pub(crate) Vec<Val>);

fn decode(what: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("outbox: column is not {what}").into())
}

impl Row {
    pub(crate) fn i64(&self, i: usize) -> Result<i64, sqlx::Error> {
        self.opt_i64(i)?.ok_or_else(|| decode("a non-null integer"))
    }
    pub(crate) fn opt_i64(&self, i: usize) -> Result<Option<i64>, sqlx::Error> {
        match self.0.get(i) {
            Some(Val::Null) => Ok(None),
            Some(Val::I64(v)) => Ok(Some(*v)),
            Some(Val::F64(v)) => Ok(Some(*v as i64)),
            _ => Err(decode("an integer")),
        }
    }
    pub(crate) fn text(&self, i: usize) -> Result<String, sqlx::Error> {
        self.opt_text(i)?.ok_or_else(|| decode("non-null text"))
    }
    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<String>, sqlx::Error> {
        match self.0.get(i) {
            Some(Val::Null) => Ok(None),
            Some(Val::Text(s)) => Ok(Some(s.clone())),
            _ => Err(decode("text")),
        }
    }
}

/// The SQL of one dialect, one statement per operation. Arguments are listed with each field
/// (after the time, for [`Sql::timed`] statements).
#[derive(Debug, Clone)]
pub(crate) struct Queries {
    /// (destination, lower bound (inclusive; '' = all), max) -> (tenant): tenants with pending
    /// rows, in order.
    pub(crate) tenants_first: Sql,
    /// (destination, lower bound (exclusive), max) -> (tenant).
    pub(crate) tenants_after: Sql,
    /// (destination) -> (1) when a pending row exists.
    pub(crate) has_pending: Sql,
    /// (holder, lease_ms) -> (holder) when `holder` now leads.
    pub(crate) lead: Sql,
    /// (holder).
    pub(crate) resign: Sql,
    /// (age_ms, limit): delete delivered events.
    pub(crate) retention: Sql,
    /// (age_ms, limit): delete dead / skipped deliveries.
    pub(crate) purge_dead: Sql,
    /// (age_ms, limit): delete inbox records.
    pub(crate) purge_inbox: Sql,
    /// Recount into the stats table: statements, each flagged when it takes (block).
    pub(crate) refresh_stats: Vec<(Sql, bool)>,
    /// (tenant?) -> (destination, topic, pending, dead, blocked, oldest_age_ms?).
    pub(crate) read_stats: Sql,
    /// () -> (refreshed_at_ms?).
    pub(crate) refreshed_at: Sql,
    /// (tenant?, destination?, topic?, after_seq, after_destination, limit) -> (seq,
    /// destination, topic, key, org_id, event, attempts, last_error, failed_ms, created_ms).
    pub(crate) list_dead: Sql,
    /// (tenant?, destination?, topic?, after_seq, after_destination, limit) -> (seq,
    /// destination, topic, key, org_id, last_error, failed_ms, waiting).
    pub(crate) blocked: Sql,
    /// (tenant?, seqs, destinations) -> affected.
    pub(crate) requeue: Sql,
    /// (tenant?, destination?, topic?) -> affected.
    pub(crate) requeue_all: Sql,
    /// (tenant?, seqs, destinations) -> affected.
    pub(crate) skip: Sql,
    /// (tenant?, destination?, topic?) -> affected.
    pub(crate) skip_all: Sql,
    /// () -> (holder, expires_ms) of an unexpired lease.
    pub(crate) leader: Sql,
}

/// What [`Backend::claim_rows`] gets.
#[derive(Debug, Clone)]
pub(crate) struct ClaimArgs {
    pub(crate) destination: String,
    pub(crate) token: i64,
    pub(crate) lease_ms: i64,
    pub(crate) tenants: Vec<String>,
    pub(crate) batch: i64,
    /// Most heads (keys) in the claim; the rows behind them fill up to `batch`.
    pub(crate) keys: i64,
    pub(crate) block: bool,
    pub(crate) per_tenant: i64,
}

/// One backend: statement execution plus its two multi-statement steps.
#[async_trait]
pub(crate) trait Backend: Send + Sync + fmt::Debug + 'static {
    /// Runs a query on the pool and reads every row.
    async fn fetch(&self, sql: &Sql, args: Vec<Arg>) -> Result<Vec<Row>, sqlx::Error>;

    /// Runs a statement on the pool; returns the rows it affected.
    async fn execute(&self, sql: &Sql, args: Vec<Arg>) -> Result<u64, sqlx::Error>;

    /// Claims for one destination: the heads of free, due keys of `tenants` (at most
    /// `per_tenant` each, round-robin over tenants, at most `keys`), leased with `token` for
    /// `lease_ms`, then the rows behind them up to `batch` in all; returns (seq, topic, key,
    /// attempts, event) in seq order.
    async fn claim_rows(&self, args: ClaimArgs) -> Result<Vec<Row>, sqlx::Error>;

    /// Runs statements as one unit (a transaction where the backend needs one).
    async fn execute_all(&self, statements: Vec<(Sql, Vec<Arg>)>) -> Result<(), sqlx::Error> {
        for (sql, args) in statements {
            self.execute(&sql, args).await?;
        }
        Ok(())
    }

    /// Applies `settlement` to the rows still carrying `token`.
    async fn settle(
        &self,
        destination: &str,
        token: i64,
        settlement: &Settlement,
    ) -> Result<Settled, sqlx::Error>;
}

/// Milliseconds, saturating, as a SQL integer.
pub(crate) fn millis(d: std::time::Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}
