//! The job store conformance suite against real Postgres (a fresh database per test), plus
//! what only Postgres has: migrations, transactional enqueue, bulk insert, LISTEN outages.

use std::sync::Arc;
use std::time::Duration;
use windlass_core::TenantScope;

use windlass_jobs::postgres::{PgJobStore, migrate};
use windlass_jobs::{EnqueueOptions, JobState, JobStore, Jobs, Worker};
use windlass_testkit::jobs::{Action, Probe, fast_config, token, wait_state};
use windlass_testkit::postgres::{TestDatabase, fresh_database};

async fn store() -> (Arc<dyn JobStore>, TestDatabase) {
    let db = fresh_database().await;
    migrate(&db.pool).await.expect("migrate");
    (Arc::new(PgJobStore::new(db.pool.clone())), db)
}

windlass_testkit::job_store_conformance!(crate::store());

#[tokio::test]
async fn migrate_is_idempotent_and_safe_concurrently() {
    let db = fresh_database().await;
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let pool = db.pool.clone();
            tokio::spawn(async move { migrate(&pool).await })
        })
        .collect();
    for r in runs {
        r.await.unwrap().expect("concurrent migrate");
    }
    migrate(&db.pool).await.expect("migrate again");
    let versions: Vec<i32> =
        sqlx::query_scalar("SELECT version FROM windlass_jobs_migrations ORDER BY version")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    // The shipped SQL is itself idempotent (for users running it with their own migrator).
    for (_, _, sql) in windlass_jobs::postgres::MIGRATIONS {
        sqlx::raw_sql(*sql)
            .execute(&db.pool)
            .await
            .expect("re-run migration file");
    }
}

#[tokio::test]
async fn transactional_enqueue_follows_the_callers_transaction() {
    let (store, db) = store().await;
    let t = token();
    let opts = EnqueueOptions::new().queue("q");
    let job = || {
        opts.build(&Probe {
            token: t.clone(),
            n: 1,
            action: Action::Succeed,
        })
        .unwrap()
    };

    let mut tx = db.pool.begin().await.unwrap();
    let rolled_back = PgJobStore::insert_in(&mut tx, vec![job()]).await.unwrap()[0]
        .id()
        .unwrap();
    tx.rollback().await.unwrap();
    assert!(
        store
            .get(&TenantScope::All, rolled_back)
            .await
            .unwrap()
            .is_none()
    );

    let w = Worker::new(store.clone())
        .register::<Probe>()
        .config(fast_config().poll_interval(Duration::from_secs(60)))
        .start()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut tx = db.pool.begin().await.unwrap();
    let id = PgJobStore::insert_in(&mut tx, vec![job()]).await.unwrap()[0]
        .id()
        .unwrap();
    // Invisible to workers until commit.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(store.get(&TenantScope::All, id).await.unwrap().is_none());
    tx.commit().await.unwrap();
    // Woken by the NOTIFY delivered at commit (the poll interval is a minute).
    wait_state(&store, id, JobState::Completed, Duration::from_secs(10)).await;
    w.shutdown().await.unwrap();
}

