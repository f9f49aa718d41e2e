//! Replay from a time or an event id, on Kafka, Redis Streams and the outbox history, against
//! the real servers. A replay never moves a live consumer group.
#![cfg(all(feature = "kafka", feature = "redis", feature = "outbox-replay"))]

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use windlass_eventbus::kafka::{GroupTimeouts, KafkaBus, KafkaConfig};
use windlass_eventbus::redis::{RedisBus, RedisConfig};
use windlass_eventbus::replay::{
    OutboxHistory, Replay, ReplayEnd, ReplayFrom, ReplayOptions, ReplayReport,
};
use windlass_eventbus::{
    Error, Event, Group, HandlerError, Publisher, Subscriber, Topic, handler_fn,
};

fn kafka_bus(k: &windlass_testkit::kafka::TestKafka) -> KafkaBus {
    KafkaBus::new(KafkaConfig::new(&k.brokers).group_timeouts(GroupTimeouts::tansu())).unwrap()
}

fn numbered(i: usize) -> Event {
    Event::builder("/test", "n")
        .subject(format!("k{}", i % 3))
        .data_json(&i)
        .build()
        .unwrap()
}

/// A handler collecting the numbers it sees.
fn collector() -> (Arc<Mutex<Vec<usize>>>, impl windlass_eventbus::Handler) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let h = handler_fn(move |e, _| {
        let s = s.clone();
        async move {
            s.lock()
                .unwrap()
                .push(e.data_as::<usize>().map_err(HandlerError::reject)?.unwrap());
            Ok(())
        }
    });
    (seen, h)
}

fn sorted(v: &Mutex<Vec<usize>>) -> Vec<usize> {
    let mut v = v.lock().unwrap().clone();
    v.sort();
    v
}

