//! Batched acknowledgements, in the order handlers finished, with flush markers a revoke waits
//! on.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use windlass_core::RetryPolicy;

use super::{Shared, Transport};
use crate::error::Error;

/// Largest batch of acknowledgements sent at once.
const ACK_BATCH_MAX: usize = 1024;
/// Attempts of one batch once shutdown began (before that, a batch is retried until it passes
/// or its lease is lost: dropping it could let a later batch of the same key pass first).
const FINAL_ATTEMPTS: u32 = 8;

pub(crate) enum AckMsg<T> {
    Token(T),
    /// Replied to once every token queued before it was passed to [`Transport::ack`].
    Flush(oneshot::Sender<()>),
}

/// Sends acknowledgements in batches. Ends once `done` fires and everything queued is flushed
/// (the sender lives in `Shared`, which this task holds, so the channel never closes by itself).
pub(crate) async fn ack_loop<T: Transport>(
    shared: Arc<Shared<T>>,
    mut rx: mpsc::UnboundedReceiver<AckMsg<T::Token>>,
    done: CancellationToken,
) {
    let policy = RetryPolicy::default()
        .with_delays(Duration::from_millis(20), Duration::from_secs(2))
        .with_max_attempts(u32::MAX);
    let mut batch = Vec::with_capacity(64);
    let mut flushes = Vec::new();
    let mut finishing = false;
    loop {
        let first = if finishing {
            match rx.try_recv() {
                Ok(m) => m,
                Err(_) => return,
            }
        } else {
            tokio::select! {
                biased;
                m = rx.recv() => match m {
                    Some(m) => m,
                    None => return,
                },
                _ = done.cancelled() => {
                    finishing = true;
                    continue;
                }
            }
        };
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                AckMsg::Token(t) => batch.push(t),
                // Tokens queued after a flush marker wait for the next round.
                AckMsg::Flush(reply) => {
                    flushes.push(reply);
                    break;
                }
            }
            if batch.len() >= ACK_BATCH_MAX {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !batch.is_empty() {
            send(&shared, &batch, &policy, &done).await;
            batch.clear();
        }
        for reply in flushes.drain(..) {
            let _ = reply.send(());
        }
    }
}

async fn send<T: Transport>(
    shared: &Shared<T>,
    batch: &[T::Token],
    policy: &RetryPolicy,
    done: &CancellationToken,
) {
    let mut attempt = 0u32;
    let mut final_attempts = 0u32;
    loop {
        attempt = attempt.saturating_add(1);
        match shared.transport.ack(batch).await {
            Ok(()) => return,
            Err(Error::LeaseLost { partition }) => {
                // The partition has a new owner, which redelivers these entries in order.
                tracing::info!(topic = %shared.topic, group = %shared.group, partition, n = batch.len(), "acknowledgements refused: the partition's lease moved on; its new owner redelivers them");
                return;
            }
            Err(e) => {
                if done.is_cancelled() {
                    final_attempts += 1;
                    if final_attempts >= FINAL_ATTEMPTS {
                        // Unacknowledged entries stay pending and are delivered again.
                        tracing::error!(topic = %shared.topic, group = %shared.group, error = %e, n = batch.len(), "ack failed at shutdown; entries will be redelivered");
                        return;
                    }
                }
                tracing::warn!(topic = %shared.topic, group = %shared.group, error = %e, attempt, "ack failed; retrying");
                tokio::time::sleep(policy.delay(attempt.min(16))).await;
            }
        }
    }
}
