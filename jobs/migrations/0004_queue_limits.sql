-- windlass-jobs schema, version 4: a global concurrency limit per queue (jobs running at once
-- across every worker), enforced at fetch. Idempotent: safe to run again.

ALTER TABLE windlass_job_queues ADD COLUMN IF NOT EXISTS global_limit integer
    CHECK (global_limit IS NULL OR global_limit > 0);
