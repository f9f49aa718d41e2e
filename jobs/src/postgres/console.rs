//! What the operations console reads at scale: the count snapshot (recounted by the
//! maintenance leader, read without counting) and listings that answer any filter from an index
//! range (schema version 5 adds the snapshot tables and one `(column, state, id)` index per
//! filter column).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use windlass_core::TenantScope;

use super::{RECORD_COLUMNS, org, record, search};
use crate::counts::CountSnapshot;
use crate::error::{Error, Result};
use crate::model::{JobFilter, JobRecord, JobState, QueueCount};

/// Advisory lock key serialising refreshes (two leaders for a moment never interleave).
const COUNTS_LOCK: i64 = 0x7769_6e64_636e_7473; // "windcnts"

/// Recounts the snapshot in one transaction: readers see the previous one until it commits.
pub(super) async fn refresh_counts(pool: &PgPool) -> Result<()> {
    let err = |e| Error::pg("refresh_counts", e);
    let mut tx = pool.begin().await.map_err(err)?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(COUNTS_LOCK)
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?;
    if !locked {
        // Another process is recounting right now.
        return Ok(());
    }
    let started = Instant::now();
    sqlx::query("DELETE FROM windlass_jobs_counts")
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    // One pass over the table for both groupings (per tenant, and over every tenant).
    sqlx::query(
        "INSERT INTO windlass_jobs_counts (queue, state, org_id, total, count) \
         SELECT queue, state, org_id, grouping(org_id) = 1, count(*) FROM windlass_jobs \
          GROUP BY GROUPING SETS ((queue, state, org_id), (queue, state))",
    )
    .execute(&mut *tx)
    .await
    .map_err(err)?;
    let took_ms = started.elapsed().as_millis().min(i64::MAX as u128) as i64;
    sqlx::query(
        "INSERT INTO windlass_jobs_counts_meta (id, refreshed_at, took_ms) VALUES (true, now(), $1) \
         ON CONFLICT (id) DO UPDATE SET refreshed_at = excluded.refreshed_at, took_ms = excluded.took_ms",
    )
    .bind(took_ms)
    .execute(&mut *tx)
    .await
    .map_err(err)?;
    tx.commit().await.map_err(err)
}

/// The snapshot within `scope`, in one statement (counts and their time from the same commit).
pub(super) async fn count_snapshot(pool: &PgPool, scope: &TenantScope) -> Result<CountSnapshot> {
    let rows = sqlx::query(
        "SELECT m.refreshed_at, m.took_ms, c.queue, c.state, c.count \
           FROM windlass_jobs_counts_meta m \
           LEFT JOIN windlass_jobs_counts c \
             ON CASE WHEN $1::text IS NULL THEN c.total ELSE NOT c.total AND c.org_id = $1 END",
    )
    .bind(org(scope))
    .fetch_all(pool)
    .await
    .map_err(|e| Error::pg("count_snapshot", e))?;
    let mut snapshot = CountSnapshot::default();
    for r in &rows {
        let at: DateTime<Utc> = r.get(0);
        let took: i64 = r.get(1);
        snapshot.refreshed_at = Some(at);
        snapshot.refresh_took = Some(Duration::from_millis(took.max(0) as u64));
        let (Some(queue), Some(state), Some(count)) = (
            r.get::<Option<String>, _>(2),
            r.get::<Option<&str>, _>(3).and_then(JobState::parse),
            r.get::<Option<i64>, _>(4),
        ) else {
            continue;
        };
        snapshot.counts.push(QueueCount {
            queue,
            state,
            count,
        });
    }
    snapshot
        .counts
        .sort_by(|a, b| (&a.queue, a.state).cmp(&(&b.queue, b.state)));
    Ok(snapshot)
}

/// A page of jobs by id. The statement is built for the filter's shape: the most selective
/// column asked (tenant, then kind, then queue) leads, and each state asked (every state when
/// none is, as soon as a column leads) is its own `ORDER BY id LIMIT n` range of the
/// `(column, state, id)` index, merged by id; a filter on states alone reads `(state, id)`; no
/// filter reads the primary key. So a filter matching no row reads a few index pages, not the
/// table. Text in args (`args::text LIKE`) is the exception: it filters the rows those ranges
/// read unless the opt-in trigram index exists (see `search`).
pub(super) async fn list(
    pool: &PgPool,
    scope: &TenantScope,
    filter: &JobFilter,
) -> Result<Vec<JobRecord>> {
    let org = match (org(scope), filter.org_id.as_deref()) {
        (Some(own), Some(asked)) if own != asked => return Ok(Vec::new()),
        (Some(own), _) => Some(own),
        (None, asked) => asked,
    };
    let pattern = filter
        .args_contains
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(search::contains_pattern);
    // $1 after, $2 limit, then the columns asked, the args pattern, then one state per branch.
    let mut binds: Vec<&str> = Vec::new();
    let mut conds = vec!["id > $1".to_owned()];
    let mut lead = None;
    for (column, value) in [
        ("org_id", org),
        ("kind", filter.kind.as_deref()),
        ("queue", filter.queue.as_deref()),
    ] {
        if let Some(v) = value {
            binds.push(v);
            conds.push(format!("{column} = ${}", binds.len() + 2));
            lead.get_or_insert(column);
        }
    }
    if let Some(p) = pattern.as_deref() {
        // Answered from the opt-in trigram index when it exists (`search`), else a filter on
        // the rows the other conditions read.
        binds.push(p);
        conds.push(format!("args::text LIKE ${}", binds.len() + 2));
    }
    let mut states: Vec<JobState> = filter.states.clone();
    states.sort();
    states.dedup();
    if states.is_empty() && lead.is_some() {
        states = JobState::ALL.to_vec();
    }
    let conds = conds.join(" AND ");
    let sql = if states.is_empty() {
        format!("SELECT {RECORD_COLUMNS} FROM windlass_jobs WHERE {conds} ORDER BY id LIMIT $2")
    } else {
        let branches: Vec<String> = (0..states.len())
            .map(|i| {
                format!(
                    "(SELECT {RECORD_COLUMNS} FROM windlass_jobs WHERE {conds} AND state = ${} \
                      ORDER BY id LIMIT $2)",
                    binds.len() + 3 + i
                )
            })
            .collect();
        if branches.len() == 1 {
            branches.into_iter().next().unwrap_or_default()
        } else {
            format!(
                "SELECT * FROM ({}) j ORDER BY id LIMIT $2",
                branches.join(" UNION ALL ")
            )
        }
    };
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(filter.after_id.unwrap_or(0))
        .bind(filter.page_size());
    for v in binds {
        query = query.bind(v);
    }
    for s in &states {
        query = query.bind(s.as_str());
    }
    let rows = query
        .fetch_all(pool)
        .await
        .map_err(|e| Error::pg("list", e))?;
    rows.iter().map(record).collect()
}
