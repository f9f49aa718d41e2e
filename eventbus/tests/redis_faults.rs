//! Faults injected for real on the Redis Streams backend: consumers killed while holding
//! entries, connections killed with `CLIENT KILL`, an unreachable or silent server, a consumer
//! restarted under the same name, an entry that crashes its consumer every time.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use windlass_eventbus::redis::{RedisBus, RedisConfig};
use windlass_eventbus::{
    Error, Event, Group, Handler, Publisher, RetryPolicy, SubscribeOptions, Subscriber, Topic,
    handler_fn,
};
use windlass_testkit::conformance::bus::{numbered, wait_dead_letters, wait_until};
use windlass_testkit::redis::{TestRedis, fresh_prefix};

fn config(redis: &TestRedis) -> RedisConfig {
    RedisConfig::new(redis.url.clone())
        .prefix(redis.prefix.clone())
        .block(Duration::from_millis(200))
        .claim_idle(Duration::from_millis(600))
        .claim_interval(Duration::from_millis(100))
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
    /// Records, then never returns: the entry stays unacknowledged.
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

async fn pending_count(redis: &TestRedis, topic: &Topic, group: &str) -> i64 {
    let mut conn = redis.conn.clone();
    let reply: redis::Value = redis::cmd("XPENDING")
        .arg(format!("{}:{}", redis.prefix, topic))
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
async fn dead_consumer_entries_are_claimed_by_another_member() {
    let redis = fresh_prefix().await;
    let bus = RedisBus::connect(config(&redis)).await.unwrap();
    let (topic, group) = (topic(), Group::new("workers").unwrap());
    let dying = Seen::default();
    let options = SubscribeOptions::default().concurrency(8);
    let a = bus
        .subscribe(
            &topic,
            &group,
            dying.hanging(),
            options.clone().consumer("a"),
        )
        .await
        .unwrap();
    let events: Vec<Event> = (0..5).map(numbered).collect();
    bus.publish_batch(&topic, &events).await.unwrap();
    wait_until("consumer a holds all 5 entries", || dying.ids().len() == 5).await;
    a.abort();

    let other = RedisBus::connect(config(&redis)).await.unwrap();
    let survivor = Seen::default();
    let b = other
        .subscribe(&topic, &group, survivor.recording(), options.consumer("b"))
        .await
        .unwrap();
    let all: HashSet<String> = events.iter().map(|e| e.id().to_owned()).collect();
    wait_until("consumer b claimed and handled the 5 entries", || {
        survivor.ids() == all
    })
    .await;
    b.shutdown().await.unwrap();
    for (id, attempt, consumer) in survivor.all() {
        assert_eq!(consumer, "b");
        assert_eq!(
            attempt, 2,
            "{id}: the claim must count as the second delivery"
        );
    }
    assert_eq!(
        pending_count(&redis, &topic, "workers").await,
        0,
        "claimed entries were not acknowledged"
    );
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handler_is_kept_alive_and_not_stolen() {
    let redis = fresh_prefix().await;
    let bus = RedisBus::connect(config(&redis)).await.unwrap();
    let (topic, group) = (topic(), Group::new("workers").unwrap());
    let seen = Seen::default();
    let release = Arc::new(AtomicBool::new(false));
    let slow = {
        let (seen, release) = (seen.clone(), release.clone());
        Arc::new(handler_fn(move |event, ctx| {
            let (seen, release) = (seen.clone(), release.clone());
            async move {
                seen.0.lock().unwrap().push((
                    event.id().to_owned(),
                    ctx.attempt,
                    ctx.consumer.clone(),
                ));
                while !release.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(())
            }
        }))
    };
    // Prefetch 1: while its handler runs, `a` does not fetch (so its own claim passes cannot
    // refresh the entry); only the keep-alive does.
    let options = SubscribeOptions::default().concurrency(1).prefetch(1);
    let a = bus
        .subscribe(&topic, &group, slow, options.clone().consumer("a"))
        .await
        .unwrap();
    let event = numbered(1);
    bus.publish(&topic, &event).await.unwrap();
    wait_until("consumer a started the event", || !seen.ids().is_empty()).await;
    let other = Seen::default();
    let b = bus
        .subscribe(&topic, &group, other.recording(), options.consumer("b"))
        .await
        .unwrap();
    // Three claim timeouts: without keep-alive, b claims the entry long before this.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    release.store(true, Ordering::SeqCst);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    let calls = seen.all().len() + other.all().len();
    assert_eq!(
        calls,
        1,
        "a slow handler's entry was handled twice: a={:?} b={:?}",
        seen.all(),
        other.all()
    );
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_mid_stream_loses_nothing() {
    let redis = fresh_prefix().await;
    let bus = RedisBus::connect(config(&redis)).await.unwrap();
    let (topic, group) = (topic(), Group::new("g").unwrap());
    let seen = Seen::default();
    let sub = bus
        .subscribe(
            &topic,
            &group,
            seen.recording(),
            SubscribeOptions::default().consumer("c"),
        )
        .await
        .unwrap();
    let published = Arc::new(Mutex::new(HashSet::new()));
    let producer = {
        let (bus, topic, published) = (bus.clone(), topic.clone(), published.clone());
        tokio::spawn(async move {
            for n in 0..300 {
                let event = numbered(n);
                bus.publish(&topic, &event)
                    .await
                    .expect("publish retried across the kill");
                published.lock().unwrap().insert(event.id().to_owned());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut kills = 0;
    for threshold in [50, 120, 200] {
        wait_until("progress before the next kill", || {
            seen.ids().len() >= threshold
        })
        .await;
        kills += kill_clients(&redis, bus.client_name()).await;
    }
    assert!(
        kills >= 3,
        "CLIENT KILL found none of the bus's connections"
    );
    producer.await.unwrap();
    let all = published.lock().unwrap().clone();
    assert_eq!(all.len(), 300);
    wait_until("every published event is handled after the kills", || {
        seen.ids().is_superset(&all)
    })
    .await;
    sub.shutdown().await.unwrap();
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
async fn restart_with_same_consumer_name_rereads_pending_entries() {
    let redis = fresh_prefix().await;
    // Claims of idle entries far away: only the re-read by name can bring them back.
    let config = config(&redis).claim_idle(Duration::from_secs(600));
    let bus = RedisBus::connect(config.clone()).await.unwrap();
    let (topic, group) = (topic(), Group::new("g").unwrap());
    let first = Seen::default();
    let sub = bus
        .subscribe(
            &topic,
            &group,
            first.hanging(),
            SubscribeOptions::default().consumer("c1"),
        )
        .await
        .unwrap();
    let events: Vec<Event> = (0..3).map(numbered).collect();
    bus.publish_batch(&topic, &events).await.unwrap();
    wait_until("the first run holds the 3 entries", || {
        first.ids().len() == 3
    })
    .await;
    sub.abort();

    let restarted = RedisBus::connect(config).await.unwrap();
    let second = Seen::default();
    let sub = restarted
        .subscribe(
            &topic,
            &group,
            second.recording(),
            SubscribeOptions::default().consumer("c1"),
        )
        .await
        .unwrap();
    let all: HashSet<String> = events.iter().map(|e| e.id().to_owned()).collect();
    wait_until("the restarted consumer re-read its pending entries", || {
        second.ids() == all
    })
    .await;
    sub.shutdown().await.unwrap();
    assert!(
        second.all().iter().all(|(_, attempt, _)| *attempt == 2),
        "{:?}",
        second.all()
    );
    assert_eq!(pending_count(&redis, &topic, "g").await, 0);
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_that_kills_its_consumer_every_time_is_dead_lettered() {
    let redis = fresh_prefix().await;
    let config = config(&redis).claim_idle(Duration::from_secs(600));
    let (topic, group) = (topic(), Group::new("g").unwrap());
    let options = SubscribeOptions::default().consumer("crashy").retry(
        RetryPolicy::default()
            .with_max_attempts(2)
            .with_delays(Duration::from_millis(5), Duration::from_millis(5)),
    );
    let bus = RedisBus::connect(config.clone()).await.unwrap();
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
    assert_eq!(pending_count(&redis, &topic, "g").await, 0);
    redis.cleanup().await;
}
