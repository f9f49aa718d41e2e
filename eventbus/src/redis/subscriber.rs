//! Consuming: a member of a consumer group that reads only the partitions it holds a lease
//! for, driven by the shared runner. This module only moves entries (read, claim, acknowledge,
//! dead-letter, hand back), each fenced by the partition's lease; retry, order and concurrency
//! are the runner's, ownership the membership driver's.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use async_trait::async_trait;
use windlass_core::{Group, Topic};

use super::RedisBus;
use super::conn::Conn;
use super::coordinator::RedisCoordinator;
use super::transport::RedisTransport;
use crate::error::Result;
use crate::handler::Handler;
use crate::membership::{self, Driver, Holdings, Timing, sanitize_name};
use crate::runner::{Runner, partition_control};
use crate::subscription::Subscription;
use crate::traits::{SubscribeOptions, Subscriber};

#[async_trait]
impl Subscriber for RedisBus {
    async fn subscribe(
        &self,
        topic: &Topic,
        group: &Group,
        handler: Arc<dyn Handler>,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        let config = &self.inner.config;
        membership::check_options(&options, config.lease_ttl)?;
        let partitions = self.topic_partitions(topic).await?;
        self.ensure_group(topic, group.as_str(), partitions, options.start_from)
            .await?;
        let consumer = options
            .consumer
            .clone()
            .unwrap_or_else(membership::default_consumer);
        let member = sanitize_name(&membership::member_id(&consumer));
        let name =
            |role: &str| sanitize_name(&format!("{}.{role}.{consumer}", self.inner.client_name));
        let blocking = config.block + config.timeout;
        let reader = if self.inner.conn.is_cluster() {
            None
        } else {
            Some(Conn::new(
                &self.inner.target,
                name("read"),
                config.connect_timeout,
                blocking,
            )?)
        };
        let control_conn = Conn::new(
            &self.inner.target,
            name("control"),
            config.connect_timeout,
            blocking,
        )?;
        let (holdings, lost) = Holdings::new();
        let (control, events) = partition_control();
        let coordinator = Arc::new(RedisCoordinator {
            bus: self.clone(),
            control: control_conn,
            keys: self.inner.keys.clone(),
            topic: topic.to_string(),
            group: group.to_string(),
            member: member.clone(),
            consumer: consumer.clone(),
            partitions: partitions.get(),
            ttl: config.lease_ttl,
        });
        let (membership, joined) = Driver::new(
            coordinator.clone(),
            holdings.clone(),
            control,
            member.clone(),
            Timing::new(config.lease_ttl, options.handler_timeout),
            (topic.as_str(), group.as_str()),
        )
        .start(lost);
        let abort = membership.abort_handle();
        let transport = RedisTransport {
            bus: self.clone(),
            reader,
            keys: self.inner.keys.clone(),
            topic: topic.to_string(),
            group: group.to_string(),
            consumer,
            member,
            holdings,
            coordinator,
            block: config.block,
            cluster_poll: config.cluster_poll,
            rotate: AtomicUsize::new(0),
            membership: Some(membership),
        };
        let subscription = Runner::new(transport, topic.clone(), group.clone(), handler, options)
            .partitioned(events)
            .abort_with(abort)
            .spawn();
        let _ = tokio::time::timeout(config.timeout * 2, joined).await;
        Ok(subscription)
    }
}

/// A member's coordinator and transport without a runner or driver, for tests of the fences.
#[cfg(test)]
pub(crate) fn bare_member(
    bus: &RedisBus,
    topic: &Topic,
    group: &str,
    consumer: &str,
) -> (Arc<RedisCoordinator>, RedisTransport) {
    let config = &bus.inner.config;
    let member = membership::member_id(consumer);
    let conn = || {
        Conn::new(
            &bus.inner.target,
            "test".to_owned(),
            config.connect_timeout,
            config.block + config.timeout,
        )
        .expect("a connection")
    };
    let (holdings, _lost) = Holdings::new();
    let coordinator = Arc::new(RedisCoordinator {
        bus: bus.clone(),
        control: conn(),
        keys: bus.inner.keys.clone(),
        topic: topic.to_string(),
        group: group.to_owned(),
        member: member.clone(),
        consumer: consumer.to_owned(),
        partitions: config.partitions_of(topic.as_str()).get(),
        ttl: config.lease_ttl,
    });
    let transport = RedisTransport {
        bus: bus.clone(),
        reader: Some(conn()),
        keys: bus.inner.keys.clone(),
        topic: topic.to_string(),
        group: group.to_owned(),
        consumer: consumer.to_owned(),
        member,
        holdings,
        coordinator: coordinator.clone(),
        block: config.block,
        cluster_poll: config.cluster_poll,
        rotate: AtomicUsize::new(0),
        membership: None,
    };
    (coordinator, transport)
}
