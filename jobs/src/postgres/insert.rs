//! Bulk insert: one `INSERT ... SELECT FROM unnest(...)` per 10 000 rows, duplicates of unique
//! keys reported with the holder's id.

use sqlx::{PgConnection, Row};

use crate::error::{Error, Result};
use crate::model::{Enqueued, NewJob};

/// Rows per insert statement; bigger batches are split (under one savepoint).
pub(super) const INSERT_CHUNK: usize = 10_000;

pub(super) async fn insert_chunk(
    conn: &mut PgConnection,
    jobs: &[NewJob],
) -> Result<Vec<Enqueued>> {
    let n = jobs.len();
    let mut queue = Vec::with_capacity(n);
    let mut kind = Vec::with_capacity(n);
    let mut args = Vec::with_capacity(n);
    let mut org = Vec::with_capacity(n);
    let mut prio = Vec::with_capacity(n);
    let mut attempts = Vec::with_capacity(n);
    let mut run_at = Vec::with_capacity(n);
    let mut ukey = Vec::with_capacity(n);
    let mut ustates = Vec::with_capacity(n);
    let mut timeout = Vec::with_capacity(n);
    let mut traceparent = Vec::with_capacity(n);
    let mut tracestate = Vec::with_capacity(n);
    for j in jobs {
        queue.push(j.queue.as_str());
        kind.push(j.kind.as_str());
        args.push(sqlx::types::Json(&j.args));
        org.push(j.org_id.as_ref().map(|o| o.as_str()));
        prio.push(j.priority);
        attempts.push(j.max_attempts);
        run_at.push(j.run_at);
        ukey.push(j.unique_key.as_deref());
        ustates.push(j.unique_states);
        timeout.push(j.timeout_ms);
        traceparent.push(j.traceparent.as_deref());
        tracestate.push(j.tracestate.as_deref());
    }
    let rows = sqlx::query(
        "INSERT INTO windlass_jobs (queue, kind, args, org_id, priority, state, max_attempts, run_at, \
                                    unique_key, unique_states, timeout_ms, traceparent, tracestate) \
         SELECT q, k, a, o, p, CASE WHEN r > now() THEN 'scheduled' ELSE 'available' END, m, \
                coalesce(r, now()), u, us, t, tp, ts \
           FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::text[], $5::int2[], $6::int4[], \
                       $7::timestamptz[], $8::text[], $9::int2[], $10::int4[], $11::text[], $12::text[]) \
                AS x(q, k, a, o, p, m, r, u, us, t, tp, ts) \
         ON CONFLICT DO NOTHING \
         RETURNING id, unique_key",
    )
    .bind(&queue)
    .bind(&kind)
    .bind(&args)
    .bind(&org)
    .bind(&prio)
    .bind(&attempts)
    .bind(&run_at)
    .bind(&ukey)
    .bind(&ustates)
    .bind(&timeout)
    .bind(&traceparent)
    .bind(&tracestate)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| Error::pg("insert", e))?;
    // Rows come back in insertion order; rows without a key always insert, keyed rows are
    // matched by key (a key repeated inside the batch inserts once, the repeats are duplicates
    // of it).
    let mut plain = Vec::new();
    let mut keyed = std::collections::HashMap::new();
    for r in &rows {
        let id: i64 = r.get(0);
        match r.get::<Option<String>, _>(1) {
            None => plain.push(id),
            Some(k) => {
                keyed.insert(k, id);
            }
        }
    }
    // Keys held by rows that were there before: look their holders up (same transaction,
    // the unique index's own condition).
    let missing: Vec<&str> = jobs
        .iter()
        .filter_map(|j| j.unique_key.as_deref())
        .filter(|k| !keyed.contains_key(*k))
        .collect();
    let mut holders: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    if !missing.is_empty() {
        let found: Vec<(String, i64)> = sqlx::query_as(
            "SELECT DISTINCT ON (unique_key) unique_key, id FROM windlass_jobs \
              WHERE unique_key = ANY($1) AND (unique_states & windlass_jobs_state_bit(state)) <> 0 \
              ORDER BY unique_key, id DESC",
        )
        .bind(&missing)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| Error::pg("insert", e))?;
        holders.extend(found);
    }
    let mut plain = plain.into_iter();
    let mut claimed = std::collections::HashSet::new();
    Ok(jobs
        .iter()
        .map(|j| match &j.unique_key {
            None => plain
                .next()
                .map_or(Enqueued::Duplicate(None), Enqueued::New),
            Some(k) => match keyed.get(k) {
                Some(id) if claimed.insert(k.clone()) => Enqueued::New(*id),
                Some(id) => Enqueued::Duplicate(Some(*id)),
                None => Enqueued::Duplicate(holders.get(k).copied()),
            },
        })
        .collect())
}
