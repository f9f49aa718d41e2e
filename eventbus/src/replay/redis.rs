//! Replay on Redis Streams: `XRANGE` over each stream of the topic (entry ids carry the append
//! time in milliseconds), with a plain connection of its own: no consumer group is read or moved.
//!
//! A topic's streams (one per partition) come from [`RedisBus::stream_keys`]. Each stream gets its own end id (its last entry when the replay starts) and is read in
//! order up to it; the streams are merged by entry id, so the replay follows append time
//! across partitions.

use std::collections::VecDeque;

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamRangeReply};
use windlass_core::{Group, Topic};

use crate::error::{Error, Result};
use crate::event::Event;
use crate::handler::Handler;
use crate::redis::RedisBus;
use crate::replay::{Replay, ReplayEnd, ReplayFrom, ReplayOptions, ReplayReport, Run, Step};

const PAGE: usize = 500;
fn rerr(op: &'static str) -> impl Fn(redis::RedisError) -> Error {
    move |e| Error::backend("redis", op, e)
}

/// A stream id parsed as (ms, seq).
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The id just before `id`, for an exclusive range start / a group's last-delivered id.
fn before(id: &str) -> String {
    match parse_id(id) {
        Some((0, 0)) | None => "0-0".to_owned(),
        Some((ms, 0)) => format!("{}-{}", ms - 1, u64::MAX),
        Some((ms, seq)) => format!("{ms}-{}", seq - 1),
    }
}

fn decode(entry: &StreamId) -> std::result::Result<Event, String> {
    match entry.map.get("event") {
        Some(redis::Value::BulkString(b)) => {
            Event::from_json(b).map_err(|e| format!("undecodable entry: {e}"))
        }
        Some(redis::Value::SimpleString(s)) => {
            Event::from_json(s.as_bytes()).map_err(|e| format!("undecodable entry: {e}"))
        }
        _ => Err("entry has no `event` field".to_owned()),
    }
}

/// One stream being replayed: entries read ahead, where the next page starts, its end.
struct Cursor {
    idx: usize,
    key: String,
    /// Next `XRANGE` start (inclusive id, `-`, or `(id` exclusive).
    next: String,
    /// Last entry id to replay (inclusive).
    end: String,
    buffer: VecDeque<StreamId>,
    /// No more pages: the stream is done once `buffer` is empty.
    exhausted: bool,
}

async fn xrange(
    conn: &mut MultiplexedConnection,
    key: &str,
    start: &str,
    end: &str,
    count: usize,
) -> redis::RedisResult<Vec<StreamId>> {
    let page: StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg(start)
        .arg(end)
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    Ok(page.ids)
}

impl RedisBus {
    async fn replay_conn(&self) -> Result<MultiplexedConnection> {
        let client = redis::Client::open(self.config().url.as_str()).map_err(|e| {
            Error::Config(format!(
                "invalid redis URL {}: {e}",
                windlass_core::redact_url(&self.config().url)
            ))
        })?;
        client
            .get_multiplexed_async_connection()
            .await
            .map_err(rerr("replay"))
    }

    /// The streams holding `topic`'s entries, one per partition ([`RedisBus::stream_keys`]);
    /// replay (end ids, merge, `start_group_at`) follows them.
    pub(crate) async fn replay_streams(&self, topic: &Topic) -> Result<Vec<String>> {
        self.stream_keys(topic).await
    }

    /// The first entry of the replay in each stream (inclusive id, or `-`).
    async fn replay_starts(
        &self,
        conn: &mut MultiplexedConnection,
        streams: &[String],
        topic: &Topic,
        from: &ReplayFrom,
    ) -> Result<Vec<String>> {
        Ok(match from {
            ReplayFrom::Beginning => vec!["-".to_owned(); streams.len()],
            ReplayFrom::Time(t) => {
                vec![format!("{}-0", t.timestamp_millis().max(0)); streams.len()]
            }
            ReplayFrom::EventId(id) => {
                for (i, key) in streams.iter().enumerate() {
                    if let Some(hit) = find_entry(conn, key, id).await? {
                        // The event's stream starts at it; the others at its append time.
                        let at = parse_id(&hit).map_or(0, |(ms, _)| ms);
                        let mut starts = vec![format!("{at}-0"); streams.len()];
                        starts[i] = hit;
                        return Ok(starts);
                    }
                }
                return Err(Error::EventNotFound {
                    topic: topic.to_string(),
                    id: id.clone(),
                });
            }
        })
    }

