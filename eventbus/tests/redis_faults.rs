//! Faults injected for real on the Redis Streams backend, members in this process: members
//! killed while holding entries (their lease expires), connections killed with `CLIENT KILL`,
//! an unreachable or silent server, a member restarted under the same name, an entry that
//! crashes its consumer every time, a graceful leave that must not wait for a lease.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use windlass_eventbus::partition::PartitionCount;
use windlass_eventbus::redis::{RedisBus, RedisConfig};
use windlass_eventbus::{
    Error, Event, Group, Handler, Publisher, RetryPolicy, SubscribeOptions, Subscriber, Topic,
    handler_fn,
};
use windlass_testkit::conformance::bus::{
    History, check, jitter, keyed, numbered, wait_dead_letters, wait_until,
};
use windlass_testkit::redis::{TestRedis, fresh_prefix};

fn config(redis: &TestRedis) -> RedisConfig {
    RedisConfig::new(redis.url.clone())
        .prefix(redis.prefix.clone())
        .block(Duration::from_millis(200))
        .partitions(PartitionCount::ONE)
        .lease_ttl(Duration::from_millis(1200))
}

fn options() -> SubscribeOptions {
    SubscribeOptions::default().handler_timeout(Duration::from_millis(600))
}

fn topic() -> Topic {
    Topic::new("faults").unwrap()
}

/// Records (event id, attempt, consumer) of every handler call.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, u32, String)>>>);

impl Seen {
    fn ids(&self) -> HashSet<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(id, ..)| id.clone())
            .collect()
    }
    fn all(&self) -> Vec<(String, u32, String)> {
        self.0.lock().unwrap().clone()
    }
    fn recording(&self) -> Arc<dyn Handler> {
        let seen = self.clone();
        Arc::new(handler_fn(move |event, ctx| {
            let seen = seen.clone();
            async move {
                seen.0.lock().unwrap().push((
                    event.id().to_owned(),
                    ctx.attempt,
                    ctx.consumer.clone(),
                ));
                Ok(())
            }
        }))
    }
    /// Records, then never returns (until the handler deadline drops it).
    fn hanging(&self) -> Arc<dyn Handler> {
        let seen = self.clone();
        Arc::new(handler_fn(move |event, ctx| {
            let seen = seen.clone();
            async move {
                seen.0.lock().unwrap().push((
                    event.id().to_owned(),
                    ctx.attempt,
                    ctx.consumer.clone(),
                ));
                std::future::pending::<()>().await;
                Ok(())
            }
        }))
    }
}

async fn pending_count(redis: &TestRedis, bus: &RedisBus, topic: &Topic, group: &str) -> i64 {
    let mut conn = redis.conn.clone();
    let reply: redis::Value = redis::cmd("XPENDING")
        .arg(bus.stream_key(topic, 0))
        .arg(group)
        .query_async(&mut conn)
        .await
        .unwrap();
    match reply {
        redis::Value::Array(parts) => match parts.first() {
            Some(redis::Value::Int(n)) => *n,
            other => panic!("unexpected XPENDING reply {other:?}"),
        },
        other => panic!("unexpected XPENDING reply {other:?}"),
    }
}

/// The consumer names of a group on a stream.
async fn consumers(redis: &TestRedis, key: &str, group: &str) -> Vec<String> {
    let mut conn = redis.conn.clone();
    let rows: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(key)
        .arg(group)
        .query_async(&mut conn)
        .await
        .unwrap();
    rows.iter()
        .filter_map(|r| {
            r.get("name")
                .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
        })
        .collect()
}

