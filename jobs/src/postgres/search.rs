//! Text search over job args ([`JobFilter::args_contains`](crate::JobFilter::args_contains)):
//! `args::text LIKE '%…%'`, answered from an opt-in `pg_trgm` GIN index on `(args::text)`
//! when the operator has created one, or by reading the other filters' rows when not.
//!
//! The index is opt-in because it is not free: it makes every insert and every state change
//! that rewrites a row (fetch, finish, retry) also update a GIN index, and it takes disk (see
//! `docs/jobs.md` for measured figures). Create it with [`create_args_search_index`]; the
//! console asks [`crate::Jobs::args_search_indexed`] and uses it when present.

use sqlx::PgPool;

use crate::error::{Error, Result};

/// The opt-in trigram index's name.
pub const ARGS_SEARCH_INDEX: &str = "windlass_jobs_args_trgm";

/// `text` as a `LIKE` pattern matching it anywhere: `%`, `_` and `\` escaped (the default
/// `LIKE` escape character is `\`).
pub(super) fn contains_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// Creates the opt-in trigram index answering
/// [`JobFilter::args_contains`](crate::JobFilter::args_contains): `CREATE EXTENSION IF NOT
/// EXISTS pg_trgm` (a trusted extension: a database owner may create it without superuser),
/// then `CREATE INDEX CONCURRENTLY IF NOT EXISTS windlass_jobs_args_trgm ON windlass_jobs USING
/// gin ((args::text) gin_trgm_ops)`, which does not block writes while it builds. An invalid
/// index left by an interrupted build is dropped first. Idempotent.
///
/// Cost: the build reads the whole table (about 25 s at a million jobs here, see
/// `docs/jobs.md`), the index takes disk, and each job insert or row update also updates it.
pub async fn create_args_search_index(pool: &PgPool) -> Result<()> {
    let err = |e| Error::pg("create_args_search_index", e);
    sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        .execute(pool)
        .await
        .map_err(err)?;
    if index_state(pool).await? == Some(false) {
        drop_args_search_index(pool).await?;
    }
    // Outside any transaction block (CONCURRENTLY requires it): one simple-protocol statement.
    sqlx::raw_sql(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS windlass_jobs_args_trgm \
           ON windlass_jobs USING gin ((args::text) gin_trgm_ops)",
    )
    .execute(pool)
    .await
    .map_err(err)?;
    Ok(())
}

/// Drops the index [`create_args_search_index`] made, if any (`DROP INDEX CONCURRENTLY`). The
/// `pg_trgm` extension stays (other objects may use it).
pub async fn drop_args_search_index(pool: &PgPool) -> Result<()> {
    sqlx::raw_sql("DROP INDEX CONCURRENTLY IF EXISTS windlass_jobs_args_trgm")
        .execute(pool)
        .await
        .map_err(|e| Error::pg("drop_args_search_index", e))?;
    Ok(())
}

/// `None`: no index; `Some(valid)`: the index exists (an interrupted concurrent build leaves
/// an invalid one, which Postgres does not use).
async fn index_state(pool: &PgPool) -> Result<Option<bool>> {
    sqlx::query_scalar(
        "SELECT i.indisvalid FROM pg_index i \
           WHERE i.indexrelid = to_regclass('windlass_jobs_args_trgm')",
    )
    .fetch_optional(pool)
    .await
    .map_err(|e| Error::pg("args_search_indexed", e))
}

/// Whether the trigram index exists and is valid (usable by the planner).
pub(super) async fn indexed(pool: &PgPool) -> Result<bool> {
    Ok(index_state(pool).await? == Some(true))
}

#[cfg(test)]
mod tests {
    use super::contains_pattern;

    #[test]
    fn pattern_escapes_like_wildcards() {
        assert_eq!(contains_pattern("a%b_c\\d"), "%a\\%b\\_c\\\\d%");
        assert_eq!(contains_pattern(""), "%%");
    }
}
