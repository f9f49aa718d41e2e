//! The Kafka backend against a real broker (tansu, started by the testkit harness, or
//! `WINDLASS_KAFKA_BROKERS`). Each test uses its own topic.
#![cfg(feature = "kafka")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Mutex;
use windlass_eventbus::kafka::{
    DLQ_REASON_HEADER, FatalProducerError, GroupTimeouts, KafkaBus, KafkaConfig, WireMode,
};
use windlass_eventbus::{
    DeadLetters, Error, Event, Group, HandlerError, Publisher, RetryPolicy, SubscribeOptions,
    Subscriber, SubscriberExt, Topic, handler_fn,
};
use windlass_testkit::kafka::{TestKafka, fresh_topic, fresh_topic_with};

fn bus(k: &TestKafka) -> KafkaBus {
    KafkaBus::new(KafkaConfig::new(&k.brokers).group_timeouts(GroupTimeouts::tansu()))
        .expect("kafka bus")
}

fn group() -> Group {
    Group::new(format!("g-{}", uuid::Uuid::new_v4().simple())).unwrap()
}

fn event(i: usize) -> Event {
    Event::builder("/test", "thing.happened")
        .subject(format!("k{}", i % 4))
        .org_id("acme")
        .data_json(&serde_json::json!({ "i": i }))
        .build()
        .unwrap()
}

