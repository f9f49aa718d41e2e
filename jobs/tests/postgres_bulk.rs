//! Bulk insert on Postgres: the COPY path beside the `unnest` path (atomicity, duplicates of
//! unique keys, replace-on-conflict, escaping, the caller's transaction) and the NOTIFY
//! limiter (no wake-up lost).

use std::sync::Arc;
use std::time::Duration;

use windlass_core::TenantScope;
use windlass_jobs::postgres::{PgJobStore, migrate};
use windlass_jobs::{
    EnqueueOptions, Enqueued, JobState, JobStore, Jobs, OnConflict, UniqueOptions, Worker,
};
use windlass_testkit::jobs::{Action, Probe, fast_config, token, wait_state};
use windlass_testkit::postgres::{TestDatabase, fresh_database};

async fn db() -> TestDatabase {
    let db = fresh_database().await;
    migrate(&db.pool).await.expect("migrate");
    db
}

/// The two insert paths of one database: COPY from 2 rows, and `unnest` statements only.
fn paths(db: &TestDatabase) -> [(&'static str, PgJobStore); 2] {
    [
        ("copy", PgJobStore::new(db.pool.clone()).copy_threshold(2)),
        (
            "unnest",
            PgJobStore::new(db.pool.clone()).copy_threshold(usize::MAX),
        ),
    ]
}

async fn count(db: &TestDatabase, queue: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM windlass_jobs WHERE queue = $1")
        .bind(queue)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

fn probes(t: &str, n: u64) -> Vec<Probe> {
    (0..n)
        .map(|n| Probe {
            token: t.to_owned(),
            n,
            action: Action::Succeed,
        })
        .collect()
}

/// A row the database refuses (a trigger stands for any constraint) makes the whole batch fail
/// with nothing inserted, on both paths, through the store and inside the caller's
/// transaction (which stays usable). 20 001 rows: the store's default COPY path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_row_inserts_nothing_on_either_path() {
    let db = db().await;
    let t = token();
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_last() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.args->>'n' = '20000' THEN RAISE EXCEPTION 'row 20000 refused'; END IF; \
         RETURN NEW; END $$; \
         CREATE TRIGGER refuse_last BEFORE INSERT ON windlass_jobs \
         FOR EACH ROW EXECUTE FUNCTION refuse_last(); \
         CREATE TABLE business (v int);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let all = probes(&t, 20_001);
    let default = PgJobStore::new(db.pool.clone());
    for (path, store) in paths(&db).into_iter().chain([("default", default)]) {
        let jobs = Jobs::new(store);
        for unique in [false, true] {
            let mut opts = EnqueueOptions::new().queue("bulk");
            if unique {
                // Keys: the COPY goes through the staging table.
                opts = opts.unique(UniqueOptions::by_key("same"));
            }
            let err = jobs.enqueue_many(&all, &opts).await.unwrap_err();
            assert!(
                format!("{err}").contains("row 20000 refused"),
                "{path}: {err}"
            );
            assert_eq!(count(&db, "bulk").await, 0, "{path} unique={unique}");
        }
    }
    // Inside the caller's transaction (COPY from 2 000 rows): its own writes survive.
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO business VALUES (1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let rows: Vec<_> = all[17_000..]
        .iter()
        .map(|p| EnqueueOptions::new().queue("bulk").build(p).unwrap())
        .collect();
    assert!(PgJobStore::insert_in(&mut tx, rows.clone()).await.is_err());
    sqlx::query("INSERT INTO business VALUES (2)")
        .execute(&mut *tx)
        .await
        .expect("the caller's transaction is still usable");
    // And a good COPY batch in the same transaction goes in with it.
    let good = PgJobStore::insert_in(&mut tx, rows[..2_500].to_vec())
        .await
        .unwrap();
    assert_eq!(good.len(), 2_500);
    tx.commit().await.unwrap();
    let business: i64 = sqlx::query_scalar("SELECT count(*) FROM business")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!((business, count(&db, "bulk").await), (2, 2_500));
}

/// Duplicates of unique keys in a large batch, against rows already there and inside the
/// batch, with skip and replace: the same results on the COPY and the `unnest` path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_in_a_copy_batch_resolve_like_unnest() {
    let db = db().await;
    let t = token();
    let mut results = Vec::new();
    for (path, store) in paths(&db) {
        let queue = format!("dup-{path}");
        let jobs = Jobs::new(store);
        let opts = |k: u64| {
            EnqueueOptions::new()
                .queue(&queue)
                .unique(UniqueOptions::by_key(format!("{path}-{k}")))
        };
        // Keys 0 and 1 are already held.
        let held0 = jobs
            .insert(vec![opts(0).build(&probes(&t, 1)[0]).unwrap()])
            .await
            .unwrap()[0]
            .id()
            .unwrap();
        let held1 = jobs
            .insert(vec![opts(1).build(&probes(&t, 1)[0]).unwrap()])
            .await
            .unwrap()[0]
            .id()
            .unwrap();
        // 3 000 rows over 1 500 keys (each twice); rows of key 1 replace; every tenth row has
        // no key.
        let rows: Vec<_> = probes(&t, 3_000)
            .iter()
            .map(|p| {
                let k = p.n % 1_500;
                if p.n % 10 == 5 {
                    EnqueueOptions::new().queue(&queue).build(p).unwrap()
                } else if k == 1 {
                    opts(k)
                        .unique(
                            UniqueOptions::by_key(format!("{path}-1"))
                                .on_conflict(OnConflict::Replace),
                        )
                        .build(p)
                        .unwrap()
                } else {
                    opts(k).build(p).unwrap()
                }
            })
            .collect();
        let out = jobs.insert(rows).await.unwrap();
        assert_eq!(out.len(), 3_000);
        for (n, e) in out.iter().enumerate() {
            let n = n as u64;
            let k = n % 1_500;
            let expected = if n % 10 == 5 {
                assert!(matches!(e, Enqueued::New(_)), "{path} row {n}: {e:?}");
                continue;
            } else if k == 0 {
                Enqueued::Duplicate(Some(held0))
            } else if k == 1 {
                Enqueued::Replaced(held1)
            } else if n < 1_500 {
                assert!(matches!(e, Enqueued::New(_)), "{path} row {n}: {e:?}");
                continue;
            } else {
                Enqueued::Duplicate(out[(n - 1_500) as usize].id())
            };
            assert_eq!(*e, expected, "{path} row {n}");
        }
        let rec = jobs.get(held1).await.unwrap().unwrap();
        assert_eq!(rec.args["n"], 1_501, "{path}: the last replacement wins");
        results.push((
            count(&db, &queue).await,
            out.iter().filter(|e| e.id().is_some()).count(),
        ));
    }
    // 2 held + 1 348 other keys (keys ending in 5 are never used) + 300 unkeyed; the same on
    // both paths.
    assert_eq!(results, vec![(1_650, 1_648), (1_650, 1_648)]);
}

/// COPY text format: values with tabs, newlines, backslashes, quotes and non-ASCII come back
/// as they were, and every column is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_round_trips_every_column() {
    let db = db().await;
    let [(_, copy), _] = paths(&db);
    let store: Arc<dyn JobStore> = Arc::new(copy);
    let nasty = serde_json::json!({
        "s": "tab\there\nnew\\line \"quoted\" \\N é 🚀 \r",
        "nested": {"k\t": [1, 2.5, null, true]},
    });
    let at = chrono::Utc::now() + chrono::Duration::hours(2);
    let opts = EnqueueOptions::new()
        .queue("rt")
        .priority(2)
        .max_attempts(3)
        .timeout(Duration::from_millis(1_500))
        .run_at(at)
        .org_id("acme");
    let rows = vec![
        opts.build_raw("k.one", nasty.clone()).unwrap(),
        EnqueueOptions::new()
            .queue("rt")
            .build_raw("k.two", serde_json::json!("plain"))
            .unwrap(),
    ];
    let out = store.insert(rows).await.unwrap();
    let a = store
        .get(&TenantScope::All, out[0].id().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.args, nasty);
    assert_eq!(
        (
            a.kind.as_str(),
            a.org_id.as_deref(),
            a.priority,
            a.max_attempts,
            a.state
        ),
        ("k.one", Some("acme"), 2, 3, JobState::Scheduled)
    );
    assert_eq!(a.timeout, Some(Duration::from_millis(1_500)));
    assert_eq!(a.run_at.timestamp_micros(), at.timestamp_micros());
    let b = store
        .get(&TenantScope::All, out[1].id().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (b.args, b.state, b.org_id, b.timeout),
        (serde_json::json!("plain"), JobState::Available, None, None)
    );
    assert!(b.run_at <= chrono::Utc::now());
}

