-- windlass-jobs schema, version 5: what the operations console reads at scale without
-- scanning the table on a request. Idempotent: safe to run again.
--
-- 1. A snapshot of the job counts by queue, state and tenant (plus the totals over every
--    tenant), recounted by the maintenance leader (`JobStore::refresh_counts`) and read by
--    `JobStore::count_snapshot`: exact as of `refreshed_at`, never counted on a request.
-- 2. Indexes for the listing filters (`JobStore::list` pages by id within a filter): one per
--    filter column, with the state next so a filter on several states (or on none) is one
--    short index range per state, merged by id. Each costs one more index entry per insert and
--    per state change (see docs/admin.md, "Cost at scale"). On a large table, build them
--    first with `CREATE INDEX CONCURRENTLY IF NOT EXISTS` under the same names: this file then
--    skips them instead of locking writes while it builds them.

CREATE TABLE IF NOT EXISTS windlass_jobs_counts (
    queue   text    NOT NULL,
    state   text    NOT NULL,
    -- the tenant (NULL: jobs without one); unused on total rows
    org_id  text,
    -- true: the count over every tenant
    total   boolean NOT NULL,
    count   bigint  NOT NULL
);
CREATE INDEX IF NOT EXISTS windlass_jobs_counts_org_idx ON windlass_jobs_counts (org_id)
    WHERE NOT total;

-- One row: when the snapshot was taken and how long the recount took.
CREATE TABLE IF NOT EXISTS windlass_jobs_counts_meta (
    id           boolean PRIMARY KEY DEFAULT true CHECK (id),
    refreshed_at timestamptz NOT NULL,
    took_ms      bigint      NOT NULL
);

CREATE INDEX IF NOT EXISTS windlass_jobs_list_state_idx ON windlass_jobs (state, id);
CREATE INDEX IF NOT EXISTS windlass_jobs_list_queue_idx ON windlass_jobs (queue, state, id);
CREATE INDEX IF NOT EXISTS windlass_jobs_list_kind_idx ON windlass_jobs (kind, state, id);
CREATE INDEX IF NOT EXISTS windlass_jobs_list_org_idx ON windlass_jobs (org_id, state, id)
    WHERE org_id IS NOT NULL;
