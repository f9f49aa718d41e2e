//! Errors of the cache: [`Error`] for cache operations, [`LoadError`] for `get_or_load`, which
//! keeps the loader's own error type.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use windlass_core::{BoxError, NameError};

/// Errors of the cache. Reads never fail because the store is down or a stored value no longer
/// decodes (those are misses, counted); writes and invalidations report store failures so the
/// caller can decide (failed invalidations and deletes are also queued and replayed, see
/// [`Cache::pending_invalidations`](crate::Cache::pending_invalidations)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A data type, tag or key is not a valid name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The encoded value is larger than the data type's limit; it was not stored.
    #[error(
        "cache value for {data_type} is {size} bytes, over the limit of {limit} bytes; raise TypePolicy::max_value_bytes or cache less"
    )]
    TooLarge {
        /// The data type.
        data_type: String,
        /// Encoded size in bytes.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// More tags on one entry than [`MAX_TAGS`](crate::MAX_TAGS).
    #[error("{count} tags on one cache entry, over the limit of {limit}")]
    TooManyTags {
        /// Tags given.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The value could not be serialized.
    #[error("cache value for {data_type} could not be serialized: {source}")]
    Encode {
        /// The data type.
        data_type: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// The store failed; `op` says what was being done. Reads fall through instead of returning
    /// this; writes and invalidations return it.
    #[error("cache store {backend} {op} failed: {source}")]
    Backend {
        /// Store name (`"redis"`, `"memory"`).
        backend: &'static str,
        /// Operation (`"read"`, `"write"`, `"invalidate"`...).
        op: &'static str,
        /// The store's own error.
        #[source]
        source: BoxError,
    },
    /// A store call did not answer within [`CacheOptions::timeout`](crate::CacheOptions).
    #[error(
        "cache store {op} timed out after {millis} ms; is the store overloaded or unreachable?"
    )]
    Timeout {
        /// Operation.
        op: &'static str,
        /// The timeout that expired, in milliseconds.
        millis: u64,
    },
    /// The circuit breaker around the store is open (the store failed repeatedly): the call
    /// was not attempted. It closes again after a successful probe.
    #[error(
        "cache store {backend} is unavailable (circuit breaker open after repeated failures); {op} not attempted"
    )]
    Unavailable {
        /// Store name.
        backend: &'static str,
        /// Operation that was not attempted.
        op: &'static str,
    },
    /// Invalid configuration or options.
    #[error("invalid cache configuration: {0}")]
    Config(String),
    /// A loader failed (from a [`LoadError`] converted with `?`).
    #[error("cache loader failed: {0}")]
    Load(#[source] BoxError),
}

impl Error {
    /// Wraps a store error.
    pub fn backend(backend: &'static str, op: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            backend,
            op,
            source: source.into(),
        }
    }

    /// True for store failures, timeouts and an open breaker (the cases a caller may ignore on
    /// writes and invalidations: these are queued and replayed).
    pub fn is_store_unavailable(&self) -> bool {
        matches!(
            self,
            Error::Backend { .. } | Error::Timeout { .. } | Error::Unavailable { .. }
        )
    }
}

/// How [`CacheEntry::get_or_load`](crate::CacheEntry::get_or_load) failed. The loader's own
/// error keeps its type (`E`), shared behind an `Arc` by every caller that joined the load.
#[non_exhaustive]
pub enum LoadError<E> {
    /// The loader returned this error (and no stale value could be served in its place).
    Loader(Arc<E>),
    /// No value within the data type's hard timeout (the loader, or the load this call waited
    /// for, was abandoned).
    TimedOut {
        /// The hard timeout that expired.
        after: Duration,
    },
    /// The loader panicked.
    Panicked,
    /// Invalid input (key, tags, options) or a misuse of the data type; nothing was loaded.
    Cache(Error),
}

impl<E> LoadError<E> {
    /// The loader's error, if that is what failed.
    pub fn loader_error(&self) -> Option<&E> {
        match self {
            LoadError::Loader(e) => Some(e),
            _ => None,
        }
    }
}

impl<E> From<Error> for LoadError<E> {
    fn from(e: Error) -> Self {
        LoadError::Cache(e)
    }
}

impl<E> Clone for LoadError<E> {
    fn clone(&self) -> Self {
        match self {
            LoadError::Loader(e) => LoadError::Loader(e.clone()),
            LoadError::TimedOut { after } => LoadError::TimedOut { after: *after },
            LoadError::Panicked => LoadError::Panicked,
            // Cache errors are never shared between callers; a clone keeps the message.
            LoadError::Cache(e) => LoadError::Cache(Error::Config(e.to_string())),
        }
    }
}

impl<E: fmt::Debug> fmt::Debug for LoadError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Loader(e) => f.debug_tuple("Loader").field(e).finish(),
            LoadError::TimedOut { after } => {
                f.debug_struct("TimedOut").field("after", after).finish()
            }
            LoadError::Panicked => f.write_str("Panicked"),
            LoadError::Cache(e) => f.debug_tuple("Cache").field(e).finish(),
        }
    }
}

impl<E: fmt::Display> fmt::Display for LoadError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Loader(e) => write!(f, "cache loader failed: {e}"),
            LoadError::TimedOut { after } => write!(
                f,
                "cache load gave up after the hard timeout of {} ms",
                after.as_millis()
            ),
            LoadError::Panicked => f.write_str("cache loader panicked"),
            LoadError::Cache(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for LoadError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadError::Loader(e) => Some(&**e),
            LoadError::Cache(e) => Some(e),
            _ => None,
        }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<LoadError<E>> for Error {
    fn from(e: LoadError<E>) -> Self {
        match e {
            LoadError::Cache(e) => e,
            other => Error::Load(Box::new(other)),
        }
    }
}

/// `Result` with the cache [`Error`] by default.
pub type Result<T, E = Error> = std::result::Result<T, E>;
