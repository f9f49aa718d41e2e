//! `verify` finds a deleted event and one out of order.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_verify_finds_an_event_deleted_from_one_side_and_one_out_of_order() {
    let redis = windlass_testkit::redis::fresh_prefix().await;
    let brokers = tokio::task::spawn_blocking(windlass_testkit::kafka::brokers)
        .await
        .unwrap();
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let (domain, topic, _, _) = domains(&tag);
    windlass_testkit::kafka::create_topic(&brokers, &topic, 2).await;
    let b = buses(&redis.url, &redis.prefix, &brokers).await;
    let events: Vec<Event> = (0..40).map(|n| event(n, 4)).collect();
    for e in &events {
        b.redis.publish(&topic, e).await.unwrap();
    }
    // Kafka gets the same events, except two of key-1 swapped (n = 5 and 9).
    let mut on_kafka = events.clone();
    on_kafka.swap(5, 9);
    b.kafka.publish_batch(&topic, &on_kafka).await.unwrap();

    let from = chrono::Utc::now() - chrono::Duration::minutes(5);
    let until = chrono::Utc::now() + chrono::Duration::minutes(1);
    let opts = VerifyOptions::default().timeout(Duration::from_secs(20));
    let run = async || {
        verify(
            &b.redis,
            &b.kafka,
            &domain,
            std::slice::from_ref(&topic),
            from,
            until,
            &opts,
        )
        .await
        .unwrap()
    };
    let before = run().await;
    let t = &before.topics[0];
    assert!(
        t.complete && t.missing_on_kafka.is_empty() && t.missing_on_redis.is_empty(),
        "{t:?}"
    );
    assert_eq!(t.out_of_order.len(), 1, "{t:?}");
    assert_eq!(
        (
            t.out_of_order[0].id.as_str(),
            t.out_of_order[0].before.as_str()
        ),
        (events[5].id(), events[9].id())
    );

    // Delete one event from the Redis side on purpose.
    let victim = events[17].id().to_owned();
    let mut conn = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut deleted = 0;
    for key in b.redis.stream_keys(&topic).await.unwrap() {
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        for e in entries.ids {
            let hit = e.map.values().any(|v| match v {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).contains(&victim),
                _ => false,
            });
            if hit {
                let n: i64 = redis::cmd("XDEL")
                    .arg(&key)
                    .arg(&e.id)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                deleted += n;
            }
        }
    }
    assert_eq!(deleted, 1, "the event was on Redis once");
    let after = run().await;
    let t = &after.topics[0];
    assert_eq!(t.missing_on_redis, vec![victim], "{t:?}");
    assert!(t.missing_on_kafka.is_empty());
    assert_eq!((t.on_redis, t.on_kafka), (39, 40));
    assert!(!after.is_consistent());
    // A topic outside the domain is refused.
    let other = Topic::new(format!("other{tag}")).unwrap();
    assert!(matches!(
        verify(&b.redis, &b.kafka, &domain, &[other], from, until, &opts).await,
        Err(Error::Config(_))
    ));
    redis.cleanup().await;
}