#[tokio::test]
async fn bulk_insert_splits_large_batches() {
    let (store, _db) = store().await;
    let jobs = Jobs::from_arc(store.clone());
    let t = token();
    let probes: Vec<Probe> = (0..25_000)
        .map(|n| Probe {
            token: t.clone(),
            n,
            action: Action::Succeed,
        })
        .collect();
    let out = jobs
        .enqueue_many(&probes, &EnqueueOptions::new().queue("bulk"))
        .await
        .unwrap();
    assert_eq!(out.iter().filter(|e| e.id().is_some()).count(), 25_000);
    let ids: Vec<i64> = out.iter().map(|e| e.id().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids are returned in input order"
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM windlass_jobs WHERE queue = 'bulk'")
        .fetch_one(store_pool(&_db))
        .await
        .unwrap();
    assert_eq!(n, 25_000);
}

fn store_pool(db: &TestDatabase) -> &sqlx::PgPool {
    &db.pool
}

#[tokio::test]
async fn workers_survive_losing_their_listen_connection() {
    let (store, db) = store().await;
    let jobs = Jobs::from_arc(store.clone());
    let t = token();
    let w = Worker::new(store.clone())
        .register::<Probe>()
        .config(fast_config().poll_interval(Duration::from_secs(60)))
        .start()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Kill every other connection to the test database (the LISTEN one included).
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        .execute(&db.pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let id = jobs
        .enqueue(
            &Probe {
                token: t,
                n: 1,
                action: Action::Succeed,
            },
            &EnqueueOptions::new().queue("q"),
        )
        .await
        .unwrap()
        .id()
        .unwrap();
    wait_state(&store, id, JobState::Completed, Duration::from_secs(20)).await;
    w.shutdown().await.unwrap();
}

#[tokio::test]
async fn garbage_rows_written_by_hand_do_not_stop_the_worker() {
    let (store, db) = store().await;
    // A row with args that are not even an object, and errors that are not attempt records.
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO windlass_jobs (queue, kind, args, errors) VALUES ('q', 'windlass.probe', '\"garbage\"', '[{\"x\":1}]') RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let w = Worker::new(store.clone())
        .register::<Probe>()
        .config(fast_config())
        .start()
        .unwrap();
    let rec = wait_state(&store, id, JobState::Discarded, Duration::from_secs(10)).await;
    assert!(
        rec.errors
            .iter()
            .any(|e| e.error.contains("no longer decode")),
        "{:?}",
        rec.errors
    );
    w.shutdown().await.unwrap();
}

/// Snoozes for longer than any timestamp can hold.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnoozeForever;

impl windlass_jobs::Job for SnoozeForever {
    const KIND: &'static str = "test.snooze_forever";
    async fn run(&self, _ctx: windlass_jobs::JobContext) -> Result<(), windlass_jobs::JobError> {
        Err(windlass_jobs::JobError::snooze(Duration::MAX))
    }
}

#[tokio::test]
async fn an_absurd_snooze_does_not_wedge_the_job_in_running() {
    let (store, _db) = store().await;
    let jobs = Jobs::from_arc(store.clone());
    let w = Worker::new(store.clone())
        .register::<SnoozeForever>()
        .config(fast_config())
        .start()
        .unwrap();
    let id = jobs
        .enqueue(&SnoozeForever, &EnqueueOptions::new().queue("q"))
        .await
        .unwrap()
        .id()
        .unwrap();
    // Before the fix, computing the snooze's run_at panicked inside the attempt's task: the
    // outcome was never written and the heartbeat kept the row `running` forever.
    let rec = wait_state(&store, id, JobState::Retryable, Duration::from_secs(10)).await;
    assert!(rec.run_at > chrono::Utc::now() + chrono::Duration::days(365));
    assert_eq!(rec.attempt, 0, "a snooze does not consume an attempt");
    w.shutdown().await.unwrap();
}

#[tokio::test]
async fn unique_keys_do_not_collide_across_tenants() {
    let (store, _db) = store().await;
    let jobs = Jobs::from_arc(store.clone());
    let t = token();
    let probe = |n| Probe {
        token: t.clone(),
        n,
        action: Action::Succeed,
    };
    let opts = |org: &str| {
        EnqueueOptions::new()
            .queue("q")
            .org_id(org)
            .unique(windlass_jobs::UniqueOptions::by_key("invoice-42"))
    };
    let a = jobs.enqueue(&probe(1), &opts("acme")).await.unwrap();
    let b = jobs.enqueue(&probe(2), &opts("globex")).await.unwrap();
    let a2 = jobs.enqueue(&probe(3), &opts("acme")).await.unwrap();
    assert!(a.id().is_some());
    assert!(
        b.id().is_some(),
        "tenant globex's job was dropped as a duplicate of tenant acme's"
    );
    assert!(a2.id().is_none(), "same tenant, same key: a duplicate");
}

/// Blocks its thread (ignores cancellation and cannot be aborted) for a while, then succeeds.
#[derive(serde::Serialize, serde::Deserialize)]
struct BlockThenSucceed {
    ms: u64,
}

impl windlass_jobs::Job for BlockThenSucceed {
    const KIND: &'static str = "test.block_then_succeed";
    async fn run(&self, _ctx: windlass_jobs::JobContext) -> Result<(), windlass_jobs::JobError> {
        std::thread::sleep(Duration::from_millis(self.ms));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_finishing_at_the_shutdown_deadline_is_completed_not_released() {
    let (store, _db) = store().await;
    let jobs = Jobs::from_arc(store.clone());
    let w = Worker::new(store.clone())
        .register::<BlockThenSucceed>()
        .config(
            fast_config()
                .shutdown_timeout(Duration::from_millis(200))
                .cancel_grace(Duration::from_secs(5))
                // Leave room for the long grace before anyone may rescue (validated).
                .heartbeat(Duration::from_millis(50), Duration::from_secs(12)),
        )
        .start()
        .unwrap();
    let id = jobs
        .enqueue(
            &BlockThenSucceed { ms: 800 },
            &EnqueueOptions::new().queue("q"),
        )
        .await
        .unwrap()
        .id()
        .unwrap();
    wait_state(&store, id, JobState::Running, Duration::from_secs(10)).await;
    // The deadline passes while the attempt cannot be stopped; it then succeeds. Before the
    // fix the worker released the row at once (back to `available`) and dropped the success:
    // the job would run a second time.
    w.shutdown().await.unwrap();
    let rec = store.get(&TenantScope::All, id).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.attempt),
        (JobState::Completed, 1),
        "{rec:?}"
    );
}

#[tokio::test]
async fn requeues_of_an_unknown_kind_do_not_grow_the_error_list_forever() {
    let (store, db) = store().await;
    // A job of a kind nobody registered that was already requeued 1000 times.
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO windlass_jobs (queue, kind, errors) \
         SELECT 'q', 'test.nobody_knows_me', jsonb_agg(jsonb_build_object( \
                    'attempt', 1, 'at', now(), 'worker', 'w', 'error', 'old ' || n)) \
           FROM generate_series(1, 1000) n RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    // Workers no longer fetch kinds they do not know; a store-level fetch (any kind) and a
    // requeue stand for a worker that does.
    let got = store.fetch("q", &[], 1, "w").await.unwrap();
    assert_eq!(got[0].id, id);
    let requeue = windlass_jobs::Outcome::Requeue {
        run_at: chrono::Utc::now(),
        error: Some(windlass_jobs::AttemptError::new(
            1,
            "no worker registered it",
            Some("w".into()),
        )),
    };
    assert_eq!(
        store
            .finish("w", &[windlass_jobs::Finish::new(id, 1, requeue)])
            .await
            .unwrap(),
        1
    );
    let rec = store.get(&TenantScope::All, id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Retryable);
    assert_eq!(
        rec.errors.len(),
        1000,
        "the oldest entry makes room for the newest"
    );
    assert_eq!(rec.errors[0].error, "old 2");
}

/// Holds one connection of the pool it is given (by database name) for `secs` in a
/// `pg_sleep`, ignoring cancellation.
#[derive(serde::Serialize, serde::Deserialize)]
struct HoldConnection {
    db: String,
    secs: f64,
}

static POOLS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, sqlx::PgPool>>,
> = std::sync::LazyLock::new(Default::default);

impl windlass_jobs::Job for HoldConnection {
    const KIND: &'static str = "test.hold_connection";
    async fn run(&self, ctx: windlass_jobs::JobContext) -> Result<(), windlass_jobs::JobError> {
        if ctx.attempt() > 1 {
            return Ok(());
        }
        let pool = POOLS.lock().unwrap().get(&self.db).cloned().expect("pool");
        sqlx::query("SELECT pg_sleep($1)")
            .bind(self.secs)
            .execute(&pool)
            .await?;
        Ok(())
    }
}

/// Heartbeats do not share the pool with jobs: jobs holding every pooled connection for
/// longer than `rescue_after` are not rescued (nor self-fenced), and each runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_holding_every_pooled_connection_do_not_starve_heartbeats() {
    let db = fresh_database().await;
    migrate(&db.pool).await.unwrap();
    let small = db.new_pool(3).await;
    POOLS
        .lock()
        .unwrap()
        .insert(db.name().to_owned(), small.clone());
    let starved: Arc<dyn JobStore> = Arc::new(PgJobStore::new(small));
    let direct: Arc<dyn JobStore> = Arc::new(PgJobStore::new(db.pool.clone()));
    // fast_config: heartbeat 50 ms, self-fence after 300 ms, rescue after 600 ms.
    let a = Worker::new(starved.clone())
        .register::<HoldConnection>()
        .config(fast_config().queue("q", 3).worker_id("starved"))
        .start()
        .unwrap();
    let jobs = Jobs::from_arc(direct.clone());
    let job = HoldConnection {
        db: db.name().to_owned(),
        secs: 1.5,
    };
    let ids: Vec<i64> = jobs
        .enqueue_many([&job, &job, &job], &EnqueueOptions::new().queue("q"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id().unwrap())
        .collect();
    for id in &ids {
        wait_state(&direct, *id, JobState::Running, Duration::from_secs(10)).await;
    }
    // A second worker, on its own pool, rescues whatever looks dead.
    let b = Worker::new(direct.clone())
        .register::<HoldConnection>()
        .config(fast_config().queue("q", 3).worker_id("rescuer"))
        .start()
        .unwrap();
    for id in &ids {
        let rec = wait_state(&direct, *id, JobState::Completed, Duration::from_secs(20)).await;
        assert_eq!(
            (rec.attempt, rec.errors.len()),
            (1, 0),
            "job {id} was rescued or fenced while it ran: {:?}",
            rec.errors
        );
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A worker cut off from Postgres by a silent partition (every connection, heartbeat one
/// included, hangs) fences itself: its attempt stops before `rescue_after`, the other worker's
/// rescue attempt never overlaps it, and once the partition heals the cut-off worker's late
/// outcome is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_worker_fences_itself_and_its_late_outcome_is_refused() {
    use windlass_testkit::jobs::{assert_attempts_never_overlap, events};
    use windlass_testkit::proxy::TcpProxy;
    let (direct, db) = store().await;
    let upstream: sqlx::postgres::PgConnectOptions = db.url.parse().unwrap();
    let addr = format!("{}:{}", upstream.get_host(), upstream.get_port())
        .parse()
        .unwrap_or_else(|_| "127.0.0.1:5432".parse().unwrap());
    let proxy = TcpProxy::start(addr);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(upstream.clone().host("127.0.0.1").port(proxy.port()))
        .await
        .unwrap();
    let cut: Arc<dyn JobStore> = Arc::new(PgJobStore::new(pool));
    let t = token();
    let a = Worker::new(cut.clone())
        .register::<Probe>()
        .config(fast_config().worker_id("cut-off"))
        .start()
        .unwrap();
    let id = Jobs::from_arc(direct.clone())
        .enqueue(
            &Probe {
                token: t.clone(),
                n: 1,
                action: Action::StopSlowlyFirst(100),
            },
            &EnqueueOptions::new().queue("q"),
        )
        .await
        .unwrap()
        .id()
        .unwrap();
    wait_state(&direct, id, JobState::Running, Duration::from_secs(10)).await;
    proxy.blackhole();
    let b = Worker::new(direct.clone())
        .register::<Probe>()
        .config(fast_config().worker_id("rescuer"))
        .start()
        .unwrap();
    let rec = wait_state(&direct, id, JobState::Completed, Duration::from_secs(10)).await;
    assert_eq!(rec.attempt, 2);
    assert!(
        rec.errors[0].error.contains("rescued: worker cut-off"),
        "{:?}",
        rec.errors
    );
    assert_attempts_never_overlap(&events(&t), id);
    // Heal: reset the hung connections; the cut-off worker's outcome for attempt 1 is written
    // now, and refused.
    proxy.cut();
    proxy.pass();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    let after = direct.get(&TenantScope::All, id).await.unwrap().unwrap();
    assert_eq!(
        (after.state, after.attempt, after.errors.len()),
        (JobState::Completed, 2, 1),
        "{after:?}"
    );
}

/// A bulk enqueue is atomic at any size: 20 001 jobs with one bad row insert nothing, whether
/// the row is caught at validation (a NUL character) or refused by the database in the COPY
/// (the default path at this size; `postgres_bulk.rs` covers the `unnest` path too); inside
/// the caller's transaction the failure leaves that transaction usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_enqueue_with_a_bad_row_inserts_nothing() {
    let (store, db) = store().await;
    let jobs = Jobs::from_arc(store.clone());
    let t = token();
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM windlass_jobs")
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };
    let mut probes: Vec<Probe> = (0..20_001)
        .map(|n| Probe {
            token: t.clone(),
            n,
            action: Action::Succeed,
        })
        .collect();
    probes[20_000].token = "bad\0token".into();
    let err = jobs
        .enqueue_many(&probes, &EnqueueOptions::new().queue("bulk"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, windlass_jobs::Error::InvalidArgs { reason, .. } if reason.contains("$.token")),
        "{err:?}"
    );
    assert_eq!(count().await, 0);
    // A row the database refuses after validation (a trigger stands for any constraint).
    probes[20_000].token = t.clone();
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_20000() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.args->>'n' = '20000' THEN RAISE EXCEPTION 'row 20000 refused'; END IF; \
         RETURN NEW; END $$; \
         CREATE TRIGGER refuse_20000 BEFORE INSERT ON windlass_jobs \
         FOR EACH ROW EXECUTE FUNCTION refuse_20000();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let err = jobs
        .enqueue_many(&probes, &EnqueueOptions::new().queue("bulk"))
        .await
        .unwrap_err();
    assert!(format!("{err}").contains("row 20000 refused"), "{err}");
    assert_eq!(
        count().await,
        0,
        "rows copied before the refused one were kept"
    );
    // Inside the caller's transaction: its own write survives, no job is inserted.
    sqlx::query("CREATE TABLE business (v int)")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO business VALUES (1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let rows: Vec<_> = probes[19_990..]
        .iter()
        .map(|p| EnqueueOptions::new().queue("bulk").build(p).unwrap())
        .collect();
    assert!(PgJobStore::insert_in(&mut tx, rows).await.is_err());
    sqlx::query("INSERT INTO business VALUES (2)")
        .execute(&mut *tx)
        .await
        .expect("the caller's transaction is still usable");
    tx.commit().await.unwrap();
    let business: i64 = sqlx::query_scalar("SELECT count(*) FROM business")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!((business, count().await), (2, 0));
}

/// Effects in the job's own transaction, completed there (`complete_in`), then the attempt
/// "crashes" (panics) before the worker could write its outcome: the job is completed and its
/// effect happened once; the worker's late failure is refused, nothing runs again.
#[derive(serde::Serialize, serde::Deserialize)]
struct EffectThenCrash {
    db: String,
}

impl windlass_jobs::Job for EffectThenCrash {
    const KIND: &'static str = "test.effect_then_crash";
    async fn run(&self, ctx: windlass_jobs::JobContext) -> Result<(), windlass_jobs::JobError> {
        let pool = POOLS.lock().unwrap().get(&self.db).cloned().expect("pool");
        let mut tx = pool.begin().await?;
        sqlx::query("INSERT INTO effects (job_id, attempt) VALUES ($1, $2)")
            .bind(ctx.job_id())
            .bind(i64::from(ctx.attempt()))
            .execute(&mut *tx)
            .await?;
        PgJobStore::complete_in(&mut tx, &ctx).await?;
        tx.commit().await?;
        panic!("crashed after the commit, before the worker wrote the outcome");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completing_inside_the_jobs_transaction_makes_its_effect_exactly_once() {
    let (store, db) = store().await;
    POOLS
        .lock()
        .unwrap()
        .insert(db.name().to_owned(), db.pool.clone());
    sqlx::query("CREATE TABLE effects (job_id bigint, attempt int)")
        .execute(&db.pool)
        .await
        .unwrap();
    let w = Worker::new(store.clone())
        .register::<EffectThenCrash>()
        .config(fast_config())
        .start()
        .unwrap();
    let id = Jobs::from_arc(store.clone())
        .enqueue(
            &EffectThenCrash {
                db: db.name().to_owned(),
            },
            &EnqueueOptions::new().queue("q"),
        )
        .await
        .unwrap()
        .id()
        .unwrap();
    let rec = wait_state(&store, id, JobState::Completed, Duration::from_secs(10)).await;
    // Give a wrongly applied retry time to run the job again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.shutdown().await.unwrap();
    let effects: Vec<(i64, i32)> = sqlx::query_as("SELECT job_id, attempt FROM effects")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(effects, vec![(id, 1)]);
    let after = store.get(&TenantScope::All, id).await.unwrap().unwrap();
    assert_eq!(
        (rec.attempt, after.state, after.errors.len()),
        (1, JobState::Completed, 0)
    );

    // Fenced: an attempt that lost its job (rescued) cannot complete in its transaction, so
    // its effects roll back; the attempt that holds the job can.
    let jobs = Jobs::from_arc(store.clone());
    let id = jobs
        .enqueue(
            &EffectThenCrash {
                db: db.name().to_owned(),
            },
            &EnqueueOptions::new().queue("fenced"),
        )
        .await
        .unwrap()
        .id()
        .unwrap();
    let a1 = store.fetch("fenced", &[], 1, "w1").await.unwrap()[0].token();
    tokio::time::sleep(Duration::from_millis(20)).await;
    store.rescue(Duration::from_millis(5)).await.unwrap();
    let a2 = store.fetch("fenced", &[], 1, "w2").await.unwrap()[0].token();
    let mut tx = db.pool.begin().await.unwrap();
    let lost = PgJobStore::complete_attempt_in(&mut tx, "w1", a1).await;
    assert!(
        matches!(lost, Err(windlass_jobs::Error::AttemptLost { id: got, attempt: 1 }) if got == id),
        "{lost:?}"
    );
    tx.rollback().await.unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    PgJobStore::complete_attempt_in(&mut tx, "w2", a2)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let rec = store.get(&TenantScope::All, id).await.unwrap().unwrap();
    assert_eq!((rec.state, rec.attempt), (JobState::Completed, 2));
}
