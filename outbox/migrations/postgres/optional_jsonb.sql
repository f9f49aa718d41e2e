-- windlass-outbox, Postgres, optional: the event as jsonb, generated from the exact text, for
-- queries. With it, `OutboxConfig::jsonb_column(true)` makes `enqueue` refuse events jsonb
-- cannot hold (a \u0000 escape) before touching the caller's transaction.
ALTER TABLE windlass_outbox
    ADD COLUMN IF NOT EXISTS event_json jsonb GENERATED ALWAYS AS (event::jsonb) STORED;
