//! Replay on Redis Streams: `XRANGE` over the topic's partition streams (entry ids carry the
//! append time in milliseconds), merged by entry id (ties by partition), with a plain
//! connection of its own: no consumer group is read or moved.

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamRangeReply};
use windlass_core::{Group, Topic};

use crate::error::{Error, Result};
use crate::event::Event;
use crate::handler::Handler;
use crate::redis::RedisBus;
use crate::replay::{Replay, ReplayFrom, ReplayOptions, ReplayReport, deliver};

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

    /// The id of the first entry of the replay (inclusive), or `None` when nothing is left.
    async fn replay_start(
        &self,
        conn: &mut MultiplexedConnection,
        key: &str,
        topic: &Topic,
        from: &ReplayFrom,
    ) -> Result<String> {
        Ok(match from {
            ReplayFrom::Beginning => "-".to_owned(),
            ReplayFrom::Time(t) => format!("{}-0", t.timestamp_millis().max(0)),
            ReplayFrom::EventId(id) => {
                let mut start = "-".to_owned();
                loop {
                    let page: StreamRangeReply = redis::cmd("XRANGE")
                        .arg(key)
                        .arg(&start)
                        .arg("+")
                        .arg("COUNT")
                        .arg(PAGE)
                        .query_async(conn)
                        .await
                        .map_err(rerr("replay"))?;
                    if page.ids.is_empty() {
                        return Err(Error::EventNotFound {
                            topic: topic.to_string(),
                            id: id.clone(),
                        });
                    }
                    if let Some(hit) = page
                        .ids
                        .iter()
                        .find(|e| decode(e).is_ok_and(|ev| ev.id() == id))
                    {
                        break hit.id.clone();
                    }
                    start = format!(
                        "({}",
                        page.ids.last().map(|e| e.id.as_str()).unwrap_or("0-0")
                    );
                }
            }
        })
    }

    /// Where the replay starts in each partition stream (an `XRANGE` start: `-`, an id, or an
    /// exclusive `(id`). By event id: the event's own entry in its partition; the other
    /// partitions from the same id on, in the (id, partition) order the replay merges by.
    async fn replay_starts(
        &self,
        conn: &mut MultiplexedConnection,
        keys: &[String],
        topic: &Topic,
        from: &ReplayFrom,
    ) -> Result<Vec<String>> {
        match from {
            ReplayFrom::EventId(id) => {
                for (found, key) in keys.iter().enumerate() {
                    match self.replay_start(conn, key, topic, from).await {
                        Ok(entry) => {
                            return Ok((0..keys.len())
                                .map(|p| {
                                    if p < found {
                                        format!("({entry}")
                                    } else {
                                        entry.clone()
                                    }
                                })
                                .collect());
                        }
                        Err(Error::EventNotFound { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                }
                Err(Error::EventNotFound {
                    topic: topic.to_string(),
                    id: id.clone(),
                })
            }
            _ => {
                let start = self.replay_start(conn, "", topic, from).await?;
                Ok(vec![start; keys.len()])
            }
        }
    }

    /// Creates consumer group `group` on every partition of `topic` positioned just before
    /// `from`, for a replay through a normal subscription. Refuses a group that exists
    /// already, so live consumers are never moved.
    pub async fn start_group_at(
        &self,
        topic: &Topic,
        group: &Group,
        from: ReplayFrom,
    ) -> Result<()> {
        let mut conn = self.replay_conn().await?;
        let keys = self.stream_keys(topic).await?;
        let starts = self.replay_starts(&mut conn, &keys, topic, &from).await?;
        let _: i64 = redis::cmd("SADD")
            .arg(self.groups_key(topic))
            .arg(group.as_str())
            .query_async(&mut conn)
            .await
            .map_err(rerr("replay"))?;
        for (key, start) in keys.iter().zip(starts) {
            let last = if start == "-" {
                "0".to_owned()
            } else if let Some(exclusive) = start.strip_prefix('(') {
                exclusive.to_owned()
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

#[async_trait]
impl Replay for RedisBus {
    async fn replay(
        &self,
        topic: &Topic,
        from: ReplayFrom,
        handler: &dyn Handler,
        options: &ReplayOptions,
    ) -> Result<ReplayReport> {
        let work = async {
            let mut conn = self.replay_conn().await?;
            let keys = self.stream_keys(topic).await?;
            let mut report = ReplayReport::default();
            // The end of each partition as it is now: entries appended during the replay are
            // not included.
            let mut ends = Vec::with_capacity(keys.len());
            for key in &keys {
                let last: StreamRangeReply = redis::cmd("XREVRANGE")
                    .arg(key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn)
                    .await
                    .map_err(rerr("replay"))?;
                let end = last
                    .ids
                    .first()
                    .map(|e| e.id.clone())
                    .map(|end| match options.until {
                        Some(u) => {
                            let bound = format!("{}-{}", u.timestamp_millis().max(0), u64::MAX);
                            if parse_id(&bound) < parse_id(&end) {
                                bound
                            } else {
                                end
                            }
                        }
                        None => end,
                    });
                ends.push(end);
            }
            if ends.iter().all(Option::is_none) {
                return Ok(report);
            }
            let starts = self.replay_starts(&mut conn, &keys, topic, &from).await?;
            // Merge the partitions by (entry id, partition), one page of each at a time.
            let mut cursors: Vec<Option<String>> = starts
                .into_iter()
                .zip(&ends)
                .map(|(s, e)| e.as_ref().map(|_| s))
                .collect();
            let mut pages: Vec<std::collections::VecDeque<StreamId>> =
                vec![std::collections::VecDeque::new(); keys.len()];
            loop {
                for p in 0..keys.len() {
                    let (Some(start), Some(end)) = (cursors[p].clone(), ends[p].as_ref()) else {
                        continue;
                    };
                    if !pages[p].is_empty() {
                        continue;
                    }
                    let page: StreamRangeReply = redis::cmd("XRANGE")
                        .arg(&keys[p])
                        .arg(&start)
                        .arg(end)
                        .arg("COUNT")
                        .arg(PAGE)
                        .query_async(&mut conn)
                        .await
                        .map_err(rerr("replay"))?;
                    cursors[p] = match page.ids.last() {
                        Some(last) if page.ids.len() >= PAGE => Some(format!("({}", last.id)),
                        _ => None,
                    };
                    pages[p].extend(page.ids);
                }
                let next = (0..keys.len())
                    .filter_map(|p| pages[p].front().map(|e| (parse_id(&e.id), p)))
                    .min();
                let Some((_, p)) = next else { break };
                let entry = pages[p].pop_front().expect("the front exists");
                if !deliver(
                    &mut report,
                    handler,
                    options,
                    topic,
                    format!("{p}/{}", entry.id),
                    decode(&entry),
                )
                .await
                {
                    return Ok(report);
                }
            }
            Ok(report)
        };
        tokio::time::timeout(options.timeout, work)
            .await
            .map_err(|_| Error::Timeout("redis replay"))?
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
