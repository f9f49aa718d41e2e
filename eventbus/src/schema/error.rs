//! Why a schema or an event was refused.

/// Why a schema or an event was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// The event's payload does not match its schema.
    #[error("event {id} ({ty}) does not match schema {version}: {}", errors.join("; "))]
    Invalid {
        /// Event id.
        id: String,
        /// Event type.
        ty: String,
        /// The schema version (its `dataschema` URI) used.
        version: String,
        /// Each violation, with its JSON pointer.
        errors: Vec<String>,
    },
    /// The event names a `dataschema` that is not registered for its type, and no known
    /// version accepts it (or the registry's [`UnknownVersion`](crate::schema::UnknownVersion)
    /// policy is `Reject`).
    #[error("event {id} ({ty}) names dataschema {version}, which is not registered{}", tried_known(.tried))]
    UnknownVersion {
        /// Event id.
        id: String,
        /// Event type.
        ty: String,
        /// The `dataschema` it names.
        version: String,
        /// The known versions tried instead, each with why it refused the event.
        tried: Vec<String>,
    },
    /// The registry is strict and has no schema for this event type.
    #[error("no schema is registered for event type {0} (the registry is strict)")]
    Unregistered(String),
    /// The schema itself is not a valid JSON Schema.
    #[error("schema {version} of {ty} is not a valid JSON Schema: {reason}")]
    BadSchema {
        /// Event type.
        ty: String,
        /// Version.
        version: String,
        /// The compiler's message.
        reason: String,
    },
    /// A new version would break readers or writers of an earlier one under the registry's
    /// [compatibility rule](crate::schema::CompatibilityRule).
    #[error("schema {version} of {ty} is incompatible with {previous}: {}", reasons.join("; "))]
    Incompatible {
        /// Event type.
        ty: String,
        /// The refused version.
        version: String,
        /// The registered version it conflicts with.
        previous: String,
        /// Each rule broken.
        reasons: Vec<String>,
    },
    /// A schema file could not be read.
    #[error("cannot read schema file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A schema registry's REST API failed or answered something unexpected.
    #[error("schema registry {url}: {reason}")]
    Registry {
        /// The registry URL (credentials redacted).
        url: String,
        /// What failed.
        reason: String,
    },
}

fn tried_known(tried: &[String]) -> String {
    if tried.is_empty() {
        String::new()
    } else {
        format!(" and no known version accepts it ({})", tried.join("; "))
    }
}
