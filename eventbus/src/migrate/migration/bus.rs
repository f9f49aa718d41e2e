//! The migration as a bus: dual publish through [`DualPublisher`], and subscriptions that move
//! between the buses when a switch or a sync changes their route.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use windlass_core::{Group, Topic};

use super::{Cmd, Migration, SubCtl};
use crate::error::Result;
use crate::event::Event;
use crate::handler::Handler;
use crate::migrate::Backend;
use crate::migrate::dual::DualPublisher;
use crate::subscription::Subscription;
use crate::traits::{Publisher, SubscribeOptions, Subscriber};

#[async_trait]
impl<R, K> Publisher for Migration<R, K>
where
    R: Publisher + Subscriber + 'static,
    K: Publisher + Subscriber + 'static,
{
    /// Dual publish, best effort on one bus: the bus `topic`'s consumers read now is the
    /// primary (its result is returned), the other one is best effort (see [`DualPublisher`]).
    /// A Kafka outage therefore never fails the publish of a domain still read on Redis.
    async fn publish(&self, topic: &Topic, event: &Event) -> Result<()> {
        let (redis, kafka) = (&*self.shared.redis, &*self.shared.kafka);
        match self.backend_for(topic) {
            Backend::Redis => DualPublisher::new(redis, kafka).publish(topic, event).await,
            Backend::Kafka => DualPublisher::new(kafka, redis).publish(topic, event).await,
        }
    }

    async fn publish_batch(&self, topic: &Topic, events: &[Event]) -> Result<()> {
        let (redis, kafka) = (&*self.shared.redis, &*self.shared.kafka);
        match self.backend_for(topic) {
            Backend::Redis => {
                DualPublisher::new(redis, kafka)
                    .publish_batch(topic, events)
                    .await
            }
            Backend::Kafka => {
                DualPublisher::new(kafka, redis)
                    .publish_batch(topic, events)
                    .await
            }
        }
    }
}

#[async_trait]
impl<R, K> Subscriber for Migration<R, K>
where
    R: Publisher + Subscriber + 'static,
    K: Publisher + Subscriber + 'static,
{
    /// Subscribes on the bus the routes give for `topic`; the subscription moves when a
    /// switch or a sync changes that bus.
    async fn subscribe(
        &self,
        topic: &Topic,
        group: &Group,
        handler: Arc<dyn Handler>,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        let _guard = self.shared.switching.lock().await;
        let backend = self.backend_for(topic);
        let first = self
            .start(backend, topic, group, &handler, &options)
            .await?;
        let (tx, mut rx) = mpsc::channel::<Cmd>(4);
        let ctl = Arc::new(SubCtl {
            topic: topic.clone(),
            tx,
        });
        self.shared
            .subs
            .lock()
            .expect("subscription registry lock")
            .push(Arc::downgrade(&ctl));
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let this = self.clone();
        let (topic, group) = (topic.clone(), group.clone());
        let task = tokio::spawn(async move {
            let _ctl = ctl; // registered while this task runs
            let mut sub = Some(first);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => {
                        return match sub.take() { Some(s) => s.shutdown().await, None => Ok(()) };
                    }
                    cmd = rx.recv() => match cmd {
                        None => stop.cancelled().await,
                        Some(Cmd::Drain(reply)) => {
                            let r = match sub.take() { Some(s) => s.shutdown().await, None => Ok(()) };
                            let _ = reply.send(r);
                        }
                        Some(Cmd::Start(backend, reply)) => {
                            if let Some(old) = sub.take() {
                                let _ = old.shutdown().await;
                            }
                            let r = match this.start(backend, &topic, &group, &handler, &options).await {
                                Ok(s) => {
                                    tracing::info!(topic = %topic, group = %group, %backend, "subscription started");
                                    sub = Some(s);
                                    Ok(())
                                }
                                Err(e) => Err(e),
                            };
                            let _ = reply.send(r);
                        }
                    }
                }
            }
        });
        Ok(Subscription::new(cancel, task, Vec::new()))
    }
}
