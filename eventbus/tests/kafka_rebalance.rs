//! The Kafka subscriber through rebalances and slow or hung handlers, on a real broker (tansu
//! started by the testkit harness, or `WINDLASS_KAFKA_BROKERS`). Every commit the group makes
//! is observed from outside, by a client reading the group's committed offsets every few
//! milliseconds (what the broker holds, which is what a new owner starts from).
#![cfg(feature = "kafka")]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use windlass_eventbus::kafka::{GroupTimeouts, KafkaBus, KafkaConfig};
use windlass_eventbus::partition::{PartitionCount, partition_for_key};
use windlass_eventbus::{
    Event, Group, HandlerError, Publisher, RetryPolicy, SubscribeOptions, Subscriber, Topic,
    handler_fn,
};
use windlass_testkit::conformance::bus::{History, check, keyed};
use windlass_testkit::kafka::fresh_topic_with;

const PARTITIONS: i32 = 3;

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "windlass_eventbus=info".into()),
        )
        .with_test_writer()
        .try_init();
}

fn bus(brokers: &str) -> KafkaBus {
    KafkaBus::new(KafkaConfig::new(brokers).group_timeouts(GroupTimeouts::tansu()))
        .expect("kafka bus")
}

fn group() -> Group {
    Group::new(format!("g-{}", uuid::Uuid::new_v4().simple())).unwrap()
}

/// Every committed offset seen per partition, in the order seen.
#[derive(Clone, Default)]
struct Commits(Arc<Mutex<BTreeMap<i32, Vec<i64>>>>);

