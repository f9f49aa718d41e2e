//! [`BusSource`] on the public API of `windlass-eventbus` ([`DeadLetters`] and [`Publisher`]),
//! as it is today.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use windlass_core::{Group, TenantScope, Topic};
use windlass_eventbus::{DeadLetter, DeadLetters, Publisher};

use super::{BusSource, DlqEntry, DlqPage, GroupStatus, SourceError, SourceResult};

/// Dead letters read at most per page (see the `GAP` in `BusApi::entries`).
const DEFAULT_DLQ_SCAN: usize = 10_000;

/// [`BusSource`] on a bus that can read its dead letters back and publish.
///
/// The bus has no listing of topics or groups, so name the topics (and the groups) the console
/// should show with [`BusApi::topic`] and [`BusApi::group`].
#[derive(Clone)]
pub struct BusApi {
    dlq: Arc<dyn DeadLetters>,
    publisher: Arc<dyn Publisher>,
    topics: Vec<Topic>,
    groups: Vec<(Topic, Group)>,
    scan: usize,
    redriven: Arc<Mutex<HashSet<(String, String)>>>,
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
    /// A source reading dead letters from `dlq` and redriving through `publisher` (usually
    /// the same bus).
    pub fn new(dlq: Arc<dyn DeadLetters>, publisher: Arc<dyn Publisher>) -> Self {
        Self {
            dlq,
            publisher,
            topics: Vec::new(),
            groups: Vec::new(),
            scan: DEFAULT_DLQ_SCAN,
            redriven: Arc::default(),
        }
    }

    /// A topic whose dead letters the console browses.
    pub fn topic(mut self, topic: Topic) -> Self {
        if !self.topics.contains(&topic) {
            self.topics.push(topic);
        }
        self
    }

    /// A consumer group of `topic` to list on the overview (and its topic).
    pub fn group(mut self, topic: Topic, group: Group) -> Self {
        self = self.topic(topic.clone());
        self.groups.push((topic, group));
        self
    }

    /// Dead letters read at most per page (default 10 000).
    pub fn scan(mut self, entries: usize) -> Self {
        self.scan = entries.max(1);
        self
    }

    async fn entries(&self, scope: &TenantScope, topic: &Topic) -> SourceResult<Vec<DlqEntry>> {
        if !self.topics.contains(topic) {
            return Err(SourceError::NotFound(format!(
                "topic {topic} is not one this console shows"
            )));
        }
        // GAP: `DeadLetters::dead_letters` has no cursor and no tenant scope: read the oldest
        // `scan` entries and page and filter them here.
        let letters = self
            .dlq
            .dead_letters(topic, self.scan)
            .await
            .map_err(|e| SourceError::backend("read dead letters", e))?;
        Ok(letters
            .into_iter()
            .map(entry)
            .filter(|e| scope.allows(e.org_id.as_deref()))
            .collect())
    }
}

fn entry(d: DeadLetter) -> DlqEntry {
    DlqEntry {
        org_id: d
            .event
            .as_ref()
            .and_then(|e| e.org_id())
            .map(|o| o.as_str().to_owned()),
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

#[async_trait]
impl BusSource for BusApi {
    fn topics(&self) -> Vec<Topic> {
        self.topics.clone()
    }

    async fn groups(&self, _scope: &TenantScope) -> SourceResult<Vec<GroupStatus>> {
        // GAP: the bus has no API for group positions (owner, lag, pending, oldest pending
        // age per partition) yet; list the declared groups without figures.
        Ok(self
            .groups
            .iter()
            .map(|(t, g)| GroupStatus {
                topic: t.to_string(),
                group: g.to_string(),
                partition: None,
                owner: None,
                lag: None,
                pending: None,
                oldest_pending_age: None,
            })
            .collect())
    }

    async fn dead_letters(
        &self,
        scope: &TenantScope,
        topic: &Topic,
        after: Option<&str>,
        limit: u32,
    ) -> SourceResult<DlqPage> {
        let all = self.entries(scope, topic).await?;
        let total = all.len();
        let start =
            match after {
                None => 0,
                Some(a) => all.iter().position(|e| e.id == a).ok_or_else(|| {
                    SourceError::Invalid(format!(
                        "cursor {a:?} is not a dead letter of {topic} (it may have been removed)"
                    ))
                })? + 1,
            };
        let mut entries: Vec<DlqEntry> = all
            .into_iter()
            .skip(start)
            .take(limit as usize + 1)
            .collect();
        let more = entries.len() > limit as usize;
        entries.truncate(limit as usize);
        let next = more.then(|| entries.last().map(|e| e.id.clone())).flatten();
        let redriven = self.redriven.lock().unwrap_or_else(|p| p.into_inner());
        let note = entries
            .iter()
            .any(|e| redriven.contains(&(e.topic.clone(), e.id.clone())))
            .then(|| {
                "Entries marked redriven were published again by this console; the bus cannot \
                 delete dead letters yet, so they stay listed."
                    .to_owned()
            })
            .or_else(|| {
                (total >= self.scan)
                    .then(|| format!("Only the oldest {} dead letters can be browsed.", self.scan))
            });
        Ok(DlqPage {
            entries,
            next,
            note,
        })
    }

    async fn redrive(&self, scope: &TenantScope, topic: &Topic, id: &str) -> SourceResult<()> {
        let all = self.entries(scope, topic).await?;
        let entry = all
            .into_iter()
            .find(|e| e.id == id)
            .ok_or_else(|| SourceError::NotFound(format!("no dead letter {id} on {topic}")))?;
        if !entry.decodes {
            return Err(SourceError::Conflict(format!(
                "dead letter {id} does not decode as an event; it cannot be published again"
            )));
        }
        let key = (topic.to_string(), id.to_owned());
        // GAP: the bus cannot delete a dead letter, so a redriven entry stays in the DLQ; this
        // console remembers (in memory) what it redrove and refuses to publish it twice.
        if !self
            .redriven
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone())
        {
            return Err(SourceError::Conflict(format!(
                "dead letter {id} was already redriven by this console"
            )));
        }
        let event = windlass_eventbus::Event::from_json_str(&entry.payload)
            .map_err(|e| SourceError::Conflict(format!("dead letter {id} does not decode: {e}")))?;
        if let Err(e) = self.publisher.publish(topic, &event).await {
            self.redriven
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            return Err(SourceError::backend("redrive", e));
        }
        Ok(())
    }
}

impl BusApi {
    /// Whether this console already redrove the entry.
    pub fn was_redriven(&self, topic: &Topic, id: &str) -> bool {
        self.redriven
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(topic.to_string(), id.to_owned()))
    }
}
