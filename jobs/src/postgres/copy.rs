//! The COPY path of bulk insert: ids are taken from the table's sequence first (one query,
//! which also reads the transaction's `now()` so `run_at` and the state are what the `unnest`
//! path would give), then the rows go in with `COPY ... FROM STDIN` (text format). A batch
//! without unique keys is copied straight into `windlass_jobs`; one with keys is copied into a
//! temporary staging table (`ON COMMIT DROP`, dropped right after) and moved with
//! `INSERT ... SELECT ... ON CONFLICT DO NOTHING`, so duplicates are skipped like on the
//! `unnest` path. Runs inside the caller's transaction (or the store's), so it is atomic with
//! everything else in it.

use std::collections::HashSet;
use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::PgConnection;

use crate::error::{Error, Result};
use crate::model::{JobId, NewJob};

/// The columns the COPY writes, in order.
const COLUMNS: &str = "id, queue, kind, args, org_id, priority, state, max_attempts, run_at, \
                       unique_key, unique_states, timeout_ms, traceparent, tracestate";

/// Bytes buffered before a chunk of COPY data is sent.
const SEND_AT: usize = 1 << 20;

/// Copies `jobs` in; the new id of each row, `None` for a row skipped as a duplicate.
pub(super) async fn copy_rows(
    conn: &mut PgConnection,
    jobs: &[NewJob],
) -> Result<Vec<Option<JobId>>> {
    let (now, ids): (DateTime<Utc>, Vec<i64>) = sqlx::query_as(
        "SELECT now(), ARRAY(SELECT nextval('windlass_jobs_id_seq') FROM generate_series(1, $1))",
    )
    .bind(jobs.len() as i64)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| Error::pg("insert", e))?;
    if ids.len() != jobs.len() {
        return Err(Error::pg(
            "insert",
            format!(
                "asked {} ids of the sequence, got {}",
                jobs.len(),
                ids.len()
            ),
        ));
    }
    let keyed = jobs.iter().any(|j| j.unique_key.is_some());
    if !keyed {
        copy_into(conn, "windlass_jobs", jobs, &ids, now).await?;
        return Ok(ids.into_iter().map(Some).collect());
    }
    sqlx::query(
        "CREATE TEMP TABLE windlass_jobs_stage ( \
             id bigint, queue text, kind text, args jsonb, org_id text, priority smallint, \
             state text, max_attempts integer, run_at timestamptz, unique_key text, \
             unique_states smallint, timeout_ms integer, traceparent text, tracestate text) \
         ON COMMIT DROP",
    )
    .execute(&mut *conn)
    .await
    .map_err(|e| Error::pg("insert", e))?;
    copy_into(conn, "windlass_jobs_stage", jobs, &ids, now).await?;
    // Rows go in in batch order, so of rows sharing a key the first one inserts.
    let skipped: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "WITH ins AS ( \
             INSERT INTO windlass_jobs ({COLUMNS}) \
             SELECT {COLUMNS} FROM windlass_jobs_stage ORDER BY id \
             ON CONFLICT DO NOTHING RETURNING id) \
         SELECT s.id FROM windlass_jobs_stage s \
          WHERE s.unique_key IS NOT NULL AND NOT EXISTS (SELECT 1 FROM ins WHERE ins.id = s.id)"
    )))
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| Error::pg("insert", e))?;
    sqlx::query("DROP TABLE windlass_jobs_stage")
        .execute(&mut *conn)
        .await
        .map_err(|e| Error::pg("insert", e))?;
    let skipped: HashSet<i64> = skipped.into_iter().collect();
    Ok(ids
        .into_iter()
        .map(|id| (!skipped.contains(&id)).then_some(id))
        .collect())
}

