//! Delivery properties: at least once, acknowledgements, retries, dead letters, bad input.

use std::collections::HashSet;
use std::sync::Arc;

use windlass_eventbus::{Event, HandlerError, handler_fn};

use super::*;

/// Every published event reaches the handler: events published before the group existed
/// (start from earliest), one by one and in batches.
pub async fn at_least_once<F: BusFixture>(fixture: &F) {
    let bus = fixture.bus().await;
    let topic = fixture.topic();
    let before: Vec<Event> = (0..20).map(numbered).collect();
    bus.publish_batch(&topic, &before)
        .await
        .expect("publish batch");
    let seen = Seen::default();
    let sub = subscribe::<F>(
        &bus,
        &topic,
        &group("g"),
        recording(&seen),
        fixture.options(),
    )
    .await;
    let mut all: HashSet<String> = before.iter().map(|e| e.id().to_owned()).collect();
    for n in 20..40 {
        let event = numbered(n);
        bus.publish(&topic, &event).await.expect("publish");
        all.insert(event.id().to_owned());
    }
    wait_until("all 40 events are handled", || {
        seen.distinct().is_superset(&all)
    })
    .await;
    sub.shutdown().await.expect("shutdown");
    assert_eq!(
        seen.distinct(),
        all,
        "the handler saw events nobody published"
    );
}

/// An acknowledged event is not delivered again, not even to the same consumer name after a
/// restart (which re-reads what it had not acknowledged).
pub async fn ack_is_final<F: BusFixture>(fixture: &F) {
    let bus = fixture.bus().await;
    let topic = fixture.topic();
    let g = group("g");
    let first = Seen::default();
    let options = fixture.options().consumer("c1");
    let sub = subscribe::<F>(&bus, &topic, &g, recording(&first), options.clone()).await;
    let events: Vec<Event> = (0..10).map(numbered).collect();
    bus.publish_batch(&topic, &events).await.expect("publish");
    wait_until("10 events are handled", || first.distinct().len() == 10).await;
    sub.shutdown().await.expect("shutdown");

    let second = Seen::default();
    let sub = subscribe::<F>(&bus, &topic, &g, recording(&second), options).await;
    let sentinel = numbered(999);
    bus.publish(&topic, &sentinel)
        .await
        .expect("publish sentinel");
    wait_until("the sentinel is handled", || {
        second.distinct().contains(sentinel.id())
    })
    .await;
    sub.shutdown().await.expect("shutdown");
    assert_eq!(
        second.ids(),
        vec![sentinel.id().to_owned()],
        "acknowledged events were delivered again"
    );
}

/// A handler error is retried (with the attempt number counting up) until it succeeds; nothing
/// is dead-lettered.
pub async fn retry_after_handler_error<F: BusFixture>(fixture: &F) {
    let bus = fixture.bus().await;
    let topic = fixture.topic();
    let seen = Seen::default();
    let handler = {
        let seen = seen.clone();
        handler_fn(move |event, ctx| {
            let seen = seen.clone();
            async move {
                seen.push(event.id(), ctx.attempt, &ctx.consumer);
                if ctx.attempt < 3 {
                    return Err(HandlerError::retry(format!(
                        "transient failure {}",
                        ctx.attempt
                    )));
                }
                Ok(())
            }
        })
    };
    let options = fixture.options().retry(fast_retry(5));
    let sub = subscribe::<F>(&bus, &topic, &group("g"), Arc::new(handler), options).await;
    let event = numbered(1);
    bus.publish(&topic, &event).await.expect("publish");
    wait_until("the third attempt", || seen.len() >= 3).await;
    sub.shutdown().await.expect("shutdown");
    assert_eq!(seen.attempts_of(event.id()), vec![1, 2, 3]);
    let dlq = bus.dead_letters(&topic, 10).await.expect("dead letters");
    assert!(
        dlq.is_empty(),
        "a retried-then-handled event was dead-lettered: {dlq:?}"
    );
}

/// A handler that keeps failing gets exactly `max_attempts` attempts; then the event is in the
/// dead-letter queue with the last error, and events behind it are handled.
pub async fn dead_letter_after_max_attempts<F: BusFixture>(fixture: &F) {
    let bus = fixture.bus().await;
    let topic = fixture.topic();
    let seen = Seen::default();
    let poison = numbered(13);
    let handler = {
        let seen = seen.clone();
        let poison_id = poison.id().to_owned();
        handler_fn(move |event, ctx| {
            let seen = seen.clone();
            let poison = event.id() == poison_id;
            async move {
                seen.push(event.id(), ctx.attempt, &ctx.consumer);
                if poison {
                    return Err(HandlerError::retry(format!(
                        "boom on attempt {}",
                        ctx.attempt
                    )));
                }
                Ok(())
            }
        })
    };
    let g = group("g");
    let sub = subscribe::<F>(
        &bus,
        &topic,
        &g,
        Arc::new(handler),
        fixture.options().retry(fast_retry(3)),
    )
    .await;
    let after = numbered(14);
    bus.publish_batch(&topic, &[poison.clone(), after.clone()])
        .await
        .expect("publish");
    let dlq = wait_dead_letters(&bus, &topic, 1).await;
    wait_until("the event behind the poison one is handled", || {
        seen.distinct().contains(after.id())
    })
    .await;
    sub.shutdown().await.expect("shutdown");
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let dead = &dlq[0];
    assert_eq!(seen.attempts_of(poison.id()), vec![1, 2, 3]);
    assert_eq!(
        dead.event.as_ref().map(Event::id),
        Some(poison.id()),
        "{dead:?}"
    );
    assert_eq!(
        Event::from_json(&dead.payload)
            .expect("payload decodes")
            .id(),
        poison.id()
    );
    assert!(
        dead.error.contains("boom on attempt 3"),
        "reason lacks the last error: {}",
        dead.error
    );
    assert_eq!(dead.group, g.as_str());
    assert_eq!(dead.topic, topic.as_str());
}

