//! Replay on Redis Streams: `XRANGE` over the topic's stream (entry ids carry the append time
//! in milliseconds), with a plain connection of its own: no consumer group is read or moved.

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

    /// Creates consumer group `group` on `topic`'s stream positioned just before `from`, for a
    /// replay through a normal subscription. Refuses a group that exists already, so live
    /// consumers are never moved.
    pub async fn start_group_at(
        &self,
        topic: &Topic,
        group: &Group,
        from: ReplayFrom,
    ) -> Result<()> {
        let mut conn = self.replay_conn().await?;
        let key = self.stream_key(topic);
        let start = self.replay_start(&mut conn, &key, topic, &from).await?;
        let last = if start == "-" {
            "0".to_owned()
        } else {
            before(&start)
        };
        let r: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&key)
            .arg(group.as_str())
            .arg(&last)
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Err(Error::Config(format!(
                "consumer group {group} already exists on {topic}; replay into a new group"
            ))),
            Err(e) => Err(Error::backend("redis", "replay", e)),
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
        let work = async {
            let mut conn = self.replay_conn().await?;
            let key = self.stream_key(topic);
            // The end as it is now: entries appended during the replay are not included.
            let last: StreamRangeReply = redis::cmd("XREVRANGE")
                .arg(&key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await
                .map_err(rerr("replay"))?;
            let mut report = ReplayReport::default();
            let Some(end) = last.ids.first().map(|e| e.id.clone()) else {
                return Ok(report);
            };
            let end = match options.until {
                Some(u) => {
                    let bound = format!("{}-{}", u.timestamp_millis().max(0), u64::MAX);
                    if parse_id(&bound) < parse_id(&end) {
                        bound
                    } else {
                        end
                    }
                }
                None => end,
            };
            let mut start = self.replay_start(&mut conn, &key, topic, &from).await?;
            loop {
                let page: StreamRangeReply = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg(&start)
                    .arg(&end)
                    .arg("COUNT")
                    .arg(PAGE)
                    .query_async(&mut conn)
                    .await
                    .map_err(rerr("replay"))?;
                let Some(last) = page.ids.last().map(|e| e.id.clone()) else {
                    break;
                };
                for entry in &page.ids {
                    if !deliver(
                        &mut report,
                        handler,
                        options,
                        topic,
                        entry.id.clone(),
                        decode(entry),
                    )
                    .await
                    {
                        return Ok(report);
                    }
                }
                if page.ids.len() < PAGE {
                    break;
                }
                start = format!("({last}");
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
