//! The operator API of the memory bus.

use std::time::SystemTime;

use async_trait::async_trait;
use tokio::time::Instant;
use windlass_core::{TenantScope, Topic};

use super::MemoryBus;
use super::coordinator::figures;
use super::log::{Payload, Stored, lock};
use crate::admin::{
    BusAdmin, DeadLetterPage, GroupStatus, PartitionStatus, Redriven, require_all, split_id,
};
use crate::error::Result;

/// Dead letters looked at by one call at most, whatever the scope filters out.
const SCAN_MAX: usize = 10_000;

#[async_trait]
impl BusAdmin for MemoryBus {
    async fn topic_groups(&self, topic: &Topic, scope: &TenantScope) -> Result<Vec<GroupStatus>> {
        require_all(scope, "listing the consumer groups of a topic")?;
        let Some(log) = self.existing_log(topic.as_str()) else {
            return Ok(Vec::new());
        };
        let st = lock(&log.state);
        let now = Instant::now();
        let mut groups: Vec<GroupStatus> = st
            .groups
            .iter()
            .map(|(name, g)| GroupStatus {
                group: name.clone(),
                members: g
                    .members
                    .iter()
                    .filter(|(_, until)| **until > now)
                    .map(|(m, _)| m.clone())
                    .collect(),
                partitions: (0..g.parts.len())
                    .map(|p| {
                        let (lag, pending, oldest) = figures(&st, g, p);
                        PartitionStatus {
                            partition: p as u32,
                            owner: g.parts[p].lease.holder(now).map(str::to_owned),
                            epoch: g.parts[p].lease.epoch,
                            lag: Some(lag),
                            pending,
                            oldest_pending_age: oldest,
                        }
                    })
                    .collect(),
            })
            .collect();
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        Ok(groups)
    }

    async fn dead_letter_page(
        &self,
        topic: &Topic,
        scope: &TenantScope,
        after: Option<&str>,
        limit: usize,
    ) -> Result<DeadLetterPage> {
        let from = match after {
            None => 0,
            Some(a) => a
                .parse::<u64>()
                .map_err(|_| crate::Error::InvalidCursor(a.to_owned()))?
                .saturating_add(1),
        };
        let Some(log) = self.existing_log(topic.as_str()) else {
            return Ok(DeadLetterPage {
                letters: Vec::new(),
                next: None,
            });
        };
        let st = lock(&log.state);
        let mut letters = Vec::new();
        let mut last = None;
        for (scanned, (seq, letter)) in st.dlq.range(from..).enumerate() {
            if letters.len() >= limit.max(1) || scanned >= SCAN_MAX {
                break;
            }
            last = Some(*seq);
            if scope.allows(letter.org_id()) {
                letters.push(letter.clone());
            }
        }
        let more = last.is_some_and(|l| st.dlq.range(l + 1..).next().is_some());
        Ok(DeadLetterPage {
            letters,
            next: last.filter(|_| more).map(|l| l.to_string()),
        })
    }

    async fn redrive(
        &self,
        topic: &Topic,
        scope: &TenantScope,
        ids: &[String],
    ) -> Result<Redriven> {
        let mut report = Redriven::default();
        let Some(log) = self.existing_log(topic.as_str()) else {
            report.unknown = ids.to_vec();
            return Ok(report);
        };
        {
            let mut st = lock(&log.state);
            for id in ids {
                let found = split_id(id)
                    .and_then(|(p, seq)| Some((p, seq.parse::<u64>().ok()?)))
                    .filter(|(p, seq)| {
                        st.dlq
                            .get(seq)
                            .is_some_and(|l| l.partition == Some(*p) && scope.allows(l.org_id()))
                    });
                let Some((p, seq)) = found else {
                    report.unknown.push(id.clone());
                    continue;
                };
                let Some(letter) = st.dlq.remove(&seq) else {
                    report.unknown.push(id.clone());
                    continue;
                };
                let payload = match letter.event {
                    Some(event) => Payload::Event(event),
                    None => Payload::Raw(letter.payload.into()),
                };
                if let Some(part) = st.parts.get_mut(p as usize) {
                    part.entries.push_back(Stored {
                        payload,
                        at: SystemTime::now(),
                    });
                }
                report.redriven.push(id.clone());
            }
        }
        log.data.notify_waiters();
        Ok(report)
    }

    async fn delete_dead_letter(
        &self,
        topic: &Topic,
        scope: &TenantScope,
        id: &str,
    ) -> Result<bool> {
        let Some(log) = self.existing_log(topic.as_str()) else {
            return Ok(false);
        };
        let mut st = lock(&log.state);
        let Some((p, seq)) = split_id(id).and_then(|(p, s)| Some((p, s.parse::<u64>().ok()?)))
        else {
            return Ok(false);
        };
        let visible = st
            .dlq
            .get(&seq)
            .is_some_and(|l| l.partition == Some(p) && scope.allows(l.org_id()));
        Ok(visible && st.dlq.remove(&seq).is_some())
    }

    async fn delete_topic(&self, topic: &Topic, scope: &TenantScope) -> Result<()> {
        require_all(scope, "deleting a topic")?;
        let removed = lock(&self.inner.topics).remove(topic.as_str());
        if let Some(log) = removed {
            // Wake whatever waits on it; running subscriptions keep the orphaned log.
            log.data.notify_waiters();
            log.space.notify_waiters();
        }
        Ok(())
    }
}
