//! The windlass quickstart: runs with no service at all (in-memory backends).
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! 1. Event bus: publish events, subscribe in consumer groups, watch a failing handler retried
//!    with backoff and then dead-lettered, and follow a correlation chain across events.
//! 2. Jobs: typed background jobs on named queues, a retry, a unique job, graceful shutdown.
//! 3. Cache: a typed, tenant-scoped entry loaded once, then invalidated by an `invoice.paid`
//!    event through a rule on the bus.
//! 4. Outbox: orders and their events committed in one SQLite transaction (a rolled-back one
//!    never publishes), a relay publishing to the bus, an inbox consumer keeping a projection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use windlass::eventbus::{
    DeadLetters, Event, Group, HandlerError, MemoryBus, Publisher, RetryPolicy, SubscribeOptions,
    Subscriber, Topic, handler_fn,
};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    event_bus().await?;
    jobs().await?;
    cache().await?;
    outbox().await?;
    println!("\nquickstart finished: every step above ran in this process, no service needed");
    Ok(())
}

/// Polls `cond` until it holds or `timeout` passes.
async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

async fn event_bus() -> Result<(), Error> {
    println!("== 1. event bus (memory backend)");
    let bus = MemoryBus::new();
    let orders = Topic::new("orders")?;
    let invoices = Topic::new("invoices")?;

    // The billing service reacts to each placed order with an invoice, caused by the order.
    let billing_bus = bus.clone();
    let invoices_topic = invoices.clone();
    let billing = bus
        .subscribe(
            &orders,
            &Group::new("billing")?,
            Arc::new(handler_fn(move |order: Event, _ctx| {
                let bus = billing_bus.clone();
                let topic = invoices_topic.clone();
                async move {
                    let invoice = Event::builder("/billing", "invoice.created")
                        .caused_by(&order)
                        .subject(format!("inv-for-{}", order.subject().unwrap_or("?")))
                        .build()
                        .map_err(HandlerError::reject)?;
                    bus.publish(&topic, &invoice).await?;
                    Ok(())
                }
            })),
            SubscribeOptions::default(),
        )
        .await?;

    // The mailer is flaky for order "ord-2": it fails every time, so windlass retries it with
    // exponential backoff and then moves it to the dead-letter queue with the error.
    let attempts = Arc::new(AtomicU32::new(0));
    let mailer_attempts = attempts.clone();
    let mailer = bus
        .subscribe(
            &orders,
            &Group::new("mailer")?,
            Arc::new(handler_fn(move |order: Event, ctx| {
                let attempts = mailer_attempts.clone();
                async move {
                    if order.subject() == Some("ord-2") {
                        attempts.fetch_add(1, Ordering::SeqCst);
                        println!(
                            "   mailer: attempt {} for ord-2 fails (SMTP down)",
                            ctx.attempt
                        );
                        return Err(HandlerError::retry("SMTP server unreachable"));
                    }
                    println!(
                        "   mailer: confirmation sent for {}",
                        order.subject().unwrap_or("?")
                    );
                    Ok(())
                }
            })),
            SubscribeOptions::default().retry(
                RetryPolicy::default()
                    .with_max_attempts(3)
                    .with_delays(Duration::from_millis(20), Duration::from_millis(200)),
            ),
        )
        .await?;

    // The auditor prints every invoice with its correlation chain.
    let chains = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = chains.clone();
    let auditor = bus
        .subscribe(
            &invoices,
            &Group::new("auditor")?,
            Arc::new(handler_fn(move |invoice: Event, _ctx| {
                let seen = seen.clone();
                async move {
                    println!(
                        "   auditor: {} {} caused by {} in conversation {}",
                        invoice.ty(),
                        invoice.subject().unwrap_or("?"),
                        invoice.causation_id().unwrap_or("-"),
                        invoice.correlation_id().unwrap_or("-"),
                    );
                    seen.lock().unwrap().push(invoice);
                    Ok(())
                }
            })),
            SubscribeOptions::default(),
        )
        .await?;

    let mut placed = Vec::new();
    for n in 1..=3 {
        let order = Event::builder("/shop", "order.placed")
            .subject(format!("ord-{n}"))
            .org_id("acme")
            .partition_key(format!("ord-{n}"))
            .data_json(&serde_json::json!({ "total": n * 10 }))
            .build()?;
        println!(
            "   shop: published order.placed {} (id {})",
            order.subject().unwrap_or("?"),
            order.id()
        );
        bus.publish(&orders, &order).await?;
        placed.push(order);
    }

    let dead_lettered = wait_until(Duration::from_secs(10), || {
        attempts.load(Ordering::SeqCst) >= 3
    })
    .await;
    let invoiced = wait_until(Duration::from_secs(10), || {
        chains.lock().unwrap().len() == 3
    })
    .await;
    let mut dlq = Vec::new();
    for _ in 0..100 {
        dlq = bus.dead_letters(&orders, 10).await?;
        if !dlq.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(dead_lettered && invoiced, "the bus did not deliver in time");
    for dead in &dlq {
        println!(
            "   dead-letter queue: {} from group {}: {}",
            dead.event.as_ref().and_then(|e| e.subject()).unwrap_or("?"),
            dead.group,
            dead.error
        );
    }
    for invoice in chains.lock().unwrap().iter() {
        let order = placed
            .iter()
            .find(|o| Some(o.id()) == invoice.causation_id())
            .expect("a cause");
        assert_eq!(invoice.correlation_id(), Some(order.id()));
        assert_eq!(
            invoice.org_id(),
            order.org_id(),
            "the tenant flows along the chain"
        );
    }
    for sub in [billing, mailer, auditor] {
        sub.shutdown().await?;
    }
    Ok(())
}

/// A job: a serde struct with a kind name and an async `run`.
#[derive(serde::Serialize, serde::Deserialize)]
struct SendWelcomeEmail {
    user_id: u64,
}

impl windlass::jobs::Job for SendWelcomeEmail {
    const KIND: &'static str = "send_welcome_email";

    async fn run(&self, ctx: windlass::jobs::JobContext) -> Result<(), windlass::jobs::JobError> {
        if ctx.attempt() == 1 && self.user_id == 2 {
            println!("   worker: user 2, attempt 1 fails (mail server busy): retried with backoff");
            return Err(windlass::jobs::JobError::retry("mail server busy"));
        }
        println!(
            "   worker: welcomed user {} (attempt {}, tenant {:?})",
            self.user_id,
            ctx.attempt(),
            ctx.org_id()
        );
        Ok(())
    }
}

async fn jobs() -> Result<(), Error> {
    use windlass::jobs::memory::MemoryJobStore;
    use windlass::jobs::{EnqueueOptions, JobState, Jobs, UniqueOptions, Worker, WorkerConfig};

    println!("\n== 2. background jobs (memory store; PgJobStore on Postgres in production)");
    let jobs = Jobs::new(MemoryJobStore::new());
    let worker = Worker::new(jobs.store().clone())
        .register::<SendWelcomeEmail>()
        .config(WorkerConfig::default().retry(
            RetryPolicy::default().with_delays(Duration::from_millis(10), Duration::from_secs(1)),
        ))
        .start()?;

    let first = jobs
        .enqueue(
            &SendWelcomeEmail { user_id: 1 },
            &EnqueueOptions::new().queue("critical"),
        )
        .await?;
    let flaky = jobs
        .enqueue(
            &SendWelcomeEmail { user_id: 2 },
            &EnqueueOptions::new().org_id("acme"),
        )
        .await?;
    let unique = EnqueueOptions::new().unique(UniqueOptions::by_key("welcome-user-3"));
    jobs.enqueue(&SendWelcomeEmail { user_id: 3 }, &unique)
        .await?;
    let again = jobs
        .enqueue(&SendWelcomeEmail { user_id: 3 }, &unique)
        .await?;
    println!(
        "   enqueue: the second unique job for user 3 was {}",
        if again.id().is_none() {
            "refused (already queued)"
        } else {
            "accepted (unexpected!)"
        }
    );

    for id in [first.id(), flaky.id()].into_iter().flatten() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while jobs.get(id).await?.map(|j| j.state) != Some(JobState::Completed) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} did not complete"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    worker.shutdown().await?; // finishes running jobs, releases the rest
    println!("   worker: shut down gracefully");
    Ok(())
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Invoice {
    id: u64,
    paid: bool,
}

async fn cache() -> Result<(), Error> {
    use windlass::cache::{Cache, InvalidationHandler, InvalidationRules, TypePolicy};
    use windlass::core::OrgId;

    println!("\n== 3. cache (in-process store; RedisCacheStore with an optional L1 in production)");
    let cache = Cache::memory();
    let invoices = cache.entry::<Invoice>("invoice", TypePolicy::ttl(Duration::from_secs(60)))?;
    let acme = OrgId::new("acme")?;
    let loads = AtomicU32::new(0);
    for _ in 0..3 {
        // The loader may borrow (`loads`); it runs once, later reads are hits.
        let inv = invoices
            .get_or_load(&acme, "42", &["invoice:inv_42"], || async {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(Invoice {
                    id: 42,
                    paid: false,
                })
            })
            .await?;
        println!("   read invoice 42: {inv:?}");
    }
    println!(
        "   the loader ran {} time(s) for 3 reads",
        loads.load(Ordering::SeqCst)
    );

    // Event-driven invalidation: a rule turns each invoice.paid event into a tag invalidation.
    let bus = MemoryBus::new();
    let billing = Topic::new("billing")?;
    let rules = InvalidationRules::parse(
        r#"on event type "invoice.paid" invalidate tag "invoice:{subject}""#,
    )?;
    let handler = Arc::new(InvalidationHandler::new(cache.clone(), rules));
    let sub = bus
        .subscribe(
            &billing,
            &Group::new("cache")?,
            handler,
            SubscribeOptions::default(),
        )
        .await?;
    let paid = Event::builder("/billing", "invoice.paid")
        .subject("inv_42")
        .org_id("acme")
        .build()?;
    bus.publish(&billing, &paid).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while invoices.get(&acme, "42").await?.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "invalidation did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("   invoice.paid for inv_42 invalidated tag invoice:inv_42: the next read is a miss");
    println!("   stats: {:?}", cache.stats().of("invoice"));
    sub.shutdown().await?;
    Ok(())
}

async fn outbox() -> Result<(), Error> {
    use windlass::outbox::sqlite::{Inbox, Outbox, SqliteOutboxStore, migrate};
    use windlass::outbox::{Relay, RelayOptions};

    println!("\n== 4. transactional outbox (embedded SQLite; Postgres in production)");
    // One connection: an in-memory SQLite database lives as long as its connection.
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect("sqlite::memory:")
        .await?;
    migrate(&pool).await?;
    sqlx::raw_sql(
        "CREATE TABLE orders (id TEXT PRIMARY KEY, cents INTEGER NOT NULL);
         CREATE TABLE revenue (total INTEGER NOT NULL); INSERT INTO revenue VALUES (0);",
    )
    .execute(&pool)
    .await?;

    let bus = MemoryBus::new();
    let orders = Topic::new("orders")?;
    // Consumer: the inbox record and the projection update commit together, so a redelivered
    // event is recognised as a duplicate and applied once.
    let projection =
        Inbox::new(pool.clone(), "revenue")?.handler(|mut tx, event, _ctx| async move {
            let cents: i64 = event.data_as()?.unwrap_or_default();
            sqlx::query("UPDATE revenue SET total = total + ?1")
                .bind(cents)
                .execute(&mut *tx)
                .await?;
            println!(
                "   projection: {} adds {cents} cents",
                event.subject().unwrap_or("?")
            );
            Ok(tx)
        });
    let sub = bus
        .subscribe(
            &orders,
            &Group::new("revenue")?,
            Arc::new(projection),
            SubscribeOptions::default(),
        )
        .await?;
    let relay = Relay::new(SqliteOutboxStore::new(pool.clone()), bus.clone())
        .with_options(RelayOptions::default().poll_interval(Duration::from_millis(20)))
        .spawn();

    // Producer: the order row and its event in one transaction.
    let outbox = Outbox::new();
    for (id, cents, commit) in [
        ("o-1", 1200i64, true),
        ("o-2", 800, true),
        ("o-3", 999, false),
    ] {
        let mut tx = pool.begin().await?;
        sqlx::query("INSERT INTO orders VALUES (?1, ?2)")
            .bind(id)
            .bind(cents)
            .execute(&mut *tx)
            .await?;
        let placed = Event::builder("/shop", "order.placed")
            .subject(id)
            .data_json(&cents)
            .build()?;
        outbox.enqueue(&mut tx, &orders, &placed).await?;
        if commit {
            tx.commit().await?;
            println!("   shop: order {id} and its order.placed event committed together");
        } else {
            tx.rollback().await?;
            println!("   shop: order {id} rolled back: its event is never published");
        }
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let total = loop {
        let total: i64 = sqlx::query_scalar("SELECT total FROM revenue")
            .fetch_one(&pool)
            .await?;
        if total == 2000 || tokio::time::Instant::now() > deadline {
            break total;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        total, 2000,
        "both committed orders, and only they, reach the projection"
    );
    println!("   projected revenue: {total} cents (o-3 never left the database)");
    relay.shutdown().await;
    sub.shutdown().await?;
    Ok(())
}