/// Kills every client whose name starts with `name_prefix` (`CLIENT LIST` + `CLIENT KILL ID`),
/// never the connections of other tests. Returns how many were killed.
async fn kill_clients(redis: &TestRedis, name_prefix: &str) -> usize {
    let mut conn = redis
        .client
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut killed = 0;
    for line in list.lines() {
        let field = |name: &str| {
            line.split(' ').find_map(|kv| {
                kv.strip_prefix(name)
                    .and_then(|v| v.strip_prefix('='))
                    .map(str::to_owned)
            })
        };
        let (Some(id), Some(name)) = (field("id"), field("name")) else {
            continue;
        };
        if name.starts_with(name_prefix) {
            let n: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(&id)
                .query_async(&mut conn)
                .await
                .unwrap();
            killed += n as usize;
        }
    }
    killed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_members_pending_entries_go_to_the_next_owner_once_its_lease_expired() {
    let redis = fresh_prefix().await;
    let bus = RedisBus::connect(config(&redis)).await.unwrap();
    let (topic, group) = (topic(), Group::new("workers").unwrap());
    let dying = Seen::default();
    let a = bus
        .subscribe(
            &topic,
            &group,
            dying.hanging(),
            options().concurrency(8).consumer("a"),
        )
        .await
        .unwrap();
    let events: Vec<Event> = (0..5).map(numbered).collect();
    bus.publish_batch(&topic, &events).await.unwrap();
    wait_until("member a runs all 5 entries", || dying.ids().len() == 5).await;
    a.abort();

    let other = RedisBus::connect(config(&redis)).await.unwrap();
    let survivor = Seen::default();
    let b = other
        .subscribe(
            &topic,
            &group,
            survivor.recording(),
            options().consumer("b"),
        )
        .await
        .unwrap();
    let all: HashSet<String> = events.iter().map(|e| e.id().to_owned()).collect();
    wait_until(
        "member b took the partition and handled the 5 entries",
        || survivor.ids() == all,
    )
    .await;
    b.shutdown().await.unwrap();
    for (id, attempt, consumer) in survivor.all() {
        assert_eq!(consumer, "b");
        assert_eq!(
            attempt, 2,
            "{id}: the takeover counts as the second delivery"
        );
    }
    assert_eq!(survivor.all().len(), 5, "each once");
    assert_eq!(pending_count(&redis, &bus, &topic, "workers").await, 0);
    // The dead member's consumer entry was removed once its entries moved.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let names = consumers(&redis, &bus.stream_key(&topic, 0), "workers").await;
        if !names.contains(&"a".to_owned()) {
            assert!(names.contains(&"b".to_owned()), "{names:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "consumer a is still in the group: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_keep_a_busy_members_partition_across_many_lease_periods() {
    let redis = fresh_prefix().await;
    let bus = RedisBus::connect(config(&redis)).await.unwrap();
    let (topic, group) = (topic(), Group::new("workers").unwrap());
    let history = History::default();
    // 12 events of one key, 300 ms each: 3.6 s of work, 3 lease periods.
    let a = bus
        .subscribe(
            &topic,
            &group,
            history.handler("a", |_| Duration::from_millis(300)),
            options().consumer("a"),
        )
        .await
        .unwrap();
    let events: Vec<Event> = (0..12).map(|n| keyed("busy", n)).collect();
    bus.publish_batch(&topic, &events).await.unwrap();
    wait_until("a started", || history.started() >= 1).await;
    let b = RedisBus::connect(config(&redis))
        .await
        .unwrap()
        .subscribe(
            &topic,
            &group,
            history.handler("b", |_| Duration::ZERO),
            options().consumer("b"),
        )
        .await
        .unwrap();
    wait_until("every event is handled", || history.distinct() == 12).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    let expected: HashMap<String, usize> = [("busy".to_owned(), 12)].into();
    let verdict = check(&history.steps(), &expected, true);
    assert!(verdict.violations.is_empty(), "{:?}", verdict.violations);
    assert_eq!(
        verdict.members().into_iter().collect::<Vec<_>>(),
        vec!["a".to_owned()],
        "the busy member kept its lease (one partition, two members: it stays)"
    );
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_of_the_members_connections_keeps_order_and_loses_nothing() {
    let redis = fresh_prefix().await;
    let four = || config(&redis).partitions(PartitionCount::new(4).unwrap());
    let bus = RedisBus::connect(four()).await.unwrap();
    let (topic, group) = (topic(), Group::new("g").unwrap());
    let history = History::default();
    let keys: Vec<String> = (0..20).map(|k| format!("k{k}")).collect();
    const PER_KEY: usize = 15;
    let mut subs = Vec::new();
    for m in ["m0", "m1"] {
        let member = RedisBus::connect(four()).await.unwrap();
        subs.push(
            member
                .subscribe(
                    &topic,
                    &group,
                    history.handler(m, |seq| jitter("kill", seq, 2)),
                    options().consumer(m),
                )
                .await
                .unwrap(),
        );
    }
    let producer = {
        let (bus, topic, keys) = (bus.clone(), topic.clone(), keys.clone());
        tokio::spawn(async move {
            for seq in 0..PER_KEY {
                let events: Vec<Event> = keys.iter().map(|k| keyed(k, seq)).collect();
                bus.publish_batch(&topic, &events)
                    .await
                    .expect("publish retried across the kills");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut kills = 0;
    for threshold in [40, 120, 200] {
        wait_until("progress before the next kill", || {
            history.distinct() >= threshold
        })
        .await;
        kills += kill_clients(&redis, bus.client_name()).await;
    }
    assert!(
        kills >= 3,
        "CLIENT KILL found none of the members' connections"
    );
    producer.await.unwrap();
    wait_until("every event is handled after the kills", || {
        history.distinct() >= keys.len() * PER_KEY
    })
    .await;
    for sub in subs {
        sub.shutdown().await.unwrap();
    }
    let expected: HashMap<String, usize> = keys.iter().map(|k| (k.clone(), PER_KEY)).collect();
    let verdict = check(&history.steps(), &expected, false);
    assert!(
        verdict.violations.is_empty(),
        "{:#?}",
        &verdict.violations[..verdict.violations.len().min(10)]
    );
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_leave_hands_partitions_over_without_waiting_for_the_lease() {
    let redis = fresh_prefix().await;
    // A lease far longer than the test's patience: only a graceful handover can pass.
    let slow_lease = || {
        config(&redis)
            .partitions(PartitionCount::new(4).unwrap())
            .lease_ttl(Duration::from_secs(90))
    };
    let bus = RedisBus::connect(slow_lease()).await.unwrap();
    let (topic, group) = (topic(), Group::new("g").unwrap());
    let (first, second) = (Seen::default(), Seen::default());
    let options = SubscribeOptions::default().handler_timeout(Duration::from_secs(5));
    let a = bus
        .subscribe(
            &topic,
            &group,
            first.recording(),
            options.clone().consumer("a"),
        )
        .await
        .unwrap();
    let other = RedisBus::connect(slow_lease()).await.unwrap();
    let b = other
        .subscribe(&topic, &group, second.recording(), options.consumer("b"))
        .await
        .unwrap();
    a.shutdown().await.unwrap();
    let events: Vec<Event> = (0..40).map(|n| keyed(&format!("k{n}"), n)).collect();
    bus.publish_batch(&topic, &events).await.unwrap();
    let all: HashSet<String> = events.iter().map(|e| e.id().to_owned()).collect();
    wait_until("b handles every partition's events", || second.ids() == all).await;
    b.shutdown().await.unwrap();
    assert!(first.ids().is_disjoint(&all));
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_fails_publish_after_bounded_retries() {
    // Nothing listens on port 1.
    let retry = RetryPolicy::default()
        .with_max_attempts(3)
        .with_delays(Duration::from_millis(20), Duration::from_millis(50));
    let bus = RedisBus::new(RedisConfig::new("redis://127.0.0.1:1").publish_retry(retry)).unwrap();
    let started = Instant::now();
    let err = bus
        .publish(&topic(), &numbered(1))
        .await
        .expect_err("publish to an unreachable server");
    assert!(
        matches!(
            err,
            Error::Backend {
                backend: "redis",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "retries are not bounded: {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(20),
        "no retry happened: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_server_times_out_publish() {
    // A server that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let retry = RetryPolicy::default()
        .with_max_attempts(2)
        .with_delays(Duration::from_millis(10), Duration::from_millis(10));
    let config = RedisConfig::new(format!("redis://{addr}"))
        .publish_retry(retry)
        .connect_timeout(Duration::from_millis(200))
        .timeout(Duration::from_millis(200));
    let bus = RedisBus::new(config).unwrap();
    let started = Instant::now();
    let err = bus
        .publish(&topic(), &numbered(1))
        .await
        .expect_err("publish to a silent server");
    assert!(
        matches!(err, Error::Timeout(_) | Error::Backend { .. }),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "no deadline: {:?}",
        started.elapsed()
    );
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_gets_back_what_its_crashed_run_held() {
    let redis = fresh_prefix().await;
    let bus = RedisBus::connect(config(&redis)).await.unwrap();
    let (topic, group) = (topic(), Group::new("g").unwrap());
    let first = Seen::default();
    let sub = bus
        .subscribe(&topic, &group, first.hanging(), options().consumer("c1"))
        .await
        .unwrap();
    let events: Vec<Event> = (0..3).map(numbered).collect();
    bus.publish_batch(&topic, &events).await.unwrap();
    wait_until("the first run holds the 3 entries", || {
        first.ids().len() == 3
    })
    .await;
    sub.abort();

    let restarted = RedisBus::connect(config(&redis)).await.unwrap();
    let second = Seen::default();
    let sub = restarted
        .subscribe(&topic, &group, second.recording(), options().consumer("c1"))
        .await
        .unwrap();
    let all: HashSet<String> = events.iter().map(|e| e.id().to_owned()).collect();
    wait_until("the restarted member got its entries back", || {
        second.ids() == all
    })
    .await;
    sub.shutdown().await.unwrap();
    assert!(
        second.all().iter().all(|(_, attempt, _)| *attempt == 2),
        "{:?}",
        second.all()
    );
    assert_eq!(pending_count(&redis, &restarted, &topic, "g").await, 0);
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_that_kills_its_consumer_every_time_is_dead_lettered() {
    let redis = fresh_prefix().await;
    let (topic, group) = (topic(), Group::new("g").unwrap());
    let options = options().consumer("crashy").retry(
        RetryPolicy::default()
            .with_max_attempts(2)
            .with_delays(Duration::from_millis(5), Duration::from_millis(5)),
    );
    let bus = RedisBus::connect(config(&redis)).await.unwrap();
    let event = numbered(7);
    bus.publish(&topic, &event).await.unwrap();
    // Two runs die while handling it ("crash" = abort while the handler hangs).
    for run in 1..=2 {
        let seen = Seen::default();
        let sub = bus
            .subscribe(&topic, &group, seen.hanging(), options.clone())
            .await
            .unwrap();
        wait_until("the run picked the entry up", || !seen.ids().is_empty()).await;
        assert_eq!(seen.all()[0].1, run, "attempt number of run {run}");
        sub.abort();
    }
    // The third delivery exceeds the policy: straight to the DLQ, the handler is not called.
    let third = Seen::default();
    let sub = bus
        .subscribe(&topic, &group, third.recording(), options)
        .await
        .unwrap();
    let dlq = wait_dead_letters(&bus, &topic, 1).await;
    sub.shutdown().await.unwrap();
    assert!(third.all().is_empty(), "{:?}", third.all());
    assert_eq!(dlq[0].event.as_ref().map(Event::id), Some(event.id()));
    assert!(
        dlq[0].error.contains("delivered 2 times"),
        "{}",
        dlq[0].error
    );
    assert_eq!(pending_count(&redis, &bus, &topic, "g").await, 0);
    redis.cleanup().await;
}
