//! Redis-specific behaviour of `RedisBus`: the wire format and key layout other programs depend
//! on, the partitioner, the DLQ stream's fields, trimming, size limits, where new groups start,
//! bad input refused at construction, and the partition count of a topic.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use windlass_eventbus::partition::{PartitionCount, partition_for_event, partition_for_key};
use windlass_eventbus::redis::{RedisBus, RedisConfig, Trim};
use windlass_eventbus::{
    BusAdmin, Error, Event, Group, HandlerError, Publisher, StartFrom, SubscribeOptions,
    Subscriber, TenantScope, Topic, handler_fn,
};
use windlass_testkit::conformance::bus::{keyed, numbered, wait_dead_letters, wait_until};
use windlass_testkit::redis::{TestRedis, fresh_prefix};

fn count(n: u32) -> PartitionCount {
    PartitionCount::new(n).unwrap()
}

fn config(redis: &TestRedis) -> RedisConfig {
    RedisConfig::new(redis.url.clone())
        .prefix(redis.prefix.clone())
        .block(Duration::from_millis(200))
        .partitions(count(4))
}

async fn xrange(redis: &TestRedis, key: &str) -> Vec<(String, Vec<(String, Vec<u8>)>)> {
    let mut conn = redis.conn.clone();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    reply
        .ids
        .into_iter()
        .map(|entry| {
            let fields = entry
                .map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<Vec<u8>>(v).unwrap()))
                .collect();
            (entry.id, fields)
        })
        .collect()
}

