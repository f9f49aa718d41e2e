//! Members of one group in separate processes (`windlass-bus-member`), each recording its
//! handler calls in one Redis list: order per key across processes, two processes with
//! default consumer names, kill -9 of a member mid-handler, and a member frozen (SIGSTOP) past
//! its lease. The history checker is the conformance suite's.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use windlass_eventbus::partition::{PartitionCount, partition_for_key};
use windlass_eventbus::redis::{RedisBus, RedisConfig};
use windlass_eventbus::{BusAdmin, DeadLetters, Event, Publisher, TenantScope, Topic};
use windlass_testkit::bus_member::{MemberProcess, MemberSpec, history, record};
use windlass_testkit::conformance::bus::{Step, Verdict, check, keyed};
use windlass_testkit::redis::{TestRedis, fresh_prefix};

const WAIT: Duration = Duration::from_secs(60);

async fn publisher(redis: &TestRedis) -> RedisBus {
    RedisBus::connect(
        RedisConfig::new(redis.url.clone())
            .prefix(redis.prefix.clone())
            .partitions(PartitionCount::new(4).unwrap()),
    )
    .await
    .unwrap()
}

async fn publish(bus: &RedisBus, topic: &Topic, keys: &[String], seqs: std::ops::Range<usize>) {
    for seq in seqs {
        let events: Vec<Event> = keys.iter().map(|k| keyed(k, seq)).collect();
        bus.publish_batch(topic, &events).await.unwrap();
    }
}

/// Distinct (key, seq) that ended.
fn distinct(steps: &[Step]) -> usize {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::End { key, seq, .. } => Some((key.clone(), *seq)),
            _ => None,
        })
        .collect::<std::collections::HashSet<_>>()
        .len()
}

