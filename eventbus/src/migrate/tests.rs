//! The switch's contract on memory buses: typed errors leave the state unchanged, a failed
//! switch restores the old subscription, drain happens before start, dual publish is best
//! effort on the secondary bus.
#![cfg(feature = "memory")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use windlass_core::{Group, Topic};

use super::*;
use crate::handler::Handler;
use crate::subscription::Subscription;
use crate::traits::{SubscribeOptions, Subscriber, SubscriberExt};
use crate::{Event, MemoryBus};

/// A memory bus whose `subscribe` and `publish` can be made to fail.
#[derive(Clone, Default)]
struct Flaky {
    bus: MemoryBus,
    refuse_subscribe: Arc<AtomicBool>,
    refuse_publish: Arc<AtomicBool>,
    subscribes: Arc<AtomicU32>,
}

#[async_trait]
impl Publisher for Flaky {
    async fn publish(&self, topic: &Topic, event: &Event) -> Result<()> {
        if self.refuse_publish.load(Ordering::SeqCst) {
            return Err(Error::backend("flaky", "publish", "down"));
        }
        self.bus.publish(topic, event).await
    }
}

#[async_trait]
impl Subscriber for Flaky {
    async fn subscribe(
        &self,
        topic: &Topic,
        group: &Group,
        handler: Arc<dyn Handler>,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        if self.refuse_subscribe.load(Ordering::SeqCst) {
            return Err(Error::backend("flaky", "subscribe", "down"));
        }
        self.subscribes.fetch_add(1, Ordering::SeqCst);
        self.bus.subscribe(topic, group, handler, options).await
    }
}

fn event(i: u32) -> Event {
    Event::builder("/t", "thing")
        .subject("k")
        .data_json(&i)
        .build()
        .unwrap()
}

