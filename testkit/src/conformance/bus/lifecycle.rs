//! Lifecycle properties: graceful shutdown, read-ahead handed back, handler deadlines.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use windlass_eventbus::{Event, Handler, HandlerError, handler_fn};

use super::*;

/// Shutdown waits for the handler in flight, acknowledges its work, and a restarted consumer
/// does not get that event again.
pub async fn shutdown_finishes_in_flight_work<F: BusFixture>(fixture: &F) {
    let bus = fixture.bus().await;
    let topic = fixture.topic();
    let g = group("g");
    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (started, finished) = (started.clone(), finished.clone());
        handler_fn(move |_event, _ctx| {
            let (started, finished) = (started.clone(), finished.clone());
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                finished.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
    };
    let options = fixture
        .options()
        .consumer("c1")
        .shutdown_timeout(Duration::from_secs(20));
    let sub = subscribe::<F>(&bus, &topic, &g, Arc::new(handler), options.clone()).await;
    let event = numbered(1);
    bus.publish(&topic, &event).await.expect("publish");
    wait_until("the handler started", || {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    sub.shutdown().await.expect("graceful shutdown");
    assert_eq!(
        finished.load(Ordering::SeqCst),
        1,
        "shutdown returned before the in-flight handler finished"
    );

    let again = Seen::default();
    let sub = subscribe::<F>(&bus, &topic, &g, recording(&again), options).await;
    let sentinel = numbered(2);
    bus.publish(&topic, &sentinel)
        .await
        .expect("publish sentinel");
    wait_until("the sentinel is handled", || {
        again.distinct().contains(sentinel.id())
    })
    .await;
    sub.shutdown().await.expect("shutdown");
    assert_eq!(
        again.ids(),
        vec![sentinel.id().to_owned()],
        "work finished during shutdown was not acknowledged"
    );
}

/// Shutdown with a full read-ahead: the handlers in flight finish and are acknowledged,
/// nothing else starts, and everything read but not started is handed back (the group's next
/// member handles it, once).
pub async fn shutdown_with_a_full_read_ahead_runs_only_what_started<F: BusFixture>(fixture: &F) {
    let bus = fixture.bus().await;
    let topic = fixture.topic();
    let g = group("g");
    let started = Arc::new(Mutex::new(Vec::<String>::new()));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let handler = {
        let (started, gate) = (started.clone(), gate.clone());
        handler_fn(move |event: Event, _ctx| {
            let (started, gate) = (started.clone(), gate.clone());
            async move {
                started.lock().unwrap().push(event.id().to_owned());
                gate.acquire().await.expect("gate").forget();
                Ok(())
            }
        })
    };
    let events: Vec<Event> = (0..40).map(|n| keyed(&format!("key-{n}"), 0)).collect();
    bus.publish_batch(&topic, &events).await.expect("publish");
    let options = fixture
        .options()
        .concurrency(2)
        .prefetch(40)
        .shutdown_timeout(Duration::from_secs(20));
    let sub = subscribe::<F>(&bus, &topic, &g, Arc::new(handler), options.clone()).await;
    wait_until("two handlers run", || started.lock().unwrap().len() == 2).await;
    // Ask for shutdown (its first poll cancels), then let the two handlers finish.
    let mut shutdown = Box::pin(sub.shutdown());
    assert!(
        futures::poll!(shutdown.as_mut()).is_pending(),
        "shutdown waits for the handlers in flight"
    );
    gate.add_permits(2);
    shutdown.await.expect("graceful shutdown");
    let ran: HashSet<String> = started.lock().unwrap().iter().cloned().collect();
    assert_eq!(
        ran.len(),
        2,
        "deliveries read ahead were started after shutdown began"
    );

    // The next member gets exactly the 38 others.
    let again = Seen::default();
    let sub = subscribe::<F>(&bus, &topic, &g, recording(&again), options).await;
    wait_until("the rest is handled", || again.distinct().len() >= 38).await;
    sub.shutdown().await.expect("shutdown");
    let rest: HashSet<String> = again.distinct();
    let all: HashSet<String> = events.iter().map(|e| e.id().to_owned()).collect();
    assert!(rest.is_disjoint(&ran), "finished work was delivered again");
    assert_eq!(
        rest.union(&ran).cloned().collect::<HashSet<_>>(),
        all,
        "events were lost"
    );
    assert_eq!(again.len(), 38, "handed-back events were delivered twice");
}

/// A member leaving gracefully hands over none of the events it ran, even those it ran out of
/// order: events of other keys finish while an earlier event of a slow key still runs and the
/// next event of that key waits behind it. A backend that records only the handled prefix of a
/// partition (Kafka's committed offset) must fill that gap before leaving; elsewhere the
/// waiting event goes back. Either way the next member runs once each event the first did
/// not, and none of those it did.
pub async fn a_graceful_leave_hands_over_no_event_it_ran<F: BusFixture>(fixture: &F) {
    let bus = fixture.bus().await;
    let topic = fixture.topic();
    let g = group("leave");
    let keys = keys_for_partition(0, fixture.partitions(), 10);
    let slow = keys[0].clone();
    // (key, seq, member) in the order the calls ended.
    let calls: Arc<Mutex<Vec<(String, usize, String)>>> = Arc::default();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let handler = |member: &'static str| {
        let (calls, gate, slow) = (calls.clone(), gate.clone(), slow.clone());
        Arc::new(handler_fn(move |event: Event, _ctx| {
            let (calls, gate, slow) = (calls.clone(), gate.clone(), slow.clone());
            async move {
                let key = event.partition_key().unwrap_or_default().to_owned();
                let seq: usize = event
                    .data_as()
                    .map_err(HandlerError::reject)?
                    .unwrap_or_default();
                if member == "m1" && key == slow && seq == 0 {
                    gate.acquire().await.expect("gate").forget();
                }
                calls.lock().unwrap().push((key, seq, member.to_owned()));
                Ok(())
            }
        })) as Arc<dyn Handler>
    };
    let options = fixture
        .options()
        .concurrency(4)
        .shutdown_timeout(Duration::from_secs(20));
    let m1 = subscribe::<F>(
        &bus,
        &topic,
        &g,
        handler("m1"),
        options.clone().consumer("m1"),
    )
    .await;
    // On partition 0, in this order: slow#0, slow#1, one event of each other key.
    let mut events = vec![keyed(&slow, 0), keyed(&slow, 1)];
    events.extend(keys[1..].iter().map(|k| keyed(k, 0)));
    bus.publish_batch(&topic, &events).await.expect("publish");
    wait_until("m1 ran every other key's event while slow#0 runs", || {
        calls.lock().unwrap().len() == keys.len() - 1
    })
    .await;
    let mut leaving = Box::pin(m1.shutdown());
    assert!(
        futures::poll!(leaving.as_mut()).is_pending(),
        "shutdown waits for the handler in flight"
    );
    gate.add_permits(1);
    leaving.await.expect("m1 leaves");
    let m2 = subscribe::<F>(&bus, &topic, &g, handler("m2"), options.consumer("m2")).await;
    // A last event behind all the others on the partition.
    bus.publish(&topic, &keyed(&keys[1], 1))
        .await
        .expect("publish");
    wait_until("every event ran", || {
        let calls = calls.lock().unwrap();
        let distinct: HashSet<(&str, usize)> =
            calls.iter().map(|(k, s, _)| (k.as_str(), *s)).collect();
        distinct.len() == events.len() + 1
    })
    .await;
    m2.shutdown().await.expect("m2 leaves");
    let calls = calls.lock().unwrap().clone();
    let mut twice: Vec<_> = calls
        .iter()
        .filter(|(k, s, _)| {
            calls
                .iter()
                .filter(|(k2, s2, _)| k2 == k && s2 == s)
                .count()
                > 1
        })
        .collect();
    twice.sort();
    assert!(
        twice.is_empty(),
        "events ran twice across the handover (key, seq, member): {twice:?}"
    );
    let slow_order: Vec<usize> = calls
        .iter()
        .filter(|(k, _, _)| *k == slow)
        .map(|(_, s, _)| *s)
        .collect();
    assert_eq!(
        slow_order,
        vec![0, 1],
        "the slow key's events ran out of order"
    );
}

/// A handler attempt past `handler_timeout` is cancelled (its token fires, its future is
/// dropped) and retried like a failure; the context carries the deadline.
pub async fn handler_deadline_cancels_and_retries<F: BusFixture>(fixture: &F) {
    let bus = fixture.bus().await;
    let topic = fixture.topic();
    let cancelled = Arc::new(AtomicUsize::new(0));
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let (cancelled, attempts) = (cancelled.clone(), attempts.clone());
        handler_fn(move |_event, ctx| {
            let (cancelled, attempts) = (cancelled.clone(), attempts.clone());
            async move {
                attempts
                    .lock()
                    .unwrap()
                    .push((ctx.attempt, ctx.deadline.is_some()));
                if ctx.attempt == 1 {
                    let token = ctx.cancel.clone();
                    tokio::spawn(async move {
                        token.cancelled().await;
                        cancelled.fetch_add(1, Ordering::SeqCst);
                    });
                    std::future::pending::<()>().await;
                }
                Ok(())
            }
        })
    };
    let options = fixture
        .options()
        .handler_timeout(Duration::from_millis(300))
        .retry(fast_retry(3));
    let sub = subscribe::<F>(&bus, &topic, &group("g"), Arc::new(handler), options).await;
    bus.publish(&topic, &numbered(1)).await.expect("publish");
    wait_until("the second attempt ran", || {
        attempts.lock().unwrap().len() >= 2
    })
    .await;
    wait_until("the first attempt's token was cancelled", || {
        cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
    sub.shutdown().await.expect("shutdown");
    assert_eq!(*attempts.lock().unwrap(), vec![(1, true), (2, true)]);
    let dlq = bus.dead_letters(&topic, 10).await.expect("dead letters");
    assert!(dlq.is_empty(), "{dlq:?}");
}
