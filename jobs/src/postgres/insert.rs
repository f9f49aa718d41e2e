//! Bulk insert. Small batches: one `INSERT ... SELECT FROM unnest(...)` per 10 000 rows. Large
//! batches (at least the store's COPY threshold): `COPY` ([`super::copy`]). Then duplicates of
//! unique keys are resolved (the holder's id, or a replacement of a waiting holder for
//! [`OnConflict::Replace`]).
//!
//! Wake-ups: inside a caller's transaction the `AFTER INSERT` trigger notifies (one NOTIFY per
//! queue per statement, folded by Postgres per transaction). The store's own inserts turn the
//! trigger off for their transaction (`windlass_jobs.notify = off`) and send the NOTIFYs the
//! store's limiter allows ([`super::notify`]).

use std::collections::{HashMap, HashSet};

use sqlx::{Connection, PgConnection, Row};

use crate::error::{Error, Result};
use crate::model::{Enqueued, JobId, NewJob, OnConflict};

/// Rows per insert statement on the `unnest` path; bigger batches are split (all in one
/// transaction).
pub(super) const INSERT_CHUNK: usize = 10_000;

/// Default batch size from which inserts use COPY instead of `unnest` statements.
pub const DEFAULT_COPY_THRESHOLD: usize = 2_000;

/// Who sends the wake-ups of an insert.
#[derive(Clone, Copy)]
pub(super) enum Wake<'a> {
    /// The insert trigger (the caller's transaction).
    Trigger,
    /// The store: the trigger is off for the transaction, these queues are notified in it.
    Client(&'a [String]),
}

/// Sets the transaction's wake-up mode: for [`Wake::Client`], turns the insert trigger off and
/// queues the NOTIFYs of `queues` (sent at commit).
pub(super) async fn prelude(conn: &mut PgConnection, wake: Wake<'_>) -> Result<()> {
    if let Wake::Client(queues) = wake {
        sqlx::query(
            "SELECT set_config('windlass_jobs.notify', 'off', true), \
                    (SELECT count(pg_notify('windlass_jobs', q)) FROM unnest($1::text[]) q)",
        )
        .bind(queues)
        .execute(&mut *conn)
        .await
        .map_err(|e| Error::pg("insert", e))?;
    }
    Ok(())
}

/// Inserts `jobs` on a connection of the store's own (not in a transaction): one statement
/// with no transaction around it when that is atomic already (a small batch without
/// replacements), else one transaction.
pub(super) async fn insert_own(
    conn: &mut PgConnection,
    jobs: Vec<NewJob>,
    queues: &[String],
    copy_threshold: usize,
) -> Result<Vec<Enqueued>> {
    let wake = Wake::Client(queues);
    let single = jobs.len() < copy_threshold.min(INSERT_CHUNK + 1)
        && !jobs.iter().any(|j| j.on_conflict == OnConflict::Replace);
    if single {
        let inserted = unnest_chunk(conn, &jobs, wake).await?;
        return resolve(conn, &jobs, inserted).await;
    }
    let mut tx = conn.begin().await.map_err(|e| Error::pg("insert", e))?;
    prelude(&mut tx, wake).await?;
    let out = insert_all(&mut tx, &jobs, copy_threshold).await?;
    tx.commit().await.map_err(|e| Error::pg("insert", e))?;
    Ok(out)
}

/// Inserts every row of `jobs` inside the current transaction: COPY at or above
/// `copy_threshold` rows, `unnest` statements below; then resolves duplicates.
pub(super) async fn insert_all(
    conn: &mut PgConnection,
    jobs: &[NewJob],
    copy_threshold: usize,
) -> Result<Vec<Enqueued>> {
    let inserted = if jobs.len() >= copy_threshold {
        super::copy::copy_rows(conn, jobs).await?
    } else {
        let mut inserted = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(INSERT_CHUNK) {
            inserted.extend(unnest_chunk(conn, chunk, Wake::Trigger).await?);
        }
        inserted
    };
    resolve(conn, jobs, inserted).await
}

