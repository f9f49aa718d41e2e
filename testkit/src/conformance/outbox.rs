//! The outbox store conformance suite: one `pub async fn` per property of the outbox
//! (DESIGN.md section 4, docs/outbox.md), generic over an [`OutboxFixture`], run by the
//! Postgres and SQLite test files with one line each:
//!
//! ```text
//! windlass_testkit::outbox_conformance!(windlass_testkit::outbox::PgFixture);
//! ```
//!
//! Properties are observed the way a user observes them: what the bus got (a [`Recorder`]),
//! what the operator API says, how many rows the tables hold. Every wait polls its condition
//! with a deadline.

use std::collections::HashSet;
use std::time::Duration;

use windlass_core::{OrgId, RetryPolicy, TenantScope};
use windlass_eventbus::{Event, Topic};
use windlass_outbox::{
    ClaimRequest, DeadFilter, DeadPolicy, Destination, OutboxAdmin, OutboxConfig,
    OutboxMaintenance, OutboxStore, Relay, RelayOptions, Settlement,
};

use crate::outbox::{
    OutboxFixture, Recorder, assert_per_key_order, event, eventually, n_of, tenant_event,
};

/// Generates one `#[tokio::test]` per property for a fixture type.
#[macro_export]
macro_rules! outbox_conformance {
    ($fixture:ty) => {
        $crate::outbox_conformance!(@each $fixture;
            committed_events_are_published_as_enqueued_rolled_back_ones_never,
            per_key_order_holds_with_three_relays_and_concurrent_writers,
            an_outage_backs_off_without_dead_rows_and_keeps_order,
            a_rejected_head_blocks_its_key_until_requeued_in_order,
            skip_policy_lets_a_key_go_on_past_a_dead_row,
            operator_skip_unblocks_a_key,
            a_partial_batch_failure_republishes_in_order,
            an_undecodable_row_is_dead_and_blocks_only_its_key,
            destinations_have_independent_delivery_state,
            an_expired_lease_fences_the_old_claim,
            operator_api_is_tenant_scoped_and_pages_by_key,
            a_tenant_flood_does_not_delay_other_tenants,
            maintenance_has_one_leader_and_deletes_only_what_is_old_and_done,
            a_running_relay_elects_a_leader_and_exports_counters,
        );
    };
    (@each $fixture:ty; $($property:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $property() {
                $crate::conformance::outbox::$property::<$fixture>().await;
            }
        )*
    };
}

/// Relay options for tests: short polls and backoffs, no maintenance unless asked.
pub fn fast_options() -> RelayOptions {
    RelayOptions::default()
        .poll_interval(Duration::from_millis(50))
        .min_poll(Duration::from_millis(5))
        .retry(
            RetryPolicy::default()
                .with_delays(Duration::from_millis(20), Duration::from_millis(200))
                .with_jitter(0.0),
        )
        .publish_timeout(Duration::from_secs(2))
        .lease(Duration::from_secs(10))
        .maintenance(false)
}

fn topic(name: &str) -> Topic {
    Topic::new(name).unwrap()
}

fn dest(name: &str) -> Destination {
    Destination::new(name).unwrap()
}

const DRAIN: Duration = Duration::from_secs(30);