/// `COPY table (COLUMNS) FROM STDIN` of `jobs` with their `ids`.
async fn copy_into(
    conn: &mut PgConnection,
    table: &str,
    jobs: &[NewJob],
    ids: &[i64],
    now: DateTime<Utc>,
) -> Result<()> {
    let mut copy = conn
        .copy_in_raw(&format!("COPY {table} ({COLUMNS}) FROM STDIN"))
        .await
        .map_err(|e| Error::pg("insert", e))?;
    let mut buf = Vec::with_capacity(SEND_AT + 64 * 1024);
    let mut failed = None;
    for (j, id) in jobs.iter().zip(ids) {
        encode_row(&mut buf, j, *id, now);
        if buf.len() >= SEND_AT {
            if let Err(e) = copy.send(buf.as_slice()).await {
                failed = Some(e);
                break;
            }
            buf.clear();
        }
    }
    if failed.is_none() && !buf.is_empty() {
        failed = copy.send(buf.as_slice()).await.err();
    }
    match failed {
        Some(e) => {
            let _ = copy.abort("windlass-jobs: sending the rows failed").await;
            Err(Error::pg("insert", e))
        }
        None => copy
            .finish()
            .await
            .map(|_| ())
            .map_err(|e| Error::pg("insert", e)),
    }
}

/// One row in COPY text format (tab-separated, `\N` for NULL, backslash escapes).
pub(super) fn encode_row(buf: &mut Vec<u8>, j: &NewJob, id: i64, now: DateTime<Utc>) {
    let run_at = j.run_at.unwrap_or(now);
    let state = if run_at > now {
        "scheduled"
    } else {
        "available"
    };
    let _ = write!(buf, "{id}\t");
    text(buf, Some(j.queue.as_str()));
    text(buf, Some(j.kind.as_str()));
    {
        // `Value` to an in-memory buffer cannot fail.
        let mut w = Escaper(buf);
        let _ = serde_json::to_writer(&mut w, &j.args);
    }
    buf.push(b'\t');
    text(buf, j.org_id.as_ref().map(|o| o.as_str()));
    let _ = write!(buf, "{}\t{state}\t{}\t", j.priority, j.max_attempts);
    let _ = write!(
        buf,
        "{}\t",
        run_at.to_rfc3339_opts(SecondsFormat::Micros, true)
    );
    text(buf, j.unique_key.as_deref());
    let _ = write!(buf, "{}\t", j.unique_states);
    match j.timeout_ms {
        Some(t) => {
            let _ = write!(buf, "{t}\t");
        }
        None => buf.extend_from_slice(b"\\N\t"),
    }
    text(buf, j.traceparent.as_deref());
    // The last column ends the line instead of a tab.
    if let Some(ts) = &j.tracestate {
        let mut w = Escaper(buf);
        let _ = w.write_all(ts.as_bytes());
    } else {
        buf.extend_from_slice(b"\\N");
    }
    buf.push(b'\n');
}

/// A text column followed by a tab.
fn text(buf: &mut Vec<u8>, v: Option<&str>) {
    match v {
        Some(s) => {
            let mut w = Escaper(buf);
            let _ = w.write_all(s.as_bytes());
        }
        None => buf.extend_from_slice(b"\\N"),
    }
    buf.push(b'\t');
}

/// Writes bytes escaped for COPY text format: backslash, newline, carriage return and tab.
struct Escaper<'a>(&'a mut Vec<u8>);

impl Write for Escaper<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut start = 0;
        for (i, b) in data.iter().enumerate() {
            let esc: &[u8] = match b {
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                _ => continue,
            };
            self.0.extend_from_slice(&data[start..i]);
            self.0.extend_from_slice(esc);
            start = i + 1;
        }
        self.0.extend_from_slice(&data[start..]);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_copy_text_format_needs() {
        let mut buf = Vec::new();
        Escaper(&mut buf).write_all(b"a\\b\tc\nd\re\x01").unwrap();
        assert_eq!(buf, b"a\\\\b\\tc\\nd\\re\x01");
    }

    #[test]
    fn encodes_a_row_with_nulls_and_escaped_json() {
        let job = crate::EnqueueOptions::new()
            .queue("q")
            .build_raw("k", serde_json::json!({"s": "x\"y\\z\n"}))
            .unwrap();
        let now = Utc::now();
        let mut buf = Vec::new();
        encode_row(&mut buf, &job, 7, now);
        let line = String::from_utf8(buf).unwrap();
        let cols: Vec<&str> = line.trim_end_matches('\n').split('\t').collect();
        assert_eq!(cols.len(), 14, "{line}");
        assert_eq!(&cols[..3], ["7", "q", "k"]);
        // JSON's own escapes get their backslashes doubled.
        assert_eq!(cols[3], r#"{"s":"x\\"y\\\\z\\n"}"#);
        assert_eq!((cols[4], cols[6]), ("\\N", "available"));
        assert_eq!(cols[13], "\\N");
    }
}
