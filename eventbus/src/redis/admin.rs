//! The operator API of the Redis bus: groups with their per-partition figures, dead letters
//! with keyset paging over every partition's DLQ stream, redrive, delete. No `KEYS`, no `SCAN`:
//! a topic's keys are derived from its recorded partition count and group set.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::future::try_join_all;
use redis::Value;
use windlass_core::{TenantScope, Topic};

use super::RedisBus;
use super::coordinator::{partition_figures, view};
use super::scripts;
use super::wire::{self, Entry};
use crate::admin::{
    BusAdmin, DeadLetterPage, GroupStatus, PartitionStatus, Redriven, require_all, split_id,
};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::traits::{DeadLetter, DeadLetters};

/// Dead letters looked at by one page call at most, whatever the scope filters out.
const SCAN_MAX: usize = 10_000;

impl RedisBus {
    /// The partition count recorded for a topic (`None` when the topic was never used).
    async fn recorded_partitions(&self, topic: &Topic) -> Result<Option<u32>> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(self.inner.keys.meta(topic.as_str()))
            .arg("partitions");
        self.inner.conn.query("read topic partitions", &cmd).await
    }

    async fn group_names(&self, topic: &Topic) -> Result<Vec<String>> {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(self.inner.keys.groups(topic.as_str()));
        let mut groups: Vec<String> = self.inner.conn.query("list groups", &cmd).await?;
        groups.sort();
        Ok(groups)
    }

    fn letter(&self, topic: &Topic, partition: u32, (id, fields): Entry) -> Option<DeadLetter> {
        let fields = fields?;
        let text =
            |name| wire::field(&fields, name).map(|b| String::from_utf8_lossy(b).into_owned());
        let payload = wire::field(&fields, "event")
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        let failed_at = text("failed_at")
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        Some(DeadLetter {
            id: format!("{partition}/{id}"),
            topic: topic.to_string(),
            partition: Some(partition),
            entry_id: text("entry"),
            group: text("group").unwrap_or_default(),
            consumer: text("consumer").unwrap_or_default(),
            event: Event::from_json(&payload).ok(),
            error: text("error").unwrap_or_default(),
            failed_at,
            payload,
        })
    }

    /// One dead letter by id, when it exists and is visible in `scope`.
    async fn visible_letter(
        &self,
        topic: &Topic,
        scope: &TenantScope,
        id: &str,
        partitions: u32,
    ) -> Result<Option<(u32, String)>> {
        let Some((p, stream_id)) = split_id(id) else {
            return Ok(None);
        };
        if p >= partitions || wire::stream_id(stream_id) == (0, 0) && stream_id != "0-0" {
            return Ok(None);
        }
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(self.dlq_key(topic, p))
            .arg(stream_id)
            .arg(stream_id);
        let reply: Value = self.inner.conn.query("read a dead letter", &cmd).await?;
        let letter = wire::entries(&reply)
            .into_iter()
            .next()
            .and_then(|e| self.letter(topic, p, e));
        Ok(letter
            .filter(|l| scope.allows(l.org_id()))
            .map(|_| (p, stream_id.to_owned())))
    }
}

/// A position in the merged order of all partitions' DLQ entries: `{stream id}@{partition}`.
fn parse_cursor(cursor: &str) -> Result<((u64, u64), u32)> {
    let bad = || Error::InvalidCursor(cursor.to_owned());
    let (id, p) = cursor.rsplit_once('@').ok_or_else(bad)?;
    let (ms, seq) = id.split_once('-').ok_or_else(bad)?;
    let ms = ms.parse().map_err(|_| bad())?;
    let seq = seq.parse().map_err(|_| bad())?;
    Ok(((ms, seq), p.parse().map_err(|_| bad())?))
}

fn cursor_of(id: (u64, u64), p: u32) -> String {
    format!("{}-{}@{p}", id.0, id.1)
}

#[async_trait]
impl DeadLetters for RedisBus {
    async fn dead_letters(&self, topic: &Topic, limit: usize) -> Result<Vec<DeadLetter>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        Ok(self
            .dead_letter_page(topic, &TenantScope::All, None, limit)
            .await?
            .letters)
    }
}

#[async_trait]
impl BusAdmin for RedisBus {
    async fn topic_groups(&self, topic: &Topic, scope: &TenantScope) -> Result<Vec<GroupStatus>> {
        require_all(scope, "listing the consumer groups of a topic")?;
        let Some(partitions) = self.recorded_partitions(topic).await? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for group in self.group_names(topic).await? {
            let keys = &self.inner.keys;
            let mut inv = scripts::MEMBERS.prepare_invoke();
            inv.key(keys.members(topic.as_str(), &group));
            let members: Vec<String> = self.inner.conn.script("list members", &inv).await?;
            let leases = view(
                &self.inner.conn,
                (0..partitions)
                    .map(|p| keys.lease(topic.as_str(), p, &group))
                    .collect(),
            )
            .await?;
            let figures = try_join_all(
                (0..partitions).map(|p| partition_figures(self, topic.as_str(), p, &group)),
            )
            .await?;
            let partitions = leases
                .into_iter()
                .zip(figures)
                .enumerate()
                .map(|(p, ((owner, epoch, left), f))| PartitionStatus {
                    partition: p as u32,
                    owner: (!owner.is_empty() && left > 0).then_some(owner),
                    epoch,
                    lag: f.lag,
                    pending: f.pending,
                    oldest_pending_age: f.oldest_pending_age,
                })
                .collect();
            out.push(GroupStatus {
                group,
                members,
                partitions,
            });
        }
        Ok(out)
    }

