//! Errors of the event bus.

use windlass_core::{BoxError, NameError};

/// Why an event could not be built or decoded. Names the attribute at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// A required attribute (`id`, `source`, `type`, `specversion`) is absent.
    #[error("event attribute `{0}` is required")]
    Missing(&'static str),
    /// An attribute has a value the spec or windlass does not accept.
    #[error("event attribute `{attribute}` is invalid: {reason}")]
    Invalid {
        /// The attribute (or extension) name.
        attribute: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `specversion` is not `1.0`.
    #[error("unsupported CloudEvents specversion {0:?}; windlass reads and writes 1.0")]
    SpecVersion(String),
    /// The payload passed to the builder could not be serialized, or the bytes are not JSON.
    #[error("event is not valid CloudEvents JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl EventError {
    pub(crate) fn invalid(attribute: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            attribute: attribute.into(),
            reason: reason.into(),
        }
    }
}

/// Errors of publishers, subscribers and backends.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The event is invalid.
    #[error(transparent)]
    Event(#[from] EventError),
    /// A topic, group or other name is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The encoded event is larger than the backend accepts.
    #[error("event {id} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Event id.
        id: String,
        /// Encoded size.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// The backend failed; `op` says what was being done. Retried where that is safe before
    /// being returned.
    #[error("{backend} {op} failed: {source}")]
    Backend {
        /// Backend name (`"redis"`, `"kafka"`, `"memory"`).
        backend: &'static str,
        /// Operation (`"publish"`, `"read"`, `"ack"`...).
        op: &'static str,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },
    /// The bus (or subscription) was shut down.
    #[error("the bus is closed")]
    Closed,
    /// A bounded buffer stayed full past the allowed wait.
    #[error("{0} is full; consumers are not keeping up")]
    Full(String),
    /// The operation did not finish in time.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The broker does not know the topic (and does not create topics on demand). Create it,
    /// or enable auto-creation on the broker.
    #[error("topic {topic} does not exist on the broker; create it (or enable auto-creation)")]
    UnknownTopic {
        /// The topic.
        topic: String,
    },
    /// The event does not match its JSON Schema (or the schema registry refused it).
    #[cfg(feature = "schema")]
    #[error(transparent)]
    Schema(#[from] crate::schema::SchemaError),
    /// A write fenced by a partition lease was refused: this member no longer holds the
    /// partition (its lease expired or another member took it). Nothing was written; the
    /// partition's new owner handles the entry.
    #[error("partition {partition} is no longer held by this member (its lease moved on)")]
    LeaseLost {
        /// The partition.
        partition: u32,
    },
    /// A partitioned topic exists with another partition count than the one configured.
    #[error(
        "topic {topic} has {stored} partitions but this bus is configured with {configured}. \
         Changing the partition count of a topic that holds entries or groups would move keys to \
         other partitions and break order per key. Keep {stored} (set it per topic in the bus \
         config), or migrate: publish to a new topic with {configured} partitions, move the \
         consumers once the old topic is drained, then delete the old one (BusAdmin::delete_topic)"
    )]
    PartitionMismatch {
        /// The topic.
        topic: String,
        /// The partition count the topic was created with.
        stored: u32,
        /// The partition count this bus is configured with for it.
        configured: u32,
    },
    /// An operator call on a topic-wide resource (consumer groups, the whole topic) from a
    /// handle scoped to one tenant: topics are shared by tenants, so only an all-tenants scope
    /// may see or change them.
    #[error("{0} needs an all-tenants scope (TenantScope::All): topics are shared by tenants")]
    TenantScope(&'static str),
    /// An operator list was given a position (`after`) that is not one it returned.
    #[error(
        "cursor {0:?} is not a position of this list; pass a `next` value from an earlier page"
    )]
    InvalidCursor(String),
    /// A replay was asked to start at an event the topic does not hold (any more).
    #[error(
        "event {id} is not in topic {topic} (never published there, or already deleted by retention)"
    )]
    EventNotFound {
        /// The topic.
        topic: String,
        /// The event id.
        id: String,
    },
    /// A migration route names a backend that does not exist (`"redis"` and `"kafka"` do).
    /// Nothing was changed.
    #[error("unknown migration backend {0:?}; expected \"redis\" or \"kafka\"")]
    UnknownBackend(String),
    /// A migration switch names a domain the routing table does not list. Nothing was changed.
    #[error(
        "unknown migration domain {0:?}; list it in the routes (Routes::route) before switching it"
    )]
    UnknownDomain(String),
    /// A migration switch was asked while another switch is running (in this process, or in
    /// another one sharing the route store, until that switch's lease ends). Nothing was
    /// changed.
    #[error("a switch of domain {domain:?} to {to} is in progress; wait for it to finish")]
    SwitchInProgress {
        /// The domain being switched.
        domain: String,
        /// Where it is being switched to.
        to: String,
    },
    /// A migration switch failed; the route is unchanged (still `from`) and the domain's
    /// subscriptions run on `from` again (or are retried there, see `docs/migration.md`).
    #[error(
        "switching domain {domain:?} from {from} to {to} failed while {stage}; the route stays {from}: {source}"
    )]
    SwitchFailed {
        /// The domain.
        domain: String,
        /// The backend it stays on.
        from: String,
        /// The backend it was being switched to.
        to: String,
        /// What was being done: `"draining"`, `"starting"` or `"committing"`.
        stage: &'static str,
        /// The cause.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// Wraps a backend error.
    pub fn backend(backend: &'static str, op: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            backend,
            op,
            source: source.into(),
        }
    }
}

/// `Result` with the bus [`Error`] by default.
pub type Result<T, E = Error> = std::result::Result<T, E>;
