//! The crate's error type.

use windlass_core::{BoxError, NameError};

/// Errors of the outbox, the relay and the inbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A topic, consumer, table or schema name is invalid. Returned before any statement runs,
    /// so the caller's transaction stays usable.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The encoded event is over the configured size limit. Returned before any statement
    /// runs, so the caller's transaction stays usable.
    #[error(
        "event {id} is {size} bytes encoded, over the outbox limit of {limit} bytes; shrink the payload or raise `OutboxConfig::max_event_size`"
    )]
    TooLarge {
        /// Event id.
        id: String,
        /// Encoded size in bytes.
        size: usize,
        /// Configured limit in bytes.
        limit: usize,
    },
    /// The database failed; `op` says what was being done.
    #[error("outbox {op} failed: {source}")]
    Database {
        /// What was being done (`"enqueue"`, `"claim"`, `"migrate"`...).
        op: &'static str,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
    /// The event holds something the outbox table cannot store as configured (e.g. a
    /// `\u0000` escape with the optional jsonb column). Returned before any statement runs, so
    /// the caller's transaction stays usable.
    #[error("event {id} cannot be stored in the outbox: {reason}")]
    Unstorable {
        /// Event id.
        id: String,
        /// What the database would refuse.
        reason: String,
    },
    /// Invalid configuration.
    #[error("invalid outbox configuration: {0}")]
    Config(String),
    /// A wait ended before its condition held (e.g. [`Relay::drain`](crate::Relay::drain)).
    #[error("{0}")]
    Timeout(String),
}

impl Error {
    #[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
    pub(crate) fn db(op: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Database {
            op,
            source: source.into(),
        }
    }
}

/// `Result` with the outbox [`Error`] by default.
pub type Result<T, E = Error> = std::result::Result<T, E>;