#[tokio::test]
async fn bad_input_gets_typed_errors_and_changes_nothing() {
    let routes = Routes::new(Backend::Redis).route("billing", Backend::Redis);
    let m = Migration::new(Flaky::default(), Flaky::default(), routes.clone());
    let err = m.switch("shipping", Backend::Kafka).await.unwrap_err();
    assert!(
        matches!(err, Error::UnknownDomain(ref d) if d == "shipping"),
        "{err}"
    );
    assert!(
        matches!("rabbitmq".parse::<Backend>(), Err(Error::UnknownBackend(ref b)) if b == "rabbitmq")
    );
    assert_eq!("kafka".parse::<Backend>().unwrap(), Backend::Kafka);
    // A switch claimed elsewhere (another process sharing the store) refuses a second one.
    let store = Arc::new(MemoryRouteStore::new());
    let m2 = Migration::with_store(
        Flaky::default(),
        Flaky::default(),
        routes.clone(),
        store.clone(),
    )
    .await
    .unwrap();
    let ticket = store
        .begin_switch("billing", Backend::Kafka, Duration::from_secs(60))
        .await
        .unwrap();
    let err = m2.switch("billing", Backend::Kafka).await.unwrap_err();
    assert!(matches!(err, Error::SwitchInProgress { .. }), "{err}");
    assert_eq!(m2.routes(), routes);
    assert_eq!(m2.state().await.unwrap().switching.len(), 1);
    store.abort_switch(&ticket).await.unwrap();
    assert!(m2.state().await.unwrap().switching.is_empty());
    assert_eq!(
        m2.state().await.unwrap().routes,
        routes,
        "the aborted claim changed nothing"
    );
    assert_eq!(m.routes(), routes);
    // Invalid domain names are refused by the store.
    let bad = Routes::new(Backend::Redis).route("no spaces", Backend::Redis);
    assert!(
        Migration::with_store(Flaky::default(), Flaky::default(), bad, store)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_switch_whose_new_bus_refuses_leaves_the_route_and_the_old_subscription() {
    let (redis, kafka) = (Flaky::default(), Flaky::default());
    let m = Migration::new(
        redis.clone(),
        kafka.clone(),
        Routes::new(Backend::Redis).route("billing", Backend::Redis),
    );
    let topic = Topic::new("billing.invoices").unwrap();
    let got = Arc::new(AtomicU32::new(0));
    let g = got.clone();
    let sub = m
        .subscribe_fn(&topic, &Group::new("ledger").unwrap(), move |_e, _c| {
            let g = g.clone();
            async move {
                g.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .await
        .unwrap();
    kafka.refuse_subscribe.store(true, Ordering::SeqCst);
    let err = m.switch("billing", Backend::Kafka).await.unwrap_err();
    match &err {
        Error::SwitchFailed {
            domain,
            from,
            stage,
            ..
        } => assert_eq!(
            (domain.as_str(), from.as_str(), *stage),
            ("billing", "redis", "starting")
        ),
        other => panic!("{other}"),
    }
    assert_eq!(m.backend_for(&topic), Backend::Redis);
    assert!(
        m.state().await.unwrap().switching.is_empty(),
        "claim released"
    );
    assert_eq!(
        redis.subscribes.load(Ordering::SeqCst),
        2,
        "restarted on Redis"
    );
    // The subscription works on Redis again.
    m.publish(&topic, &event(1)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while got.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the restored subscription handles events");
    // Once Kafka accepts, the switch goes through; and back.
    kafka.refuse_subscribe.store(false, Ordering::SeqCst);
    let r = m.switch("billing", Backend::Kafka).await.unwrap();
    assert_eq!((r.subscriptions, r.unchanged), (1, false));
    assert_eq!(m.backend_for(&topic), Backend::Kafka);
    assert!(m.switch("billing", Backend::Kafka).await.unwrap().unchanged);
    m.switch("billing", Backend::Redis).await.unwrap();
    assert_eq!(m.backend_for(&topic), Backend::Redis);
    sub.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_old_subscription_is_drained_before_the_new_one_starts() {
    let (redis, kafka) = (Flaky::default(), Flaky::default());
    let m = Migration::new(
        redis.clone(),
        kafka.clone(),
        Routes::new(Backend::Redis).route("billing", Backend::Redis),
    );
    let topic = Topic::new("billing").unwrap();
    // A slow handler on the old bus: the new bus must not start before it finished.
    let running = Arc::new(AtomicU32::new(0));
    let overlap = Arc::new(AtomicBool::new(false));
    let (r, o) = (running.clone(), overlap.clone());
    let sub = m
        .subscribe_fn(&topic, &Group::new("g").unwrap(), move |_e, _c| {
            let (r, o) = (r.clone(), o.clone());
            async move {
                if r.fetch_add(1, Ordering::SeqCst) > 0 {
                    o.store(true, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                r.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .await
        .unwrap();
    for i in 0..3 {
        m.publish(&topic, &event(i)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await; // the first handler runs
    let phases = m.phase();
    let report = m.switch("billing", Backend::Kafka).await.unwrap();
    assert!(phases.has_changed().unwrap(), "the switch was observable");
    assert!(
        report.drained_in >= Duration::from_millis(200),
        "drain waited for the in-flight handler: {report:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !overlap.load(Ordering::SeqCst),
        "a handler ran on the new bus while the old one was still handling"
    );
    sub.shutdown().await.unwrap();
}

#[tokio::test]
async fn dual_publish_is_best_effort_on_the_secondary_bus() {
    let (redis, kafka) = (Flaky::default(), Flaky::default());
    let m = Migration::new(
        redis.clone(),
        kafka.clone(),
        Routes::new(Backend::Redis).route("billing", Backend::Redis),
    );
    let topic = Topic::new("billing").unwrap();
    kafka.refuse_publish.store(true, Ordering::SeqCst);
    // Kafka down: the domain read on Redis still publishes (Kafka misses the event).
    m.publish(&topic, &event(1)).await.unwrap();
    assert_eq!((redis.bus.len(&topic), kafka.bus.len(&topic)), (1, 0));
    // A domain read on Kafka fails when Kafka does not take it (Redis got it, best effort).
    m.switch("billing", Backend::Kafka).await.unwrap();
    assert!(m.publish(&topic, &event(2)).await.is_err());
    assert_eq!(redis.bus.len(&topic), 2);
    kafka.refuse_publish.store(false, Ordering::SeqCst);
    redis.refuse_publish.store(true, Ordering::SeqCst);
    m.publish(&topic, &event(3)).await.unwrap();
    assert_eq!((redis.bus.len(&topic), kafka.bus.len(&topic)), (2, 1));
}

#[tokio::test]
async fn a_switch_waits_for_the_other_processes_to_drain_and_they_follow() {
    let (redis, kafka) = (Flaky::default(), Flaky::default());
    let store: Arc<dyn RouteStore> = Arc::new(MemoryRouteStore::new());
    let routes = Routes::new(Backend::Redis).route("billing", Backend::Redis);
    let one = Migration::with_store(redis.clone(), kafka.clone(), routes.clone(), store.clone())
        .await
        .unwrap();
    let two = Migration::with_store(redis.clone(), kafka.clone(), routes.clone(), store.clone())
        .await
        .unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let follower = two.follow(Duration::from_millis(20), cancel.clone());
    let topic = Topic::new("billing.x").unwrap();
    // Process two handles slowly; process one must not handle anything on the new bus while
    // process two still runs a handler on the old one.
    let old_running = Arc::new(AtomicU32::new(0));
    let overlap = Arc::new(AtomicBool::new(false));
    let on_new = Arc::new(AtomicU32::new(0));
    let r = old_running.clone();
    let sub_two = two
        .subscribe_fn(&topic, &Group::new("b").unwrap(), move |_e, ctx| {
            let r = r.clone();
            async move {
                let _ = ctx;
                r.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(400)).await;
                r.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .await
        .unwrap();
    let (r, o, n) = (old_running.clone(), overlap.clone(), on_new.clone());
    let kafka_subs = kafka.subscribes.clone();
    let sub_one = one
        .subscribe_fn(&topic, &Group::new("a").unwrap(), move |_e, _c| {
            let (r, o, n, k) = (r.clone(), o.clone(), n.clone(), kafka_subs.clone());
            async move {
                if k.load(Ordering::SeqCst) > 0 {
                    n.fetch_add(1, Ordering::SeqCst);
                    if r.load(Ordering::SeqCst) > 0 {
                        o.store(true, Ordering::SeqCst);
                    }
                }
                Ok(())
            }
        })
        .await
        .unwrap();
    for i in 0..2 {
        one.publish(&topic, &event(i)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await; // two's first handler runs
    assert!(old_running.load(Ordering::SeqCst) > 0);
    let report = one.switch("billing", Backend::Kafka).await.unwrap();
    assert!(
        report.drained_in >= Duration::from_millis(200),
        "the switch waited for process two's in-flight handler: {report:?}"
    );
    tokio::time::timeout(Duration::from_secs(5), async {
        while kafka.subscribes.load(Ordering::SeqCst) < 2
            || on_new.load(Ordering::SeqCst) == 0
            || two.backend_for(&topic) != Backend::Kafka
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("both processes run on the new bus");
    assert!(
        !overlap.load(Ordering::SeqCst),
        "a handler ran on the new bus while process two still handled on the old one"
    );

    // A registered process that never drains (a ghost): the switch back fails, nothing moves.
    store
        .heartbeat("ghost", Duration::from_secs(60), None)
        .await
        .unwrap();
    one.set_drain_timeout(Duration::from_millis(300));
    let redis_before = redis.subscribes.load(Ordering::SeqCst);
    let err = one.switch("billing", Backend::Redis).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::SwitchFailed {
                stage: "draining",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("ghost"), "{err}");
    assert_eq!(one.backend_for(&topic), Backend::Kafka);
    assert_eq!(
        store
            .load(Backend::Redis)
            .await
            .unwrap()
            .routes
            .domain("billing"),
        Some(Backend::Kafka)
    );
    // Process two, which drained for the failed switch, runs on Kafka again.
    tokio::time::timeout(Duration::from_secs(5), async {
        while kafka.subscribes.load(Ordering::SeqCst) < 4 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("both processes restarted on Kafka after the failed switch");
    assert_eq!(
        redis.subscribes.load(Ordering::SeqCst),
        redis_before,
        "nothing started on Redis"
    );
    cancel.cancel();
    follower.await.unwrap();
    sub_one.shutdown().await.unwrap();
    sub_two.shutdown().await.unwrap();
}
