//! One delivery's life in a handler task: attempts with a deadline and a cancellation token,
//! retries with backoff, dead-lettering.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use windlass_core::RetryPolicy;

use super::ack::AckMsg;
use super::{Delivery, Shared, Transport};
use crate::error::Error;
use crate::handler::{DeliveryContext, HandlerError};

pub(crate) enum Outcome {
    Acked,
    DeadLettered,
    /// Stopped before an end (shutdown, revoke, a lost lease): the entry stays pending.
    Abandoned,
}

/// Runs one delivery to its end and queues its acknowledgement. `stop` fires when the runner
/// stops waiting for this delivery's retries (shutdown, its partition revoked); `cancel` is the
/// handler's token, cancelled when the runner gives up on the running attempt.
pub(crate) async fn run<T: Transport>(
    shared: &Shared<T>,
    delivery: Delivery<T::Token>,
    stop: CancellationToken,
    cancel: CancellationToken,
) {
    match process(shared, &delivery, &stop, &cancel).await {
        Outcome::Acked => {
            shared.metrics.acked.increment(1);
            let _ = shared.acks.send(AckMsg::Token(delivery.token));
        }
        Outcome::DeadLettered => shared.metrics.dead.increment(1),
        Outcome::Abandoned => {}
    }
}

async fn dead_letter<T: Transport>(
    shared: &Shared<T>,
    delivery: &Delivery<T::Token>,
    reason: &str,
    stop: &CancellationToken,
) -> Outcome {
    let policy = RetryPolicy::default()
        .with_delays(Duration::from_millis(50), Duration::from_secs(5))
        .with_max_attempts(u32::MAX);
    let mut attempt = 0u32;
    loop {
        attempt = attempt.saturating_add(1);
        match shared.transport.dead_letter(delivery, reason).await {
            Ok(()) => {
                tracing::warn!(topic = %shared.topic, group = %shared.group, delivery = %delivery.delivery_id, reason, "dead-lettered");
                return Outcome::DeadLettered;
            }
            Err(Error::LeaseLost { partition }) => {
                tracing::info!(topic = %shared.topic, group = %shared.group, partition, delivery = %delivery.delivery_id, "dead-lettering refused: the partition's lease moved on");
                return Outcome::Abandoned;
            }
            Err(e) => {
                tracing::warn!(topic = %shared.topic, group = %shared.group, error = %e, "dead-lettering failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(policy.delay(attempt.min(16))) => {}
                    _ = stop.cancelled() => return Outcome::Abandoned,
                }
            }
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

async fn process<T: Transport>(
    shared: &Shared<T>,
    delivery: &Delivery<T::Token>,
    stop: &CancellationToken,
    cancel: &CancellationToken,
) -> Outcome {
    let event = match &delivery.payload {
        Ok(event) => event,
        Err(bad) => {
            let reason = format!("undecodable entry: {}", bad.reason);
            return Box::pin(dead_letter(shared, delivery, &reason, stop)).await;
        }
    };
    let mut attempt = delivery.delivery_count.max(1);
    if shared.retry.is_exhausted(attempt - 1) && attempt > 1 {
        let reason = format!(
            "delivered {} times without being acknowledged (a consumer died while handling it?)",
            attempt - 1
        );
        return Box::pin(dead_letter(shared, delivery, &reason, stop)).await;
    }
    let timeout = shared.handler_timeout;
    // The first attempt runs even when `stop` already fired: the runner starts a delivery
    // after a stop only to fill a gap at a handover (see the runner docs), for one attempt.
    let mut first = true;
    loop {
        if !first && stop.is_cancelled() {
            return Outcome::Abandoned;
        }
        first = false;
        // A token per attempt: a timed-out attempt's token stays cancelled, the next one starts
        // fresh; the runner cancels the parent to stop whichever attempt runs.
        let attempt_cancel = cancel.child_token();
        let started = Instant::now();
        let mut ctx = DeliveryContext::new(
            shared.topic.clone(),
            shared.group.clone(),
            shared.transport.consumer(),
            delivery.delivery_id.clone(),
        )
        .with_attempt(attempt)
        .with_deadline(started + timeout);
        ctx.partition = delivery.partition;
        ctx.cancel = attempt_cancel.clone();
        let span = tracing::info_span!(
            "windlass.deliver",
            event.id = %event.id(),
            event.type = %event.ty(),
            event.source = %event.source(),
            orgid = event.org_id().map(|o| o.as_str()).unwrap_or(""),
            correlationid = event.correlation_id().unwrap_or(""),
            topic = %shared.topic,
            group = %shared.group,
            partition = ctx.partition.map(i64::from).unwrap_or(-1),
            attempt,
        );
        #[cfg(feature = "otel")]
        crate::otel::set_parent(&span, event);
        let call = AssertUnwindSafe(shared.handler.handle(event, &ctx).instrument(span.clone()))
            .catch_unwind();
        let mut call = std::pin::pin!(call);
        // A handler done at its first poll needs no timer.
        let result = match futures::poll!(call.as_mut()) {
            std::task::Poll::Ready(r) => Ok(r),
            std::task::Poll::Pending => {
                let deadline = tokio::time::Instant::from_std(started + timeout);
                // Boxed: the common path keeps the task's future small.
                Box::pin(tokio::time::timeout_at(deadline, call)).await
            }
        };
        shared
            .metrics
            .duration
            .record(started.elapsed().as_secs_f64());
        let error = match result {
            Ok(Ok(Ok(()))) => return Outcome::Acked,
            Ok(Ok(Err(e))) if e.is_reject() => {
                let reason = format!("rejected by handler: {e}");
                return Box::pin(dead_letter(shared, delivery, &reason, stop).instrument(span))
                    .await;
            }
            Ok(Ok(Err(e))) => e,
            Ok(Err(panic)) => {
                HandlerError::retry(format!("handler panicked: {}", panic_message(&*panic)))
            }
            Err(_elapsed) => {
                attempt_cancel.cancel();
                shared.metrics.timed_out.increment(1);
                HandlerError::retry(format!(
                    "handler did not finish within its deadline of {timeout:?}"
                ))
            }
        };
        if shared.retry.is_exhausted(attempt) {
            let reason = format!("failed {attempt} attempts; last error: {error}");
            return Box::pin(dead_letter(shared, delivery, &reason, stop)).await;
        }
        let delay = error
            .requested_delay()
            .unwrap_or_else(|| shared.retry.delay(attempt));
        tracing::debug!(parent: &span, error = %error, retry_in = ?delay, "handler failed; will retry");
        shared.metrics.retried.increment(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return Outcome::Abandoned,
        }
        attempt = attempt.saturating_add(1);
    }
}
