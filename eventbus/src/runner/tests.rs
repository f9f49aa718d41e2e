//! Unit tests of the runner over a scripted transport: what starts, what is handed back, what
//! a revoke waits for, deadlines and cancellation tokens.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{Notify, Semaphore};
use windlass_core::{Group, RetryPolicy, Topic};

use super::*;
use crate::handler::{DeliveryContext, HandlerResult, handler_fn};

#[derive(Default)]
struct Script {
    queue: Mutex<VecDeque<Delivery<u64>>>,
    acked: Mutex<Vec<u64>>,
    released: Mutex<Vec<u64>>,
    dead: Mutex<Vec<u64>>,
    closed: AtomicBool,
    /// Reports [`Transport::commits_prefix`].
    prefix: AtomicBool,
    more: Notify,
}

#[derive(Clone, Default)]
struct Fake(Arc<Script>);

impl Fake {
    fn push(&self, delivery: Delivery<u64>) {
        self.0.queue.lock().unwrap().push_back(delivery);
        self.0.more.notify_waiters();
    }
    fn acked(&self) -> Vec<u64> {
        self.0.acked.lock().unwrap().clone()
    }
    fn released(&self) -> Vec<u64> {
        self.0.released.lock().unwrap().clone()
    }
}

#[async_trait]
impl Transport for Fake {
    type Token = u64;

    fn consumer(&self) -> &str {
        "fake"
    }

