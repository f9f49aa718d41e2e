//! Fencing: heartbeats renew the lease of each attempt this worker holds (conditional on its
//! token; the store runs them apart from the jobs' connections), deliver stop requests, and
//! stop attempts that were rescued. The watchdog self-fences: an attempt whose lease could not
//! be renewed for `self_fence_after` is cancelled (and aborted after `cancel_grace`), and the
//! worker fetches nothing until a heartbeat succeeds again. With `self_fence_after +
//! cancel_grace <= rescue_after` (validated), an attempt that honours cancellation has stopped
//! before any other worker may rescue its job.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::{Inner, Lost};
use crate::model::AttemptToken;

pub(super) async fn heartbeat_loop(inner: Arc<Inner>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(inner.config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Every attempt whose row is still running on our behalf, finished ones whose outcome
        // is not written yet included.
        let tokens: Vec<AttemptToken> = inner.flights().keys().copied().collect();
        let sent = Instant::now();
        // A heartbeat slower than the fencing threshold is useless: give up on it and count
        // it as failed (the store drops the connection it was using).
        let reply = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(inner.fence_after, inner.store.heartbeat(&inner.id, &tokens)) => r,
        };
        match reply {
            Ok(Ok(reply)) => {
                *inner
                    .last_heartbeat
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = sent;
                let held: HashSet<AttemptToken> = reply.held.iter().copied().collect();
                let mut flights = inner.flights();
                for token in &tokens {
                    let Some(f) = flights.get_mut(token) else {
                        continue;
                    };
                    if held.contains(token) {
                        f.renewed = f.renewed.max(sent);
                    } else if !f.done && f.lost.is_none() {
                        tracing::warn!(
                            job.id = token.id,
                            job.attempt = token.attempt,
                            "attempt no longer held (rescued); stopping it"
                        );
                        f.lost = Some(Lost::Rescued);
                        f.cancel.cancel();
                    }
                }
                for (token, state) in reply.stop {
                    if let Some(f) = flights.get_mut(&token)
                        && !f.ended
                        && !f.done
                        && f.stop.is_none()
                    {
                        tracing::info!(
                            job.id = token.id,
                            job.attempt = token.attempt,
                            requested = %state,
                            "stop requested by id; stopping the attempt"
                        );
                        f.stop = Some(state);
                        f.cancel.cancel();
                    }
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "windlass-jobs heartbeat failed"),
            Err(_) => tracing::warn!(
                timeout = ?inner.fence_after,
                "windlass-jobs heartbeat timed out"
            ),
        }
    }
}

/// Cancels attempts whose lease this worker could not renew for `self_fence_after`. Runs on
/// its own ticker so a hanging heartbeat cannot delay it.
pub(super) async fn watchdog_loop(inner: Arc<Inner>, stop: CancellationToken) {
    let period = (inner.config.heartbeat_interval / 2).max(std::time::Duration::from_millis(5));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let mut flights = inner.flights();
        for (token, f) in flights.iter_mut() {
            if f.done || f.released || f.lost.is_some() {
                continue;
            }
            if now.duration_since(f.renewed) > inner.fence_after {
                tracing::warn!(
                    job.id = token.id,
                    job.attempt = token.attempt,
                    fence_after = ?inner.fence_after,
                    "lease not renewed in time; self-fencing: stopping the attempt"
                );
                metrics::counter!("windlass_jobs_self_fenced_total").increment(1);
                f.lost = Some(Lost::Fenced);
                f.cancel.cancel();
                *inner
                    .attempt_fenced_at
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(now);
            }
        }
    }
}