/// One `INSERT ... SELECT FROM unnest(...)`; the new id of each row, `None` for a row skipped
/// as a duplicate. With [`Wake::Client`] the statement itself turns the trigger off and sends
/// the NOTIFYs (no statement of its own, no transaction needed).
async fn unnest_chunk(
    conn: &mut PgConnection,
    jobs: &[NewJob],
    wake: Wake<'_>,
) -> Result<Vec<Option<JobId>>> {
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
    const INSERT: &str = "INSERT INTO windlass_jobs (queue, kind, args, org_id, priority, state, \
                                    max_attempts, run_at, unique_key, unique_states, timeout_ms, \
                                    traceparent, tracestate) \
         SELECT q, k, a, o, p, CASE WHEN r > now() THEN 'scheduled' ELSE 'available' END, m, \
                coalesce(r, now()), u, us, t, tp, ts \
           FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::text[], $5::int2[], $6::int4[], \
                       $7::timestamptz[], $8::text[], $9::int2[], $10::int4[], $11::text[], $12::text[]) \
                AS x(q, k, a, o, p, m, r, u, us, t, tp, ts)";
    const TAIL: &str = " ON CONFLICT DO NOTHING RETURNING id, unique_key";
    static TRIGGER: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| format!("{INSERT}{TAIL}"));
    // The one-row CTE is joined to every row, so it runs before the first row is inserted and
    // the statement's AFTER trigger (at its end) sees the setting.
    static CLIENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH wake AS MATERIALIZED (SELECT set_config('windlass_jobs.notify', 'off', true) AS s, \
                    (SELECT count(pg_notify('windlass_jobs', q)) FROM unnest($13::text[]) q) AS c) \
             {INSERT} CROSS JOIN wake{TAIL}"
        )
    });
    let sql = match wake {
        Wake::Trigger => TRIGGER.as_str(),
        Wake::Client(_) => CLIENT.as_str(),
    };
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
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
        .bind(&tracestate);
    if let Wake::Client(queues) = wake {
        query = query.bind(queues);
    }
    let rows = query
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| Error::pg("insert", e))?;
    // Rows come back in insertion order; rows without a key always insert, keyed rows are
    // matched by key (a key repeated inside the chunk inserts once: its first row).
    let mut plain = Vec::new();
    let mut keyed = HashMap::new();
    for r in &rows {
        let id: i64 = r.get(0);
        match r.get::<Option<String>, _>(1) {
            None => plain.push(id),
            Some(k) => {
                keyed.insert(k, id);
            }
        }
    }
    let mut plain = plain.into_iter();
    Ok(jobs
        .iter()
        .map(|j| match &j.unique_key {
            None => plain.next(),
            Some(k) => keyed.remove(k),
        })
        .collect())
}

