//! The operator API on Redis (what the console calls): groups with per-partition owner, lag,
//! pending count and oldest pending age; dead letters paged by key set over every partition,
//! tenant-scoped; redrive; delete; topic deletion without `KEYS`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use windlass_eventbus::partition::{PartitionCount, partition_for_key};
use windlass_eventbus::redis::{RedisBus, RedisConfig};
use windlass_eventbus::{
    BusAdmin, DeadLetters, Error, Event, Group, HandlerError, OrgId, Publisher, SubscribeOptions,
    Subscriber, TenantScope, Topic, handler_fn,
};
use windlass_testkit::conformance::bus::{keyed, wait_dead_letters, wait_until};
use windlass_testkit::redis::{TestRedis, fresh_prefix};

fn config(redis: &TestRedis) -> RedisConfig {
    RedisConfig::new(redis.url.clone())
        .prefix(redis.prefix.clone())
        .block(Duration::from_millis(200))
        .partitions(PartitionCount::new(4).unwrap())
}

fn org(o: &str) -> TenantScope {
    TenantScope::org(OrgId::new(o).unwrap())
}

fn tenant_event(org: &str, n: usize) -> Event {
    Event::builder("/t", "t")
        .org_id(org)
        .partition_key(format!("{org}-{n}"))
        .data_json(&n)
        .build()
        .unwrap()
}

