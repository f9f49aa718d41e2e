//! A member process of a Redis Streams consumer group, for process-level fault tests (kill -9,
//! SIGSTOP) of the bus: it subscribes with the given settings and records every handler call
//! in a Redis list (`start|key|seq|name` before, `end|key|seq|name` after), the history
//! `windlass_testkit::conformance::bus::history` checks.
//!
//! ```text
//! windlass-bus-member --redis URL --prefix P --topic T --group G --name N --history KEY
//!     [--consumer C] [--partitions 4] [--lease-ms 2000] [--timeout-ms 1000]
//!     [--latency-ms 3] [--slow KEY:SEQ:MS] [--slow-blocking] [--reject-slow]
//! ```
//! Prints `READY` once subscribed; shuts down gracefully when stdin closes (exit 0).
//! `--slow KEY:SEQ:MS` makes the call of that event take MS ms (blocking its thread with
//! `--slow-blocking`); `--reject-slow` then rejects it at once (a dead-letter write, no `end`
//! recorded) instead of succeeding. Events carry their key as `partitionkey` and
//! their sequence number as data.

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::Arc;
use std::time::Duration;

use windlass_eventbus::redis::{RedisBus, RedisConfig};
use windlass_eventbus::{
    Event, Group, HandlerError, PartitionCount, SubscribeOptions, Subscriber, Topic, handler_fn,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn args() -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let name = flag.trim_start_matches("--").to_owned();
        if name == "reject-slow" || name == "slow-blocking" {
            out.insert(name, "1".to_owned());
        } else if let Some(value) = it.next() {
            out.insert(name, value);
        }
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let a = args();
    let get = |k: &str| {
        a.get(k)
            .cloned()
            .ok_or_else(|| format!("--{k} is required"))
    };
    let num = |k: &str, d: u64| a.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
    let name = get("name")?;
    let history = get("history")?;
    let client = redis::Client::open(get("redis")?.as_str())?;
    let recorder = client.get_multiplexed_async_connection().await?;
    let config = RedisConfig::new(get("redis")?)
        .prefix(get("prefix")?)
        .block(Duration::from_millis(200))
        .partitions(PartitionCount::new(num("partitions", 4) as u32)?)
        .lease_ttl(Duration::from_millis(num("lease-ms", 2000)));
    let bus = RedisBus::connect(config).await?;
    let latency = Duration::from_millis(num("latency-ms", 3));
    let slow: Option<(String, usize, Duration)> = a.get("slow").and_then(|s| {
        let mut p = s.split(':');
        Some((
            p.next()?.to_owned(),
            p.next()?.parse().ok()?,
            Duration::from_millis(p.next()?.parse().ok()?),
        ))
    });
    let reject_slow = a.contains_key("reject-slow");
    let slow_blocking = a.contains_key("slow-blocking");
    let handler = {
        let (recorder, history, name) = (recorder.clone(), history.clone(), name.clone());
        handler_fn(move |event: Event, _ctx| {
            let (mut recorder, history, name, slow) = (
                recorder.clone(),
                history.clone(),
                name.clone(),
                slow.clone(),
            );
            async move {
                let key = event.partition_key().unwrap_or_default().to_owned();
                let seq: usize = event
                    .data_as()
                    .map_err(HandlerError::reject)?
                    .unwrap_or_default();
                let _: i64 = redis::cmd("RPUSH")
                    .arg(&history)
                    .arg(format!("start|{key}|{seq}|{name}"))
                    .query_async(&mut recorder)
                    .await?;
                let is_slow = slow
                    .as_ref()
                    .is_some_and(|(k, s, _)| *k == key && *s == seq);
                if let Some((_, _, pause)) = slow.as_ref().filter(|_| is_slow) {
                    if slow_blocking {
                        // Frozen (SIGSTOP) in a blocking pause, the call goes on right where
                        // it stopped once resumed, without an await at which its deadline
                        // could drop it first.
                        std::thread::sleep(*pause);
                    } else {
                        tokio::time::sleep(*pause).await;
                    }
                    if reject_slow {
                        return Err(HandlerError::reject("rejected after a long pause"));
                    }
                } else {
                    // A little jitter so calls of different keys interleave.
                    let h = seq as u64 * 7919 + key.len() as u64 * 104_729;
                    tokio::time::sleep(Duration::from_micros(h % (latency.as_micros() as u64 + 1)))
                        .await;
                }
                let _: i64 = redis::cmd("RPUSH")
                    .arg(&history)
                    .arg(format!("end|{key}|{seq}|{name}"))
                    .query_async(&mut recorder)
                    .await?;
                Ok(())
            }
        })
    };
    let mut options = SubscribeOptions::default()
        .concurrency(8)
        .handler_timeout(Duration::from_millis(num("timeout-ms", 1000)));
    if let Some(c) = a.get("consumer") {
        options = options.consumer(c.clone());
    }
    let sub = bus
        .subscribe(
            &Topic::new(get("topic")?)?,
            &Group::new(get("group")?)?,
            Arc::new(handler),
            options,
        )
        .await?;
    println!("READY");
    // Until stdin closes: the test ends a member gracefully by closing its stdin.
    tokio::task::spawn_blocking(|| {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            if line.is_err() {
                break;
            }
        }
    })
    .await?;
    sub.shutdown().await?;
    Ok(())
}
