use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use windlass_core::TenantScope;

use super::*;
use crate::admin::BusAdmin;
use crate::handler::{DeliveryContext, handler_fn};

fn event(n: usize) -> Event {
    Event::builder("/test", "t")
        .subject(format!("s{n}"))
        .build()
        .unwrap()
}

async fn eventually(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not met in 20 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_full_topic_makes_publish_wait_then_fail_loudly() {
    let bus = MemoryBus::with_config(
        MemoryConfig::default()
            .capacity(3)
            .publish_timeout(Duration::from_millis(50)),
    );
    let topic = Topic::new("full").unwrap();
    for n in 0..3 {
        bus.publish(&topic, &event(n)).await.unwrap();
    }
    let err = bus.publish(&topic, &event(3)).await.unwrap_err();
    assert!(matches!(err, Error::Full(_)), "{err:?}");
    assert_eq!(bus.len(&topic), 3, "nothing was dropped to make room");
}

#[tokio::test]
async fn acknowledged_entries_make_room() {
    let bus = MemoryBus::with_config(
        MemoryConfig::default()
            .capacity(2)
            .publish_timeout(Duration::from_secs(5)),
    );
    let topic = Topic::new("room").unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let sub = bus
        .subscribe(
            &topic,
            &Group::new("g").unwrap(),
            Arc::new(handler_fn(move |_e, _c| {
                let h = h.clone();
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            })),
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    for n in 0..20 {
        bus.publish(&topic, &event(n)).await.unwrap();
    }
    eventually(|| handled.load(Ordering::SeqCst) == 20).await;
    sub.shutdown().await.unwrap();
}

#[tokio::test]
async fn latest_skips_history_and_earliest_replays_it() {
    let bus = MemoryBus::new();
    let topic = Topic::new("history").unwrap();
    bus.publish(&topic, &event(0)).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut subs = Vec::new();
    for (group, start) in [("late", StartFrom::Latest), ("early", StartFrom::Earliest)] {
        let seen = seen.clone();
        subs.push(
            bus.subscribe(
                &topic,
                &Group::new(group).unwrap(),
                Arc::new(handler_fn(move |e: Event, c: DeliveryContext| {
                    let seen = seen.clone();
                    async move {
                        lock(&seen).push((c.group.to_string(), e.subject().unwrap().to_owned()));
                        Ok(())
                    }
                })),
                SubscribeOptions::default().start_from(start),
            )
            .await
            .unwrap(),
        );
    }
    bus.publish(&topic, &event(1)).await.unwrap();
    eventually(|| lock(&seen).len() == 3).await;
    let mut got = lock(&seen).clone();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("early".into(), "s0".into()),
            ("early".into(), "s1".into()),
            ("late".into(), "s1".into())
        ]
    );
    for s in subs {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_dead_members_partitions_move_once_its_lease_expired() {
    let bus = MemoryBus::with_config(
        MemoryConfig::default()
            .lease_ttl(Duration::from_millis(400))
            .partitions(PartitionCount::ONE),
    );
    let topic = Topic::new("claims").unwrap();
    let group = Group::new("g").unwrap();
    let options = SubscribeOptions::default().handler_timeout(Duration::from_millis(200));
    // The first member takes the event and hangs, then dies.
    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    let stuck = bus
        .subscribe(
            &topic,
            &group,
            Arc::new(handler_fn(move |_e, _c| {
                s.fetch_add(1, Ordering::SeqCst);
                async {
                    std::future::pending::<()>().await;
                    Ok(())
                }
            })),
            options.clone().consumer("a"),
        )
        .await
        .unwrap();
    bus.publish(&topic, &event(7)).await.unwrap();
    eventually(|| started.load(Ordering::SeqCst) >= 1).await;
    stuck.abort();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let a = attempts.clone();
    let rescuer = bus
        .subscribe(
            &topic,
            &group,
            Arc::new(handler_fn(move |_e, c: DeliveryContext| {
                let a = a.clone();
                async move {
                    lock(&a).push((c.consumer.clone(), c.attempt));
                    Ok(())
                }
            })),
            options.consumer("b"),
        )
        .await
        .unwrap();
    eventually(|| !lock(&attempts).is_empty()).await;
    let first = lock(&attempts)[0].clone();
    assert_eq!(first.0, "b", "handled by the rescuer");
    assert!(first.1 >= 2, "the crashed attempts count: {first:?}");
    rescuer.shutdown().await.unwrap();
}

#[tokio::test]
async fn events_go_to_their_keys_partition() {
    let bus =
        MemoryBus::with_config(MemoryConfig::default().partitions(PartitionCount::new(4).unwrap()));
    let topic = Topic::new("placed").unwrap();
    let e = Event::builder("/t", "t")
        .partition_key("k-1")
        .build()
        .unwrap();
    bus.publish(&topic, &e).await.unwrap();
    let expected = crate::partition::partition_for_key(b"k-1", PartitionCount::new(4).unwrap());
    let log = bus.log("placed");
    let st = lock(&log.state);
    assert_eq!(st.parts[expected as usize].entries.len(), 1);
    assert_eq!(st.len(), 1);
}

#[tokio::test]
async fn a_tenant_scoped_operator_sees_only_its_dead_letters() {
    let bus = MemoryBus::new();
    let topic = Topic::new("dlq").unwrap();
    let sub = bus
        .subscribe(
            &topic,
            &Group::new("g").unwrap(),
            Arc::new(handler_fn(|_e, _c| async {
                Err(crate::HandlerError::reject("no"))
            })),
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    for org in ["acme", "globex"] {
        let e = Event::builder("/t", "t").org_id(org).build().unwrap();
        bus.publish(&topic, &e).await.unwrap();
    }
    eventually(|| lock(&bus.log("dlq").state).dlq.len() == 2).await;
    sub.shutdown().await.unwrap();
    let acme = TenantScope::org(windlass_core::OrgId::new("acme").unwrap());
    let page = bus.dead_letter_page(&topic, &acme, None, 10).await.unwrap();
    assert_eq!(page.letters.len(), 1);
    assert_eq!(page.letters[0].org_id(), Some("acme"));
    let bad = bus.dead_letter_page(&topic, &acme, Some("0-0"), 10).await;
    assert!(
        matches!(bad, Err(crate::Error::InvalidCursor(_))),
        "a position the list never returned is refused"
    );
    let all = bus
        .dead_letter_page(&topic, &TenantScope::All, None, 10)
        .await
        .unwrap();
    let globex_id = all
        .letters
        .iter()
        .find(|l| l.org_id() == Some("globex"))
        .unwrap()
        .id
        .clone();
    assert!(
        !bus.delete_dead_letter(&topic, &acme, &globex_id)
            .await
            .unwrap(),
        "another tenant's id is unknown"
    );
    let r = bus
        .redrive(&topic, &acme, std::slice::from_ref(&globex_id))
        .await
        .unwrap();
    assert_eq!(r.unknown, vec![globex_id.clone()]);
    assert!(matches!(
        bus.topic_groups(&topic, &acme).await,
        Err(Error::TenantScope(_))
    ));
    assert!(
        bus.delete_dead_letter(&topic, &TenantScope::All, &globex_id)
            .await
            .unwrap()
    );
}