/// The limiter holds back the NOTIFY of an insert that follows another of the same queue
/// within its interval; the trailing NOTIFY still wakes the idle worker (its poll interval is
/// a minute), and many concurrent single-job enqueues are all picked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_notifies_never_lose_a_wake_up() {
    let db = db().await;
    let store: Arc<dyn JobStore> =
        Arc::new(PgJobStore::new(db.pool.clone()).notify_interval(Duration::from_secs(2)));
    let jobs = Jobs::from_arc(store.clone());
    let t = token();
    let w = Worker::new(store.clone())
        .register::<Probe>()
        .config(fast_config().poll_interval(Duration::from_secs(60)))
        .start()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let opts = EnqueueOptions::new().queue("q");
    let all = probes(&t, 201);
    let first = jobs.enqueue(&all[0], &opts).await.unwrap().id().unwrap();
    wait_state(&store, first, JobState::Completed, Duration::from_secs(20)).await;
    // Let the worker settle into its idle wait, still inside the 2 s interval: this insert's
    // NOTIFY is held back; only the trailing one can wake the worker.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = jobs.enqueue(&all[1], &opts).await.unwrap().id().unwrap();
    wait_state(&store, second, JobState::Completed, Duration::from_secs(20)).await;
    // Many single-job transactions from 4 tasks at once.
    let mut tasks = Vec::new();
    for chunk in all[2..].chunks(50) {
        let jobs = jobs.clone();
        let chunk = chunk.to_vec();
        let opts = opts.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for p in &chunk {
                ids.push(jobs.enqueue(p, &opts).await.unwrap().id().unwrap());
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    for id in ids {
        wait_state(&store, id, JobState::Completed, Duration::from_secs(20)).await;
    }
    w.shutdown().await.unwrap();
}
