//! The maintenance leader: one relay of an outbox (elected through a lease row) deletes
//! delivered events past retention, purges old dead rows and inbox records, in bounded batches,
//! and recounts the operator counters, then exports them as gauges. The others only renew
//! their candidacy. Two leaders for a moment (a lease just ended) do no harm: every step only
//! deletes what is old enough, or recounts.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use windlass_core::TenantScope;

use super::RelayOptions;
use crate::store::OutboxMaintenance;

/// Rows one retention or purge statement deletes.
const BATCH: usize = 1000;
/// Longest one kind of deletion runs per maintenance pass (the rest waits for the next pass).
const BUDGET: Duration = Duration::from_secs(2);

pub(crate) async fn run<S: OutboxMaintenance + crate::admin::OutboxAdmin>(
    store: Arc<S>,
    options: RelayOptions,
    shutdown: CancellationToken,
) {
    let holder = format!(
        "{}:{}:{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into()),
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let interval = options.maintenance_interval.max(Duration::from_millis(10));
    let lease = interval * 3;
    let mut leading = false;
    let mut next_stats = Instant::now();
    let mut exported: HashSet<(String, String)> = HashSet::new();
    loop {
        match store.lead(&holder, lease).await {
            Ok(now_leading) => {
                if now_leading != leading {
                    tracing::info!(holder = %holder, leading = now_leading, "outbox maintenance leadership changed");
                }
                leading = now_leading;
            }
            Err(e) => {
                tracing::warn!(error = %e, "outbox maintenance: leader lease failed");
                crate::metrics::relay_error(options.destination.as_str(), "maintenance");
                leading = false;
            }
        }
        if leading {
            pass(&*store, &options).await;
            if Instant::now() >= next_stats {
                let started = Instant::now();
                match store.refresh_stats().await {
                    Ok(()) => export(&*store, &mut exported).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox maintenance: counters refresh failed");
                        crate::metrics::relay_error(options.destination.as_str(), "maintenance");
                    }
                }
                // Recounting a big table takes a while: keep it to ~5% of the time.
                next_stats = Instant::now() + options.stats_interval.max(started.elapsed() * 20);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    if leading {
        let _ = store.resign(&holder).await;
    }
}

async fn pass<S: OutboxMaintenance>(store: &S, o: &RelayOptions) {
    if let Some(age) = o.retention {
        drain(o, "events", || store.delete_delivered_before(age, BATCH)).await;
    }
    if let Some(age) = o.dead_retention {
        drain(o, "dead", || store.purge_dead_before(age, BATCH)).await;
    }
    if let Some(age) = o.inbox_retention {
        drain(o, "inbox", || store.purge_inbox_before(age, BATCH)).await;
    }
}

/// Runs a bounded delete until it deletes less than a batch or the time budget is spent.
async fn drain<F, Fut>(o: &RelayOptions, what: &'static str, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = crate::Result<u64>>,
{
    let started = Instant::now();
    loop {
        match step().await {
            Ok(n) => {
                crate::metrics::deleted(what, n);
                if n < BATCH as u64 || started.elapsed() > BUDGET {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, what, "outbox maintenance: deletion failed");
                crate::metrics::relay_error(o.destination.as_str(), "maintenance");
                return;
            }
        }
    }
}

/// Sets the gauges from the counters; zeroes the ones that disappeared.
async fn export<S: crate::admin::OutboxAdmin>(store: &S, exported: &mut HashSet<(String, String)>) {
    let Ok(stats) = store.stats(&TenantScope::All).await else {
        return;
    };
    let mut now: HashSet<(String, String)> = HashSet::new();
    for t in &stats.topics {
        crate::metrics::topic_gauges(
            &t.destination,
            &t.topic,
            t.pending,
            t.dead,
            t.blocked_keys,
            t.oldest_pending_age.map_or(0.0, |d| d.as_secs_f64()),
        );
        now.insert((t.destination.clone(), t.topic.clone()));
    }
    for (d, t) in exported.difference(&now) {
        crate::metrics::topic_gauges(d, t, 0, 0, 0, 0.0);
    }
    *exported = now;
}