    async fn fetch(&self, max: usize) -> Result<Vec<Delivery<u64>>> {
        let more = self.0.more.notified();
        {
            let mut q = self.0.queue.lock().unwrap();
            if !q.is_empty() {
                let n = max.min(q.len());
                return Ok(q.drain(..n).collect());
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(20), more).await;
        Ok(Vec::new())
    }

    async fn ack(&self, tokens: &[u64]) -> Result<()> {
        self.0.acked.lock().unwrap().extend_from_slice(tokens);
        Ok(())
    }

    async fn dead_letter(&self, delivery: &Delivery<u64>, _reason: &str) -> Result<()> {
        self.0.dead.lock().unwrap().push(delivery.token);
        Ok(())
    }

    fn commits_prefix(&self) -> bool {
        self.0.prefix.load(Ordering::SeqCst)
    }

    async fn release(&self, tokens: Vec<u64>) {
        self.0.released.lock().unwrap().extend(tokens);
    }

    async fn close(&self) {
        self.0.closed.store(true, Ordering::SeqCst);
    }
}

fn keyed(token: u64, key: &str, seq: u64) -> Delivery<u64> {
    let event = Event::builder("/test", "t")
        .partition_key(key)
        .data_json(&seq)
        .build()
        .unwrap();
    Delivery::new(Ok(event), token, token.to_string(), 1)
}

fn topic() -> Topic {
    Topic::new("t").unwrap()
}

fn group() -> Group {
    Group::new("g").unwrap()
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A handler that records the tokens it started and waits for a permit of `gate` to finish.
fn gated(started: Arc<Mutex<Vec<String>>>, gate: Arc<Semaphore>) -> Arc<dyn Handler> {
    Arc::new(handler_fn(move |_event, ctx: DeliveryContext| {
        let (started, gate) = (started.clone(), gate.clone());
        async move {
            started.lock().unwrap().push(ctx.delivery_id.clone());
            gate.acquire().await.unwrap().forget();
            Ok(())
        }
    }))
}

#[tokio::test]
async fn shutdown_hands_back_every_delivery_not_started() {
    let fake = Fake::default();
    for n in 0..10 {
        fake.push(keyed(n, &format!("k{n}"), 0));
    }
    let started = Arc::new(Mutex::new(Vec::new()));
    let gate = Arc::new(Semaphore::new(0));
    let options = SubscribeOptions::default().concurrency(2).prefetch(16);
    let sub = spawn(
        fake.clone(),
        topic(),
        group(),
        gated(started.clone(), gate.clone()),
        options,
    );
    eventually("two handlers started", || {
        started.lock().unwrap().len() == 2
    })
    .await;
    let shutdown = tokio::spawn(sub.shutdown());
    // Everything read but not started goes back at once, before the handlers end.
    eventually("the 8 others are handed back", || {
        fake.released().len() == 8
    })
    .await;
    assert!(
        !shutdown.is_finished(),
        "shutdown waits for the handlers in flight"
    );
    gate.add_permits(2);
    shutdown.await.unwrap().unwrap();
    assert_eq!(
        started.lock().unwrap().len(),
        2,
        "nothing started after shutdown began"
    );
    let mut acked = fake.acked();
    acked.sort_unstable();
    let mut ran: Vec<u64> = started
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    ran.sort_unstable();
    assert_eq!(acked, ran, "what ran was acknowledged");
    assert!(
        fake.0.closed.load(Ordering::SeqCst),
        "the transport was closed last"
    );
}

#[tokio::test]
async fn revoke_hands_back_queued_waits_for_in_flight_and_spares_other_partitions() {
    let fake = Fake::default();
    let (control, events) = partition_control();
    let started = Arc::new(Mutex::new(Vec::new()));
    let gate = Arc::new(Semaphore::new(0));
    let sub = Runner::new(
        fake.clone(),
        topic(),
        group(),
        gated(started.clone(), gate.clone()),
        SubscribeOptions::default().concurrency(4),
    )
    .partitioned(events)
    .spawn();
    let (p0, p1) = (Assignment::new(0, 1), Assignment::new(1, 1));
    control.assign(p0).await.unwrap();
    control.assign(p1).await.unwrap();
    // p0: key a, two events (the second waits behind the first); p1: key b.
    fake.push(keyed(1, "a", 0).with_assignment(p0));
    fake.push(keyed(2, "a", 1).with_assignment(p0));
    fake.push(keyed(3, "b", 0).with_assignment(p1));
    eventually("both partitions' heads started", || {
        started.lock().unwrap().len() == 2
    })
    .await;
    let revoke = {
        let control = control.clone();
        tokio::spawn(async move { control.revoke(0, Duration::from_secs(30)).await })
    };
    // A current-thread runtime: yielding lets the revoke reach the runner before any handler
    // may finish.
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    // p1 goes on while p0 is being revoked.
    fake.push(keyed(4, "b", 1).with_assignment(p1));
    gate.add_permits(1);
    // Whichever finished first, wait for a second start (p1's next event, or nothing of p0).
    eventually("one handler finished", || !fake.acked().is_empty()).await;
    gate.add_permits(2);
    let revoked = revoke.await.unwrap().unwrap();
    assert_eq!(
        revoked.unstarted,
        vec![2],
        "the queued event of p0 was handed back (released: {:?}, acked {:?})",
        fake.released(),
        fake.acked()
    );
    assert_eq!(revoked.aborted, 0);
    assert!(
        fake.acked().contains(&1),
        "the in-flight handler of p0 finished and was acknowledged before the revoke returned"
    );
    eventually("p1's events are all handled", || {
        let acked = fake.acked();
        acked.contains(&3) && acked.contains(&4)
    })
    .await;
    assert!(
        !started.lock().unwrap().contains(&"2".to_owned()),
        "nothing of a revoked partition starts"
    );
    sub.shutdown().await.unwrap();
}

#[tokio::test]
async fn revoke_past_its_wait_cancels_and_drops_the_handler() {
    let fake = Fake::default();
    let (control, events) = partition_control();
    let cancelled = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let handler = {
        let (cancelled, started) = (cancelled.clone(), started.clone());
        handler_fn(move |_event, ctx: DeliveryContext| {
            let cancelled = cancelled.clone();
            started.store(true, Ordering::SeqCst);
            async move {
                let token = ctx.cancel.clone();
                tokio::spawn(async move {
                    token.cancelled().await;
                    cancelled.store(true, Ordering::SeqCst);
                });
                std::future::pending::<HandlerResult>().await
            }
        })
    };
    let sub = Runner::new(
        fake.clone(),
        topic(),
        group(),
        Arc::new(handler),
        SubscribeOptions::default(),
    )
    .partitioned(events)
    .spawn();
    let p0 = Assignment::new(0, 7);
    control.assign(p0).await.unwrap();
    fake.push(keyed(1, "a", 0).with_assignment(p0));
    eventually("the handler started", || started.load(Ordering::SeqCst)).await;
    let revoked = control.revoke(0, Duration::from_millis(50)).await.unwrap();
    assert_eq!(revoked.aborted, 1);
    eventually("the handler's token was cancelled", || {
        cancelled.load(Ordering::SeqCst)
    })
    .await;
    assert!(
        fake.acked().is_empty(),
        "an aborted delivery is not acknowledged"
    );
    sub.shutdown().await.unwrap();
}

#[tokio::test]
async fn deliveries_of_a_partition_not_held_never_start() {
    let fake = Fake::default();
    let (control, events) = partition_control();
    let ran = Arc::new(AtomicUsize::new(0));
    let handler = {
        let ran = ran.clone();
        handler_fn(move |_e, _c| {
            ran.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        })
    };
    let sub = Runner::new(
        fake.clone(),
        topic(),
        group(),
        Arc::new(handler),
        SubscribeOptions::default(),
    )
    .partitioned(events)
    .spawn();
    control.assign(Assignment::new(0, 2)).await.unwrap();
    fake.push(keyed(1, "a", 0).with_assignment(Assignment::new(5, 1)));
    fake.push(keyed(2, "b", 0).with_assignment(Assignment::new(0, 1)));
    fake.push(keyed(3, "c", 0).with_assignment(Assignment::new(0, 2)));
    eventually("the current one ran", || fake.acked() == vec![3]).await;
    eventually("the others were handed back", || {
        let mut r = fake.released();
        r.sort_unstable();
        r == vec![1, 2]
    })
    .await;
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    sub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_handler_past_its_deadline_is_cancelled_and_retried() {
    let fake = Fake::default();
    let cancelled = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let (cancelled, attempts) = (cancelled.clone(), attempts.clone());
        handler_fn(move |_event, ctx: DeliveryContext| {
            let (cancelled, attempts) = (cancelled.clone(), attempts.clone());
            async move {
                let left = ctx.remaining().expect("a deadline is set");
                attempts.lock().unwrap().push((ctx.attempt, left));
                if ctx.attempt == 1 {
                    let token = ctx.cancel.clone();
                    tokio::spawn(async move {
                        token.cancelled().await;
                        cancelled.store(true, Ordering::SeqCst);
                    });
                    std::future::pending::<()>().await;
                }
                Ok(())
            }
        })
    };
    let options = SubscribeOptions::default()
        .handler_timeout(Duration::from_millis(100))
        .retry(
            RetryPolicy::default()
                .with_max_attempts(3)
                .with_delays(Duration::from_millis(1), Duration::from_millis(2)),
        );
    let sub = spawn(fake.clone(), topic(), group(), Arc::new(handler), options);
    fake.push(keyed(1, "a", 0));
    eventually("the retry succeeded", || fake.acked() == vec![1]).await;
    assert!(
        cancelled.load(Ordering::SeqCst),
        "the timed-out attempt's token was cancelled"
    );
    let attempts = attempts.lock().unwrap().clone();
    assert_eq!(attempts.iter().map(|a| a.0).collect::<Vec<_>>(), vec![1, 2]);
    assert!(attempts.iter().all(|a| a.1 <= Duration::from_millis(100)));
    sub.shutdown().await.unwrap();
}

/// A future whose drop panics: dropping it at its deadline makes the task end in a panic the
/// handler's `catch_unwind` never sees (a `JoinError`).
struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("dropped");
        }
    }
}

