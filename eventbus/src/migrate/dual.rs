//! Publish-time dual bus, for users without a database: best effort on the secondary bus.

use std::time::Duration;

use async_trait::async_trait;
use windlass_core::Topic;

use crate::error::Result;
use crate::event::Event;
use crate::traits::Publisher;

/// How long the secondary bus may take by default before its publish is given up.
pub const DEFAULT_SECONDARY_TIMEOUT: Duration = Duration::from_secs(5);

/// Publishes every event to a primary and a secondary bus, concurrently.
///
/// **Best effort on the secondary.** The result is the primary's: the publish succeeds when
/// the primary bus has the event, whatever the secondary does. A secondary failure (or a
/// secondary publish taking longer than [`DualPublisher::secondary_timeout`], 5 s by default)
/// is logged, counted in `windlass_bus_dual_publish_failures_total{topic}` and otherwise
/// ignored: **that bus misses the event** (nothing retries it). A primary failure is returned
/// (the secondary may have the event then; the caller's retry duplicates it there, which the
/// consumer's inbox drops). So a secondary outage never blocks the primary's consumers, and
/// costs at most the secondary timeout per publish while it lasts.
///
/// When losing events on either bus is not acceptable, publish through the outbox with one
/// destination per bus instead (`docs/migration.md`): nothing is lost and each bus catches up
/// on its own.
#[derive(Debug, Clone)]
pub struct DualPublisher<A, B> {
    primary: A,
    secondary: B,
    secondary_timeout: Duration,
}

impl<A: Publisher, B: Publisher> DualPublisher<A, B> {
    /// Writes to `primary` (its result is returned) and `secondary` (best effort).
    pub fn new(primary: A, secondary: B) -> Self {
        Self {
            primary,
            secondary,
            secondary_timeout: DEFAULT_SECONDARY_TIMEOUT,
        }
    }

    /// The longest a publish waits for the secondary bus (default 5 s).
    pub fn secondary_timeout(mut self, timeout: Duration) -> Self {
        self.secondary_timeout = timeout;
        self
    }

    fn secondary_failed(topic: &Topic, n: usize, error: &dyn std::fmt::Display) {
        metrics::counter!("windlass_bus_dual_publish_failures_total", "topic" => topic.as_str().to_owned())
            .increment(n as u64);
        tracing::warn!(topic = %topic, events = n, error = %error,
            "dual publish: the secondary bus did not take the event(s); that bus misses them (best effort)");
    }
}

#[async_trait]
impl<A: Publisher, B: Publisher> Publisher for DualPublisher<A, B> {
    async fn publish(&self, topic: &Topic, event: &Event) -> Result<()> {
        let (a, b) = tokio::join!(
            self.primary.publish(topic, event),
            tokio::time::timeout(self.secondary_timeout, self.secondary.publish(topic, event))
        );
        match b {
            Ok(Ok(())) => {}
            Ok(Err(e)) => Self::secondary_failed(topic, 1, &e),
            Err(_) => Self::secondary_failed(topic, 1, &"timed out"),
        }
        a
    }

    async fn publish_batch(&self, topic: &Topic, events: &[Event]) -> Result<()> {
        let (a, b) = tokio::join!(
            self.primary.publish_batch(topic, events),
            tokio::time::timeout(
                self.secondary_timeout,
                self.secondary.publish_batch(topic, events)
            )
        );
        match b {
            Ok(Ok(())) => {}
            Ok(Err(e)) => Self::secondary_failed(topic, events.len(), &e),
            Err(_) => Self::secondary_failed(topic, events.len(), &"timed out"),
        }
        a
    }
}
