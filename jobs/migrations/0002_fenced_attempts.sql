-- windlass-jobs schema, version 2: cancel / discard of a running job is a request the worker
-- acts on; the row keeps `running` until its attempt ends, then takes the requested state.
-- Idempotent: safe to run again.

ALTER TABLE windlass_jobs ADD COLUMN IF NOT EXISTS stop_requested text
    CHECK (stop_requested IN ('cancelled', 'discarded'));
