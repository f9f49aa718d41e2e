//! Redis-specific behaviour of `RedisBus`: the wire format other programs depend on, the DLQ
//! stream's fields, trimming, size limits, where new groups start.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use windlass_eventbus::redis::{RedisBus, RedisConfig, Trim};
use windlass_eventbus::{
    Error, Event, Group, HandlerError, Publisher, StartFrom, SubscribeOptions, Subscriber, Topic,
    handler_fn,
};
use windlass_testkit::conformance::bus::{numbered, wait_dead_letters, wait_until};
use windlass_testkit::redis::{TestRedis, fresh_prefix};

fn config(redis: &TestRedis) -> RedisConfig {
    RedisConfig::new(redis.url.clone())
        .prefix(redis.prefix.clone())
        .block(Duration::from_millis(200))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_hold_one_event_field_of_structured_cloudevents_json() {
    let redis = fresh_prefix().await;
    let bus = RedisBus::connect(config(&redis)).await.unwrap();
    let topic = Topic::new("billing.invoices").unwrap();
    assert_eq!(
        bus.stream_key(&topic),
        format!("{}:billing.invoices", redis.prefix)
    );
    let event = Event::builder("/billing", "invoice.paid")
        .subject("inv_42")
        .org_id("acme")
        .partition_key("inv_42")
        .data_json(&serde_json::json!({"amount": 100}))
        .build()
        .unwrap();
    bus.publish(&topic, &event).await.unwrap();
    let entries = xrange(&redis, &bus.stream_key(&topic)).await;
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
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_publish_keeps_order() {
    let redis = fresh_prefix().await;
    let bus = RedisBus::connect(config(&redis)).await.unwrap();
    let topic = Topic::new("orders").unwrap();
    let events: Vec<Event> = (0..250).map(numbered).collect();
    bus.publish_batch(&topic, &events).await.unwrap();
    let stored: Vec<String> = xrange(&redis, &bus.stream_key(&topic))
        .await
        .into_iter()
        .map(|(_, f)| Event::from_json(&f[0].1).unwrap().id().to_owned())
        .collect();
    let expected: Vec<String> = events.iter().map(|e| e.id().to_owned()).collect();
    assert_eq!(stored, expected);
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_stream_entries_carry_error_failed_at_and_group() {
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
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    let event = numbered(1);
    bus.publish(&topic, &event).await.unwrap();
    let dlq = wait_dead_letters(&bus, &topic, 1).await;
    sub.shutdown().await.unwrap();
    assert_eq!(
        bus.dlq_key(&topic),
        format!("{}:payments:dlq", redis.prefix)
    );
    let raw = xrange(&redis, &bus.dlq_key(&topic)).await;
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
    assert_eq!(dlq[0].error, error);
    // Dead-lettering acknowledged the entry.
    let mut conn = redis.conn.clone();
    let pending: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
        .arg(bus.stream_key(&topic))
        .arg("ledger")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending.count(), 0);
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_without_event_field_is_dead_lettered() {
    let redis = fresh_prefix().await;
    let bus = RedisBus::connect(config(&redis)).await.unwrap();
    let topic = Topic::new("foreign").unwrap();
    let mut conn = redis.conn.clone();
    let _: String = redis::cmd("XADD")
        .arg(bus.stream_key(&topic))
        .arg("*")
        .arg("payload")
        .arg("hello")
        .query_async(&mut conn)
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(0));
    let handler = {
        let seen = seen.clone();
        handler_fn(move |_e, _c| {
            let seen = seen.clone();
            async move {
                *seen.lock().unwrap() += 1;
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
    let dlq = wait_dead_letters(&bus, &topic, 1).await;
    sub.shutdown().await.unwrap();
    assert!(
        dlq[0].error.contains("no `event` field"),
        "{}",
        dlq[0].error
    );
    assert_eq!(*seen.lock().unwrap(), 0);
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maxlen_trimming_bounds_the_stream() {
    let redis = fresh_prefix().await;
    let bus = RedisBus::connect(config(&redis).trim(Trim::MaxLen(100)))
        .await
        .unwrap();
    let topic = Topic::new("metrics").unwrap();
    for chunk in (0..2000).collect::<Vec<_>>().chunks(100) {
        let events: Vec<Event> = chunk.iter().map(|n| numbered(*n)).collect();
        bus.publish_batch(&topic, &events).await.unwrap();
    }
    let mut conn = redis.conn.clone();
    let len: usize = redis::cmd("XLEN")
        .arg(bus.stream_key(&topic))
        .query_async(&mut conn)
        .await
        .unwrap();
    // `~` trims whole macro nodes: about 100, never everything, never unbounded.
    assert!((100..1000).contains(&len), "XLEN {len}");
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_trimming_drops_old_entries() {
    let redis = fresh_prefix().await;
    let topic = Topic::new("metrics").unwrap();
    let old = RedisBus::connect(config(&redis)).await.unwrap();
    let mut conn = redis.conn.clone();
    // 300 entries from 1970 (explicit ids), then a publish with MINID trimming.
    let mut pipe = redis::pipe();
    for n in 1..=300 {
        pipe.cmd("XADD")
            .arg(old.stream_key(&topic))
            .arg(format!("1-{n}"))
            .arg("event")
            .arg(numbered(0).to_json_vec())
            .ignore();
    }
    let () = pipe.query_async(&mut conn).await.unwrap();
    let bus = RedisBus::connect(config(&redis).trim(Trim::MaxAge(Duration::from_secs(3600))))
        .await
        .unwrap();
    let fresh = numbered(1);
    bus.publish(&topic, &fresh).await.unwrap();
    let ids: Vec<String> = xrange(&redis, &bus.stream_key(&topic))
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
    let mut conn = redis.conn.clone();
    let len: usize = redis::cmd("XLEN")
        .arg(bus.stream_key(&topic))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 0, "nothing of a refused batch is sent");
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
    let reader = format!("windlass.{}.read.worker_1", redis.prefix);
    let mut conn = redis.conn.clone();
    let mut found = false;
    for _ in 0..200 {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await
            .unwrap();
        found = list.contains(&format!("name={reader} "));
        if found {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sub.shutdown().await.unwrap();
    assert!(found, "no client named {reader}");
    redis.cleanup().await;
}

#[test]
fn invalid_config_is_refused() {
    assert!(matches!(
        RedisBus::new(RedisConfig::default().prefix("")),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        RedisBus::new(RedisConfig::default().trim(Trim::MaxLen(0))),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        RedisBus::new(RedisConfig::new("not a url")),
        Err(Error::Config(_))
    ));
    let err = RedisBus::new(RedisConfig::new("redis://:hunter2@127.0.0.1:1/ bad")).err();
    if let Some(err) = err {
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
