-- windlass-jobs schema, version 1. Idempotent: safe to run again.

CREATE TABLE IF NOT EXISTS windlass_jobs (
    id            bigserial PRIMARY KEY,
    queue         text        NOT NULL,
    kind          text        NOT NULL,
    args          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    org_id        text,
    priority      smallint    NOT NULL DEFAULT 5,
    state         text        NOT NULL DEFAULT 'available'
                  CHECK (state IN ('available', 'scheduled', 'running', 'retryable',
                                   'completed', 'cancelled', 'discarded')),
    attempt       integer     NOT NULL DEFAULT 0,
    max_attempts  integer     NOT NULL DEFAULT 10,
    run_at        timestamptz NOT NULL DEFAULT now(),
    attempted_at  timestamptz,
    heartbeat_at  timestamptz,
    locked_by     text,
    unique_key    text,
    -- bit mask of the states the unique key covers (bit n = state n in the CHECK list above)
    unique_states smallint    NOT NULL DEFAULT 0,
    -- per-attempt timeout; NULL: the worker's default
    timeout_ms    integer,
    errors        jsonb       NOT NULL DEFAULT '[]'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    finalized_at  timestamptz
);

CREATE OR REPLACE FUNCTION windlass_jobs_state_bit(state text) RETURNS smallint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (CASE state
        WHEN 'available' THEN 1 WHEN 'scheduled' THEN 2 WHEN 'running' THEN 4
        WHEN 'retryable' THEN 8 WHEN 'completed' THEN 16 WHEN 'cancelled' THEN 32
        WHEN 'discarded' THEN 64 ELSE 0 END)::smallint
$$;

-- The fetch path: due jobs of one queue, most urgent first.
CREATE INDEX IF NOT EXISTS windlass_jobs_fetch_idx ON windlass_jobs (queue, priority, run_at, id)
    WHERE state IN ('available', 'scheduled', 'retryable');
-- Rescue: running jobs by heartbeat.
CREATE INDEX IF NOT EXISTS windlass_jobs_running_idx ON windlass_jobs (heartbeat_at)
    WHERE state = 'running';
-- Pruning.
CREATE INDEX IF NOT EXISTS windlass_jobs_finalized_idx ON windlass_jobs (finalized_at)
    WHERE finalized_at IS NOT NULL;
-- Unique jobs: a key is held only while its row is in a state its mask covers.
CREATE UNIQUE INDEX IF NOT EXISTS windlass_jobs_unique_idx ON windlass_jobs (unique_key)
    WHERE unique_key IS NOT NULL AND (unique_states & windlass_jobs_state_bit(state)) <> 0;

-- Paused queues (persisted so every worker sees them).
CREATE TABLE IF NOT EXISTS windlass_job_queues (
    name       text PRIMARY KEY,
    paused     boolean     NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Coalesced wake-up: one NOTIFY per queue per INSERT statement (and Postgres folds identical
-- notifications of one transaction), delivered at commit, so transactional enqueue wakes
-- workers only once the caller's transaction is visible.
CREATE OR REPLACE FUNCTION windlass_jobs_notify() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('windlass_jobs', q.queue)
       FROM (SELECT DISTINCT queue FROM windlass_new_jobs
              WHERE state IN ('available', 'scheduled')) q;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS windlass_jobs_notify ON windlass_jobs;
CREATE TRIGGER windlass_jobs_notify AFTER INSERT ON windlass_jobs
    REFERENCING NEW TABLE AS windlass_new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION windlass_jobs_notify();
