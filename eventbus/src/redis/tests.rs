//! The fences, driven directly against a real Redis: a member whose lease was taken over can
//! neither read, acknowledge, dead-letter, hand back, renew nor release, and its successor
//! gets its pending entries in order.

use std::time::Duration;

use redis::Value;
use windlass_core::Topic;

use super::subscriber::bare_member;
use super::{RedisBus, RedisConfig};
use crate::error::Error;
use crate::event::Event;
use crate::membership::Coordinator;
use crate::partition::PartitionCount;
use crate::runner::{Assignment, Transport};
use crate::traits::{DeadLetters, Publisher, StartFrom};

fn event(seq: usize) -> Event {
    Event::builder("/t", "t")
        .partition_key("k")
        .data_json(&seq)
        .build()
        .unwrap()
}

async fn pending(bus: &RedisBus, topic: &Topic) -> i64 {
    let mut cmd = redis::cmd("XPENDING");
    cmd.arg(bus.stream_key(topic, 0)).arg("g");
    let reply: Value = bus.inner.conn.query("test", &cmd).await.unwrap();
    match reply {
        Value::Array(parts) => match parts.first() {
            Some(Value::Int(n)) => *n,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_lease_was_taken_over_can_write_nothing() {
    let redis = windlass_testkit::redis::fresh_prefix().await;
    let bus = RedisBus::connect(
        RedisConfig::new(redis.url.clone())
            .prefix(redis.prefix.clone())
            .partitions(PartitionCount::ONE)
            .block(Duration::from_millis(100))
            .lease_ttl(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let topic = Topic::new("fenced").unwrap();
    bus.ensure_group(&topic, "g", PartitionCount::ONE, StartFrom::Earliest)
        .await
        .unwrap();
    for seq in 0..3 {
        bus.publish(&topic, &event(seq)).await.unwrap();
    }
    let (coord_a, a) = bare_member(&bus, &topic, "g", "a");
    let (coord_b, b) = bare_member(&bus, &topic, "g", "b");
    let epoch_a = coord_a.acquire(0).await.unwrap().expect("a free lease");
    assert_eq!(coord_b.acquire(0).await.unwrap(), None, "a holds it");
    let held_a = Assignment::new(0, epoch_a);
    a.holdings.add(held_a);
    let mut got = a.fetch(10).await.unwrap();
    assert_eq!(got.len(), 3);
    // A stops renewing (frozen): its lease expires and B takes the partition.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let epoch_b = coord_b.acquire(0).await.unwrap().expect("an expired lease");
    assert!(epoch_b > epoch_a);
    // Every write of A is refused.
    let last = got.pop().unwrap();
    let first = got.remove(0);
    let ack = a.ack(std::slice::from_ref(&first.token)).await;
    assert!(
        matches!(ack, Err(Error::LeaseLost { partition: 0 })),
        "{ack:?}"
    );
    let dead = a.dead_letter(&last, "should not land").await;
    assert!(
        matches!(dead, Err(Error::LeaseLost { partition: 0 })),
        "{dead:?}"
    );
    assert!(bus.dead_letters(&topic, 10).await.unwrap().is_empty());
    assert_eq!(pending(&bus, &topic).await, 3, "nothing was acknowledged");
    assert!(a.fetch(10).await.unwrap().is_empty(), "nor read");
    assert_eq!(coord_a.renew(&[held_a]).await.unwrap(), vec![false]);
    coord_a.release(held_a, Vec::new()).await.unwrap();
    let mut cmd = redis::cmd("HGET");
    cmd.arg(bus.inner.keys.lease("fenced", 0, "g")).arg("owner");
    let owner: String = bus.inner.conn.query("test", &cmd).await.unwrap();
    assert_eq!(
        owner, coord_b.member,
        "a stale release must not free the new owner's lease"
    );
    // B first gets A's pending entries, in order, as second deliveries.
    b.holdings.add(Assignment::new(0, epoch_b));
    let redelivered = b.fetch(10).await.unwrap();
    let seqs: Vec<usize> = redelivered
        .iter()
        .map(|d| d.payload.as_ref().unwrap().data_as().unwrap().unwrap())
        .collect();
    assert_eq!(seqs, vec![0, 1, 2]);
    assert!(redelivered.iter().all(|d| d.delivery_count == 2));
    let tokens: Vec<_> = redelivered.into_iter().map(|d| d.token).collect();
    b.ack(&tokens).await.unwrap();
    assert_eq!(pending(&bus, &topic).await, 0);
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_handed_back_unstarted_keep_their_delivery_count() {
    let redis = windlass_testkit::redis::fresh_prefix().await;
    let bus = RedisBus::connect(
        RedisConfig::new(redis.url.clone())
            .prefix(redis.prefix.clone())
            .partitions(PartitionCount::ONE),
    )
    .await
    .unwrap();
    let topic = Topic::new("handback").unwrap();
    bus.ensure_group(&topic, "g", PartitionCount::ONE, StartFrom::Earliest)
        .await
        .unwrap();
    bus.publish(&topic, &event(0)).await.unwrap();
    let (coord_a, a) = bare_member(&bus, &topic, "g", "a");
    let epoch = coord_a.acquire(0).await.unwrap().unwrap();
    let held = Assignment::new(0, epoch);
    a.holdings.add(held);
    let got = a.fetch(10).await.unwrap();
    assert_eq!(got[0].delivery_count, 1);
    let tokens: Vec<_> = got.into_iter().map(|d| d.token).collect();
    coord_a.release(held, tokens).await.unwrap();
    let (coord_b, b) = bare_member(&bus, &topic, "g", "b");
    let epoch = coord_b.acquire(0).await.unwrap().expect("released");
    b.holdings.add(Assignment::new(0, epoch));
    let again = b.fetch(10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].delivery_count, 1,
        "an entry that never started is not counted as an attempt"
    );
    redis.cleanup().await;
}