/// Commit publishes, rollback never does; the bus gets the bytes the caller enqueued.
pub async fn committed_events_are_published_as_enqueued_rolled_back_ones_never<F: OutboxFixture>() {
    let f = F::setup().await;
    let t = topic("orders");
    f.enqueue_rolled_back(&t, &event("a", 1)).await;
    // Keys out of order and odd spacing in the data: jsonb would reorder them.
    let kept = Event::builder("/test", "thing.happened")
        .partition_key("a")
        .data_raw_json(r#"{"z": 1, "a": [2, 1], "m": "\u00e9\u0000"}"#)
        .build()
        .unwrap();
    let enqueued_json = kept.to_json();
    f.enqueue(&t, std::slice::from_ref(&kept)).await;
    let rec = Recorder::new();
    let relay = Relay::new(f.store(), rec.clone()).with_options(fast_options());
    relay.drain(DRAIN).await.unwrap();
    let got = rec.published();
    assert_eq!(got.len(), 1, "only the committed event");
    assert_eq!(got[0].topic, "orders");
    assert_eq!(
        got[0].json, enqueued_json,
        "the bus carries the enqueued bytes"
    );
    assert_eq!(
        f.delivery_rows().await,
        0,
        "delivered rows leave the delivery table"
    );
    assert_eq!(f.event_rows().await, 1, "the event stays until retention");
}

/// Three relays and four writers at once, hot keys: every event once, per key in order.
pub async fn per_key_order_holds_with_three_relays_and_concurrent_writers<F: OutboxFixture>() {
    let f = std::sync::Arc::new(F::setup().await);
    let rec = Recorder::new();
    let mut relays = Vec::new();
    for _ in 0..3 {
        let store = f.other_store().await;
        relays.push(
            Relay::new(store, rec.clone())
                .with_options(fast_options().batch_size(25))
                .spawn(),
        );
    }
    let t = topic("things");
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let f = f.clone();
        let t = t.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..25u64 {
                // Five hot keys per writer, one event of each per transaction.
                let events: Vec<Event> = (0..5).map(|k| event(&format!("w{w}-k{k}"), i)).collect();
                f.enqueue(&t, &events).await;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    eventually(60, "500 events published", || async {
        rec.distinct().len() >= 500
    })
    .await;
    for r in relays {
        r.shutdown().await;
    }
    let per_key = assert_per_key_order(&rec.published());
    assert_eq!(per_key.len(), 20);
    for (key, ns) in per_key {
        assert_eq!(ns, (0..25).collect::<Vec<_>>(), "key {key}");
    }
    assert_eq!(
        rec.count(),
        500,
        "no duplicates without a crash or lease expiry"
    );
}

/// The bus is down for a while: keys back off, nothing goes dead, order is kept after.
pub async fn an_outage_backs_off_without_dead_rows_and_keeps_order<F: OutboxFixture>() {
    let f = F::setup().await;
    let store = f.store();
    let rec = Recorder::new();
    rec.set_down(true);
    // A one-attempt policy: if transient failures counted, everything would die at once.
    let opts = fast_options().retry(
        RetryPolicy::default()
            .with_delays(Duration::from_millis(20), Duration::from_millis(100))
            .with_max_attempts(1)
            .with_jitter(0.0),
    );
    let relay = Relay::new(store.clone(), rec.clone())
        .with_options(opts.clone())
        .spawn();
    let events: Vec<Event> = (1..=20).map(|n| event(&format!("k{}", n % 4), n)).collect();
    f.enqueue(&topic("things"), &events).await;
    eventually(30, "publishes attempted while the bus is down", || async {
        rec.calls() >= 10
    })
    .await;
    store.refresh_stats().await.unwrap();
    let s = store.stats(&TenantScope::All).await.unwrap();
    assert_eq!((s.pending(), s.dead()), (20, 0), "{s:?}");
    rec.set_down(false);
    eventually(30, "all published after recovery", || async {
        rec.distinct().len() == 20
    })
    .await;
    relay.shutdown().await;
    let per_key = assert_per_key_order(&rec.published());
    assert_eq!(per_key["k1"], vec![1, 5, 9, 13, 17]);
    let dead = store
        .list_dead(&TenantScope::All, &DeadFilter::default(), None, 10)
        .await
        .unwrap();
    assert!(dead.items.is_empty());
}

/// A head the bus rejects is dead; its key waits (block policy) and shows as blocked;
/// a requeue publishes it and then the rows behind it, in order.
pub async fn a_rejected_head_blocks_its_key_until_requeued_in_order<F: OutboxFixture>() {
    let f = F::setup().await;
    let store = f.store();
    let t = topic("things");
    let a: Vec<Event> = (1..=3).map(|n| event("a", n)).collect();
    let b: Vec<Event> = (1..=2).map(|n| event("b", n)).collect();
    f.enqueue(
        &t,
        &[
            a[0].clone(),
            b[0].clone(),
            a[1].clone(),
            b[1].clone(),
            a[2].clone(),
        ],
    )
    .await;
    let rec = Recorder::new();
    rec.reject(a[0].id(), true);
    let relay = Relay::new(store.clone(), rec.clone()).with_options(fast_options());
    // Key a stays pending behind its dead head: draining cannot finish.
    assert!(relay.drain(Duration::from_secs(2)).await.is_err());
    assert_eq!(rec.distinct().len(), 2, "only key b went out");
    let all = TenantScope::All;
    let dead = store
        .list_dead(&all, &DeadFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(dead.items.len(), 1);
    assert!(
        dead.items[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("over the limit"),
        "{:?}",
        dead.items[0].last_error
    );
    let blocked = store
        .blocked_keys(&all, &DeadFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(blocked.items.len(), 1);
    assert_eq!(blocked.items[0].partition_key, "a");
    assert_eq!(blocked.items[0].waiting, 2);
    store.refresh_stats().await.unwrap();
    let s = store.stats(&all).await.unwrap();
    assert_eq!(
        (s.pending(), s.dead(), s.blocked_keys()),
        (2, 1, 1),
        "{s:?}"
    );

    rec.reject(a[0].id(), false);
    assert_eq!(
        store
            .requeue(&all, &[dead.items[0].delivery.clone()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .requeue(&all, &[dead.items[0].delivery.clone()])
            .await
            .unwrap(),
        0,
        "no longer dead"
    );
    relay.drain(DRAIN).await.unwrap();
    let per_key = assert_per_key_order(&rec.published());
    assert_eq!(per_key["a"], vec![1, 2, 3], "requeue keeps order");
}

/// Under the skip policy a dead row does not hold its key back.
pub async fn skip_policy_lets_a_key_go_on_past_a_dead_row<F: OutboxFixture>() {
    let f = F::setup_with(OutboxConfig::default().dead_policy(DeadPolicy::Skip)).await;
    let store = f.store();
    let a: Vec<Event> = (1..=3).map(|n| event("a", n)).collect();
    f.enqueue(&topic("things"), &a).await;
    let rec = Recorder::new();
    rec.reject(a[0].id(), true);
    let relay = Relay::new(store.clone(), rec.clone()).with_options(fast_options());
    relay.drain(DRAIN).await.unwrap();
    let per_key = assert_per_key_order(&rec.published());
    assert_eq!(per_key["a"], vec![2, 3]);
    let all = TenantScope::All;
    let dead = store
        .list_dead(&all, &DeadFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(dead.items.len(), 1);
    let blocked = store
        .blocked_keys(&all, &DeadFilter::default(), None, 10)
        .await
        .unwrap();
    assert!(blocked.items.is_empty());
}

/// An operator skips a dead head: its key goes on; the skipped row is no longer dead.
pub async fn operator_skip_unblocks_a_key<F: OutboxFixture>() {
    let f = F::setup().await;
    let store = f.store();
    let a: Vec<Event> = (1..=3).map(|n| event("a", n)).collect();
    f.enqueue(&topic("things"), &a).await;
    let rec = Recorder::new();
    rec.reject(a[0].id(), true);
    let relay = Relay::new(store.clone(), rec.clone()).with_options(fast_options());
    assert!(relay.drain(Duration::from_secs(2)).await.is_err());
    assert_eq!(rec.count(), 0);
    let all = TenantScope::All;
    let filter = DeadFilter::default()
        .destination(dest("default"))
        .topic("things");
    assert_eq!(store.skip_all(&all, &filter).await.unwrap(), 1);
    assert_eq!(store.skip_all(&all, &filter).await.unwrap(), 0);
    relay.drain(DRAIN).await.unwrap();
    let per_key = assert_per_key_order(&rec.published());
    assert_eq!(per_key["a"], vec![2, 3]);
    let dead = store
        .list_dead(&all, &DeadFilter::default(), None, 10)
        .await
        .unwrap();
    assert!(dead.items.is_empty());
}

/// A batch that fails after a prefix went out: the relay republishes from the head, in
/// order; everything arrives.
pub async fn a_partial_batch_failure_republishes_in_order<F: OutboxFixture>() {
    let f = F::setup().await;
    let events: Vec<Event> = (1..=10).map(|n| event(&format!("k{}", n % 2), n)).collect();
    f.enqueue(&topic("things"), &events).await;
    let rec = Recorder::new();
    rec.fail_batches_after(Some(3));
    let relay = Relay::new(f.store(), rec.clone()).with_options(fast_options());
    relay.drain(DRAIN).await.unwrap();
    assert_eq!(rec.distinct().len(), 10);
    let per_key = assert_per_key_order(&rec.published());
    assert_eq!(per_key["k1"], vec![1, 3, 5, 7, 9]);
    assert_eq!(per_key["k0"], vec![2, 4, 6, 8, 10]);
}

/// A stored row that does not decode is dead at once and blocks its own key only.
pub async fn an_undecodable_row_is_dead_and_blocks_only_its_key<F: OutboxFixture>() {
    let f = F::setup().await;
    let store = f.store();
    f.insert_garbage("things", "g").await;
    f.enqueue(&topic("things"), &[event("g", 2), event("h", 1)])
        .await;
    let rec = Recorder::new();
    let relay = Relay::new(store.clone(), rec.clone()).with_options(fast_options());
    assert!(relay.drain(Duration::from_secs(2)).await.is_err());
    let per_key = assert_per_key_order(&rec.published());
    assert_eq!(per_key.get("h"), Some(&vec![1]));
    assert!(!per_key.contains_key("g"), "g waits behind its dead head");
    let dead = store
        .list_dead(&TenantScope::All, &DeadFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(dead.items.len(), 1);
    assert!(
        dead.items[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("does not decode")
    );
}

/// Two destinations: one's outage delays only it; an event is done (and may be deleted by
/// retention) only when every destination it was routed to has it.
pub async fn destinations_have_independent_delivery_state<F: OutboxFixture>() {
    let f =
        F::setup_with(OutboxConfig::default().destinations([dest("redis"), dest("kafka")])).await;
    let t = topic("orders");
    let events: Vec<Event> = (1..=10).map(|n| event(&format!("k{}", n % 3), n)).collect();
    f.enqueue(&t, &events).await;
    f.enqueue_to(&t, &[event("only-kafka", 1)], &[dest("kafka")])
        .await;
    let (redis, kafka) = (Recorder::new(), Recorder::new());
    kafka.set_down(true);
    let store = f.store();
    let to_redis = Relay::new(store.clone(), redis.clone())
        .with_options(fast_options().destination(dest("redis")));
    let to_kafka = Relay::new(store.clone(), kafka.clone())
        .with_options(fast_options().destination(dest("kafka")))
        .spawn();
    to_redis.drain(DRAIN).await.unwrap();
    assert_eq!(
        redis.distinct().len(),
        10,
        "redis unaffected by kafka's outage"
    );
    assert_eq!(kafka.count(), 0);
    store.refresh_stats().await.unwrap();
    let s = store.stats(&TenantScope::All).await.unwrap();
    let kafka_pending: u64 = s
        .topics
        .iter()
        .filter(|t| t.destination == "kafka")
        .map(|t| t.pending)
        .sum();
    assert_eq!(kafka_pending, 11, "{s:?}");
    assert!(
        s.topics
            .iter()
            .all(|t| t.destination != "redis" || t.pending == 0)
    );
    f.backdate(10 * 86_400).await;
    assert_eq!(
        store
            .delete_delivered_before(Duration::from_secs(86_400), 100)
            .await
            .unwrap(),
        0,
        "not done until kafka has them"
    );
    kafka.set_down(false);
    eventually(30, "kafka catches up", || async {
        kafka.distinct().len() == 11
    })
    .await;
    to_kafka.shutdown().await;
    assert_per_key_order(&kafka.published());
    assert_per_key_order(&redis.published());
    assert!(redis.ids().iter().all(|id| kafka.distinct().contains(id)));
    assert_eq!(
        store
            .delete_delivered_before(Duration::from_secs(86_400), 100)
            .await
            .unwrap(),
        11
    );
    assert_eq!(f.event_rows().await, 0);
}

/// A claim whose lease expired cannot mark rows another relay claimed since.
pub async fn an_expired_lease_fences_the_old_claim<F: OutboxFixture>() {
    let f = F::setup().await;
    f.enqueue(
        &topic("things"),
        &[event("a", 1), event("a", 2), event("b", 1)],
    )
    .await;
    let (s1, s2) = (f.store(), f.other_store().await);
    let short = ClaimRequest::new(dest("default"), 10, Duration::from_millis(300));
    let c1 = s1.claim(&short).await.unwrap();
    assert_eq!(c1.rows.len(), 3);
    let early = s2.claim(&short).await.unwrap();
    assert!(early.rows.is_empty(), "keys are leased");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c2 = s2.claim(&short).await.unwrap();
    assert_eq!(
        c2.rows.len(),
        3,
        "the lease ended: another relay takes the keys"
    );
    assert_ne!(c1.token, c2.token);
    // While the new owner holds the keys, nothing the old claim marks lands.
    let mut stale = Settlement::default();
    stale.published = c1.rows.iter().map(|r| r.seq).collect();
    assert_eq!(
        s1.settle(&c1, &stale).await.unwrap(),
        Default::default(),
        "the old claim cannot mark rows another relay holds"
    );
    let mut stale = Settlement::default();
    stale.released = c1.rows.iter().map(|r| r.seq).collect();
    assert_eq!(s1.settle(&c1, &stale).await.unwrap().released, 0);
    let mut done = Settlement::default();
    done.published = c2.rows.iter().map(|r| r.seq).collect();
    assert_eq!(s2.settle(&c2, &done).await.unwrap().published, 3);
    assert!(!s1.has_pending(&dest("default")).await.unwrap());
}

/// Operator calls see only their tenant's rows; lists page by key.
pub async fn operator_api_is_tenant_scoped_and_pages_by_key<F: OutboxFixture>() {
    let f = F::setup().await;
    let store = f.store();
    let t = topic("things");
    let acme: Vec<Event> = (0..5)
        .map(|n| tenant_event("acme", &format!("a{n}"), n))
        .collect();
    let globex: Vec<Event> = (0..2)
        .map(|n| tenant_event("globex", &format!("g{n}"), n))
        .collect();
    f.enqueue(&t, &acme).await;
    f.enqueue(&t, &globex).await;
    let rec = Recorder::new();
    for e in acme.iter().chain(&globex) {
        rec.reject(e.id(), true);
    }
    let relay = Relay::new(store.clone(), rec.clone()).with_options(fast_options());
    relay.drain(DRAIN).await.unwrap();
    let scope_acme = TenantScope::org(OrgId::new("acme").unwrap());
    let scope_globex = TenantScope::org(OrgId::new("globex").unwrap());
    let all = DeadFilter::default();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_dead(&scope_acme, &all, after.as_ref(), 2)
            .await
            .unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(
            page.items
                .iter()
                .map(|d| n_of(&Event::from_json_str(&d.event).unwrap())),
        );
        match page.next {
            Some(c) => after = Some(c),
            None => break,
        }
    }
    assert_eq!(
        seen,
        vec![0, 1, 2, 3, 4],
        "acme's dead rows, in order, paged by key"
    );
    let g = store
        .list_dead(&scope_globex, &all, None, 10)
        .await
        .unwrap();
    assert_eq!(g.items.len(), 2);
    assert!(
        g.items
            .iter()
            .all(|d| d.org_id.as_deref() == Some("globex"))
    );
    // Another tenant's ids are unknown to a scoped call.
    let globex_ids: Vec<_> = g.items.iter().map(|d| d.delivery.clone()).collect();
    assert_eq!(store.requeue(&scope_acme, &globex_ids).await.unwrap(), 0);
    assert_eq!(store.skip(&scope_acme, &globex_ids).await.unwrap(), 0);
    store.refresh_stats().await.unwrap();
    assert_eq!(store.stats(&scope_acme).await.unwrap().dead(), 5);
    assert_eq!(store.stats(&scope_globex).await.unwrap().dead(), 2);
    assert_eq!(store.stats(&TenantScope::All).await.unwrap().dead(), 7);
    assert_eq!(store.requeue(&scope_globex, &globex_ids).await.unwrap(), 2);
    assert_eq!(store.requeue_all(&scope_acme, &all).await.unwrap(), 5);
    for e in acme.iter().chain(&globex) {
        rec.reject(e.id(), false);
    }
    relay.drain(DRAIN).await.unwrap();
    assert_eq!(rec.distinct().len(), 7);
}

/// A tenant's flood does not delay another tenant's event by more than one claim.
pub async fn a_tenant_flood_does_not_delay_other_tenants<F: OutboxFixture>() {
    let f = F::setup().await;
    let t = topic("things");
    let flood: Vec<Event> = (0..300)
        .map(|n| tenant_event("flood", &format!("f{n}"), n))
        .collect();
    f.enqueue(&t, &flood).await;
    let small = tenant_event("small", "s", 1);
    f.enqueue(&t, std::slice::from_ref(&small)).await;
    let claim = f
        .store()
        .claim(&ClaimRequest::new(
            dest("default"),
            50,
            Duration::from_secs(10),
        ))
        .await
        .unwrap();
    assert_eq!(claim.rows.len(), 50);
    let events: HashSet<String> = claim
        .rows
        .iter()
        .map(|r| Event::from_json_str(&r.event).unwrap().id().to_owned())
        .collect();
    assert!(
        events.contains(small.id()),
        "the small tenant is in the first claim"
    );
}

/// One maintenance leader at a time; retention deletes only old events every destination
/// has; purges delete only old dead rows and inbox records.
pub async fn maintenance_has_one_leader_and_deletes_only_what_is_old_and_done<F: OutboxFixture>() {
    let f = F::setup().await;
    let store = f.store();
    let lease = Duration::from_secs(30);
    assert!(store.lead("a", lease).await.unwrap());
    assert!(store.lead("a", lease).await.unwrap(), "renewal");
    assert!(!store.lead("b", lease).await.unwrap());
    assert_eq!(store.leader().await.unwrap().unwrap().holder, "a");
    store.resign("a").await.unwrap();
    assert!(store.lead("b", lease).await.unwrap());

    let t = topic("things");
    let rejected = event("r", 1);
    f.enqueue(&t, &[event("a", 1), event("a", 2), rejected.clone()])
        .await;
    f.enqueue(&t, &[event("p", 1)]).await;
    let rec = Recorder::new();
    rec.reject(rejected.id(), true);
    rec.fail_key("p", true);
    let relay = Relay::new(store.clone(), rec.clone()).with_options(fast_options());
    for _ in 0..3 {
        relay.run_once().await.unwrap();
    }
    assert_eq!(
        f.inbox_record("c1", &event("x", 1)).await,
        windlass_outbox::Received::New
    );
    let day = Duration::from_secs(86_400);
    assert_eq!(
        store.delete_delivered_before(day, 100).await.unwrap(),
        0,
        "too young"
    );
    assert_eq!(store.purge_dead_before(day, 100).await.unwrap(), 0);
    assert_eq!(store.purge_inbox_before(day, 100).await.unwrap(), 0);
    f.backdate(3 * 86_400).await;
    assert_eq!(
        store.delete_delivered_before(day, 1).await.unwrap(),
        1,
        "bounded batches"
    );
    assert_eq!(
        store.delete_delivered_before(day, 100).await.unwrap(),
        1,
        "a1 and a2 only: the dead and the pending rows keep their events"
    );
    assert_eq!(store.purge_dead_before(day, 100).await.unwrap(), 1);
    assert_eq!(store.purge_inbox_before(day, 100).await.unwrap(), 1);
    assert_eq!(f.inbox_rows().await, 0);
    assert_eq!(
        f.event_rows().await,
        2,
        "the purged dead row's event and the pending one"
    );
    assert_eq!(store.delete_delivered_before(day, 100).await.unwrap(), 1);
    assert_eq!(f.event_rows().await, 1, "the pending event stays");
}

/// A running relay with maintenance on becomes leader, refreshes the counters, and resigns
/// on shutdown.
pub async fn a_running_relay_elects_a_leader_and_exports_counters<F: OutboxFixture>() {
    let f = F::setup().await;
    let store = f.store();
    f.enqueue(&topic("things"), &[event("a", 1)]).await;
    let rec = Recorder::new();
    rec.set_down(true);
    let relay = Relay::new(store.clone(), rec.clone())
        .with_options(
            fast_options()
                .maintenance(true)
                .maintenance_interval(Duration::from_millis(50))
                .stats_interval(Duration::from_millis(50)),
        )
        .spawn();
    eventually(30, "a leader and fresh counters", || async {
        let s = store.stats(&TenantScope::All).await.unwrap();
        store.leader().await.unwrap().is_some() && s.refreshed_at.is_some() && s.pending() == 1
    })
    .await;
    let s = store.stats(&TenantScope::All).await.unwrap();
    assert!(s.topics[0].oldest_pending_age.is_some());
    relay.shutdown().await;
    assert!(
        store.leader().await.unwrap().is_none(),
        "resigned on shutdown"
    );
}
