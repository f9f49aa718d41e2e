//! Errors of the job crate.

use windlass_core::{BoxError, NameError};

/// Errors of enqueueing, fetching and managing jobs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A queue, kind, tenant or cron name is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// An enqueue or worker option is negative, zero where that makes no sense, or absurd.
    #[error("invalid job option `{option}`: {reason}")]
    InvalidOption {
        /// The option at fault (`"priority"`, `"max_attempts"`, ...).
        option: &'static str,
        /// What is wrong with it and what is accepted.
        reason: String,
    },
    /// The job's arguments could not be serialized to JSON.
    #[error("job arguments of kind `{kind}` could not be serialized: {source}")]
    Serialize {
        /// Job kind.
        kind: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// The job's arguments hold a value the database cannot store (a NUL character in a
    /// string or a key). Caught at validation: nothing is inserted.
    #[error("job arguments of kind `{kind}` are invalid: {reason}")]
    InvalidArgs {
        /// Job kind.
        kind: String,
        /// What is wrong and where.
        reason: String,
    },
    /// The job's arguments encode to more JSON than the enqueue's limit
    /// ([`EnqueueOptions::max_args_size`](crate::EnqueueOptions::max_args_size), default
    /// [`DEFAULT_MAX_ARGS_SIZE`](crate::DEFAULT_MAX_ARGS_SIZE)). Caught at validation: nothing
    /// is inserted.
    #[error("job arguments of kind `{kind}` encode to {size} bytes, over the limit of {limit}")]
    ArgsTooLarge {
        /// Job kind.
        kind: String,
        /// Encoded size (compact JSON), in bytes.
        size: usize,
        /// The limit in force, in bytes.
        limit: usize,
    },
    /// A cron expression did not parse.
    #[error("cron schedule {pattern:?} is invalid: {reason}")]
    Cron {
        /// The expression given.
        pattern: String,
        /// The parser's complaint.
        reason: String,
    },
    /// Putting a job back into a waiting state would break its uniqueness: another job with
    /// the same unique key is already waiting or running.
    #[error("job {id} cannot be retried: another job holds its unique key {unique_key:?}")]
    UniqueConflict {
        /// The job that was to be retried.
        id: i64,
        /// Its unique key.
        unique_key: String,
    },
    /// The job is running: `retry_now` would start a second attempt while the first still
    /// runs. Cancel it (a request the worker acts on) and retry once it is final.
    #[error("job {id} is running; it cannot be retried until its attempt ends")]
    JobRunning {
        /// The job.
        id: i64,
    },
    /// The attempt no longer holds its job (it was rescued, or its row changed): a completion
    /// inside the job's own transaction was refused. Roll that transaction back.
    #[error("job {id} attempt {attempt} no longer holds its job; roll back its transaction")]
    AttemptLost {
        /// The job.
        id: i64,
        /// The attempt that lost it (`u32` like [`JobContext::attempt`](crate::JobContext::attempt)).
        attempt: u32,
    },
    /// [`RunningWorker::drain`](crate::RunningWorker::drain) found work still due or running
    /// when its timeout passed (the worker was shut down).
    #[error("the worker did not drain its queues within {after:?}")]
    DrainTimeout {
        /// The timeout given.
        after: std::time::Duration,
    },
    /// The handle's tenant scope does not allow this: enqueueing another tenant's job, or a
    /// queue-wide operation through a tenant's handle.
    #[error("out of the handle's tenant scope: {what}")]
    OutOfScope {
        /// What was refused.
        what: String,
    },
    /// The store (database) failed; `op` says what was being done. Safe to retry.
    #[error("job store {backend} {op} failed: {source}")]
    Store {
        /// Backend name (`"postgres"`, `"memory"`).
        backend: &'static str,
        /// Operation (`"insert"`, `"fetch"`, `"complete"`, ...).
        op: &'static str,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    pub(crate) fn invalid(option: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidOption {
            option,
            reason: reason.into(),
        }
    }

    #[cfg(feature = "postgres")]
    pub(crate) fn pg(op: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Store {
            backend: "postgres",
            op,
            source: source.into(),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