async fn wait_for<F: Fn() -> bool>(what: &str, deadline: Duration, f: F) {
    let end = Instant::now() + deadline;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fast_retry(max: u32) -> RetryPolicy {
    RetryPolicy::default()
        .with_delays(Duration::from_millis(5), Duration::from_millis(20))
        .with_max_attempts(max)
}

/// Reads every record of `topic` with a plain rdkafka consumer (manual assignment).
fn raw_read(brokers: &str, topic: &str, expect: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "raw-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let end = Instant::now() + Duration::from_secs(20);
    let mut last = Instant::now();
    while out.len() < expect && Instant::now() < end {
        if !out.is_empty() && last.elapsed() > Duration::from_secs(1) {
            break;
        }
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            out.push(m.detach());
            last = Instant::now();
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_headers_key_and_value_follow_the_cloudevents_binding() {
    let k = fresh_topic().await;
    let bus = bus(&k);
    let e = Event::builder("/billing", "invoice.paid")
        .subject("inv_42")
        .org_id("acme")
        .correlation_id("corr")
        .causation_id("cause")
        .traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .partition_key("inv_42")
        .extension("region", "eu")
        .data_json(&serde_json::json!({"amount": 100}))
        .build()
        .unwrap();
    bus.publish(&k.topic, &e).await.unwrap();
    let brokers = k.brokers.clone();
    let topic = k.topic.to_string();
    let recs = tokio::task::spawn_blocking(move || raw_read(&brokers, &topic, 1))
        .await
        .unwrap();
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(r.key(), Some(&b"inv_42"[..]));
    assert_eq!(r.payload(), Some(&br#"{"amount":100}"#[..]));
    let h = r.headers().unwrap();
    let get = |n: &str| {
        h.iter()
            .find(|x| x.key == n)
            .and_then(|x| x.value)
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
    };
    assert_eq!(get("ce_specversion").as_deref(), Some("1.0"));
    assert_eq!(get("ce_id").as_deref(), Some(e.id()));
    assert_eq!(get("ce_source").as_deref(), Some("/billing"));
    assert_eq!(get("ce_type").as_deref(), Some("invoice.paid"));
    assert_eq!(get("ce_subject").as_deref(), Some("inv_42"));
    assert_eq!(get("ce_orgid").as_deref(), Some("acme"));
    assert_eq!(get("ce_correlationid").as_deref(), Some("corr"));
    assert_eq!(get("ce_causationid").as_deref(), Some("cause"));
    assert!(get("ce_traceparent").is_some());
    assert!(get("ce_time").is_some());
    assert_eq!(get("ce_region").as_deref(), Some("eu"));
    // The consumer side gives back the same event.
    let got = Arc::new(Mutex::new(Vec::new()));
    let g2 = got.clone();
    let sub = bus
        .subscribe_fn(&k.topic, &group(), move |ev, _| {
            let g = g2.clone();
            async move {
                g.lock().await.push(ev);
                Ok(())
            }
        })
        .await
        .unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    while got.lock().await.is_empty() {
        assert!(Instant::now() < end, "nothing consumed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(got.lock().await[0], e);
    sub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_mode_round_trips_and_binary_consumers_read_it() {
    let k = fresh_topic().await;
    let structured = KafkaBus::new(
        KafkaConfig::new(&k.brokers)
            .wire_mode(WireMode::Structured)
            .group_timeouts(GroupTimeouts::tansu()),
    )
    .unwrap();
    let events: Vec<Event> = (0..5).map(event).collect();
    structured.publish_batch(&k.topic, &events).await.unwrap();
    let brokers = k.brokers.clone();
    let topic = k.topic.to_string();
    let recs = tokio::task::spawn_blocking(move || raw_read(&brokers, &topic, 5))
        .await
        .unwrap();
    let ct = recs[0]
        .headers()
        .unwrap()
        .iter()
        .find(|h| h.key == "content-type")
        .unwrap()
        .value
        .unwrap()
        .to_vec();
    assert_eq!(ct, b"application/cloudevents+json");
    assert_eq!(
        Event::from_json(recs[0].payload().unwrap()).unwrap(),
        events[0]
    );
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let g2 = got.clone();
    let sub = bus(&k)
        .subscribe_fn(&k.topic, &group(), move |ev, _| {
            g2.lock().unwrap().push(ev);
            async { Ok(()) }
        })
        .await
        .unwrap();
    wait_for("5 events", Duration::from_secs(30), || {
        got.lock().unwrap().len() == 5
    })
    .await;
    let mut seen = got.lock().unwrap().clone();
    seen.sort_by(|a, b| a.id().cmp(b.id()));
    assert_eq!(seen, events);
    sub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_is_kept_per_key_and_offsets_are_committed_after_success() {
    let k = fresh_topic_with(3).await;
    let bus = bus(&k);
    let events: Vec<Event> = (0..60).map(event).collect();
    bus.publish_batch(&k.topic, &events).await.unwrap();
    let g = group();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(String, u64)>::new()));
    let s2 = seen.clone();
    let sub = bus
        .subscribe(
            &k.topic,
            &g,
            Arc::new(handler_fn(move |ev, _| {
                let s = s2.clone();
                async move {
                    let i: serde_json::Value = ev.data_as().unwrap().unwrap();
                    // Jitter so keys complete out of order.
                    tokio::time::sleep(Duration::from_millis((i["i"].as_u64().unwrap() * 7) % 5))
                        .await;
                    s.lock()
                        .unwrap()
                        .push((ev.subject().unwrap().to_owned(), i["i"].as_u64().unwrap()));
                    Ok(())
                }
            })),
            SubscribeOptions::default().concurrency(8),
        )
        .await
        .unwrap();
    wait_for("60 events", Duration::from_secs(30), || {
        seen.lock().unwrap().len() >= 60
    })
    .await;
    sub.shutdown().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    for key in ["k0", "k1", "k2", "k3"] {
        let per: Vec<u64> = seen
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, i)| *i)
            .collect();
        let mut sorted = per.clone();
        sorted.sort();
        assert_eq!(per, sorted, "order of key {key}");
        assert_eq!(per.len(), 15);
    }
    // Everything was committed: the same group, restarted, gets nothing old.
    let again = Arc::new(AtomicU32::new(0));
    let a2 = again.clone();
    let sub = bus
        .subscribe_fn(&k.topic, &g, move |_, _| {
            a2.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        })
        .await
        .unwrap();
    bus.publish(&k.topic, &event(1000)).await.unwrap();
    wait_for("the new event", Duration::from_secs(30), || {
        again.load(Ordering::SeqCst) >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        again.load(Ordering::SeqCst),
        1,
        "committed events were delivered again"
    );
    sub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_handler_succeeded_redelivers() {
    let k = fresh_topic().await;
    let bus = bus(&k);
    let g = group();
    let started = Arc::new(AtomicU32::new(0));
    let s2 = started.clone();
    // First consumer: never finishes its handler, then "crashes".
    let sub = bus
        .subscribe_fn(&k.topic, &g, move |_, _| {
            s2.fetch_add(1, Ordering::SeqCst);
            async {
                std::future::pending::<()>().await;
                Ok(())
            }
        })
        .await
        .unwrap();
    let e = event(1);
    bus.publish(&k.topic, &e).await.unwrap();
    wait_for("the first delivery", Duration::from_secs(30), || {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    sub.abort();
    // The aborted member leaves the group at once (closing the client sends LeaveGroup).
    // tansu 0.6 wedges a group when a member joins within moments of another one leaving
    // (the joiner is never assigned, 3 runs of 3 here; docs/kafka.md), and its DescribeGroups
    // lists nothing to wait on: let the leave settle. A crash without a leave (kill -9) is
    // expelled after the session timeout instead, which tansu handles.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let g2 = got.clone();
    let sub = bus
        .subscribe_fn(&k.topic, &g, move |ev, _| {
            g2.lock().unwrap().push(ev.id().to_owned());
            async { Ok(()) }
        })
        .await
        .unwrap();
    wait_for("the redelivery", Duration::from_secs(40), || {
        !got.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(got.lock().unwrap()[0], e.id());
    sub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_then_dead_letters_with_the_reason() {
    let k = fresh_topic().await;
    let bus = bus(&k);
    let attempts = Arc::new(AtomicU32::new(0));
    let a2 = attempts.clone();
    let sub = bus
        .subscribe(
            &k.topic,
            &group(),
            Arc::new(handler_fn(move |ev, _| {
                let a = a2.clone();
                async move {
                    if ev.ty() == "poison" {
                        a.fetch_add(1, Ordering::SeqCst);
                        return Err(HandlerError::retry("boom"));
                    }
                    if ev.ty() == "bad" {
                        return Err(HandlerError::reject("not for us"));
                    }
                    Ok(())
                }
            })),
            SubscribeOptions::default().retry(fast_retry(3)),
        )
        .await
        .unwrap();
    let poison = Event::builder("/t", "poison").build().unwrap();
    let bad = Event::builder("/t", "bad").build().unwrap();
    bus.publish(&k.topic, &poison).await.unwrap();
    bus.publish(&k.topic, &bad).await.unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    let letters = loop {
        let l = bus.dead_letters(&k.topic, 10).await.unwrap();
        if l.len() >= 2 {
            break l;
        }
        assert!(Instant::now() < end, "dead letters did not arrive: {l:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    let p = letters
        .iter()
        .find(|l| l.event.as_ref().is_some_and(|e| e.id() == poison.id()))
        .expect("poison in DLQ");
    assert!(
        p.error.contains("failed 3 attempts") && p.error.contains("boom"),
        "{}",
        p.error
    );
    let b = letters
        .iter()
        .find(|l| l.event.as_ref().is_some_and(|e| e.id() == bad.id()))
        .expect("bad in DLQ");
    assert!(b.error.contains("not for us"), "{}", b.error);
    assert!(!b.group.is_empty());
    sub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_without_cloudevents_headers_or_with_garbage_go_to_the_dlq() {
    let k = fresh_topic().await;
    let bus = bus(&k);
    let ok = Arc::new(AtomicU32::new(0));
    let o2 = ok.clone();
    let sub = bus
        .subscribe_fn(&k.topic, &group(), move |_, _| {
            o2.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        })
        .await
        .unwrap();
    // Garbage written with a raw producer.
    let raw: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &k.brokers)
        .create()
        .unwrap();
    let t = k.topic.as_str();
    raw.send(
        FutureRecord::<str, [u8]>::to(t).payload(b"plain bytes, no headers"),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let h = OwnedHeaders::new()
        .insert(Header {
            key: "ce_specversion",
            value: Some("1.0"),
        })
        .insert(Header {
            key: "ce_id",
            value: Some("x1"),
        })
        .insert(Header {
            key: "ce_source",
            value: Some("/x"),
        })
        .insert(Header {
            key: "ce_type",
            value: Some("x"),
        })
        .insert(Header {
            key: "ce_time",
            value: Some("not a time"),
        });
    raw.send(
        FutureRecord::<str, [u8]>::to(t).payload(b"{}").headers(h),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let h = OwnedHeaders::new().insert(Header {
        key: "ce_specversion",
        value: Some(&[0xff, 0xfe][..]),
    });
    raw.send(
        FutureRecord::<str, [u8]>::to(t).payload(b"{}").headers(h),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    bus.publish(&k.topic, &event(1)).await.unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    let letters = loop {
        let l = bus.dead_letters(&k.topic, 10).await.unwrap();
        if l.len() >= 3 {
            break l;
        }
        assert!(Instant::now() < end, "dead letters did not arrive: {l:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    wait_for("the good event", Duration::from_secs(10), || {
        ok.load(Ordering::SeqCst) == 1
    })
    .await;
    let reasons: Vec<&str> = letters.iter().map(|l| l.error.as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("no CloudEvents headers")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("ce_time")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("UTF-8")), "{reasons:?}");
    assert!(
        letters
            .iter()
            .any(|l| l.payload == b"plain bytes, no headers")
    );
    // The reason is a header of the DLQ record.
    let brokers = k.brokers.clone();
    let dlq = bus.dlq_topic(&k.topic);
    let recs = tokio::task::spawn_blocking(move || raw_read(&brokers, &dlq, 3))
        .await
        .unwrap();
    assert!(recs.iter().all(|r| {
        r.headers()
            .unwrap()
            .iter()
            .any(|h| h.key == DLQ_REASON_HEADER)
    }));
    sub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_of_a_group_split_the_partitions() {
    let k = fresh_topic_with(3).await;
    let bus = bus(&k);
    let g = group();
    let counts: Arc<[AtomicU32; 2]> = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
    let mut subs = Vec::new();
    for i in 0..2 {
        let c = counts.clone();
        subs.push(
            bus.subscribe(
                &k.topic,
                &g,
                Arc::new(handler_fn(move |_, _| {
                    c[i].fetch_add(1, Ordering::SeqCst);
                    async { Ok(()) }
                })),
                SubscribeOptions::default().consumer(format!("member-{i}")),
            )
            .await
            .unwrap(),
        );
    }
    // Let both join before publishing, so the split is visible.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events: Vec<Event> = (0..200)
        .map(|i| {
            Event::builder("/t", "x")
                .partition_key(format!("key-{i}"))
                .build()
                .unwrap()
        })
        .collect();
    let total = || counts[0].load(Ordering::SeqCst) + counts[1].load(Ordering::SeqCst);
    bus.publish_batch(&k.topic, &events).await.unwrap();
    wait_for("200 events", Duration::from_secs(40), || total() >= 200).await;
    for s in subs {
        s.shutdown().await.unwrap();
    }
    assert_eq!(total(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_events_fail_with_too_large_before_sending() {
    let k = fresh_topic().await;
    let bus = KafkaBus::new(KafkaConfig::new(&k.brokers).max_message_bytes(10_000)).unwrap();
    let big = Event::builder("/t", "big")
        .data_json(&"x".repeat(20_000))
        .build()
        .unwrap();
    match bus.publish(&k.topic, &big).await {
        Err(Error::TooLarge { size, limit, .. }) => {
            assert!(size > 20_000);
            assert_eq!(limit, 10_000);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // A batch with one oversized event sends nothing.
    let r = bus.publish_batch(&k.topic, &[event(1), big]).await;
    assert!(matches!(r, Err(Error::TooLarge { .. })));
    // Nothing of the batch reached the topic: a fresh group sees only what follows.
    bus.publish(&k.topic, &event(2)).await.unwrap();
    let brokers = k.brokers.clone();
    let topic = k.topic.to_string();
    let recs = tokio::task::spawn_blocking(move || raw_read(&brokers, &topic, 2))
        .await
        .unwrap();
    assert_eq!(
        recs.len(),
        1,
        "the batch with an oversized event must send nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_gives_a_timeout_after_bounded_retries() {
    // Nothing listens on this port: every connection attempt fails, librdkafka retries until
    // publish_timeout, then the publish fails with a typed error.
    let bus =
        KafkaBus::new(KafkaConfig::new("127.0.0.1:1").publish_timeout(Duration::from_secs(2)))
            .unwrap();
    let started = Instant::now();
    let r = bus
        .publish(&Topic::new("nowhere").unwrap(), &event(1))
        .await;
    assert!(
        matches!(r, Err(Error::Timeout(_))),
        "expected Timeout, got {r:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// Reaches the [`FatalProducerError`] behind a publish error, if there is one.
fn fatal_of(e: &Error) -> Option<&FatalProducerError> {
    std::error::Error::source(e)?.downcast_ref::<FatalProducerError>()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_idempotent_producer_error_is_surfaced_and_the_producer_replaced() {
    // tansu cannot inject broker errors, so this runs on librdkafka's own mock cluster: with
    // `enable.gapless.guarantee`, a batch the broker refuses for good is a fatal error of the
    // idempotent producer, after which librdkafka refuses every later send.
    let mock = MockCluster::new(1).expect("librdkafka mock cluster");
    mock.create_topic("fatal", 1, 1).unwrap();
    let topic = Topic::new("fatal").unwrap();
    let bus = KafkaBus::new(
        KafkaConfig::new(mock.bootstrap_servers())
            .publish_timeout(Duration::from_secs(10))
            .producer_property("enable.gapless.guarantee", "true"),
    )
    .unwrap();
    bus.publish(&topic, &event(0)).await.unwrap();
    assert_eq!(bus.producers_replaced(), 0);

    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    let err = bus.publish(&topic, &event(1)).await.unwrap_err();
    let fatal = fatal_of(&err).unwrap_or_else(|| panic!("not a fatal producer error: {err:?}"));
    assert!(!fatal.reason.is_empty(), "{fatal:?}");
    assert!(
        err.to_string().contains("replaced by a new producer"),
        "{err}"
    );
    assert_eq!(bus.producers_replaced(), 1);

    // The new producer sends; every record that succeeded is on the topic once.
    bus.publish(&topic, &event(2)).await.unwrap();
    bus.publish_batch(&topic, &[event(3), event(4)])
        .await
        .unwrap();
    assert_eq!(
        bus.producers_replaced(),
        1,
        "replaced once, not per failed send"
    );
    let brokers = mock.bootstrap_servers();
    let recs = tokio::task::spawn_blocking(move || raw_read(&brokers, "fatal", 4))
        .await
        .unwrap();
    let ids: Vec<String> = recs
        .iter()
        .filter_map(|r| {
            r.headers()?
                .iter()
                .find(|h| h.key == "ce_id")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
        .collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_debug_output_or_errors() {
    const SECRET: &str = "s3cr3t-Pa55word-value";
    let leaks = |what: &str, text: &str| {
        assert!(!text.contains(SECRET), "{what} leaks the secret: {text}");
    };
    let config = KafkaConfig::new(format!("sasl_ssl://user:{SECRET}@127.0.0.1:1"))
        .client_property("sasl.mechanism", "PLAIN")
        .client_property("sasl.username", "user")
        .client_property("sasl.password", SECRET)
        .client_property("ssl.key.password", SECRET)
        .client_property("sasl.oauthbearer.config", format!("secret={SECRET}"));
    let debug = format!("{config:?}");
    leaks("KafkaConfig Debug", &debug);
    assert!(
        debug.contains("sasl.username") && debug.contains("***"),
        "{debug}"
    );
    // librdkafka here is built without SSL/SASL: creating the clients fails, and the error
    // must not quote the configuration.
    let refused = KafkaBus::new(
        config
            .clone()
            .client_property("security.protocol", "sasl_ssl"),
    );
    match refused {
        Err(e) => {
            leaks("KafkaBus::new error", &format!("{e} {e:?}"));
        }
        Ok(bus) => leaks("KafkaBus Debug", &format!("{bus:?}")),
    }
    // A property librdkafka refuses, carrying the secret as its value.
    let bad =
        KafkaBus::new(KafkaConfig::new("127.0.0.1:1").client_property("sasl.mechanism", SECRET));
    if let Err(e) = bad {
        let text = format!("{e} {e:?}");
        assert!(text.contains("sasl.mechanism"), "{text}");
    }
    let bus =
        KafkaBus::new(KafkaConfig::new("127.0.0.1:1").client_property("sasl.password", SECRET))
            .unwrap();
    leaks("KafkaBus Debug", &format!("{bus:?}"));

    #[cfg(feature = "redis")]
    {
        use windlass_eventbus::redis::{RedisBus, RedisConfig};
        let url = format!("redis://user:{SECRET}@127.0.0.1:1/0");
        let config = RedisConfig::new(&url).connect_timeout(Duration::from_millis(500));
        leaks("RedisConfig Debug", &format!("{config:?}"));
        match RedisBus::connect(config).await {
            Ok(bus) => leaks("RedisBus Debug", &format!("{bus:?}")),
            Err(e) => leaks("RedisBus::connect error", &format!("{e} {e:?}")),
        }
    }
    #[cfg(feature = "outbox-replay")]
    {
        let pool = sqlx::PgPool::connect_lazy(&format!("postgres://app:{SECRET}@127.0.0.1:1/app"))
            .unwrap();
        let history = windlass_eventbus::replay::OutboxHistory::new(pool);
        leaks("OutboxHistory Debug", &format!("{history:?}"));
    }
}
