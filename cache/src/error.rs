//! Errors of the cache.

use std::fmt;
use std::sync::Arc;

use windlass_core::{BoxError, NameError};

/// Errors of the cache. Reads never fail because the store is down or a stored value no longer
/// decodes (those are misses, counted); writes and invalidations report store failures so the
/// caller can decide (most ignore them).
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
    /// The loader of [`CacheEntry::get_or_load`](crate::CacheEntry::get_or_load) failed and no
    /// stale value could be served in its place.
    #[error("cache loader failed: {0}")]
    Load(#[source] LoadError),
    /// Invalid configuration.
    #[error("invalid cache configuration: {0}")]
    Config(String),
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

    /// True for store failures and timeouts (the cases a caller may ignore on writes).
    pub fn is_store_unavailable(&self) -> bool {
        matches!(self, Error::Backend { .. } | Error::Timeout { .. })
    }
}

/// The error a loader returned. Cheap to clone: every caller that shared one load gets it.
#[derive(Clone)]
pub struct LoadError(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl LoadError {
    pub(crate) fn new(source: impl Into<BoxError>) -> Self {
        let boxed: BoxError = source.into();
        Self(Arc::from(boxed))
    }

    /// The loader's error.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Debug for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// `Result` with the cache [`Error`] by default.
pub type Result<T, E = Error> = std::result::Result<T, E>;
