//! Fetching: one or more loops per queue claim due jobs under the queue's concurrency (a
//! semaphore whose permits the attempts hold until their task has really ended), and launch
//! each attempt keyed by its token.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use windlass_core::RetryPolicy;

use super::{Flight, Inner, execute};
use crate::model::{FetchedJob, Finish};

const MIN_IDLE_WAIT: Duration = Duration::from_millis(5);

pub(super) async fn fetch_loop(
    inner: Arc<Inner>,
    queue: String,
    sem: Arc<Semaphore>,
    stop: CancellationToken,
) {
    let wake = inner.wakers.get(&queue).cloned().unwrap_or_default();
    let mut failures: u32 = 0;
    let retry =
        RetryPolicy::default().with_delays(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        // Self-fenced: claim nothing until a heartbeat succeeds again.
        while inner.fenced() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(inner.config.heartbeat_interval) => {}
            }
        }
        let first = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            p = sem.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let mut permits = vec![first];
        while permits.len() < inner.config.fetch_batch {
            match sem.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        // Fenced while this loop waited for a slot (a slot frees when an attempt ends, and the
        // watchdog ending a self-fenced attempt is exactly such a moment): claim nothing.
        if inner.fenced() {
            drop(permits);
            continue;
        }
        let wanted = permits.len();
        // The claimed rows' heartbeat_at is set by the fetch, after this instant.
        let sent = Instant::now();
        inner.fetching.fetch_add(1, Ordering::SeqCst);
        let jobs = match inner
            .store
            .fetch(&queue, &inner.kinds, wanted, &inner.id)
            .await
        {
            Ok(jobs) => {
                failures = 0;
                jobs
            }
            Err(e) => {
                inner.fetching.fetch_sub(1, Ordering::SeqCst);
                failures += 1;
                tracing::warn!(queue = %queue, error = %e, "windlass-jobs fetch failed; retrying");
                drop(permits);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(retry.delay(failures)) => {}
                }
                continue;
            }
        };
        let got = jobs.len();
        for job in jobs {
            let Some(permit) = permits.pop() else { break };
            launch(&inner, job, permit, sent);
        }
        inner.fetching.fetch_sub(1, Ordering::SeqCst);
        drop(permits);
        if got < wanted {
            let mut wait = inner.config.poll_interval;
            if let Ok(Some(at)) = inner.store.next_due(&queue, &inner.kinds).await {
                let until = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                wait = wait.min(until.max(MIN_IDLE_WAIT));
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// Starts one attempt in a task of its own that holds the queue permit until the attempt has
/// really ended and its outcome was handed to the completer.
fn launch(inner: &Arc<Inner>, job: FetchedJob, permit: OwnedSemaphorePermit, renewed: Instant) {
    let cancel = CancellationToken::new();
    let token = job.token();
    let previous = inner.flights().insert(
        token,
        Flight {
            cancel: cancel.clone(),
            abort: None,
            renewed,
            stop: None,
            lost: None,
            ended: false,
            interrupted: false,
            done: false,
            released: false,
        },
    );
    debug_assert!(previous.is_none(), "{token} fetched twice");
    let span = tracing::info_span!(
        "windlass.job",
        job.id = job.id,
        job.kind = %job.kind,
        job.queue = %job.queue,
        job.attempt = job.attempt,
        job.org_id = job.org_id.as_deref().unwrap_or(""),
        job.outcome = tracing::field::Empty,
    );
    // The enqueuer's trace context becomes the parent of every attempt's span (feature `otel`).
    #[cfg(feature = "otel")]
    if let Some(tp) = job.traceparent.as_deref() {
        windlass_core::otel::set_parent(&span, tp, job.tracestate.as_deref());
    }
    let inner = inner.clone();
    tokio::spawn(
        async move {
            let _permit = permit;
            let outcome = execute::execute(&inner, job, cancel.clone()).await;
            match outcome {
                Some(outcome) => {
                    tracing::Span::current().record("job.outcome", outcome.state().as_str());
                    // Whether the token had fired when the attempt's task ended (not now: a stop
                    // arriving after a success must not turn it into a stop).
                    let interrupted = inner.flights().get(&token).is_some_and(|f| f.interrupted);
                    let finish =
                        Finish::new(token.id, token.attempt, outcome).interrupted(interrupted);
                    let _ = inner.finish_tx.send(finish);
                    if let Some(f) = inner.flights().get_mut(&token) {
                        f.done = true;
                    }
                }
                None => {
                    tracing::Span::current().record("job.outcome", "released");
                    if let Some(f) = inner.flights().get_mut(&token) {
                        f.released = true;
                    }
                }
            }
            inner.idle.notify_waiters();
        }
        .instrument(span),
    );
}
