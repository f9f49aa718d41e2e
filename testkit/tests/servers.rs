//! The harness's private servers, cluster and proxy do what fault tests rely on.

use std::time::Duration;

use redis::AsyncCommands;
use windlass_testkit::proxy::TcpProxy;
use windlass_testkit::servers::{PrivatePostgres, PrivateRedis};

#[tokio::test]
async fn private_redis_keeps_acknowledged_writes_across_kill_and_restart() {
    let mut server = PrivateRedis::start_persistent();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = conn.set("k", "v").await.unwrap();
    server.kill();
    assert!(
        client.get_multiplexed_async_connection().await.is_err(),
        "the server must be down after kill"
    );
    server.restart();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let v: Option<String> = conn.get("k").await.unwrap();
    assert_eq!(v.as_deref(), Some("v"));
}

#[tokio::test]
async fn private_redis_freeze_makes_commands_hang_until_thaw() {
    let server = PrivateRedis::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    server.freeze();
    let frozen = tokio::time::timeout(
        Duration::from_millis(300),
        redis::cmd("PING").query_async::<String>(&mut conn),
    )
    .await;
    assert!(frozen.is_err(), "a frozen server must not answer");
    server.thaw();
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
}

#[tokio::test]
async fn private_postgres_survives_a_crash_with_committed_rows() {
    let pg = PrivatePostgres::start();
    let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    sqlx::query("CREATE TABLE t (x int)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES (1)")
        .execute(&pool)
        .await
        .unwrap();
    pg.restart();
    // Old connections are gone; the pool reconnects.
    let mut n = None;
    for _ in 0..50 {
        if let Ok(v) = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM t")
            .fetch_one(&pool)
            .await
        {
            n = Some(v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(n, Some(1));
}

#[tokio::test]
async fn proxy_blackhole_holds_bytes_and_cut_resets() {
    let redis_addr = "127.0.0.1:6379".parse().unwrap();
    let proxy = TcpProxy::start(redis_addr);
    let url = format!("redis://127.0.0.1:{}", proxy.port());
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");

    proxy.blackhole();
    let mut c2 = conn.clone();
    let pending = tokio::spawn(async move {
        redis::cmd("ECHO")
            .arg("late")
            .query_async::<String>(&mut c2)
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !pending.is_finished(),
        "nothing may answer through a blackhole"
    );
    proxy.pass();
    assert_eq!(pending.await.unwrap().unwrap(), "late");

    proxy.cut();
    let after_cut = tokio::time::timeout(
        Duration::from_secs(5),
        redis::cmd("PING").query_async::<String>(&mut conn),
    )
    .await
    .expect("a cut connection fails fast");
    assert!(
        after_cut.is_err(),
        "the cut connection must report an error"
    );
}

#[tokio::test]
async fn redis_cluster_spreads_keys_over_three_masters() {
    let cluster = windlass_testkit::redis_cluster::fresh_prefix().await;
    let mut conn = cluster.conn.clone();
    for i in 0..30 {
        let _: () = conn
            .set(format!("{}:{i}", cluster.prefix), i)
            .await
            .unwrap();
    }
    let mut masters_with_keys = 0;
    for url in &cluster.urls {
        let c = redis::Client::open(url.as_str()).unwrap();
        let mut node = c.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", cluster.prefix))
            .query_async(&mut node)
            .await
            .unwrap();
        if !keys.is_empty() {
            masters_with_keys += 1;
        }
    }
    assert_eq!(masters_with_keys, 3, "30 keys should land on all 3 masters");
}
