//! [`OutboxSource`] on the outbox's operator API ([`OutboxAdmin`]): counters the maintenance
//! leader keeps, keyset-paged dead deliveries, requeue and skip, all tenant-scoped by the
//! outbox itself.

use async_trait::async_trait;
use windlass_core::TenantScope;
use windlass_outbox::{
    Cursor, DeadEvent, DeadFilter, DeliveryRef, Destination, MAX_PAGE, OutboxAdmin,
};

use super::{
    BlockedOutboxKey, BlockedOutboxPage, DeadOutboxEvent, DeadOutboxPage, OutboxDelivery,
    OutboxSource, OutboxTopicStats, SourceError, SourceResult,
};

/// [`OutboxSource`] on an outbox store (Postgres or SQLite): anything that implements
/// [`OutboxAdmin`].
#[derive(Debug, Clone)]
pub struct OutboxApi<S> {
    store: S,
}

impl<S: OutboxAdmin> OutboxApi<S> {
    /// A source on `store`.
    pub fn new(store: S) -> Self {
        Self { store }
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
        delivery: OutboxDelivery {
            seq: row.delivery.seq,
            destination: row.delivery.destination.as_str().to_owned(),
        },
        event_id: field("id"),
        topic: row.topic,
        partition_key: row.partition_key,
        org_id: row.org_id.or_else(|| field("orgid")),
        event_type: field("type"),
        event: row.event,
        attempts: row.attempts,
        last_error: row.last_error,
        created_at: row.created_at,
    }
}

fn delivery_ref(d: &OutboxDelivery) -> SourceResult<DeliveryRef> {
    let destination = Destination::new(d.destination.clone())
        .map_err(|e| SourceError::Invalid(format!("destination {:?}: {e}", d.destination)))?;
    Ok(DeliveryRef::new(d.seq, destination))
}

#[async_trait]
impl<S: OutboxAdmin + 'static> OutboxSource for OutboxApi<S> {
    async fn stats(&self, scope: &TenantScope) -> SourceResult<Vec<OutboxTopicStats>> {
        let stats = self
            .store
            .stats(scope)
            .await
            .map_err(|e| SourceError::backend("outbox stats", e))?;
        if stats.refreshed_at.is_none() {
            return Err(SourceError::Unsupported(
                "the outbox counters have not been computed yet: a relay with maintenance on \
                 (the default) recounts them every few seconds"
                    .into(),
            ));
        }
        Ok(stats
            .topics
            .into_iter()
            .map(|t| OutboxTopicStats {
                topic: Some(t.topic),
                destination: Some(t.destination),
                pending: t.pending,
                dead: t.dead,
                blocked_keys: t.blocked_keys,
                lag: t.oldest_pending_age,
            })
            .collect())
    }

    async fn dead(
        &self,
        scope: &TenantScope,
        after: Option<&OutboxDelivery>,
        limit: u32,
    ) -> SourceResult<DeadOutboxPage> {
        let (cursor, limit) = page_args(after, limit)?;
        let page = self
            .store
            .list_dead(scope, &DeadFilter::default(), cursor.as_ref(), limit)
            .await
            .map_err(|e| SourceError::backend("list dead outbox deliveries", e))?;
        Ok(DeadOutboxPage {
            events: page.items.into_iter().map(dead_event).collect(),
            next: page.next.as_ref().map(delivery_of),
            note: None,
        })
    }

    async fn blocked(
        &self,
        scope: &TenantScope,
        after: Option<&OutboxDelivery>,
        limit: u32,
    ) -> SourceResult<BlockedOutboxPage> {
        let (cursor, limit) = page_args(after, limit)?;
        let page = self
            .store
            .blocked_keys(scope, &DeadFilter::default(), cursor.as_ref(), limit)
            .await
            .map_err(|e| SourceError::backend("list blocked outbox keys", e))?;
        Ok(BlockedOutboxPage {
            keys: page
                .items
                .into_iter()
                .map(|k| BlockedOutboxKey {
                    head: OutboxDelivery {
                        seq: k.head.seq,
                        destination: k.head.destination.as_str().to_owned(),
                    },
                    topic: k.topic,
                    partition_key: k.partition_key,
                    org_id: k.org_id,
                    last_error: k.last_error,
                    failed_at: k.failed_at,
                    waiting: k.waiting,
                })
                .collect(),
            next: page.next.as_ref().map(delivery_of),
        })
    }

    async fn requeue(&self, scope: &TenantScope, delivery: &OutboxDelivery) -> SourceResult<()> {
        let d = delivery_ref(delivery)?;
        match self.store.requeue(scope, std::slice::from_ref(&d)).await {
            Ok(0) => Err(not_dead(delivery)),
            Ok(_) => Ok(()),
            Err(e) => Err(SourceError::backend("requeue", e)),
        }
    }

    async fn skip(&self, scope: &TenantScope, delivery: &OutboxDelivery) -> SourceResult<()> {
        let d = delivery_ref(delivery)?;
        match self.store.skip(scope, std::slice::from_ref(&d)).await {
            Ok(0) => Err(not_dead(delivery)),
            Ok(_) => Ok(()),
            Err(e) => Err(SourceError::backend("skip", e)),
        }
    }

    fn can_skip(&self) -> bool {
        true
    }
}

/// The outbox cursor and page size of a console page request.
fn page_args(after: Option<&OutboxDelivery>, limit: u32) -> SourceResult<(Option<Cursor>, usize)> {
    let cursor = after
        .map(delivery_ref)
        .transpose()?
        .map(|d| Cursor::after(&d));
    Ok((cursor, (limit as usize).clamp(1, MAX_PAGE)))
}

fn delivery_of(c: &Cursor) -> OutboxDelivery {
    OutboxDelivery {
        seq: c.seq(),
        destination: c.destination().to_owned(),
    }
}

fn not_dead(d: &OutboxDelivery) -> SourceError {
    SourceError::NotFound(format!("no dead outbox delivery {d}"))
}
