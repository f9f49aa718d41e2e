//! [`BusSource`] on the bus's operator API ([`BusAdmin`]): consumer groups with owner, lag and
//! pending per partition, keyset-paged dead letters, redrive that moves an entry out of the DLQ
//! atomically. Tenant scoping is the bus's own.

use std::sync::Arc;

use async_trait::async_trait;
use windlass_core::{Group, TenantScope, Topic};
use windlass_eventbus::{BusAdmin, DeadLetter};

use super::{BusSource, DlqEntry, DlqPage, GroupStatus, SourceError, SourceResult};

/// [`BusSource`] on a bus backend's [`BusAdmin`] (Redis Streams, memory).
///
/// The bus keeps no list of topics, so name the topics the console shows with
/// [`BusApi::topic`]; every consumer group of those topics is listed, or only the groups named
/// with [`BusApi::group`] when some are.
#[derive(Clone)]
pub struct BusApi {
    admin: Arc<dyn BusAdmin>,
    topics: Vec<Topic>,
    groups: Vec<(Topic, Group)>,
}

impl std::fmt::Debug for BusApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusApi")
            .field("topics", &self.topics)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

impl BusApi {
    /// A source on `admin` (usually the bus itself, e.g. an `Arc<RedisBus>`).
    pub fn new(admin: Arc<dyn BusAdmin>) -> Self {
        Self {
            admin,
            topics: Vec::new(),
            groups: Vec::new(),
        }
    }

    /// A topic whose groups and dead letters the console shows.
    pub fn topic(mut self, topic: Topic) -> Self {
        if !self.topics.contains(&topic) {
            self.topics.push(topic);
        }
        self
    }

    /// Shows only the named groups of `topic` (and the topic itself).
    pub fn group(mut self, topic: Topic, group: Group) -> Self {
        self = self.topic(topic.clone());
        self.groups.push((topic, group));
        self
    }

    fn known(&self, topic: &Topic) -> SourceResult<()> {
        if self.topics.contains(topic) {
            Ok(())
        } else {
            Err(SourceError::NotFound(format!(
                "topic {topic} is not one this console shows"
            )))
        }
    }

    fn shown(&self, topic: &Topic, group: &str) -> bool {
        let named: Vec<&Group> = self
            .groups
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, g)| g)
            .collect();
        named.is_empty() || named.iter().any(|g| g.as_str() == group)
    }
}

fn entry(d: DeadLetter) -> DlqEntry {
    DlqEntry {
        org_id: d.org_id().map(str::to_owned),
        event_type: d.event.as_ref().map(|e| e.ty().to_owned()),
        decodes: d.event.is_some(),
        payload: String::from_utf8_lossy(&d.payload).into_owned(),
        id: d.id,
        topic: d.topic,
        group: d.group,
        error: d.error,
        failed_at: d.failed_at,
    }
}

fn bus_error(what: &'static str, e: windlass_eventbus::Error) -> SourceError {
    match e {
        windlass_eventbus::Error::TenantScope(_) => SourceError::Unsupported(e.to_string()),
        e => SourceError::backend(what, e),
    }
}

#[async_trait]
impl BusSource for BusApi {
    fn topics(&self) -> Vec<Topic> {
        self.topics.clone()
    }

    async fn groups(&self, scope: &TenantScope) -> SourceResult<Vec<GroupStatus>> {
        if scope.org_id().is_some() {
            return Err(SourceError::Unsupported(
                "consumer groups are shared by every tenant; only an unscoped console shows them"
                    .into(),
            ));
        }
        let mut out = Vec::new();
        for topic in &self.topics {
            let groups = self
                .admin
                .topic_groups(topic, scope)
                .await
                .map_err(|e| bus_error("consumer groups", e))?;
            for g in groups.into_iter().filter(|g| self.shown(topic, &g.group)) {
                for p in g.partitions {
                    out.push(GroupStatus {
                        topic: topic.to_string(),
                        group: g.group.clone(),
                        partition: Some(p.partition),
                        owner: p.owner,
                        lag: p.lag,
                        pending: Some(p.pending),
                        oldest_pending_age: p.oldest_pending_age,
                    });
                }
            }
        }
        Ok(out)
    }

    async fn dead_letters(
        &self,
        scope: &TenantScope,
        topic: &Topic,
        after: Option<&str>,
        limit: u32,
    ) -> SourceResult<DlqPage> {
        self.known(topic)?;
        let page = self
            .admin
            .dead_letter_page(topic, scope, after, limit.max(1) as usize)
            .await
            .map_err(|e| match e {
                windlass_eventbus::Error::InvalidCursor(_) => SourceError::Invalid(e.to_string()),
                e => bus_error("read dead letters", e),
            })?;
        Ok(DlqPage {
            entries: page.letters.into_iter().map(entry).collect(),
            next: page.next,
            note: None,
        })
    }

    async fn redrive(&self, scope: &TenantScope, topic: &Topic, id: &str) -> SourceResult<()> {
        self.known(topic)?;
        let done = self
            .admin
            .redrive(topic, scope, &[id.to_owned()])
            .await
            .map_err(|e| bus_error("redrive", e))?;
        if done.redriven.iter().any(|r| r == id) {
            Ok(())
        } else {
            Err(SourceError::NotFound(format!(
                "no dead letter {id} on {topic} (unknown, another tenant's, or already redriven)"
            )))
        }
    }
}
