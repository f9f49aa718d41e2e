//! The console served on its own, against Postgres and Redis: jobs (`windlass_jobs` table),
//! the outbox (`windlass_outbox`), Redis Streams dead letters and a Redis cache, plus
//! Prometheus metrics on `/metrics`.
//!
//! ```text
//! WINDLASS_ADMIN_TOKEN=$(openssl rand -hex 16) cargo run -p windlass-admin --example console
//! # then open http://127.0.0.1:8080/admin and log in with the token
//! ```
//!
//! Environment: `WINDLASS_POSTGRES_URL`, `WINDLASS_REDIS_URL` (local defaults),
//! `WINDLASS_ADMIN_TOKEN` (a random one is printed when unset), `WINDLASS_ADMIN_ADDR`
//! (`127.0.0.1:8080`), `WINDLASS_ADMIN_ORG` (scope the console to one tenant),
//! `WINDLASS_ADMIN_TOPICS` (comma-separated topics whose dead letters to browse, default
//! `orders`), `WINDLASS_ADMIN_READ_ONLY=1`.

use std::sync::Arc;

use windlass_admin::{
    BusApi, CacheApi, Console, ConsoleConfig, CookieSecurity, JobsApi, OutboxApi, TenantScope,
};
use windlass_cache::{Cache, RedisCacheStore};
use windlass_core::{OrgId, Topic};
use windlass_eventbus::redis::{RedisBus, RedisConfig};
use windlass_jobs::Jobs;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    let pg_url = env(
        "WINDLASS_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    let redis_url = env("WINDLASS_REDIS_URL", "redis://127.0.0.1:6379");
    let addr = env("WINDLASS_ADMIN_ADDR", "127.0.0.1:8080");

    let metrics = windlass_admin::prometheus::install()?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&pg_url)
        .await?;
    windlass_jobs::postgres::migrate(&pool).await?;
    windlass_outbox::postgres::migrate(&pool).await?;

    let jobs = Jobs::new(windlass_jobs::postgres::PgJobStore::new(pool.clone()));
    let outbox = windlass_outbox::postgres::PgOutboxStore::new(pool.clone());
    let bus = Arc::new(RedisBus::connect(RedisConfig::new(redis_url.clone())).await?);
    let mut bus_api = BusApi::new(bus);
    for t in env("WINDLASS_ADMIN_TOPICS", "orders").split(',') {
        bus_api = bus_api.topic(Topic::new(t.trim())?);
    }
    let cache = Cache::new(RedisCacheStore::connect(&redis_url).await?);

    let token = std::env::var("WINDLASS_ADMIN_TOKEN").unwrap_or_else(|_| {
        let t = uuid::Uuid::new_v4().simple().to_string();
        println!("WINDLASS_ADMIN_TOKEN not set; this run's token: {t}");
        t
    });
    let mut config = ConsoleConfig::default()
        .token(token)?
        .read_only(std::env::var("WINDLASS_ADMIN_READ_ONLY").is_ok_and(|v| v == "1"))
        .cookie_security(CookieSecurity::Auto);
    if let Ok(org) = std::env::var("WINDLASS_ADMIN_ORG") {
        config = config.scope(TenantScope::org(OrgId::new(org)?));
    }
    let console = Console::new(config)
        .jobs(JobsApi::new(jobs))
        .outbox(OutboxApi::new(outbox))
        .bus(bus_api)
        .cache(CacheApi::new(cache));

    let app = axum::Router::new()
        .nest("/admin", console.router())
        .merge(windlass_admin::prometheus::router(metrics));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("console on http://{addr}/admin , metrics on http://{addr}/metrics");
    axum::serve(listener, app).await?;
    Ok(())
}
