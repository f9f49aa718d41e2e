//! Insert into the memory store: unique keys (skip or replace a waiting holder) like the
//! Postgres unique index.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Row, State, is_waiting};
use crate::model::{Enqueued, JobRecord, JobState, NewJob, OnConflict};

/// Inserts `jobs` at `now`; returns the results in input order and the queues to wake.
pub(super) fn insert(
    st: &mut State,
    jobs: Vec<NewJob>,
    now: DateTime<Utc>,
) -> (Vec<Enqueued>, BTreeSet<String>) {
    let mut notify = BTreeSet::new();
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        let run_at = job.run_at.unwrap_or(now);
        let state = if run_at > now {
            JobState::Scheduled
        } else {
            JobState::Available
        };
        if let Some(key) = &job.unique_key {
            // A key is blocked by a row holding it in a state that row's own mask covers, and
            // by a row in a state the new job's mask covers (the Postgres unique index
            // compares the new row's state with its own mask).
            let clash = st
                .jobs
                .values_mut()
                .rev()
                .find(|r| {
                    r.rec.unique_key.as_deref() == Some(key.as_str())
                        && r.holds_unique()
                        && job.unique_states & state.bit() != 0
                })
                .map(|r| &mut r.rec);
            if let Some(holder) = clash {
                if job.on_conflict == OnConflict::Replace && is_waiting(holder.state) {
                    holder.args = job.args;
                    holder.run_at = run_at;
                    holder.priority = job.priority;
                    if holder.state != JobState::Retryable {
                        holder.state = state;
                    }
                    notify.insert(holder.queue.clone());
                    out.push(Enqueued::Replaced(holder.id));
                } else {
                    out.push(Enqueued::Duplicate(Some(holder.id)));
                }
                continue;
            }
        }
        st.next_id += 1;
        let id = st.next_id;
        notify.insert(job.queue.as_str().to_owned());
        let rec = JobRecord {
            id,
            queue: job.queue.as_str().to_owned(),
            kind: job.kind.as_str().to_owned(),
            args: job.args,
            org_id: job.org_id.map(|o| o.as_str().to_owned()),
            priority: job.priority,
            state,
            attempt: 0,
            max_attempts: job.max_attempts,
            run_at,
            attempted_at: None,
            heartbeat_at: None,
            locked_by: None,
            unique_key: job.unique_key,
            errors: Vec::new(),
            timeout: job.timeout_ms.map(|ms| Duration::from_millis(ms as u64)),
            created_at: now,
            finalized_at: None,
            stop_requested: None,
            traceparent: job.traceparent,
            tracestate: job.tracestate,
        };
        st.jobs.insert(
            id,
            Row {
                rec,
                unique_states: job.unique_states,
            },
        );
        out.push(Enqueued::New(id));
    }
    (out, notify)
}
