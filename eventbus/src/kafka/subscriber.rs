//! Consuming: a consumer-group member driven by the shared runner as a partitioned transport.
//!
//! The client side (the poll thread, pause/resume, the rebalance callbacks, commits) is in
//! [`consumer`](super::consumer); the bookkeeping of offsets in [`offsets`](super::offsets).
//! This module hands buffered records to the runner, takes acknowledgements back and
//! dead-letters.
//!
//! The runner completes events out of order (different keys run concurrently), so offsets are
//! tracked per partition: a fetched offset is pending until acknowledged, and the committed
//! offset is one past the highest *contiguous* acknowledged offset. A crash therefore
//! redelivers at most what was fetched and not yet contiguous, never skips anything.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, Consumer};
use windlass_core::{Group, Topic};

use crate::error::{Error, Result};
use crate::handler::Handler;
use crate::kafka::KafkaBus;
use crate::kafka::consumer::{Core, GroupContext, PollThread};
use crate::kafka::dlq;
use crate::kafka::offsets::KafkaToken;
use crate::runner::{Delivery, Runner, Transport, partition_control};
use crate::subscription::Subscription;
use crate::traits::{StartFrom, SubscribeOptions, Subscriber};

/// How long `close` waits for the consumer to commit and leave the group.
const CLOSE_WAIT: Duration = Duration::from_secs(30);
/// Shortest time between two commits of the background committer (acknowledgements in
/// between are carried by the next commit; a revoke and `close` commit at once).
const COMMIT_SPACING: Duration = Duration::from_millis(20);

pub(crate) struct KafkaTransport {
    bus: KafkaBus,
    core: Arc<Core>,
    poller: PollThread,
    topic: String,
    dlq_topic: String,
    group: String,
    name: String,
    poll_wait: Duration,
    /// Most deliveries of one partition in the runner at once.
    per_partition: usize,
    prefetch: usize,
}

impl KafkaTransport {
    fn cap(&self, held: usize) -> usize {
        // An even share of the read-ahead per held partition, and never less than the
        // configured floor: one partition stuck behind a slow key keeps at most its share.
        (self.prefetch / held.max(1)).max(self.per_partition).max(1)
    }
}

#[async_trait]
impl Transport for KafkaTransport {
    type Token = KafkaToken;

    fn consumer(&self) -> &str {
        &self.name
    }

    async fn fetch(&self, max: usize) -> Result<Vec<Delivery<KafkaToken>>> {
        let deadline = tokio::time::Instant::now() + self.poll_wait;
        loop {
            let ready = self.core.ready.notified();
            {
                let mut offsets = self.core.lock();
                let cap = self.cap(offsets.parts.len());
                let out = offsets.take(max, cap);
                if !out.is_empty() {
                    return Ok(out);
                }
            }
            tokio::select! {
                _ = ready => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            }
        }
    }

    async fn ack(&self, tokens: &[KafkaToken]) -> Result<()> {
        let moved = self.core.lock().acked(tokens.iter());
        // Room for more deliveries of these partitions.
        self.core.ready.notify_one();
        // The committer commits what is due in the background (coalesced, retried until it
        // passes), so acknowledgements never wait for a commit round trip.
        if moved {
            self.core.commit_wanted.notify_one();
        }
        Ok(())
    }

    async fn dead_letter(&self, delivery: &Delivery<KafkaToken>, reason: &str) -> Result<()> {
        dlq::write(
            &self.bus,
            &self.topic,
            &self.dlq_topic,
            &self.group,
            delivery,
            reason,
        )
        .await?;
        // The record is in the DLQ: acknowledge it (committed by the committer).
        if self.core.lock().acked(std::iter::once(&delivery.token)) {
            self.core.commit_wanted.notify_one();
        }
        self.core.ready.notify_one();
        Ok(())
    }

    /// Kafka commits one offset per partition: the runner fills gaps at a handover.
    fn commits_prefix(&self) -> bool {
        true
    }

    async fn release(&self, tokens: Vec<KafkaToken>) {
        self.core.lock().released(tokens.iter());
        self.core.ready.notify_one();
    }

    async fn close(&self) {
        self.poller.close(CLOSE_WAIT).await;
    }
}

impl KafkaBus {
    /// The dead-letter topic of `topic` under this bus's [`DlqNaming`](crate::kafka::DlqNaming).
    pub fn dlq_topic(&self, topic: &Topic) -> String {
        self.inner.config.dlq_naming.topic_for(topic.as_str())
    }