#[tokio::test]
async fn a_task_ending_in_a_join_error_frees_its_key() {
    let fake = Fake::default();
    let handled = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let handled = handled.clone();
        handler_fn(move |event: Event, _ctx| {
            let handled = handled.clone();
            async move {
                let seq: u64 = event.data_as().unwrap().unwrap();
                if seq == 0 {
                    let _guard = PanicOnDrop;
                    std::future::pending::<()>().await;
                }
                handled.lock().unwrap().push(seq);
                Ok(())
            }
        })
    };
    let options = SubscribeOptions::default().handler_timeout(Duration::from_millis(30));
    let sub = spawn(fake.clone(), topic(), group(), Arc::new(handler), options);
    fake.push(keyed(1, "a", 0));
    fake.push(keyed(2, "a", 1));
    eventually("the next event of the key ran", || {
        handled.lock().unwrap().as_slice() == [1]
    })
    .await;
    sub.shutdown().await.unwrap();
}

/// One partition, concurrency 2: `1` (key a, held by the gate) and `3` (key b) run, `2` waits
/// behind key a (a gap below `3`), `4` (key c) waits for a slot (after the latest start).
async fn gap_setup(
    prefix: bool,
) -> (
    Fake,
    PartitionControl<u64>,
    Subscription,
    Arc<Mutex<Vec<String>>>,
    Arc<Semaphore>,
) {
    let fake = Fake::default();
    fake.0.prefix.store(prefix, Ordering::SeqCst);
    let (control, events) = partition_control();
    let started = Arc::new(Mutex::new(Vec::new()));
    let gate = Arc::new(Semaphore::new(0));
    let sub = Runner::new(
        fake.clone(),
        topic(),
        group(),
        gated(started.clone(), gate.clone()),
        SubscribeOptions::default()
            .concurrency(2)
            .shutdown_timeout(Duration::from_secs(30)),
    )
    .partitioned(events)
    .spawn();
    let p0 = Assignment::new(0, 1);
    control.assign(p0).await.unwrap();
    for (token, key) in [(1, "a"), (2, "a"), (3, "b"), (4, "c")] {
        fake.push(keyed(token, key, token).with_assignment(p0));
    }
    eventually("1 and 3 started", || started.lock().unwrap().len() == 2).await;
    assert_eq!(*started.lock().unwrap(), vec!["1", "3"]);
    (fake, control, sub, started, gate)
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

#[tokio::test]
async fn a_prefix_transport_fills_the_gaps_at_shutdown_and_hands_back_the_rest() {
    for prefix in [true, false] {
        let (fake, _control, sub, _started, gate) = gap_setup(prefix).await;
        let shutdown = tokio::spawn(sub.shutdown());
        eventually("4 is handed back", || fake.released().contains(&4)).await;
        gate.add_permits(3);
        shutdown.await.unwrap().unwrap();
        if prefix {
            // The committed prefix must cover 3, so 2 (below it) runs; 4 (above) goes back.
            assert_eq!(sorted(fake.acked()), vec![1, 2, 3], "prefix transport");
            assert_eq!(fake.released(), vec![4], "prefix transport");
        } else {
            assert_eq!(sorted(fake.acked()), vec![1, 3], "per-entry transport");
            assert_eq!(sorted(fake.released()), vec![2, 4], "per-entry transport");
        }
    }
}

#[tokio::test]
async fn a_prefix_transport_fills_the_gaps_of_a_revoked_partition() {
    for prefix in [true, false] {
        let (fake, control, sub, _started, gate) = gap_setup(prefix).await;
        let revoke = {
            let control = control.clone();
            tokio::spawn(async move { control.revoke(0, Duration::from_secs(30)).await })
        };
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(3);
        let revoked = revoke.await.unwrap().unwrap();
        assert_eq!(revoked.aborted, 0);
        if prefix {
            assert_eq!(revoked.unstarted, vec![4], "prefix transport");
            assert_eq!(sorted(fake.acked()), vec![1, 2, 3], "prefix transport");
        } else {
            assert_eq!(sorted(revoked.unstarted), vec![2, 4], "per-entry transport");
            assert_eq!(sorted(fake.acked()), vec![1, 3], "per-entry transport");
        }
        sub.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn gap_fillers_past_the_revoke_wait_are_handed_back_with_the_rest() {
    let (fake, control, sub, started, _gate) = gap_setup(true).await;
    // The gate never opens: 1 and 3 outlive the wait, 2 never gets to start.
    let revoked = control.revoke(0, Duration::from_millis(100)).await.unwrap();
    assert_eq!(revoked.aborted, 2);
    assert_eq!(sorted(revoked.unstarted), vec![2, 4]);
    assert!(fake.acked().is_empty());
    assert_eq!(started.lock().unwrap().len(), 2, "nothing else started");
    sub.shutdown().await.unwrap();
}