/// Turns the per-row outcome of the insert (`Some(id)` inserted, `None` skipped on a held
/// unique key) into results: a skipped row's holder is the batch's own row with its key, else
/// the row holding it in the table; with [`OnConflict::Replace`] a waiting holder gets the
/// row's args, `run_at` and priority.
async fn resolve(
    conn: &mut PgConnection,
    jobs: &[NewJob],
    inserted: Vec<Option<JobId>>,
) -> Result<Vec<Enqueued>> {
    debug_assert_eq!(jobs.len(), inserted.len());
    if inserted.iter().all(Option::is_some) {
        return Ok(inserted.into_iter().flatten().map(Enqueued::New).collect());
    }
    // Keys the batch itself inserted.
    let mut holders: HashMap<&str, JobId> = HashMap::new();
    for (j, id) in jobs.iter().zip(&inserted) {
        if let (Some(k), Some(id)) = (j.unique_key.as_deref(), id) {
            holders.entry(k).or_insert(*id);
        }
    }
    // Keys held by rows that were there before: look their holders up (same transaction,
    // the unique index's own condition).
    let missing: Vec<&str> = jobs
        .iter()
        .zip(&inserted)
        .filter(|(_, id)| id.is_none())
        .filter_map(|(j, _)| j.unique_key.as_deref())
        .filter(|k| !holders.contains_key(k))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut found: HashMap<String, JobId> = HashMap::new();
    if !missing.is_empty() {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT DISTINCT ON (unique_key) unique_key, id FROM windlass_jobs \
              WHERE unique_key = ANY($1) AND (unique_states & windlass_jobs_state_bit(state)) <> 0 \
              ORDER BY unique_key, id DESC",
        )
        .bind(&missing)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| Error::pg("insert", e))?;
        found.extend(rows);
    }
    let holder = |j: &NewJob| -> Option<JobId> {
        let k = j.unique_key.as_deref()?;
        holders.get(k).or_else(|| found.get(k)).copied()
    };
    // Replacements: the last replacing row of each holder wins (as one after the other would).
    let mut replace: HashMap<JobId, &NewJob> = HashMap::new();
    for (j, id) in jobs.iter().zip(&inserted) {
        if id.is_none()
            && j.on_conflict == OnConflict::Replace
            && let Some(h) = holder(j)
        {
            replace.insert(h, j);
        }
    }
    let replaced = if replace.is_empty() {
        HashSet::new()
    } else {
        replace_waiting(conn, &replace).await?
    };
    Ok(jobs
        .iter()
        .zip(inserted)
        .map(|(j, id)| match id {
            Some(id) => Enqueued::New(id),
            None => match holder(j) {
                Some(h) if j.on_conflict == OnConflict::Replace && replaced.contains(&h) => {
                    Enqueued::Replaced(h)
                }
                h => Enqueued::Duplicate(h),
            },
        })
        .collect())
}

/// Replaces args, `run_at` and priority of the holders that are still waiting (a running or
/// final holder is left alone) and wakes their queues at commit; returns the ids replaced.
async fn replace_waiting(
    conn: &mut PgConnection,
    replace: &HashMap<JobId, &NewJob>,
) -> Result<HashSet<JobId>> {
    let mut ids = Vec::with_capacity(replace.len());
    let mut args = Vec::with_capacity(replace.len());
    let mut prio = Vec::with_capacity(replace.len());
    let mut run_at = Vec::with_capacity(replace.len());
    for (id, j) in replace {
        ids.push(*id);
        args.push(sqlx::types::Json(&j.args));
        prio.push(j.priority);
        run_at.push(j.run_at);
    }
    // The state guard is re-checked on the locked row: a holder a worker claimed meanwhile
    // (now `running`) is not touched.
    let rows: Vec<(JobId, String)> = sqlx::query_as(
        "UPDATE windlass_jobs j \
            SET args = u.a, priority = u.p, run_at = coalesce(u.r, now()), \
                state = CASE WHEN j.state = 'retryable' THEN 'retryable' \
                             WHEN u.r > now() THEN 'scheduled' ELSE 'available' END \
           FROM unnest($1::int8[], $2::jsonb[], $3::int2[], $4::timestamptz[]) AS u(id, a, p, r) \
          WHERE j.id = u.id AND j.state IN ('available', 'scheduled', 'retryable') \
         RETURNING j.id, j.queue",
    )
    .bind(&ids)
    .bind(&args)
    .bind(&prio)
    .bind(&run_at)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| Error::pg("insert", e))?;
    let queues: Vec<&str> = rows.iter().map(|(_, q)| q.as_str()).collect();
    if !queues.is_empty() {
        sqlx::query(
            "SELECT pg_notify('windlass_jobs', q) FROM (SELECT DISTINCT unnest($1::text[]) AS q) s",
        )
        .bind(&queues)
        .execute(&mut *conn)
        .await
        .map_err(|e| Error::pg("insert", e))?;
    }
    Ok(rows.into_iter().map(|(id, _)| id).collect())
}
