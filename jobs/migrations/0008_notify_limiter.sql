-- windlass-jobs schema, version 8: the insert trigger's NOTIFY can be turned off for one
-- transaction (`SELECT set_config('windlass_jobs.notify', 'off', true)`). The store's own
-- inserts do that and send their NOTIFYs through the store's per-queue limiter instead (at
-- most one per queue per interval, plus a trailing one); inserts by anyone else (a caller's
-- transaction through `PgJobStore::insert_in`, plain SQL) still notify through the trigger.
-- Idempotent: safe to run again.

CREATE OR REPLACE FUNCTION windlass_jobs_notify() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('windlass_jobs.notify', true) = 'off' THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('windlass_jobs', q.queue)
       FROM (SELECT DISTINCT queue FROM windlass_new_jobs
              WHERE state IN ('available', 'scheduled')) q;
    RETURN NULL;
END
$$;
