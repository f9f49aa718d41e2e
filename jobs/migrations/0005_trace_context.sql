-- windlass-jobs schema, version 5: the W3C trace context of the span that enqueued a job
-- (feature `otel`), continued by the worker's `windlass.job` span. Nullable columns without a
-- default: adding them rewrites nothing, and rows without a context store nothing.
-- Idempotent: safe to run again.

ALTER TABLE windlass_jobs ADD COLUMN IF NOT EXISTS traceparent text;
ALTER TABLE windlass_jobs ADD COLUMN IF NOT EXISTS tracestate text;