impl Commits {
    /// Reads the group's committed offsets every 5 ms until `stop`, recording each change.
    fn watch(
        &self,
        brokers: &str,
        topic: &Topic,
        group: &Group,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group.as_str())
            .set("enable.auto.commit", "false")
            .create()
            .expect("a committed-offsets reader");
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(topic.as_str(), p);
        }
        let seen = self.0.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                if let Ok(list) = reader.committed_offsets(tpl.clone(), Duration::from_secs(2)) {
                    let mut seen = seen.lock().unwrap();
                    for e in list.elements() {
                        if let Offset::Offset(o) = e.offset() {
                            let v = seen.entry(e.partition()).or_default();
                            if v.last() != Some(&o) {
                                v.push(o);
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    }

    fn last(&self, partition: i32) -> Option<i64> {
        self.0
            .lock()
            .unwrap()
            .get(&partition)
            .and_then(|v| v.last().copied())
    }

    /// Panics when a partition's committed offset ever moved backwards.
    fn assert_monotonic(&self) {
        for (p, offsets) in self.0.lock().unwrap().iter() {
            for w in offsets.windows(2) {
                assert!(
                    w[1] >= w[0],
                    "the committed offset of partition {p} moved backwards: {offsets:?}"
                );
            }
        }
    }
}

/// The partition (murmur2, like the producer) a key lands on.
fn partition_of(key: &str) -> i32 {
    partition_for_key(
        key.as_bytes(),
        PartitionCount::new(PARTITIONS as u32).unwrap(),
    ) as i32
}

/// Per partition, how many records the keys put there.
fn per_partition(counts: &HashMap<String, usize>) -> BTreeMap<i32, i64> {
    let mut out = BTreeMap::new();
    for (k, n) in counts {
        *out.entry(partition_of(k)).or_default() += *n as i64;
    }
    out
}

/// Polls `f` until it holds (true) or `deadline` passes (false).
async fn wait_until(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while !f() {
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

async fn wait_for(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !f() {
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One member handles a slow stream of keyed events; a second member joins while keys are in
/// the middle of their sequences. The group rebalances with work in flight: the partitions
/// that move are revoked (their handlers finish, their offsets are committed) before the new
/// member gets them. From the recorded history: for every key, calls never overlap and follow
/// publish order across both members, each event exactly once; some key really moved between
/// members mid-sequence. From the observed commits: no committed offset ever went backwards,
/// and the group ends committed at the end of every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_rebalance_with_a_slow_handler_keeps_order_and_commits_move_forward() {
    init_logs();
    let k = fresh_topic_with(PARTITIONS).await;
    let g = group();
    let history = History::default();
    let commits = Commits::default();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = commits.watch(&k.brokers, &k.topic, &g, stop.clone());
    let keys: Vec<String> = (0..12).map(|i| format!("acct-{i}")).collect();
    const WAVES: usize = 60;
    let publisher = bus(&k.brokers);
    let member = |name: &str| {
        let options = SubscribeOptions::default()
            .concurrency(4)
            .consumer(name)
            .shutdown_timeout(Duration::from_secs(10));
        // Slow: 15-40 ms per call, so every partition has work in flight at any time.
        let handler = history.handler(name, |seq| {
            Duration::from_millis(15 + (seq as u64 * 7) % 26)
        });
        (options, handler)
    };
    let (o1, h1) = member("m1");
    let m1 = bus(&k.brokers)
        .subscribe(&k.topic, &g, h1, o1)
        .await
        .expect("m1 subscribes");
    let mut m2 = None;
    for wave in 0..WAVES {
        let events: Vec<Event> = keys.iter().map(|key| keyed(key, wave)).collect();
        publisher
            .publish_batch(&k.topic, &events)
            .await
            .expect("publish");
        if wave == 10 {
            // Joins mid-key: every key has handled some of its events and has more coming.
            let (o2, h2) = member("m2");
            let bus2 = bus(&k.brokers);
            let topic = k.topic.clone();
            let g2 = g.clone();
            m2 = Some(tokio::spawn(async move {
                bus2.subscribe(&topic, &g2, h2, o2)
                    .await
                    .expect("m2 subscribes")
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m2 = m2.unwrap().await.unwrap();
    wait_for("every event handled", Duration::from_secs(40), || {
        history.distinct() >= keys.len() * WAVES
    })
    .await;
    let expected: HashMap<String, usize> = keys.iter().map(|k| (k.clone(), WAVES)).collect();
    let ends = per_partition(&expected);
    let committed_all = wait_until(Duration::from_secs(20), || {
        ends.iter().all(|(p, end)| commits.last(*p) == Some(*end))
    })
    .await;
    assert!(
        committed_all,
        "the group did not commit the end of every partition: ends {ends:?}, commits seen {:?}",
        commits.0.lock().unwrap()
    );
    m1.shutdown().await.expect("m1 shuts down");
    m2.shutdown().await.expect("m2 shuts down");
    stop.store(true, Ordering::Release);
    watcher.join().unwrap();

    let verdict = check(&history.steps(), &expected, true);
    assert!(
        verdict.violations.is_empty(),
        "{} violations of order per key across the group, first ones: {:#?}",
        verdict.violations.len(),
        &verdict.violations[..verdict.violations.len().min(10)]
    );
    assert_eq!(verdict.duplicates(), 0, "an event was handled twice");
    // Some key was handled by m1 first and by m2 after the join: it moved mid-sequence.
    let moved: Vec<&String> = verdict
        .calls
        .iter()
        .filter(|(_, calls)| {
            calls.first().is_some_and(|(_, m)| m == "m1")
                && calls.last().is_some_and(|(_, m)| m == "m2")
        })
        .map(|(k, _)| k)
        .collect();
    assert!(
        !moved.is_empty(),
        "no key moved from m1 to m2 mid-sequence: {:?}",
        verdict.members()
    );
    commits.assert_monotonic();
    let seen = commits.0.lock().unwrap();
    assert!(
        seen.values().map(Vec::len).sum::<usize>() > PARTITIONS as usize,
        "too few commits observed to say anything: {seen:?}"
    );
}

/// One key's handler hangs (it never returns; the handler deadline drops it and the retry
/// hangs again). The other partitions keep committing to their end while the hung partition's
/// committed offset stays before the hung record; the hung partition keeps no more than its
/// bound of read-and-uncommitted records (it is paused, not polled less); dead-lettering
/// concurrent with acknowledgements never moves a committed offset backwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_a_hung_handler_does_not_stop_commits_of_other_partitions() {
    init_logs();
    let k = fresh_topic_with(PARTITIONS).await;
    let g = group();
    const BOUND: usize = 50;
    let consumer_bus = KafkaBus::new(
        KafkaConfig::new(&k.brokers)
            .group_timeouts(GroupTimeouts::tansu())
            .max_pending_per_partition(BOUND),
    )
    .unwrap();
    let commits = Commits::default();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = commits.watch(&k.brokers, &k.topic, &g, stop.clone());
    // The hung key, and keys on each partition.
    let keys_on = |p: i32| -> Vec<String> {
        (0..)
            .map(|i| format!("key-{i}"))
            .filter(|key| partition_of(key) == p)
            .take(4)
            .collect()
    };
    let stuck = keys_on(0);
    let hung_key = stuck[0].clone();
    // (partition, handled count after the hang began)
    let hung_started = Arc::new(AtomicBool::new(false));
    let handled: Arc<Mutex<BTreeMap<u32, usize>>> = Arc::default();
    let handler = {
        let (hung_key, hung_started, handled) =
            (hung_key.clone(), hung_started.clone(), handled.clone());
        handler_fn(move |event: Event, ctx| {
            let (hung_key, hung_started, handled) =
                (hung_key.clone(), hung_started.clone(), handled.clone());
            async move {
                let key = event.partition_key().unwrap_or_default().to_owned();
                let seq: usize = event
                    .data_as()
                    .map_err(HandlerError::reject)?
                    .unwrap_or_default();
                if key == hung_key && seq == 1 {
                    hung_started.store(true, Ordering::Release);
                    // Hangs, ignoring its cancellation token.
                    std::future::pending::<()>().await;
                }
                if hung_started.load(Ordering::Acquire) {
                    *handled
                        .lock()
                        .unwrap()
                        .entry(ctx.partition.unwrap_or(u32::MAX))
                        .or_default() += 1;
                }
                if key != hung_key && seq % 5 == 4 {
                    // Dead-lettered at once, concurrently with the acknowledgements.
                    return Err(HandlerError::reject("every fifth event is refused"));
                }
                Ok(())
            }
        })
    };
    let options = SubscribeOptions::default()
        .concurrency(8)
        .handler_timeout(Duration::from_millis(500))
        .retry(
            RetryPolicy::default()
                .with_max_attempts(10_000)
                .with_delays(Duration::from_millis(10), Duration::from_millis(20)),
        )
        .shutdown_timeout(Duration::from_secs(1));
    let sub = consumer_bus
        .subscribe(&k.topic, &g, Arc::new(handler), options)
        .await
        .expect("subscribe");
    let publisher = bus(&k.brokers);
    // The hung record first, then a stream on every partition.
    publisher
        .publish_batch(&k.topic, &[keyed(&hung_key, 0), keyed(&hung_key, 1)])
        .await
        .unwrap();
    wait_for("the handler hangs", Duration::from_secs(20), || {
        hung_started.load(Ordering::Acquire)
    })
    .await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    counts.insert(hung_key.clone(), 2);
    const PER_KEY: usize = 100;
    let all_keys: Vec<String> = stuck[1..]
        .iter()
        .cloned()
        .chain(keys_on(1))
        .chain(keys_on(2))
        .collect();
    for seq in 0..PER_KEY {
        let events: Vec<Event> = all_keys.iter().map(|key| keyed(key, seq)).collect();
        publisher.publish_batch(&k.topic, &events).await.unwrap();
    }
    for key in &all_keys {
        counts.insert(key.clone(), PER_KEY);
    }
    let ends = per_partition(&counts);
    let moved_on = wait_until(Duration::from_secs(30), || {
        commits.last(1) == Some(ends[&1]) && commits.last(2) == Some(ends[&2])
    })
    .await;
    assert!(
        moved_on,
        "partitions 1 and 2 did not commit to their end: ends {ends:?}, commits seen {:?}",
        commits.0.lock().unwrap()
    );
    // Give the hung partition time to show it would read on if it were not bounded.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let p0_handled = handled.lock().unwrap().get(&0).copied().unwrap_or(0);
    let p0_committed = commits.last(0);
    sub.shutdown().await.expect("shutdown");
    stop.store(true, Ordering::Release);
    watcher.join().unwrap();

    assert!(
        p0_committed.is_none_or(|c| c <= 1),
        "partition 0 committed past the hung record (offset 1): {p0_committed:?}"
    );
    // 300 records of other keys wait on partition 0; a paused partition reads about BOUND
    // (plus what was in flight when the pause took effect).
    let p0_total = (ends[&0] - 2) as usize;
    assert!(
        p0_handled <= BOUND * 2 && p0_handled < p0_total,
        "partition 0 handled {p0_handled} of its {p0_total} records behind the hung one: \
         its read-and-uncommitted records are not bounded by {BOUND}"
    );
    assert!(
        p0_handled > 0,
        "partition 0 made no progress on its other keys"
    );
    commits.assert_monotonic();
}

/// A handler deadline at or above the group's rebalance timeout is refused: a revoke waits up
/// to the handler deadline inside the rebalance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_a_handler_deadline_beyond_the_rebalance_timeout_is_refused() {
    let k = fresh_topic_with(1).await;
    let bus = bus(&k.brokers);
    let options = SubscribeOptions::default().handler_timeout(Duration::from_secs(6));
    let handler = Arc::new(handler_fn(|_e, _c| async { Ok(()) }));
    match bus.subscribe(&k.topic, &group(), handler, options).await {
        Err(windlass_eventbus::Error::Config(msg)) => {
            assert!(msg.contains("rebalance timeout"), "{msg}")
        }
        Err(e) => panic!("expected a config error, got {e}"),
        Ok(_) => panic!("a handler deadline of 6 s with a 6 s rebalance timeout was accepted"),
    }
}
