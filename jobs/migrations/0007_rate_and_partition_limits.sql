-- windlass-jobs schema, version 7: rate limits and partitioned limits per queue, with
-- round-robin claims between partitions, enforced at fetch under the queue's advisory lock
-- (see docs/jobs.md, "Limits across workers"). Idempotent: safe to run again.

ALTER TABLE windlass_job_queues
    -- at most rate_limit claims of the queue in any window of rate_period_ms (database clock)
    ADD COLUMN IF NOT EXISTS rate_limit integer CHECK (rate_limit IS NULL OR rate_limit > 0),
    ADD COLUMN IF NOT EXISTS rate_period_ms bigint
        CHECK (rate_period_ms IS NULL OR rate_period_ms BETWEEN 1 AND 86400000),
    -- what splits the queue into partitions: 'org_id', 'kind' or 'args:<field>'
    ADD COLUMN IF NOT EXISTS partition_by text
        CHECK (partition_by IS NULL OR partition_by IN ('org_id', 'kind')
               OR partition_by ~ '^args:[A-Za-z0-9_-]{1,63}$'),
    -- per partition: at most partition_limit running, partition_rate_limit claims per window
    ADD COLUMN IF NOT EXISTS partition_limit integer
        CHECK (partition_limit IS NULL OR partition_limit > 0),
    ADD COLUMN IF NOT EXISTS partition_rate_limit integer
        CHECK (partition_rate_limit IS NULL OR partition_rate_limit > 0),
    ADD COLUMN IF NOT EXISTS partition_rate_period_ms bigint
        CHECK (partition_rate_period_ms IS NULL OR partition_rate_period_ms BETWEEN 1 AND 86400000);

-- The start log of rate-limited queues: one row per fetch and partition that claimed jobs
-- (part '' when the queue is not partitioned), kept for the longest period, pruned by fetches.
CREATE TABLE IF NOT EXISTS windlass_job_starts (
    queue text        NOT NULL,
    part  text        NOT NULL,
    at    timestamptz NOT NULL,
    n     integer     NOT NULL
);
CREATE INDEX IF NOT EXISTS windlass_job_starts_idx ON windlass_job_starts (queue, at);

-- When each partition of a partitioned queue last had a job claimed (the round-robin order:
-- least recently served first). Rows of partitions idle longer than the retention are pruned.
CREATE TABLE IF NOT EXISTS windlass_job_partitions (
    queue     text        NOT NULL,
    part      text        NOT NULL,
    served_at timestamptz NOT NULL,
    PRIMARY KEY (queue, part)
);
CREATE INDEX IF NOT EXISTS windlass_job_partitions_served_idx ON windlass_job_partitions (served_at);
