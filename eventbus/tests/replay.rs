//! Replay from a time or an event id, on Kafka, Redis Streams and the outbox history, against
//! the real servers. A replay never moves a live consumer group.
#![cfg(all(feature = "kafka", feature = "redis", feature = "outbox-replay"))]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use windlass_eventbus::kafka::{GroupTimeouts, KafkaBus, KafkaConfig};
use windlass_eventbus::redis::{RedisBus, RedisConfig};
use windlass_eventbus::replay::{OutboxHistory, Replay, ReplayFrom, ReplayOptions};
use windlass_eventbus::{
    Error, Event, Group, HandlerError, Publisher, Subscriber, Topic, handler_fn,
};

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
    let bus =
        KafkaBus::new(KafkaConfig::new(&k.brokers).group_timeouts(GroupTimeouts::tansu())).unwrap();
    let (events, middle) = two_halves(&bus, &k.topic).await;
    let opts = ReplayOptions::default();

    let (seen, h) = collector();
    let r = bus
        .replay(&k.topic, ReplayFrom::Beginning, &h, &opts)
        .await
        .unwrap();
    assert_eq!(r.delivered, 20);
    assert_eq!(sorted(&seen), (0..20).collect::<Vec<_>>());

    let (seen, h) = collector();
    bus.replay(&k.topic, ReplayFrom::Time(middle), &h, &opts)
        .await
        .unwrap();
    assert_eq!(sorted(&seen), (10..20).collect::<Vec<_>>());

    // From event 14 (key k2): that partition from 14 on, the other partition from its time.
    let (seen, h) = collector();
    bus.replay(
        &k.topic,
        ReplayFrom::EventId(events[14].id().to_owned()),
        &h,
        &opts,
    )
    .await
    .unwrap();
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
    let bus =
        KafkaBus::new(KafkaConfig::new(&k.brokers).group_timeouts(GroupTimeouts::tansu())).unwrap();
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
    bus.replay(
        &k.topic,
        ReplayFrom::Beginning,
        &h,
        &ReplayOptions::default(),
    )
    .await
    .unwrap();
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
    let r = windlass_testkit::redis::fresh_prefix().await;
    // One partition: the assertions below expect one total order (partitions order per key).
    let bus = RedisBus::connect(
        RedisConfig::new(&r.url)
            .prefix(&r.prefix)
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
    bus.replay(&topic, ReplayFrom::Time(middle), &h, &opts)
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), (10..20).collect::<Vec<_>>());

    let (seen, h) = collector();
    bus.replay(
        &topic,
        ReplayFrom::EventId(events[7].id().to_owned()),
        &h,
        &opts.clone().limit(5),
    )
    .await
    .unwrap();
    assert_eq!(*seen.lock().unwrap(), (7..12).collect::<Vec<_>>());

    let (seen, h) = collector();
    bus.replay(
        &topic,
        ReplayFrom::Beginning,
        &h,
        &opts.clone().until(middle),
    )
    .await
    .unwrap();
    assert_eq!(*seen.lock().unwrap(), (0..10).collect::<Vec<_>>());

    // Garbage in the stream is reported, not fatal.
    let mut conn = r.conn.clone();
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
    r.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_history_replays_published_rows_in_commit_order() {
    let db = windlass_testkit::postgres::fresh_database().await;
    windlass_outbox::postgres::migrate(&db.pool).await.unwrap();
    let topic = Topic::new("billing").unwrap();
    let events: Vec<Event> = (0..6).map(numbered).collect();
    for (i, e) in events.iter().enumerate() {
        let status = if i == 5 { "pending" } else { "published" };
        sqlx::query(
            "INSERT INTO windlass_outbox (id, topic, event, status, created_at) \
             VALUES ($1, $2, $3::jsonb, $4, now() - make_interval(secs => $5))",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(if i == 2 { "other" } else { topic.as_str() })
        .bind(e.to_json())
        .bind(status)
        .bind(f64::from(100 - i as i32 * 10))
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let history = OutboxHistory::new(db.pool.clone());
    let opts = ReplayOptions::default();
    let (seen, h) = collector();
    history
        .replay(&topic, ReplayFrom::Beginning, &h, &opts)
        .await
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![0, 1, 3, 4],
        "published rows of the topic, in seq order"
    );
    let (seen, h) = collector();
    history
        .replay(
            &topic,
            ReplayFrom::EventId(events[3].id().to_owned()),
            &h,
            &opts,
        )
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![3, 4]);
    let (seen, h) = collector();
    let t = Utc::now() - chrono::Duration::seconds(85);
    history
        .replay(&topic, ReplayFrom::Time(t), &h, &opts)
        .await
        .unwrap();
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
