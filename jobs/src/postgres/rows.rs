//! Row decoding shared by the store's statements: the record columns, records, fetched jobs,
//! tenant scope and attempt-token arrays.

use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::PgRow;
use windlass_core::TenantScope;

use crate::error::{Error, Result};
use crate::model::{AttemptError, AttemptToken, FetchedJob, JobId, JobRecord, JobState};

pub(super) const RECORD_COLUMNS: &str = "id, queue, kind, args, org_id, priority, state, attempt, max_attempts, run_at, \
     attempted_at, heartbeat_at, locked_by, unique_key, errors, timeout_ms, created_at, finalized_at, \
     stop_requested, traceparent, tracestate";

pub(super) fn record(r: &PgRow) -> Result<JobRecord> {
    let state: String = r.get("state");
    let errors: serde_json::Value = r.get("errors");
    Ok(JobRecord {
        id: r.get("id"),
        queue: r.get("queue"),
        kind: r.get("kind"),
        args: r.get("args"),
        org_id: r.get("org_id"),
        priority: r.get("priority"),
        state: JobState::parse(&state).ok_or_else(|| {
            Error::pg(
                "decode",
                format!("unknown job state {state:?} in windlass_jobs"),
            )
        })?,
        attempt: r.get("attempt"),
        max_attempts: r.get("max_attempts"),
        run_at: r.get("run_at"),
        attempted_at: r.get("attempted_at"),
        heartbeat_at: r.get("heartbeat_at"),
        locked_by: r.get("locked_by"),
        unique_key: r.get("unique_key"),
        // Entries written by hand that do not match are skipped rather than failing a listing.
        errors: match errors {
            serde_json::Value::Array(items) => items
                .into_iter()
                .filter_map(|v| serde_json::from_value::<AttemptError>(v).ok())
                .collect(),
            _ => Vec::new(),
        },
        timeout: r
            .get::<Option<i32>, _>("timeout_ms")
            .map(|ms| Duration::from_millis(ms.max(1) as u64)),
        created_at: r.get("created_at"),
        finalized_at: r.get("finalized_at"),
        stop_requested: r
            .get::<Option<&str>, _>("stop_requested")
            .and_then(JobState::parse),
        traceparent: r.get("traceparent"),
        tracestate: r.get("tracestate"),
    })
}

/// The tenant a scope is limited to, as the `$n::text` SQL parameter (NULL: every tenant).
pub(super) fn org(scope: &TenantScope) -> Option<&str> {
    scope.org_id().map(|o| o.as_str())
}

/// What a claim returns, in the order [`fetched`] reads it.
pub(super) const FETCHED_COLUMNS: &str = "j.id, j.queue, j.kind, j.args, j.org_id, j.priority, j.attempt, \
     j.max_attempts, j.run_at, j.timeout_ms, j.traceparent, j.tracestate";

/// Decodes fetched rows ([`FETCHED_COLUMNS`]), most urgent first.
pub(super) fn fetched(rows: &[PgRow]) -> Vec<FetchedJob> {
    let mut jobs: Vec<FetchedJob> = rows
        .iter()
        .map(|r| FetchedJob {
            id: r.get(0),
            queue: r.get(1),
            kind: r.get(2),
            args: r.get(3),
            org_id: r.get(4),
            priority: r.get(5),
            attempt: r.get(6),
            max_attempts: r.get(7),
            run_at: r.get(8),
            timeout: r
                .get::<Option<i32>, _>(9)
                .map(|ms| Duration::from_millis(ms.max(1) as u64)),
            traceparent: r.get(10),
            tracestate: r.get(11),
        })
        .collect();
    jobs.sort_by_key(|a| (a.priority, a.run_at, a.id));
    jobs
}

pub(super) fn token_arrays(attempts: &[AttemptToken]) -> (Vec<JobId>, Vec<i32>) {
    attempts.iter().map(|t| (t.id, t.attempt)).unzip()
}
