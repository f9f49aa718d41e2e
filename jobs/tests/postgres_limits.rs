//! What only Postgres has around queue limits: the opt-in partition index (created and
//! dropped idempotently, used by the partitioned claim), and the round-robin claim with it.

use std::sync::Arc;

use windlass_jobs::postgres::{
    PgJobStore, create_partition_index, drop_partition_index, migrate, partition_index_name,
};
use windlass_jobs::{JobStore, PartitionBy};
use windlass_testkit::postgres::fresh_database;

#[tokio::test]
async fn the_partition_index_serves_the_fair_claim() {
    let db = fresh_database().await;
    migrate(&db.pool).await.unwrap();
    for by in [
        PartitionBy::Org,
        PartitionBy::Kind,
        PartitionBy::Arg("account_id".into()),
        PartitionBy::Arg("a".repeat(63)),
    ] {
        create_partition_index(&db.pool, &by).await.unwrap();
        create_partition_index(&db.pool, &by).await.unwrap();
        let name = partition_index_name(&by);
        assert!(name.len() <= 63, "{name}");
        let valid: Option<bool> = sqlx::query_scalar(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)",
        )
        .bind(format!("\"{name}\""))
        .fetch_optional(&db.pool)
        .await
        .unwrap();
        assert_eq!(valid, Some(true), "{name}");
        if by != PartitionBy::Org {
            drop_partition_index(&db.pool, &by).await.unwrap();
            drop_partition_index(&db.pool, &by).await.unwrap();
        }
    }
    assert!(
        create_partition_index(&db.pool, &PartitionBy::Arg("x\"; drop".into()))
            .await
            .is_err()
    );
    let store: Arc<dyn JobStore> = Arc::new(PgJobStore::new(db.pool.clone()));
    windlass_testkit::jobs::fair_fetch_serves_a_quiet_tenant_within_one_round(store).await;
    sqlx::query("ANALYZE windlass_jobs")
        .execute(&db.pool)
        .await
        .unwrap();
    // The partitions walk (one probe per partition) reads the index.
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT coalesce(org_id, ''::text) FROM windlass_jobs \
          WHERE queue = 'q' AND state IN ('available', 'scheduled', 'retryable') \
            AND coalesce(org_id, ''::text) > 'org-a' \
          ORDER BY coalesce(org_id, ''::text) LIMIT 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        plan.iter().any(|l| l.contains("windlass_jobs_part_org_id")),
        "{plan:#?}"
    );
}