    /// Creates consumer group `group` on each of `topic`'s streams positioned just before
    /// `from`, for a replay through a normal subscription. Refuses a group that exists
    /// already, so live consumers are never moved.
    pub async fn start_group_at(
        &self,
        topic: &Topic,
        group: &Group,
        from: ReplayFrom,
    ) -> Result<()> {
        let mut conn = self.replay_conn().await?;
        let streams = self.replay_streams(topic).await?;
        let starts = self
            .replay_starts(&mut conn, &streams, topic, &from)
            .await?;
        // Registered like any group, so the operator API lists it.
        let _: i64 = redis::cmd("SADD")
            .arg(self.groups_key(topic))
            .arg(group.as_str())
            .query_async(&mut conn)
            .await
            .map_err(rerr("replay"))?;
        for (key, start) in streams.iter().zip(starts) {
            let last = if start == "-" {
                "0".to_owned()
            } else {
                before(&start)
            };
            let r: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(key)
                .arg(group.as_str())
                .arg(&last)
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match r {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {
                    return Err(Error::Config(format!(
                        "consumer group {group} already exists on {topic}; replay into a new group"
                    )));
                }
                Err(e) => return Err(Error::backend("redis", "replay", e)),
            }
        }
        Ok(())
    }
}

/// The id of the entry holding event `id` in stream `key`, scanning from the oldest.
async fn find_entry(
    conn: &mut MultiplexedConnection,
    key: &str,
    id: &str,
) -> Result<Option<String>> {
    let mut start = "-".to_owned();
    loop {
        let page = xrange(conn, key, &start, "+", PAGE)
            .await
            .map_err(rerr("replay"))?;
        if let Some(hit) = page
            .iter()
            .find(|e| decode(e).is_ok_and(|ev| ev.id() == id))
        {
            return Ok(Some(hit.id.clone()));
        }
        match page.last() {
            Some(last) if page.len() == PAGE => start = format!("({}", last.id),
            _ => return Ok(None),
        }
    }
}

#[async_trait]
impl Replay for RedisBus {
    async fn replay(
        &self,
        topic: &Topic,
        from: ReplayFrom,
        handler: &dyn Handler,
        options: &ReplayOptions,
    ) -> Result<ReplayReport> {
        let mut run = Run::new(handler, options, topic);
        let setup = async {
            let mut conn = self.replay_conn().await?;
            let streams = self.replay_streams(topic).await?;
            // The end of each stream as it is now: entries appended during the replay are not
            // included.
            let mut ends = Vec::with_capacity(streams.len());
            for key in &streams {
                let last: StreamRangeReply = redis::cmd("XREVRANGE")
                    .arg(key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn)
                    .await
                    .map_err(rerr("replay"))?;
                ends.push(last.ids.first().map(|e| e.id.clone()));
            }
            let starts = self
                .replay_starts(&mut conn, &streams, topic, &from)
                .await?;
            Ok::<_, Error>((conn, streams, ends, starts))
        };
        let Some(setup) = run.before_deadline(setup).await else {
            return Ok(run.finish(ReplayEnd::TimedOut));
        };
        let (mut conn, streams, ends, starts) = setup?;
        let bound = options
            .until
            .map(|u| format!("{}-{}", u.timestamp_millis().max(0), u64::MAX));
        let mut cursors = Vec::new();
        for ((key, end), start) in streams.into_iter().zip(ends).zip(starts) {
            let idx = run.partition(key.clone(), end.clone());
            let Some(end) = end else { continue };
            let end = match &bound {
                Some(b) if parse_id(b) < parse_id(&end) => b.clone(),
                _ => end,
            };
            cursors.push(Cursor {
                idx,
                key,
                next: start,
                end,
                buffer: VecDeque::new(),
                exhausted: false,
            });
        }
        loop {
            // Refill each stream that ran dry, then take the smallest id across streams.
            for c in cursors.iter_mut() {
                if !c.buffer.is_empty() || c.exhausted {
                    continue;
                }
                let page = match run
                    .before_deadline(xrange(&mut conn, &c.key, &c.next, &c.end, PAGE))
                    .await
                {
                    None => return Ok(run.finish(ReplayEnd::TimedOut)),
                    Some(Err(e)) => {
                        return Ok(run.finish(ReplayEnd::Failed(format!(
                            "redis XRANGE on {} failed: {e}",
                            c.key
                        ))));
                    }
                    Some(Ok(page)) => page,
                };
                c.exhausted = page.len() < PAGE;
                if let Some(last) = page.last() {
                    c.next = format!("({}", last.id);
                }
                c.buffer.extend(page);
            }
            cursors.retain(|c| {
                let done = c.buffer.is_empty() && c.exhausted;
                if done {
                    run.complete(c.idx);
                }
                !done
            });
            let Some(c) = cursors
                .iter_mut()
                .min_by_key(|c| c.buffer.front().and_then(|e| parse_id(&e.id)))
            else {
                return Ok(run.finish(ReplayEnd::Complete));
            };
            let Some(entry) = c.buffer.pop_front() else {
                continue;
            };
            let idx = c.idx;
            if run.deliver(idx, entry.id.clone(), decode(&entry)).await == Step::Stop {
                let end = run.report.end.clone();
                return Ok(run.finish(end));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::before;

    #[test]
    fn before_steps_back_one_id() {
        assert_eq!(before("5-3"), "5-2");
        assert_eq!(before("5-0"), format!("4-{}", u64::MAX));
        assert_eq!(before("0-0"), "0-0");
    }
}
