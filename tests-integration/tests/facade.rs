//! The facade's own API: one `migrate` for every Postgres table, and the re-exports a user's
//! code needs to name the crates' signatures.

use windlass_testkit::postgres::fresh_database;

#[tokio::test]
async fn migrate_creates_every_table_and_runs_twice_and_concurrently() {
    let db = fresh_database().await;
    // Twice in a row and twice at once: idempotent, and the advisory locks serialise it.
    windlass::migrate(&db.pool).await.unwrap();
    let (a, b) = tokio::join!(windlass::migrate(&db.pool), windlass::migrate(&db.pool));
    a.unwrap();
    b.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_name LIKE 'windlass_%' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for t in [
        "windlass_jobs",
        "windlass_outbox",
        "windlass_outbox_delivery",
        "windlass_inbox",
    ] {
        assert!(tables.iter().any(|x| x == t), "{t} missing from {tables:?}");
    }
}

#[test]
fn the_reexports_name_the_types_of_public_signatures() {
    // A user's code can name these without depending on tokio-util, async-trait or sqlx.
    let token = windlass::CancellationToken::new();
    token.cancel();
    assert!(token.is_cancelled());
    let _: Option<windlass::sqlx::PgPool> = None;
}

#[windlass::async_trait]
trait Named {
    async fn name(&self) -> &'static str;
}

struct Acme;

#[windlass::async_trait]
impl Named for Acme {
    async fn name(&self) -> &'static str {
        "acme"
    }
}

#[tokio::test]
async fn async_trait_from_the_facade_expands() {
    assert_eq!(Acme.name().await, "acme");
}
