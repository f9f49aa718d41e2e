//! Table names, routing and limits shared by the write side, the stores and the inbox.

use std::fmt;

use windlass_core::{Name, NameError};

use crate::error::{Error, Result};

/// Default outbox table name (the event log; the other tables are named after it).
pub const DEFAULT_TABLE: &str = "windlass_outbox";
/// Default inbox table name.
pub const DEFAULT_INBOX_TABLE: &str = "windlass_inbox";
/// Default size limit of one encoded event (structured CloudEvents JSON), in bytes.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 256 * 1024;
/// Longest accepted table or schema name (leaves room for the `_delivery_pending_idx`-style
/// suffixes within Postgres's 63-byte identifier limit).
pub const IDENT_MAX_LEN: usize = 40;
/// The destination a row goes to when nothing else is configured.
pub const DEFAULT_DESTINATION: &str = "default";

/// A named place an outbox row is delivered to (`"redis"`, `"kafka"`...): each destination has
/// its own delivery state per row, its own relay, leases, backoff, dead rows and lag.
///
/// Validated as a [`Name`] (`[A-Za-z0-9._-]`, 1-200 bytes): it becomes a SQL value and a metric
/// label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination(Name);

impl Destination {
    /// A destination name; fails when it is not a valid name.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        Name::parse("destination", name).map(Self)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl Default for Destination {
    fn default() -> Self {
        Self::new(DEFAULT_DESTINATION).expect("the default destination is a valid name")
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for Destination {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// What a relay does with a key whose oldest undelivered row is dead (rejected by the bus).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DeadPolicy {
    /// The key waits (later rows are not published) until an operator requeues or skips the
    /// dead row: per-key order is never broken. Blocked keys show in the operator API and in
    /// the `windlass_outbox_blocked_keys` gauge.
    #[default]
    Block,
    /// The dead row is left aside and the key goes on: later rows are published, the dead one
    /// stays listed (and can be requeued, which publishes it out of order).
    Skip,
}

impl DeadPolicy {
    pub(crate) fn blocks(self) -> bool {
        matches!(self, Self::Block)
    }
}

/// Where the outbox lives, where rows go and what the write side accepts.
///
/// Names are validated by [`OutboxConfig::validate`] (every constructor that takes a config
/// calls it): lowercase ASCII letters, digits and `_`, starting with a letter or `_`, at most
/// [`IDENT_MAX_LEN`] bytes, so they can be spliced into SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxConfig {
    /// Schema of every table (Postgres only; `None` = the connection's `search_path`).
    pub schema: Option<String>,
    /// Event table name; the delivery state lives in `{table}_delivery`, the operator counters
    /// in `{table}_stats`, the maintenance leader lease in `{table}_leader`.
    pub table: String,
    /// Inbox table name.
    pub inbox_table: String,
    /// Largest accepted encoded event, in bytes.
    pub max_event_size: usize,
    /// Destinations of a row enqueued with [`enqueue`](crate::postgres::Outbox::enqueue)
    /// (default: one, `"default"`). Empty: rows are only written to the event table (for a
    /// change-data-capture reader such as Debezium; no relay delivers them).
    pub destinations: Vec<Destination>,
    /// Per domain (a topic prefix: `billing` covers `billing` and `billing.*`; the longest
    /// listed domain wins), the destinations of rows enqueued with `enqueue` for its topics,
    /// instead of [`OutboxConfig::destinations`]. During a Redis -> Kafka migration, route
    /// each domain to `["redis", "kafka"]` while it is being moved (see `docs/migration.md`).
    pub routes: Vec<(String, Vec<Destination>)>,
    /// Serialise writers of one ordering key at enqueue (Postgres: a transaction-scoped
    /// advisory lock on the key's hash), so per-key order is enqueue order whatever the commit
    /// order. Turn off only when your transactions already serialise writers of a key (for
    /// example by locking the aggregate's row first).
    pub lock_keys: bool,
    /// Whether `enqueue` sends a `NOTIFY` in the caller's transaction (Postgres). Off by default:
    /// Postgres holds a database-wide lock from the `NOTIFY`'s commit until the commit is
    /// flushed, which serialises concurrent writers (`docs/outbox.md`, Wake-ups).
    pub notify: bool,
    /// What relays do with a key whose oldest undelivered row is dead. Set it the same in every
    /// process using the outbox.
    pub dead_policy: DeadPolicy,
    /// The optional `event_json jsonb` column exists (see
    /// [`postgres::migrate_with`](crate::postgres::migrate_with)); `enqueue` then refuses
    /// events jsonb cannot hold (a `\u0000` escape) before touching the transaction.
    pub jsonb_column: bool,
    /// The optional Debezium outbox-router columns exist (`aggregatetype`, `aggregateid`,
    /// `type`, generated from the routing columns; see `docs/outbox.md`).
    pub debezium_columns: bool,
    /// Use named (cached) prepared statements for the outbox's own queries. Turn off behind a
    /// connection pooler that does not support them (PgBouncer < 1.21 in transaction mode).
    pub prepared_statements: bool,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            schema: None,
            table: DEFAULT_TABLE.to_owned(),
            inbox_table: DEFAULT_INBOX_TABLE.to_owned(),
            max_event_size: DEFAULT_MAX_EVENT_SIZE,
            destinations: vec![Destination::default()],
            routes: Vec::new(),
            lock_keys: true,
            notify: false,
            dead_policy: DeadPolicy::Block,
            jsonb_column: false,
            debezium_columns: false,
            prepared_statements: true,
        }
    }
}