async fn keys_under(redis: &TestRedis, pattern: &str) -> Vec<String> {
    let mut conn = redis.conn.clone();
    let mut out = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        out.extend(keys);
        if next == 0 {
            return out;
        }
        cursor = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_show_owner_lag_pending_and_oldest_pending_age_per_partition() {
    let redis = fresh_prefix().await;
    let bus = RedisBus::connect(config(&redis)).await.unwrap();
    let topic = Topic::new("orders").unwrap();
    // "audit" exists but nobody consumes: everything published is lag.
    bus.subscribe(
        &topic,
        &Group::new("audit").unwrap(),
        Arc::new(handler_fn(|_e, _c| async { Ok(()) })),
        SubscribeOptions::default(),
    )
    .await
    .unwrap()
    .shutdown()
    .await
    .unwrap();
    // "billing" holds every partition; its handler of key "stuck" never returns.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let handler = {
        let gate = gate.clone();
        handler_fn(move |e: Event, _c| {
            let gate = gate.clone();
            async move {
                if e.partition_key() == Some("stuck") {
                    let _ = gate.acquire().await;
                }
                Ok(())
            }
        })
    };
    let sub = bus
        .subscribe(
            &topic,
            &Group::new("billing").unwrap(),
            Arc::new(handler),
            SubscribeOptions::default().consumer("worker"),
        )
        .await
        .unwrap();
    let stuck = partition_for_key(b"stuck", PartitionCount::new(4).unwrap());
    bus.publish(&topic, &keyed("stuck", 0)).await.unwrap();
    let others: Vec<Event> = (0..9).map(|n| keyed(&format!("free-{n}"), n)).collect();
    bus.publish_batch(&topic, &others).await.unwrap();
    let groups = loop {
        let groups = bus.topic_groups(&topic, &TenantScope::All).await.unwrap();
        let billing = &groups[1];
        let settled = billing.partitions.iter().map(|p| p.pending).sum::<u64>() == 1
            && billing.partitions.iter().all(|p| p.owner.is_some());
        if settled {
            break groups;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        groups.iter().map(|g| g.group.as_str()).collect::<Vec<_>>(),
        ["audit", "billing"]
    );
    let audit = &groups[0];
    assert!(audit.members.is_empty(), "{audit:?}");
    assert!(audit.partitions.iter().all(|p| p.owner.is_none()));
    assert_eq!(
        audit
            .partitions
            .iter()
            .map(|p| p.lag.unwrap_or(0))
            .sum::<u64>(),
        10
    );
    assert!(audit.partitions.iter().all(|p| p.pending == 0));
    let billing = &groups[1];
    assert_eq!(billing.members.len(), 1);
    assert!(
        billing.members[0].starts_with("worker~"),
        "{:?}",
        billing.members
    );
    assert_eq!(billing.partitions.len(), 4);
    for p in &billing.partitions {
        assert_eq!(p.owner.as_deref(), Some(billing.members[0].as_str()));
        assert!(p.epoch >= 1);
        assert_eq!(p.lag, Some(0), "partition {}", p.partition);
        if p.partition == stuck {
            assert_eq!(p.pending, 1);
            assert!(p.oldest_pending_age.is_some());
        } else {
            assert_eq!(p.pending, 0);
            assert_eq!(p.oldest_pending_age, None);
        }
    }
    assert!(matches!(
        bus.topic_groups(&topic, &org("acme")).await,
        Err(Error::TenantScope(_))
    ));
    gate.add_permits(1);
    sub.shutdown().await.unwrap();
    redis.cleanup().await;
}

/// Rejects every event: each becomes a dead letter.
async fn dead_letters_of(bus: &RedisBus, topic: &Topic, events: &[Event]) {
    let sub = bus
        .subscribe(
            topic,
            &Group::new("g").unwrap(),
            Arc::new(handler_fn(|_e, _c| async {
                Err(HandlerError::reject("refused"))
            })),
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    bus.publish_batch(topic, events).await.unwrap();
    wait_dead_letters(bus, topic, events.len()).await;
    sub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_pages_walk_every_partition_once_in_order_within_the_scope() {
    let redis = fresh_prefix().await;
    let bus = RedisBus::connect(config(&redis)).await.unwrap();
    let topic = Topic::new("refunds").unwrap();
    let events: Vec<Event> = (0..30)
        .map(|n| tenant_event(if n % 3 == 0 { "globex" } else { "acme" }, n))
        .collect();
    dead_letters_of(&bus, &topic, &events).await;
    // Pages of 7 over everything.
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = bus
            .dead_letter_page(&topic, &TenantScope::All, after.as_deref(), 7)
            .await
            .unwrap();
        assert!(page.letters.len() <= 7);
        ids.extend(page.letters.iter().map(|l| l.id.clone()));
        for l in &page.letters {
            assert!(l.entry_id.is_some() && l.partition.is_some() && !l.consumer.is_empty());
            assert_eq!(l.error, "rejected by handler: refused");
        }
        pages += 1;
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(ids.len(), 30, "{ids:?}");
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        30,
        "no dead letter twice"
    );
    assert!(pages >= 5);
    // Oldest first across partitions: the stream ids (ms-seq) never go back.
    let times: Vec<(u64, u64)> = ids
        .iter()
        .map(|id| {
            let (ms, seq) = id.split_once('/').unwrap().1.split_once('-').unwrap();
            (ms.parse().unwrap(), seq.parse().unwrap())
        })
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    // One tenant's pages hold only its dead letters, all of them.
    let mut acme = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = bus
            .dead_letter_page(&topic, &org("acme"), after.as_deref(), 4)
            .await
            .unwrap();
        acme.extend(page.letters);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(acme.len(), 20);
    assert!(acme.iter().all(|l| l.org_id() == Some("acme")));
    // A position the list never returned is refused, not read as "from the start".
    for bad in ["0-0", "x@1", "1-x@0", "garbage"] {
        let err = bus
            .dead_letter_page(&topic, &TenantScope::All, Some(bad), 7)
            .await
            .unwrap_err();
        assert!(
            matches!(err, windlass_eventbus::Error::InvalidCursor(ref c) if c == bad),
            "{bad}: {err}"
        );
    }
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_appends_the_event_to_its_partition_and_removes_the_dead_letter() {
    let redis = fresh_prefix().await;
    let bus = RedisBus::connect(config(&redis)).await.unwrap();
    let topic = Topic::new("invoices").unwrap();
    let events: Vec<Event> = (0..4)
        .map(|n| tenant_event(if n < 3 { "acme" } else { "globex" }, n))
        .collect();
    dead_letters_of(&bus, &topic, &events).await;
    let letters = bus.dead_letters(&topic, 10).await.unwrap();
    let id_of = |org: &str| -> Vec<String> {
        letters
            .iter()
            .filter(|l| l.org_id() == Some(org))
            .map(|l| l.id.clone())
            .collect()
    };
    let (acme, globex) = (id_of("acme"), id_of("globex"));
    // A tenant cannot touch another tenant's dead letter.
    let r = bus.redrive(&topic, &org("acme"), &globex).await.unwrap();
    assert_eq!(r.unknown, globex);
    assert!(
        !bus.delete_dead_letter(&topic, &org("acme"), &globex[0])
            .await
            .unwrap()
    );
    // Redrive two of acme's (plus an unknown id); delete the third.
    let mut ask = acme[..2].to_vec();
    ask.push("0/1-1".to_owned());
    let r = bus.redrive(&topic, &org("acme"), &ask).await.unwrap();
    assert_eq!(r.redriven, acme[..2].to_vec());
    assert_eq!(r.unknown, vec!["0/1-1".to_owned()]);
    assert!(
        bus.delete_dead_letter(&topic, &org("acme"), &acme[2])
            .await
            .unwrap()
    );
    assert!(
        !bus.delete_dead_letter(&topic, &org("acme"), &acme[2])
            .await
            .unwrap()
    );
    let left = bus.dead_letters(&topic, 10).await.unwrap();
    assert_eq!(
        left.iter().map(|l| l.id.clone()).collect::<Vec<_>>(),
        globex
    );
    // The redriven events are consumed again, from their own partitions.
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let h = {
        let seen = seen.clone();
        handler_fn(move |e: Event, c| {
            let seen = seen.clone();
            async move {
                let expected = partition_for_key(
                    e.partition_key().unwrap().as_bytes(),
                    PartitionCount::new(4).unwrap(),
                );
                assert_eq!(c.partition, Some(expected));
                seen.lock().unwrap().insert(e.id().to_owned());
                Ok(())
            }
        })
    };
    let sub = bus
        .subscribe(
            &topic,
            &Group::new("g").unwrap(),
            Arc::new(h),
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    let redriven: HashSet<String> = letters
        .iter()
        .filter(|l| acme[..2].contains(&l.id))
        .map(|l| l.event.as_ref().unwrap().id().to_owned())
        .collect();
    assert_eq!(redriven.len(), 2);
    wait_until("the redriven events are handled", || {
        *seen.lock().unwrap() == redriven
    })
    .await;
    sub.shutdown().await.unwrap();
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_topic_removes_its_partitions_groups_leases_members_and_dead_letters() {
    let redis = fresh_prefix().await;
    let bus = RedisBus::connect(config(&redis)).await.unwrap();
    let (doomed, kept) = (Topic::new("doomed").unwrap(), Topic::new("kept").unwrap());
    for topic in [&doomed, &kept] {
        dead_letters_of(&bus, topic, &[keyed("a", 1), keyed("b", 2)]).await;
        bus.publish(topic, &keyed("c", 3)).await.unwrap();
    }
    let before = keys_under(&redis, &format!("{}:{{doomed*", redis.prefix)).await;
    assert!(before.len() >= 6, "{before:?}");
    assert!(matches!(
        bus.delete_topic(&doomed, &org("acme")).await,
        Err(Error::TenantScope(_))
    ));
    bus.delete_topic(&doomed, &TenantScope::All).await.unwrap();
    let after = keys_under(&redis, &format!("{}:{{doomed*", redis.prefix)).await;
    assert!(after.is_empty(), "left behind: {after:?}");
    assert_eq!(bus.topic_len(&kept).await.unwrap(), 3);
    assert_eq!(bus.dead_letters(&kept, 10).await.unwrap().len(), 2);
    assert!(
        bus.topic_groups(&doomed, &TenantScope::All)
            .await
            .unwrap()
            .is_empty()
    );
    redis.cleanup().await;
}
