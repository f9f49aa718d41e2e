-- windlass-jobs schema, version 3: one maintenance leader (depth gauges, pruning) among all
-- workers, by lease. Idempotent: safe to run again.

CREATE TABLE IF NOT EXISTS windlass_jobs_leader (
    name       text PRIMARY KEY,
    holder     text        NOT NULL,
    expires_at timestamptz NOT NULL
);