impl OutboxConfig {
    /// Sets the schema (Postgres).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }
    /// Sets the event table name (the other tables are named after it).
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }
    /// Sets the inbox table name.
    pub fn inbox_table(mut self, table: impl Into<String>) -> Self {
        self.inbox_table = table.into();
        self
    }
    /// Sets the size limit of one encoded event.
    pub fn max_event_size(mut self, bytes: usize) -> Self {
        self.max_event_size = bytes;
        self
    }
    /// Routes the topics of `domain` (`billing` covers `billing` and `billing.*`) to
    /// `destinations` (duplicates are dropped; replaces an earlier route of the same domain).
    /// [`OutboxConfig::validate`] refuses a domain that is not a valid topic name.
    pub fn route(
        mut self,
        domain: impl Into<String>,
        destinations: impl IntoIterator<Item = Destination>,
    ) -> Self {
        let domain = domain.into();
        let mut v: Vec<Destination> = Vec::new();
        for d in destinations {
            if !v.contains(&d) {
                v.push(d);
            }
        }
        self.routes.retain(|(d, _)| *d != domain);
        self.routes.push((domain, v));
        self
    }

    /// The destinations of a row enqueued for `topic` with `enqueue`: the route of the longest
    /// domain covering `topic`, else [`OutboxConfig::destinations`].
    pub fn destinations_for(&self, topic: &windlass_core::Topic) -> &[Destination] {
        self.routes
            .iter()
            .filter(|(d, _)| windlass_eventbus::migrate::covers(d, topic))
            .max_by_key(|(d, _)| d.len())
            .map_or(self.destinations.as_slice(), |(_, v)| v.as_slice())
    }

    /// Sets the default destinations of enqueued rows (duplicates are dropped).
    pub fn destinations(mut self, destinations: impl IntoIterator<Item = Destination>) -> Self {
        let mut v: Vec<Destination> = Vec::new();
        for d in destinations {
            if !v.contains(&d) {
                v.push(d);
            }
        }
        self.destinations = v;
        self
    }
    /// Turns the per-key writer lock on or off (see [`OutboxConfig::lock_keys`]).
    pub fn lock_keys(mut self, on: bool) -> Self {
        self.lock_keys = on;
        self
    }
    /// Turns the `NOTIFY` of the write side on or off.
    pub fn notify(mut self, on: bool) -> Self {
        self.notify = on;
        self
    }
    /// Sets what relays do with a key whose head is dead.
    pub fn dead_policy(mut self, policy: DeadPolicy) -> Self {
        self.dead_policy = policy;
        self
    }
    /// Declares the optional `event_json jsonb` column (created by `migrate_with`).
    pub fn jsonb_column(mut self, on: bool) -> Self {
        self.jsonb_column = on;
        self
    }
    /// Declares the optional Debezium outbox-router columns (created by `migrate_with`).
    pub fn debezium_columns(mut self, on: bool) -> Self {
        self.debezium_columns = on;
        self
    }
    /// Turns named prepared statements on or off for the outbox's own queries.
    pub fn prepared_statements(mut self, on: bool) -> Self {
        self.prepared_statements = on;
        self
    }

    /// Checks every name and limit.
    pub fn validate(&self) -> Result<()> {
        if let Some(schema) = &self.schema {
            check_ident("schema", schema)?;
        }
        check_ident("table", &self.table)?;
        check_ident("inbox table", &self.inbox_table)?;
        if self.table == self.inbox_table {
            return Err(Error::Config(
                "the outbox and inbox tables must have different names".into(),
            ));
        }
        for suffix in ["_delivery", "_stats", "_leader"] {
            if self.inbox_table == format!("{}{suffix}", self.table) {
                return Err(Error::Config(format!(
                    "the inbox table must not be named like the outbox's own `{suffix}` table"
                )));
            }
        }
        for (domain, _) in &self.routes {
            windlass_core::Topic::new(domain.as_str()).map_err(|e| {
                Error::Config(format!(
                    "route domain {domain:?} is not a valid topic name: {e}"
                ))
            })?;
        }
        if self.max_event_size == 0 {
            return Err(Error::Config(
                "max_event_size must be at least 1 byte".into(),
            ));
        }
        Ok(())
    }

    /// The event table as it appears in SQL (`schema.table` or `table`).
    pub fn qualified_table(&self) -> String {
        self.qualify(&self.table)
    }

    /// The delivery-state table as it appears in SQL.
    pub fn qualified_delivery_table(&self) -> String {
        self.qualify(&format!("{}_delivery", self.table))
    }

    /// The operator-counter table as it appears in SQL.
    pub fn qualified_stats_table(&self) -> String {
        self.qualify(&format!("{}_stats", self.table))
    }

    /// The maintenance-leader table as it appears in SQL.
    pub fn qualified_leader_table(&self) -> String {
        self.qualify(&format!("{}_leader", self.table))
    }

    /// The inbox table as it appears in SQL.
    pub fn qualified_inbox_table(&self) -> String {
        self.qualify(&self.inbox_table)
    }

    /// The LISTEN/NOTIFY channel of this outbox (`[schema_]table`).
    pub fn channel(&self) -> String {
        match &self.schema {
            Some(s) => format!("{s}_{}", self.table),
            None => self.table.clone(),
        }
    }

    fn qualify(&self, name: &str) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{name}"),
            None => name.to_owned(),
        }
    }
}