async fn xlen(redis: &TestRedis, key: &str) -> usize {
    let mut conn = redis.conn.clone();
    redis::cmd("XLEN")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_hold_one_event_field_of_structured_cloudevents_json() {
    let redis = fresh_prefix().await;
    let bus = RedisBus::connect(config(&redis)).await.unwrap();
    let topic = Topic::new("billing.invoices").unwrap();
    let event = Event::builder("/billing", "invoice.paid")
        .subject("inv_42")
        .org_id("acme")
        .partition_key("inv_42")
        .data_json(&serde_json::json!({"amount": 100}))
        .build()
        .unwrap();
    bus.publish(&topic, &event).await.unwrap();
    let p = partition_for_key(b"inv_42", count(4));
    assert_eq!(
        bus.stream_key(&topic, p),
        format!("{}:{{billing.invoices:{p}}}", redis.prefix)
    );
    let entries = xrange(&redis, &bus.stream_key(&topic, p)).await;
    assert_eq!(entries.len(), 1);
    let fields = &entries[0].1;
    assert_eq!(fields.len(), 1, "one field per entry: {fields:?}");
    assert_eq!(fields[0].0, "event");
    assert_eq!(fields[0].1, event.to_json_vec());
    // Any CloudEvents SDK reads it: the official Rust one here.
    let sdk: cloudevents::Event =
        serde_json::from_slice(&fields[0].1).expect("cloudevents-sdk reads the entry");
    use cloudevents::AttributesReader;
    assert_eq!(sdk.id(), event.id());
    assert_eq!(sdk.ty(), "invoice.paid");
    assert_eq!(sdk.subject(), Some("inv_42"));
    assert_eq!(bus.topic_len(&topic).await.unwrap(), 1);
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_land_on_kafkas_partition_for_their_key() {
    let redis = fresh_prefix().await;
    let bus = RedisBus::connect(config(&redis).partitions(count(12)))
        .await
        .unwrap();
    let topic = Topic::new("kafka.compatible").unwrap();
    // murmur2("foobar") is -790332482 in the Java client: & 0x7fffffff = 1357151166, % 12 = 6.
    bus.publish(
        &topic,
        &Event::builder("/t", "t")
            .partition_key("foobar")
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(1357151166 % 12, 6);
    assert_eq!(xlen(&redis, &bus.stream_key(&topic, 6)).await, 1);
    assert_eq!(bus.topic_len(&topic).await.unwrap(), 1);
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_keeps_its_order_within_each_partition() {
    let redis = fresh_prefix().await;
    let bus = RedisBus::connect(config(&redis)).await.unwrap();
    let topic = Topic::new("orders").unwrap();
    let events: Vec<Event> = (0..250)
        .map(|n| keyed(&format!("k{}", n % 17), n))
        .collect();
    bus.publish_batch(&topic, &events).await.unwrap();
    let mut total = 0;
    for p in 0..4 {
        let stored: Vec<String> = xrange(&redis, &bus.stream_key(&topic, p))
            .await
            .into_iter()
            .map(|(_, f)| Event::from_json(&f[0].1).unwrap().id().to_owned())
            .collect();
        let expected: Vec<String> = events
            .iter()
            .filter(|e| partition_for_event(e, count(4)) == p)
            .map(|e| e.id().to_owned())
            .collect();
        assert_eq!(stored, expected, "partition {p}");
        total += stored.len();
    }
    assert_eq!(total, 250);
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_entries_carry_error_failed_at_group_consumer_and_entry() {
    let redis = fresh_prefix().await;
    let bus = RedisBus::connect(config(&redis)).await.unwrap();
    let topic = Topic::new("payments").unwrap();
    let group = Group::new("ledger").unwrap();
    let handler = handler_fn(|_event, _ctx| async { Err(HandlerError::reject("negative amount")) });
    let sub = bus
        .subscribe(
            &topic,
            &group,
            Arc::new(handler),
            SubscribeOptions::default().consumer("worker-1"),
        )
        .await
        .unwrap();
    let event = keyed("acct-7", 1);
    let p = partition_for_event(&event, count(4));
    bus.publish(&topic, &event).await.unwrap();
    let dlq = wait_dead_letters(&bus, &topic, 1).await;
    sub.shutdown().await.unwrap();
    assert_eq!(
        bus.dlq_key(&topic, p),
        format!("{}:{{payments:{p}}}:dlq", redis.prefix)
    );
    let original = xrange(&redis, &bus.stream_key(&topic, p)).await[0]
        .0
        .clone();
    let raw = xrange(&redis, &bus.dlq_key(&topic, p)).await;
    assert_eq!(raw.len(), 1);
    let field = |name: &str| {
        raw[0]
            .1
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(field("event"), Some(event.to_json_vec()));
    let error = String::from_utf8(field("error").unwrap()).unwrap();
    assert!(error.contains("negative amount"), "{error}");
    let failed_at = String::from_utf8(field("failed_at").unwrap()).unwrap();
    chrono::DateTime::parse_from_rfc3339(&failed_at).expect("failed_at is RFC 3339");
    assert_eq!(field("group"), Some(b"ledger".to_vec()));
    assert_eq!(field("consumer"), Some(b"worker-1".to_vec()));
    assert_eq!(field("entry"), Some(original.clone().into_bytes()));
    let letter = &dlq[0];
    assert_eq!(letter.error, error);
    assert_eq!(letter.partition, Some(p));
    assert_eq!(letter.entry_id.as_deref(), Some(original.as_str()));
    assert_eq!(letter.consumer, "worker-1");
    assert_eq!(letter.id, format!("{p}/{}", raw[0].0));
    // Dead-lettering acknowledged the entry.
    let mut conn = redis.conn.clone();
    let pending: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
        .arg(bus.stream_key(&topic, p))
        .arg("ledger")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending.count(), 0);
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_goes_to_the_dlq_without_blocking_its_partition() {
    let redis = fresh_prefix().await;
    let bus = RedisBus::connect(config(&redis)).await.unwrap();
    let topic = Topic::new("foreign").unwrap();
    let key = "the-key";
    let p = partition_for_key(key.as_bytes(), count(4));
    // Garbage first in the partition, then a foreign entry without an `event` field, then
    // events of that partition.
    let mut conn = redis.conn.clone();
    for (field, value) in [("event", "{not json"), ("payload", "hello")] {
        let _: String = redis::cmd("XADD")
            .arg(bus.stream_key(&topic, p))
            .arg("*")
            .arg(field)
            .arg(value)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let events: Vec<Event> = (0..5).map(|n| keyed(key, n)).collect();
    bus.publish_batch(&topic, &events).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let seen = seen.clone();
        handler_fn(move |e: Event, _c| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(e.data_as::<usize>()?.unwrap());
                Ok(())
            }
        })
    };
    let sub = bus
        .subscribe(
            &topic,
            &Group::new("g").unwrap(),
            Arc::new(handler),
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    let dlq = wait_dead_letters(&bus, &topic, 2).await;
    wait_until("the events behind the garbage are handled", || {
        seen.lock().unwrap().len() == 5
    })
    .await;
    sub.shutdown().await.unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    let reasons: Vec<&str> = dlq.iter().map(|d| d.error.as_str()).collect();
    assert!(reasons[0].contains("undecodable"), "{reasons:?}");
    assert!(reasons[1].contains("no `event` field"), "{reasons:?}");
    assert_eq!(dlq[0].payload, b"{not json");
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maxlen_trimming_bounds_each_partition() {
    let redis = fresh_prefix().await;
    let bus = RedisBus::connect(
        config(&redis)
            .partitions(PartitionCount::ONE)
            .trim(Trim::MaxLen(100)),
    )
    .await
    .unwrap();
    let topic = Topic::new("metrics").unwrap();
    for chunk in (0..2000).collect::<Vec<_>>().chunks(100) {
        let events: Vec<Event> = chunk.iter().map(|n| numbered(*n)).collect();
        bus.publish_batch(&topic, &events).await.unwrap();
    }
    let len = xlen(&redis, &bus.stream_key(&topic, 0)).await;
    // `~` trims whole macro nodes: about 100, never everything, never unbounded.
    assert!((100..1000).contains(&len), "XLEN {len}");
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_trimming_drops_old_entries() {
    let redis = fresh_prefix().await;
    let topic = Topic::new("metrics").unwrap();
    let one = config(&redis).partitions(PartitionCount::ONE);
    let old = RedisBus::connect(one.clone()).await.unwrap();
    let mut conn = redis.conn.clone();
    // 300 entries from 1970 (explicit ids), then a publish with MINID trimming.
    let mut pipe = redis::pipe();
    for n in 1..=300 {
        pipe.cmd("XADD")
            .arg(old.stream_key(&topic, 0))
            .arg(format!("1-{n}"))
            .arg("event")
            .arg(numbered(0).to_json_vec())
            .ignore();
    }
    let () = pipe.query_async(&mut conn).await.unwrap();
    let bus = RedisBus::connect(one.trim(Trim::MaxAge(Duration::from_secs(3600))))
        .await
        .unwrap();
    bus.publish(&topic, &numbered(1)).await.unwrap();
    let ids: Vec<String> = xrange(&redis, &bus.stream_key(&topic, 0))
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    // `~` drops whole macro nodes only (100 entries each by default): most old ones go.
    let old_left = ids.iter().filter(|id| id.starts_with("1-")).count();
    assert!(old_left < 200, "{old_left} old entries left");
    assert_eq!(ids.len() - old_left, 1, "the new entry is kept");
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_event_is_refused_before_sending() {
    let redis = fresh_prefix().await;
    let bus = RedisBus::connect(config(&redis).max_event_bytes(1024))
        .await
        .unwrap();
    let topic = Topic::new("big").unwrap();
    let big = Event::builder("/t", "big")
        .data_json(&"x".repeat(2000))
        .build()
        .unwrap();
    let err = bus.publish(&topic, &big).await.expect_err("too large");
    assert!(
        matches!(err, Error::TooLarge { limit: 1024, .. }),
        "{err:?}"
    );
    let err = bus
        .publish_batch(&topic, &[numbered(1), big])
        .await
        .expect_err("too large");
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    assert_eq!(
        bus.topic_len(&topic).await.unwrap(),
        0,
        "nothing of a refused batch is sent"
    );
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_from_latest_skips_earlier_events() {
    let redis = fresh_prefix().await;
    let bus = RedisBus::connect(config(&redis)).await.unwrap();
    let topic = Topic::new("news").unwrap();
    let early = numbered(1);
    bus.publish(&topic, &early).await.unwrap();
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let handler = {
        let seen = seen.clone();
        handler_fn(move |e, _c| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().insert(e.id().to_owned());
                Ok(())
            }
        })
    };
    let options = SubscribeOptions::default().start_from(StartFrom::Latest);
    let sub = bus
        .subscribe(
            &topic,
            &Group::new("late").unwrap(),
            Arc::new(handler),
            options,
        )
        .await
        .unwrap();
    let late = numbered(2);
    bus.publish(&topic, &late).await.unwrap();
    wait_until("the later event is handled", || {
        seen.lock().unwrap().contains(late.id())
    })
    .await;
    sub.shutdown().await.unwrap();
    assert!(!seen.lock().unwrap().contains(early.id()));
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_named_for_operators() {
    let redis = fresh_prefix().await;
    let bus = RedisBus::connect(config(&redis)).await.unwrap();
    assert_eq!(bus.client_name(), format!("windlass.{}", redis.prefix));
    let sub = bus
        .subscribe(
            &Topic::new("named").unwrap(),
            &Group::new("g").unwrap(),
            Arc::new(handler_fn(|_e, _c| async { Ok(()) })),
            SubscribeOptions::default().consumer("worker 1"),
        )
        .await
        .unwrap();
    let names = [
        format!("windlass.{}.read.worker_1", redis.prefix),
        format!("windlass.{}.control.worker_1", redis.prefix),
    ];
    let mut conn = redis.conn.clone();
    let mut found = false;
    for _ in 0..200 {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await
            .unwrap();
        found = names.iter().all(|n| list.contains(&format!("name={n} ")));
        if found {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sub.shutdown().await.unwrap();
    assert!(found, "no clients named {names:?}");
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_settings_are_refused_at_construction() {
    assert!(matches!(
        RedisBus::new(RedisConfig::default().prefix("")),
        Err(Error::Config(_))
    ));
    assert!(
        matches!(
            RedisBus::new(RedisConfig::default().prefix("app{1}")),
            Err(Error::Config(_))
        ),
        "braces would change the hash slots"
    );
    assert!(matches!(
        RedisBus::new(RedisConfig::default().trim(Trim::MaxLen(0))),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        RedisBus::new(RedisConfig::default().lease_ttl(Duration::from_millis(5))),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        RedisBus::new(RedisConfig::new("not a url")),
        Err(Error::Config(_))
    ));
    assert!(matches!(PartitionCount::new(0), Err(Error::Config(_))));
    assert!(matches!(
        PartitionCount::new(100_000),
        Err(Error::Config(_))
    ));
    let err = RedisBus::new(RedisConfig::new("redis://:hunter2@127.0.0.1:1/ bad")).err();
    if let Some(err) = err {
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
    // A handler deadline at or past the lease TTL is refused at subscribe.
    let redis = fresh_prefix().await;
    let bus = RedisBus::connect(config(&redis).lease_ttl(Duration::from_secs(2)))
        .await
        .unwrap();
    let topic = Topic::new("t").unwrap();
    for options in [
        SubscribeOptions::default().handler_timeout(Duration::from_secs(2)),
        SubscribeOptions::default().handler_timeout(Duration::ZERO),
        SubscribeOptions::default().consumer(""),
    ] {
        let r = bus
            .subscribe(
                &topic,
                &Group::new("g").unwrap(),
                Arc::new(handler_fn(|_e, _c| async { Ok(()) })),
                options,
            )
            .await;
        assert!(matches!(r, Err(Error::Config(_))), "{r:?}");
    }
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_partition_count_of_a_topic_in_use_is_refused() {
    let redis = fresh_prefix().await;
    let topic = Topic::new("sized").unwrap();
    let four = RedisBus::connect(config(&redis)).await.unwrap();
    four.publish(&topic, &numbered(1)).await.unwrap();
    let eight = RedisBus::connect(config(&redis).partitions(count(8)))
        .await
        .unwrap();
    let err = eight
        .publish(&topic, &numbered(2))
        .await
        .expect_err("another partition count");
    assert!(
        matches!(
            err,
            Error::PartitionMismatch {
                stored: 4,
                configured: 8,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("migrate"), "{err}");
    let sub = eight
        .subscribe(
            &topic,
            &Group::new("g").unwrap(),
            Arc::new(handler_fn(|_e, _c| async { Ok(()) })),
            SubscribeOptions::default(),
        )
        .await;
    assert!(matches!(sub, Err(Error::PartitionMismatch { .. })));
    assert_eq!(four.topic_len(&topic).await.unwrap(), 1, "nothing moved");
    // Once the topic is deleted, another count is fine.
    four.delete_topic(&topic, &TenantScope::All).await.unwrap();
    eight.publish(&topic, &numbered(3)).await.unwrap();
    assert_eq!(eight.stream_keys(&topic).await.unwrap().len(), 8);
    // A per-topic setting wins over the bus default.
    let other = Topic::new("sized.other").unwrap();
    let per_topic = RedisBus::connect(config(&redis).topic_partitions(&other, count(2)))
        .await
        .unwrap();
    assert_eq!(per_topic.stream_keys(&other).await.unwrap().len(), 2);
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_merges_the_partitions_and_keeps_order_per_key() {
    use windlass_eventbus::replay::{Replay, ReplayFrom, ReplayOptions};
    let redis = fresh_prefix().await;
    let bus = RedisBus::connect(config(&redis)).await.unwrap();
    let topic = Topic::new("history").unwrap();
    let events: Vec<Event> = (0..10)
        .flat_map(|seq| (0..5).map(move |k| keyed(&format!("k{k}"), seq)))
        .collect();
    for chunk in events.chunks(5) {
        bus.publish_batch(&topic, chunk).await.unwrap();
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let h = {
        let seen = seen.clone();
        handler_fn(move |e: Event, _c| {
            let seen = seen.clone();
            async move {
                let seq: usize = e.data_as()?.unwrap();
                seen.lock()
                    .unwrap()
                    .push((e.partition_key().unwrap().to_owned(), seq));
                Ok(())
            }
        })
    };
    let report = bus
        .replay(&topic, ReplayFrom::Beginning, &h, &ReplayOptions::default())
        .await
        .unwrap();
    assert_eq!(report.delivered, 50);
    let seen = seen.lock().unwrap().clone();
    for k in 0..5 {
        let key = format!("k{k}");
        let seqs: Vec<usize> = seen
            .iter()
            .filter(|(kk, _)| *kk == key)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(seqs, (0..10).collect::<Vec<_>>(), "{key}");
    }
    // A group positioned at an event reads, in every partition, what came from it on.
    let g = Group::new("rebuild").unwrap();
    let from = &events[25];
    bus.start_group_at(&topic, &g, ReplayFrom::EventId(from.id().to_owned()))
        .await
        .unwrap();
    let got = Arc::new(Mutex::new(HashSet::new()));
    let h = {
        let got = got.clone();
        handler_fn(move |e: Event, _c| {
            let got = got.clone();
            async move {
                got.lock().unwrap().insert(e.id().to_owned());
                Ok(())
            }
        })
    };
    let sub = bus
        .subscribe(&topic, &g, Arc::new(h), SubscribeOptions::default())
        .await
        .unwrap();
    wait_until("the group read from the event on", || {
        got.lock().unwrap().contains(events[49].id()) && got.lock().unwrap().contains(from.id())
    })
    .await;
    sub.shutdown().await.unwrap();
    let got = got.lock().unwrap().clone();
    assert!(got.contains(from.id()));
    // Same-partition events before it are not read again.
    let p = partition_for_event(from, count(4));
    for e in &events[..25] {
        if partition_for_event(e, count(4)) == p {
            assert!(!got.contains(e.id()), "an event before the start was read");
        }
    }
    redis.cleanup().await;
}
