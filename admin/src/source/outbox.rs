//! [`OutboxSource`] on the public API of `windlass-outbox` ([`OutboxStore`]), as it is today.

use async_trait::async_trait;
use uuid::Uuid;
use windlass_core::TenantScope;
use windlass_outbox::{DeadEvent, OutboxStore};

use super::{
    DeadOutboxEvent, DeadOutboxPage, OutboxSource, OutboxTopicStats, SourceError, SourceResult,
};

/// Dead rows read at most to serve one page (see the `GAP` in `OutboxApi::dead_rows`).
const DEFAULT_DEAD_SCAN: usize = 10_000;

/// [`OutboxSource`] on an outbox store (Postgres or SQLite).
#[derive(Debug, Clone)]
pub struct OutboxApi<S> {
    store: S,
    dead_scan: usize,
}

impl<S: OutboxStore> OutboxApi<S> {
    /// A source on `store`.
    pub fn new(store: S) -> Self {
        Self {
            store,
            dead_scan: DEFAULT_DEAD_SCAN,
        }
    }

    /// Dead rows read at most per page (default 10 000): rows past it cannot be browsed until
    /// older ones are requeued.
    pub fn dead_scan(mut self, rows: usize) -> Self {
        self.dead_scan = rows.max(1);
        self
    }

    async fn dead_rows(&self, scope: &TenantScope) -> SourceResult<Vec<DeadOutboxEvent>> {
        // GAP: `OutboxStore::list_dead` has no cursor and no tenant scope: read the oldest
        // `dead_scan` dead rows and page and filter them here (cost grows with the position).
        let rows = self
            .store
            .list_dead(self.dead_scan)
            .await
            .map_err(|e| SourceError::backend("list dead outbox rows", e))?;
        Ok(rows
            .into_iter()
            .map(dead_event)
            .filter(|e| scope.allows(e.org_id.as_deref()))
            .collect())
    }
}

fn dead_event(row: DeadEvent) -> DeadOutboxEvent {
    let parsed: Option<serde_json::Value> = serde_json::from_str(&row.event).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    DeadOutboxEvent {
        id: row.id,
        seq: row.seq,
        topic: row.topic,
        partition_key: row.partition_key,
        org_id: field("orgid"),
        event_type: field("type"),
        event: row.event,
        attempts: row.attempts,
        last_error: row.last_error,
        created_at: row.created_at,
    }
}

#[async_trait]
impl<S: OutboxStore> OutboxSource for OutboxApi<S> {
    async fn stats(&self, scope: &TenantScope) -> SourceResult<Vec<OutboxTopicStats>> {
        if scope.org_id().is_some() {
            // GAP: `OutboxStore::stats` counts the whole table; no per-tenant counts yet.
            return Err(SourceError::Unsupported(
                "outbox counts are not available per tenant yet".into(),
            ));
        }
        // GAP: `stats` is one line for the whole table (no split per topic or destination)
        // and runs three `count(*)`s: a full scan of the pending and dead rows per call.
        let s = self
            .store
            .stats()
            .await
            .map_err(|e| SourceError::backend("outbox stats", e))?;
        Ok(vec![OutboxTopicStats {
            topic: None,
            destination: None,
            pending: s.pending,
            dead: s.dead,
            lag: s.oldest_pending_age,
        }])
    }

    async fn dead(
        &self,
        scope: &TenantScope,
        after: Option<i64>,
        limit: u32,
    ) -> SourceResult<DeadOutboxPage> {
        let rows = self.dead_rows(scope).await?;
        let scanned_all = rows.len() < self.dead_scan;
        let mut events: Vec<DeadOutboxEvent> = rows
            .into_iter()
            .filter(|e| after.is_none_or(|a| e.seq > a))
            .take(limit as usize + 1)
            .collect();
        let more = events.len() > limit as usize;
        events.truncate(limit as usize);
        let next = more.then(|| events.last().map(|e| e.seq)).flatten();
        Ok(DeadOutboxPage {
            events,
            next,
            note: (!scanned_all).then(|| {
                format!(
                    "Only the oldest {} dead rows can be browsed here today.",
                    self.dead_scan
                )
            }),
        })
    }

    async fn requeue(&self, scope: &TenantScope, id: Uuid) -> SourceResult<()> {
        if scope.org_id().is_some() && !self.dead_rows(scope).await?.iter().any(|e| e.id == id) {
            // GAP: `requeue` takes no tenant scope: check the row is this tenant's first.
            return Err(not_found(id));
        }
        match self.store.requeue(id).await {
            Ok(()) => Ok(()),
            Err(windlass_outbox::Error::NotFound(_)) => Err(not_found(id)),
            Err(e) => Err(SourceError::backend("requeue", e)),
        }
    }

    async fn skip(&self, _scope: &TenantScope, _id: Uuid) -> SourceResult<()> {
        // GAP: windlass-outbox has no "skip a dead row" call yet.
        Err(SourceError::Unsupported(
            "skipping a dead outbox row is not supported by this outbox version".into(),
        ))
    }

    fn can_skip(&self) -> bool {
        false
    }
}

fn not_found(id: Uuid) -> SourceError {
    SourceError::NotFound(format!("no dead outbox row {id}"))
}
