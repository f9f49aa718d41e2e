//! The consumer side, written once for every backend: each delivery opens a transaction,
//! records (`consumer`, `source`, `id`), runs the work in the same transaction for a new event
//! and commits both; a duplicate is acknowledged without running the work (counted in
//! `windlass_outbox_inbox_duplicates_total` and passed to an optional hook).

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use windlass_eventbus::{DeliveryContext, Event, Handler, HandlerError, HandlerResult};

use crate::error::Result;

/// What the inbox says about a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Received {
    /// First time this consumer sees this (`source`, `id`): do the work.
    New,
    /// Handled before (committed): skip it.
    Duplicate,
}

/// Called with each duplicate the inbox drops (for logs or metrics of your own).
pub type DuplicateHook = Arc<dyn Fn(&Event, &DeliveryContext) + Send + Sync>;

pub(crate) mod sealed {
    pub trait Sealed {}
}

/// A backend's inbox (implemented by [`postgres::Inbox`](crate::postgres::Inbox) and
/// [`sqlite::Inbox`](crate::sqlite::Inbox); sealed).
#[async_trait]
pub trait InboxBackend: sealed::Sealed + Clone + Send + Sync + 'static {
    /// The transaction the work runs in.
    type Tx: Send + 'static;

    /// Opens a transaction.
    #[doc(hidden)]
    async fn begin_tx(&self) -> Result<Self::Tx, sqlx::Error>;

    /// Records the event in `tx`.
    #[doc(hidden)]
    async fn record_in(&self, tx: &mut Self::Tx, event: &Event) -> Result<Received>;

    /// Commits.
    #[doc(hidden)]
    async fn commit_tx(tx: Self::Tx) -> Result<(), sqlx::Error>;

    /// Rolls back.
    #[doc(hidden)]
    async fn rollback_tx(tx: Self::Tx) -> Result<(), sqlx::Error>;

    /// The consumer name.
    fn consumer_name(&self) -> &str;
}

/// A bus [`Handler`] made by `Inbox::handler`: the work gets the transaction by value and
/// hands it back, so no borrowed-future gymnastics in user code:
///
/// ```text
/// inbox.handler(|mut tx, event, ctx| async move {
///     sqlx::query("UPDATE totals SET n = n + 1").execute(&mut *tx).await?;
///     Ok(tx)
/// })
/// ```
pub struct InboxHandler<I, F> {
    inbox: I,
    work: F,
    on_duplicate: Option<DuplicateHook>,
}

impl<I: InboxBackend, F> InboxHandler<I, F> {
    #[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
    pub(crate) fn new(inbox: I, work: F) -> Self {
        Self {
            inbox,
            work,
            on_duplicate: None,
        }
    }

    /// Calls `hook` with every duplicate dropped.
    pub fn on_duplicate(
        mut self,
        hook: impl Fn(&Event, &DeliveryContext) + Send + Sync + 'static,
    ) -> Self {
        self.on_duplicate = Some(Arc::new(hook));
        self
    }
}

impl<I: InboxBackend, F> std::fmt::Debug for InboxHandler<I, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxHandler")
            .field("consumer", &self.inbox.consumer_name())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<I, F, Fut> Handler for InboxHandler<I, F>
where
    I: InboxBackend,
    F: Fn(I::Tx, Event, DeliveryContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<I::Tx, HandlerError>> + Send,
{
    async fn handle(&self, event: &Event, ctx: &DeliveryContext) -> HandlerResult {
        let mut tx = self.inbox.begin_tx().await.map_err(HandlerError::retry)?;
        let received = match self.inbox.record_in(&mut tx, event).await {
            Ok(r) => r,
            Err(e) => {
                let _ = I::rollback_tx(tx).await;
                return Err(HandlerError::retry(e));
            }
        };
        if received == Received::Duplicate {
            I::rollback_tx(tx).await.map_err(HandlerError::retry)?;
            crate::metrics::inbox_duplicate(self.inbox.consumer_name());
            tracing::debug!(
                consumer = self.inbox.consumer_name(),
                id = event.id(),
                "inbox dropped a duplicate"
            );
            if let Some(hook) = &self.on_duplicate {
                hook(event, ctx);
            }
            return Ok(());
        }
        // On error the work's future dropped the transaction: sqlx rolls it back when the
        // connection goes back to the pool (it pings, which flushes the queued ROLLBACK).
        let tx = (self.work)(tx, event.clone(), ctx.clone()).await?;
        I::commit_tx(tx).await.map_err(HandlerError::retry)?;
        Ok(())
    }
}
