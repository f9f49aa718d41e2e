//! Maintenance: every worker rescues attempts whose worker stopped heartbeating (an indexed,
//! cheap query: several rescuers are harmless); pruning, the recount of the count snapshot
//! (`JobStore::refresh_counts`, spaced to at most ~5% of the time) and the depth gauges (read
//! from that snapshot) run on one worker only, the holder of the maintenance lease
//! (`JobStore::try_lead`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Inner;
use crate::model::JobState;

pub(super) async fn maintenance_loop(inner: Arc<Inner>, stop: CancellationToken) {
    let start = tokio::time::Instant::now();
    let mut rescue = tokio::time::interval_at(
        start + inner.config.rescue_interval / 2,
        inner.config.rescue_interval,
    );
    let mut prune = tokio::time::interval_at(
        start + inner.config.prune_interval,
        inner.config.prune_interval,
    );
    let metrics_every = inner
        .config
        .metrics_interval
        .unwrap_or(Duration::from_secs(3600 * 24 * 365));
    let mut depth = tokio::time::interval(metrics_every);
    let counts_every = inner.config.counts_interval;
    // The first recount right away (a console reading the snapshot has nothing before it).
    let mut next_counts = start;
    // The lease outlives the longest gap between two maintenance ticks of its holder.
    let lease = 3 * [
        Some(inner.config.prune_interval),
        inner.config.metrics_interval,
        counts_every,
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(inner.config.prune_interval);
    for t in [&mut rescue, &mut prune, &mut depth] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = rescue.tick() => match inner.store.rescue(inner.config.rescue_after).await {
                Ok(rescued) => for r in rescued {
                    tracing::warn!(job.id = r.id, queue = %r.queue, state = %r.state, "rescued job of a dead worker");
                    metrics::counter!("windlass_jobs_rescued_total", "queue" => r.queue).increment(1);
                },
                Err(e) => tracing::warn!(error = %e, "windlass-jobs rescue failed"),
            },
            _ = prune.tick() => if let Some(retention) = inner.config.retention
                && leads(&inner, lease).await
            {
                match inner.store.prune(retention).await {
                    Ok(n) if n > 0 => tracing::debug!(pruned = n, "pruned final jobs"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "windlass-jobs prune failed"),
                }
            },
            _ = tokio::time::sleep_until(next_counts), if counts_every.is_some() => {
                // A zero interval would recount in a loop: at least 10 ms apart.
                let every = counts_every.unwrap_or(Duration::MAX).max(Duration::from_millis(10));
                let started = tokio::time::Instant::now();
                if leads(&inner, lease).await
                    && let Err(e) = inner.store.refresh_counts().await
                {
                    tracing::warn!(error = %e, "windlass-jobs counts refresh failed");
                }
                // Recounting a big table takes a while: keep it to ~5% of the time.
                next_counts = tokio::time::Instant::now() + every.max(started.elapsed() * 20);
            },
            _ = depth.tick() => if inner.config.metrics_interval.is_some() && leads(&inner, lease).await {
                match inner.store.count_snapshot(&windlass_core::TenantScope::All).await {
                    // Before the first recount the gauges stay unset rather than read 0.
                    Ok(snapshot) if snapshot.refreshed_at.is_some() => {
                        let counts = snapshot.counts;
                        let mut seen: HashMap<(String, JobState), i64> = HashMap::new();
                        for (q, _) in &inner.config.queues {
                            for s in JobState::ALL {
                                seen.insert((q.clone(), s), 0);
                            }
                        }
                        for c in counts {
                            seen.insert((c.queue, c.state), c.count);
                        }
                        for ((queue, state), n) in seen {
                            metrics::gauge!("windlass_jobs_depth", "queue" => queue, "state" => state.as_str())
                                .set(n as f64);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "windlass-jobs depth query failed"),
                }
            },
        }
    }
}

/// Whether this worker holds (took or renewed) the maintenance lease.
async fn leads(inner: &Inner, lease: Duration) -> bool {
    match inner.store.try_lead(&inner.id, lease).await {
        Ok(leader) => leader,
        Err(e) => {
            tracing::warn!(error = %e, "windlass-jobs maintenance lease failed");
            false
        }
    }
}