/// Publishes 0..10, then (after a pause, so the times differ) 10..20; returns the events and
/// the time between the halves.
async fn two_halves<P: Publisher>(bus: &P, topic: &Topic) -> (Vec<Event>, chrono::DateTime<Utc>) {
    let events: Vec<Event> = (0..20).map(numbered).collect();
    for e in &events[..10] {
        bus.publish(topic, e).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let middle = Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for e in &events[10..] {
        bus.publish(topic, e).await.unwrap();
    }
    (events, middle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_replays_from_the_beginning_a_time_or_an_event_id() {
    let k = windlass_testkit::kafka::fresh_topic_with(2).await;
    let bus = kafka_bus(&k);
    let (events, middle) = two_halves(&bus, &k.topic).await;
    let opts = ReplayOptions::default();

    let (seen, h) = collector();
    let r = bus
        .replay(&k.topic, ReplayFrom::Beginning, &h, &opts)
        .await
        .unwrap();
    assert!(r.is_complete(), "{r:?}");
    assert_eq!(r.delivered, 20);
    assert_eq!(r.partitions.len(), 2);
    assert_eq!(sorted(&seen), (0..20).collect::<Vec<_>>());

    let (seen, h) = collector();
    let r = bus
        .replay(&k.topic, ReplayFrom::Time(middle), &h, &opts)
        .await
        .unwrap();
    assert!(r.is_complete(), "{r:?}");
    assert_eq!(sorted(&seen), (10..20).collect::<Vec<_>>());

    // From event 14 (key k2): that partition from 14 on, the other partition from its time.
    let (seen, h) = collector();
    let r = bus
        .replay(
            &k.topic,
            ReplayFrom::EventId(events[14].id().to_owned()),
            &h,
            &opts,
        )
        .await
        .unwrap();
    assert!(r.is_complete(), "{r:?}");
    let got = sorted(&seen);
    assert!(
        got.contains(&14) && !got.contains(&13) && got.iter().all(|i| *i >= 14),
        "{got:?}"
    );

    let (seen, h) = collector();
    let r = bus
        .replay(
            &k.topic,
            ReplayFrom::Beginning,
            &h,
            &ReplayOptions::default().until(middle),
        )
        .await
        .unwrap();
    assert_eq!(r.delivered, 10);
    assert_eq!(sorted(&seen), (0..10).collect::<Vec<_>>());

    let (_, h) = collector();
    let missing = bus
        .replay(&k.topic, ReplayFrom::EventId("nope".into()), &h, &opts)
        .await;
    assert!(
        matches!(missing, Err(Error::EventNotFound { .. })),
        "{missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_replay_into_a_new_group_leaves_live_groups_alone() {
    let k = windlass_testkit::kafka::fresh_topic().await;
    let bus = kafka_bus(&k);
    let (_, middle) = two_halves(&bus, &k.topic).await;
    // A live group consumes everything and commits.
    let live = Group::new(format!("live-{}", uuid::Uuid::new_v4().simple())).unwrap();
    let (live_seen, h) = collector();
    let sub = bus
        .subscribe(&k.topic, &live, Arc::new(h), Default::default())
        .await
        .unwrap();
    wait(|| live_seen.lock().unwrap().len() >= 20).await;
    // A replay with a handler does not touch it.
    let (_, h) = collector();
    let r = bus
        .replay(
            &k.topic,
            ReplayFrom::Beginning,
            &h,
            &ReplayOptions::default(),
        )
        .await
        .unwrap();
    assert!(r.is_complete(), "{r:?}");
    // The live group cannot be repositioned.
    let refused = bus
        .start_group_at(&k.topic, &live, ReplayFrom::Beginning)
        .await;
    assert!(matches!(refused, Err(Error::Config(_))), "{refused:?}");
    // A new group starts at the time and then reads on.
    let replay_group = Group::new(format!("replay-{}", uuid::Uuid::new_v4().simple())).unwrap();
    bus.start_group_at(&k.topic, &replay_group, ReplayFrom::Time(middle))
        .await
        .unwrap();
    let (seen, h) = collector();
    let rsub = bus
        .subscribe(&k.topic, &replay_group, Arc::new(h), Default::default())
        .await
        .unwrap();
    wait(|| seen.lock().unwrap().len() >= 10).await;
    bus.publish(&k.topic, &numbered(20)).await.unwrap();
    wait(|| seen.lock().unwrap().len() >= 11 && live_seen.lock().unwrap().len() >= 21).await;
    assert_eq!(sorted(&seen), (10..21).collect::<Vec<_>>());
    assert_eq!(
        sorted(&live_seen),
        (0..21).collect::<Vec<_>>(),
        "the live group saw each event once"
    );
    rsub.shutdown().await.unwrap();
    sub.shutdown().await.unwrap();
}

async fn wait(cond: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(40);
    while !cond() {
        assert!(Instant::now() < end, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_replays_with_xrange_and_positions_new_groups() {
    let redis_test = windlass_testkit::redis::fresh_prefix().await;
    // One partition: the assertions below expect one total order (partitions order per key).
    let bus = RedisBus::connect(
        RedisConfig::new(&redis_test.url)
            .prefix(&redis_test.prefix)
            .partitions(windlass_eventbus::PartitionCount::ONE),
    )
    .await
    .unwrap();
    let topic = Topic::new("orders").unwrap();
    let (events, middle) = two_halves(&bus, &topic).await;
    let opts = ReplayOptions::default();

    let (seen, h) = collector();
    assert_eq!(
        bus.replay(&topic, ReplayFrom::Beginning, &h, &opts)
            .await
            .unwrap()
            .delivered,
        20
    );
    assert_eq!(
        *seen.lock().unwrap(),
        (0..20).collect::<Vec<_>>(),
        "in stream order"
    );

    let (seen, h) = collector();
    let r = bus
        .replay(&topic, ReplayFrom::Time(middle), &h, &opts)
        .await
        .unwrap();
    assert!(r.is_complete(), "{r:?}");
    assert_eq!(*seen.lock().unwrap(), (10..20).collect::<Vec<_>>());

    let (seen, h) = collector();
    let r = bus
        .replay(
            &topic,
            ReplayFrom::EventId(events[7].id().to_owned()),
            &h,
            &opts.clone().limit(5),
        )
        .await
        .unwrap();
    assert_eq!(r.end, ReplayEnd::Limit);
    assert_eq!(*seen.lock().unwrap(), (7..12).collect::<Vec<_>>());

    let (seen, h) = collector();
    let r = bus
        .replay(
            &topic,
            ReplayFrom::Beginning,
            &h,
            &opts.clone().until(middle),
        )
        .await
        .unwrap();
    assert!(r.is_complete(), "{r:?}");
    assert_eq!(*seen.lock().unwrap(), (0..10).collect::<Vec<_>>());

    // Garbage in the stream is reported, not fatal.
    let mut conn = redis_test.conn.clone();
    let _: String = redis::cmd("XADD")
        .arg(bus.stream_key(&topic, 0))
        .arg("*")
        .arg("event")
        .arg("{oops")
        .query_async(&mut conn)
        .await
        .unwrap();
    let (_, h) = collector();
    let rep = bus
        .replay(&topic, ReplayFrom::Time(middle), &h, &opts)
        .await
        .unwrap();
    assert_eq!((rep.delivered, rep.failed.len()), (10, 1));

    // A new group positioned at event 15 reads 15.. through a normal subscription.
    let g = Group::new("rebuild").unwrap();
    bus.start_group_at(&topic, &g, ReplayFrom::EventId(events[15].id().to_owned()))
        .await
        .unwrap();
    assert!(matches!(
        bus.start_group_at(&topic, &g, ReplayFrom::Beginning).await,
        Err(Error::Config(_))
    ));
    let (seen, h) = collector();
    let sub = bus
        .subscribe(&topic, &g, Arc::new(h), Default::default())
        .await
        .unwrap();
    wait(|| seen.lock().unwrap().len() >= 5).await;
    sub.shutdown().await.unwrap();
    assert_eq!(sorted(&seen), (15..20).collect::<Vec<_>>());
    redis_test.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_history_replays_published_rows_in_commit_order() {
    let db = windlass_testkit::postgres::fresh_database().await;
    windlass_outbox::postgres::migrate(&db.pool).await.unwrap();
    let topic = Topic::new("billing").unwrap();
    let events: Vec<Event> = (0..6).map(numbered).collect();
    for (i, e) in events.iter().enumerate() {
        let status = if i == 5 { "pending" } else { "published" };
        // An event row; a pending one still has a delivery row (windlass-outbox layout).
        sqlx::query(
            "WITH e AS (INSERT INTO windlass_outbox (topic, event_type, destinations, event, created_at) \
               VALUES ($1, 'numbered', ARRAY['default'], $2, now() - make_interval(secs => $3)) RETURNING seq) \
             INSERT INTO windlass_outbox_delivery (seq, destination, topic) \
               SELECT seq, 'default', $1 FROM e WHERE $4 = 'pending'",
        )
        .bind(if i == 2 { "other" } else { topic.as_str() })
        .bind(e.to_json())
        .bind(f64::from(100 - i as i32 * 10))
        .bind(status)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let history = OutboxHistory::new(db.pool.clone());
    let opts = ReplayOptions::default();
    let (seen, h) = collector();
    let r = history
        .replay(&topic, ReplayFrom::Beginning, &h, &opts)
        .await
        .unwrap();
    assert!(r.is_complete(), "{r:?}");
    assert_eq!(r.partitions.len(), 1);
    assert_eq!(
        r.partitions[0].last,
        r.partitions[0].end.as_ref().map(|e| format!("seq {e}")),
        "read up to the last published seq"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        vec![0, 1, 3, 4],
        "published rows of the topic, in seq order"
    );
    let (seen, h) = collector();
    let r = history
        .replay(
            &topic,
            ReplayFrom::EventId(events[3].id().to_owned()),
            &h,
            &opts,
        )
        .await
        .unwrap();
    assert!(r.is_complete(), "{r:?}");
    assert_eq!(*seen.lock().unwrap(), vec![3, 4]);
    let (seen, h) = collector();
    let t = Utc::now() - chrono::Duration::seconds(85);
    let r = history
        .replay(&topic, ReplayFrom::Time(t), &h, &opts)
        .await
        .unwrap();
    assert!(r.is_complete(), "{r:?}");
    assert_eq!(*seen.lock().unwrap(), vec![3, 4]);
    let (_, h) = collector();
    let missing = history
        .replay(
            &topic,
            ReplayFrom::EventId(events[2].id().to_owned()),
            &h,
            &opts,
        )
        .await;
    assert!(matches!(missing, Err(Error::EventNotFound { .. })));
    assert!(OutboxHistory::with_table(db.pool.clone(), "x; DROP TABLE y").is_err());
}

/// A handler slower than the live traffic (about 1 ms per event), recording each event's
/// number and position (`partition@offset` / stream id) in delivery order.
type Positions = Arc<Mutex<Vec<(usize, String)>>>;

fn slow_recorder() -> (Positions, impl windlass_eventbus::Handler) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let h = handler_fn(move |e, ctx| {
        let s = s.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let n = e.data_as::<usize>().map_err(HandlerError::reject)?.unwrap();
            s.lock().unwrap().push((n, ctx.delivery_id.clone()));
            Ok(())
        }
    });
    (seen, h)
}

/// Publishes batches of 10 every 10 ms (about 1k events/s), numbered from `first`, until
/// `stop` is set (or 120 s pass). Returns how many it published.
fn live_traffic<P: Publisher + Clone + 'static>(
    bus: P,
    topic: Topic,
    first: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut n = first;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let end = Instant::now() + Duration::from_secs(120);
        while !stop.load(Ordering::SeqCst) && Instant::now() < end {
            tick.tick().await;
            let batch: Vec<Event> = (n..n + 10).map(numbered).collect();
            bus.publish_batch(&topic, &batch).await.unwrap();
            n += 10;
        }
        n - first
    })
}

/// What every live-traffic replay test checks: the replay ended complete, everything published
/// before it started was delivered, positions follow each other per partition, and the
/// report's counts add up.
fn check_live_replay(
    report: &ReplayReport,
    seen: &[(usize, String)],
    before_start: usize,
    partition_of: impl Fn(usize, &str) -> String,
) {
    assert!(
        report.is_complete(),
        "a replay of a topic under live traffic must end complete, not {:?}: {report:?}",
        report.end
    );
    let numbers: BTreeSet<usize> = seen.iter().map(|(n, _)| *n).collect();
    let missing: Vec<usize> = (0..before_start).filter(|n| !numbers.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "events published before the replay started are missing: {missing:?}"
    );
    assert_eq!(numbers.len(), seen.len(), "an event was delivered twice");
    assert_eq!(report.delivered as usize, seen.len());
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let handled: u64 = report.partitions.iter().map(|p| p.handled).sum();
    assert_eq!(handled, report.delivered);
    assert!(report.partitions.iter().all(|p| p.complete), "{report:?}");
    // In order per partition: the events of one partition came in publish order.
    let mut last: HashMap<String, usize> = HashMap::new();
    for (n, pos) in seen {
        let p = partition_of(*n, pos);
        if let Some(prev) = last.insert(p.clone(), *n) {
            assert!(prev < *n, "partition {p}: event {n} after {prev}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_replay_of_a_topic_under_live_traffic_ends_with_a_complete_report() {
    let k = windlass_testkit::kafka::fresh_topic_with(3).await;
    let bus = kafka_bus(&k);
    // Multi-record batches, so the last batch of each partition holds several records (tansu's
    // ListOffsets then reports a high watermark short of the end).
    let before: Vec<Event> = (0..2000).map(numbered).collect();
    for chunk in before.chunks(500) {
        bus.publish_batch(&k.topic, chunk).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let live = live_traffic(bus.clone(), k.topic.clone(), 1_000_000, stop.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The handler is slower than the live traffic: a replay reading "until the topic is idle"
    // would never end.
    let (seen, h) = slow_recorder();
    let report = bus
        .replay(
            &k.topic,
            ReplayFrom::Beginning,
            &h,
            &ReplayOptions::default().timeout(Duration::from_secs(120)),
        )
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let published_live = live.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    check_live_replay(&report, &seen, 2000, |_, pos| {
        pos.split('@').next().unwrap().to_owned()
    });
    // Complete means every offset below each partition's end was delivered.
    let expected: u64 = report
        .partitions
        .iter()
        .map(|p| p.end.as_ref().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(report.delivered, expected, "{report:?}");
    for p in &report.partitions {
        let end: i64 = p.end.as_ref().unwrap().parse().unwrap();
        if end > 0 {
            assert_eq!(p.last, Some(format!("{}@{}", p.partition, end - 1)));
        }
    }
    assert!(published_live > 0);
    eprintln!(
        "kafka: replayed {} events ({} published live during the replay)",
        report.delivered, published_live
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_replay_of_a_topic_under_live_traffic_ends_with_a_complete_report() {
    let r = windlass_testkit::redis::fresh_prefix().await;
    let bus = RedisBus::connect(RedisConfig::new(&r.url).prefix(&r.prefix))
        .await
        .unwrap();
    let topic = Topic::new("orders").unwrap();
    let before: Vec<Event> = (0..2000).map(numbered).collect();
    for chunk in before.chunks(500) {
        bus.publish_batch(&topic, chunk).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let live = live_traffic(bus.clone(), topic.clone(), 1_000_000, stop.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (seen, h) = slow_recorder();
    let report = bus
        .replay(
            &topic,
            ReplayFrom::Beginning,
            &h,
            &ReplayOptions::default().timeout(Duration::from_secs(120)),
        )
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let published_live = live.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    // Entries of one batch are appended partition by partition, so the merge by entry id is
    // ordered per partition (per key), not in publish order across keys.
    check_live_replay(&report, &seen, 2000, |n, _| format!("k{}", n % 3));
    let streams = bus.stream_keys(&topic).await.unwrap();
    assert_eq!(report.partitions.len(), streams.len());
    // Complete: every entry up to each stream's end id was delivered.
    let mut conn = r.conn.clone();
    let mut upto = 0;
    for p in &report.partitions {
        assert!(streams.contains(&p.partition), "{p:?}");
        let Some(end) = p.end.as_deref() else {
            continue;
        };
        assert_eq!(
            p.last.as_deref(),
            Some(end),
            "read up to the end id taken at the start"
        );
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&p.partition)
            .arg("-")
            .arg(end)
            .query_async(&mut conn)
            .await
            .unwrap();
        upto += entries.len();
    }
    assert_eq!(report.delivered as usize, upto);
    assert!(published_live > 0);
    r.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_times_out_returns_its_partial_report() {
    let slow = || {
        let seen = Arc::new(Mutex::new(0usize));
        let s = seen.clone();
        let h = handler_fn(move |_, _| {
            let s = s.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                *s.lock().unwrap() += 1;
                Ok(())
            }
        });
        (seen, h)
    };
    let opts = ReplayOptions::default().timeout(Duration::from_secs(2));
    let check = |name: &str, r: &ReplayReport, handled: usize| {
        assert_eq!(r.end, ReplayEnd::TimedOut, "{name}: {r:?}");
        assert!(!r.is_complete());
        assert!(r.delivered > 0 && r.delivered < 200, "{name}: {r:?}");
        assert_eq!(
            r.delivered as usize, handled,
            "{name}: the report counts what the handler acknowledged"
        );
        assert!(r.partitions.iter().any(|p| !p.complete), "{name}: {r:?}");
        let last_set = r.partitions.iter().filter(|p| p.last.is_some()).count();
        assert!(last_set > 0, "{name}: a resume point is reported: {r:?}");
    };

    let k = windlass_testkit::kafka::fresh_topic().await;
    let kafka = kafka_bus(&k);
    let events: Vec<Event> = (0..200).map(numbered).collect();
    kafka.publish_batch(&k.topic, &events).await.unwrap();
    let (n, h) = slow();
    let r = kafka
        .replay(&k.topic, ReplayFrom::Beginning, &h, &opts)
        .await
        .unwrap();
    check("kafka", &r, *n.lock().unwrap());

    let redis_test = windlass_testkit::redis::fresh_prefix().await;
    let redis = RedisBus::connect(RedisConfig::new(&redis_test.url).prefix(&redis_test.prefix))
        .await
        .unwrap();
    let topic = Topic::new("slow").unwrap();
    redis.publish_batch(&topic, &events).await.unwrap();
    let (n, h) = slow();
    let r = redis
        .replay(&topic, ReplayFrom::Beginning, &h, &opts)
        .await
        .unwrap();
    check("redis", &r, *n.lock().unwrap());
    redis_test.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_replay_reads_the_whole_last_batch() {
    // One produce request of 50 records: the partition's last batch holds them all. tansu's
    // ListOffsets reports a high watermark of 1 here; the end must still be 50.
    let k = windlass_testkit::kafka::fresh_topic().await;
    let bus = kafka_bus(&k);
    let events: Vec<Event> = (0..50).map(numbered).collect();
    bus.publish_batch(&k.topic, &events).await.unwrap();
    let (seen, h) = collector();
    let r = bus
        .replay(
            &k.topic,
            ReplayFrom::Beginning,
            &h,
            &ReplayOptions::default(),
        )
        .await
        .unwrap();
    assert!(r.is_complete(), "{r:?}");
    assert_eq!(r.partitions[0].end.as_deref(), Some("50"), "{r:?}");
    assert_eq!(*seen.lock().unwrap(), (0..50).collect::<Vec<_>>());
}
