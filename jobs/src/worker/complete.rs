//! Completion: one task per worker writes attempt outcomes in batches, each fenced by its
//! attempt token (the store applies it only while the row is `running`, locked by this worker,
//! at that attempt), then forgets the attempts.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use windlass_core::RetryPolicy;

use super::Inner;
use crate::model::{Finish, Outcome};

pub(super) async fn completer(
    inner: Arc<Inner>,
    mut rx: mpsc::UnboundedReceiver<Finish>,
    stop: CancellationToken,
) {
    let max = inner.config.completion_batch;
    loop {
        let first = tokio::select! {
            f = rx.recv() => f,
            _ = stop.cancelled() => None,
        };
        let mut batch = Vec::new();
        match first {
            Some(f) => batch.push(f),
            None => {
                while let Ok(f) = rx.try_recv() {
                    batch.push(f);
                }
                if !batch.is_empty() {
                    flush(&inner, batch, true).await;
                }
                return;
            }
        }
        while batch.len() < max {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        flush(&inner, batch, false).await;
    }
}

async fn flush(inner: &Arc<Inner>, batch: Vec<Finish>, last: bool) {
    let retry =
        RetryPolicy::default().with_delays(Duration::from_millis(20), Duration::from_secs(2));
    for chunk in batch.chunks(inner.config.completion_batch) {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match inner.store.finish(&inner.id, chunk).await {
                Ok(applied) => {
                    if (applied as usize) < chunk.len() {
                        tracing::debug!(
                            stale = chunk.len() - applied as usize,
                            "outcomes of attempts no longer held (rescued) were refused"
                        );
                    }
                    break;
                }
                // Outcomes are state-guarded, so writing them again is safe. Jobs whose outcome
                // can never be written are rescued once their heartbeat stops.
                Err(e) if attempt < if last { 5 } else { 50 } => {
                    tracing::warn!(error = %e, "windlass-jobs completion failed; retrying");
                    tokio::time::sleep(retry.delay(attempt)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, jobs = chunk.len(), "giving up writing outcomes; jobs will be rescued");
                    break;
                }
            }
        }
        let mut retries = 0usize;
        {
            let mut flights = inner.flights();
            for f in chunk {
                flights.remove(&f.token());
                if matches!(f.outcome, Outcome::Retry { .. } | Outcome::Requeue { .. }) {
                    retries += 1;
                }
            }
        }
        if retries > 0 {
            // A retry may be due before the next poll: let fetchers recompute their wait.
            inner.wake_all();
        }
    }
    inner.idle.notify_waiters();
}
