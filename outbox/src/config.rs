//! Table names and limits shared by the write side, the relay and the inbox.

use crate::error::{Error, Result};

/// Default outbox table name.
pub const DEFAULT_TABLE: &str = "windlass_outbox";
/// Default inbox table name.
pub const DEFAULT_INBOX_TABLE: &str = "windlass_inbox";
/// Default size limit of one encoded event (structured CloudEvents JSON), in bytes.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 256 * 1024;
/// Longest accepted table or schema name (leaves room for the `_pending_idx`-style suffixes
/// within Postgres's 63-byte identifier limit).
pub const IDENT_MAX_LEN: usize = 40;

/// Where the outbox and inbox live and what the write side accepts.
///
/// Names are validated when the config is used ([`OutboxConfig::validate`]): lowercase ASCII
/// letters, digits and `_`, starting with a letter or `_`, at most [`IDENT_MAX_LEN`] bytes, so
/// they can be spliced into SQL without quoting surprises.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxConfig {
    /// Schema of both tables (Postgres only; `None` = the connection's `search_path`).
    pub schema: Option<String>,
    /// Outbox table name.
    pub table: String,
    /// Inbox table name.
    pub inbox_table: String,
    /// Largest accepted encoded event, in bytes.
    pub max_event_size: usize,
    /// Whether `enqueue` sends a `NOTIFY` in the caller's transaction (Postgres). Keep it on
    /// unless no relay listens; it is coalesced to one notification per transaction.
    pub notify: bool,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            schema: None,
            table: DEFAULT_TABLE.to_owned(),
            inbox_table: DEFAULT_INBOX_TABLE.to_owned(),
            max_event_size: DEFAULT_MAX_EVENT_SIZE,
            notify: true,
        }
    }
}

impl OutboxConfig {
    /// Sets the schema (Postgres).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }
    /// Sets the outbox table name.
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
    /// Turns the `NOTIFY` of the write side on or off.
    pub fn notify(mut self, on: bool) -> Self {
        self.notify = on;
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
        if self.max_event_size == 0 {
            return Err(Error::Config(
                "max_event_size must be at least 1 byte".into(),
            ));
        }
        Ok(())
    }

    /// The outbox table as it appears in SQL (`schema.table` or `table`).
    pub fn qualified_table(&self) -> String {
        self.qualify(&self.table)
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

    /// Metric label value naming this outbox.
    #[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
    pub(crate) fn label(&self) -> String {
        self.qualified_table()
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
        .replace("windlass_outbox_", "\u{1}OUTBOX_\u{1}")
        .replace("windlass_inbox_", "\u{1}INBOX_\u{1}")
        .replace(DEFAULT_TABLE, &config.qualified_table())
        .replace(DEFAULT_INBOX_TABLE, &config.qualified_inbox_table())
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
                .max_event_size(0)
                .validate()
                .is_err()
        );
    }

    #[test]
    fn renders_migrations_for_other_names() {
        let sql = "CREATE TABLE windlass_outbox (x int);\nCREATE INDEX windlass_outbox_x_idx ON windlass_outbox (x);\nCREATE TABLE windlass_inbox (y int);";
        let cfg = OutboxConfig::default()
            .schema("s")
            .table("ob")
            .inbox_table("ib");
        let out = render_migration(sql, &cfg);
        assert_eq!(
            out,
            "CREATE SCHEMA IF NOT EXISTS s;\nCREATE TABLE s.ob (x int);\nCREATE INDEX ob_x_idx ON s.ob (x);\nCREATE TABLE s.ib (y int);"
        );
        assert_eq!(render_migration(sql, &OutboxConfig::default()), sql);
        assert_eq!(cfg.channel(), "s_ob");
    }
}