async fn wait_history(
    redis: &TestRedis,
    key: &str,
    what: &str,
    mut cond: impl FnMut(&[Step]) -> bool,
) -> Vec<Step> {
    let mut conn = redis.conn.clone();
    let deadline = Instant::now() + WAIT;
    loop {
        let steps = history(&mut conn, key).await;
        if cond(&steps) {
            return steps;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[track_caller]
fn assert_clean(verdict: &Verdict) {
    assert!(
        verdict.violations.is_empty(),
        "{} violations, first ones: {:#?}",
        verdict.violations.len(),
        &verdict.violations[..verdict.violations.len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_with_default_consumer_names_never_handle_one_entry_at_once() {
    let redis = fresh_prefix().await;
    let topic = Topic::new("procs").unwrap();
    let keys: Vec<String> = (0..30).map(|k| format!("k{k}")).collect();
    const PER_KEY: usize = 10;
    let mut members = Vec::new();
    for name in ["p1", "p2"] {
        // No consumer name: each process picks its own default.
        members.push(MemberProcess::spawn(&MemberSpec::new(&redis, "procs", "g", name)).await);
    }
    let spec = MemberSpec::new(&redis, "procs", "g", "x");
    let bus = publisher(&redis).await;
    publish(&bus, &topic, &keys, 0..PER_KEY).await;
    let steps = wait_history(&redis, &spec.history, "every event is handled", |s| {
        distinct(s) >= keys.len() * PER_KEY
    })
    .await;
    // Their default consumer names differ: read while both are members (a leaving member
    // deletes its consumer from the group).
    let mut conn = redis.conn.clone();
    let mut names = std::collections::HashSet::new();
    for p in 0..4 {
        let rows: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(bus.stream_key(&topic, p))
            .arg("g")
            .query_async(&mut conn)
            .await
            .unwrap();
        for r in rows {
            names.insert(redis::from_redis_value::<String>(r["name"].clone()).unwrap());
        }
    }
    for m in members {
        m.leave().await;
    }
    let expected: HashMap<String, usize> = keys.iter().map(|k| (k.clone(), PER_KEY)).collect();
    let verdict = check(&steps, &expected, true);
    assert_clean(&verdict);
    assert_eq!(verdict.members().len(), 2, "both processes worked");
    assert!(
        names.len() >= 2,
        "one consumer name for two processes: {names:?}"
    );
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_member_mid_handler_keeps_order_across_the_other_processes() {
    let redis = fresh_prefix().await;
    let topic = Topic::new("killed").unwrap();
    let keys: Vec<String> = (0..50).map(|k| format!("k{k}")).collect();
    const PER_KEY: usize = 20;
    let mut members = Vec::new();
    for name in ["p1", "p2", "p3"] {
        let mut spec = MemberSpec::new(&redis, "killed", "g", name);
        spec.latency = Duration::from_millis(4);
        members.push(MemberProcess::spawn(&spec).await);
    }
    let history_key = MemberSpec::new(&redis, "killed", "g", "x").history;
    let bus = publisher(&redis).await;
    publish(&bus, &topic, &keys, 0..PER_KEY / 2).await;
    // Kill p1 while it is inside a handler.
    wait_history(&redis, &history_key, "p1 is mid-handler", |steps| {
        let mut open = 0i32;
        for s in steps {
            match s {
                Step::Start { member, .. } if member == "p1" => open += 1,
                Step::End { member, .. } if member == "p1" => open -= 1,
                _ => {}
            }
        }
        open > 0 && distinct(steps) > 100
    })
    .await;
    let mut victim = members.remove(0);
    victim.kill9().await;
    let mut conn = redis.conn.clone();
    record(
        &mut conn,
        &history_key,
        &Step::Gone {
            member: "p1".into(),
        },
    )
    .await;
    // What p1 had started and not ended when it died (the history up to its `Gone`).
    let open_at_kill: Vec<(String, usize)> = {
        let steps = history(&mut conn, &history_key).await;
        let mut open: HashMap<String, usize> = HashMap::new();
        for s in &steps {
            if matches!(s, Step::Gone { member } if member == "p1") {
                break;
            }
            match s {
                Step::Start { key, seq, member } if member == "p1" => {
                    open.insert(key.clone(), *seq);
                }
                Step::End { key, member, .. } if member == "p1" => {
                    open.remove(key);
                }
                _ => {}
            }
        }
        open.into_iter().collect()
    };
    publish(&bus, &topic, &keys, PER_KEY / 2..PER_KEY).await;
    let steps = wait_history(
        &redis,
        &history_key,
        "every event is handled after the kill",
        |s| distinct(s) >= keys.len() * PER_KEY,
    )
    .await;
    for m in members {
        m.leave().await;
    }
    let expected: HashMap<String, usize> = keys.iter().map(|k| (k.clone(), PER_KEY)).collect();
    let verdict = check(&steps, &expected, false);
    assert_clean(&verdict);
    // What p1 was running when killed ran again elsewhere.
    for (key, seq) in open_at_kill {
        let reruns = verdict.calls[&key]
            .iter()
            .filter(|(s, m)| *s == seq && m != "p1")
            .count();
        assert!(reruns >= 1, "{key}#{seq} was lost with the killed member");
    }
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_frozen_past_its_lease_cannot_dead_letter_and_its_entry_moves_on() {
    let redis = fresh_prefix().await;
    let topic = Topic::new("frozen").unwrap();
    let history_key = MemberSpec::new(&redis, "frozen", "g", "x").history;
    // The frozen member takes 600 ms over ("slow", 0) and then rejects it (a dead-letter
    // write); it is stopped meanwhile for three lease periods.
    let mut a = MemberSpec::new(&redis, "frozen", "g", "frozen");
    a.partitions = 1;
    a.lease = Duration::from_millis(1500);
    a.handler_timeout = Duration::from_millis(1000);
    a.slow = Some(("slow".into(), 0, Duration::from_millis(600)));
    a.slow_blocking = true;
    a.reject_slow = true;
    let frozen = MemberProcess::spawn(&a).await;
    let bus = RedisBus::connect(
        RedisConfig::new(redis.url.clone())
            .prefix(redis.prefix.clone())
            .partitions(PartitionCount::ONE),
    )
    .await
    .unwrap();
    bus.publish(&topic, &keyed("slow", 0)).await.unwrap();
    wait_history(
        &redis,
        &history_key,
        "the frozen member started the slow call",
        |s| {
            s.iter()
                .any(|s| matches!(s, Step::Start { member, .. } if member == "frozen"))
        },
    )
    .await;
    frozen.freeze();
    let mut conn = redis.conn.clone();
    // The documented exception: a member frozen past its lease while its handler runs; its
    // open call ends here as far as the order check goes.
    record(
        &mut conn,
        &history_key,
        &Step::Gone {
            member: "frozen".into(),
        },
    )
    .await;
    // The successor takes the partition once the frozen member's lease expired, and runs the
    // same event (slowly: it is still pending when the frozen member resumes).
    let mut b_spec = a.clone();
    b_spec.name = "successor".into();
    b_spec.slow = Some(("slow".into(), 0, Duration::from_millis(800)));
    b_spec.slow_blocking = false;
    b_spec.reject_slow = false;
    let successor = MemberProcess::spawn(&b_spec).await;
    bus.publish(&topic, &keyed("slow", 1)).await.unwrap();
    wait_history(
        &redis,
        &history_key,
        "the successor runs the frozen member's entry",
        |s| {
            s.iter()
                .any(|s| matches!(s, Step::Start { member, seq: 0, .. } if member == "successor"))
        },
    )
    .await;
    // Let the frozen member run again: its call goes on at once and rejects the event, a
    // dead-letter write its lost lease must refuse. It then rejoins the group.
    frozen.thaw();
    let deadline = Instant::now() + WAIT;
    while bus
        .topic_groups(&topic, &TenantScope::All)
        .await
        .unwrap()
        .first()
        .is_none_or(|g| g.members.len() < 2)
    {
        assert!(
            Instant::now() < deadline,
            "the resumed member never rejoined"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        bus.dead_letters(&topic, 10).await.unwrap().is_empty(),
        "a member that lost its lease wrote to the dead-letter queue"
    );
    bus.publish(&topic, &keyed("slow", 2)).await.unwrap();
    let steps = wait_history(
        &redis,
        &history_key,
        "the event after the thaw is handled",
        |s| {
            s.iter()
                .any(|s| matches!(s, Step::End { key, seq: 2, .. } if key == "slow"))
        },
    )
    .await;
    assert!(
        bus.dead_letters(&topic, 10).await.unwrap().is_empty(),
        "a member that lost its lease wrote to the dead-letter queue"
    );
    let expected: HashMap<String, usize> = [("slow".to_owned(), 3)].into();
    let verdict = check(&steps, &expected, false);
    assert_clean(&verdict);
    assert!(
        verdict.calls["slow"].contains(&(0, "successor".to_owned())),
        "the frozen member's entry was handled by its successor: {:?}",
        verdict.calls
    );
    assert_eq!(
        partition_for_key(b"slow", PartitionCount::ONE),
        0,
        "one partition"
    );
    successor.leave().await;
    frozen.leave().await;
    redis.cleanup().await;
}