fn check_ident(what: &'static str, value: &str) -> Result<()> {
    let ok_start = value
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    let ok_rest = value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok_start || !ok_rest || value.len() > IDENT_MAX_LEN {
        return Err(Error::Config(format!(
            "{what} name {value:?} must be 1-{IDENT_MAX_LEN} bytes of lowercase ASCII letters, digits and '_', not starting with a digit"
        )));
    }
    Ok(())
}

/// Rewrites a shipped migration (written for the default names) for `config`.
///
/// Index names are prefixed by the bare table name (indexes live in the table's schema), tables
/// by the qualified name.
#[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
pub(crate) fn render_migration(sql: &str, config: &OutboxConfig) -> String {
    let mut out = sql
        .replace("windlass_outbox_delivery", "\u{1}DELIVERY\u{1}")
        .replace("windlass_outbox_stats", "\u{1}STATS\u{1}")
        .replace("windlass_outbox_leader", "\u{1}LEADER\u{1}")
        .replace("windlass_outbox_", "\u{1}OUTBOX_\u{1}")
        .replace("windlass_inbox_", "\u{1}INBOX_\u{1}")
        .replace(DEFAULT_TABLE, &config.qualified_table())
        .replace(DEFAULT_INBOX_TABLE, &config.qualified_inbox_table())
        .replace(
            "\u{1}DELIVERY\u{1}_",
            &format!("{}_delivery_", config.table),
        )
        .replace("\u{1}DELIVERY\u{1}", &config.qualified_delivery_table())
        .replace("\u{1}STATS\u{1}", &config.qualified_stats_table())
        .replace("\u{1}LEADER\u{1}", &config.qualified_leader_table())
        .replace("\u{1}OUTBOX_\u{1}", &format!("{}_", config.table))
        .replace("\u{1}INBOX_\u{1}", &format!("{}_", config.inbox_table));
    if let Some(schema) = &config.schema {
        out = format!("CREATE SCHEMA IF NOT EXISTS {schema};\n{out}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_names() {
        assert!(OutboxConfig::default().validate().is_ok());
        assert!(
            OutboxConfig::default()
                .schema("app_1")
                .table("events_out")
                .validate()
                .is_ok()
        );
        for bad in [
            "",
            "Outbox",
            "1abc",
            "a-b",
            "a;drop table x",
            "a.b",
            &"a".repeat(41),
        ] {
            assert!(
                OutboxConfig::default().table(bad).validate().is_err(),
                "{bad:?}"
            );
            assert!(
                OutboxConfig::default().schema(bad).validate().is_err(),
                "{bad:?}"
            );
        }
        assert!(
            OutboxConfig::default()
                .inbox_table("windlass_outbox")
                .validate()
                .is_err()
        );
        assert!(
            OutboxConfig::default()
                .inbox_table("windlass_outbox_delivery")
                .validate()
                .is_err()
        );
        assert!(
            OutboxConfig::default()
                .max_event_size(0)
                .validate()
                .is_err()
        );
        assert!(Destination::new("kafka").is_ok());
        assert!(Destination::new("a b").is_err());
        let twice = OutboxConfig::default().destinations([
            Destination::new("a").unwrap(),
            Destination::new("a").unwrap(),
        ]);
        assert_eq!(twice.destinations.len(), 1);
    }

    #[test]
    fn routes_pick_destinations_by_the_longest_covering_domain() {
        let d = |n: &str| Destination::new(n).unwrap();
        let t = |n: &str| windlass_core::Topic::new(n).unwrap();
        let cfg = OutboxConfig::default()
            .destinations([d("redis")])
            .route("billing", [d("redis"), d("kafka"), d("redis")])
            .route("billing.eu", [d("kafka")]);
        cfg.validate().unwrap();
        assert_eq!(
            cfg.destinations_for(&t("billing")),
            [d("redis"), d("kafka")]
        );
        assert_eq!(
            cfg.destinations_for(&t("billing.us.x")),
            [d("redis"), d("kafka")]
        );
        assert_eq!(cfg.destinations_for(&t("billing.eu.x")), [d("kafka")]);
        assert_eq!(cfg.destinations_for(&t("billings")), [d("redis")]);
        assert_eq!(cfg.destinations_for(&t("shipping")), [d("redis")]);
        // A later route of the same domain replaces the earlier one.
        let again = cfg.clone().route("billing", [d("kafka")]);
        assert_eq!(again.destinations_for(&t("billing")), [d("kafka")]);
        assert!(
            OutboxConfig::default()
                .route("no spaces", [d("redis")])
                .validate()
                .is_err()
        );
    }

    #[test]
    fn renders_migrations_for_other_names() {
        let sql = "CREATE TABLE windlass_outbox (x int);\nCREATE INDEX windlass_outbox_x_idx ON windlass_outbox (x);\nCREATE TABLE windlass_outbox_delivery (y int);\nCREATE INDEX windlass_outbox_delivery_y_idx ON windlass_outbox_delivery (y);\nCREATE TABLE windlass_inbox (y int);";
        let cfg = OutboxConfig::default()
            .schema("s")
            .table("ob")
            .inbox_table("ib");
        let out = render_migration(sql, &cfg);
        assert_eq!(
            out,
            "CREATE SCHEMA IF NOT EXISTS s;\nCREATE TABLE s.ob (x int);\nCREATE INDEX ob_x_idx ON s.ob (x);\nCREATE TABLE s.ob_delivery (y int);\nCREATE INDEX ob_delivery_y_idx ON s.ob_delivery (y);\nCREATE TABLE s.ib (y int);"
        );
        assert_eq!(render_migration(sql, &OutboxConfig::default()), sql);
        assert_eq!(cfg.channel(), "s_ob");
    }
}
