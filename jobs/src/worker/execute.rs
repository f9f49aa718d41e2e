//! One attempt: decode, run in a task of its own under the timeout, stop it on cancel,
//! timeout, lost lease or shutdown (token first, abort after `cancel_grace`), and wait until
//! its task (and any [`JobContext::run_blocking`] work) has really ended before reporting. The
//! caller holds the queue permit meanwhile, so a stuck attempt keeps its slot: the queue's
//! concurrency is never exceeded, and the row stays leased (heartbeated) until the outcome is
//! written.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Inner, Lost, from_now};
use crate::job::{BlockingTracker, JobContext, JobErrorKind};
use crate::model::{AttemptError, FetchedJob, JobState, Outcome};

/// Runs one attempt; `None` when it was interrupted by a hard shutdown without an outcome
/// (its task has ended: the job may be released).
pub(super) async fn execute(
    inner: &Arc<Inner>,
    job: FetchedJob,
    cancel: CancellationToken,
) -> Option<Outcome> {
    let queue = job.queue.clone();
    let token = job.token();
    let wait = (Utc::now() - job.run_at).to_std().unwrap_or(Duration::ZERO);
    metrics::histogram!("windlass_jobs_wait_seconds", "queue" => queue.clone())
        .record(wait.as_secs_f64());
    let worker = Some(inner.id.clone());
    let kind_retry = inner.registry.get(&job.kind).and_then(|r| r.retry());
    let retry_policy = kind_retry.as_ref().unwrap_or(&inner.config.retry);
    let failed = |reason: &'static str, message: String| -> Outcome {
        metrics::counter!("windlass_jobs_failed_total", "queue" => queue.clone(), "reason" => reason).increment(1);
        tracing::warn!(error = %message, reason, "job attempt failed");
        let error = AttemptError::new(job.attempt, message, worker.clone());
        if job.attempt >= job.max_attempts {
            Outcome::Discard { error }
        } else {
            Outcome::Retry {
                run_at: from_now(retry_policy.delay(job.attempt.max(1) as u32)),
                error,
            }
        }
    };

    let Some(runner) = inner.registry.get(&job.kind) else {
        metrics::counter!("windlass_jobs_failed_total", "queue" => queue.clone(), "reason" => "unknown_kind")
            .increment(1);
        metrics::counter!("windlass_jobs_unknown_kind_total", "queue" => queue.clone())
            .increment(1);
        let message = format!(
            "no worker registered job kind {:?} (worker {} knows {:?}); register it with Worker::register",
            job.kind,
            inner.id,
            inner.registry.keys().collect::<Vec<_>>()
        );
        tracing::error!(error = %message, "unknown job kind");
        return Some(Outcome::Requeue {
            run_at: from_now(inner.config.unknown_kind_delay),
            error: Some(AttemptError::new(job.attempt, message, worker)),
        });
    };
    let blocking = Arc::new(BlockingTracker::default());
    let ctx = JobContext {
        id: job.id,
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        queue: job.queue.clone(),
        org_id: job.org_id.clone(),
        cancel: cancel.clone(),
        blocking: blocking.clone(),
        worker: inner.id.as_str().into(),
        states: inner.states.clone(),
    };
    let future = match runner.start(job.args.clone(), ctx) {
        Ok(f) => f,
        Err(e) => {
            metrics::counter!("windlass_jobs_failed_total", "queue" => queue.clone(), "reason" => "decode").increment(1);
            let message = format!("arguments no longer decode as job kind {:?}: {e}", job.kind);
            tracing::error!(error = %message, "discarding job");
            return Some(Outcome::Discard {
                error: AttemptError::new(job.attempt, message, worker),
            });
        }
    };
    let started = Instant::now();
    let mut handle = tokio::spawn(future.in_current_span());
    if let Some(f) = inner.flights().get_mut(&token) {
        f.abort = Some(handle.abort_handle());
    }
    let timeout = job
        .timeout
        .or_else(|| runner.timeout())
        .unwrap_or(inner.config.default_timeout);
    let mut timed_out = false;
    let result = tokio::select! {
        r = &mut handle => r,
        _ = tokio::time::sleep(timeout) => {
            timed_out = true;
            stop_attempt(inner, &cancel, &mut handle).await
        }
        _ = cancel.cancelled() => stop_attempt(inner, &cancel, &mut handle).await,
    };
    // The attempt's task ended: a stop request arriving from now on finds it over (its
    // outcome stands; the request is answered by the final state).
    if let Some(f) = inner.flights().get_mut(&token) {
        f.ended = true;
        f.interrupted = cancel.is_cancelled();
    }
    // Blocking work the attempt started keeps the slot too, until it returned.
    blocking.wait_idle().await;
    metrics::histogram!("windlass_jobs_run_seconds", "queue" => queue.clone(), "kind" => job.kind.clone())
        .record(started.elapsed().as_secs_f64());
    let (stop, lost) = inner
        .flights()
        .get(&token)
        .map_or((None, None), |f| (f.stop, f.lost));
    let succeeded = matches!(result, Ok(Ok(())));
    // A stop requested by id and delivered to the attempt decides the outcome.
    if let Some(state) = stop {
        let error = AttemptError::new(
            job.attempt,
            format!("{state} by request while running"),
            worker.clone(),
        );
        return Some(if state == JobState::Discarded {
            Outcome::Discard { error }
        } else {
            Outcome::Cancel { error }
        });
    }
    // Interrupted by a hard shutdown: released without counting the attempt, unless it
    // completed (a success is recorded, never run again).
    if inner.hard_stop.load(Ordering::SeqCst)
        && cancel.is_cancelled()
        && lost.is_none()
        && !succeeded
    {
        return None;
    }
    let outcome = match result {
        Ok(Ok(())) => {
            metrics::counter!("windlass_jobs_completed_total", "queue" => queue.clone())
                .increment(1);
            Outcome::Completed
        }
        _ if timed_out => failed("timeout", format!("timed out after {timeout:?}")),
        _ if lost.is_some() => failed(
            "lease_lost",
            match lost {
                Some(Lost::Fenced) => format!(
                    "stopped by its worker: no heartbeat succeeded for {:?} (self-fenced)",
                    inner.fence_after
                ),
                _ => "stopped: the job is no longer held by this attempt (rescued)".to_owned(),
            },
        ),
        Ok(Err(e)) => match e.kind {
            JobErrorKind::Retry => failed("error", e.to_string()),
            JobErrorKind::Discard => {
                metrics::counter!("windlass_jobs_failed_total", "queue" => queue.clone(), "reason" => "discarded")
                    .increment(1);
                Outcome::Discard {
                    error: AttemptError::new(job.attempt, e.to_string(), worker.clone()),
                }
            }
            JobErrorKind::Cancel => Outcome::Cancel {
                error: AttemptError::new(job.attempt, e.to_string(), worker.clone()),
            },
            JobErrorKind::Snooze(d) => Outcome::Requeue {
                run_at: from_now(d),
                error: None,
            },
        },
        Err(join) if join.is_panic() => failed(
            "panic",
            format!("panicked: {}", super::panic_message(join.into_panic())),
        ),
        Err(_) => failed("error", "attempt aborted".to_owned()),
    };
    Some(outcome)
}

/// Fires the attempt's token, gives it `cancel_grace` to stop, aborts it, and waits until its
/// task has really ended (an abort takes effect at the task's next `.await`; blocking code
/// runs on until it returns, holding the slot).
async fn stop_attempt(
    inner: &Inner,
    cancel: &CancellationToken,
    handle: &mut tokio::task::JoinHandle<Result<(), crate::JobError>>,
) -> Result<Result<(), crate::JobError>, tokio::task::JoinError> {
    cancel.cancel();
    match tokio::time::timeout(inner.config.cancel_grace, &mut *handle).await {
        Ok(r) => r,
        Err(_) => {
            handle.abort();
            let stuck = Instant::now();
            let r = (&mut *handle).await;
            if stuck.elapsed() > Duration::from_secs(1) {
                tracing::warn!(
                    stuck_for = ?stuck.elapsed(),
                    "job attempt ignored cancellation and its abort (blocking code?); its slot was held until it returned"
                );
            }
            r
        }
    }
}