/// A rejected event goes to the dead-letter queue at once, with the handler's reason.
pub async fn reject_dead_letters_at_once<F: BusFixture>(fixture: &F) {
    let bus = fixture.bus().await;
    let topic = fixture.topic();
    let seen = Seen::default();
    let handler = {
        let seen = seen.clone();
        handler_fn(move |event, ctx| {
            let seen = seen.clone();
            async move {
                seen.push(event.id(), ctx.attempt, &ctx.consumer);
                Err(HandlerError::reject("amount is negative"))
            }
        })
    };
    let sub = subscribe::<F>(
        &bus,
        &topic,
        &group("g"),
        Arc::new(handler),
        fixture.options().retry(fast_retry(5)),
    )
    .await;
    let event = numbered(1);
    bus.publish(&topic, &event).await.expect("publish");
    let dlq = wait_dead_letters(&bus, &topic, 1).await;
    sub.shutdown().await.expect("shutdown");
    assert_eq!(
        seen.attempts_of(event.id()),
        vec![1],
        "a rejected event was retried"
    );
    assert!(
        dlq[0].error.contains("amount is negative"),
        "reason: {}",
        dlq[0].error
    );
    assert_eq!(dlq[0].event.as_ref().map(Event::id), Some(event.id()));
}

/// An entry that is not an event (written by a raw client) goes to the dead-letter queue with
/// the reason and its bytes as written; the events behind it are handled.
pub async fn garbage_goes_to_dead_letters_without_blocking<F: BusFixture>(fixture: &F) {
    let bus = fixture.bus().await;
    let topic = fixture.topic();
    let garbage = b"{\"specversion\": \"1.0\", this is not json".to_vec();
    fixture.publish_raw(&topic, &garbage).await;
    let events: Vec<Event> = (0..5).map(numbered).collect();
    bus.publish_batch(&topic, &events).await.expect("publish");
    let seen = Seen::default();
    let sub = subscribe::<F>(
        &bus,
        &topic,
        &group("g"),
        recording(&seen),
        fixture.options(),
    )
    .await;
    let all: HashSet<String> = events.iter().map(|e| e.id().to_owned()).collect();
    let dlq = wait_dead_letters(&bus, &topic, 1).await;
    wait_until("the events behind the garbage are handled", || {
        seen.distinct() == all
    })
    .await;
    sub.shutdown().await.expect("shutdown");
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(
        dlq[0].payload, garbage,
        "the dead letter does not keep the bytes as written"
    );
    assert!(dlq[0].event.is_none());
    assert!(
        dlq[0].error.contains("undecodable"),
        "reason: {}",
        dlq[0].error
    );
}

/// A handler that panics is retried like one that failed, and the subscription survives.
pub async fn panicking_handler_is_retried<F: BusFixture>(fixture: &F) {
    let bus = fixture.bus().await;
    let topic = fixture.topic();
    let seen = Seen::default();
    let handler = {
        let seen = seen.clone();
        handler_fn(move |event, ctx| {
            let seen = seen.clone();
            async move {
                seen.push(event.id(), ctx.attempt, &ctx.consumer);
                if ctx.attempt == 1 {
                    panic!("handler bug on first attempt");
                }
                Ok(())
            }
        })
    };
    let sub = subscribe::<F>(
        &bus,
        &topic,
        &group("g"),
        Arc::new(handler),
        fixture.options().retry(fast_retry(3)),
    )
    .await;
    let (first, second) = (numbered(1), numbered(2));
    bus.publish(&topic, &first).await.expect("publish");
    wait_until("the retry after the panic", || {
        seen.attempts_of(first.id()).len() >= 2
    })
    .await;
    bus.publish(&topic, &second).await.expect("publish");
    wait_until("the next event is handled", || {
        seen.attempts_of(second.id()).len() >= 2
    })
    .await;
    sub.shutdown().await.expect("shutdown");
    assert_eq!(seen.attempts_of(first.id()), vec![1, 2]);
    let dlq = bus.dead_letters(&topic, 10).await.expect("dead letters");
    assert!(dlq.is_empty(), "{dlq:?}");
}