    async fn dead_letter_page(
        &self,
        topic: &Topic,
        scope: &TenantScope,
        after: Option<&str>,
        limit: usize,
    ) -> Result<DeadLetterPage> {
        let limit = limit.max(1);
        let mut cursor = after.map(parse_cursor).transpose()?;
        let Some(partitions) = self.recorded_partitions(topic).await? else {
            return Ok(DeadLetterPage {
                letters: Vec::new(),
                next: None,
            });
        };
        let mut letters = Vec::new();
        let mut scanned = 0usize;
        let chunk = limit.clamp(16, 1000);
        loop {
            let pages = try_join_all((0..partitions).map(|p| {
                let start = match cursor {
                    None => "-".to_owned(),
                    Some((id, cp)) if p > cp => format!("{}-{}", id.0, id.1),
                    Some((id, _)) => format!("({}-{}", id.0, id.1),
                };
                let mut cmd = redis::cmd("XRANGE");
                cmd.arg(self.dlq_key(topic, p))
                    .arg(start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(chunk);
                async move {
                    let reply: Value = self.inner.conn.query("read dead letters", &cmd).await?;
                    Ok::<_, crate::Error>((p, wire::entries(&reply)))
                }
            }))
            .await?;
            // Entries are merged by (id, partition); only those up to the first position some
            // full page stops at are surely in order.
            let frontier = pages
                .iter()
                .filter(|(_, e)| e.len() >= chunk)
                .filter_map(|(p, e)| e.last().map(|(id, _)| (wire::stream_id(id), *p)))
                .min();
            let mut merged: Vec<((u64, u64), u32, Entry)> = pages
                .into_iter()
                .flat_map(|(p, entries)| {
                    entries
                        .into_iter()
                        .map(move |e| (wire::stream_id(&e.0), p, e))
                })
                .filter(|(id, p, _)| frontier.is_none_or(|f| (*id, *p) <= f))
                .collect();
            merged.sort_by_key(|(id, p, _)| (*id, *p));
            for (id, p, entry) in merged {
                if letters.len() >= limit || scanned >= SCAN_MAX {
                    break;
                }
                scanned += 1;
                cursor = Some((id, p));
                if let Some(letter) = self.letter(topic, p, entry)
                    && scope.allows(letter.org_id())
                {
                    letters.push(letter);
                }
            }
            let exhausted = frontier.is_none() && letters.len() < limit && scanned < SCAN_MAX;
            if exhausted {
                return Ok(DeadLetterPage {
                    letters,
                    next: None,
                });
            }
            if letters.len() >= limit || scanned >= SCAN_MAX {
                // More may follow: the caller asks for the next page.
                return Ok(DeadLetterPage {
                    letters,
                    next: cursor.map(|(id, p)| cursor_of(id, p)),
                });
            }
        }
    }

    async fn redrive(
        &self,
        topic: &Topic,
        scope: &TenantScope,
        ids: &[String],
    ) -> Result<Redriven> {
        let mut report = Redriven::default();
        let partitions = self.recorded_partitions(topic).await?.unwrap_or(0);
        for id in ids {
            let Some((p, stream_id)) = self.visible_letter(topic, scope, id, partitions).await?
            else {
                report.unknown.push(id.clone());
                continue;
            };
            let mut inv = scripts::REDRIVE.prepare_invoke();
            inv.key(self.dlq_key(topic, p))
                .key(self.stream_key(topic, p))
                .arg(&stream_id)
                .arg(self.trim_args());
            let moved: i64 = self
                .inner
                .conn
                .script("redrive a dead letter", &inv)
                .await?;
            if moved == 1 {
                report.redriven.push(id.clone());
            } else {
                report.unknown.push(id.clone());
            }
        }
        Ok(report)
    }

    async fn delete_dead_letter(
        &self,
        topic: &Topic,
        scope: &TenantScope,
        id: &str,
    ) -> Result<bool> {
        let partitions = self.recorded_partitions(topic).await?.unwrap_or(0);
        let Some((p, stream_id)) = self.visible_letter(topic, scope, id, partitions).await? else {
            return Ok(false);
        };
        let mut cmd = redis::cmd("XDEL");
        cmd.arg(self.dlq_key(topic, p)).arg(&stream_id);
        let n: u64 = self.inner.conn.query("delete a dead letter", &cmd).await?;
        Ok(n == 1)
    }

    async fn delete_topic(&self, topic: &Topic, scope: &TenantScope) -> Result<()> {
        require_all(scope, "deleting a topic")?;
        let keys = &self.inner.keys;
        let t = topic.as_str();
        let partitions = self
            .recorded_partitions(topic)
            .await?
            .unwrap_or(0)
            .max(self.inner.config.partitions_of(t).get());
        let groups = self.group_names(topic).await?;
        // One pipeline per slot: each partition's keys, then the topic's own.
        try_join_all((0..partitions).map(|p| {
            let mut pipe = redis::pipe();
            pipe.cmd("UNLINK").arg(keys.stream(t, p)).ignore();
            pipe.cmd("UNLINK").arg(keys.dlq(t, p)).ignore();
            for g in &groups {
                pipe.cmd("UNLINK").arg(keys.lease(t, p, g)).ignore();
            }
            async move {
                self.inner
                    .conn
                    .query_pipe::<()>("delete a partition", &pipe)
                    .await
            }
        }))
        .await?;
        let mut pipe = redis::pipe();
        for g in &groups {
            pipe.cmd("UNLINK").arg(keys.members(t, g)).ignore();
            pipe.cmd("UNLINK").arg(keys.control(t, g)).ignore();
        }
        pipe.cmd("UNLINK").arg(keys.groups(t)).ignore();
        pipe.cmd("UNLINK").arg(keys.meta(t)).ignore();
        self.inner
            .conn
            .query_pipe::<()>("delete a topic", &pipe)
            .await?;
        self.forget_topic(topic);
        Ok(())
    }
}
