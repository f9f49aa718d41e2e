//! Replay from the outbox history (feature `outbox-replay`): the delivered events the outbox
//! table still holds (its retention decides how far back that goes), in `seq` order (per key,
//! enqueue order). An event counts as delivered once no destination still has it pending or
//! dead (no row left in `{table}_delivery`). A plain query: it neither claims nor changes rows,
//! so the relays never notice.

use async_trait::async_trait;
use sqlx::PgPool;
use windlass_core::{Name, Topic};

use crate::error::{Error, Result};
use crate::event::Event;
use crate::handler::Handler;
use crate::replay::{Replay, ReplayEnd, ReplayFrom, ReplayOptions, ReplayReport, Run, Step};

const PAGE: i64 = 500;

/// The published history of a `windlass_outbox` table, as a [`Replay`] source.
#[derive(Debug, Clone)]
pub struct OutboxHistory {
    pool: PgPool,
    table: String,
}

impl OutboxHistory {
    /// Replays from `windlass_outbox` on `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            table: "windlass_outbox".to_owned(),
        }
    }

    /// Replays from another table (`schema.table` or `table`; each part validated as a name).
    pub fn with_table(pool: PgPool, table: &str) -> Result<Self> {
        for part in table.split('.') {
            let name = Name::parse("outbox table", part)?;
            if name.as_str().contains('-') {
                return Err(Error::Config(format!(
                    "outbox table {table:?} holds '-', not a SQL identifier"
                )));
            }
        }
        Ok(Self {
            pool,
            table: table.to_owned(),
        })
    }
}

fn db(e: sqlx::Error) -> Error {
    Error::backend("postgres", "replay", e)
}

#[async_trait]
impl Replay for OutboxHistory {
    async fn replay(
        &self,
        topic: &Topic,
        from: ReplayFrom,
        handler: &dyn Handler,
        options: &ReplayOptions,
    ) -> Result<ReplayReport> {
        let t = &self.table;
        let delivered = format!("NOT EXISTS (SELECT 1 FROM {t}_delivery d WHERE d.seq = o.seq)");
        let mut run = Run::new(handler, options, topic);
        let setup = async {
            // The end as it is now: rows published during the replay are not included.
            let end: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT max(seq) FROM {t} o WHERE topic = $1 AND {delivered}"
            )))
            .bind(topic.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
            let Some(end) = end else {
                return Ok(None);
            };
            // `after`: the replay reads rows with seq > after.
            let after: i64 = match &from {
                ReplayFrom::Beginning => 0,
                ReplayFrom::Time(at) => {
                    let first: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                        "SELECT min(seq) FROM {t} o WHERE topic = $1 AND {delivered} AND created_at >= $2"
                    )))
                    .bind(topic.as_str())
                    .bind(at)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db)?;
                    first.map_or(end, |s| s - 1)
                }
                ReplayFrom::EventId(id) => {
                    let at: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                        "SELECT min(seq) FROM {t} o WHERE topic = $1 AND {delivered} AND event::json->>'id' = $2"
                    )))
                    .bind(topic.as_str())
                    .bind(id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db)?;
                    match at {
                        Some(s) => s - 1,
                        None => {
                            return Err(Error::EventNotFound {
                                topic: topic.to_string(),
                                id: id.clone(),
                            });
                        }
                    }
                }
            };
            Ok(Some((end, after)))
        };
        let Some(setup) = run.before_deadline(setup).await else {
            return Ok(run.finish(ReplayEnd::TimedOut));
        };
        let Some((end, mut after)) = setup? else {
            run.partition(t.clone(), None);
            return Ok(run.finish(ReplayEnd::Complete));
        };
        let idx = run.partition(t.clone(), Some(end.to_string()));
        let until = options.until;
        loop {
            let page = sqlx::query_as::<_, (i64, String)>(sqlx::AssertSqlSafe(format!(
                "SELECT seq, event::text FROM {t} o WHERE topic = $1 AND {delivered} \
                 AND seq > $2 AND seq <= $3 AND ($4::timestamptz IS NULL OR created_at <= $4) \
                 ORDER BY seq LIMIT $5"
            )))
            .bind(topic.as_str())
            .bind(after)
            .bind(end)
            .bind(until)
            .bind(PAGE)
            .fetch_all(&self.pool);
            let rows = match run.before_deadline(page).await {
                None => return Ok(run.finish(ReplayEnd::TimedOut)),
                Some(Err(e)) => {
                    return Ok(run.finish(ReplayEnd::Failed(format!(
                        "reading the outbox history failed: {e}"
                    ))));
                }
                Some(Ok(rows)) => rows,
            };
            let n = rows.len();
            for (seq, json) in rows {
                after = seq;
                let entry = Event::from_json(json.as_bytes())
                    .map_err(|e| format!("undecodable outbox row: {e}"));
                if run.deliver(idx, format!("seq {seq}"), entry).await == Step::Stop {
                    let end = run.report.end.clone();
                    return Ok(run.finish(end));
                }
            }
            if (n as i64) < PAGE {
                break;
            }
        }
        run.complete(idx);
        Ok(run.finish(ReplayEnd::Complete))
    }
}