    /// Creates `topic` with `partitions` partitions (replication factor 1 unless the broker
    /// says otherwise) if it does not exist yet.
    pub async fn create_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
        let new = NewTopic::new(topic, partitions.max(1), TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = self
            .inner
            .admin
            .create_topics([&new], &opts)
            .await
            .map_err(|e| Error::backend("kafka", "create topic", e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(Error::backend(
                        "kafka",
                        "create topic",
                        format!("{name}: {code}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks the options a subscription depends on.
    fn check_options(&self, options: &SubscribeOptions) -> Result<()> {
        if options.handler_timeout.is_zero() {
            return Err(Error::Config(
                "handler_timeout must be above zero".to_owned(),
            ));
        }
        // A revoke waits up to the handler timeout inside the rebalance; the group's
        // rebalance timeout (`max.poll.interval.ms`) must leave room for it and the commit.
        let rebalance = self
            .inner
            .config
            .group_timeouts
            .max_poll_interval_ms
            .map_or(Duration::from_secs(300), |ms| {
                Duration::from_millis(u64::from(ms))
            });
        if options.handler_timeout >= rebalance {
            return Err(Error::Config(format!(
                "handler_timeout ({:?}) must be below the group's rebalance timeout \
                 (max.poll.interval.ms, {rebalance:?}): a revoke waits up to the handler timeout \
                 for the partition's handlers before it commits and gives the partition up",
                options.handler_timeout
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Subscriber for KafkaBus {
    async fn subscribe(
        &self,
        topic: &Topic,
        group: &Group,
        handler: Arc<dyn Handler>,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        self.check_options(&options)?;
        let config = &self.inner.config;
        let dlq_topic = self.dlq_topic(topic);
        if let Err(e) = self.create_topic(&dlq_topic, config.dlq_partitions).await {
            tracing::warn!(topic = %topic, dlq = %dlq_topic, error = %e, "could not create the DLQ topic; dead-lettering fails until it exists");
        }
        let name = options.consumer.clone().unwrap_or_else(|| {
            format!(
                "{}-{}",
                crate::membership::host_name(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            )
        });
        let (control, events) = partition_control();
        let (core, mut is_assigned) = Core::new(
            topic.as_str(),
            control,
            options.handler_timeout,
            config.max_pending_per_partition,
        );
        let earliest = matches!(options.start_from, StartFrom::Earliest);
        let consumer: BaseConsumer<GroupContext> = config
            .consumer_config(group.as_str(), &name, earliest)
            .create_with_context(GroupContext { core: core.clone() })
            .map_err(|e| config.scrubbed(Error::backend("kafka", "subscribe", e)))?;
        consumer
            .subscribe(&[topic.as_str()])
            .map_err(|e| Error::backend("kafka", "subscribe", e))?;
        let poller = PollThread::start(core.clone(), consumer, config.poll_wait)
            .map_err(|e| Error::backend("kafka", "subscribe", e))?;
        let prefetch = options.prefetch.max(options.concurrency).max(1);
        let (core_for_commits, consumer_for_commits) = (core.clone(), poller.consumer.clone());
        let transport = KafkaTransport {
            bus: self.clone(),
            core,
            poller,
            topic: topic.as_str().to_owned(),
            dlq_topic,
            group: group.as_str().to_owned(),
            name,
            poll_wait: config.poll_wait,
            per_partition: options.concurrency.max(1),
            prefetch,
        };
        let committer = tokio::spawn(committer(core_for_commits, consumer_for_commits));
        let subscription = Runner::new(transport, topic.clone(), group.clone(), handler, options)
            .partitioned(events)
            .abort_with(committer.abort_handle())
            .spawn();
        // Return once the group gave this member its partitions, so what is published next is
        // read (and `StartFrom::Latest` means "after subscribe returned").
        let wait = config.assignment_wait;
        if tokio::time::timeout(wait, is_assigned.wait_for(|a| *a))
            .await
            .is_err()
        {
            tracing::warn!(topic = %topic, group = %group, ?wait, "no partition assignment yet; consuming will start when the group rebalances");
        }
        Ok(subscription)
    }
}

/// Commits what is due whenever acknowledgements moved an offset (coalesced: one commit at a
/// time carries everything due by then, and commits start at most every [`COMMIT_SPACING`]),
/// and retries a failed commit with backoff until it passes: what is due stays due. Ends once
/// the consumer is closed.
async fn committer(core: Arc<Core>, consumer: Weak<BaseConsumer<GroupContext>>) {
    let mut failures = 0u32;
    loop {
        if failures == 0 {
            core.commit_wanted.notified().await;
            // Let acknowledgements gather: one commit round trip per spacing at most, not one
            // per acknowledgement batch (each costs the broker a write).
            tokio::time::sleep(COMMIT_SPACING).await;
        } else {
            let backoff = Duration::from_millis(50 * u64::from(failures.min(20)));
            tokio::time::sleep(backoff).await;
        }
        let Some(c) = consumer.upgrade() else { return };
        let core2 = core.clone();
        let result = tokio::task::spawn_blocking(move || core2.commit_due(&c, None)).await;
        match result {
            Ok(Ok(_)) => failures = 0,
            Ok(Err(e)) => {
                failures = failures.saturating_add(1);
                tracing::warn!(topic = %core.topic, error = %e, attempt = failures, "commit failed; retrying");
            }
            Err(_) => return,
        }
    }
}
